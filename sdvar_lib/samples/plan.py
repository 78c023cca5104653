"""The plan of a sample set: which image has which class and which batch (and so which random stream) makes it.

See :mod:`sdvar_lib.samples.sampler` for the scheme: it depends on the seed and the global image index
only, never on the number of processes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import torch

from sdvar_lib.models.sampling import SamplingConfig
from sdvar_lib.util.checks import check_choice, check_int, check_int_sequence, check_seed

__all__ = ["SEED_STRIDE", "LABEL_ORDERS", "VAR_PROTOCOL", "BatchSpec", "SamplePlan"]

SEED_STRIDE = 1_000_000
"""Batch ``b`` of seed ``s`` uses ``g_seed = SEED_STRIDE * s + b`` (so at most this many batches per set)."""
LABEL_ORDERS = ("sorted", "shuffled")
VAR_PROTOCOL = SamplingConfig(cfg=1.5, top_k=900, top_p=0.96, more_smooth=False)
"""VAR's evaluation protocol (ImageNet 256: 50 images per class, cfg 1.5, top-k 900, top-p 0.96)."""


# ---- the plan -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BatchSpec:
    """Batch ``index``: real images ``start .. stop - 1``, ``labels`` of all ``B`` rows (padding included)."""

    index: int
    start: int
    stop: int
    labels: tuple[int, ...]
    g_seed: int

    @property
    def num_real(self) -> int:
        return self.stop - self.start


@dataclass(frozen=True)
class SamplePlan:
    """Which images a set holds: method, classes, images per class, batch size, seed, sampling settings."""

    method: str
    classes: tuple[int, ...]
    per_class: int
    batch_size: int
    seed: int = 0
    sampling: SamplingConfig = VAR_PROTOCOL
    label_order: str = "shuffled"

    def __post_init__(self) -> None:
        if not isinstance(self.method, str) or not self.method:
            raise TypeError(f"method must be a method name, got {self.method!r}")
        object.__setattr__(self, "classes", check_int_sequence(self.classes, "classes", 0))
        if len(set(self.classes)) != len(self.classes):
            raise ValueError(f"classes repeat: {list(self.classes)}")
        check_int(self.per_class, "per_class", 1)
        check_int(self.batch_size, "batch_size", 1)
        check_seed(self.seed, "seed", allow_none=False)
        if self.seed > (2**63 - 1 - SEED_STRIDE) // SEED_STRIDE:
            raise ValueError(f"seed must be <= {(2**63 - 1 - SEED_STRIDE) // SEED_STRIDE} (g_seed = seed * {SEED_STRIDE} + "
                             f"batch), got {self.seed}")
        if not isinstance(self.sampling, SamplingConfig):
            raise TypeError(f"sampling must be a SamplingConfig, got {type(self.sampling).__name__}")
        check_choice(self.label_order, "label_order", LABEL_ORDERS)
        if self.num_batches > SEED_STRIDE:
            raise ValueError(f"at most {SEED_STRIDE} batches per set (g_seed = seed * {SEED_STRIDE} + batch); "
                             f"got {self.num_batches}: use a larger batch size")

    @property
    def num_images(self) -> int:
        return len(self.classes) * self.per_class

    @property
    def num_batches(self) -> int:
        return math.ceil(self.num_images / self.batch_size)

    @cached_property
    def labels(self) -> np.ndarray:
        """Class of every image, ``(N,)`` int64 (see the module docstring)."""
        sorted_N = np.repeat(np.asarray(self.classes, dtype=np.int64), self.per_class)
        if self.label_order == "sorted":
            return sorted_N
        gen = torch.Generator(device="cpu")
        gen.manual_seed(self.seed)
        perm = torch.randperm(self.num_images, generator=gen).numpy()
        return sorted_N[perm]

    def g_seed(self, batch: int) -> int:
        return self.seed * SEED_STRIDE + batch

    def batch(self, index: int) -> BatchSpec:
        check_int(index, "batch index", 0, self.num_batches - 1)
        start = index * self.batch_size
        stop = min(start + self.batch_size, self.num_images)
        rows = np.arange(start, start + self.batch_size) % self.num_images
        return BatchSpec(index=index, start=start, stop=stop, labels=tuple(int(v) for v in self.labels[rows]),
                         g_seed=self.g_seed(index))


