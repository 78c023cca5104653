"""The per-call model run: one model's CFG-doubled condition, embeddings and KV cache for one call.

Every decoder gets its runs from a *run factory* ``(model, label_B) -> ModelRun``; :func:`eager_run`
(a fresh float32 cache per call) is the default, :class:`sdvar_lib.fast.FastRunFactory` hands out
reusable CUDA-graph runs. A run's cache only ever grows by passes and shrinks by ``truncate``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from sdvar_lib.models.kv_cache import KVCache
from sdvar_lib.models.sampling import SamplingConfig, StageSample, cfg_labels, guided_logits
from sdvar_lib.models.var import VAR

__all__ = ["ModelRun", "RunFactory", "eager_run"]


@dataclass
class ModelRun:
    """One model's per-call context: CFG-doubled class condition, embeddings and its KV cache."""

    model: VAR
    cond_2BD: torch.Tensor
    lvl_pos_1LC: torch.Tensor
    cache: KVCache

    def stage_input(self, si: int, f_hats: Sequence[torch.Tensor]) -> torch.Tensor:
        """CFG-doubled input of stage ``si`` (``f_hats[s]`` is ``f_hat`` after stage ``s``)."""
        if si == 0:
            return self.model.start_input(self.cond_2BD, self.lvl_pos_1LC)
        return self.model.next_stage_input(si - 1, f_hats[si - 1], self.lvl_pos_1LC)

    def chunk_input(self, stages: Sequence[int], f_hats: Sequence[torch.Tensor]) -> torch.Tensor:
        """CFG-doubled inputs of consecutive ``stages``, concatenated along the token axis."""
        return torch.cat([self.stage_input(si, f_hats) for si in stages], dim=1)

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
                     rng: torch.Generator | None) -> tuple[StageSample, torch.Tensor]:
        """One stage on a cache holding the inputs of stages ``< si``: its input, one pass, the draw, ``f_hat``.

        Returns the sample and ``f_hat`` after stage ``si`` (``f_hats[si - 1]`` plus the stage's
        contribution). A fast run may run the whole stage as one program.
        """
        sample = self.sample_stage(self.forward(self.stage_input(si, f_hats)), si, sampling, rng)
        contrib = self.model.vae.quantize.stage_contribution(si, sample.h_BChw)
        return sample, (contrib if si == 0 else f_hats[si - 1] + contrib)


RunFactory = Callable[[VAR, torch.Tensor], ModelRun]


def eager_run(model: VAR, label_B: torch.Tensor) -> ModelRun:
    """The default per-call run: CFG-doubled condition, embeddings and a fresh float32 cache."""
    cond = model.class_condition(cfg_labels(label_B, model.num_classes))
    return ModelRun(model=model, cond_2BD=cond, lvl_pos_1LC=model.lvl_pos(), cache=model.new_cache(2 * label_B.numel()))
