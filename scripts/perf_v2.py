#!/usr/bin/env python
"""Performance v2 of the fast path on one GPU: eager loop, first fast path, fused fast path, with whole-call bounds.

    python scripts/perf_v2.py --out OUT                       # d16 -> d30, batches 1,8,32 (one H200: ~4 min)
    python scripts/perf_v2.py --tiny --device cpu --out OUT   # smoke test of this script on the tiny pair

Official-size random bf16 weights (the VQVAE stays float32), top-k 900, top-p 0.96, cfg 1.5, the
VQVAE decode inside every timed call. Per batch size it times, in one run:

- ``eager``: ``target.generate`` under bf16 autocast (the reference-equivalent loop);
- ``fast v1``: the fast path before this work (``FastConfig.first_version()``: PyTorch block kernels
  and sampling, CUDA graphs) with the graphed autocast decode;
- ``fast v2``: the default fast path (Triton block kernels, fused sampler) with the graphed fast decode;
- SDVAR (fast v2) with every proposal accepted (the benchmark's ``all-accepted`` scenario).

Every row has the passes-only time (its passes' graphs replayed back to back), the passes bound
(the benchmark's), and the whole-call bound (passes + sampling + decode, :mod:`sdvar_lib.fast.costs`).
Also: the VQVAE decode alone (graphed: autocast reference vs fast) with its bound, the single-stage
pass times of draft and target (their ratio), the one-off seconds (kernel checks, Triton compiles,
graph captures) and a kernel profile of a fused pass. Writes ``perf_v2.json`` and ``perf_v2.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from sdvar_lib import SDVAR  # noqa: E402
from sdvar_lib.bench.bounds import Ceilings, VarSpec, passes_bound_s  # noqa: E402
from sdvar_lib.bench.scenarios import ScenarioPolicy  # noqa: E402
from sdvar_lib.bench.timing import cuda_event_ms, measure_ceilings, percentile  # noqa: E402
from sdvar_lib.fast.config import FastConfig, PassRecord  # noqa: E402
from sdvar_lib.fast.costs import decode_cost, one_off_seconds, pass_time_ratio, whole_call_bound  # noqa: E402
from sdvar_lib.fast.factory import FastRunFactory  # noqa: E402
from sdvar_lib.fast.graphs import GraphedDecode  # noqa: E402
from sdvar_lib.fast.run import FastRun, chunk_span  # noqa: E402
from sdvar_lib.models.presets import build_tiny, build_vae, build_var  # noqa: E402
from sdvar_lib.models.sampling import SamplingConfig  # noqa: E402
from sdvar_lib.sdvar.handoff import baseline  # noqa: E402
from sdvar_lib.util.checks import check_int_sequence  # noqa: E402

TOP_K, TOP_P, CFG = 900, 0.96, 1.5


@dataclass
class Row:
    batch: int
    name: str
    median_ms: float
    p10_ms: float
    p90_ms: float
    calls: int
    target_passes: int = 0
    draft_passes: int = 0
    passes_only_ms: float | None = None
    passes_bound_ms: float | None = None
    whole_bound_ms: float | None = None
    peak_gib: float | None = None
    first_call_s: float | None = None
    vs_eager: float | None = None
    vs_target_v2: float | None = None


@dataclass
class Report:
    device: str
    torch: str
    ceilings: dict
    rows: list[Row] = field(default_factory=list)
    decode: list[dict] = field(default_factory=list)
    sampling: list[dict] = field(default_factory=list)
    pass_times: dict = field(default_factory=dict)
    one_off: dict = field(default_factory=dict)
    profiles: list[dict] = field(default_factory=list)
    cpu_profile: list[dict] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


# ---- timing -------------------------------------------------------------------------------------
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_ms(fn: Callable[[], object], device: torch.device) -> tuple[object, float]:
    """CUDA events on the GPU (the benchmark's own timer), a host clock on the CPU smoke test."""
    if device.type == "cuda":
        return cuda_event_ms(fn)
    t0 = time.perf_counter()
    out = fn()
    return out, (time.perf_counter() - t0) * 1e3


def time_calls(call: Callable[[int], object], device: torch.device, warmup: int,
               repeats: int) -> tuple[list[float], float, object]:
    """``(ms of each timed call, wall seconds of the first call, last output)``; seeds 1000 + i."""
    t0 = time.perf_counter()
    out = call(999)
    _sync(device)
    first_s = time.perf_counter() - t0
    for i in range(warmup):
        call(998 - i)
    _sync(device)
    times = []
    for i in range(repeats):
        out, ms = timed_ms(lambda i=i: call(1000 + i), device)
        times.append(ms)
    return times, first_s, out


def median_ms(fn: Callable[[], object], device: torch.device, repeats: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    _sync(device)
    return statistics.median(timed_ms(fn, device)[1] for _ in range(repeats))


def autocast(device: torch.device):
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def peak_gib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def reset_peak(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def ceilings_on(device: torch.device) -> Ceilings:
    if device.type != "cuda":
        return Ceilings(hbm_bytes_per_s=1e11, bf16_flops_per_s=1e12)  # placeholders for the CPU smoke test
    return measure_ceilings(device, copy_gib=4.0)


# ---- pieces -------------------------------------------------------------------------------------
def call_bounds(runs: list[FastRun], vae, batch: int, sampled: list[int], ceilings: Ceilings) -> tuple[float, float]:
    """Passes bound and whole-call bound (ms) of the latest call of ``runs``."""
    passes_s = sum(passes_bound_s(VarSpec.from_model(r.model), 2 * batch, r.pass_log, ceilings) for r in runs)
    whole = whole_call_bound(passes_s, vae, runs[0].model.V, batch, sampled, ceilings.hbm_bytes_per_s,
                             ceilings.bf16_flops_per_s)
    return passes_s * 1e3, whole.total_s * 1e3


def passes_only_ms(runs: list[FastRun], device: torch.device, repeats: int = 3) -> float:
    logs = [(r, list(r.pass_log)) for r in runs]

    def replay() -> None:
        for run, log in logs:
            run.replay_passes(log)

    return median_ms(replay, device, repeats, warmup=1)


def stage_lengths(model, tokens_per_stage) -> list[int]:
    return [t.shape[1] for t in tokens_per_stage]


def single_stage_times(model, batch: int, config: FastConfig, device: torch.device, repeats: int) -> dict:
    run = FastRun(model, batch, config)
    run.begin(torch.zeros(batch, dtype=torch.long, device=device))
    S = model.num_stages
    run.precapture([(s, 1) for s in range(S)])
    out = {}
    for s in range(S):
        position, length = chunk_span(model, s, 1)
        rec = PassRecord(position, length, graphed=run.use_cuda_graphs)
        out[(s, 1)] = median_ms(lambda rec=rec: run.replay_passes([rec]), device, repeats, warmup=1)
    return out


def _kernel_table(prof, top: int) -> tuple[int, float, list[dict]]:
    kernels: dict[str, list[float]] = {}
    n = 0
    for ev in prof.events():
        if ev.device_type != torch.autograd.DeviceType.CUDA:
            continue
        n += 1
        k = kernels.setdefault(ev.name[:90], [0.0, 0])
        k[0] += ev.time_range.elapsed_us()
        k[1] += 1
    ranked = sorted(kernels.items(), key=lambda kv: -kv[1][0])
    return n, sum(v[0] for v in kernels.values()) / 1e3, [{"name": k, "us": v[0], "count": v[1]} for k, v in ranked[:top]]


def profile_decode(vae, batch: int, device: torch.device, top: int = 12) -> dict:
    """Kernels of the fast VQVAE decode (eager, so that the profiler sees each kernel)."""
    from sdvar_lib.fast.decode import FastDecoder, cudnn_benchmark

    decoder = FastDecoder(vae)
    f_hat = torch.randn(batch, vae.Cvae, vae.patch_nums[-1], vae.patch_nums[-1], device=device)
    with cudnn_benchmark():
        for _ in range(2):
            decoder(f_hat)
        _sync(device)
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
            decoder(f_hat)
            _sync(device)
    n, total_ms, ranked = _kernel_table(prof, top)
    return {"what": "fast decode", "batch": batch, "kernels": n, "kernel_sum_ms": total_ms, "top": ranked}


def profile_call_cpu(call: Callable[[], object], device: torch.device, top: int = 15) -> list[dict]:
    """Host time of one call by operator (self CPU time): what the host spends between graph replays."""
    call()
    _sync(device)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        call()
        _sync(device)
    rows = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)[:top]
    return [{"name": e.key[:80], "self_cpu_ms": e.self_cpu_time_total / 1e3, "count": e.count} for e in rows]


def profile_pass(model, batch: int, stage: int, device: torch.device, top: int = 12) -> dict:
    """Kernels of one fused pass (no graph, so that the profiler sees each kernel)."""
    run = FastRun(model, batch, FastConfig(use_cuda_graphs=False))
    run.begin(torch.zeros(batch, dtype=torch.long, device=device))
    position, length = chunk_span(model, stage, 1)
    x = torch.randn(2 * batch, length, model.C, device=device, dtype=run.dtype)
    for _ in range(2):
        run.cache.set_length(position)
        run.forward(x)
    _sync(device)
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    run.cache.set_length(position)
    with torch.profiler.profile(activities=activities) as prof:
        run.forward(x)
        _sync(device)
    n, total_ms, ranked = _kernel_table(prof, top)
    return {"what": f"fused pass d{model.depth} stage {stage} ({length} tokens)", "batch": batch, "kernels": n,
            "kernels_per_block": n / model.depth, "kernel_sum_ms": total_ms, "top": ranked}


# ---- the run ------------------------------------------------------------------------------------
def build(args, device: torch.device):
    if args.tiny:
        vae, target = build_tiny(seed=0, device=device)
        _, draft = build_tiny(seed=1, depth=1, vae=vae, device=device)
        return vae, draft, target
    torch.manual_seed(0)
    vae = build_vae(device)
    draft = build_var(vae, args.draft_depth, device).to(torch.bfloat16).eval()
    target = build_var(vae, args.target_depth, device).to(torch.bfloat16).eval()
    return vae, draft, target


def run(args) -> Report:
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("perf_v2: CUDA is not available (use --tiny --device cpu for a smoke test)")
    ceilings = ceilings_on(device)
    report = Report(device=torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                    torch=torch.__version__, ceilings=asdict(ceilings))
    vae, draft, target = build(args, device)
    S, top_k = target.num_stages, min(TOP_K, target.V)
    top_p = TOP_P

    def section(name: str, fn: Callable[[], None]) -> None:
        t0 = time.perf_counter()
        try:
            fn()
        except Exception:  # keep the other sections' numbers
            report.errors.append(f"{name}: {traceback.format_exc()}")
            print(f"!! {name} failed:\n{traceback.format_exc()}", flush=True)
        reset_peak(device)
        print(f"-- {name}: {time.perf_counter() - t0:.1f} s", flush=True)

    # decode alone
    decodes = {"v1": GraphedDecode(vae), "v2": GraphedDecode(vae, fast=True)}

    def decode_section() -> None:
        for B in args.batches:
            pn = vae.patch_nums[-1]
            f_hat = torch.randn(B, vae.Cvae, pn, pn, device=device)
            row = {"batch": B}
            images = {}
            for name, graphed in decodes.items():
                with graphed.installed(), autocast(device), torch.no_grad():
                    row[f"{name}_ms"] = median_ms(lambda f_hat=f_hat: target.images_from_f_hat(f_hat), device,
                                                  args.repeats)
                    images[name] = target.images_from_f_hat(f_hat)
            cost = decode_cost(vae, B)
            row["bound_ms"] = (cost.bytes / ceilings.hbm_bytes_per_s + cost.flops / ceilings.bf16_flops_per_s) * 1e3
            row["gflop"], row["gbytes"] = cost.flops / 1e9, cost.bytes / 1e9
            row["v2_vs_v1_rel_err"] = float((images["v2"] - images["v1"]).norm() / images["v1"].norm())
            report.decode.append(row)
            print(f"decode B={B}: {row}", flush=True)

    section("decode", decode_section)

    # single-stage passes: draft / target, first and fused versions
    def pass_section() -> None:
        for label, config in (("v1", FastConfig.first_version()), ("v2", FastConfig())):
            d = single_stage_times(draft, 1, config, device, args.repeats)
            t = single_stage_times(target, 1, config, device, args.repeats)
            report.pass_times[label] = {"draft_ms": [d[(s, 1)] for s in range(S)], "target_ms": [t[(s, 1)] for s in range(S)],
                                        "draft_sum_ms": sum(d.values()), "target_sum_ms": sum(t.values()),
                                        "ratio": pass_time_ratio(d, t)}
            print(f"single-stage passes {label}: {report.pass_times[label]}", flush=True)

    section("single-stage passes", pass_section)

    def sampling_section() -> None:
        from sdvar_lib.fast.sampling import FusedSampler, resolve_sampler
        from sdvar_lib.models.run import ModelRun

        if resolve_sampler("auto", device) != "fused":
            print("sampling: no fused sampler on this device", flush=True)
            return
        sampling = SamplingConfig(cfg=CFG, top_k=top_k, top_p=top_p)
        fused, si = FusedSampler(target), S - 1
        l = target.patch_nums[si] ** 2
        for B in args.batches:
            logits = torch.randn(2 * B, l, target.V, device=device) * 3
            rng = torch.Generator(device=device).manual_seed(0)
            plain = ModelRun(target, None, None, None)
            torch_ms = median_ms(lambda p=plain, x=logits, g=rng: p.sample_stage(x, si, sampling, g), device, args.repeats)
            fused_ms = median_ms(lambda x=logits, g=rng: fused(x, si, sampling, g), device, args.repeats)
            a = plain.sample_stage(logits, si, sampling, torch.Generator(device=device).manual_seed(1)).idx_Bl
            b = fused(logits, si, sampling, torch.Generator(device=device).manual_seed(1)).idx_Bl
            report.sampling.append({"batch": B, "stage": si, "torch_ms": torch_ms, "fused_ms": fused_ms,
                                    "agree": float((a == b).float().mean())})
            print(f"sampling B={B} stage {si}: {report.sampling[-1]}", flush=True)

    section("sampling", sampling_section)

    factories = {"v1": FastRunFactory(FastConfig.first_version()), "v2": FastRunFactory(FastConfig())}
    sds = {k: SDVAR(draft, target, run_factory=f) for k, f in factories.items()}

    def add_row(B: int, name: str, call: Callable[[int], object], repeats: int, runs_of=None, decode=None,
                graphed=None) -> Row:
        reset_peak(device)
        with contextlib.ExitStack() as stack:
            if graphed is not None:
                stack.enter_context(graphed.installed())
            stack.enter_context(autocast(device))
            times, first_s, out = time_calls(call, device, args.warmup, repeats)
            row = Row(batch=B, name=name, median_ms=statistics.median(times), p10_ms=percentile(times, 10),
                      p90_ms=percentile(times, 90), calls=repeats, peak_gib=peak_gib(device), first_call_s=first_s)
            stats = getattr(out, "stats", None)
            if stats is not None:
                row.target_passes, row.draft_passes = stats.target_passes, stats.draft_passes
            else:
                row.target_passes = S
            if runs_of is not None:
                runs = runs_of()
                row.passes_only_ms = passes_only_ms(runs, device)
                row.passes_bound_ms, row.whole_bound_ms = call_bounds(runs, vae, B, stage_lengths(target, out.tokens_per_stage),
                                                                      ceilings)
            else:
                spec = VarSpec.from_model(target)
                recs, cur = [], 0
                for pn in target.patch_nums:
                    recs.append(PassRecord(cur, pn * pn, False))
                    cur += pn * pn
                passes_s = passes_bound_s(spec, 2 * B, recs, ceilings)
                row.passes_bound_ms = passes_s * 1e3
                row.whole_bound_ms = whole_call_bound(passes_s, vae, target.V, B, [pn * pn for pn in target.patch_nums],
                                                      ceilings.hbm_bytes_per_s, ceilings.bf16_flops_per_s).total_s * 1e3
        report.rows.append(row)
        print(f"{name} B={B}: {row.median_ms:.2f} ms (first call {first_s:.2f} s), passes-only {row.passes_only_ms}, "
              f"passes bound {row.passes_bound_ms:.2f}, whole-call bound {row.whole_bound_ms:.2f}, peak {row.peak_gib}",
              flush=True)
        return row

    for B in args.batches:
        def batch_section(B=B) -> None:
            eager_repeats = max(3, args.repeats // 2)
            add_row(B, "eager", lambda seed: target.generate(B, None, seed, SamplingConfig(CFG, top_k, top_p)), eager_repeats)
            for label in ("v1", "v2"):
                factories[label].release()
                add_row(B, f"target {label}",
                        lambda seed, label=label: baseline(sds[label], B, None, seed, SamplingConfig(CFG, top_k, top_p)),
                        args.repeats, runs_of=lambda label=label: factories[label].call_runs(), graphed=decodes[label])
            gammas = args.sdvar_gammas if B == 1 else args.sdvar_gammas[-1:]
            policy = ScenarioPolicy.all_accepted(S)
            for gamma in gammas:
                add_row(B, f"sdvar g{gamma} all-accepted v2",
                        lambda seed, gamma=gamma: sds["v2"].generate_parallel(B, None, seed, SamplingConfig(CFG, top_k, top_p),
                                                                            gamma, policy=policy),
                        args.repeats, runs_of=lambda: factories["v2"].call_runs(), graphed=decodes["v2"])
            report.one_off[f"B={B}"] = {label: one_off_seconds(factories[label].runs(), [decodes[label]])
                                        for label in ("v1", "v2")}
            factories["v1"].release()

        section(f"batch {B}", batch_section)

    def profile_section() -> None:
        for B, stage in args.profile:
            report.profiles.append(profile_pass(target, B, stage, device))
        if device.type == "cuda":
            for B in (1, args.batches[-1]):
                report.profiles.append(profile_decode(vae, B, device))
        for p in report.profiles:
            print(f"profile {p['what']} B={p['batch']}: {p['kernels']} kernels, {p['kernel_sum_ms']:.3f} ms", flush=True)
        with decodes["v2"].installed(), autocast(device):
            report.cpu_profile = profile_call_cpu(
                lambda: baseline(sds["v2"], 1, None, 5, SamplingConfig(CFG, top_k, top_p)), device)

    section("profile", profile_section)
    add_ratios(report)
    return report


def add_ratios(report: Report) -> None:
    by = {(r.batch, r.name): r for r in report.rows}
    for r in report.rows:
        eager, v2 = by.get((r.batch, "eager")), by.get((r.batch, "target v2"))
        if eager is not None:
            r.vs_eager = eager.median_ms / r.median_ms
        if v2 is not None:
            r.vs_target_v2 = v2.median_ms / r.median_ms


def _f(v, d: int = 2) -> str:
    return "-" if v is None else f"{v:.{d}f}"


def markdown(report: Report) -> str:
    c = report.ceilings
    lines = [f"Device: {report.device}, torch {report.torch}; ceilings {c['hbm_bytes_per_s'] / 1e12:.2f} TB/s, "
             f"{c['bf16_flops_per_s'] / 1e12:.0f} TFLOP/s.", "",
             "| batch | row | median ms | p10–p90 ms | target / draft passes | passes-only ms | passes bound ms | "
             "whole-call bound ms | meas / whole bound | vs eager | vs target v2 | peak GiB | first call s |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in report.rows:
        ratio = r.median_ms / r.whole_bound_ms if r.whole_bound_ms else None
        lines.append(f"| {r.batch} | {r.name} | {r.median_ms:.2f} | {r.p10_ms:.2f}–{r.p90_ms:.2f} | {r.target_passes} / "
                     f"{r.draft_passes} | {_f(r.passes_only_ms)} | {_f(r.passes_bound_ms)} | {_f(r.whole_bound_ms)} | "
                     f"{_f(ratio)}x | {_f(r.vs_eager)}x | {_f(r.vs_target_v2)}x | {_f(r.peak_gib, 1)} | "
                     f"{_f(r.first_call_s, 1)} |")
    lines += ["", "| batch | decode v1 (autocast, graphed) ms | decode v2 (fast, graphed) ms | bound ms | GFLOP | GB | "
              "v2 vs v1 rel. diff |", "|---|---|---|---|---|---|---|"]
    for d in report.decode:
        lines.append(f"| {d['batch']} | {d['v1_ms']:.2f} | {d['v2_ms']:.2f} | {d['bound_ms']:.2f} | {d['gflop']:.0f} | "
                     f"{d['gbytes']:.2f} | {d['v2_vs_v1_rel_err']:.1e} |")
    if report.sampling:
        lines += ["", "| batch | sample last stage: PyTorch kernels ms | fused kernel ms | same tokens |", "|---|---|---|---|"]
        lines += [f"| {x['batch']} | {x['torch_ms']:.3f} | {x['fused_ms']:.3f} | {x['agree']:.4f} |" for x in report.sampling]
    if report.pass_times:
        lines += ["", "| version | draft single-stage passes ms (sum) | target ms | draft / target |", "|---|---|---|---|"]
        for label, p in report.pass_times.items():
            lines.append(f"| {label} | {p['draft_sum_ms']:.2f} | {p['target_sum_ms']:.2f} | {p['ratio']:.2f} |")
    if report.one_off:
        lines += ["", "One-off seconds (kernel checks and compiles, graph captures): "
                  + "; ".join(f"{k}: v1 {v['v1']:.1f} s, v2 {v['v2']:.1f} s" for k, v in report.one_off.items())]
    for p in report.profiles:
        per_block = f" ({p['kernels_per_block']:.1f} per block)" if "kernels_per_block" in p else ""
        lines += ["", f"{p['what']}, batch {p['batch']}: {p['kernels']} kernels{per_block}, "
                  f"{p['kernel_sum_ms']:.3f} ms of kernels", "", "| kernel | total µs | count |", "|---|---|---|"]
        lines += [f"| `{k['name']}` | {k['us']:.1f} | {k['count']} |" for k in p["top"]]
    if report.cpu_profile:
        lines += ["", "Host time of one fast v2 target-alone call at batch 1, by operator:", "",
                  "| operator | self CPU ms | calls |", "|---|---|---|"]
        lines += [f"| `{e['name']}` | {e['self_cpu_ms']:.2f} | {e['count']} |" for e in report.cpu_profile]
    if report.errors:
        lines += ["", "Errors:"] + [f"- {e.splitlines()[-1]}" for e in report.errors]
    return "\n".join(lines)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tiny", action="store_true", help="the tiny random pair (smoke test of the script)")
    parser.add_argument("--draft-depth", type=int, default=16)
    parser.add_argument("--target-depth", type=int, default=30)
    parser.add_argument("--batches", default="1,8,32")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--sdvar-gammas", default="2,3,4")
    parser.add_argument("--profile", default="1:0,8:9", help="batch:stage pairs of fused passes to profile")
    args = parser.parse_args(argv)
    try:
        args.batches = check_int_sequence([int(b) for b in args.batches.split(",")], "--batches", 1)
        args.sdvar_gammas = check_int_sequence([int(g) for g in args.sdvar_gammas.split(",")], "--sdvar-gammas", 1)
        args.profile = [tuple(int(v) for v in p.split(":")) for p in args.profile.split(",") if p]
    except (TypeError, ValueError) as exc:
        parser.error(str(exc))
    if args.repeats < 1 or args.warmup < 0:
        parser.error("--repeats must be >= 1 and --warmup >= 0")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("perf_v2: CUDA is not available here (use --tiny --device cpu for a smoke test)", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    report = run(args)
    (args.out / "perf_v2.json").write_text(json.dumps(asdict(report), indent=1, default=str))
    text = markdown(report)
    (args.out / "perf_v2.md").write_text(text + "\n")
    print(text, flush=True)
    return 1 if report.errors else 0


if __name__ == "__main__":
    sys.exit(main())
