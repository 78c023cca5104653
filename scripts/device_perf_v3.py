#!/usr/bin/env python3
"""Issue 21 on one GPU: every measurement it asks for, in two parts of at most 9 minutes each.

    python3 scripts/device_perf_v3.py --part 1 --out $OUT [--budget-s 300]
    python3 scripts/device_perf_v3.py --part 2 --out $OUT [--budget-s 500]
    python3 scripts/device_perf_v3.py --smoke --part 1 --out DIR     # the same plumbing on the CPU, tiny pair

(``scripts/device_perf_v3.sh`` runs each part with the GPU tests and a time limit.) The target alone is
timed in the same run as everything it is compared with, paired with it (interleaved calls:
:mod:`sdvar_lib.bench.sweep`). d16 -> d30 with random bf16 weights, top-k 900, top-p 0.96, cfg 1.5,
the fast VQVAE decode graphed inside every call, bf16 autocast, as ``python -m sdvar_lib.bench``.

Part 1:
  1. ``rows``: exact SDVAR g2 and g4 with every proposal accepted against the target alone at batch 1, 8,
     32 (ms, speed-up, each against its whole-call bound and the speed-up the bounds allow); per batch
     the draft/target single-stage pass ratio (separate pass graphs, as before) and the ratio of the
     stage programs that decode every stage (passes, draws and f_hat in one graph each);
  2. ``oneoff``: the first two calls of exact_g2, the target and exact_adaptive (its pricing) at batch 2 in a fresh
     process with an empty Triton cache (cold: kernels compiled ahead in threads, the default), in another with an
     empty cache and ``compile_workers=0`` (each kernel compiled at its first launch, as before), then in a process
     with the cache the first filled (warm);
  3. ``profiles``: kernel breakdowns of the d16 and d30 single-stage passes at batch 1 (stages 0 and 9),
     the host's time by operator in one exact_g4 all-accepted call at batch 1, and that call and one of the
     target alone on the GPU's clock (``call_timeline``: GPU busy time, time before its first and after its
     last activity, idle gaps) and traced function by function (``host_trace``).
Part 2:
  1. ``measured_profile``: the stage acceptance of exact SDVAR on the bundled trained pair (GPU),
     mapped to the 10 official stages;
  2. ``decisions``: exact_calibrated (calibrated per scenario, as the bench does) and exact_adaptive
     against the target alone, scenarios exact (random weights), all, issue, measured, none, at batch 1,
     8 and 32;
  3. ``sweep``: exact SDVAR, gamma 1-4, under the profiles all / measured / issue / none, at batch 1 and 8
     (batch 32 for gamma 2 and 4 under all and issue when time is left): measured speed-up beside the
     bounds'.

Every section writes ``v3_part{N}.json`` and ``v3_part{N}.md`` in ``--out`` (atomically) when it ends, so a
run cut short keeps what it measured; a section that fails is recorded with its traceback and the next
one runs; a section that no longer fits ``--budget-s`` is skipped and says so.
"""

from __future__ import annotations

import time

PROCESS_START = time.perf_counter()

import argparse  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import os  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import traceback  # noqa: E402
from dataclasses import asdict, replace  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

IMPORTED = time.perf_counter()

from sdvar_lib.bench import (  # noqa: E402
    BenchConfig,
    Ceilings,
    PairContext,
    Scenario,
    ScenarioPolicy,
    bench_row,
    build_pair_bf16,
    call_timeline,
    compiled_kernels,
    format_decisions,
    format_host_trace,
    format_pass_ratios,
    format_sweep,
    host_call_ms,
    host_profile,
    host_trace,
    in_call_context,
    measure_ceilings,
    measure_decode,
    measure_pass_ratio,
    measure_program_ratio,
    measure_stage_acceptance,
    median_host_ms,
    method_call,
    prepare_rounds,
    prepare_runs,
    profile_pass,
    sweep_profiles,
    sweep_when_sdvar_pays,
    time_decision_rules,
    time_first_calls,
)
from sdvar_lib.fast.config import FastConfig  # noqa: E402
from sdvar_lib.fast.factory import FastRunFactory, make_fast_sdvar  # noqa: E402
from sdvar_lib.fast.graphs import GraphedDecode  # noqa: E402
from sdvar_lib.models.presets import ModelPair, build_tiny  # noqa: E402
from sdvar_lib.sdvar.acceptance import ExactPolicy  # noqa: E402
from sdvar_lib.sdvar.gamma import AdaptiveGamma, ProgramCost, RoundContext, RoundHistory, plan_never_drafts  # noqa: E402
from sdvar_lib.util.atomic import atomic_write_text  # noqa: E402

log = logging.getLogger("device_perf_v3")

SMOKE_CEILINGS = Ceilings(1e12, 1e14)
DECISION_REPEATS = {1: 20, 8: 12}
"""Paired calls per decision-rule cell by batch (6 elsewhere): a 30 ms call's paired median moved by up to 7 % with 6
at batch 1; at batch 8 one rule that ran the target's own program read 0.965x with 6 (12-03)."""


# ---- timers and pairs: the GPU's, or host stand-ins for --smoke -----------------------------------------
class Setting:
    """What differs between the GPU run and the CPU smoke run: the pair, batches, timers, repetitions."""

    def __init__(self, smoke: bool) -> None:
        self.smoke = smoke
        self.device = torch.device("cpu" if smoke else "cuda")
        self.batches = (1,) if smoke else (1, 8, 32)
        self.repeats = 1 if smoke else 6
        self.warmup = 0 if smoke else 1
        self.sweep_gammas = (1, 3) if smoke else (1, 2, 3, 4)
        self.decision_scenarios = ("exact", "all") if smoke else ("exact", "all", "issue", "measured", "none")
        self.config = BenchConfig(repeats=self.repeats, warmup=self.warmup, calibration_calls=1 if smoke else 2,
                                  calibration_replays=1 if smoke else 3,
                                  top_k=0 if smoke else 900, top_p=0.0 if smoke else 0.96, out="unused")
        self.sampling = self.config.sampling
        if smoke:
            self.call_timer, self.replay_timer = host_call_ms, median_host_ms
        else:
            from sdvar_lib.bench.timing import cuda_event_ms, median_event_ms

            self.call_timer, self.replay_timer = cuda_event_ms, median_event_ms

    def pair(self) -> ModelPair:
        if self.smoke:
            vae, target = build_tiny(seed=0)
            _, draft = build_tiny(seed=1, depth=1, vae=vae)
            return ModelPair(vae, draft, target, "tiny pair (CPU smoke run)")
        return build_pair_bf16(16, 30, self.device)

    def context(self, pair: ModelPair) -> PairContext:
        name = "tiny" if self.smoke else "d16->d30"
        config = FastConfig(use_cuda_graphs=not self.smoke)
        return PairContext.for_pair(name, pair, FastRunFactory(config))

    def ceilings(self) -> Ceilings:
        return SMOKE_CEILINGS if self.smoke else measure_ceilings(self.device)

    def decoder(self, pair: ModelPair) -> GraphedDecode | None:
        return None if self.smoke else GraphedDecode(pair.vae, fast=True)

    def decode_ms(self, pair: ModelPair, B: int, decoder) -> float:
        if self.smoke:
            return 0.0
        timing = measure_decode(pair.target, B, graphed=decoder)
        return timing.graphed_ms if timing.graphed_ms is not None else timing.eager_ms


# ---- results, written as they come ------------------------------------------------------------------
class Results:
    def __init__(self, out: Path, part: int, budget_s: float, sections: tuple[str, ...] | None = None) -> None:
        self.out, self.part, self.sections = out, part, sections
        self.deadline = time.perf_counter() + budget_s
        self.data: dict = {"part": part, "sections": {}, "errors": {}, "skipped": {}, "notes": []}
        self.markdown: dict[str, str] = {}

    def left_s(self) -> float:
        return self.deadline - time.perf_counter()

    def save(self) -> None:
        atomic_write_text(self.out / f"v3_part{self.part}.json", json.dumps(self.data, indent=1, default=str))
        text = [f"# issue 21, device_perf_v3 part {self.part}", ""]
        for key, value in self.data.get("machine", {}).items():
            text.append(f"- {key}: {value}")
        text.append("")
        for name, md in self.markdown.items():
            text += [f"## {name}", "", md, ""]
        for name, why in self.data["skipped"].items():
            text.append(f"- skipped `{name}`: {why}")
        for name, err in self.data["errors"].items():
            text += [f"- **failed** `{name}`:", "", "```", err.strip()[-3000:], "```"]
        atomic_write_text(self.out / f"v3_part{self.part}.md", "\n".join(text) + "\n")

    def section(self, name: str, needs_s: float, fn) -> None:
        """Run ``fn()`` if it was asked for and ``needs_s`` seconds are left; record its result, or its failure, and save."""
        if self.sections is not None and name not in self.sections:
            self.data["skipped"][name] = "not asked for (--sections)"
            self.save()
            return
        if self.left_s() < needs_s:
            self.data["skipped"][name] = f"{self.left_s():.0f} s left, the section needs about {needs_s:.0f} s"
            log.warning("skipped %s: %s", name, self.data["skipped"][name])
            self.save()
            return
        t0 = time.perf_counter()
        try:
            fn()
        except Exception:  # a failed section must not cost the others
            self.data["errors"][name] = traceback.format_exc()
            log.exception("section %s failed", name)
        self.data.setdefault("seconds", {})[name] = round(time.perf_counter() - t0, 1)
        self.save()


def _release(ctx: PairContext) -> None:
    ctx.factory.release()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# ---- part 1 -----------------------------------------------------------------------------------------
def rows_section(res: Results, setting: Setting, ctx: PairContext, ceilings: Ceilings) -> None:
    cells, ratios, programs = [], [], []
    res.data["sections"]["rows"] = {"cells": cells, "pass_ratios": ratios, "program_ratios": programs}
    all_accepted = [p for p in sweep_profiles(ctx.pair.target.num_stages) if p.name == "all"]
    for B in setting.batches:
        if res.left_s() < (120 if B >= 32 else 40):
            res.data["skipped"][f"rows batch {B}"] = f"{res.left_s():.0f} s left"
            continue
        ctx.decoder = setting.decoder(ctx.pair)
        cells += [asdict(c) for c in sweep_when_sdvar_pays(ctx, B, all_accepted, (2, 4), setting.sampling, ceilings,
                                                            setting.repeats, setting.warmup, setting.call_timer)]
        ratios.append(measure_pass_ratio(ctx, B, 3, setting.replay_timer))
        draft = ctx.factory.run_for(ctx.pair.draft, B)
        target = ctx.factory.run_for(ctx.pair.target, B)
        programs.append(measure_program_ratio(ctx.name, draft, target, setting.sampling, 5, setting.replay_timer))
        _release(ctx)
        ctx.decoder = None
        res.markdown["rows"] = _rows_markdown(cells, ratios, programs)
        res.save()
    res.data["sections"]["rows"]["pass_ratios"] = [asdict(r) | {"ratio": r.ratio} for r in ratios]
    res.data["sections"]["rows"]["program_ratios"] = [asdict(r) | {"ratio": r.ratio} for r in programs]


def _rows_markdown(cells: list[dict], ratios, programs) -> str:
    lines = ["Exact SDVAR, every proposal accepted, against the target alone (paired calls):", "",
             "| batch | row | median ms | target ms | vs target | bounds allow | row / its whole-call bound | "
             "target / its whole-call bound | target / draft passes |", "|---|---|---|---|---|---|---|---|---|"]
    for c in cells:
        lines.append(f"| {c['batch']} | exact_g{c['gamma']} | {c['median_ms']:.2f} | {c['target_ms']:.2f} | "
                     f"{c['speedup']:.2f}× | {c['bound_speedup']:.2f}× | {c['ratio_to_whole_bound']:.2f}× | "
                     f"{c['target_ratio_to_whole_bound']:.2f}× | {c['target_passes']:g} / {c['draft_passes']:g} |")
    lines += ["", format_pass_ratios(ratios), "", "Stage programs of every stage (passes, draws and f_hat in one graph "
              "each), replayed alone:", "", "| batch | draft ms | target ms | draft / target |", "|---|---|---|---|"]
    lines += [f"| {p.batch} | {p.draft_ms:.2f} | {p.target_ms:.2f} | {p.ratio:.3f} |" for p in programs]
    return "\n".join(lines)


def oneoff_section(res: Results, setting: Setting, args) -> None:
    runs = {}
    res.data["sections"]["oneoff"] = runs
    with (tempfile.TemporaryDirectory(prefix="sdvar_triton_cache_") as cache,
          tempfile.TemporaryDirectory(prefix="sdvar_triton_cache_") as lazy_cache):
        for label, folder, workers in (("cold", cache, None), ("cold, compiled at first launch", lazy_cache, 0),
                                       ("warm", cache, None)):
            with tempfile.TemporaryDirectory() as tmp:
                report = Path(tmp) / "oneoff.json"
                env = {**os.environ, "TRITON_CACHE_DIR": folder, "PYTHONUNBUFFERED": "1"}
                cmd = [sys.executable, str(Path(__file__).resolve()), "--oneoff-child", str(report), "--out", tmp]
                if workers is not None:
                    cmd += ["--compile-workers", str(workers)]
                if setting.smoke:
                    cmd.append("--smoke")
                t0 = time.perf_counter()
                done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=max(30.0, res.left_s() - 10))
                wall = time.perf_counter() - t0
                if done.returncode != 0 or not report.exists():
                    raise RuntimeError(f"the {label} child failed ({done.returncode}): {done.stderr[-2000:]}")
                runs[label] = json.loads(report.read_text()) | {"process_wall_s": round(wall, 2),
                                                                 "compiled_kernels": compiled_kernels(folder)}
            res.save()
    lines = ["First calls in a fresh process (seconds; TRITON_CACHE_DIR a new folder: cold = empty, warm = "
             "filled by the first cold process; compile threads: the kernels built ahead, several at a time, 0 = each "
             "compiled at its first launch); `preparation` = first call - second call:", "",
             "| process | compile threads | kernels built ahead | import s | build s | call | first s | second s | "
             "preparation s | one-off s (compiles + captures) | captures | process wall s |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for label, r in runs.items():
        for c in r["calls"]:
            lines.append(f"| {label} | {r.get('compile_threads', '-')} | {r.get('precompiled', '-')} | "
                         f"{r['import_s']:.1f} | {r['build_s']:.1f} | {c['method']} B={c['batch']} | "
                         f"{c['first_s']:.2f} | {c['second_s']:.3f} | {c['first_s'] - c['second_s']:.2f} | "
                         f"{c['one_off_s']:.2f} | {c['captures']} | {r['process_wall_s']:.1f} |")
    for label in ("cold", "cold, compiled at first launch"):
        found = runs[label]["compiled_kernels"]
        lines += ["", f"Triton specialisations in the cache after the {label} process: {sum(found.values())} of "
                  f"{len(found)} kernels" + (": " + ", ".join(f"`{name}` {n}" for name, n in found.items()) if found
                                             else " (none: the interpreter or a CPU compiles nothing)")]
    res.markdown["oneoff"] = "\n".join(lines)


def oneoff_child(args) -> int:
    """In a fresh process: import, build the pair, then the first two calls of exact_g2, the target and exact_adaptive
    at batch 2."""
    setting = Setting(args.smoke)
    t0 = time.perf_counter()
    pair = setting.pair()
    sd = make_fast_sdvar(pair.draft, pair.target, FastConfig(use_cuda_graphs=not args.smoke,
                                                             compile_workers=args.compile_workers))
    build_s = time.perf_counter() - t0
    calls = time_first_calls(sd, ("exact_g2", "target", "exact_adaptive"), 2, setting.sampling)
    report = dict(import_s=IMPORTED - PROCESS_START, build_s=build_s, calls=[asdict(c) for c in calls],
                  compile_threads=sd.run_factory.config.compile_threads,
                  precompiled=sd.run_factory.precompiled + sum(r.counters.precompiled for r in sd.run_factory.runs()),
                  triton_cache=os.environ.get("TRITON_CACHE_DIR"), torch=torch.__version__)
    Path(args.oneoff_child).write_text(json.dumps(report, indent=1))
    return 0


def profiles_section(res: Results, setting: Setting, ctx: PairContext, ceilings: Ceilings) -> None:
    out = {"passes": [], "host": []}
    res.data["sections"]["profiles"] = out
    lines = []
    if not setting.smoke:
        for model in (ctx.pair.draft, ctx.pair.target):
            for stage in (0, model.num_stages - 1):
                p = profile_pass(model, 1, stage, ceilings)
                out["passes"].append(asdict(p))
                lines += [f"d{p.depth} batch 1 stage {p.stage}: graph replay {p.replay_ms:.3f} ms, bound {p.bound_ms:.3f} ms, "
                          f"{p.kernels} kernels ({p.kernels / p.depth:.1f} per block) summing to {p.kernel_sum_ms:.3f} ms; "
                          "top: " + ", ".join(f"`{k.name[:40]}` {k.total_us:.0f} µs x{k.count}" for k in p.top[:6])]
                torch.cuda.empty_cache()
    ctx.decoder = setting.decoder(ctx.pair)
    row = bench_row("exact_g4")
    scenario = Scenario("all", ScenarioPolicy.all_accepted(ctx.pair.target.num_stages))
    prepare_runs(ctx, row, 1, capture_chunks=False)
    prepare_rounds(ctx, row.for_call(scenario), 1, setting.sampling)
    call = method_call(ctx, row, scenario, 1, setting.sampling)
    ops = host_profile(lambda: in_call_context(ctx, True, lambda: call(3)))
    out["host"] = [asdict(o) for o in ops]
    lines += ["", "Host time by operator, one exact_g4 all-accepted call at batch 1:", "", "| operator | self CPU ms | calls |",
              "|---|---|---|"] + [f"| `{o.name}` | {o.self_cpu_ms:.2f} | {o.count} |" for o in ops]
    out["timelines"] = []
    lines += ["", "One call at batch 1 on the GPU's clock (`call_timeline`): is the time outside the passes GPU work or "
              "a GPU waiting for the host?", "",
              "| call | wall ms | GPU busy ms | activities | before first ms | after last ms | idle between ms | "
              "largest gaps (ms at ms) |", "|---|---|---|---|---|---|---|---|"]
    target_row = bench_row("target")
    prepare_runs(ctx, target_row, 1, capture_chunks=False)
    target_call = method_call(ctx, target_row, None, 1, setting.sampling)
    for name, fn in (("target alone", target_call), ("exact_g4, all accepted", call)):
        t = call_timeline(lambda fn=fn: in_call_context(ctx, True, lambda: fn(3)))
        out["timelines"].append(asdict(t) | {"call": name})
        gaps = ", ".join(f"{length:.2f} at {start:.2f}" for start, length in t.gaps) or "-"
        lines.append(f"| {name} | {t.wall_ms:.2f} | {t.gpu_busy_ms:.2f} | {t.gpu_activities} | {t.lead_ms:.2f} | "
                     f"{t.tail_ms:.2f} | {t.idle_ms:.2f} | {gaps} |")
    out["host_traces"] = {}
    for name, fn in (("target alone", target_call), ("exact_g4, all accepted", call)):
        marks = host_trace(lambda fn=fn: in_call_context(ctx, True, lambda: fn(3)))
        out["host_traces"][name] = [asdict(m) for m in marks]
        lines += ["", f"Host trace of one {name} call at batch 1 (`host_trace`: where the GPU's time equals the host's, "
                  "the GPU waited for the host):", "", "```", format_host_trace(marks), "```"]
    _release(ctx)
    ctx.decoder = None
    res.markdown["profiles"] = "\n".join(lines)


# ---- part 2 -----------------------------------------------------------------------------------------
def measured_profile_section(res: Results, setting: Setting) -> tuple[float, ...] | None:
    from sdvar_lib import SDVAR
    from sdvar_lib.models import load_bundled
    from sdvar_lib.models.sampling import SamplingConfig

    pair = load_bundled(setting.device)
    calls = 1 if setting.smoke else 20
    profile = measure_stage_acceptance(SDVAR(pair.draft, pair.target), calls, 8, 2, SamplingConfig(cfg=1.5), seed=0,
                                       num_stages=10)
    res.data["sections"]["measured_profile"] = {"profile": list(profile), "calls": calls, "batch": 8, "gamma": 2,
                                                "pair": pair.description}
    res.markdown["measured_profile"] = ("Stage acceptance of exact SDVAR (gamma 2, batch 8, cfg 1.5, full distribution) "
                                        f"on the bundled pair, {calls} calls, mapped to 10 stages: "
                                        + ",".join(f"{v:.3g}" for v in profile))
    return profile


def decisions_section(res: Results, setting: Setting, ctx: PairContext, measured) -> None:
    rows, prices = [], []
    res.data["sections"]["decisions"] = rows
    res.data["sections"]["adaptive_prices"] = prices
    S = ctx.pair.target.num_stages
    profiles = {p.name: p for p in sweep_profiles(S, measured if measured is not None and len(measured) == S else None)}
    scenarios = [Scenario("exact") if n == "exact" else profiles[n].scenario() for n in setting.decision_scenarios
                 if n == "exact" or n in profiles]
    for B in setting.batches:
        if res.left_s() < (150 if B >= 32 else 60):
            res.data["skipped"][f"decisions batch {B}"] = f"{res.left_s():.0f} s left"
            continue
        ctx.decoder = setting.decoder(ctx.pair)
        decode_ms = setting.decode_ms(ctx.pair, B, ctx.decoder)
        config = setting.config
        if B in DECISION_REPEATS and not setting.smoke:  # short calls are noisy: more pairs for their medians
            config = replace(config, repeats=DECISION_REPEATS[B])
        found = time_decision_rules(ctx, B, scenarios, config, decode_ms, setting.call_timer,
                                    setting.replay_timer, with_adaptive=True)
        rows += [asdict(r) for r in found]
        prices.append(_adaptive_prices(ctx, B, setting))
        _release(ctx)
        ctx.decoder = None
        res.markdown["decisions"] = format_decisions([_Row(**r) for r in rows])
        res.markdown["adaptive_prices"] = _format_prices(prices)
        res.save()


def _adaptive_prices(ctx: PairContext, B: int, setting: Setting) -> dict:
    """What exact_adaptive decided with at batch ``B`` (the exact policy's prices, as the fast path measured them):
    the target steps, the rounds from stage 0, and the expected saving of each gamma there at acceptance 1 and at
    the rule's prior."""
    S = ctx.pair.target.num_stages
    rule = ctx.factory.price_rule(AdaptiveGamma(), ctx.pair.draft, ctx.pair.target, B, setting.sampling, ExactPolicy())
    costs = rule.costs  # the prices the bench's exact_adaptive row decided with (kept by the factory)
    if not isinstance(costs, ProgramCost):
        return {"batch": B, "priced": False}
    start = RoundContext(c=0, num_stages=S, draft_stages_held=0, history=RoundHistory())
    return {"batch": B, "priced": True, "step_ms": list(costs.step_times),
            "round_ms_from_0": [costs.round(0, 0, g, S) for g in range(1, 5)],
            "rejected_loss_ms_from_0": [costs.round(0, 0, g, S) - costs.step(0) for g in range(1, 5)],
            "max_loss": rule.max_loss, "loss_budget_ms": rule.loss_budget(start),
            "only_gamma_1_timed": costs.covers_max_loss is not None,
            "saving_ms_all_accepted": [rule.expected_saving(g, start, [1.0] * S) for g in range(1, 5)],
            "saving_ms_at_prior": [rule.expected_saving(g, start, [rule.prior(s) for s in range(S)]) for g in range(1, 5)],
            "never_drafts": plan_never_drafts(rule, S)}


def _format_prices(prices: list[dict]) -> str:
    lines = ["| batch | target steps (sum, ms) | rounds from stage 0, g1..g4 (ms) | saving if all accepted, g1..g4 (ms) "
             "| saving at prior 0.8 | loss if stage 0 is rejected, g1..g4 (ms) | loss budget (ms) | plan |",
             "|---|---|---|---|---|---|---|---|"]
    for p in prices:
        if not p.get("priced"):
            lines.append(f"| {p['batch']} | not priced (no device rounds) | | | | | | |")
            continue
        fmt = lambda xs: " / ".join(f"{x:.2f}" for x in xs)  # noqa: E731
        lines.append(f"| {p['batch']} | {sum(p['step_ms']):.2f} | {fmt(p['round_ms_from_0'])} | "
                     f"{fmt(p['saving_ms_all_accepted'])} | {fmt(p['saving_ms_at_prior'])} | "
                     f"{fmt(p['rejected_loss_ms_from_0'])} | {p['loss_budget_ms']:.2f} ({p['max_loss']:g} of the steps) | "
                     f"{'never drafts' if p['never_drafts'] else 'drafts'}"
                     f"{' (only the gamma-1 rounds timed: g2..g4 at their lower bound)' if p['only_gamma_1_timed'] else ''} |")
    return "\n".join(lines)


class _Row:
    def __init__(self, **kw) -> None:
        self.__dict__.update(kw)


def sweep_section(res: Results, setting: Setting, ctx: PairContext, ceilings: Ceilings, measured) -> None:
    cells = []
    res.data["sections"]["sweep"] = cells
    S = ctx.pair.target.num_stages
    profiles = sweep_profiles(S, measured if measured is not None and len(measured) == S else None)
    plan = [(B, profiles, setting.sweep_gammas) for B in setting.batches if B < 32]
    plan += [(B, [p for p in profiles if p.name in ("all", "issue")], (2, 4)) for B in setting.batches if B >= 32]
    from sdvar_lib.bench.sweep import SweepCell

    for B, chosen, gammas in plan:
        if res.left_s() < (150 if B >= 32 else 60):
            res.data["skipped"][f"sweep batch {B}"] = f"{res.left_s():.0f} s left"
            continue
        ctx.decoder = setting.decoder(ctx.pair)
        found = sweep_when_sdvar_pays(ctx, B, chosen, gammas, setting.sampling, ceilings, setting.repeats, setting.warmup,
                                      setting.call_timer)
        cells += [asdict(c) for c in found]
        _release(ctx)
        ctx.decoder = None
        res.markdown["sweep"] = format_sweep([SweepCell(**c) for c in cells])
        res.save()


# ---- main -------------------------------------------------------------------------------------------
def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--part", type=int, choices=(1, 2), default=1)
    p.add_argument("--out", required=True, help="folder for v3_part{N}.json / .md")
    p.add_argument("--budget-s", type=float, default=500.0, help="stop starting sections after this many seconds")
    p.add_argument("--smoke", action="store_true", help="the same plumbing on the CPU with the tiny pair")
    p.add_argument("--batches", default=None, help="comma-separated batch sizes (default 1,8,32; the smoke run 1)")
    p.add_argument("--sections", default=None,
                   help="comma-separated sections of the part to run (default: all; the others are recorded as skipped)")
    p.add_argument("--oneoff-child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--compile-workers", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    if args.oneoff_child:
        return oneoff_child(args)
    if not args.smoke and not torch.cuda.is_available():
        p.exit(2, "device_perf_v3: no CUDA GPU here (torch.cuda.is_available() is False); run it on the device machine, "
                  "or with --smoke on the CPU\n")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    setting = Setting(args.smoke)
    if args.batches is not None:
        try:
            setting.batches = tuple(int(x) for x in args.batches.split(",") if x.strip())
        except ValueError:
            setting.batches = ()
        if not setting.batches or min(setting.batches) < 1:
            p.error(f"--batches: comma-separated batch sizes >= 1, got {args.batches!r}")
    known = {1: ("rows", "oneoff", "profiles"), 2: ("measured_profile", "decisions", "sweep")}[args.part]
    chosen = known if args.sections is None else tuple(x.strip() for x in args.sections.split(",") if x.strip())
    unknown = [x for x in chosen if x not in known]
    if unknown or not chosen:
        p.error(f"--sections: part {args.part} has the sections {', '.join(known)}; got {args.sections!r}")
    res = Results(out, args.part, args.budget_s, chosen)
    if not setting.smoke:
        torch.backends.cudnn.benchmark = True
    res.data["machine"] = _machine(setting)
    ceilings = setting.ceilings()
    res.data["machine"]["ceilings"] = (f"HBM {ceilings.hbm_bytes_per_s / 1e12:.2f} TB/s, "
                                       f"bf16 {ceilings.bf16_flops_per_s / 1e12:.0f} TFLOP/s")
    res.save()
    if args.part == 1:
        ctx = setting.context(setting.pair())
        res.section("rows", 60, lambda: rows_section(res, setting, ctx, ceilings))
        res.section("oneoff", 60, lambda: oneoff_section(res, setting, args))
        res.section("profiles", 30, lambda: profiles_section(res, setting, ctx, ceilings))
    else:
        measured: list = []
        res.section("measured_profile", 20, lambda: measured.append(measured_profile_section(res, setting)))
        ctx = setting.context(setting.pair())
        profile = measured[0] if measured else None
        res.section("decisions", 60, lambda: decisions_section(res, setting, ctx, profile))
        res.section("sweep", 60, lambda: sweep_section(res, setting, ctx, ceilings, profile))
    res.data["total_s"] = round(time.perf_counter() - PROCESS_START, 1)
    res.save()
    print((out / f"v3_part{args.part}.md").read_text())
    return 1 if res.data["errors"] else 0


def _machine(setting: Setting) -> dict:
    info = {"torch": torch.__version__, "python": sys.version.split()[0], "smoke (CPU, tiny pair)": setting.smoke}
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = None
    if torch.cuda.is_available() and not setting.smoke:
        info["gpu"] = torch.cuda.get_device_name(0)
    info["sampling"] = str(setting.sampling)
    return info


if __name__ == "__main__":
    sys.exit(main())
