"""The decoders besides SDVAR's rounds: one model alone, or one model making the first stages and the other finishing.

Each is a function of an :class:`~sdvar_lib.sdvar.decoder.SDVAR` (the pair and its run factory) and
one :class:`~sdvar_lib.models.sampling.SamplingConfig`, returning an
:class:`~sdvar_lib.sdvar.stats.SDVAROutput`; the registry runs them (:mod:`sdvar_lib.sdvar.registry`:
``get_method("target")``, ``"draft"``, ``"test3_e5"``, ``"code_e6"``):

- :func:`baseline`: the target alone (the same draws as ``target.generate``);
- :func:`draft_alone`: the draft alone;
- :func:`generate_test3` (draft first): the draft makes stages ``< entry_num``; the target reads
  the whole prefix in one block-causal pass (``sd_mask`` may select an experimental prefill mask,
  :mod:`sdvar_lib.sdvar.masks`) and finishes;
- :func:`code_handoff` (CoDe-style, target first): the target makes stages ``< entry_num``, the
  draft reads the prefix and finishes.

Every part is :func:`sdvar_lib.models.run.decode_stages`, the stage-by-stage loop of the reference
sampler: its first step reads every input the run's cache is missing in one chunk.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from sdvar_lib.models.run import StagesDecoded, decode_stages
from sdvar_lib.models.sampling import SamplingConfig
from sdvar_lib.models.var import VAR
from sdvar_lib.sdvar.decoder import SDVAR
from sdvar_lib.sdvar.masks import check_sd_mask, prefill_mask
from sdvar_lib.sdvar.stats import SDVAROutput, SDVARStats
from sdvar_lib.util.checks import check_int
from sdvar_lib.util.modes import eval_mode

__all__ = ["baseline", "draft_alone", "generate_test3", "code_handoff", "HandoffResult", "decode_handoff"]


@dataclass(frozen=True)
class HandoffResult:
    tokens: tuple[torch.Tensor, ...]
    f_hats: tuple[torch.Tensor, ...]
    stats: SDVARStats


def decode_handoff(sd: SDVAR, first_is_target: bool, labels: torch.Tensor, sampling: SamplingConfig,
                   rng: torch.Generator | None, entry_num: int, sd_mask: int = 0) -> HandoffResult:
    """The first model makes stages ``< entry_num``, the second reads that prefix (under ``sd_mask``) and finishes.

    Each model's run is reset when its part is done, also when a pass raises.
    """
    first, second = (sd.target_model, sd.draft_model) if first_is_target else (sd.draft_model, sd.target_model)
    S = first.num_stages
    check_int(entry_num, "entry_num", 0, S)
    check_sd_mask(sd_mask)
    done = StagesDecoded(tokens=(), f_hats=(), passes=0)
    stats = SDVARStats(num_stages=S)
    for model, stop, is_target, mask in ((first, entry_num, first_is_target, 0), (second, S, not first_is_target, sd_mask)):
        if len(done.tokens) >= stop:
            continue
        run = sd.new_run(model, labels)
        try:
            first_mask = None
            if mask != 0:  # the second model's prefill reads stages 0 .. c in one chunk
                first_mask = prefill_mask(model.lvl_1L[0, : model.begin_ends[len(done.tokens)][1]], mask)
            part = decode_stages(run, done.tokens, done.f_hats, stop, sampling, rng, first_mask)
        finally:
            run.cache.reset()
        stats = stats.with_passes(target=part.passes) if is_target else stats.with_passes(draft=part.passes)
        done = part
    return HandoffResult(tokens=done.tokens, f_hats=done.f_hats, stats=stats)


def _whole_call(sd: SDVAR, first_is_target: bool, B: int, label_B, g_seed: int | None, sampling: SamplingConfig | None,
                entry_num: int | None, sd_mask: int) -> SDVAROutput:
    """One call of a hand-off (``entry_num=None``: the first model alone), arguments checked before any pass."""
    if not isinstance(sd, SDVAR):
        raise TypeError(f"sd must be an sdvar_lib.SDVAR, got {type(sd).__name__}")
    t0, one_off0 = time.perf_counter(), sd.one_off_seconds()
    S = sd.num_stages
    entry_num = S if entry_num is None else entry_num
    check_int(entry_num, "entry_num", 0, S)
    check_sd_mask(sd_mask)
    first, second = (sd.target_model, sd.draft_model) if first_is_target else (sd.draft_model, sd.target_model)
    used: tuple[VAR, ...] = (first,) if entry_num == S else (second,) if entry_num == 0 else (first, second)
    sampling, labels, rng = sd.start_call(B, label_B, g_seed, sampling, used)
    with torch.no_grad(), eval_mode(sd.draft_model, sd.target_model, sd.vae):
        result = decode_handoff(sd, first_is_target, labels, sampling, rng, entry_num, sd_mask)
        return sd.finish_call(result.tokens, result.f_hats, labels, result.stats, t0, one_off0)


def baseline(sd: SDVAR, B: int, label_B=None, g_seed: int | None = None, sampling: SamplingConfig | None = None
             ) -> SDVAROutput:
    """The target alone (the same draws as ``target.generate``), with statistics."""
    return _whole_call(sd, True, B, label_B, g_seed, sampling, None, 0)


def draft_alone(sd: SDVAR, B: int, label_B=None, g_seed: int | None = None, sampling: SamplingConfig | None = None
                ) -> SDVAROutput:
    """The draft alone, with statistics."""
    return _whole_call(sd, False, B, label_B, g_seed, sampling, None, 0)


def generate_test3(sd: SDVAR, B: int, label_B=None, g_seed: int | None = None, sampling: SamplingConfig | None = None,
                   entry_num: int | None = None, sd_mask: int = 0) -> SDVAROutput:
    """Draft makes stages ``< entry_num``; the target reads that prefix in one pass and finishes.

    ``entry_num=None`` means every stage (the research code's default of 10 on the official scales).
    """
    return _whole_call(sd, False, B, label_B, g_seed, sampling, entry_num, sd_mask)


def code_handoff(sd: SDVAR, B: int, label_B=None, g_seed: int | None = None, sampling: SamplingConfig | None = None,
                 entry_num: int = 6) -> SDVAROutput:
    """CoDe-style: the target makes stages ``< entry_num``, the draft reads the prefix and finishes."""
    check_int(entry_num, "entry_num", 0)  # None (test3's "every stage") would silently be the target alone
    return _whole_call(sd, True, B, label_B, g_seed, sampling, entry_num, 0)
