#!/usr/bin/env python3
"""Issue 21: where every single-stage pass spends its time, by kernel class, against its bound.

    python3 scripts/device_pass_profile.py --out $OUT [--cells 30:32,30:1,16:1] [--calls 32,1 [--rows target,exact_g4]]

For each cell ``depth:batch`` (random bf16 weights) and every stage: the CUDA-graph replay of the stage's pass
against its bound (:func:`sdvar_lib.bench.profile.profile_pass`), and the kernels of one eager run of it grouped
into classes (matrix products, attention, the fused AdaLN / q-k norm kernels, the rest), each class with its share
of the eager kernel time and, for the products, the rate they reach (the pass's product FLOPs over their time).
With ``--calls``, whole calls of the bench's ``--rows`` at those batch sizes (default the target alone; SDVAR rows with
every proposal accepted; d16 -> d30 pair, graphed decode, top-k 900, top-p 0.96, cfg 1.5): the median call time, then
one call under ``torch.profiler`` with every GPU kernel (those inside CUDA graphs too) grouped the same way plus the
decode's classes, and the GPU's busy and idle time: what a call spends beyond its passes. ``--ab-upsample``: the target
timed with the f_hat update's Triton and PyTorch upsampling, A/B; ``--ab-tunable``: with cuBLAS's default GEMM
algorithms and with PyTorch's TunableOp, A/B; ``--ab-chunk-attention``: the SDVAR rows with the verify chunks'
masked and per-stage attention (``FastConfig.chunk_attention``), A/B; ``--ab-stage-attention``: every row with the
single stages' q/k norm kernel + SDPA and the fused stage attention (``FastConfig.stage_attention``), A/B.
``--chunks 30:1,30:32``: the verify chunks' passes (:data:`CHUNKS`) of those cells timed with both, and their logits
compared; ``--stages 30:1,16:8``: every single stage's pass (1-9) of those cells timed with SDPA and with the fused
stage attention, their logits compared. ``--sources 1``: which lines of the
library launch a call's PyTorch kernels (one eager call per row under the profiler, with stacks). ``--floor 2,32``: the
time of a dependent one-element kernel in a CUDA graph (what every launch costs at least), and each block product of d16
and d30 at those rows alone in a graph against its bytes at the HBM ceiling.
Writes ``pass_profile.json`` and ``pass_profile.md`` in ``--out`` (atomically). Without CUDA it exits with status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sdvar_lib.bench.bounds import VarSpec  # noqa: E402
from sdvar_lib.bench.profile import profile_pass  # noqa: E402
from sdvar_lib.bench.timing import measure_ceilings  # noqa: E402
from sdvar_lib.fast.run import chunk_span  # noqa: E402
from sdvar_lib.models.presets import build_vae, build_var  # noqa: E402
from sdvar_lib.util.atomic import atomic_write_text  # noqa: E402

CLASSES = (  # first match wins; names as torch.profiler reports them
    ("attention", ("fmha", "flash", "attention", "sdpa")),
    ("add_ln", ("_add_ln_modulate",)),
    ("qk_norm", ("_qk_norm",)),
    ("decode_gn", ("_gn_", "_add_bias_residual", "_upsample2x")),
    ("sampler", ("_sample_kernel",)),
    ("conv", ("conv", "implicit", "fprop", "wgrad", "dgrad")),
    ("gemm", ("gemm", "nvjet", "xmma", "cutlass", "sm90", "ampere", "splitk", "cublas")),
    ("copy", ("memcpy", "memset", "copy")),
)


def kernel_class(name: str) -> str:
    low = name.lower()
    for cls, keys in CLASSES:
        if any(k in low for k in keys):
            return cls
    return "other"


def _cells(text: str) -> list[tuple[int, int]]:
    out = []
    for part in filter(None, text.split(",")):
        depth, _, batch = part.partition(":")
        out.append((int(depth), int(batch)))
    return out


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def gemm_flops(spec: VarSpec, rows: int, length: int) -> float:
    C, hid = spec.width, spec.mlp_hidden
    return float(spec.depth * rows * length * 2 * (4 * C * C + 2 * C * hid) + rows * length * 2 * C * spec.vocab)


def _fresh_block(ctx, row, B: int, run, warmups: int = 2, timed: int = 7, after_warmups=None):
    """Fresh runs and graphs for ``row`` at batch ``B``, ``warmups`` untimed calls, ``after_warmups()`` if given, then
    ``timed`` calls timed: ``(the last untimed call's output, the timed calls' ms)``."""
    from sdvar_lib.bench.methods import prepare_runs
    from sdvar_lib.bench.timing import cuda_event_ms

    ctx.factory.release()
    prepare_runs(ctx, row, B, capture_chunks=False)
    out = None
    for _ in range(warmups):
        out = run()
    if after_warmups is not None:
        after_warmups()
    return out, [cuda_event_ms(run)[1] for _ in range(timed)]


def _medians(times: dict[str, list[float]]) -> dict[str, float]:
    return {k: sorted(v)[len(v) // 2] for k, v in times.items()}


def _ab_upsample(ctx, row, B: int, run, lines: list[str], data: dict) -> None:
    """Target-alone calls with the f_hat update's Triton upsampling (A) and PyTorch's (B), in blocks A B A B A of 7
    calls each, fresh runs and graphs for each block; the medians of all A and all B calls, and the outputs compared."""
    import sdvar_lib.fast.run as fast_run
    from sdvar_lib.models.quant import bicubic

    resolve = fast_run.resolve_upsample
    times: dict[str, list[float]] = {"triton": [], "torch": []}
    images = {}
    kinds = []
    for name in ("triton", "torch", "triton", "torch", "triton"):
        fast_run.resolve_upsample = resolve if name == "triton" else (lambda kernels, model: bicubic)
        out, block = _fresh_block(ctx, row, B, run)
        images.setdefault(name, torch.cat([out.f_hat_BChw.flatten(), out.images_B3HW.flatten()]).clone())
        kinds.append(sorted({r.upsample.__name__ for r in ctx.factory.runs()}))
        times[name] += block
    fast_run.resolve_upsample = resolve
    _fresh_block(ctx, row, B, run, warmups=1, timed=0)
    med = _medians(times)
    same = bool(torch.equal(images["triton"], images["torch"]))
    data.setdefault("ab_upsample", []).append(dict(batch=B, medians_ms=med, times_ms=times, same_images=same,
                                                   upsample=kinds))
    lines += [f"A/B upsampling, target alone, batch {B}: Triton {med['triton']:.2f} ms, PyTorch {med['torch']:.2f} ms "
              f"(x{med['torch'] / med['triton']:.3f}); same f_hat and images: {same}; runs used {kinds}", ""]
    print(lines[-2], flush=True)


def _ab_tunable(ctx, row, B: int, run, lines: list[str], data: dict) -> None:
    """Target-alone calls with cuBLAS's default algorithms (A) and with PyTorch's TunableOp (B: every GEMM shape tuned
    once, during the runs' eager warm-ups, then kept), in blocks A B A of 7 calls, fresh runs and graphs per block."""
    tunable = torch.cuda.tunable
    times: dict[str, list[float]] = {"default": [], "tunable": []}
    failures, tuned = 0, []

    def stop_tuning() -> None:
        tunable.tuning_enable(False)
        tuned.append(len(tunable.get_results()))

    for name in ("default", "tunable", "default"):
        tunable.enable(name == "tunable")
        if name == "tunable":
            # the tuned algorithms stay with this process: its results file (if PyTorch writes one) goes to a temporary folder
            tunable.set_filename(str(Path(tempfile.mkdtemp(prefix="tunableop_")) / "results.csv"))
            if hasattr(tunable, "write_file_on_exit"):
                tunable.write_file_on_exit(False)
            tunable.set_max_tuning_duration(30)
            tunable.tuning_enable(True)
        _, block = _fresh_block(ctx, row, B, run, after_warmups=stop_tuning if name == "tunable" else None)
        failures += sum(r.counters.capture_failures for r in ctx.factory.runs())
        times[name] += block
    tunable.enable(False)
    _fresh_block(ctx, row, B, run, warmups=1, timed=0)
    med = _medians(times)
    data.setdefault("ab_tunable", []).append(dict(batch=B, medians_ms=med, times_ms=times, tuned=tuned[0],
                                                  capture_failures=failures))
    lines += [f"A/B TunableOp, target alone, batch {B}: default {med['default']:.2f} ms, tuned {med['tunable']:.2f} ms "
              f"(x{med['default'] / med['tunable']:.3f}); {tuned[0]} tuned GEMMs; capture failures {failures}", ""]
    print(lines[-2], flush=True)


CHUNKS = ((0, 5), (5, 5), (0, 3), (3, 3), (6, 3), (7, 3), (8, 2))
"""``(start stage, stages)`` of the verify chunks that ``--chunks`` times: gamma 4's two, gamma 2's (with the bonus
stage), and the last two stages."""


def _replay_times(model, batch: int, option: str, modes: tuple[str, ...], chunks, repeats: int) -> dict[str, dict]:
    """``{mode: {(start stage, stages): ms}}``: each chunk's pass as a CUDA-graph replay (median of ``repeats``) in a
    run with ``FastConfig``'s ``option`` set to each mode (one run at a time)."""
    from sdvar_lib.bench.timing import median_event_ms
    from sdvar_lib.fast.config import FastConfig, PassRecord
    from sdvar_lib.fast.run import FastRun

    labels = torch.zeros(batch, dtype=torch.long, device=model.device)
    times: dict[str, dict] = {}
    for mode in modes:
        run = FastRun(model, batch, FastConfig(**{option: mode}))
        run.begin(labels)
        run.precapture(chunks)
        times[mode] = {}
        for c, n in chunks:
            rec = PassRecord(*chunk_span(model, c, n), graphed=True)
            times[mode][(c, n)] = median_event_ms(lambda rec=rec, run=run: run.replay_passes([rec]), repeats)
        del run
        torch.cuda.empty_cache()
    return times


def _pass_logits(run, position: int, l: int, gen: torch.Generator, forms) -> list[torch.Tensor]:
    """The fused pass of a chunk ``(position, l)`` of ``run`` (eager), once per form ``(mask, stage_ends, fused_stage)``
    of :meth:`FusedPass.step`, on one random input and one random cached prefix (drawn from ``gen``): their logits."""
    model, rows = run.model, 2 * run.batch_size
    x = torch.randn(rows, l, model.C, generator=gen, device=model.device).to(model.pos_1LC.dtype)
    prefix = torch.randn(run.cache.k_NBHLc[:, :, :, :position].shape, generator=gen, device=model.device)
    logits = []
    for mask, stage_ends, fused in forms:
        run.cache.k_NBHLc[:, :, :, :position].copy_(prefix)
        run.cache.v_NBHLc[:, :, :, :position].copy_(prefix.flip(-1))
        out = torch.empty(rows, l, model.V, device=model.device)
        run._fused.step(x, run.cache, position, mask, out, stage_ends, fused)
        logits.append(out)
    return logits


def time_chunk_attention(model, batch: int, lines: list[str], data: dict, repeats: int = 20) -> None:
    """Every chunk of :data:`CHUNKS` as a CUDA-graph replay of its pass, with ``chunk_attention`` ``"masked"`` and
    ``"per_stage"`` (two runs, one at a time), and the two passes' logits on the same random input and cache."""
    from sdvar_lib.fast.config import FastConfig
    from sdvar_lib.fast.fused import chunk_stage_ends, dropped_scores, per_stage_pays
    from sdvar_lib.fast.run import FastRun

    labels = torch.zeros(batch, dtype=torch.long, device=model.device)
    times = _replay_times(model, batch, "chunk_attention", ("masked", "per_stage"), CHUNKS, repeats)
    run = FastRun(model, batch, FastConfig(use_cuda_graphs=False, chunk_attention="masked"))
    run.begin(labels)
    gen = torch.Generator(device=model.device).manual_seed(0)
    rows_heads = 2 * batch * model.num_heads
    for c, n in CHUNKS:
        position, l = chunk_span(model, c, n)
        ends = chunk_stage_ends(run._stage_of_position, position, l)
        logits = _pass_logits(run, position, l, gen, [(run._chunk_attention(position, l).mask, None, False),
                                                        (None, ends, False)])
        diff = (logits[0] - logits[1]).abs().max().item()
        masked, per_stage = times["masked"][(c, n)], times["per_stage"][(c, n)]
        saved = dropped_scores(position, ends)
        row = dict(depth=model.depth, batch=batch, chunk=[c, n], tokens=l, masked_ms=masked, per_stage_ms=per_stage,
                   saved_scores=rows_heads * saved, auto_per_stage=per_stage_pays(rows_heads, position, ends),
                   max_logit_diff=diff)
        data.setdefault("chunk_attention", []).append(row)
        lines.append(f"| d{model.depth} | {batch} | {c}..{c + n - 1} | {l} | {masked:.3f} | {per_stage:.3f} | "
                     f"{masked / per_stage:.3f} | {rows_heads * saved / 2**20:.1f} | {row['auto_per_stage']} | {diff:.2e} |")
        print(lines[-1], flush=True)
    del run
    torch.cuda.empty_cache()


def _ab_option(ctx, row, name: str, B: int, run, option: str, modes: tuple[str, str], lines: list[str],
               data: dict) -> None:
    """Calls with ``FastConfig``'s ``option`` set to ``modes[0]`` (A) and ``modes[1]`` (B), in blocks A B A B A of 7
    calls each, fresh runs and graphs per block; the medians of all A and all B calls, and the outputs compared."""
    from dataclasses import replace

    config = ctx.factory.config
    a, b = modes
    times: dict[str, list[float]] = {a: [], b: []}
    images = {}
    for mode in (a, b, a, b, a):
        ctx.factory.config = replace(config, **{option: mode})
        out, block = _fresh_block(ctx, row, B, run)
        images.setdefault(mode, out.images_B3HW.float().clone())
        times[mode] += block
    ctx.factory.config = config
    _fresh_block(ctx, row, B, run, warmups=1, timed=0)
    med = _medians(times)
    diff = (images[a] - images[b]).abs().max().item()
    data.setdefault(f"ab_{option}", []).append(dict(row=name, batch=B, medians_ms=med, times_ms=times,
                                                    max_image_diff=diff))
    lines += [f"A/B {option}, {name}, batch {B}: {a} {med[a]:.2f} ms, {b} {med[b]:.2f} ms (x{med[a] / med[b]:.3f}); "
              f"largest image difference {diff:.2e}", ""]
    print(lines[-2], flush=True)


def time_stage_attention(model, batch: int, lines: list[str], data: dict, repeats: int = 20) -> None:
    """Every single stage's pass (1-9) as a CUDA-graph replay with ``stage_attention`` ``"sdpa"`` and ``"fused"``
    (two runs, one at a time), and the two passes' logits on the same random input and cache."""
    from sdvar_lib.fast.config import FastConfig
    from sdvar_lib.fast.fused import fused_stage_pays
    from sdvar_lib.fast.run import FastRun

    labels = torch.zeros(batch, dtype=torch.long, device=model.device)
    stages = [(s, 1) for s in range(1, model.num_stages)]
    times = _replay_times(model, batch, "stage_attention", ("sdpa", "fused"), stages, repeats)
    run = FastRun(model, batch, FastConfig(use_cuda_graphs=False))
    run.begin(labels)
    gen = torch.Generator(device=model.device).manual_seed(0)
    rows_heads = 2 * batch * model.num_heads
    for s, n in stages:
        position, l = chunk_span(model, s, n)
        logits = _pass_logits(run, position, l, gen, [(None, None, False), (None, None, True)])
        diff = (logits[0] - logits[1]).abs().max().item()
        agree = (logits[0].argmax(-1) == logits[1].argmax(-1)).float().mean().item()
        sdpa, fused_ms = times["sdpa"][(s, n)], times["fused"][(s, n)]
        scores = rows_heads * l * (position + l)
        row = dict(depth=model.depth, batch=batch, stage=s, tokens=l, sdpa_ms=sdpa, fused_ms=fused_ms, scores=scores,
                   auto_fused=fused_stage_pays(rows_heads, position, l), max_logit_diff=diff, argmax_agree=agree)
        data.setdefault("stage_attention", []).append(row)
        lines.append(f"| d{model.depth} | {batch} | {s} | {l} | {sdpa:.3f} | {fused_ms:.3f} | {sdpa / fused_ms:.3f} | "
                     f"{scores / 2**20:.2f} | {row['auto_fused']} | {diff:.2e} | {agree:.4f} |")
        print(lines[-1], flush=True)
    del run
    torch.cuda.empty_cache()


def _library_source(ev) -> str:
    """The innermost Python frame of the library around a profiled op (``sdvar_lib/...py(line): function``), else
    ``-``. With ``with_stack`` the profiler gives an op its Python stack (innermost frame first; on one H200 with
    torch 2.11 only so) and, at least on the CPU, records the Python calls as the op's parent events too."""
    for frame in getattr(ev, "stack", None) or ():
        if "sdvar_lib" in frame:
            return frame[frame.index("sdvar_lib"):]
    parent = ev.cpu_parent
    while parent is not None:
        if "sdvar_lib" in parent.name:
            return parent.name[parent.name.index("sdvar_lib"):]
        parent = parent.cpu_parent
    return "-"


def kernel_sources(batches: list[int], rows: tuple[str, ...], out: Path, lines: list[str], data: dict,
                   device: torch.device | None = None, pair=None, sampling=None, top: int = 30) -> None:
    """Which lines of the library launch a call's PyTorch kernels: one call of each row at each batch size with the
    fast path's kernels run eagerly (``use_cuda_graphs=False``: the kernels a graph replays, each launched from
    Python), under ``torch.profiler`` with stacks; every PyTorch op that launched kernels counted against its innermost
    ``sdvar_lib`` frame (launches and GPU time; on a CPU, ops and CPU time). Triton kernels, launched outside PyTorch's
    ops, are left out (the kernel tables of ``--calls`` count them)."""
    from sdvar_lib.bench.config import BenchConfig
    from sdvar_lib.bench.methods import PairContext, bench_row, build_pair_bf16, in_call_context, method_call
    from sdvar_lib.bench.scenarios import Scenario, ScenarioPolicy
    from sdvar_lib.fast.config import FastConfig
    from sdvar_lib.fast.factory import FastRunFactory

    device = device or torch.device("cuda")
    cuda = device.type == "cuda"
    pair = pair or build_pair_bf16(16, 30, device)
    ctx = PairContext.for_pair("d16->d30", pair, FastRunFactory(FastConfig(use_cuda_graphs=False)))
    sampling = sampling or BenchConfig(top_k=900, top_p=0.96, out="unused").sampling
    every_accepted = Scenario("all", ScenarioPolicy.all_accepted(pair.target.num_stages))
    activities = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if cuda else [])
    data["sources"] = []
    for B, name in ((B, name) for B in batches for name in rows):
        row = bench_row(name)
        call = method_call(ctx, row, None if name == "target" else every_accepted, B, sampling)
        run = lambda call=call: in_call_context(ctx, False, lambda: call(3))  # noqa: E731
        for _ in range(2):
            run()
        if cuda:
            torch.cuda.synchronize()
        with torch.profiler.profile(activities=activities, with_stack=True) as prof:
            run()
            if cuda:
                torch.cuda.synchronize()
        by_source: dict[tuple[str, str], list] = {}
        for ev in prof.events():
            if ev.device_type != torch.autograd.DeviceType.CPU or not ev.name.startswith("aten::"):
                continue
            launches = len(ev.kernels) if cuda else int(not any(c.name.startswith("aten::") for c in ev.cpu_children))
            if not launches:
                continue  # on a GPU: an op that launched nothing itself; on a CPU: an op made of other ops
            entry = by_source.setdefault((_library_source(ev), ev.name), [0, 0.0])
            entry[0] += launches
            entry[1] += (sum(k.duration for k in ev.kernels) if cuda else ev.self_cpu_time_total) / 1e3
        ranked = sorted(by_source.items(), key=lambda kv: -kv[1][0])
        total = sum(n for n, _ in by_source.values())
        data["sources"].append(dict(row=name, batch=B, launches=total, sources=[
            dict(source=src, op=op, launches=n, ms=ms) for (src, op), (n, ms) in ranked[:100]]))
        what = "kernel launches" if cuda else "ops (CPU)"
        lines += [f"## {name} call, batch {B}: {total} {what} by the PyTorch ops of the library that made them", "",
                  "| source | op | launches | ms |", "|---|---|---|---|"]
        lines += [f"| `{src}` | `{op}` | {n} | {ms:.3f} |" for (src, op), (n, ms) in ranked[:top]]
        lines.append("")
        atomic_write_text(out / "pass_profile.json", json.dumps(data, indent=1))
        atomic_write_text(out / "pass_profile.md", "\n".join(lines) + "\n")
        print("\n".join(lines[-(min(top, len(ranked)) + 5):]), flush=True)
    ctx.factory.release()


def profile_calls(batches: list[int], out: Path, lines: list[str], data: dict, ab_upsample: bool = False,
                  rows: tuple[str, ...] = ("target",), ab_tunable: bool = False, ab_chunk: bool = False,
                  ab_stage: bool = False) -> None:
    from sdvar_lib.bench.components import call_timeline
    from sdvar_lib.bench.config import BenchConfig
    from sdvar_lib.bench.methods import (
        PairContext,
        bench_row,
        build_pair_bf16,
        in_call_context,
        method_call,
        prepare_rounds,
        prepare_runs,
    )
    from sdvar_lib.bench.scenarios import Scenario, ScenarioPolicy
    from sdvar_lib.bench.timing import cuda_event_ms
    from sdvar_lib.fast.config import FastConfig
    from sdvar_lib.fast.factory import FastRunFactory
    from sdvar_lib.fast.graphs import GraphedDecode

    device = torch.device("cuda")
    pair = build_pair_bf16(16, 30, device)
    ctx = PairContext.for_pair("d16->d30", pair, FastRunFactory(FastConfig()))
    ctx.decoder = GraphedDecode(pair.vae, fast=True)
    sampling = BenchConfig(top_k=900, top_p=0.96, out="unused").sampling
    data["calls"] = []
    every_accepted = Scenario("all", ScenarioPolicy.all_accepted(pair.target.num_stages))
    for B, name in ((B, name) for B in batches for name in rows):
        row = bench_row(name)
        scenario = None if name == "target" else every_accepted
        prepare_runs(ctx, row, B, capture_chunks=False)
        if scenario is not None:
            prepare_rounds(ctx, row.for_call(scenario), B, sampling)
        call = method_call(ctx, row, scenario, B, sampling)
        run = lambda call=call: in_call_context(ctx, True, lambda: call(3))  # noqa: E731
        for _ in range(3):
            run()
        if ab_upsample and name == "target":
            _ab_upsample(ctx, row, B, run, lines, data)
        if ab_tunable and name == "target":
            _ab_tunable(ctx, row, B, run, lines, data)
        if ab_chunk and name != "target":
            _ab_option(ctx, row, name, B, run, "chunk_attention", ("masked", "per_stage"), lines, data)
        if ab_stage:
            _ab_option(ctx, row, name, B, run, "stage_attention", ("sdpa", "fused"), lines, data)
        times = sorted(cuda_event_ms(run)[1] for _ in range(7))
        timeline = call_timeline(run)
        torch.cuda.synchronize()
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
            run()
            torch.cuda.synchronize()
        classes: dict[str, float] = {}
        names: dict[str, list] = {}
        for ev in prof.events():
            if ev.device_type != torch.autograd.DeviceType.CUDA:
                continue
            cls = kernel_class(ev.name)
            us = ev.time_range.elapsed_us()
            classes[cls] = classes.get(cls, 0.0) + us / 1e3
            entry = names.setdefault(ev.name[:60], [cls, 0.0, 0])
            entry[1] += us / 1e3
            entry[2] += 1
        top = sorted(names.items(), key=lambda x: -x[1][1])
        data["calls"].append(dict(row=name, batch=B, median_ms=times[len(times) // 2], times_ms=times,
                                  timeline=asdict(timeline), classes=classes,
                                  kernels=[dict(name=n, cls=c, ms=ms, count=k) for n, (c, ms, k) in top[:60]]))
        lines += [f"## {name} call{'' if scenario is None else ', every proposal accepted'}, batch {B}", "",
                  f"median {times[len(times) // 2]:.2f} ms (7 calls: {', '.join(f'{t:.2f}' for t in times)}); one call "
                  f"under the profiler: wall {timeline.wall_ms:.2f} ms, GPU busy {timeline.gpu_busy_ms:.2f} ms, lead "
                  f"{timeline.lead_ms:.2f} ms, idle between {timeline.idle_ms:.2f} ms, largest gaps "
                  + ", ".join(f"{g:.2f} at {s:.2f}" for s, g in timeline.gaps), "",
                  "kernels by class (ms): " + ", ".join(f"{c} {ms:.2f}" for c, ms in sorted(classes.items(),
                                                                                          key=lambda x: -x[1])),
                  "", "| kernel | class | ms | count |", "|---|---|---|---|"]
        lines += [f"| `{n}` | {c} | {ms:.3f} | {k} |" for n, (c, ms, k) in top[:25]]
        lines.append("")
        atomic_write_text(out / "pass_profile.json", json.dumps(data, indent=1))
        atomic_write_text(out / "pass_profile.md", "\n".join(lines) + "\n")
        print("\n".join(lines[-32:]), flush=True)


def _graph_ms(fn, launches: int, repeats: int = 20) -> float:
    """Median ms of one replay of a CUDA graph that calls ``fn`` ``launches`` times in a row, over ``launches``."""
    from sdvar_lib.bench.timing import median_event_ms
    from sdvar_lib.fast.graphs import capture_graph

    def chain() -> None:
        for _ in range(launches):
            fn()

    graph = capture_graph(chain, torch.device("cuda"))
    return float(median_event_ms(graph.run, repeats)) / launches


def launch_floor(depths: list[int], rows: list[int], ceilings, lines: list[str], data: dict,
                 launches: int = 64) -> None:
    """What a kernel costs at least inside a CUDA graph on this GPU, and what the blocks' products reach at few rows.

    ``chain``: ``launches`` dependent one-element additions in one graph (each waits for the one before, as a pass's
    kernels do): the time per kernel that no fusion inside a kernel removes. Products: each linear layer of a block
    of every ``depths`` model (bf16, bias, ``rows`` rows: 2 is a batch-1 stage-0 pass with guidance), ``launches``
    times in a graph, against its bytes (weights, bias, input and output) at the HBM ceiling."""
    device = torch.device("cuda")
    one = torch.zeros(1, device=device)
    chain_us = _graph_ms(lambda: one.add_(1.0), launches) * 1e3
    lines += ["## launch floor and few-row products (CUDA-graph replays)", "",
              f"dependent one-element kernels in a graph: {chain_us:.2f} us each ({launches} in a row)", "",
              "| model | layer | rows | in x out | us per product | bytes at the HBM ceiling (us) | x ceiling |",
              "|---|---|---|---|---|---|---|"]
    floor = dict(chain_us=chain_us, launches=launches, products=[])
    for depth in depths:
        C, hid = VarSpec.official(depth).width, VarSpec.official(depth).mlp_hidden
        for name, k, n in (("qkv", C, 3 * C), ("proj", C, C), ("fc1", C, hid), ("fc2", hid, C)):
            weight = torch.randn(n, k, device=device, dtype=torch.bfloat16)
            bias = torch.randn(n, device=device, dtype=torch.bfloat16)
            for r in rows:
                x = torch.randn(r, k, device=device, dtype=torch.bfloat16)
                out = torch.empty(r, n, device=device, dtype=torch.bfloat16)
                us = _graph_ms(lambda b=bias, x=x, w=weight, o=out: torch.addmm(b, x, w.t(), out=o), launches) * 1e3
                ideal = 2 * (k * n + n + r * k + r * n) / ceilings.hbm_bytes_per_s * 1e6
                lines.append(f"| d{depth} | {name} | {r} | {k} x {n} | {us:.2f} | {ideal:.2f} | {us / ideal:.2f} |")
                floor["products"].append(dict(depth=depth, layer=name, rows=r, k=k, n=n, us=us, ideal_us=ideal))
    data["launch_floor"] = floor
    lines.append("")
    print("\n".join(lines[-(3 + len(floor["products"]) + 2):]), flush=True)


@torch.no_grad()
def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    p.add_argument("--cells", type=_cells, default=_cells("30:32,30:1,16:1"))
    p.add_argument("--calls", type=_ints, default=[],
                   help="batch sizes of whole target-alone calls to profile (after the cells)")
    p.add_argument("--rows", type=lambda t: tuple(x for x in t.split(",") if x), default=("target",),
                   help="with --calls: the bench rows to profile (default target; SDVAR rows with every proposal "
                        "accepted, e.g. target,exact_g4)")
    p.add_argument("--ab-tunable", action="store_true",
                   help="with --calls: time the target with cuBLAS's default GEMM algorithms and with TunableOp's (A/B)")
    p.add_argument("--ab-upsample", action="store_true",
                   help="with --calls: time the calls with the Triton and with PyTorch's f_hat upsampling (A/B)")
    p.add_argument("--ab-chunk-attention", action="store_true",
                   help="with --calls: time the SDVAR rows with masked and with per-stage verify attention (A/B)")
    p.add_argument("--ab-stage-attention", action="store_true",
                   help="with --calls: time the rows with the single stages' SDPA and fused attention (A/B)")
    p.add_argument("--stages", type=_cells, default=[],
                   help="cells depth:batch whose single-stage passes are timed with SDPA and fused attention")
    p.add_argument("--chunks", type=_cells, default=[],
                   help="cells depth:batch whose verify chunks' passes are timed with masked and per-stage attention")
    p.add_argument("--sources", type=_ints, default=[],
                   help="batch sizes at which one eager call of each --rows row is profiled with stacks: which "
                        "library lines launch its PyTorch kernels")
    p.add_argument("--floor", type=_ints, default=[],
                   help="rows (e.g. 2,32,512) at which each block product of d16 and d30 is timed alone in a graph, "
                        "after the time of a dependent one-element kernel in a graph (the launch floor)")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("device_pass_profile: needs a CUDA GPU", file=sys.stderr)
        return 2
    device = torch.device("cuda")
    ceilings = measure_ceilings(device)
    vae = build_vae(device)
    data = {"ceilings": asdict(ceilings), "gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "cells": []}
    lines = [f"{data['gpu']}, torch {torch.__version__}; ceilings {ceilings.hbm_bytes_per_s / 1e12:.2f} TB/s, "
             f"{ceilings.bf16_flops_per_s / 1e12:.0f} TFLOP/s", ""]
    if args.floor:
        launch_floor([16, 30], args.floor, ceilings, lines, data)
        atomic_write_text(Path(args.out) / "pass_profile.json", json.dumps(data, indent=1))
        atomic_write_text(Path(args.out) / "pass_profile.md", "\n".join(lines) + "\n")
    models = {}
    for depth, batch in args.cells:
        if depth not in models:
            models.clear()
            torch.cuda.empty_cache()
            models[depth] = build_var(vae, depth, device).to(torch.bfloat16).eval()
        model = models[depth]
        spec = VarSpec.from_model(model)
        lines += [f"## d{depth} batch {batch}", "",
                  "| stage | tokens | replay ms | bound ms | x bound | kernels | eager sum ms | gemm ms (TFLOP/s) | "
                  "attention ms | add_ln ms | qk_norm ms | other ms | top other |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        totals: dict[str, float] = {}
        replay_total = bound_total = 0.0
        for stage in range(model.num_stages):
            prof = profile_pass(model, batch, stage, ceilings, top=10_000)
            torch.cuda.empty_cache()
            classes: dict[str, float] = {}
            other: dict[str, float] = {}
            for k in prof.top:
                cls = kernel_class(k.name)
                classes[cls] = classes.get(cls, 0.0) + k.total_us / 1e3
                if cls == "other":
                    other[k.name] = other.get(k.name, 0.0) + k.total_us / 1e3
            for cls, ms in classes.items():
                totals[cls] = totals.get(cls, 0.0) + ms
            replay_total += prof.replay_ms
            bound_total += prof.bound_ms
            _, length = chunk_span(model, stage, 1)
            rate = gemm_flops(spec, 2 * batch, length) / (classes.get("gemm", 0.0) / 1e3 or float("inf")) / 1e12
            top_other = ", ".join(f"`{n[:36]}` {ms:.3f}" for n, ms in sorted(other.items(), key=lambda x: -x[1])[:3])
            lines.append(f"| {stage} | {length} | {prof.replay_ms:.3f} | {prof.bound_ms:.3f} | "
                         f"{prof.replay_ms / prof.bound_ms:.2f} | {prof.kernels} | {prof.kernel_sum_ms:.3f} | "
                         f"{classes.get('gemm', 0):.3f} ({rate:.0f}) | {classes.get('attention', 0):.3f} | "
                         f"{classes.get('add_ln', 0):.3f} | {classes.get('qk_norm', 0):.3f} | "
                         f"{classes.get('other', 0):.3f} | {top_other} |")
            data["cells"].append(dict(depth=depth, batch=batch, stage=stage, tokens=length, replay_ms=prof.replay_ms,
                                      bound_ms=prof.bound_ms, kernels=prof.kernels, kernel_sum_ms=prof.kernel_sum_ms,
                                      classes=classes, top=[asdict(k) for k in prof.top[:40]]))
            atomic_write_text(Path(args.out) / "pass_profile.json", json.dumps(data, indent=1))
        lines += ["", f"d{depth} batch {batch}, all stages: replay {replay_total:.2f} ms, bound {bound_total:.2f} ms "
                  f"({replay_total / bound_total:.2f}x); eager kernels by class: "
                  + ", ".join(f"{c} {ms:.2f} ms" for c, ms in sorted(totals.items(), key=lambda x: -x[1])), ""]
        atomic_write_text(Path(args.out) / "pass_profile.md", "\n".join(lines) + "\n")
        print("\n".join(lines[-(model.num_stages + 6):]), flush=True)
    chunk_header = ["## chunk passes, masked and per-stage attention (graph replays, ms)", "",
                    "| model | batch | stages | tokens | masked | per stage | masked / per stage | scores saved (2^20) | "
                    "auto takes per stage | largest logit difference |", "|---|---|---|---|---|---|---|---|---|---|"]
    stage_header = ["## single-stage passes, SDPA and fused attention (graph replays, ms)", "",
                    "| model | batch | stage | tokens | sdpa | fused | sdpa / fused | scores (2^20) | auto takes fused | "
                    "largest logit difference | argmax agreement |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for cells, timer, header in ((args.chunks, time_chunk_attention, chunk_header),
                                 (args.stages, time_stage_attention, stage_header)):
        lines += header if cells else []
        for depth, batch in cells:
            if depth not in models:
                models.clear()
                torch.cuda.empty_cache()
                models[depth] = build_var(vae, depth, device).to(torch.bfloat16).eval()
            timer(models[depth], batch, lines, data)
            atomic_write_text(Path(args.out) / "pass_profile.json", json.dumps(data, indent=1))
            atomic_write_text(Path(args.out) / "pass_profile.md", "\n".join(lines) + "\n")
    lines.append("")
    models.clear()
    torch.cuda.empty_cache()
    if args.calls:
        profile_calls(args.calls, Path(args.out), lines, data, args.ab_upsample, args.rows, args.ab_tunable,
                      args.ab_chunk_attention, args.ab_stage_attention)
    if args.sources:
        kernel_sources(args.sources, args.rows, Path(args.out), lines, data)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
