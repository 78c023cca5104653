"""The handwritten digits of scikit-learn as a tiny image data set for the bundled models.

``sklearn.datasets.load_digits`` ships 1,797 greyscale 8x8 images (values 0..16, 10 classes) inside
the scikit-learn package, so nothing is downloaded. :func:`load_digits_split` turns them into

- 16x16 images, **bilinear** upsampling (``F.interpolate(mode="bilinear", align_corners=False)``;
  bilinear rather than bicubic because it never overshoots, so values stay in range without
  clamping),
- 3 channels (the grey value replicated),
- values in ``[-1, 1]`` (``pixel / 16 * 2 - 1``),

and a seeded, stratified train / held-out split (85 / 15 by default): within every class the
indices are shuffled with ``numpy.random.default_rng(seed)`` and the first
``round(heldout_fraction * n_class)`` go to the held-out set. The split is computed here (not with
``sklearn.model_selection``) so that it does not depend on the scikit-learn version. Every model
and metric of the project uses :func:`load_digits_split` with the default seed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from sdvar_lib.util.checks import check_int, check_number

log = logging.getLogger(__name__)

__all__ = [
    "DIGITS_NUM_CLASSES",
    "DIGITS_IMAGE_SIZE",
    "DEFAULT_SPLIT_SEED",
    "DEFAULT_HELDOUT_FRACTION",
    "DigitsSplit",
    "load_digits_raw",
    "upsample_digits",
    "stratified_split_indices",
    "load_digits_split",
    "to_unit_range",
    "iterate_minibatches",
]

DIGITS_NUM_CLASSES = 10
DIGITS_IMAGE_SIZE = 16
DEFAULT_SPLIT_SEED = 0
DEFAULT_HELDOUT_FRACTION = 0.15
_DIGITS_MAX_VALUE = 16.0


@dataclass
class DigitsSplit:
    """The digits split into train and held-out parts (images ``(N, 3, size, size)`` in ``[-1, 1]``)."""

    train_img_B3HW: torch.Tensor
    train_label_B: torch.Tensor
    heldout_img_B3HW: torch.Tensor
    heldout_label_B: torch.Tensor
    train_index: np.ndarray
    """Row indices of ``load_digits()`` in the train part (sorted)."""
    heldout_index: np.ndarray
    """Row indices of ``load_digits()`` in the held-out part (sorted)."""
    seed: int
    heldout_fraction: float

    @property
    def image_size(self) -> int:
        return int(self.train_img_B3HW.shape[-1])


def load_digits_raw() -> tuple[np.ndarray, np.ndarray]:
    """The 1,797 raw digits: images ``(N, 8, 8)`` float32 in ``[0, 16]`` and labels ``(N,)`` int64."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return bunch.images.astype(np.float32), bunch.target.astype(np.int64)


def upsample_digits(raw_N88: np.ndarray | torch.Tensor, size: int = DIGITS_IMAGE_SIZE) -> torch.Tensor:
    """Raw digits ``(N, h, w)`` in ``[0, 16]`` to ``(N, 3, size, size)`` in ``[-1, 1]`` (bilinear)."""
    raw = torch.as_tensor(raw_N88, dtype=torch.float32)
    if raw.ndim != 3:
        raise ValueError(f"raw digits must have shape (N, h, w), got {tuple(raw.shape)}")
    check_int(size, "size", 1)
    if raw.numel() and (float(raw.min()) < 0 or float(raw.max()) > _DIGITS_MAX_VALUE):
        raise ValueError(f"raw digit values must lie in [0, {_DIGITS_MAX_VALUE:g}], got [{float(raw.min())}, {float(raw.max())}]")
    unit_N1hw = raw.unsqueeze(1) / _DIGITS_MAX_VALUE
    if unit_N1hw.shape[-2:] != (size, size):
        unit_N1hw = F.interpolate(unit_N1hw, size=(size, size), mode="bilinear", align_corners=False)
    return unit_N1hw.clamp(0, 1).mul(2).sub(1).expand(-1, 3, -1, -1).contiguous()


def stratified_split_indices(
    labels_N: np.ndarray, heldout_fraction: float = DEFAULT_HELDOUT_FRACTION, seed: int = DEFAULT_SPLIT_SEED
) -> tuple[np.ndarray, np.ndarray]:
    """Seeded stratified split: sorted ``(train_index, heldout_index)``.

    Classes are visited in increasing order; within each, the indices are permuted by one shared
    ``numpy.random.default_rng(seed)`` and the first ``round(heldout_fraction * n_class)`` are held out.
    """
    check_number(heldout_fraction, "heldout_fraction", 0.0, 1.0, min_inclusive=False, max_inclusive=False)
    labels = np.asarray(labels_N)
    if labels.ndim != 1:
        raise ValueError(f"labels must be 1-D, got shape {labels.shape}")
    rng = np.random.default_rng(seed)
    train_parts: list[np.ndarray] = []
    heldout_parts: list[np.ndarray] = []
    for cls in np.unique(labels):
        members = np.flatnonzero(labels == cls)
        members = members[rng.permutation(len(members))]
        n_heldout = int(round(heldout_fraction * len(members)))
        heldout_parts.append(members[:n_heldout])
        train_parts.append(members[n_heldout:])
    return np.sort(np.concatenate(train_parts)), np.sort(np.concatenate(heldout_parts))


def load_digits_split(
    seed: int = DEFAULT_SPLIT_SEED, heldout_fraction: float = DEFAULT_HELDOUT_FRACTION, size: int = DIGITS_IMAGE_SIZE
) -> DigitsSplit:
    """The project's digits data: 16x16 RGB images in ``[-1, 1]`` with a stratified 85/15 split."""
    raw_N88, labels_N = load_digits_raw()
    train_index, heldout_index = stratified_split_indices(labels_N, heldout_fraction, seed)
    img_N3HW = upsample_digits(raw_N88, size)
    label_N = torch.from_numpy(labels_N)
    log.debug("digits split: %d train, %d held out (seed %d)", len(train_index), len(heldout_index), seed)
    return DigitsSplit(
        train_img_B3HW=img_N3HW[torch.from_numpy(train_index)],
        train_label_B=label_N[torch.from_numpy(train_index)],
        heldout_img_B3HW=img_N3HW[torch.from_numpy(heldout_index)],
        heldout_label_B=label_N[torch.from_numpy(heldout_index)],
        train_index=train_index,
        heldout_index=heldout_index,
        seed=seed,
        heldout_fraction=heldout_fraction,
    )


def to_unit_range(img_B3HW: torch.Tensor) -> torch.Tensor:
    """Images in ``[-1, 1]`` to ``[0, 1]`` (the range of ``VAR.generate`` outputs)."""
    return img_B3HW.add(1).mul(0.5)


def iterate_minibatches(num_items: int, batch_size: int, generator: torch.Generator | None, drop_last: bool = False):
    """Index batches over ``range(num_items)``: shuffled by ``generator`` (``None`` keeps the order)."""
    check_int(num_items, "num_items", 1)
    check_int(batch_size, "batch_size", 1)
    order = torch.randperm(num_items, generator=generator) if generator is not None else torch.arange(num_items)
    stop = num_items - num_items % batch_size if drop_last and num_items >= batch_size else num_items
    for start in range(0, stop, batch_size):
        yield order[start : start + batch_size]
