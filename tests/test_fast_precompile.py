"""Compiling Triton kernels ahead, several at a time (sdvar_lib.fast.kernels.precompile), on the CPU.

The plumbing is checked with stand-in kernels that hand a compile to Triton's ``AsyncCompileMode`` the way a
Triton kernel's ``warmup`` does: launches inside :func:`compile_ahead` become compiles on worker threads,
launches outside stay launches. That the warm-ups cover every launch of a pass is checked in
``tests/test_fast_kernels.py`` (Triton's interpreter); that a GPU call then compiles nothing new, in
``tests/test_gpu_fast.py``.
"""

from __future__ import annotations

import threading

import pytest

from sdvar_lib.fast.config import MAX_COMPILE_WORKERS, FastConfig
from sdvar_lib.fast.kernels import precompile
from sdvar_lib.fast.kernels.precompile import PrecompileReport, compile_ahead, launch

pytestmark = pytest.mark.skipif(not precompile.async_compile_available(),
                                reason="this Triton has no AsyncCompileMode")


class _StandInKernel:
    """Records launches; its ``warmup`` submits a compile to the active AsyncCompileMode, as Triton's does."""

    def __init__(self) -> None:
        self.launched: list[tuple] = []
        self.compiled_on: list[str] = []
        self.finalized: list[object] = []

    def __getitem__(self, grid):
        return lambda *args, **kwargs: self.launched.append((grid, args, tuple(sorted(kwargs.items()))))

    def warmup(self, *args, grid, **kwargs):
        from triton.runtime import _async_compile

        mode = _async_compile.active_mode.get()
        assert mode is not None, "warmup outside an AsyncCompileMode"
        key = (grid, args, tuple(sorted(kwargs.items())))

        def compile_fn():
            self.compiled_on.append(threading.current_thread().name)
            return key

        return mode.submit(key, compile_fn, self.finalized.append)


def test_launch_outside_compile_ahead_is_the_launch():
    k = _StandInKernel()
    launch(k, (3,), 1, 2, FLAG=True)
    assert k.launched == [((3,), (1, 2), (("FLAG", True),))] and k.compiled_on == []


def test_compile_ahead_turns_launches_into_compiles_on_worker_threads():
    k = _StandInKernel()
    warmups = [lambda i=i: launch(k, (1,), i, FLAG=i % 2 == 0) for i in range(5)]
    warmups.append(lambda: launch(k, (1,), 0, FLAG=True))  # the same specialisation again: one compile
    report = compile_ahead(warmups, 3)
    assert k.launched == []  # nothing ran
    assert report.warmups == 6 and report.built == 5 and report.workers == 3 and report.seconds >= 0
    assert len(k.compiled_on) == 5 and all(name.startswith("sdvar-compile") for name in k.compiled_on)
    assert sorted(key[1][0] for key in k.finalized) == [0, 1, 2, 3, 4]  # every compile waited for and finalised
    launch(k, (2,), 9)  # afterwards a launch is a launch again
    assert k.launched == [((2,), (9,), ())]


def test_compile_ahead_does_nothing_with_no_workers_nested_or_without_async_compile(monkeypatch):
    k = _StandInKernel()
    report = compile_ahead([lambda: launch(k, (1,), 1)], 0)
    assert report == PrecompileReport(warmups=0, built=0, workers=0, seconds=0.0) and k.compiled_on == []
    assert compile_ahead([], 4).built == 0
    nested = []
    compile_ahead([lambda: nested.append(compile_ahead([lambda: launch(k, (1,), 2)], 2))], 2)
    assert nested[0].workers == 0 and k.launched == []  # the inner call neither compiles again nor launches
    monkeypatch.setattr(precompile, "_async_compile_mode", lambda: None)
    assert compile_ahead([lambda: launch(k, (1,), 3)], 2).workers == 0 and k.launched == []


@pytest.mark.parametrize("workers,error", [(-1, ValueError), (1.5, TypeError), (True, TypeError), ("2", TypeError)])
def test_compile_ahead_rejects_bad_worker_counts(workers, error):
    with pytest.raises(error, match="workers must be an int >= 0"):
        compile_ahead([], workers)


def test_fast_config_compile_workers():
    assert FastConfig(compile_workers=0).compile_threads == 0
    assert FastConfig(compile_workers=6).compile_threads == 6
    assert 1 <= FastConfig().compile_threads <= MAX_COMPILE_WORKERS
    for bad in (-1, 2.0, True):
        with pytest.raises((ValueError, TypeError), match="compile_workers"):
            FastConfig(compile_workers=bad)


def test_every_whole_call_asks_the_run_factory_to_prepare_first(tiny_pair):
    """SDVAR's whole calls (rounds, the target alone, hand-offs) hand the run factory the models, batch and sampling
    before their first pass (``prepare_call``: the fast path compiles what the call will meet, all at once)."""
    from sdvar_lib import SDVAR, SamplingConfig
    from sdvar_lib.fast.factory import FastRunFactory
    from sdvar_lib.sdvar.handoff import baseline, code_handoff

    asked = []

    class Recording(FastRunFactory):
        def prepare_call(self, models, batch_size, sampling):
            asked.append(([id(m) for m in models], batch_size, sampling))
            super().prepare_call(models, batch_size, sampling)

        def __call__(self, model, label_B):
            assert asked, "a run was asked for before prepare_call"
            return super().__call__(model, label_B)

    _, draft, target = tiny_pair
    sd = SDVAR(draft, target, run_factory=Recording(FastConfig(use_cuda_graphs=False)))
    sampling = SamplingConfig(top_k=3)
    sd.generate_parallel(2, [1, 2], g_seed=0, gamma=2, sampling=sampling)
    baseline(sd, 1, [3], g_seed=0, sampling=sampling)
    code_handoff(sd, 1, [3], g_seed=0, sampling=sampling, entry_num=2)
    assert [(models, b) for models, b, _ in asked] == [([id(draft), id(target)], 2), ([id(target)], 1),
                                                      ([id(target), id(draft)], 1)]
    assert all(s is sampling for _, _, s in asked)
