"""Where a pass and the decode spend their time: graph replay of one single-stage pass against its bound, GPU kernels.

:func:`profile_pass` times the CUDA-graph replay of a stage's pass, then runs the same pass once
eagerly (a run without graphs executes the very step the graph captured) under ``torch.profiler``
and lists its kernels. :func:`profile_decode` lists the kernels of one eager run of the fast VQVAE
decode. :func:`write_profiles` writes ``profile.md`` and ``profile.json`` atomically.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from sdvar_lib.bench.bounds import Ceilings, VarSpec, pass_bound_s
from sdvar_lib.bench.timing import median_event_ms
from sdvar_lib.fast.config import FastConfig, PassRecord
from sdvar_lib.fast.decode import FastDecoder, cudnn_benchmark
from sdvar_lib.fast.run import FastRun, chunk_span
from sdvar_lib.models.presets import build_vae, build_var
from sdvar_lib.models.var import VAR
from sdvar_lib.models.vqvae import VQVAE
from sdvar_lib.util.atomic import atomic_write_text

__all__ = ["KernelTime", "PassProfile", "DecodeProfile", "profile_pass", "profile_targets", "profile_decode",
           "profile_decodes", "format_profiles", "write_profiles"]


@dataclass
class KernelTime:
    name: str
    total_us: float
    count: int


@dataclass
class PassProfile:
    """One fast-path pass: graph replay time vs its bound, and the GPU kernels it runs (profiled eagerly)."""

    depth: int
    batch: int
    stage: int
    tokens: int
    replay_ms: float
    bound_ms: float
    kernel_sum_ms: float
    kernels: int
    top: list[KernelTime]


@dataclass
class DecodeProfile:
    """One eager run of the fast VQVAE decode (:class:`~sdvar_lib.fast.decode.FastDecoder`): its GPU kernels."""

    batch: int
    kernel_sum_ms: float
    kernels: int
    top: list[KernelTime]


def _kernel_times(prof: torch.profiler.profile) -> tuple[int, list[KernelTime]]:
    """``(number of GPU kernels, kernel times by name, largest first)`` of a profile."""
    by_name: dict[str, KernelTime] = {}
    n = 0
    for ev in prof.events():
        if ev.device_type != torch.autograd.DeviceType.CUDA:
            continue
        n += 1
        k = by_name.setdefault(ev.name[:90], KernelTime(ev.name[:90], 0.0, 0))
        k.total_us += ev.time_range.elapsed_us()
        k.count += 1
    return n, sorted(by_name.values(), key=lambda k: -k.total_us)


def _single_pass_run(model: VAR, batch: int, stage: int, graphs: bool) -> tuple[FastRun, PassRecord]:
    run = FastRun(model, batch, FastConfig(use_cuda_graphs=graphs))
    run.begin(torch.zeros(batch, dtype=torch.long, device=model.device))
    run.precapture([(stage, 1)])
    position, length = chunk_span(model, stage, 1)
    return run, PassRecord(position, length, graphed=graphs)


def _replay_ms(model: VAR, batch: int, stage: int, repeats: int = 20) -> float:
    run, rec = _single_pass_run(model, batch, stage, graphs=True)
    return median_event_ms(lambda: run.replay_passes([rec]), repeats)


def _eager_pass_profile(model: VAR, batch: int, stage: int) -> torch.profiler.profile:
    run, rec = _single_pass_run(model, batch, stage, graphs=False)
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        run.replay_passes([rec])
        torch.cuda.synchronize()
    return prof


@torch.no_grad()
def profile_pass(model: VAR, batch: int, stage: int, ceilings: Ceilings, top: int = 12) -> PassProfile:
    """Time the CUDA-graph replay of the single-stage pass ``stage`` and list its kernels (torch.profiler).

    The graphed run is dropped before the eager one is built, so only one KV cache is held at a time.
    """
    replay_ms = _replay_ms(model, batch, stage)
    torch.cuda.empty_cache()
    prof = _eager_pass_profile(model, batch, stage)
    position, length = chunk_span(model, stage, 1)
    n, kernels = _kernel_times(prof)
    spec = VarSpec.from_model(model)
    return PassProfile(
        depth=model.depth, batch=batch, stage=stage, tokens=length, replay_ms=replay_ms,
        bound_ms=pass_bound_s(spec, 2 * batch, position, length, ceilings) * 1e3,
        kernel_sum_ms=sum(k.total_us for k in kernels) / 1e3, kernels=n, top=kernels[:top],
    )


def profile_targets(target_depths: Sequence[int], batches: Sequence[int], stages: Sequence[int], ceilings: Ceilings,
                    device: torch.device) -> list[PassProfile]:
    """:func:`profile_pass` for every target depth (random bf16 weights), batch size and stage."""
    profiles = []
    for depth in dict.fromkeys(target_depths):
        target = build_var(build_vae(device), depth, device).to(torch.bfloat16).eval()
        for B in batches:
            for stage in stages:
                profiles.append(profile_pass(target, B, stage, ceilings))
        del target
        torch.cuda.empty_cache()
    return profiles


@torch.no_grad()
def profile_decode(vae: VQVAE, batch: int, top: int = 12) -> DecodeProfile:
    """The kernels of one eager run of the fast decode of ``batch`` random feature maps (after two warm-up runs)."""
    decoder = FastDecoder(vae)
    pn = vae.patch_nums[-1]
    f_hat = torch.randn(batch, vae.Cvae, pn, pn, device=vae.post_quant_conv.weight.device)
    with cudnn_benchmark():
        for _ in range(2):
            decoder(f_hat)
        torch.cuda.synchronize()
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
            decoder(f_hat)
            torch.cuda.synchronize()
    n, kernels = _kernel_times(prof)
    return DecodeProfile(batch=batch, kernel_sum_ms=sum(k.total_us for k in kernels) / 1e3, kernels=n, top=kernels[:top])


def profile_decodes(batches: Sequence[int], device: torch.device) -> list[DecodeProfile]:
    """:func:`profile_decode` of the official VQVAE (random weights) at every batch size."""
    vae = build_vae(device)
    return [profile_decode(vae, B) for B in batches]


def format_profiles(profiles: Sequence[PassProfile], decodes: Sequence[DecodeProfile] = ()) -> str:
    lines = []
    for p in profiles:
        lines += [
            f"d{p.depth} batch {p.batch} stage {p.stage} ({p.tokens} tokens): graph replay {p.replay_ms:.3f} ms, bound "
            f"{p.bound_ms:.3f} ms, {p.kernels} kernels ({p.kernels / p.depth:.1f} per block) summing to "
            f"{p.kernel_sum_ms:.3f} ms",
            "| kernel | total µs | count |", "|---|---|---|",
        ]
        lines += [f"| `{k.name}` | {k.total_us:.1f} | {k.count} |" for k in p.top]
        lines.append("")
    for d in decodes:
        lines += [f"fast VQVAE decode, batch {d.batch}: {d.kernels} kernels summing to {d.kernel_sum_ms:.3f} ms",
                  "| kernel | total µs | count |", "|---|---|---|"]
        lines += [f"| `{k.name}` | {k.total_us:.1f} | {k.count} |" for k in d.top]
        lines.append("")
    return "\n".join(lines)


def write_profiles(profiles: Sequence[PassProfile], out: str | Path, decodes: Sequence[DecodeProfile] = ()) -> str:
    """Write ``profile.md`` and ``profile.json`` into the folder ``out`` (each atomically); returns the markdown.

    ``profile.json`` lists the pass profiles, then the decode profiles, each with its ``kind`` (``pass``/``decode``).
    """
    out = Path(out)
    text = format_profiles(profiles, decodes)
    entries = [dict(kind="pass", **asdict(p)) for p in profiles] + [dict(kind="decode", **asdict(d)) for d in decodes]
    atomic_write_text(out / "profile.md", text + "\n")
    atomic_write_text(out / "profile.json", json.dumps(entries, indent=1))
    return text
