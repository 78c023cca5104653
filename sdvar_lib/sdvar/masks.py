"""Attention masks of SDVAR's chunked passes, built from stage ids (never "attend to everything cached").

- the verify pass: :func:`sdvar_lib.models.kv_cache.block_causal_mask` of the chunk's stages over
  the cached prefix plus the chunk;
- the hand-off prefill (``test3``): ``sd_mask`` selects the standard block-causal mask or one of the
  experimental masks of the original notebooks (:data:`SD_MASK_MODES`).
"""

from __future__ import annotations

import torch

__all__ = ["SD_MASK_MODES", "check_sd_mask", "prefill_mask"]

SD_MASK_MODES = {
    0: "block-causal (standard)",
    1: "within-stage diagonal only",
    2: "within-stage diagonal only, last stage open",
    3: "native block-causal (the model's training mask)",
    4: "block-diagonal",
    5: "block-diagonal, last stage open",
}


def check_sd_mask(sd_mask) -> int:
    """``sd_mask`` if it is one of the modes of :data:`SD_MASK_MODES`."""
    allowed = f"one of {sorted(SD_MASK_MODES)} ({SD_MASK_MODES})"
    if isinstance(sd_mask, bool) or not isinstance(sd_mask, int):
        raise TypeError(f"sd_mask must be {allowed}, got {sd_mask!r}")
    if sd_mask not in SD_MASK_MODES:
        raise ValueError(f"sd_mask must be {allowed}, got {sd_mask!r}")
    return sd_mask


def prefill_mask(stage_ids_l: torch.Tensor, sd_mask: int) -> torch.Tensor | None:
    """Boolean ``(l, l)`` mask of a prefill chunk starting at position 0 (``None`` = block-causal).

    Modes 1-5 reproduce the experimental masks of the original notebooks; only 0 and 3 are the
    attention the model was trained with.
    """
    if not isinstance(stage_ids_l, torch.Tensor) or stage_ids_l.dim() != 1:
        raise TypeError(f"stage_ids_l must be a 1-D tensor of stage ids, got {type(stage_ids_l).__name__}")
    check_sd_mask(sd_mask)
    q = stage_ids_l.unsqueeze(1)
    k = stage_ids_l.unsqueeze(0)
    if sd_mask in (0, 3):
        return None if sd_mask == 0 else k <= q
    last = int(stage_ids_l.max())
    if sd_mask in (1, 2):
        eye = torch.eye(stage_ids_l.numel(), dtype=torch.bool, device=stage_ids_l.device)
        mask = (k < q) | eye
    else:
        mask = k == q
    if sd_mask in (2, 5):
        mask = mask | ((q == last) & (k <= q))
    return mask
