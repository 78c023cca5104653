"""Where a call's host holds its GPU back: host timestamps and CUDA events at the entry and exit of its functions.

:func:`host_trace` runs a call once untimed, then once with the functions of :data:`TRACED` wrapped: each
entry and exit records the host's clock and a CUDA event on the current stream, so every mark says when the
host got there and when the GPU did. Where the GPU's time equals the host's (``lag_ms`` about 0) the GPU had
caught up and was waiting for the host; where it is ahead of the host by milliseconds, work was queued and
the host's time there costs nothing. A wrapped function costs two event records (a few microseconds); the
call's shape does not change. Without CUDA only the host's times are recorded.

The functions are named ``"module:Class.method"`` or ``"module:function"``, in the module that *calls* a
function imported by name (``sdvar_lib.sdvar.decoder:prepare_call``). They are restored when the traced call
ends, also after an exception.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import torch

from sdvar_lib.bench.components import _run_to_the_end

__all__ = ["TRACED", "TraceMark", "host_trace", "format_host_trace"]

TRACED: tuple[str, ...] = (
    "sdvar_lib.sdvar.registry:Method.run",
    "sdvar_lib.sdvar.handoff:_whole_call",
    "sdvar_lib.sdvar.handoff:decode_handoff",
    "sdvar_lib.sdvar.handoff:decode_stages",
    "sdvar_lib.sdvar.decoder:SDVAR.generate_parallel",
    "sdvar_lib.sdvar.decoder:SDVAR.start_call",
    "sdvar_lib.sdvar.decoder:SDVAR.check_fits",
    "sdvar_lib.sdvar.decoder:prepare_call",
    "sdvar_lib.models.run:make_generator",
    "sdvar_lib.models.run:prepare_labels",
    "sdvar_lib.sdvar.decoder:SDVAR._priced",
    "sdvar_lib.sdvar.decoder:SDVAR._state",
    "sdvar_lib.sdvar.decoder:SDVAR.new_run",
    "sdvar_lib.sdvar.decoder:SDVAR.finish_call",
    "sdvar_lib.sdvar.decoder:SDVAR.decode",
    "sdvar_lib.util.modes:_modules_of",
    "sdvar_lib.fast.factory:FastRunFactory.__call__",
    "sdvar_lib.fast.factory:FastRunFactory.round_runner",
    "sdvar_lib.fast.run:FastRun.begin",
    "sdvar_lib.fast.run:FastRun.decode_stages",
    "sdvar_lib.fast.run:FastRun._run_stages",
    "sdvar_lib.fast.run:FastRun._load_f_hats",
    "sdvar_lib.fast.round:DeviceRound.run",
    "sdvar_lib.fast.round:DeviceRound._round",
    "sdvar_lib.fast.round:DeviceRound._outputs",
    "sdvar_lib.fast.round:DeviceRound._check_target_buffers",
    "sdvar_lib.fast.round:DeviceRound._static_context",
    "sdvar_lib.fast.run:FastRun.stage_program",
    "sdvar_lib.fast.round:DeviceRound._verify_program",
    "sdvar_lib.fast.round:DeviceRound._accept_program",
    "sdvar_lib.fast.graphs:CapturedGraph.run",
    "sdvar_lib.fast.graphs:GraphedDecode.__call__",
)
"""What a fast-path call of the target alone, an SDVAR call or a hand-off passes through on the host."""


@dataclass(frozen=True)
class TraceMark:
    """One entry into (or exit from) a traced function, in ms from the call's start."""

    name: str
    entering: bool
    depth: int
    host_ms: float
    gpu_ms: float | None = None
    """When the GPU reached this point of its stream (``None`` without CUDA)."""

    @property
    def lag_ms(self) -> float | None:
        """How far the GPU was behind the host here: about 0 where it waited for the host."""
        return None if self.gpu_ms is None else self.gpu_ms - self.host_ms


@dataclass
class _Recorder:
    """The raw marks of one traced call (host clock, optional CUDA event) and the current nesting depth."""

    cuda: bool
    depth: int = 0
    raw: list[tuple[str, bool, int, float, torch.cuda.Event | None]] = field(default_factory=list)

    def mark(self, name: str, entering: bool) -> None:
        event = None
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
        self.raw.append((name, entering, self.depth, time.perf_counter(), event))


def _resolve(spec: str) -> tuple[object, str]:
    """``(owner, attribute)`` of ``"module:Class.attr"`` or ``"module:function"``."""
    if not isinstance(spec, str) or spec.count(":") != 1:
        raise ValueError(f"a traced function is named 'module:Class.method' or 'module:function', got {spec!r}")
    module_name, path = spec.split(":")
    try:
        owner: object = importlib.import_module(module_name)
    except ImportError:
        raise ValueError(f"no module {module_name!r} (traced function {spec!r})") from None
    *owners, attr = path.split(".")
    for name in owners:
        owner = getattr(owner, name, None)
        if owner is None:
            raise ValueError(f"{spec!r}: {module_name} has no {'.'.join(owners)}")
    if not callable(getattr(owner, attr, None)):
        raise ValueError(f"{spec!r}: no function {attr!r} there")
    return owner, attr


def _traced(fn: Callable, name: str, recorder: _Recorder) -> Callable:
    @functools.wraps(fn)
    def traced(*args, **kwargs):
        recorder.mark(name, True)
        recorder.depth += 1
        try:
            return fn(*args, **kwargs)
        finally:
            recorder.depth -= 1
            recorder.mark(name, False)

    return traced


@contextlib.contextmanager
def _wrapped(specs: Sequence[str], recorder: _Recorder) -> Iterator[None]:
    """The functions of ``specs`` wrapped for the block, each restored (or its override removed) afterwards."""
    resolved = [(spec, *_resolve(spec)) for spec in specs]  # every name checked before anything is wrapped
    undo: list[tuple[object, str, object]] = []
    try:
        for spec, owner, attr in resolved:
            own = vars(owner).get(attr)  # None: inherited (the override is removed afterwards)
            fn = getattr(owner, attr)
            wrapper = _traced(fn, spec.split(":")[1], recorder)
            setattr(owner, attr, staticmethod(wrapper) if isinstance(own, staticmethod) else wrapper)
            undo.append((owner, attr, own))
        yield
    finally:
        for owner, attr, own in reversed(undo):
            if own is None:
                delattr(owner, attr)
            else:
                setattr(owner, attr, own)


def host_trace(call: Callable[[], object], functions: Sequence[str] = TRACED) -> list[TraceMark]:
    """The marks of one run of ``call`` (after one untraced run) with ``functions`` traced (module docstring)."""
    cuda = torch.cuda.is_available()
    _run_to_the_end(call)
    recorder = _Recorder(cuda=cuda)
    start = None
    with _wrapped(tuple(functions), recorder):
        if cuda:
            start = torch.cuda.Event(enable_timing=True)
            start.record()
        t0 = time.perf_counter()
        _run_to_the_end(call)
    return [TraceMark(name=name, entering=entering, depth=depth, host_ms=(t - t0) * 1e3,
                      gpu_ms=start.elapsed_time(event) if event is not None else None)
            for name, entering, depth, t, event in recorder.raw]


def format_host_trace(marks: Sequence[TraceMark]) -> str:
    """The marks as text, one per line: host ms, GPU ms, the GPU's lag behind the host, the nested function."""
    lines = [f"{'host ms':>8} {'gpu ms':>8} {'lag ms':>7}  function"]
    for m in marks:
        gpu = f"{m.gpu_ms:8.3f} {m.lag_ms:7.2f}" if m.gpu_ms is not None else f"{'-':>8} {'-':>7}"
        lines.append(f"{m.host_ms:8.3f} {gpu}  {'  ' * m.depth}{'>' if m.entering else '<'} {m.name}")
    return "\n".join(lines)
