"""Pieces of a call timed alone (``python -m sdvar_lib.bench --components decode,sampling,host,timeline``).

Per pair and batch, after that batch's rows:

- ``decode``: the VQVAE decode alone, graphed two ways under bf16 autocast -- the reference decode
  and the fast decode (:class:`~sdvar_lib.fast.decode.FastDecoder`) -- against its bound
  (:func:`~sdvar_lib.bench.bounds.decode_cost`), and how far the fast decode's images are from the
  reference's (relative L2 difference);
- ``sampling``: the draw of the last stage from random logits with PyTorch's kernels and with the fused
  sampler (:mod:`sdvar_lib.fast.sampling`), and the share of tokens they agree on (same generator seed);
- ``host``: the host's time by operator (self CPU time, :mod:`torch.profiler`) in one call of the
  ``target`` row: what the host spends between graph replays;
- ``timeline``: one call of the ``target`` row on the GPU's clock (:func:`call_timeline`): how much of its wall
  time the GPU is busy, how long before its first and after its last activity, and its largest idle gaps --
  whether the time outside the passes is GPU work or a GPU waiting for the host.

Timers are arguments (:data:`~sdvar_lib.bench.timing.ReplayTimer`), so the CPU tests run all of it with
host timers on the tiny pair.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from sdvar_lib.bench.bounds import Ceilings, bound_s, decode_cost
from sdvar_lib.bench.methods import PairContext, bench_row, in_call_context, method_call, prepare_runs
from sdvar_lib.bench.timing import ReplayTimer, median_event_ms
from sdvar_lib.fast.graphs import GraphedDecode
from sdvar_lib.fast.sampling import FusedSampler, resolve_sampler
from sdvar_lib.models.presets import ModelPair
from sdvar_lib.models.run import ModelRun
from sdvar_lib.models.sampling import SamplingConfig

__all__ = [
    "COMPONENTS",
    "DecodeComparison",
    "SamplingTiming",
    "HostOp",
    "BatchComponents",
    "compare_decodes",
    "time_sampling",
    "host_profile",
    "CallTimeline",
    "call_timeline",
    "timeline_from_intervals",
    "measure_components",
]

COMPONENTS = ("decode", "sampling", "host", "timeline")


@dataclass
class DecodeComparison:
    """The VQVAE decode alone, graphed, under bf16 autocast on CUDA: the reference decode and the fast decode."""

    reference_ms: float
    fast_ms: float
    bound_ms: float
    gflop: float
    gbytes: float
    rel_diff: float
    """``||fast - reference|| / ||reference||`` of the images of one random ``f_hat``."""


@dataclass
class SamplingTiming:
    """The draw of one stage from the same CFG-doubled float32 logits: PyTorch's kernels and the fused sampler."""

    stage: int
    tokens_per_image: int
    torch_ms: float
    fused_ms: float | None = None
    """``None`` where the fused sampler does not run (no Triton, the CPU)."""
    same_tokens: float | None = None
    """Share of tokens both draws agree on (same generator seed)."""


@dataclass
class HostOp:
    name: str
    self_cpu_ms: float
    count: int


@dataclass(frozen=True)
class CallTimeline:
    """One call on the GPU's clock (:func:`call_timeline`); times in ms from the call's start."""

    wall_ms: float
    """The call, from its start until the GPU finished its work."""
    gpu_busy_ms: float
    """The union of the GPU's activities (kernels, copies, memsets) inside the call."""
    gpu_activities: int
    lead_ms: float
    """From the call's start to the GPU's first activity (the host's set-up, exposed)."""
    tail_ms: float
    """From the GPU's last activity to the call's end."""
    idle_ms: float
    """GPU idle time between its first and last activities."""
    gaps: tuple[tuple[float, float], ...] = ()
    """The largest idle gaps between activities, ``(start, length)``, longest first."""


@dataclass
class BatchComponents:
    """What ``--components`` measured for one pair and batch (``None``: not asked for)."""

    pair: str
    batch: int
    decode: DecodeComparison | None = None
    sampling: SamplingTiming | None = None
    host: list[HostOp] | None = None
    host_method: str = "target"
    timeline: CallTimeline | None = None


def _autocast(device: torch.device):
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()


@torch.no_grad()
def compare_decodes(pair: ModelPair, batch: int, ceilings: Ceilings, repeats: int,
                    replay_timer: ReplayTimer = median_event_ms) -> DecodeComparison:
    """Time ``fhat_to_img`` through a graphed reference decode and a graphed fast decode (dropped afterwards)."""
    vae, target = pair.vae, pair.target
    pn = vae.patch_nums[-1]
    f_hat = torch.randn(batch, vae.Cvae, pn, pn, device=target.device)
    times, images = {}, {}
    for name, fast in (("reference", False), ("fast", True)):
        graphed = GraphedDecode(vae, fast=fast)
        with graphed.installed(), _autocast(f_hat.device):
            times[name] = replay_timer(lambda: target.images_from_f_hat(f_hat), repeats, 2)
            images[name] = target.images_from_f_hat(f_hat).float()
        del graphed
    cost = decode_cost(vae, batch)
    rel_diff = float((images["fast"] - images["reference"]).norm() / images["reference"].norm())
    return DecodeComparison(reference_ms=times["reference"], fast_ms=times["fast"],
                            bound_ms=bound_s(cost.flops, cost.bytes, ceilings) * 1e3, gflop=cost.flops / 1e9,
                            gbytes=cost.bytes / 1e9, rel_diff=rel_diff)


@torch.no_grad()
def time_sampling(pair: ModelPair, batch: int, sampling: SamplingConfig, repeats: int,
                  replay_timer: ReplayTimer = median_event_ms, stage: int | None = None) -> SamplingTiming:
    """The draw of ``stage`` (default the last) from random logits (scale 3), PyTorch kernels against the fused kernel."""
    target = pair.target
    si = target.num_stages - 1 if stage is None else stage
    length = target.patch_nums[si] ** 2
    device = target.device
    logits = torch.randn(2 * batch, length, target.V, device=device) * 3
    plain = ModelRun(target, None, None, None)
    rng = torch.Generator(device=device).manual_seed(0)
    result = SamplingTiming(stage=si, tokens_per_image=length,
                            torch_ms=replay_timer(lambda: plain.sample_stage(logits, si, sampling, rng), repeats, 2))
    if resolve_sampler("auto", device) == "fused":
        fused = FusedSampler(target)
        result.fused_ms = replay_timer(lambda: fused(logits, si, sampling, rng), repeats, 2)
        a = plain.sample_stage(logits, si, sampling, torch.Generator(device=device).manual_seed(1)).idx_Bl
        b = fused(logits, si, sampling, torch.Generator(device=device).manual_seed(1)).idx_Bl
        result.same_tokens = float((a == b).float().mean())
    return result


def _run_to_the_end(call: Callable[[], object]) -> None:
    """One run of ``call``, then (on a GPU) a wait until the GPU has finished its work."""
    call()
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def host_profile(call: Callable[[], object], top: int = 15) -> list[HostOp]:
    """Self CPU time of the operators of one run of ``call`` (after one untimed run), the ``top`` largest."""
    _run_to_the_end(call)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        _run_to_the_end(call)
    events = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)[:top]
    return [HostOp(name=e.key[:80], self_cpu_ms=e.self_cpu_time_total / 1e3, count=e.count) for e in events]


def timeline_from_intervals(start_us: float, end_us: float, intervals: Sequence[tuple[float, float]],
                            top: int = 5) -> CallTimeline:
    """A :class:`CallTimeline` of a call from ``start_us`` to ``end_us`` whose GPU activities ran over ``intervals``
    (``(start, end)`` in µs on the same clock; overlapping ones are merged, those outside the call clipped)."""
    if end_us < start_us:
        raise ValueError(f"a call ends after it starts; got start {start_us} us, end {end_us} us")
    clipped = sorted((max(a, start_us), min(b, end_us)) for a, b in intervals if b > start_us and a < end_us and b >= a)
    merged: list[list[float]] = []
    for a, b in clipped:
        if merged and a <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], b)
        else:
            merged.append([a, b])
    wall = (end_us - start_us) / 1e3
    if not merged:
        return CallTimeline(wall_ms=wall, gpu_busy_ms=0.0, gpu_activities=0, lead_ms=wall, tail_ms=0.0, idle_ms=0.0)
    gaps = sorted((((b0 - start_us) / 1e3, (a1 - b0) / 1e3) for (_, b0), (a1, _) in zip(merged, merged[1:])),
                  key=lambda gap: -gap[1])
    return CallTimeline(
        wall_ms=wall, gpu_busy_ms=sum(b - a for a, b in merged) / 1e3, gpu_activities=len(clipped),
        lead_ms=(merged[0][0] - start_us) / 1e3, tail_ms=(end_us - merged[-1][1]) / 1e3,
        idle_ms=sum(g[1] for g in gaps), gaps=tuple(gaps[:top]),
    )


def call_timeline(call: Callable[[], object], top: int = 5) -> CallTimeline:
    """One run of ``call`` (after one untimed run) under :mod:`torch.profiler`, on the GPU's clock: its wall time
    up to the GPU's last activity, the GPU's busy time and its idle gaps (:func:`timeline_from_intervals`).

    The GPU's activities inside CUDA graphs are listed where the profiler traces graph kernels (CUPTI does on
    recent CUDA); without a GPU there are none, and the whole call counts as lead time."""
    cuda = torch.cuda.is_available()
    activities = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if cuda else [])
    _run_to_the_end(call)
    with torch.profiler.profile(activities=activities) as prof:
        with torch.profiler.record_function("call_timeline"):
            _run_to_the_end(call)
    events = prof.events()
    root = next(e for e in events if e.name == "call_timeline" and e.device_type == torch.autograd.DeviceType.CPU)
    gpu = [(e.time_range.start, e.time_range.end) for e in events
           if e.device_type == torch.autograd.DeviceType.CUDA and e.name != "call_timeline"]
    return timeline_from_intervals(root.time_range.start, root.time_range.end, gpu, top)


def measure_components(ctx: PairContext, batch: int, components: Sequence[str], sampling: SamplingConfig,
                       ceilings: Ceilings, repeats: int, replay_timer: ReplayTimer = median_event_ms) -> BatchComponents:
    """Every component of ``components`` (:data:`COMPONENTS`) for the pair of ``ctx`` at ``batch``."""
    out = BatchComponents(pair=ctx.name, batch=batch)
    if "decode" in components:
        out.decode = compare_decodes(ctx.pair, batch, ceilings, repeats, replay_timer)
    if "sampling" in components:
        out.sampling = time_sampling(ctx.pair, batch, sampling, repeats, replay_timer)
    if "host" in components or "timeline" in components:  # both look at one call of the same row
        row = bench_row(out.host_method)
        prepare_runs(ctx, row, batch)
        call = method_call(ctx, row, None, batch, sampling)

        def one_call() -> object:
            return in_call_context(ctx, True, lambda: call(5))

        if "host" in components:
            out.host = host_profile(one_call)
        if "timeline" in components:
            out.timeline = call_timeline(one_call)
    return out
