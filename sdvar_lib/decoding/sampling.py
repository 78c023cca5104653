"""Sampling pieces shared by every decoder: CFG, top-k/top-p filtering, multinomial, Gumbel mixing.

The order of random draws and the operations match the reference VAR so that a given ``g_seed``
reproduces its tokens bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = [
    "SamplingConfig",
    "cfg_strength",
    "apply_cfg",
    "filter_top_k_top_p",
    "sampling_probs",
    "sample_from_probs",
    "gumbel_softmax_with_rng",
    "smooth_temperature",
    "validate_sampling",
]


@dataclass(frozen=True)
class SamplingConfig:
    """Classifier-free guidance and filtering of one generation call."""

    cfg: float = 1.5
    top_k: int = 0
    top_p: float = 0.0
    more_smooth: bool = False

    def __post_init__(self) -> None:
        validate_sampling(self.cfg, self.top_k, self.top_p)


def validate_sampling(cfg: float, top_k: int, top_p: float) -> None:
    """Raise ``ValueError``/``TypeError`` for out-of-range guidance or filtering arguments."""
    if isinstance(cfg, bool) or not isinstance(cfg, (int, float)):
        raise TypeError(f"cfg must be a number >= 0, got {cfg!r}")
    if not cfg >= 0:
        raise ValueError(f"cfg must be >= 0 (0 disables guidance), got {cfg}")
    if isinstance(top_k, bool) or not isinstance(top_k, int):
        raise TypeError(f"top_k must be an int >= 0 (0 disables top-k), got {top_k!r}")
    if top_k < 0:
        raise ValueError(f"top_k must be >= 0 (0 disables top-k), got {top_k}")
    if isinstance(top_p, bool) or not isinstance(top_p, (int, float)):
        raise TypeError(f"top_p must be a number in [0, 1] (0 disables top-p), got {top_p!r}")
    if not 0.0 <= top_p <= 1.0:
        raise ValueError(f"top_p must be in [0, 1] (0 disables top-p), got {top_p}")


def cfg_strength(cfg: float, si: int, num_stages: int) -> float:
    """Guidance at stage ``si``: ``cfg * si / (S - 1)``."""
    return cfg * (si / (num_stages - 1))


def apply_cfg(logits_2BlV: torch.Tensor, t: float) -> torch.Tensor:
    """``(1 + t) * cond - t * uncond`` on a CFG-doubled batch (conditional half first)."""
    B = logits_2BlV.shape[0] // 2
    return (1 + t) * logits_2BlV[:B] - t * logits_2BlV[B:]


def filter_top_k_top_p(logits_BlV: torch.Tensor, top_k: int = 0, top_p: float = 0.0) -> torch.Tensor:
    """Logits with the entries outside top-k / top-p set to ``-inf`` (a new tensor).

    top-k drops logits below the k-th largest; top-p sorts ascending and drops the entries whose
    cumulative softmax is ``<= 1 - top_p``, always keeping the largest.
    """
    if top_k > 0:
        kth_Bl1 = logits_BlV.topk(top_k, largest=True, sorted=False, dim=-1)[0].amin(dim=-1, keepdim=True)
        logits_BlV = logits_BlV.masked_fill(logits_BlV < kth_Bl1, -torch.inf)
    if top_p > 0:
        sorted_logits, sorted_idx = logits_BlV.sort(dim=-1, descending=False)
        remove_sorted = sorted_logits.softmax(dim=-1).cumsum_(dim=-1) <= (1 - top_p)
        remove_sorted[..., -1:] = False
        remove = torch.zeros_like(remove_sorted).scatter(-1, sorted_idx, remove_sorted)
        logits_BlV = logits_BlV.masked_fill(remove, -torch.inf)
    return logits_BlV


def sampling_probs(logits_BlV: torch.Tensor, top_k: int = 0, top_p: float = 0.0) -> torch.Tensor:
    """The distribution a token is drawn from: ``softmax(filter_top_k_top_p(logits))``."""
    return filter_top_k_top_p(logits_BlV, top_k, top_p).softmax(dim=-1)


def sample_from_probs(probs_BlV: torch.Tensor, rng: torch.Generator | None) -> torch.Tensor:
    """One draw per token with a single ``multinomial`` call: ``(B, l)`` int64."""
    B, l, V = probs_BlV.shape
    return torch.multinomial(probs_BlV.reshape(-1, V), num_samples=1, replacement=True, generator=rng).view(B, l)


def smooth_temperature(ratio: float) -> float:
    """Gumbel-softmax temperature of ``more_smooth`` at progress ``ratio = si / (S - 1)``."""
    return max(0.27 * (1 - ratio * 0.95), 0.005)


def gumbel_softmax_with_rng(
    logits: torch.Tensor, tau: float, rng: torch.Generator | None, dim: int = -1
) -> torch.Tensor:
    """Soft Gumbel-softmax whose noise comes from ``exponential_(generator=rng)``."""
    gumbels = -torch.empty_like(logits, memory_format=torch.legacy_contiguous_format).exponential_(generator=rng).log()
    return ((logits + gumbels) / tau).softmax(dim)
