"""Scale hand-off decoders: one model makes the first stages, the other reads that prefix and finishes.

- ``test3`` (draft first): the draft makes stages ``< entry_num``; the target reads the whole prefix
  in one block-causal pass (``sd_mask`` may select an experimental prefill mask) and finishes;
- CoDe-style (target first): the target makes stages ``< entry_num``, the draft finishes;
- with ``entry_num == S`` the first model decodes alone (the baseline and the draft alone).

:func:`decode_stages` is the loop every stage-by-stage decode shares (including SDVAR's target-alone
fallback): its first pass reads every input the run's cache is missing in one chunk, the later
passes one stage each.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sdvar_lib.models.sampling import SamplingConfig
from sdvar_lib.models.var import VAR
from sdvar_lib.sdvar.masks import prefill_mask
from sdvar_lib.sdvar.run import ModelRun, RunFactory
from sdvar_lib.sdvar.stats import SDVARStats

__all__ = ["StagesDecoded", "decode_stages", "HandoffResult", "decode_handoff"]


@dataclass(frozen=True)
class StagesDecoded:
    """Tokens and ``f_hat`` after each stage decoded by :func:`decode_stages`, and its pass count."""

    tokens: tuple[torch.Tensor, ...]
    f_hats: tuple[torch.Tensor, ...]
    passes: int


def decode_stages(
    run: ModelRun,
    tokens: tuple[torch.Tensor, ...],
    f_hats: tuple[torch.Tensor, ...],
    stop: int,
    sampling: SamplingConfig,
    rng: torch.Generator | None,
    sd_mask: int = 0,
) -> StagesDecoded:
    """Generate stages ``len(tokens) .. stop - 1`` with one model on top of the given committed prefix.

    The first pass reads every input the run's cache is missing (stages ``d .. c``) in one chunk
    under the ``sd_mask`` prefill mask; later passes read one stage each.
    """
    model = run.model
    quant = model.vae.quantize
    tokens, f_hats, passes = list(tokens), list(f_hats), 0
    while len(tokens) < stop:
        c = len(tokens)
        d = run.cache.stages_held()
        passes += 1
        if d == c:  # one stage: the run's whole-stage step
            sample, f_hat = run.decode_stage(c, f_hats, sampling, rng)
            tokens.append(sample.idx_Bl)
            f_hats.append(f_hat)
            continue
        stages = list(range(d, c + 1))
        x = run.chunk_input(stages, f_hats)
        mask = None
        if sd_mask != 0:
            if d != 0:
                raise RuntimeError("experimental prefill masks apply to a prefill from stage 0 only")
            mask = prefill_mask(model.lvl_1L[0, : x.shape[1]], sd_mask)
        sample = run.sample_stage(run.forward(x, attn_mask=mask), c, sampling, rng)
        tokens.append(sample.idx_Bl)
        contrib = quant.stage_contribution(c, sample.h_BChw)
        f_hats.append(contrib if c == 0 else f_hats[-1] + contrib)
    return StagesDecoded(tokens=tuple(tokens), f_hats=tuple(f_hats), passes=passes)


@dataclass(frozen=True)
class HandoffResult:
    tokens: tuple[torch.Tensor, ...]
    f_hats: tuple[torch.Tensor, ...]
    stats: SDVARStats


def decode_handoff(
    new_run: RunFactory,
    first: VAR,
    second: VAR,
    first_is_target: bool,
    labels: torch.Tensor,
    sampling: SamplingConfig,
    rng: torch.Generator | None,
    entry_num: int,
    sd_mask: int = 0,
) -> HandoffResult:
    """``first`` makes stages ``< entry_num``, ``second`` reads that prefix (under ``sd_mask``) and finishes.

    Each model's run is reset when its part is done, also when a pass raises.
    """
    S = first.num_stages
    done = StagesDecoded(tokens=(), f_hats=(), passes=0)
    stats = SDVARStats(num_stages=S)
    for model, stop, is_target, mask in ((first, entry_num, first_is_target, 0), (second, S, not first_is_target, sd_mask)):
        if len(done.tokens) >= stop:
            continue
        run = new_run(model, labels)
        try:
            part = decode_stages(run, done.tokens, done.f_hats, stop, sampling, rng, sd_mask=mask)
        finally:
            run.cache.reset()
        stats = stats.with_passes(target=part.passes) if is_target else stats.with_passes(draft=part.passes)
        done = part
    return HandoffResult(tokens=done.tokens, f_hats=done.f_hats, stats=stats)
