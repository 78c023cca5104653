"""Timing one piece of work: CUDA events on a GPU, the host clock elsewhere.

:func:`cuda_event_ms` is the one place a run is timed on a GPU (CUDA events around it, then a sync on
the end event), :func:`host_call_ms` its host-clock stand-in; :func:`median_event_ms` and
:func:`median_host_ms` repeat them, and :func:`median_ms` picks the one that fits a device. The
benchmark (:mod:`sdvar_lib.bench.timing`) and the fast path's pricing of its programs
(:meth:`sdvar_lib.fast.round.DeviceRound.price`) time with these.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch

__all__ = ["cuda_event_ms", "median_event_ms", "host_call_ms", "median_host_ms", "median_ms"]


def cuda_event_ms(fn: Callable[[], object]) -> tuple[object, float]:
    """One run of ``fn`` between two CUDA events: ``(its result, elapsed ms)``."""
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    out = fn()
    end.record()
    end.synchronize()
    return out, start.elapsed_time(end)


def median_event_ms(fn: Callable[[], object], repeats: int, warmup: int = 2) -> float:
    """Median of ``repeats`` :func:`cuda_event_ms` runs of ``fn`` after ``warmup`` untimed runs."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    return statistics.median(cuda_event_ms(fn)[1] for _ in range(repeats))


def host_call_ms(fn: Callable[[], object]) -> tuple[object, float]:
    """One run of ``fn`` on the host clock: ``(its result, elapsed ms)`` (the stand-in without CUDA)."""
    t0 = time.perf_counter()
    out = fn()
    return out, (time.perf_counter() - t0) * 1e3


def median_host_ms(fn: Callable[[], object], repeats: int, warmup: int = 1) -> float:
    """The middle (upper middle of an even count) of ``repeats`` :func:`host_call_ms` runs of ``fn`` after
    ``warmup`` untimed runs (the stand-in of :func:`median_event_ms` without CUDA)."""
    for _ in range(warmup):
        fn()
    return statistics.median_high(host_call_ms(fn)[1] for _ in range(repeats))


def median_ms(fn: Callable[[], object], device: torch.device, repeats: int, warmup: int = 1) -> float:
    """:func:`median_event_ms` for work on a CUDA ``device``, :func:`median_host_ms` for any other."""
    if torch.device(device).type == "cuda":
        return median_event_ms(fn, repeats, warmup)
    return median_host_ms(fn, repeats, warmup)
