"""The sampling contract of the reference VAR: CFG, top-k/top-p, one multinomial draw, Gumbel mixing.

Pure tensor functions shared by the reference sampler (:meth:`sdvar_lib.models.var.VAR.generate`)
and every decoder above it. The order of random draws and the operations match the reference VAR
so that a given ``g_seed`` reproduces its tokens bit for bit (DESIGN §4):

- one ``torch.Generator`` seeded with ``g_seed`` drives everything (:func:`make_generator`);
- labels: ``None`` draws ``B`` labels first with one ``multinomial`` call (:func:`prepare_labels`);
- per stage: CFG (:func:`guided_logits`) -> :func:`stage_probs` (:func:`filter_top_k_top_p`, softmax)
  -> :func:`sample_from_probs`; with ``more_smooth`` a Gumbel-softmax mixture (:func:`gumbel_softmax_with_rng`).

:func:`stage_probs` is the one place a stage's guided logits become the distribution its tokens are
drawn from: the draft's ``q``, the target's ``p`` in SDVAR's verification and every model's draw
(:meth:`sdvar_lib.models.var.VAR.sample_stage`) all come from it, so they agree by construction
(losslessness rests on it). The fast path's fused sampler kernel
(:mod:`sdvar_lib.fast.kernels.sampling`) is its fused equivalent, checked against it by the tests.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from sdvar_lib.util.checks import INT64_MIN, check_bool, check_int, check_number, check_seed, check_sequence

__all__ = [
    "CFG_LIMIT",
    "check_cfg",
    "SamplingConfig",
    "StageSample",
    "GenerationOutput",
    "NonFiniteDistributionError",
    "check_batch_size",
    "check_labels",
    "make_generator",
    "prepare_labels",
    "cfg_labels",
    "cfg_strength",
    "apply_cfg",
    "guided_logits",
    "filter_top_k_top_p",
    "stage_probs",
    "sample_from_probs",
    "smooth_temperature",
    "gumbel_softmax_with_rng",
]


CFG_LIMIT = 1e6
"""The largest classifier-free guidance strength accepted. The guided logits are ``cond + t (cond - uncond)``
in float32: guidance this strong already makes every draw nearly the argmax of ``cond - uncond``, and far
beyond it (``cfg=1e300``) the logits overflow to inf and NaN, which a draw could only report as a model
failure. A larger value is refused up front, naming ``cfg``."""


def check_cfg(value, name: str = "cfg") -> float:
    """A classifier-free guidance strength: a finite number in ``[0, CFG_LIMIT]``."""
    value = check_number(value, name, 0.0)
    if value > CFG_LIMIT:
        raise ValueError(f"{name} must be a finite number >= 0 and at most {CFG_LIMIT:g} (classifier-free guidance "
                         "this strong already draws nearly the argmax of cond - uncond; far beyond it the float32 "
                         f"logits overflow to inf/NaN), got {value!r}")
    return value


@dataclass(frozen=True)
class SamplingConfig:
    """Classifier-free guidance and filtering of one generation call (``0`` disables top-k / top-p)."""

    cfg: float = 1.5
    top_k: int = 0
    top_p: float = 0.0
    more_smooth: bool = False

    def __post_init__(self) -> None:
        check_cfg(self.cfg)
        check_int(self.top_k, "top_k", 0)
        check_number(self.top_p, "top_p", 0.0, 1.0)
        check_bool(self.more_smooth, "more_smooth")

    def check_vocabulary(self, V: int) -> None:
        """Raise ``ValueError`` if ``top_k`` exceeds the vocabulary size ``V``."""
        if self.top_k > V:
            raise ValueError(f"top_k must be in [0, {V}] (the vocabulary size; 0 disables top-k), got {self.top_k}")


@dataclass
class StageSample:
    """Tokens drawn at one stage and the embedded map they add to ``f_hat``."""

    idx_Bl: torch.Tensor
    h_BChw: torch.Tensor
    probs_BlV: torch.Tensor
    """The distribution the tokens were drawn from (after CFG, top-k, top-p)."""


@dataclass
class GenerationOutput:
    """Result of one reference generation call."""

    images_B3HW: torch.Tensor
    """Images in ``[0, 1]``."""
    tokens_per_stage: list[torch.Tensor]
    """Sampled tokens ``(B, pn*pn)`` of every stage."""
    label_B: torch.Tensor
    """Class labels used (``num_classes`` = no class)."""
    f_hat_BChw: torch.Tensor
    """Accumulated VQVAE feature map after the last stage."""


class NonFiniteDistributionError(ValueError):
    """A sampling distribution holds NaN or inf: the model produced non-finite logits."""


def check_batch_size(B) -> int:
    """``B`` if it is an int ``>= 1``."""
    return check_int(B, "B", 1)


def _labels_allowed(num_classes: int) -> str:
    return f"class ids in [0, {num_classes}) or negative ones (no class, at least -2**63)"


def check_labels(value, name: str, num_classes: int, non_empty: bool = True) -> tuple[int, ...]:
    """A list/tuple of class labels: ints in ``[0, num_classes)`` or negative ones ("no class"), each a 64-bit int."""
    values = check_sequence(value, name, check_int, f"ints ({_labels_allowed(num_classes)})", non_empty)
    outside = [v for v in values if not INT64_MIN <= v < num_classes]
    if outside:
        raise ValueError(f"{name} must hold {_labels_allowed(num_classes)}; got {outside[0]} (of {len(values)} labels)")
    return values


def make_generator(g_seed: int | None, device: torch.device | str) -> torch.Generator | None:
    """A generator seeded with ``g_seed`` (an int in ``[0, 2**63)``) on ``device``, or ``None`` (global RNG)."""
    check_seed(g_seed, "g_seed")
    if g_seed is None:
        return None
    rng = torch.Generator(device=device)
    rng.manual_seed(g_seed)
    return rng


def prepare_labels(
    B: int, label_B, num_classes: int, rng: torch.Generator | None, device: torch.device | str
) -> torch.Tensor:
    """Class labels ``(B,)`` on ``device`` with ``num_classes`` meaning "no class".

    ``None`` draws ``B`` labels uniformly (what one ``multinomial`` call on ``rng`` draws, the first
    random draw of a call); an int is broadcast; a sequence or an integer tensor (on any device) gives
    one label per sample. Negative labels mean "no class".

    For one label the draw is ``multinomial``'s own way of drawing one sample, ``argmax(p / Exp(1))``
    with the same noise from ``rng``, without the validity checks on ``p`` that ``multinomial`` runs
    first (on one H200 174 µs of host time against 44, at the start of every batch-1 call).
    """
    check_batch_size(B)
    if label_B is None:
        uniform = torch.full((1, num_classes), 1.0 / num_classes, dtype=torch.float32, device=device)
        if B == 1:
            noise = torch.empty_like(uniform).exponential_(generator=rng)
            return (uniform / noise).argmax(dim=-1)
        return torch.multinomial(uniform, num_samples=B, replacement=True, generator=rng).reshape(B)
    allowed = f"label_B must hold {_labels_allowed(num_classes)}: None, an int, a sequence of ints or an int tensor"
    if isinstance(label_B, bool):
        raise TypeError(f"{allowed}; got a bool")
    if isinstance(label_B, int):
        if not INT64_MIN <= label_B < num_classes:
            raise ValueError(f"{allowed}; got {label_B}")
        return torch.full((B,), num_classes if label_B < 0 else label_B, dtype=torch.long, device=device)
    if isinstance(label_B, torch.Tensor):
        if label_B.dtype.is_floating_point or label_B.dtype.is_complex or label_B.dtype == torch.bool:
            raise TypeError(f"label_B tensor must hold integers, got dtype {label_B.dtype}")
        if label_B.device.type == "meta":
            raise ValueError("label_B is a tensor on the meta device (it holds no values); give labels with values")
        labels = label_B.detach().to(device=device, dtype=torch.long).reshape(-1)
    elif isinstance(label_B, Sequence) and not isinstance(label_B, (str, bytes, bytearray)):
        labels = torch.tensor(list(check_labels(label_B, "label_B", num_classes, non_empty=False)), dtype=torch.long,
                              device=device)
    else:
        raise TypeError(f"{allowed}; got {type(label_B).__name__}")
    if labels.numel() != B:
        raise ValueError(f"label_B has {labels.numel()} labels but B={B}; give one label per sample")
    if bool((labels >= num_classes).any()):
        raise ValueError(f"{allowed}; got {labels.tolist()}")
    return torch.where(labels < 0, torch.full_like(labels, num_classes), labels)


def cfg_labels(label_B: torch.Tensor, num_classes: int) -> torch.Tensor:
    """CFG-doubled labels: the conditional half first, then "no class"."""
    return torch.cat((label_B, torch.full_like(label_B, num_classes)), dim=0)


def cfg_strength(cfg: float, si: int, num_stages: int) -> float:
    """Guidance at stage ``si``: ``cfg * si / (S - 1)``."""
    return cfg * (si / (num_stages - 1))


def apply_cfg(logits_2BlV: torch.Tensor, t: float) -> torch.Tensor:
    """``(1 + t) * cond - t * uncond`` on a CFG-doubled batch (conditional half first)."""
    B = logits_2BlV.shape[0] // 2
    return (1 + t) * logits_2BlV[:B] - t * logits_2BlV[B:]


def guided_logits(logits_2BlV: torch.Tensor, si: int, num_stages: int, cfg: float) -> torch.Tensor:
    """CFG at stage ``si`` on a doubled batch: ``(B, l, V)``."""
    return apply_cfg(logits_2BlV, cfg_strength(cfg, si, num_stages))


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


def stage_probs(guided_BlV: torch.Tensor, sampling: SamplingConfig) -> torch.Tensor:
    """A stage's sampling distribution ``(B, l, V)`` from its guided logits: top-k/top-p, then softmax.

    The draft's ``q`` and the target's ``p`` are both this function of their guided logits
    (:func:`guided_logits`).
    """
    return filter_top_k_top_p(guided_BlV, sampling.top_k, sampling.top_p).softmax(dim=-1)


def sample_from_probs(probs_BlV: torch.Tensor, rng: torch.Generator | None) -> torch.Tensor:
    """One draw per token with a single ``multinomial`` call: ``(B, l)`` int64.

    A distribution holding NaN/inf (non-finite logits) raises :class:`NonFiniteDistributionError`.
    """
    B, l, V = probs_BlV.shape
    try:
        draws = torch.multinomial(probs_BlV.reshape(-1, V), num_samples=1, replacement=True, generator=rng)
    except RuntimeError as exc:
        if "inf" in str(exc) or "nan" in str(exc):
            raise NonFiniteDistributionError(
                "a sampling distribution contains NaN or inf: the model produced non-finite logits "
                "(non-finite weights, or activations that overflow in the model's dtype)"
            ) from exc
        raise
    return draws.view(B, l)


def smooth_temperature(ratio: float) -> float:
    """Gumbel-softmax temperature of ``more_smooth`` at progress ``ratio = si / (S - 1)``."""
    return max(0.27 * (1 - ratio * 0.95), 0.005)


def gumbel_softmax_with_rng(
    logits: torch.Tensor, tau: float, rng: torch.Generator | None, dim: int = -1
) -> torch.Tensor:
    """Soft Gumbel-softmax whose noise comes from ``exponential_(generator=rng)``."""
    gumbels = -torch.empty_like(logits, memory_format=torch.legacy_contiguous_format).exponential_(generator=rng).log()
    return ((logits + gumbels) / tau).softmax(dim)
