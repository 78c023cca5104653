"""``host_trace``: host timestamps (and, on a GPU, CUDA events) at the entry and exit of a call's functions.

On the CPU, with the tiny pair on the fast path's graph-less runs: the marks of a target-alone call and of an
SDVAR call come in nested enter/exit pairs in call order, with non-decreasing host times; the call's result is
what it is untraced; every wrapped function is the original again afterwards (also after an exception, and for
an inherited method and a staticmethod); a name that does not resolve is refused before anything is wrapped.
"""

from __future__ import annotations

import pytest
import torch

from sdvar_lib import SDVAR, SamplingConfig
from sdvar_lib.bench import TRACED, format_host_trace, host_trace
from sdvar_lib.bench.trace import _resolve
from sdvar_lib.fast.config import FastConfig
from sdvar_lib.fast.factory import FastRunFactory
from sdvar_lib.sdvar.registry import get_method


def _originals(specs):
    out = {}
    for spec in specs:
        owner, attr = _resolve(spec)
        out[spec] = (owner, attr, vars(owner).get(attr), getattr(owner, attr))
    return out


def _assert_restored(before):
    for spec, (owner, attr, own, _) in before.items():
        assert vars(owner).get(attr) is own, f"{spec} was not restored"


@pytest.fixture
def fast_sd(tiny_pair):
    _, draft, target = tiny_pair
    return SDVAR(draft, target, run_factory=FastRunFactory(FastConfig(use_cuda_graphs=False)))


@pytest.mark.parametrize("method", ["target", "exact_g2"])
def test_marks_nest_in_call_order_and_the_functions_come_back(fast_sd, method):
    before = _originals(TRACED)
    sampling = SamplingConfig(top_k=0)
    run = get_method(method)
    results = []

    def call():
        results.append(run.run(fast_sd, 2, [1, 2], 3, sampling))

    marks = host_trace(call)
    _assert_restored(before)
    assert len(results) == 2 and torch.equal(results[0].f_hat_BChw, results[1].f_hat_BChw)
    stack = []
    for m in marks:
        if m.entering:
            assert m.depth == len(stack)
            stack.append(m.name)
        else:
            assert stack and stack.pop() == m.name and m.depth == len(stack), "exits must close the latest entry"
    assert not stack and marks[0].name == "Method.run" and marks[-1].name == "Method.run"
    assert all(a.host_ms <= b.host_ms for a, b in zip(marks, marks[1:]))
    names = {m.name for m in marks}
    assert {"FastRun.begin", "SDVAR.start_call", "_modules_of"} <= names
    assert ("DeviceRound._round" in names) == (method == "exact_g2")
    if not torch.cuda.is_available():
        assert all(m.gpu_ms is None and m.lag_ms is None for m in marks)
    text = format_host_trace(marks)
    assert text.count("\n") == len(marks) and "> FastRun.begin" in text


class _Base:
    def hello(self):
        return "base"

    @staticmethod
    def twice(x):
        return 2 * x


class _Child(_Base):
    pass


def test_inherited_and_static_functions_are_traced_and_restored_after_an_exception():
    specs = (f"{__name__}:_Child.hello", f"{__name__}:_Base.twice")
    seen = []

    def call():
        seen.append((_Child().hello(), _Base.twice(3), _Base().twice(4)))
        if len(seen) == 2:
            raise RuntimeError("inside the traced call")

    with pytest.raises(RuntimeError, match="inside the traced call"):
        host_trace(call, specs)
    assert seen == [("base", 6, 8)] * 2
    assert "hello" not in vars(_Child) and isinstance(vars(_Base)["twice"], staticmethod)
    assert _Child().hello() == "base"


def test_names_that_do_not_resolve_are_refused_before_anything_is_wrapped():
    before = _originals(TRACED[:3])
    for bad in ("no_colon", "sdvar_lib.nowhere:f", "sdvar_lib.fast.run:FastRun.nothing", "sdvar_lib.fast.run:Nope.run"):
        with pytest.raises(ValueError):
            host_trace(lambda: None, TRACED[:3] + (bad,))
        _assert_restored(before)
