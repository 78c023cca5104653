"""The preparation a notebook user waits for: the first calls of a fresh process, and the draft's programs at their bound.

**First calls.** On its first call per (model, batch size) the fast path checks and compiles its Triton
kernels and captures its CUDA graphs (:attr:`FastRunFactory.one_off_s
<sdvar_lib.fast.factory.FastRunFactory.one_off_s>`). Triton keeps what it compiled on disk
(``TRITON_CACHE_DIR``, by default ``~/.triton/cache``), so a process that finds the kernels there
(a reopened notebook) only loads them; graph captures are redone in every process.
:func:`time_first_calls` times the first and the second call of each method in the process it runs in;
the device script (``scripts/device_perf_v3.py``) runs it in two child processes sharing one new cache
folder, ``cold`` (empty) then ``warm`` (filled by the first), and :func:`compiled_kernels` counts the Triton
specialisations the cold process left in that folder, per kernel (what its preparation compiled).

**Stage programs.** :func:`measure_program_ratio` replays the draft's and the target's stage programs
(:meth:`FastRun.stage_program <sdvar_lib.fast.run.FastRun.stage_program>`: passes, draws and ``f_hat``
of consecutive stages in one CUDA graph, as a round's draft part and the target alone run them) and
gives their ratio, beside the single-stage passes' ratio of :mod:`sdvar_lib.bench.calibration`.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from sdvar_lib.bench.timing import ReplayTimer, median_event_ms
from sdvar_lib.fast.factory import FastRunFactory
from sdvar_lib.fast.run import FastRun
from sdvar_lib.models.sampling import SamplingConfig
from sdvar_lib.sdvar.decoder import SDVAR
from sdvar_lib.sdvar.registry import get_method
from sdvar_lib.util.checks import check_int

__all__ = ["FirstCall", "time_first_calls", "compiled_kernels", "ProgramRatio", "measure_program_ratio"]


@dataclass
class FirstCall:
    """The first and second call of ``method`` at ``batch`` in one process (seconds, host clock, synchronised)."""

    method: str
    batch: int
    first_s: float
    second_s: float
    one_off_s: float
    """Kernel checks/compiles and graph captures of the fast runs during the first call."""
    captures: int

    @property
    def preparation_s(self) -> float:
        """What the first call cost beyond a prepared one: ``first_s - second_s``."""
        return self.first_s - self.second_s


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def time_first_calls(sd: SDVAR, methods: Sequence[str], batch: int, sampling: SamplingConfig, seed: int = 0,
                     clock: Callable[[], float] = time.perf_counter) -> list[FirstCall]:
    """The first and second call of every registry method in ``methods``, in order, on ``sd`` (fast path)."""
    if not isinstance(sd.run_factory, FastRunFactory):
        raise ValueError("time_first_calls measures the fast path: sd needs a FastRunFactory")
    check_int(batch, "batch", 1)
    factory: FastRunFactory = sd.run_factory
    out = []
    for name in methods:
        method = get_method(name)
        one_off = factory.one_off_s
        captures = sum(r.counters.captures for r in factory.runs())
        times = []
        for i in range(2):
            _sync()
            t0 = clock()
            method.run(sd, batch, None, seed + i, sampling)
            _sync()
            times.append(clock() - t0)
            if i == 0:
                one_off, captures = factory.one_off_s - one_off, sum(r.counters.captures for r in factory.runs()) - captures
        out.append(FirstCall(method=name, batch=batch, first_s=times[0], second_s=times[1], one_off_s=one_off,
                             captures=captures))
    return out


GROUP_PREFIX, GROUP_SUFFIX = "__grp__", ".json"


def compiled_kernels(cache_dir: str | Path) -> dict[str, int]:
    """How many specialisations of each Triton kernel a cache folder holds (kernel name -> count, most first).

    Triton compiles a kernel once per specialisation (argument dtypes, divisibility of sizes and pointers,
    constexpr values, launch options) and keeps each in its own folder of ``TRITON_CACHE_DIR``, named by a hash,
    with a group file ``__grp__<kernel>.json`` that lists that compilation's files. Counting those after a cold
    process says which kernels its preparation compiled, and how often. A folder that does not exist holds none.
    """
    root = Path(cache_dir)
    if not root.is_dir():
        return {}
    names = Counter(f.name[len(GROUP_PREFIX): -len(GROUP_SUFFIX)] for f in root.glob(f"*/{GROUP_PREFIX}*{GROUP_SUFFIX}"))
    return dict(sorted(names.items(), key=lambda kv: (-kv[1], kv[0])))


@dataclass(frozen=True)
class ProgramRatio:
    """Stage programs of every stage (one CUDA graph each), draft and target at one batch: replay times (ms)."""

    pair: str
    batch: int
    draft_ms: float
    target_ms: float

    @property
    def ratio(self) -> float:
        return self.draft_ms / self.target_ms


@torch.no_grad()
def _program_ms(run: FastRun, sampling: SamplingConfig, timer: ReplayTimer, repeats: int) -> float:
    S, labels = run.model.num_stages, torch.zeros(run.batch_size, dtype=torch.long, device=run.model.device)
    run.begin(labels)
    slots = run.slots
    program = run.stage_program(0, 0, S, sampling, slots)

    def replay() -> None:
        program.run()

    ms = float(timer(replay, repeats, 1))
    run.cache.reset()
    return ms


def measure_program_ratio(name: str, draft: FastRun, target: FastRun, sampling: SamplingConfig, repeats: int = 5,
                          timer: ReplayTimer = median_event_ms) -> ProgramRatio:
    """Replay the draft's and the target's stage program of all stages (noise as left in the slots: the work does not
    depend on it) and return both times."""
    if draft.batch_size != target.batch_size:
        raise ValueError("the draft and target runs must have the same batch size")
    return ProgramRatio(pair=name, batch=target.batch_size, draft_ms=_program_ms(draft, sampling, timer, repeats),
                        target_ms=_program_ms(target, sampling, timer, repeats))
