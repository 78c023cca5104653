"""``SDVARParallelV1Tester``: checks every step of SDVAR parallel verification against references.

Each test drives one step of :class:`sdvar_lib.SDVAR` (or a whole call) and compares what it
produced with an independent recomputation from :mod:`test_framework.reference`: embeddings and
positions recomputed from the tables, logits from one sequential pass per stage, ``f_hat`` from
the committed tokens, caches from a sequential prefill, greedy decodes from a plain argmax loop.
Nothing assumes a number of stages, an image size, a device or a dtype; tolerances come from the
models (:class:`~test_framework.tolerances.Tolerances`). A test that raises is a failed test whose
message names the exception.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import replace

import torch

from sdvar_lib import SDVAR, SamplingConfig, get_method
from sdvar_lib.eval import compare_images
from sdvar_lib.models import VAR, ModelRun, check_cfg
from sdvar_lib.sdvar import DraftProposal, SDVARInferenceState, VerifyResult
from sdvar_lib.util import check_bool, check_int, check_int_sequence, check_number, check_seed
from test_framework.greedy import greedy_agreement
from test_framework.reference import (
    ReferenceRun,
    cache_drift,
    check_greedy,
    chi_square_rows,
    decode_drift,
    default_labels,
    exact_cache,
    max_abs_diff,
    normal_sf,
    random_tokens,
    reference_cfg,
    reference_decode,
    reference_f_hats,
    reference_images,
    reference_probs,
    sequential_cache,
    stage_bounds,
    stage_ids,
)
from test_framework.results import (
    BaselineDetails,
    CacheDetails,
    CheckLog,
    DraftDetails,
    EndToEndDetails,
    GreedyDetails,
    QueryDetails,
    SampledDetails,
    SplitDetails,
    StateUpdateDetails,
    Test3Details,
    TestResult,
    VerifyDetails,
    print_summary,
)
from test_framework.tolerances import DRIFT_FACTOR, Bound, Tolerances, derived_allowed, filtered_probs_bound, ulp

log = logging.getLogger(__name__)

__all__ = ["SDVARParallelV1Tester", "TEST_NAMES"]

TEST_NAMES = (
    "test_build_combined_query",
    "test_split_logits_by_stage",
    "test_draft_generate_batch",
    "test_target_verify_batch",
    "test_state_update",
    "test_kv_cache_consistency",
    "test_greedy_identity",
    "test_end_to_end",
    "test_compare_with_test3",
    "test_compare_with_baseline",
    "test_sampled_distribution",
)

_Body = Callable[[CheckLog], tuple[str, object]]


class _CountingRun(ModelRun):
    """A model run that counts the passes made through it (the harness's own count, not the statistics')."""

    def __init__(self, inner: ModelRun) -> None:
        super().__init__(model=inner.model, cond_2BD=inner.cond_2BD, lvl_pos_1LC=inner.lvl_pos_1LC, cache=inner.cache,
                         epoch=inner.epoch)
        self.inner = inner
        self.passes = 0

    def stage_input(self, si, f_hats):
        return self.inner.stage_input(si, f_hats)

    def forward(self, x_2BlC, attn_mask=None):
        self.passes += 1
        return self.inner.forward(x_2BlC, attn_mask)


class SDVARParallelV1Tester:
    """Invariant checks of SDVAR parallel verification for any draft/target pair (bundled or official).

    ``cfg``, ``top_k``, ``top_p`` and ``seed`` are used by every sampled test (the greedy ones set
    ``top_k=1`` themselves); ``tolerances`` default to the target model's dtype/device
    (:meth:`Tolerances.for_model`).
    """

    def __init__(self, sdvar_model: SDVAR, tolerances: Tolerances | None = None, cfg: float = 1.5, seed: int = 0,
                 top_k: int = 0, top_p: float = 0.0) -> None:
        if not isinstance(sdvar_model, SDVAR):
            raise TypeError(f"SDVARParallelV1Tester needs an sdvar_lib.SDVAR, got {type(sdvar_model).__name__}")
        if tolerances is not None and not isinstance(tolerances, Tolerances):
            raise TypeError(f"tolerances must be a Tolerances, got {type(tolerances).__name__}")
        check_cfg(cfg)
        check_seed(seed, "seed", allow_none=False)
        check_int(top_k, "top_k", 0)
        if top_k > sdvar_model.target_model.V:
            raise ValueError(f"top_k must be <= the vocabulary size {sdvar_model.target_model.V}, got {top_k}")
        check_number(top_p, "top_p", 0.0, 1.0)
        self.sd = sdvar_model
        self.top_k, self.top_p = top_k, float(top_p)
        self.tol = tolerances if tolerances is not None else Tolerances.for_model(sdvar_model.target_model)
        self.cfg = float(cfg)
        self.seed = seed

    # ---- shared helpers ---------------------------------------------------------------------------
    @property
    def target(self) -> VAR:
        return self.sd.target_model

    @property
    def draft(self) -> VAR:
        return self.sd.draft_model

    @property
    def S(self) -> int:
        return self.target.num_stages

    @property
    def bounds(self) -> list[tuple[int, int]]:
        return stage_bounds(self.target.patch_nums)

    def _L(self, si: int) -> int:
        return self.target.patch_nums[si] ** 2

    def _labels(self, B: int) -> torch.Tensor:
        return default_labels(B, self.target.num_classes, self.target.device)

    def _verify_stages(self, c: int, g: int) -> list[int]:
        return list(range(c, min(c + g, self.S - 1) + 1))

    def _end_of(self, n_stages: int) -> int:
        """Cache length holding the inputs of stages ``< n_stages``."""
        return self.bounds[n_stages - 1][1] if n_stages > 0 else 0

    def _sampling(self, top_k: int | None = None) -> SamplingConfig:
        """The tester's sampling options (``top_k=1``: the greedy tests')."""
        return SamplingConfig(cfg=self.cfg, top_k=self.top_k if top_k is None else top_k, top_p=self.top_p)

    def _new_state(self, B: int, gamma: int, **kwargs) -> SDVARInferenceState:
        return self.sd.prepare(B, self._labels(B), g_seed=self.seed, sampling=self._sampling(), gamma=gamma, **kwargs)

    def _prefix_state(self, B: int, gamma: int, tokens, f_hats, c: int) -> SDVARInferenceState:
        state = self._new_state(B, gamma)
        return replace(state, tokens=tuple(tokens[:c]), f_hats=tuple(f_hats[:c]))

    def _proposal(self, c: int, g: int, tokens, f_hats, B: int) -> DraftProposal:
        V = self.target.V
        q = [torch.full((B, self._L(s), V), 1.0 / V, device=self.target.device) for s in range(c, c + g)]
        return DraftProposal(start=c, tokens=list(tokens[c : c + g]), q_probs=q, f_hats=list(f_hats[c : c + g]),
                             draft_cache_before=0)

    def _run(self, name: str, body: _Body) -> TestResult:
        t0 = time.perf_counter()
        checks = CheckLog()
        try:
            with torch.no_grad():
                success, details = body(checks)
            passed, message = checks.ok, checks.message(success)
            if checks.checked == 0:  # a test that compared nothing has not passed
                passed, message = False, f"made no check (nothing was compared): {success}"
        except Exception as exc:  # a raising SDVAR is a failing SDVAR: report it, do not crash the run
            log.debug("%s raised", name, exc_info=True)
            raised = f"raised {type(exc).__name__}: {exc}"
            passed, details = False, None
            message = raised if checks.ok else f"{checks.message('')}; then {raised}"
        result = TestResult(test_name=name, passed=passed, message=message, details=details,
                            duration_s=time.perf_counter() - t0)
        log.info("%s: %s (%s)", name, "passed" if passed else "FAILED", message)
        return result

    # ---- 1. combined query ------------------------------------------------------------------------
    def test_build_combined_query(self, B: int = 2, gamma: int = 2) -> TestResult:
        """The verify chunk holds the target's inputs of stages ``c .. c+g`` at positions ``begin_c ..``.

        For every start stage ``c``: stages, position, shape and stage ids of the chunk; every stage's
        slice equals its input recomputed from the target's embedding tables; both CFG halves of
        stages ``> 0`` are identical (stage 0's halves differ only by the class embedding and are
        checked against their own reference); the attention mask is block-causal over the prefix.
        """
        check_int(B, "B", 1)
        check_int(gamma, "gamma", 1)

        def body(checks: CheckLog):
            target, S, bounds = self.target, self.S, self.bounds
            tokens = random_tokens(target, B, self.seed + 101)
            f_hats = reference_f_hats(target, tokens)
            ref = ReferenceRun(target, self._labels(B))
            ids_L = stage_ids(target.patch_nums, target.device)
            lengths, max_diff, max_half, masks = [], 0.0, 0.0, 0
            for c in range(S):
                g = min(gamma, S - c)
                state = self._prefix_state(B, gamma, tokens, f_hats, c)
                query = self.sd.verify_query(state, self._proposal(c, g, tokens, f_hats, B))
                stages = self._verify_stages(c, g)
                begin, end = bounds[c][0], bounds[stages[-1]][1]
                l = end - begin
                lengths.append(l)
                checks.require(query.stages == stages, f"c={c}: chunk stages {query.stages}, expected {stages}")
                checks.require(query.position == begin,
                               f"c={c}: chunk placed at position {query.position}, stage {c} begins at {begin}")
                shape_ok = checks.require(
                    tuple(query.x_2BlC.shape) == (2 * B, l, target.C),
                    f"c={c}: chunk shape {tuple(query.x_2BlC.shape)}, expected {(2 * B, l, target.C)}",
                )
                checks.require(torch.equal(query.stage_ids_l.to(ids_L.device), ids_L[begin:end]),
                               f"c={c}: chunk stage ids differ from the stage ids of positions {begin}..{end - 1}")
                if not shape_ok:
                    continue
                off = 0
                for si in stages:
                    x = query.x_2BlC[:, off : off + self._L(si)]
                    want = ref.stage_input(si, f_hats)
                    diff = max_abs_diff(x, want)
                    max_diff = max(max_diff, diff)
                    if diff > self.tol.embeddings.allowed(want):
                        checks.require(False, self._input_problem(c, si, x, want, ref, diff))
                    if si > 0:
                        half = max_abs_diff(x[:B], x[B:])
                        max_half = max(max_half, half)
                        checks.require(half <= self.tol.embeddings.allowed(x),
                                       f"c={c}: the CFG halves of stage {si}'s input differ (max abs diff {half:.4f})")
                    off += self._L(si)
                mask = self.sd.verify_mask(state, query)
                want_mask = ids_L[:end].unsqueeze(0) <= ids_L[begin:end].unsqueeze(1)
                masks += 1
                checks.require(
                    tuple(mask.shape) == tuple(want_mask.shape) and torch.equal(mask.to(want_mask.device).bool(), want_mask),
                    f"c={c}: attention mask {tuple(mask.shape)} is not the block-causal mask {tuple(want_mask.shape)} "
                    f"of the chunk over positions 0..{end - 1}",
                )
            details = QueryDetails(start_stages=list(range(S)), chunk_lengths=lengths, max_input_abs_diff=max_diff,
                                   max_cfg_half_abs_diff=max_half, masks_checked=masks)
            success = (f"{S} start stages: chunk inputs = target embeddings at positions begin_c.., CFG halves equal, "
                       "block-causal masks")
            return success, details

        return self._run("test_build_combined_query", body)

    def _input_problem(self, c: int, si: int, x: torch.Tensor, want: torch.Tensor, ref: ReferenceRun, diff: float) -> str:
        """Name what is wrong with a stage's chunk input (a position shift is recognised)."""
        b, e = ref.bounds[si]
        msg = (f"c={c}: input of stage {si} differs from the target's embedding + level/position embedding at positions "
               f"{b}..{e - 1} (max abs diff {diff:.4f})")
        lvl_pos = ref.lvl_pos_1LC
        for k in (1, -1, 2, -2, 3, -3):
            shifted = torch.roll(lvl_pos, shifts=-k, dims=1)[:, b:e]
            candidate = want - lvl_pos[:, b:e].to(want.dtype) + shifted.to(want.dtype)
            if max_abs_diff(x, candidate) <= self.tol.embeddings.allowed(candidate):
                return msg + f": wrong position offset, it uses the positions shifted by {k:+d}"
        return msg

    # ---- 2. split logits --------------------------------------------------------------------------
    def test_split_logits_by_stage(self, B: int = 2, gamma: int = 2) -> TestResult:
        """Per-stage slices and per-stage CFG of the chunk's logits equal a reference split of the same logits."""
        check_int(B, "B", 1)
        check_int(gamma, "gamma", 1)

        def body(checks: CheckLog):
            target, S = self.target, self.S
            gen = torch.Generator().manual_seed(self.seed + 202)
            tokens = random_tokens(target, B, self.seed + 203)
            f_hats = reference_f_hats(target, tokens)
            offsets_all, max_diff = [], 0.0
            for c in range(S):
                g = min(gamma, S - c)
                state = self._prefix_state(B, gamma, tokens, f_hats, c)
                stages = self._verify_stages(c, g)
                l = sum(self._L(s) for s in stages)
                logits = torch.randn(2 * B, l, target.V, generator=gen).to(target.device)
                out = self.sd.split_logits(state, self._proposal(c, g, tokens, f_hats, B), logits)
                if not checks.require(len(out) == len(stages), f"c={c}: {len(out)} stage slices, expected {len(stages)}"):
                    continue
                offsets, off = [], 0
                for got, si in zip(out, stages):
                    L = self._L(si)
                    offsets.append(off)
                    want = reference_cfg(logits[:, off : off + L], si, S, self.cfg)
                    if not checks.require(tuple(got.shape) == (B, L, target.V),
                                          f"c={c}: stage {si} slice has shape {tuple(got.shape)}, expected {(B, L, target.V)}"):
                        off += L
                        continue
                    diff = max_abs_diff(got, want)
                    max_diff = max(max_diff, diff)
                    checks.require(diff <= 1e-5 * (1 + float(want.abs().amax())),
                                   self._split_problem(c, si, off, got, logits, diff))
                    off += L
                offsets_all.append(offsets)
            details = SplitDetails(start_stages=list(range(S)), offsets_per_chunk=offsets_all, max_abs_diff=max_diff)
            return f"{S} start stages: offsets, shapes and per-stage CFG match the reference split", details

        return self._run("test_split_logits_by_stage", body)

    def _split_problem(self, c: int, si: int, off: int, got: torch.Tensor, logits: torch.Tensor, diff: float) -> str:
        msg = f"c={c}: stage {si}'s logits differ from the reference split at offset {off} (max abs diff {diff:.4f})"
        L = self._L(si)
        for k in (1, -1, 2, -2):
            lo = off + k
            if lo < 0 or lo + L > logits.shape[1]:
                continue
            if max_abs_diff(got, reference_cfg(logits[:, lo : lo + L], si, self.S, self.cfg)) <= 1e-5:
                return msg + f": off by {k:+d}, it is the slice at offset {lo}"
        for t_si in range(self.S):
            if t_si != si and max_abs_diff(got, reference_cfg(logits[:, off : off + L], t_si, self.S, self.cfg)) <= 1e-5:
                return msg + f": the slice is right but guided with stage {t_si}'s CFG strength"
        return msg

    # ---- 3. draft ---------------------------------------------------------------------------------
    def test_draft_generate_batch(self, B: int = 2, gamma: int = 2) -> TestResult:
        """Proposals from the initial state and after one round (the draft's catch-up chunk).

        Shapes, ``q`` rows summing to 1, ``q > 0`` at the proposals, the draft cache length (end of
        the last proposed stage), one draft pass per proposed stage, ``f_hat`` after each proposal,
        and ``q`` equal to the draft's sequential recomputation over committed + proposed tokens.
        """
        check_int(B, "B", 1)
        check_int(gamma, "gamma", 1)

        def body(checks: CheckLog):
            draft, S, V = self.draft, self.S, self.target.V
            scenarios, proposed, cache_lengths = [], [], []
            max_sum_err = max_q = max_f = 0.0
            for rounds_before in (0, 1):
                state = self._new_state(B, gamma)
                if rounds_before:
                    rounds = self.sd.iter_rounds(state)
                    state = next(rounds).state
                    rounds.close()
                if state.done:
                    continue
                c = state.c
                g = min(gamma, S - c)
                label = f"from stage {c} (after {rounds_before} round{'s' if rounds_before != 1 else ''})"
                scenarios.append(label)
                prop = self.sd.draft(state, gamma)
                stages = list(range(c, c + g))
                proposed.append(prop.stages)
                cache_lengths.append(state.draft.cache.length)
                checks.require(prop.start == c and prop.stages == stages,
                               f"{label}: proposed stages {prop.stages}, expected {stages}")
                checks.require(prop.draft_passes == g, f"{label}: {prop.draft_passes} draft passes for {g} proposed stages")
                want_len = self.bounds[c + g - 1][1]
                checks.require(state.draft.cache.length == want_len,
                               f"{label}: draft cache length {state.draft.cache.length}, expected {want_len} "
                               f"(end of the last proposed stage {c + g - 1})")
                if not checks.require(len(prop.tokens) == g and len(prop.q_probs) == g and len(prop.f_hats) == g,
                                      f"{label}: {len(prop.tokens)} token maps / {len(prop.q_probs)} q / "
                                      f"{len(prop.f_hats)} f_hat for {g} stages"):
                    continue
                all_tokens = list(state.tokens) + list(prop.tokens)
                forced = reference_decode(draft, state.label_B, self.cfg, all_tokens, c + g)
                f_ref = reference_f_hats(draft, all_tokens)
                for i, si in enumerate(stages):
                    L = self._L(si)
                    tok, q = prop.tokens[i], prop.q_probs[i]
                    if not checks.require(tuple(tok.shape) == (B, L) and tuple(q.shape) == (B, L, V),
                                          f"{label}: stage {si} tokens {tuple(tok.shape)} / q {tuple(q.shape)}, "
                                          f"expected {(B, L)} / {(B, L, V)}"):
                        continue
                    sum_err = float((q.float().sum(dim=-1) - 1).abs().amax())
                    max_sum_err = max(max_sum_err, sum_err)
                    checks.require(sum_err <= self.tol.prob_sum and bool((q >= 0).all()),
                                   f"{label}: stage {si}: q rows are not distributions (max |sum - 1| {sum_err:.4f})")
                    q_at = q.gather(-1, tok.unsqueeze(-1))
                    checks.require(bool((q_at > 0).all()), f"{label}: stage {si}: a proposal has q = 0")
                    want_q = reference_probs(forced.stage_logits[si], self.top_k, self.top_p)
                    dq = max_abs_diff(q, want_q)
                    max_q = max(max_q, dq)
                    checks.require(dq <= self.tol.probs.allowed(want_q),
                                   f"{label}: stage {si}: q differs from the draft's sequential recomputation "
                                   f"(max abs diff {dq:.4f})")
                    df = max_abs_diff(prop.f_hats[i], f_ref[si])
                    max_f = max(max_f, df)
                    checks.require(df <= self.tol.f_hat.allowed(f_ref[si]),
                                   f"{label}: f_hat after proposed stage {si} differs from the one rebuilt from tokens "
                                   f"(max abs diff {df:.4f})")
            details = DraftDetails(scenarios=scenarios, proposed_stages=proposed, draft_cache_lengths=cache_lengths,
                                   max_prob_sum_error=max_sum_err, max_q_abs_diff=max_q, max_f_hat_abs_diff=max_f)
            return f"{len(scenarios)} scenarios: shapes, q distributions, cache length and q = sequential", details

        return self._run("test_draft_generate_batch", body)

    # ---- 4. verify --------------------------------------------------------------------------------
    def test_target_verify_batch(self, B: int = 2, gamma: int = 2, tolerance: float | None = None) -> TestResult:
        """ONE target pass over the chunk gives the logits of one sequential pass per stage.

        For every start stage ``c`` the target cache is prefilled with the inputs of stages ``< c``,
        the chunk of ``gamma`` random proposals (+ the next stage) is verified, and each stage's
        guided logits must match the sequential ones within ``tolerance`` (absolute; default from
        the dtype: 1e-4 for float32, looser for bf16/fp16). Also: exactly one target pass, ``p``
        equal to the sequential distribution, and the target cache ending at the last verified stage.
        """
        check_int(B, "B", 1)
        check_int(gamma, "gamma", 1)
        if tolerance is not None:
            check_number(tolerance, "tolerance (None: the dtype's default)", 0.0)
        bound = self.tol.logits if tolerance is None else Bound(float(tolerance))

        def body(checks: CheckLog):
            target, S = self.target, self.S
            tokens = random_tokens(target, B, self.seed + 303)
            f_hats = reference_f_hats(target, tokens)
            labels = self._labels(B)
            reference = reference_decode(target, labels, self.cfg, tokens, S)
            ref_inputs = ReferenceRun(target, labels)
            per_start, passes, max_p, max_tol = [], [], 0.0, 0.0
            for c in range(S):
                g = min(gamma, S - c)
                state = self._prefix_state(B, gamma, tokens, f_hats, c)
                if c > 0:
                    x = torch.cat([ref_inputs.stage_input(si, f_hats) for si in range(c)], dim=1)
                    state.target.forward(x)
                counting = _CountingRun(state.target)
                verify = self.sd.verify(replace(state, target=counting), self._proposal(c, g, tokens, f_hats, B))
                stages = self._verify_stages(c, g)
                passes.append(counting.passes)
                checks.require(counting.passes == 1, f"c={c}: verification took {counting.passes} target passes, expected 1")
                if not checks.require(verify.stages == stages and len(verify.logits) == len(stages),
                                      f"c={c}: verified stages {verify.stages} ({len(verify.logits)} logits), expected {stages}"):
                    per_start.append(float("inf"))
                    continue
                worst = 0.0
                for i, si in enumerate(stages):
                    want = reference.stage_logits[si]
                    diff = max_abs_diff(verify.logits[i], want)
                    allowed = bound.allowed(want)
                    max_tol = max(max_tol, allowed)
                    worst = max(worst, diff)
                    checks.require(diff <= allowed,
                                   f"c={c}: stage {si}: chunked logits differ from sequential ones by {diff:.4f} "
                                   f"(tolerance {allowed:.4f})")
                    want_p = reference_probs(want, self.top_k, self.top_p)
                    dp = max_abs_diff(verify.p_probs[i], want_p)
                    max_p = max(max_p, dp)
                    pb = filtered_probs_bound(verify.p_probs[i], want_p, want, diff, self.tol.probs.abs)
                    checks.require(pb.far_flips == 0 and dp <= pb.allowed,
                                   f"c={c}: stage {si}: p differs from the sequential distribution by {dp:.4f} (allowed "
                                   f"{pb.allowed:.4f} for the logits' difference {diff:.4f}; {pb.far_flips} token(s) kept "
                                   "or dropped by the top-k/top-p filter far from its cut)")
                per_start.append(worst)
                want_len = self.bounds[stages[-1]][1]
                checks.require(state.target.cache.length == want_len,
                               f"c={c}: target cache length {state.target.cache.length} after verification, "
                               f"expected {want_len}")
            worst_all = max(per_start) if per_start else 0.0
            details = VerifyDetails(start_stages=list(range(S)), max_abs_diff_per_start=per_start, max_abs_diff=worst_all,
                                    tolerance=max_tol, max_prob_abs_diff=max_p, target_passes_per_verify=passes)
            success = (f"{S} start stages: one target pass each, chunked = sequential logits "
                       f"(max abs diff {worst_all:.4f} <= {max_tol:.4f})")
            return success, details

        return self._run("test_target_verify_batch", body)

    # ---- 5. state update --------------------------------------------------------------------------
    def test_state_update(self, B: int = 2, gamma: int = 2) -> TestResult:
        """Rounds driven step by step; after each commit:

        the old state is untouched, the new tokens are the old ones + the committed ones, ``f_hat``
        equals the one rebuilt from the committed tokens (no contribution added twice or missed),
        the target cache holds exactly the committed stages' inputs and the draft cache the inputs it
        read that are still valid (``min(new c, c + g)`` stages).
        """
        check_int(B, "B", 1)
        check_int(gamma, "gamma", 1)

        def body(checks: CheckLog):
            S = self.S
            state = self._new_state(B, gamma)
            committed_per_round, t_lens, d_lens, max_f = [], [], [], 0.0
            rounds = 0
            while not state.done and rounds <= S:
                c = state.c
                old_tokens, old_f_hats = state.tokens, state.f_hats
                g = min(gamma, S - c)
                draft = self.sd.draft(state, gamma)
                verify = self.sd.verify(state, draft)
                acc = self.sd.accept(state, draft, verify)
                new = self.sd.commit(state, draft, acc)
                rounds += 1
                tag = f"round {rounds - 1} (from stage {c})"
                checks.require(state.tokens is old_tokens and state.f_hats is old_f_hats and len(state.tokens) == c,
                               f"{tag}: the round mutated the previous state in place")
                n = len(acc.committed)
                committed_per_round.append(n)
                r = acc.first_rejected
                want_n = (r - c + 1) if r is not None else g + (1 if c + g < S else 0)
                checks.require(n == want_n, f"{tag}: committed {n} stages, expected {want_n} "
                                            f"(first rejected {r}, gamma {g})")
                checks.require(len(new.tokens) == c + n
                               and all(a is b for a, b in zip(new.tokens[:c], old_tokens, strict=True))
                               and all(torch.equal(a, b) for a, b in zip(new.tokens[c:], acc.committed, strict=True)),
                               f"{tag}: new tokens are not the old ones followed by the committed ones")
                checks.require(len(new.f_hats) == len(new.tokens),
                               f"{tag}: {len(new.f_hats)} f_hat maps for {len(new.tokens)} committed stages")
                f_ref = reference_f_hats(self.target, list(new.tokens))
                for si, (got, want) in enumerate(zip(new.f_hats, f_ref)):
                    diff = max_abs_diff(got, want)
                    max_f = max(max_f, diff)
                    if diff > self.tol.f_hat.allowed(want):
                        checks.require(False, self._f_hat_problem(tag, si, got, want, new.tokens, diff))
                        break
                t_lens.append(new.target.cache.length)
                d_lens.append(new.draft.cache.length)
                want_t = self._end_of(new.c)
                checks.require(new.target.cache.length == want_t,
                               f"{tag}: target cache length {new.target.cache.length}, expected {want_t} "
                               f"(inputs of the {new.c} committed stages)")
                want_d = self._end_of(min(new.c, c + g))
                checks.require(new.draft.cache.length == want_d,
                               f"{tag}: draft cache length {new.draft.cache.length}, expected {want_d} "
                               f"(inputs of stages < {min(new.c, c + g)} that stay valid)")
                state = new
            checks.require(state.done, f"not done after {rounds} rounds ({state.c} of {S} stages committed)")
            details = StateUpdateDetails(rounds=rounds, committed_per_round=committed_per_round, max_f_hat_abs_diff=max_f,
                                         target_cache_lengths=t_lens, draft_cache_lengths=d_lens)
            return f"{rounds} rounds: f_hat = rebuilt from committed tokens, caches truncated to valid inputs", details

        return self._run("test_state_update", body)

    def _f_hat_problem(self, tag: str, si: int, got, want, tokens, diff: float) -> str:
        msg = (f"{tag}: f_hat after stage {si} differs from the one rebuilt from committed tokens "
               f"(max abs diff {diff:.4f})")
        quant = self.target.vae.quantize
        for sj in range(si + 1):
            contrib = quant.stage_contribution(sj, quant.idx_to_h(sj, tokens[sj]))
            if max_abs_diff(got - want, contrib) <= self.tol.f_hat.allowed(contrib) + 1e-5:
                return msg + f": stage {sj}'s contribution is added twice (double f_hat update)"
            if max_abs_diff(want - got, contrib) <= self.tol.f_hat.allowed(contrib) + 1e-5:
                return msg + f": stage {sj}'s contribution is missing"
        return msg

    # ---- 6. caches --------------------------------------------------------------------------------
    def test_kv_cache_consistency(self, B: int = 2, gamma: int = 2) -> TestResult:
        """After every round of :meth:`SDVAR.iter_rounds` both caches equal a sequential prefill over the
        committed tokens (lengths, and keys/values of every layer)."""
        check_int(B, "B", 1)
        check_int(gamma, "gamma", 1)

        def body(checks: CheckLog):
            state = self._new_state(B, gamma)
            committed, t_lens, d_lens, t_round, d_round = [], [], [], [], []
            t_layer = [0.0] * self.target.depth
            d_layer = [0.0] * self.draft.depth
            for record in self.sd.iter_rounds(state):
                st = record.state
                tag = f"after round {record.index}"
                committed.append(st.c)
                t_lens.append(st.target.cache.length)
                d_lens.append(st.draft.cache.length)
                t_round.append(self._compare_cache(checks, f"{tag}: target", st.target.cache, self.target, st, st.c, t_layer))
                d = st.draft.cache.stages_held()
                checks.require(st.c - 1 <= d <= st.c,
                               f"{tag}: the draft cache holds {d} stages, {st.c} are committed (expected {st.c - 1} or {st.c})")
                d_round.append(self._compare_cache(checks, f"{tag}: draft", st.draft.cache, self.draft, st, d, d_layer))
            details = CacheDetails(rounds=len(committed), committed_stages=committed, target_cache_lengths=t_lens,
                                   draft_cache_lengths=d_lens, target_max_abs_diff_per_round=t_round,
                                   draft_max_abs_diff_per_round=d_round, target_max_abs_diff_per_layer=t_layer,
                                   draft_max_abs_diff_per_layer=d_layer)
            return f"{len(committed)} rounds: target and draft caches = sequential prefill (every layer)", details

        return self._run("test_kv_cache_consistency", body)

    def _compare_cache(self, checks: CheckLog, tag: str, cache, model: VAR, st: SDVARInferenceState, n_stages: int,
                       per_layer: list[float]) -> float:
        ref = sequential_cache(model, st.label_B, list(st.tokens), n_stages)
        if not checks.require(cache.length == ref.length,
                              f"{tag} cache length {cache.length}, a sequential prefill of {n_stages} stages has "
                              f"{ref.length}"):
            return float("inf")
        if ref.length == 0:  # both hold nothing: the length was the comparison
            return 0.0
        drift = cache_drift(ref, exact_cache(model, st.label_B, list(st.tokens), n_stages)) if self.tol.derived_cache else None
        worst = 0.0
        for layer in range(ref.num_layers):
            for kind, got, want in (("keys", cache.keys(layer), ref.keys(layer)),
                                    ("values", cache.values(layer), ref.values(layer))):
                diff = max_abs_diff(got, want)
                per_layer[layer] = max(per_layer[layer], diff)
                worst = max(worst, diff)
                allowed, why = self._cache_allowed(got, want, None if drift is None else getattr(drift, kind)[layer])
                checks.require(diff <= allowed,
                               f"{tag} cache {kind} of layer {layer} differ from a sequential prefill by {diff:.4f} "
                               f"(allowed {allowed:.4f}{why})")
        return worst

    def _cache_allowed(self, got: torch.Tensor, want: torch.Tensor, drift: float | None) -> tuple[float, str]:
        """The cache bound: fixed, or (half precision) one ulp plus twice the references' measured drift."""
        fixed = self.tol.cache.allowed(want)
        if drift is None:
            return fixed, ""
        magnitude = max(float(t.detach().abs().amax().float()) for t in (want, got)) if want.numel() else 0.0
        one_ulp = ulp(magnitude, self.tol.mantissa_bits)
        return (fixed + derived_allowed(magnitude, drift, self.tol.mantissa_bits),
                f" = 1 ulp {one_ulp:.4f} of {magnitude:.3g} + {DRIFT_FACTOR:g} x drift {drift:.4f} of a sequential "
                f"{self._dtype_name} prefill from the exact float32 one")

    @property
    def _dtype_name(self) -> str:
        return str(self.target.pos_1LC.dtype).removeprefix("torch.")

    def _images_allowed(self, want: torch.Tensor, f_hat_BChw: torch.Tensor) -> tuple[float, str]:
        """The image bound of :meth:`Tolerances.images_allowed` with the reference decode's measured drift."""
        return self.tol.images_allowed(want, decode_drift(self.target, f_hat_BChw))

    # ---- 7. greedy identity -----------------------------------------------------------------------
    def test_greedy_identity(self, B: int = 2, gamma: int = 2) -> TestResult:
        """``top_k=1``: parallel_v1's tokens are the target's greedy tokens (any draft, exact policy).

        Near ties (argmax gap within the logits tolerance) may resolve either way in reduced
        precision; every committed token must be the target's argmax given its committed prefix.
        """
        check_int(B, "B", 1)
        check_int(gamma, "gamma", 1)

        def body(checks: CheckLog):
            labels = self._labels(B)
            out = self.sd.generate_parallel(B, labels, self.seed, SamplingConfig(cfg=self.cfg, top_k=1), gamma, "exact")
            check = check_greedy(self.target, labels, self.cfg, out.tokens_per_stage, 0, self.S, self.tol.logits)
            checks.require(check.consistent, "parallel_v1 greedy tokens are not the target's greedy tokens: " + check.describe())
            checks.require(out.stats.target_passes <= self.S,
                           f"{out.stats.target_passes} target passes for {self.S} stages")
            details = GreedyDetails(identical=check.identical, differing_tokens=check.differing_tokens,
                                    max_argmax_gap=check.max_argmax_gap, tolerance=check.tolerance,
                                    target_passes=out.stats.target_passes, num_stages=self.S)
            return f"parallel_v1 (top_k=1): {check.describe()}; {out.stats.target_passes} target passes", details

        return self._run("test_greedy_identity", body)

    # ---- 8. end to end ----------------------------------------------------------------------------
    def test_end_to_end(self, B: int = 2, gamma: int = 2) -> TestResult:
        """A sampled parallel_v1 call: images decoded from the committed tokens, in ``[0, 1]``, of the
        VQVAE's size; at most ``S`` target passes; consistent statistics."""
        check_int(B, "B", 1)
        check_int(gamma, "gamma", 1)

        def body(checks: CheckLog):
            target, S = self.target, self.S
            out = self.sd.generate_parallel(B, self._labels(B), self.seed, self._sampling(), gamma)
            img, st = out.images_B3HW, out.stats
            H = target.vae.image_size
            checks.require(tuple(img.shape) == (B, 3, H, H), f"image shape {tuple(img.shape)}, expected {(B, 3, H, H)}")
            lo, hi = float(img.min()), float(img.max())
            checks.require(0.0 <= lo and hi <= 1.0, f"image values in [{lo:.4f}, {hi:.4f}], expected within [0, 1]")
            shapes_ok = checks.require(
                len(out.tokens_per_stage) == S
                and all(tuple(t.shape) == (B, self._L(s)) for s, t in enumerate(out.tokens_per_stage)),
                f"tokens per stage have shapes {[tuple(t.shape) for t in out.tokens_per_stage]}",
            )
            img_diff = float("nan")
            if shapes_ok:
                f_ref = reference_f_hats(target, out.tokens_per_stage)[-1]
                want = reference_images(target, f_ref)
                img_diff = max_abs_diff(img, want)
                allowed, why = self._images_allowed(want, f_ref)
                checks.require(img_diff <= allowed, f"images are not the decoded f_hat of the committed tokens "
                                                    f"(max abs diff {img_diff:.4f}, allowed {allowed:.4f}{why})")
            checks.require(st.target_passes <= S, f"{st.target_passes} target passes for {S} stages")
            checks.require(sum(st.stages_committed_per_round) == S,
                           f"committed stages per round {st.stages_committed_per_round} sum to "
                           f"{sum(st.stages_committed_per_round)}, not {S}")
            checks.require(st.draft_passes == sum(st.gamma_per_round),
                           f"{st.draft_passes} draft passes, but the rounds proposed {sum(st.gamma_per_round)} stages")
            checks.require(st.rounds == len(st.gamma_per_round) == st.target_passes,
                           f"{st.rounds} rounds, {len(st.gamma_per_round)} gammas, {st.target_passes} target passes")
            checks.require_pairs(st.accepted_tokens_per_stage, st.proposed_tokens_per_stage, lambda a, p: 0 <= a <= p,
                                 f"accepted tokens per stage {st.accepted_tokens_per_stage} within [0, proposed "
                                 f"{st.proposed_tokens_per_stage}]")
            checks.require_pairs(st.stages_accepted_per_round, st.gamma_per_round, lambda a, g: 0 <= a <= g,
                                 f"accepted stages per round {st.stages_accepted_per_round} within [0, gamma "
                                 f"{st.gamma_per_round}]")
            details = EndToEndDetails(
                image_shape=list(img.shape), image_min=lo, image_max=hi, target_passes=st.target_passes,
                draft_passes=st.draft_passes, rounds=st.rounds, committed_stages=sum(st.stages_committed_per_round),
                proposed_tokens=sum(st.proposed_tokens_per_stage), accepted_tokens=sum(st.accepted_tokens_per_stage),
                token_acceptance=st.token_acceptance, max_image_abs_diff=img_diff,
            )
            return (f"images {tuple(img.shape)} in [0, 1] decoded from the committed tokens; "
                            f"{st.target_passes} target passes for {S} stages; statistics consistent"), details

        return self._run("test_end_to_end", body)

    # ---- 9. test3 ---------------------------------------------------------------------------------
    def test_compare_with_test3(self, B: int = 2, entry_nums: Sequence[int] | None = None) -> TestResult:
        """Greedy test3 (``sd_mask=0``) at several ``entry_num``: the draft's prefix is the draft's greedy
        prefix, the target's stages are the target's greedy continuation of that prefix (so
        ``entry_num=0`` is the target's greedy decode), with ``entry_num`` draft passes and
        ``S - entry_num`` target passes (one prefill + one per later stage)."""
        check_int(B, "B", 1)
        S = self.S
        entries = sorted({0, S // 2, S}) if entry_nums is None else list(check_int_sequence(entry_nums, "entry_nums", 0, S))

        def body(checks: CheckLog):
            labels = self._labels(B)
            prefix_ok, suffix_ok, gaps, t_passes, d_passes = [], [], [], [], []
            for k in entries:
                out = get_method(f"test3_e{k}").run(self.sd, B, labels, self.seed, SamplingConfig(cfg=self.cfg, top_k=1))
                toks = out.tokens_per_stage
                pre = check_greedy(self.draft, labels, self.cfg, toks, 0, k, self.tol.logits)
                suf = check_greedy(self.target, labels, self.cfg, toks, k, S, self.tol.logits)
                prefix_ok.append(pre.identical)
                suffix_ok.append(suf.identical)
                gaps.append(max(pre.max_argmax_gap, suf.max_argmax_gap))
                if k > 0:  # entry_num 0 has no draft prefix, S no target stages: nothing to compare there
                    checks.require(pre.consistent,
                                   f"entry_num={k}: draft prefix is not the draft's greedy prefix: {pre.describe()}")
                if k < S:
                    checks.require(suf.consistent,
                                   f"entry_num={k}: target stages are not the target's greedy continuation: {suf.describe()}")
                t_passes.append(out.stats.target_passes)
                d_passes.append(out.stats.draft_passes)
                checks.require(out.stats.target_passes == S - k and out.stats.draft_passes == k,
                               f"entry_num={k}: {out.stats.draft_passes} draft / {out.stats.target_passes} target passes, "
                               f"expected {k} / {S - k}")
            details = Test3Details(entry_nums=entries, draft_prefix_identical=prefix_ok, target_suffix_identical=suffix_ok,
                                   max_argmax_gap=gaps, target_passes=t_passes, draft_passes=d_passes)
            return (f"entry_num {entries}: draft prefix = draft greedy, rest = target greedy continuation "
                            f"(entry_num=0 = target greedy); passes {d_passes} draft / {t_passes} target"), details

        return self._run("test_compare_with_test3", body)

    # ---- 10. baseline -----------------------------------------------------------------------------
    def test_compare_with_baseline(self, B: int = 2, gamma: int = 2) -> TestResult:
        """Greedy parallel_v1 image equals the greedy baseline (target alone) image within tolerance."""
        check_int(B, "B", 1)
        check_int(gamma, "gamma", 1)

        def body(checks: CheckLog):
            labels = self._labels(B)
            greedy = SamplingConfig(cfg=self.cfg, top_k=1)
            par = self.sd.generate_parallel(B, labels, self.seed, greedy, gamma)
            base = get_method("target").run(self.sd, B, labels, self.seed, greedy)
            agree = greedy_agreement(self.target, par, base, self.cfg, self.tol)
            same, diff, allowed = agree.tokens_identical, agree.images_max_abs_diff, agree.images_tolerance
            cmp = compare_images(par.images_B3HW, base.images_B3HW)
            if same:
                checks.require(agree.passed, f"same tokens but images differ by {diff:.4f} (tolerance {allowed:.4f})")
                note = "identical tokens"
            else:
                checks.require(agree.passed,
                               f"tokens differ and are not both greedy: parallel {agree.candidate.describe()}; "
                               f"baseline {agree.reference.describe()}")
                note = "tokens diverged at a near tie (both greedy within tolerance); images not comparable"
            checks.require(base.stats.target_passes == self.S,
                           f"baseline made {base.stats.target_passes} target passes for {self.S} stages")
            details = BaselineDetails(tokens_identical=same, mean_abs_diff=cmp.mean_abs_diff, l2_distance=cmp.l2_distance,
                                      pearson=cmp.pearson, parallel_target_passes=par.stats.target_passes,
                                      baseline_target_passes=base.stats.target_passes, tolerance=allowed)
            return (f"{note}; mean abs diff {cmp.mean_abs_diff:.4f}, L2 {cmp.l2_distance:.4f}, "
                            f"correlation {cmp.pearson:.4f}; target passes {par.stats.target_passes} vs "
                            f"{base.stats.target_passes}"), details

        return self._run("test_compare_with_baseline", body)

    # ---- 11. sampled distribution -------------------------------------------------------------------
    def test_sampled_distribution(self, B: int = 2, draws: int | None = None, alpha: float = 1e-3) -> TestResult:
        """Non-greedy: what the exact policy commits follows the target's ``p`` (greedy checks cannot see this).

        A real round at the models' own distributions: the target commits stage 0 (``c = 1``; ``c = 0``
        with two stages), the draft proposes stage ``c``, one target pass verifies stages ``c, c + 1``.
        Its rows of ``(p, q)`` of stage ``c`` (``R`` rows: ``B`` samples times the stage's tokens) are
        replicated ``n = draws // R`` times, ``n`` proposals per row are drawn from ``q`` here, and ONE
        :meth:`SDVAR.accept` call judges them all (the step takes any batch). Checked:

        1. the committed tokens follow ``p`` row by row (Pearson chi-square summed over rows), and no
           correction (the token committed for a rejected proposal) lies where ``p <= q``: the residual
           ``normalize(max(p - q, 0))`` has no mass there (exact; this has power at any vocabulary, also
           where a chi-square over thousands of nearly uniform categories has little);
        2. the number of accepted proposals is ``n sum_r sum_x q_r(x) min(1, p_r(x) / q_r(x))`` (z-test);
        3. with ``q = p`` (proposals drawn from ``p``) every proposal is accepted and the bonus stage
           ``c + 1`` is drawn: its tokens follow that stage's ``p`` (chi-square), and they hit their
           row's most likely token as often as ``p`` says (z-test on the count).

        Each of the four statistics at level ``alpha / 4`` (Bonferroni). ``draws`` defaults to ``2**22 // V`` judged
        tokens (at most ``2**16``), so the call stays small at any vocabulary. What it sees: an acceptance
        rule other than ``min(1, p/q)`` (e.g. ``** 0.9``), corrections not drawn from
        ``normalize(max(p - q, 0))``, a bonus stage taken as the argmax — see ``tests/test_harness_teeth.py``.
        """
        check_int(B, "B", 1)
        if draws is not None:
            check_int(draws, "draws", 1)
        check_number(alpha, "alpha", 0.0, 1.0, min_inclusive=False, max_inclusive=False)

        def body(checks: CheckLog):
            S, V = self.S, self.target.V
            gen = torch.Generator().manual_seed(self.seed + 1101)
            state = self._new_state(B, 1)
            c = 1 if S >= 3 else 0
            if c:
                state = self.sd.target_step(state)
            proposal = self.sd.draft(state, 1)
            verify = self.sd.verify(state, proposal)
            p_RV = verify.p_probs[0].reshape(-1, V).float()
            q_RV = proposal.q_probs[0].reshape(-1, V).float()
            R = p_RV.shape[0]
            n = max((draws if draws is not None else min(2**16, 2**22 // V)) // R, 1)
            device = p_RV.device
            # 1 + 2: proposals from q, judged by the state's (exact) policy
            x_nR = torch.multinomial(q_RV.cpu(), n, replacement=True, generator=gen).T.contiguous().to(device)
            fake = DraftProposal(start=state.c, tokens=[x_nR], q_probs=[q_RV.expand(n, R, V)], f_hats=[],
                                 draft_cache_before=0, draft_passes=1)
            acc = self.sd.accept(state, fake, VerifyResult(stages=[state.c], logits=[], p_probs=[p_RV.expand(n, R, V)]))
            committed = acc.committed[-1]
            fit = chi_square_rows(committed, p_RV)
            checks.require(fit.impossible == 0, f"stage {c}: {fit.impossible} committed token(s) have target probability 0")
            rejected = ~acc.verdicts[0].accepted_Bl
            rows = torch.arange(R, device=device).expand(n, R)
            outside = int((rejected & (p_RV[rows, committed] <= q_RV[rows, committed])).sum())
            checks.require(outside == 0,
                           f"stage {c}: committed tokens do not follow the target's p: {outside} of {int(rejected.sum())} "
                           "correction(s) lie where p <= q, where the residual normalize(max(p - q, 0)) has no mass")
            checks.require(fit.p_value > alpha / 4,
                           f"stage {c}: committed tokens do not follow the target's p (chi-square {fit.statistic:.1f}, "
                           f"{fit.dof} dof, p-value {fit.p_value:.2e})")
            a_R = (q_RV.double() * torch.where(q_RV > 0, p_RV.double() / q_RV.double().clamp_min(1e-300),
                                               torch.zeros_like(q_RV.double())).clamp(max=1)).sum(-1)
            accepted = int(acc.verdicts[0].accepted_Bl.sum())
            expected = float(n * a_R.sum())
            sd_acc = float((n * a_R * (1 - a_R)).sum()) ** 0.5
            z = (accepted - expected) / sd_acc if sd_acc > 0 else (0.0 if accepted == round(expected) else float("inf"))
            checks.require(2 * normal_sf(abs(z)) > alpha / 4,
                           f"stage {c}: {accepted} of {n * R} proposals accepted, min(1, p/q) gives {expected:.0f} "
                           f"(z = {z:.1f})")
            # 3: the bonus stage
            bonus_stage, fit_b, share, want_share, R1 = None, None, float("nan"), float("nan"), 0
            if len(verify.stages) > 1:
                bonus_stage = verify.stages[1]
                p1_RV = verify.p_probs[1].reshape(-1, V).float()
                R1 = p1_RV.shape[0]
                xb_nR = torch.multinomial(p_RV.cpu(), n, replacement=True, generator=gen).T.contiguous().to(device)
                sure = DraftProposal(start=state.c, tokens=[xb_nR], q_probs=[p_RV.expand(n, R, V)], f_hats=[],
                                     draft_cache_before=0, draft_passes=1)
                acc_b = self.sd.accept(state, sure, VerifyResult(stages=verify.stages, logits=[],
                                                                 p_probs=[p_RV.expand(n, R, V), p1_RV.expand(n, R1, V)]))
                if checks.require(acc_b.bonus and len(acc_b.committed) == 2,
                                  f"every proposal accepted (q = p) but no bonus stage {bonus_stage} was drawn"):
                    bonus = acc_b.committed[1].reshape(n, R1)
                    fit_b = chi_square_rows(bonus, p1_RV)
                    hits = float((bonus == p1_RV.argmax(-1)).double().sum())
                    p_max = p1_RV.max(-1).values.double()
                    share, want_share = hits / (n * R1), float(p_max.mean())
                    sd_hits = float((n * p_max * (1 - p_max)).sum()) ** 0.5
                    z_b = (hits - n * float(p_max.sum())) / sd_hits if sd_hits > 0 else 0.0
                    checks.require(fit_b.impossible == 0 and fit_b.p_value > alpha / 4 and 2 * normal_sf(abs(z_b)) > alpha / 4,
                                   f"bonus stage {bonus_stage}: tokens do not follow the target's p (chi-square "
                                   f"{fit_b.statistic:.1f}, {fit_b.dof} dof, p-value {fit_b.p_value:.2e}; argmax share "
                                   f"{share:.3f}, p gives {want_share:.3f}, z = {z_b:.1f})")
            details = SampledDetails(
                stage=c, rows=R, draws_per_row=n, chi_square=fit.statistic, dof=fit.dof, p_value=fit.p_value,
                accepted=accepted, expected_accepted=expected, acceptance_z=z, bonus_stage=bonus_stage, bonus_rows=R1,
                bonus_chi_square=fit_b.statistic if fit_b else float("nan"), bonus_dof=fit_b.dof if fit_b else 0,
                bonus_p_value=fit_b.p_value if fit_b else float("nan"), bonus_argmax_share=share,
                expected_bonus_argmax_share=want_share, alpha=alpha,
            )
            bonus_text = (f"; bonus stage {bonus_stage} ~ p (p-value {fit_b.p_value:.2g})" if fit_b else "")
            return (f"stage {c}, {R} rows x {n} draws: committed ~ p (chi-square p-value {fit.p_value:.2g}), "
                    f"acceptance z {z:+.2f}{bonus_text}"), details

        return self._run("test_sampled_distribution", body)

    # ---- all --------------------------------------------------------------------------------------
    def run_all_tests(self, B: int = 2, gamma: int = 2, print_results: bool = True, show_times: bool = True) -> list[TestResult]:
        """Every test in order; prints the summary (:func:`~test_framework.results.print_summary`) unless told not to."""
        check_int(B, "B", 1)
        check_int(gamma, "gamma", 1)
        check_bool(print_results, "print_results")
        check_bool(show_times, "show_times")
        results = [
            self.test_build_combined_query(B, gamma),
            self.test_split_logits_by_stage(B, gamma),
            self.test_draft_generate_batch(B, gamma),
            self.test_target_verify_batch(B, gamma),
            self.test_state_update(B, gamma),
            self.test_kv_cache_consistency(B, gamma),
            self.test_greedy_identity(B, gamma),
            self.test_end_to_end(B, gamma),
            self.test_compare_with_test3(B),
            self.test_compare_with_baseline(B, gamma),
            self.test_sampled_distribution(B),
        ]
        if print_results:
            print_summary(results, show_times=show_times)
        return results
