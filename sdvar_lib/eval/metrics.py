"""Quality metrics for the bundled tiny digit models.

- :class:`DigitClassifier`: a small CNN on 16x16 RGB digits **in [0, 1]** (the range of
  ``VAR.generate(...).images_B3HW``; data in ``[-1, 1]`` goes through
  :func:`sdvar_lib.data.digits.to_unit_range` first). Its 64-d penultimate features (after ReLU) feed the
  Fréchet distance. It is trained by :mod:`sdvar_lib.tiny.train` on the project's train split and
  bundled as ``classifier.pth`` (config under ``"classifier"`` in ``config.json``);
  :func:`load_bundled_classifier` loads it.
- :func:`class_consistency`: fraction of generated images the classifier assigns to the requested label.
- :func:`frechet_distance` / :func:`feature_frechet_distance`: Fréchet distance between Gaussians
  fitted to two feature sets (a "digit FID"), with the matrix square root done by symmetric
  eigendecompositions in float64 numpy (no scipy).
- :func:`summarize_over_seeds`: mean and a 95% Student-t confidence interval over seeds.
- :func:`compare_images`: mean absolute difference, L2 distance and Pearson correlation of two image batches.
- :func:`teacher_forced_nll`: held-out negative log-likelihood of a VAR (nats per token).
- :func:`evaluate_generator`: class-consistency and Fréchet distance of a VAR over several seeds.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from sdvar_lib.models.checkpoints import BUNDLED_DIR, load_checkpoint_file, load_state_dict_checked
from sdvar_lib.models.sampling import SamplingConfig
from sdvar_lib.util.checks import check_int

log = logging.getLogger(__name__)

__all__ = [
    "ClassifierConfig",
    "DigitClassifier",
    "load_bundled_classifier",
    "classifier_accuracy",
    "ClassConsistency",
    "class_consistency",
    "GaussianStats",
    "gaussian_stats",
    "frechet_distance",
    "feature_frechet_distance",
    "SeedSummary",
    "student_t_975",
    "summarize_over_seeds",
    "ImageComparison",
    "compare_images",
    "teacher_forced_nll",
    "balanced_labels",
    "generate_balanced",
    "SeedQuality",
    "GenerationQuality",
    "evaluate_generator",
]


# ---- classifier -----------------------------------------------------------------------------------
@dataclass
class ClassifierConfig:
    """Sizes of :class:`DigitClassifier` (stored under ``"classifier"`` in ``config.json``)."""

    num_classes: int = 10
    width: int = 32
    feature_dim: int = 64
    image_size: int = 16
    dropout: float = 0.2

    def __post_init__(self) -> None:
        if self.image_size % 4 != 0 or self.image_size < 4:
            raise ValueError(f"image_size must be a positive multiple of 4, got {self.image_size}")
        if min(self.num_classes, self.width, self.feature_dim) < 1:
            raise ValueError(f"num_classes, width and feature_dim must be >= 1, got {self}")


class DigitClassifier(nn.Module):
    """conv-conv-pool-conv-pool CNN; input ``(B, 3, S, S)`` in ``[0, 1]``.

    ``features`` returns the penultimate activations ``(B, feature_dim)`` (after ReLU), ``forward``
    the logits ``(B, num_classes)``. The input is centred (``2 * x - 1``) inside the model.
    """

    def __init__(self, config: ClassifierConfig | None = None) -> None:
        super().__init__()
        self.config = config or ClassifierConfig()
        c = self.config
        w = c.width
        self.conv = nn.Sequential(
            nn.Conv2d(3, w, 3, padding=1), nn.ReLU(),
            nn.Conv2d(w, w, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(w, 2 * w, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.fc = nn.Linear(2 * w * (c.image_size // 4) ** 2, c.feature_dim)
        self.dropout = nn.Dropout(c.dropout)
        self.head = nn.Linear(c.feature_dim, c.num_classes)

    def _check(self, img_B3HW: torch.Tensor) -> None:
        s = self.config.image_size
        if img_B3HW.ndim != 4 or tuple(img_B3HW.shape[1:]) != (3, s, s):
            raise ValueError(f"classifier input must be (B, 3, {s}, {s}) in [0, 1], got {tuple(img_B3HW.shape)}")

    def features(self, img_B3HW: torch.Tensor) -> torch.Tensor:
        self._check(img_B3HW)
        h = self.conv(img_B3HW.float().mul(2).sub(1))
        return F.relu(self.fc(h.flatten(1)))

    def forward(self, img_B3HW: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.features(img_B3HW)))


def load_bundled_classifier(device: torch.device | str = "cpu", folder: str | os.PathLike | None = None) -> DigitClassifier:
    """The bundled digit classifier (``classifier.pth``, weights-only) in eval mode on ``device``."""
    folder = Path(folder) if folder is not None else BUNDLED_DIR
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{config_path} is missing; retrain with `python -m sdvar_lib.train_tiny`")
    config = json.loads(config_path.read_text())
    if "classifier" not in config:
        raise ValueError(f"{config_path} has no 'classifier' entry; retrain with `python -m sdvar_lib.train_tiny`")
    model = DigitClassifier(ClassifierConfig(**config["classifier"]))
    load_state_dict_checked(model, load_checkpoint_file(folder / "classifier.pth"), str(folder / "classifier.pth"))
    return model.to(device).eval()


@torch.no_grad()
def _batched(fn, img_B3HW: torch.Tensor, batch_size: int, device: torch.device) -> torch.Tensor:
    outs = [fn(img_B3HW[i : i + batch_size].to(device)).float().cpu() for i in range(0, img_B3HW.shape[0], batch_size)]
    return torch.cat(outs, dim=0)


def _classifier_device(classifier: nn.Module) -> torch.device:
    return next(classifier.parameters()).device


def _check_unit_images(img_B3HW: torch.Tensor, name: str) -> None:
    if not isinstance(img_B3HW, torch.Tensor):
        raise TypeError(f"{name} must be a tensor, got {type(img_B3HW).__name__}")
    if img_B3HW.ndim != 4 or img_B3HW.shape[0] < 1:
        raise ValueError(f"{name} must be a non-empty (B, 3, H, W) batch, got shape {tuple(img_B3HW.shape)}")


def classifier_accuracy(
    classifier: DigitClassifier, img_B3HW: torch.Tensor, label_B: torch.Tensor, batch_size: int = 256
) -> float:
    """Accuracy of ``classifier`` on images in ``[0, 1]``."""
    return class_consistency(classifier, img_B3HW, label_B, batch_size).accuracy


# ---- class consistency ------------------------------------------------------------------------------
@dataclass
class ClassConsistency:
    """How often the classifier agrees with the requested labels."""

    accuracy: float
    num_samples: int
    per_class_accuracy: dict[int, float]
    predictions_B: torch.Tensor = field(repr=False)


@torch.no_grad()
def class_consistency(
    classifier: DigitClassifier, img_B3HW: torch.Tensor, label_B: torch.Tensor, batch_size: int = 256
) -> ClassConsistency:
    """Fraction of images (in ``[0, 1]``) whose predicted class equals ``label_B``."""
    _check_unit_images(img_B3HW, "img_B3HW")
    label_B = torch.as_tensor(label_B).reshape(-1).cpu().long()
    if label_B.numel() != img_B3HW.shape[0]:
        raise ValueError(f"got {img_B3HW.shape[0]} images but {label_B.numel()} labels")
    was_training = classifier.training
    classifier.eval()
    try:
        pred_B = _batched(classifier, img_B3HW, batch_size, _classifier_device(classifier)).argmax(dim=1)
    finally:
        classifier.train(was_training)
    hit_B = pred_B == label_B
    per_class = {int(c): float(hit_B[label_B == c].float().mean()) for c in torch.unique(label_B)}
    return ClassConsistency(
        accuracy=float(hit_B.float().mean()), num_samples=int(label_B.numel()), per_class_accuracy=per_class,
        predictions_B=pred_B,
    )


# ---- Fréchet distance -------------------------------------------------------------------------------
@dataclass
class GaussianStats:
    """Mean and (unbiased) covariance of a feature set, float64."""

    mean_D: np.ndarray
    cov_DD: np.ndarray
    num_samples: int


def gaussian_stats(features_ND: torch.Tensor | np.ndarray) -> GaussianStats:
    """Fit a Gaussian to ``(N, D)`` features (``N >= 2``)."""
    x = np.asarray(features_ND.detach().cpu() if isinstance(features_ND, torch.Tensor) else features_ND, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"features must be (N, D) with N >= 2, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError("features contain NaN or inf")
    D = x.shape[1]
    return GaussianStats(mean_D=x.mean(axis=0), cov_DD=np.cov(x, rowvar=False).reshape(D, D), num_samples=x.shape[0])


def _sym_sqrt(m_DD: np.ndarray) -> np.ndarray:
    """Square root of a symmetric PSD matrix (negative eigenvalues from round-off clipped to 0)."""
    w, v = np.linalg.eigh((m_DD + m_DD.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def frechet_distance(a: GaussianStats, b: GaussianStats) -> float:
    """``|mu_a - mu_b|^2 + tr(S_a) + tr(S_b) - 2 tr((S_a S_b)^(1/2))``.

    ``tr((S_a S_b)^(1/2))`` equals the sum of square roots of the eigenvalues of the symmetric PSD
    matrix ``S_a^(1/2) S_b S_a^(1/2)`` (same spectrum as ``S_a S_b``), so only symmetric
    eigendecompositions are needed; this is exact for singular covariances too. The result is
    clipped at 0 (round-off).
    """
    if a.mean_D.shape != b.mean_D.shape:
        raise ValueError(f"feature dimensions differ: {a.mean_D.shape[0]} vs {b.mean_D.shape[0]}")
    sqrt_a = _sym_sqrt(a.cov_DD)
    m = sqrt_a @ b.cov_DD @ sqrt_a
    eig = np.linalg.eigvalsh((m + m.T) / 2)
    tr_sqrt = float(np.sqrt(np.clip(eig, 0, None)).sum())
    diff = a.mean_D - b.mean_D
    fd = float(diff @ diff + np.trace(a.cov_DD) + np.trace(b.cov_DD) - 2 * tr_sqrt)
    return max(fd, 0.0)


@torch.no_grad()
def feature_frechet_distance(
    classifier: DigitClassifier, img_a_B3HW: torch.Tensor, img_b_B3HW: torch.Tensor, batch_size: int = 256
) -> float:
    """Fréchet distance between the classifier's penultimate features of two image sets in ``[0, 1]``."""
    _check_unit_images(img_a_B3HW, "img_a_B3HW")
    _check_unit_images(img_b_B3HW, "img_b_B3HW")
    was_training = classifier.training
    classifier.eval()
    try:
        device = _classifier_device(classifier)
        feat_a = _batched(classifier.features, img_a_B3HW, batch_size, device)
        feat_b = _batched(classifier.features, img_b_B3HW, batch_size, device)
    finally:
        classifier.train(was_training)
    return frechet_distance(gaussian_stats(feat_a), gaussian_stats(feat_b))


# ---- confidence intervals ---------------------------------------------------------------------------
# Two-sided 95% critical values t_{0.975, df} of Student's t distribution (standard tables).
_T975 = {
    1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
    11: 2.201, 12: 2.179, 13: 2.160, 14: 2.145, 15: 2.131, 16: 2.120, 17: 2.110, 18: 2.101, 19: 2.093, 20: 2.086,
    21: 2.080, 22: 2.074, 23: 2.069, 24: 2.064, 25: 2.060, 26: 2.056, 27: 2.052, 28: 2.048, 29: 2.045, 30: 2.042,
    40: 2.021, 60: 2.000, 120: 1.980,
}


def student_t_975(df: int) -> float:
    """``t_{0.975, df}`` from a table: exact for ``df <= 30``, 40, 60, 120; linear in ``1/df`` between
    them; 1.960 as ``df -> inf``."""
    check_int(df, "degrees of freedom", 1)
    if df in _T975:
        return _T975[df]
    knots = sorted(_T975) + [math.inf]
    values = [_T975[k] for k in sorted(_T975)] + [1.960]
    for lo, hi, v_lo, v_hi in zip(knots[:-1], knots[1:], values[:-1], values[1:]):
        if lo < df < hi:
            x_lo, x_hi, x = 1 / lo, (0.0 if math.isinf(hi) else 1 / hi), 1 / df
            return v_lo + (v_hi - v_lo) * (x_lo - x) / (x_lo - x_hi)
    raise AssertionError("unreachable")


@dataclass
class SeedSummary:
    """Mean over seeds with a two-sided 95% Student-t confidence interval (``ci_low``, ``ci_high``)."""

    mean: float
    std: float
    """Sample standard deviation (``ddof=1``; 0 for a single value)."""
    num_seeds: int
    ci_low: float
    ci_high: float
    values: list[float]

    @property
    def half_width(self) -> float:
        return (self.ci_high - self.ci_low) / 2

    def format(self, digits: int = 3) -> str:
        return f"{self.mean:.{digits}f} ± {self.half_width:.{digits}f} (95% CI, {self.num_seeds} seeds)"


def summarize_over_seeds(values: Sequence[float]) -> SeedSummary:
    """Mean and 95% CI ``mean ± t_{0.975, n-1} * std / sqrt(n)``; with one value the CI is ``[v, v]``."""
    vals = [float(v) for v in values]
    if not vals:
        raise ValueError("need at least one value to summarize")
    if not all(math.isfinite(v) for v in vals):
        raise ValueError(f"values must be finite, got {vals}")
    n = len(vals)
    mean = sum(vals) / n
    if n == 1:
        return SeedSummary(mean=mean, std=0.0, num_seeds=1, ci_low=mean, ci_high=mean, values=vals)
    std = math.sqrt(sum((v - mean) ** 2 for v in vals) / (n - 1))
    half = student_t_975(n - 1) * std / math.sqrt(n)
    return SeedSummary(mean=mean, std=std, num_seeds=n, ci_low=mean - half, ci_high=mean + half, values=vals)


# ---- image comparison -------------------------------------------------------------------------------
@dataclass
class ImageComparison:
    """Differences between two equally shaped image batches (computed in float64 over the whole batch)."""

    mean_abs_diff: float
    """``mean(|a - b|)`` over every pixel of the batch."""
    l2_distance: float
    """Frobenius norm ``||a - b||_2`` of the difference of the **whole batch** (not averaged per image)."""
    pearson: float
    """Pearson correlation of all pixel values. If either batch is constant the correlation is
    undefined; it is then defined as ``1.0`` when ``a`` and ``b`` are identical and ``0.0`` otherwise."""


def compare_images(a: torch.Tensor, b: torch.Tensor) -> ImageComparison:
    """Compare two image tensors of the same shape (any range, any number of dimensions)."""
    if not isinstance(a, torch.Tensor) or not isinstance(b, torch.Tensor):
        raise TypeError(f"compare_images needs two tensors, got {type(a).__name__} and {type(b).__name__}")
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}")
    if a.numel() == 0:
        raise ValueError("cannot compare empty tensors")
    x = a.detach().cpu().double().reshape(-1)
    y = b.detach().cpu().double().reshape(-1)
    if not (torch.isfinite(x).all() and torch.isfinite(y).all()):
        raise ValueError("images contain NaN or inf")
    diff = x - y
    xc, yc = x - x.mean(), y - y.mean()
    denom = float(xc.norm() * yc.norm())
    if denom > 0:
        pearson = float((xc @ yc) / denom)
        pearson = min(1.0, max(-1.0, pearson))
    else:
        pearson = 1.0 if torch.equal(x, y) else 0.0
    return ImageComparison(
        mean_abs_diff=float(diff.abs().mean()), l2_distance=float(diff.norm()), pearson=pearson
    )


# ---- VAR likelihood ---------------------------------------------------------------------------------
@torch.no_grad()
def teacher_forced_nll(var, img_B3HW: torch.Tensor, label_B: torch.Tensor, batch_size: int = 128) -> float:
    """Mean negative log-likelihood (nats per token, over all ``L`` tokens) of the images' VQVAE tokens.

    ``img_B3HW`` is in ``[-1, 1]``; labels are used as given (the model is put in eval mode for the
    call, so no label is dropped).
    """
    if img_B3HW.ndim != 4 or img_B3HW.shape[0] < 1:
        raise ValueError(f"img_B3HW must be a non-empty (B, 3, H, W) batch, got {tuple(img_B3HW.shape)}")
    label_B = torch.as_tensor(label_B).reshape(-1).long()
    if label_B.numel() != img_B3HW.shape[0]:
        raise ValueError(f"got {img_B3HW.shape[0]} images but {label_B.numel()} labels")
    vae = var.vae
    device = var.device
    was_training = var.training
    var.eval()
    total, count = 0.0, 0
    try:
        for i in range(0, img_B3HW.shape[0], batch_size):
            img = img_B3HW[i : i + batch_size].to(device)
            lab = label_B[i : i + batch_size].to(device)
            idx_list = vae.img_to_idxBl(img)
            x_BLCv = vae.quantize.idxBl_to_var_input(idx_list)
            logits_BLV = var(lab, x_BLCv)
            target_BL = torch.cat(idx_list, dim=1)
            total += float(F.cross_entropy(logits_BLV.reshape(-1, var.V), target_BL.reshape(-1), reduction="sum"))
            count += target_BL.numel()
    finally:
        var.train(was_training)
    return total / count


# ---- generation quality -------------------------------------------------------------------------------
def balanced_labels(num_samples: int, num_classes: int = 10) -> torch.Tensor:
    """``[0, 1, ..., C-1, 0, 1, ...]`` of length ``num_samples``."""
    if num_samples < 1 or num_classes < 1:
        raise ValueError(f"num_samples and num_classes must be >= 1, got {num_samples} and {num_classes}")
    return torch.arange(num_samples) % num_classes


@torch.no_grad()
def generate_balanced(
    var, num_samples: int, g_seed: int, cfg: float = 1.5, top_k: int = 0, top_p: float = 0.0, batch_size: int = 100
) -> tuple[torch.Tensor, torch.Tensor]:
    """Images ``(N, 3, H, W)`` in ``[0, 1]`` (on CPU) for balanced labels; batch ``i`` uses ``g_seed + i``."""
    label_N = balanced_labels(num_samples, var.num_classes)
    images = []
    for i, start in enumerate(range(0, num_samples, batch_size)):
        lab = label_N[start : start + batch_size]
        out = var.generate(int(lab.numel()), lab.to(var.device), g_seed + i, SamplingConfig(cfg=cfg, top_k=top_k, top_p=top_p))
        images.append(out.images_B3HW.float().cpu())
    return torch.cat(images, dim=0), label_N


@dataclass
class SeedQuality:
    """Quality of one seeded batch of generated digits."""

    seed: int
    class_consistency: float
    frechet_distance: float


@dataclass
class GenerationQuality:
    """Class-consistency and Fréchet distance of a generator over several seeds."""

    cfg: float
    top_k: int
    top_p: float
    num_samples: int
    per_seed: list[SeedQuality]
    class_consistency: SeedSummary
    frechet_distance: SeedSummary

    def to_dict(self) -> dict:
        return asdict(self)


def evaluate_generator(
    var,
    classifier: DigitClassifier,
    real_img_B3HW: torch.Tensor,
    seeds: Sequence[int] = (0, 1, 2, 3, 4),
    num_samples: int = 200,
    cfg: float = 1.5,
    top_k: int = 0,
    top_p: float = 0.0,
) -> GenerationQuality:
    """Generate ``num_samples`` balanced digits per seed and score them against real images in ``[0, 1]``.

    Seed ``s`` uses ``g_seed = 1000 * s`` (+ batch index), so seeds never share generator streams.
    """
    if not seeds:
        raise ValueError("need at least one seed")
    per_seed = []
    for seed in seeds:
        img_N3HW, label_N = generate_balanced(var, num_samples, g_seed=1000 * int(seed), cfg=cfg, top_k=top_k, top_p=top_p)
        cc = class_consistency(classifier, img_N3HW, label_N).accuracy
        fd = feature_frechet_distance(classifier, img_N3HW, real_img_B3HW)
        log.info("seed %d: class-consistency %.3f, Fréchet distance %.3f", seed, cc, fd)
        per_seed.append(SeedQuality(seed=int(seed), class_consistency=cc, frechet_distance=fd))
    return GenerationQuality(
        cfg=cfg, top_k=top_k, top_p=top_p, num_samples=num_samples, per_seed=per_seed,
        class_consistency=summarize_over_seeds([q.class_consistency for q in per_seed]),
        frechet_distance=summarize_over_seeds([q.frechet_distance for q in per_seed]),
    )
