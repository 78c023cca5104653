"""KV-cache diagnostics for the notebooks: per-round traces, the stale-cache failure, call isolation.

- :func:`trace_cache_rounds`: cache lengths of both models after every round of
  :meth:`SDVAR.iter_rounds` and, per layer, the difference to a sequential prefill;
- :func:`stale_cache_demo`: the failure of the original notebooks reproduced on purpose on a raw
  :class:`~sdvar_lib.models.kv_cache.KVCache` that is reused across calls without a reset;
- :func:`api_isolation_check`: the same through the workbench API, where it cannot happen
  (every call gets fresh caches; they are empty after the call, also after a failed call).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from sdvar_lib import SDVAR, SamplingConfig
from sdvar_lib.models import VAR, ModelRun, RunFactory, eager_run
from test_framework.reference import (
    ReferenceRun,
    cache_layer_diffs,
    default_labels,
    max_abs_diff,
    reference_decode,
    reference_f_hats,
    sequential_cache,
    stage_bounds,
)

log = logging.getLogger(__name__)

__all__ = [
    "CacheSnapshot",
    "trace_cache_rounds",
    "StaleCacheDemo",
    "stale_cache_demo",
    "RecordingRunFactory",
    "IsolationReport",
    "api_isolation_check",
]


# ---- per-round trace ------------------------------------------------------------------------------
@dataclass
class CacheSnapshot:
    """Both caches after one round, with their difference to a sequential prefill."""

    round: int
    start_stage: int
    gamma: int
    accepted_stages: int
    committed_stages: int
    """Stages committed after this round (``c``)."""
    target_length: int
    target_expected_length: int
    draft_length: int
    draft_stages_held: int
    target_diff_per_layer: list[float]
    draft_diff_per_layer: list[float]

    @property
    def target_max_diff(self) -> float:
        return max(self.target_diff_per_layer, default=0.0)

    @property
    def draft_max_diff(self) -> float:
        return max(self.draft_diff_per_layer, default=0.0)


@torch.no_grad()
def trace_cache_rounds(
    sd: SDVAR, B: int = 2, gamma: int = 2, labels: torch.Tensor | None = None, seed: int = 0, cfg: float = 1.5
) -> list[CacheSnapshot]:
    """Run one parallel_v1 call round by round and snapshot both caches after every round."""
    target, draft = sd.target_model, sd.draft_model
    label_B = default_labels(B, target.num_classes, target.device) if labels is None else labels
    state = sd.prepare(B, label_B, g_seed=seed, sampling=SamplingConfig(cfg=cfg), gamma=gamma)
    bounds = stage_bounds(target.patch_nums)
    out = []
    for rec in sd.iter_rounds(state):
        st = rec.state
        d = st.draft.cache.stages_held()
        t_ref = sequential_cache(target, st.label_B, list(st.tokens), st.c)
        d_ref = sequential_cache(draft, st.label_B, list(st.tokens), d)
        out.append(CacheSnapshot(
            round=rec.index, start_stage=rec.start_stage, gamma=rec.gamma, accepted_stages=rec.accepted_stages,
            committed_stages=st.c, target_length=st.target.cache.length, target_expected_length=bounds[st.c - 1][1],
            draft_length=st.draft.cache.length, draft_stages_held=d,
            target_diff_per_layer=cache_layer_diffs(st.target.cache, t_ref),
            draft_diff_per_layer=cache_layer_diffs(st.draft.cache, d_ref),
        ))
    return out


# ---- the stale cache of the original notebooks ----------------------------------------------------
@dataclass
class StaleCacheDemo:
    """What goes wrong when a raw cache is reused by a second call without a reset."""

    total_positions: int
    # (a) call 1 finished, nothing reset: the cache is full
    full_stale_length: int
    first_chunk_tokens: int
    """Tokens the second call feeds first (the inputs of stages 0 and 1 in one chunk)."""
    table_mask_rows: int
    """Rows of the ``(L, L)`` block-causal table sliced at ``[length, length + l)`` (original notebooks' rule)."""
    full_cache_error: str
    # (b) call 1 stopped after some stages (e.g. an exception), nothing reset
    interrupted_after_stages: int
    partial_stale_length: int
    chunk_landed_at: int
    chunk_expected_at: int
    logits_max_abs_diff_vs_fresh: float
    argmax_changed_tokens: int
    chunk_tokens_in: int
    logits_tokens_out: int
    fresh_mask_shape: tuple[int, int]
    stale_mask_shape_expected: tuple[int, int]
    mask_error: str


@torch.no_grad()
def stale_cache_demo(model: VAR, B: int = 2, labels: torch.Tensor | None = None, interrupted_after: int | None = None,
                     cfg: float = 1.5) -> StaleCacheDemo:
    """Reproduce the stale-cache failure on a raw :class:`KVCache` with ``model.forward_cached``.

    The second call always feeds the inputs of stages 0 and 1 as one chunk (what a draft's first
    catch-up pass reads), built for a fresh cache. ``interrupted_after`` (default ``S - 2``) is the
    number of stages the interrupted first call read.
    """
    S, L = model.num_stages, model.L
    if S < 3:
        raise ValueError(f"the demo needs at least 3 stages, the model has {S}")
    k = S - 2 if interrupted_after is None else interrupted_after
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k < S:
        raise ValueError(f"interrupted_after must be an int in [1, {S - 1}], got {interrupted_after!r}")
    label_B = default_labels(B, model.num_classes, model.device) if labels is None else labels
    tokens = reference_decode(model, label_B, cfg, []).tokens
    f_hats = reference_f_hats(model, tokens)
    bounds = stage_bounds(model.patch_nums)

    # the chunk the second call feeds, and the answer of a fresh cache
    fresh = ReferenceRun(model, label_B, cache=model.new_cache(2 * label_B.numel()))
    chunk = torch.cat([fresh.stage_input(0, f_hats), fresh.stage_input(1, f_hats)], dim=1)
    l = chunk.shape[1]
    fresh_logits = model.forward_cached(chunk, fresh.cond_2BD, fresh.cache)
    fresh_mask = fresh.model.lvl_1L[0, :l].unsqueeze(0) <= fresh.model.lvl_1L[0, :l].unsqueeze(1)

    # (a) the first call completed and nobody reset the cache
    full = ReferenceRun(model, label_B, cache=model.new_cache(2 * label_B.numel()))
    full.prefill(S, f_hats)
    start = full.cache.length
    table_rows = model.attn_bias_for_masking[0, 0, start : start + l, : start + l].shape[0]
    try:
        model.forward_cached(chunk, full.cond_2BD, full.cache)
        full_error = "(no error)"
    except ValueError as exc:
        full_error = f"{type(exc).__name__}: {exc}"

    # (b) the first call stopped after k stages (an exception mid-call) and nobody reset the cache
    partial = ReferenceRun(model, label_B, cache=model.new_cache(2 * label_B.numel()))
    partial.prefill(k, f_hats)
    landed_at = partial.cache.length
    try:
        model.forward_cached(chunk, partial.cond_2BD, partial.cache, attn_mask=fresh_mask)
        mask_error = "(no error)"
    except ValueError as exc:
        mask_error = f"{type(exc).__name__}: {exc}"
    stale_logits = model.forward_cached(chunk, partial.cond_2BD, partial.cache)  # the silent variant: no explicit mask
    changed = int((stale_logits.argmax(dim=-1) != fresh_logits.argmax(dim=-1)).sum())
    log.debug("stale cache demo: full cache %d, interrupted after %d stages at %d", start, k, landed_at)
    return StaleCacheDemo(
        total_positions=L, full_stale_length=start, first_chunk_tokens=l, table_mask_rows=int(table_rows),
        full_cache_error=full_error, interrupted_after_stages=k, partial_stale_length=bounds[k - 1][1],
        chunk_landed_at=landed_at, chunk_expected_at=0,
        logits_max_abs_diff_vs_fresh=max_abs_diff(stale_logits, fresh_logits), argmax_changed_tokens=changed,
        chunk_tokens_in=l, logits_tokens_out=int(stale_logits.shape[1]), fresh_mask_shape=tuple(fresh_mask.shape),
        stale_mask_shape_expected=(l, landed_at + l), mask_error=mask_error,
    )


# ---- the workbench API ----------------------------------------------------------------------------
class RecordingRunFactory:
    """A ``run_factory`` that hands out the runs of ``inner`` (default: eager runs) and remembers them."""

    def __init__(self, inner: RunFactory | None = None) -> None:
        self.inner: RunFactory = inner or eager_run
        self.runs: list[ModelRun] = []

    def __call__(self, model: VAR, label_B: torch.Tensor) -> ModelRun:
        run = self.inner(model, label_B)
        self.runs.append(run)
        return run


class _FailingSDVAR(SDVAR):
    """Raises in the acceptance step of round ``fail_round`` (0-based)."""

    fail_round = 1

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.calls = 0

    def accept(self, state, proposal, verify):
        self.calls += 1
        if self.calls == self.fail_round + 1:
            raise RuntimeError(f"injected failure in round {self.fail_round}")
        return super().accept(state, proposal, verify)


@dataclass
class IsolationReport:
    """Two calls on one SDVAR vs a fresh SDVAR, cache lengths after the calls, and a failed call."""

    second_call_equals_first: bool
    equals_fresh_instance: bool
    runs_per_call: int
    caches_distinct_across_calls: bool
    cache_lengths_after_calls: list[int]
    failed_call_error: str
    failed_call_cache_lengths: list[int]
    call_after_failure_equals_first: bool


@torch.no_grad()
def api_isolation_check(sd: SDVAR, B: int = 2, gamma: int = 2, seed: int = 0, cfg: float = 1.5) -> IsolationReport:
    """Call ``generate_parallel`` twice and after a failed call; compare with a fresh instance."""
    labels = default_labels(B, sd.target_model.num_classes, sd.target_model.device)
    recorder = RecordingRunFactory(sd.run_factory)
    watched = SDVAR(sd.draft_model, sd.target_model, run_factory=recorder)

    def call(model: SDVAR) -> list[torch.Tensor]:
        return model.generate_parallel(B, labels, g_seed=seed, sampling=SamplingConfig(cfg=cfg), gamma=gamma).tokens_per_stage

    def same(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
        return len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b))

    first = call(watched)
    n_first = len(recorder.runs)
    second = call(watched)
    runs = list(recorder.runs)
    fresh = call(SDVAR(sd.draft_model, sd.target_model, run_factory=sd.run_factory))
    caches = [r.cache for r in runs]
    distinct = all(caches[i] is not caches[j] for i in range(n_first) for j in range(n_first, len(caches)))

    fail_recorder = RecordingRunFactory(sd.run_factory)
    failing = _FailingSDVAR(sd.draft_model, sd.target_model, run_factory=fail_recorder)
    try:
        call(failing)
        error = "(no error)"
    except RuntimeError as exc:
        error = f"{type(exc).__name__}: {exc}"
    failed_lengths = [r.cache.length for r in fail_recorder.runs]
    after = call(watched)
    return IsolationReport(
        second_call_equals_first=same(first, second), equals_fresh_instance=same(first, fresh), runs_per_call=n_first,
        caches_distinct_across_calls=distinct, cache_lengths_after_calls=[r.cache.length for r in runs],
        failed_call_error=error, failed_call_cache_lengths=failed_lengths,
        call_after_failure_equals_first=same(first, after),
    )
