"""One model's per-call run, the stage step on it, and the stage-by-stage loop every decoder shares.

- :class:`ModelRun`: a model's CFG-doubled class condition, embeddings and KV cache for one call.
  Every decoder gets its runs from a *run factory* ``(model, label_B) -> ModelRun``:
  :func:`eager_run` (a fresh float32 cache per call) is the default,
  :class:`sdvar_lib.fast.factory.FastRunFactory` hands out reusable CUDA-graph runs. A run's cache
  only ever grows by passes and shrinks by ``truncate``.
- :meth:`ModelRun.decode_stage` is **the stage step**: read the stage's input (with every input
  the cache is missing before it, in one *catch-up* chunk), one pass, the draw
  (:func:`~sdvar_lib.models.sampling.guided_logits` ->
  :meth:`~sdvar_lib.models.var.VAR.sample_stage`, whose distribution is
  :func:`~sdvar_lib.models.sampling.stage_probs`) and the ``f_hat`` update
  (:meth:`~sdvar_lib.models.quant.MultiScaleQuantizer.f_hat_after`).
- :func:`decode_stages` is **the stage-by-stage loop** of one model: the reference sampler
  (:meth:`sdvar_lib.models.var.VAR.generate`), the hand-off decoders and SDVAR's target-alone
  calls all run it.
- :func:`prepare_call`: the checks and the first random draws every whole call starts with.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from sdvar_lib.models.kv_cache import KVCache
from sdvar_lib.models.sampling import (
    SamplingConfig,
    StageSample,
    cfg_labels,
    check_batch_size,
    guided_logits,
    make_generator,
    prepare_labels,
)

if TYPE_CHECKING:  # var.py builds its reference sampler on this module; the import is for annotations only
    from sdvar_lib.models.var import VAR

__all__ = ["ModelRun", "RunFactory", "eager_run", "StagesDecoded", "decode_stages", "prepare_call"]


@dataclass
class ModelRun:
    """One model's per-call context: CFG-doubled class condition, embeddings and its KV cache.

    ``epoch`` counts the inference states that took over this run's cache (each prepared or
    committed SDVAR state is one; :mod:`sdvar_lib.sdvar.state`): a state whose epoch is behind is stale.
    """

    model: VAR
    cond_2BD: torch.Tensor
    lvl_pos_1LC: torch.Tensor
    cache: KVCache
    epoch: int = 0

    def stage_input(self, si: int, f_hats: Sequence[torch.Tensor]) -> torch.Tensor:
        """CFG-doubled input of stage ``si`` (``f_hats[s]`` is ``f_hat`` after stage ``s``)."""
        if si == 0:
            return self.model.start_input(self.cond_2BD, self.lvl_pos_1LC)
        return self.model.next_stage_input(si - 1, f_hats[si - 1], self.lvl_pos_1LC)

    def chunk_input(self, stages: Sequence[int], f_hats: Sequence[torch.Tensor]) -> torch.Tensor:
        """CFG-doubled inputs of consecutive ``stages``, concatenated along the token axis."""
        inputs = [self.stage_input(si, f_hats) for si in stages]
        return inputs[0] if len(inputs) == 1 else torch.cat(inputs, dim=1)

    def forward(self, x_2BlC: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        """One pass over a chunk at ``[cache.length, + l)``; float32 logits ``(2B, l, V)``."""
        return self.model.forward_cached(x_2BlC, self.cond_2BD, self.cache, attn_mask=attn_mask)

    def sample_stage(self, logits_2BlV: torch.Tensor, si: int, sampling: SamplingConfig,
                     rng: torch.Generator | None) -> StageSample:
        """Stage ``si``'s tokens from a pass's CFG-doubled logits (the stage is the chunk's last ``pn**2`` positions).

        Guidance, then :meth:`~sdvar_lib.models.var.VAR.sample_stage` (the reference's draws); a fast
        run may do the same work in fewer kernels.
        """
        model = self.model
        l = model.patch_nums[si] ** 2
        return model.sample_stage(guided_logits(logits_2BlV[:, -l:], si, model.num_stages, sampling.cfg), si, sampling, rng)

    def decode_stage(self, si: int, f_hats: Sequence[torch.Tensor], sampling: SamplingConfig,
                     rng: torch.Generator | None, attn_mask: torch.Tensor | None = None) -> tuple[StageSample, torch.Tensor]:
        """The stage step: stage ``si``'s input, one pass, the draw and ``f_hat`` after stage ``si``.

        The cache holds the inputs of stages ``< d`` with ``d <= si``; the pass reads the inputs of
        stages ``d .. si`` in one block-causal chunk (``d < si``: the catch-up chunk of a run that
        fell behind, or a hand-off's prefill; ``attn_mask`` may replace its mask, for experiments).
        ``f_hats[s]`` is ``f_hat`` after stage ``s`` for every ``s < si``. A fast run may run a
        single stage as one program.
        """
        d = self.cache.stages_held()
        if d > si:
            raise RuntimeError(f"the cache holds the inputs of {d} stages; stage {si} cannot be decoded on it "
                             "(the run is ahead of the committed stages)")
        sample = self.sample_stage(self.forward(self.chunk_input(range(d, si + 1), f_hats), attn_mask), si, sampling, rng)
        f_hat = self.model.vae.quantize.f_hat_after(si, f_hats[si - 1] if si > 0 else None, sample.h_BChw)
        return sample, f_hat

    def decode_stages(self, tokens: Sequence[torch.Tensor], f_hats: Sequence[torch.Tensor], stop: int,
                      sampling: SamplingConfig, rng: torch.Generator | None,
                      first_mask: torch.Tensor | None = None) -> StagesDecoded:
        """:func:`decode_stages` on this run: one stage step per stage (a fast run may chain them in one program)."""
        tokens, f_hats, passes = list(tokens), list(f_hats), 0
        while len(tokens) < stop:
            sample, f_hat = self.decode_stage(len(tokens), f_hats, sampling, rng, first_mask if passes == 0 else None)
            tokens.append(sample.idx_Bl)
            f_hats.append(f_hat)
            passes += 1
        return StagesDecoded(tokens=tuple(tokens), f_hats=tuple(f_hats), passes=passes)


RunFactory = Callable[["VAR", torch.Tensor], ModelRun]
"""``(model, label_B) -> ModelRun``. A factory that prepares programs once (the fast path) may also expose
``one_off_s``, the seconds spent on that one-off work so far; whole calls count their share of it apart
(:attr:`~sdvar_lib.sdvar.stats.SDVARStats.one_off_s`)."""


def eager_run(model: VAR, label_B: torch.Tensor, cache: KVCache | None = None) -> ModelRun:
    """The default per-call run: CFG-doubled condition, embeddings and a fresh float32 cache (or ``cache``, reset)."""
    cond = model.class_condition(cfg_labels(label_B, model.num_classes))
    if cache is None:
        cache = model.new_cache(2 * label_B.numel())
    cache.reset()
    return ModelRun(model=model, cond_2BD=cond, lvl_pos_1LC=model.lvl_pos(), cache=cache)


def prepare_call(model: VAR, B: int, label_B, g_seed: int | None, sampling: SamplingConfig
                 ) -> tuple[torch.Tensor, torch.Generator | None]:
    """Check what every whole call shares, then seed the generator and prepare the labels: ``(labels, rng)``.

    ``B >= 1``, ``sampling`` a :class:`~sdvar_lib.models.sampling.SamplingConfig` whose ``top_k``
    fits ``model``'s vocabulary, ``g_seed`` in ``[0, 2**63)`` or ``None``; labels ``None`` are the
    call's first random draw (:func:`~sdvar_lib.models.sampling.prepare_labels`).
    """
    check_batch_size(B)
    if model.device.type == "meta":
        raise ValueError("the models are on the meta device (shapes without weights): they cannot decode; "
                         "load them on 'cpu' or 'cuda' (load_pair(..., device='cpu'))")
    if not isinstance(sampling, SamplingConfig):
        raise TypeError(f"sampling must be a SamplingConfig (cfg, top_k, top_p, more_smooth), got {type(sampling).__name__}")
    sampling.check_vocabulary(model.V)
    rng = make_generator(g_seed, model.device)
    return prepare_labels(B, label_B, model.num_classes, rng, model.device), rng


@dataclass(frozen=True)
class StagesDecoded:
    """Tokens and ``f_hat`` after each stage decoded by :func:`decode_stages`, and its pass count."""

    tokens: tuple[torch.Tensor, ...]
    f_hats: tuple[torch.Tensor, ...]
    passes: int


def decode_stages(
    run: ModelRun,
    tokens: Sequence[torch.Tensor],
    f_hats: Sequence[torch.Tensor],
    stop: int,
    sampling: SamplingConfig,
    rng: torch.Generator | None,
    first_mask: torch.Tensor | None = None,
) -> StagesDecoded:
    """Decode stages ``len(tokens) .. stop - 1`` with one model on top of a committed prefix, one stage step each.

    The first step reads every input the run's cache is missing in one chunk (``first_mask`` may
    replace its block-causal mask: the hand-offs' experimental prefill masks); the later steps
    read one stage each. :meth:`ModelRun.decode_stages` runs it; a fast run chains the steps in
    one program (:meth:`sdvar_lib.fast.run.FastRun.decode_stages`), with the same draws.
    """
    return run.decode_stages(tokens, f_hats, stop, sampling, rng, first_mask)
