"""Compiling the fast path's Triton kernels several at a time, before a run's first pass: one idea, its rules here.

Import only where Triton can run (see :mod:`sdvar_lib.fast.kernels`). Triton compiles a kernel once per
specialisation (argument dtypes, divisibility of sizes, compile-time flags) the first time a launch meets it.
A cold process meets about a dozen while its first call runs, one after another; each compile is CPU work
that spends much of its time outside Python's lock (LLVM, and ``ptxas`` in a child process), so
independent compiles overlap in threads (on one H200 machine's 16 cores: 8 compiles in 1.0 s in 2-4
threads against 2.4 s one after another, 12-02).

The rules:

1. Every launch of a kernel that can be compiled ahead goes through :func:`launch`. Normally it *is*
   the launch; inside :func:`compile_ahead` it only hands the specialisation's compile to a thread (Triton's
   ``warmup`` under its ``AsyncCompileMode``): nothing runs on the GPU, outputs stay unwritten.
2. A *warm-up* is a function that makes the launches a pass will make (the same kernels, dtypes, flags and
   sizes' divisibility) on small tensors: whoever owns the launches writes the warm-ups beside them
   (:func:`sdvar_lib.fast.fused.block_warmups`, :meth:`sdvar_lib.fast.sampling.FusedSampler.warmups`), and a
   test checks that they cover every launch of a pass.
3. :func:`compile_ahead` runs warm-ups in the calling thread, waits for the compiles, and leaves every
   compiled kernel in Triton's caches (in memory and on disk), where the pass's own launches find it. A
   compile that fails is left to fail again at the real launch, where the fast path's checks handle it.

Where Triton has no ``AsyncCompileMode`` (older than 3.4), :func:`compile_ahead` does nothing and kernels
compile on first use, as before.
"""

from __future__ import annotations

import contextvars
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from sdvar_lib.util.checks import check_int

log = logging.getLogger(__name__)

__all__ = ["launch", "PrecompileReport", "compile_ahead", "async_compile_available"]

_MODE: contextvars.ContextVar = contextvars.ContextVar("sdvar_precompile_mode", default=None)


def launch(kernel, grid: tuple[int, ...], *args, **kwargs) -> None:
    """``kernel[grid](*args, **kwargs)``; inside :func:`compile_ahead` only its compile is handed to a thread."""
    if _MODE.get() is not None:
        kernel.warmup(*args, grid=grid, **kwargs)
    else:
        kernel[grid](*args, **kwargs)


def _async_compile_mode():
    try:
        from triton.runtime import _async_compile
    except ImportError:
        return None
    if _async_compile.active_mode.get() is not None:  # someone else's (e.g. torch.compile's) is on: leave it be
        return None
    return _async_compile.AsyncCompileMode


def async_compile_available() -> bool:
    """Whether this Triton can compile in threads (``triton.runtime._async_compile.AsyncCompileMode``)."""
    return _async_compile_mode() is not None


@dataclass(frozen=True)
class PrecompileReport:
    """What :func:`compile_ahead` did: warm-ups run, specialisations new to this process (compiled, or loaded from
    Triton's disk cache), threads, seconds."""

    warmups: int
    built: int
    workers: int
    seconds: float


def compile_ahead(warmups: Sequence[Callable[[], object]], workers: int) -> PrecompileReport:
    """Run ``warmups`` with their launches turned into compiles on ``workers`` threads; wait for them all.

    With ``workers`` 0, no warm-ups, a Triton without ``AsyncCompileMode`` or one already active (another
    library's) nothing is done: kernels compile on first use. Specialisations this process already has are not
    built again.
    """
    check_int(workers, "workers", 0)
    mode_cls = _async_compile_mode()
    if workers == 0 or not warmups or mode_cls is None or _MODE.get() is not None:
        return PrecompileReport(warmups=0, built=0, workers=0, seconds=0.0)
    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="sdvar-compile") as pool:
        mode = mode_cls(pool, ignore_errors=True)  # a failed compile fails again at the real launch (rule 3)
        token = _MODE.set(mode)
        try:
            with mode:
                for warmup in warmups:
                    warmup()
        finally:
            _MODE.reset(token)
    report = PrecompileReport(warmups=len(warmups), built=len(mode.raw_futures), workers=workers,
                              seconds=time.perf_counter() - t0)
    log.debug("built %d Triton specialisations ahead in %.2f s (%d warm-ups, %d threads)", report.built,
              report.seconds, report.warmups, report.workers)
    return report
