"""Timing on the GPU: one CUDA-event helper for every measurement, percentiles, device ceilings, decode time.

:func:`cuda_event_ms` is the one place a run is timed (CUDA events around it, then a sync on the
end event); :func:`median_event_ms` repeats it (these four timers live in :mod:`sdvar_lib.util.timing`,
re-exported here). The calibration takes its timers as arguments (:data:`ReplayTimer`, :data:`CallTimer`),
so that its CPU tests and the device scripts' CPU smoke runs can pass the host-clock stand-ins
:func:`host_call_ms` and :func:`median_host_ms` instead.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from sdvar_lib.bench.bounds import Ceilings
from sdvar_lib.fast.graphs import GraphedDecode
from sdvar_lib.models.var import VAR
from sdvar_lib.util.timing import cuda_event_ms, host_call_ms, median_event_ms, median_host_ms

__all__ = [
    "ReplayTimer",
    "CallTimer",
    "cuda_event_ms",
    "median_event_ms",
    "host_call_ms",
    "median_host_ms",
    "percentile",
    "measure_ceilings",
    "DecodeTiming",
    "measure_decode",
]

ReplayTimer = Callable[[Callable[[], object], int, int], float]
"""``(fn, repeats, warmup) -> median ms`` of ``fn`` (on the GPU: :func:`median_event_ms`)."""
CallTimer = Callable[[Callable[[], object]], tuple[object, float]]
"""``fn -> (result, ms)`` of one run of ``fn`` (on the GPU: :func:`cuda_event_ms`)."""


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolation percentile (``q`` in [0, 100])."""
    if not values:
        raise ValueError("percentile of no values")
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def _copy_ms(device: torch.device, n: int, repeats: int) -> float:
    src = torch.randn(n, dtype=torch.bfloat16, device=device)
    dst = torch.empty_like(src)
    return median_event_ms(lambda: dst.copy_(src), repeats)


def _matmul_ms(device: torch.device, n: int, repeats: int) -> float:
    a = torch.randn(n, n, dtype=torch.bfloat16, device=device)
    b = torch.randn(n, n, dtype=torch.bfloat16, device=device)
    return median_event_ms(lambda: a @ b, repeats)


def measure_ceilings(device: torch.device, copy_gib: float = 2.0, matmul_n: int = 8192, repeats: int = 10) -> Ceilings:
    """HBM bandwidth from a large device-to-device copy, bf16 FLOP/s from a large matmul (random data)."""
    n = int(copy_gib * 2**30) // 2
    copy_ms = _copy_ms(device, n, repeats)
    mm_ms = _matmul_ms(device, matmul_n, repeats)
    torch.cuda.empty_cache()
    return Ceilings(hbm_bytes_per_s=2 * n * 2 / (copy_ms / 1e3), bf16_flops_per_s=2 * matmul_n**3 / (mm_ms / 1e3))


@dataclass
class DecodeTiming:
    """VQVAE decode alone (bf16 autocast): eager, and replayed as a CUDA graph (what fast-path rows use)."""

    batch: int
    eager_ms: float
    graphed_ms: float | None = None
    bound_ms: float | None = None
    """Its lower bound (FLOPs and bytes of :func:`~sdvar_lib.bench.bounds.decode_cost` at the run's ceilings)."""


def measure_decode(model: VAR, batch: int, repeats: int = 10, graphed: GraphedDecode | None = None) -> DecodeTiming:
    """VQVAE decode of ``batch`` feature maps under bf16 autocast (as inside every call), eager and graphed."""
    pn = model.patch_nums[-1]
    f_hat = torch.randn(batch, model.Cvae, pn, pn, device=model.device)

    def decode() -> None:
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
            model.images_from_f_hat(f_hat)

    eager = median_event_ms(decode, repeats)
    graphed_ms = None
    if graphed is not None:
        with graphed.installed():
            graphed_ms = median_event_ms(decode, repeats)
    return DecodeTiming(batch=batch, eager_ms=eager, graphed_ms=graphed_ms)
