"""When SDVAR pays, and whether the decision rule ever loses: comparisons against the target alone, timed paired.

Each comparison times the two calls interleaved (target, method, method, target, ...), so that drift
of the GPU or the host over a run (clocks, memory, other rows' graphs) falls on both alike; every
speed-up is the ratio of the two medians of one such pairing.

- :func:`sweep_when_sdvar_pays`: exact SDVAR under forced acceptance profiles
  (:class:`AcceptanceProfile`: every proposal accepted, one measured on a trained pair, issue 21's
  profile, none accepted) and every gamma; each cell is the measured speed-up over the target alone
  beside the speed-up its whole-call bound allows (:func:`whole_bound_ms`: the passes the calls made,
  sampling every stage once and the VQVAE decode, at the run's ceilings).
- :func:`time_decision_rules`: the calibrated rule of ``exact_calibrated`` (calibrated per scenario
  as the benchmark does, :mod:`sdvar_lib.bench.calibration`) and the uncalibrated ``exact_adaptive``,
  each against the target alone, per scenario.
- :func:`measure_stage_acceptance`: the stage acceptance profile of ``exact`` SDVAR on a pair (the bundled
  trained pair), as ``scripts/measure_acceptance_profile.py`` measures it.

Timers are arguments (:data:`~sdvar_lib.bench.timing.CallTimer`), so the CPU tests run all of it with host
timers on the tiny pair.
"""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from sdvar_lib.bench.bounds import Ceilings, passes_bound_s, whole_call_bound
from sdvar_lib.bench.calibration import BatchCalibration, calibrate_batch, calibrate_scenario
from sdvar_lib.bench.config import BenchConfig
from sdvar_lib.bench.methods import (
    BENCH_ONLY_ROWS,
    CALIBRATED,
    PairContext,
    bench_row,
    call_passes,
    in_call_context,
    method_call,
    prepare_pricing,
    prepare_rounds,
    prepare_runs,
)
from sdvar_lib.bench.scenarios import Scenario, ScenarioPolicy, fill_missing_stages, map_profile_to_stages
from sdvar_lib.bench.timing import CallTimer, ReplayTimer, cuda_event_ms, median_event_ms
from sdvar_lib.models.sampling import SamplingConfig
from sdvar_lib.sdvar.decoder import SDVAR
from sdvar_lib.sdvar.gamma import GammaRule, plan_never_drafts
from sdvar_lib.sdvar.registry import Method
from sdvar_lib.sdvar.stats import SDVAROutput, pooled_stage_acceptance
from sdvar_lib.util.checks import check_int

log = logging.getLogger(__name__)

__all__ = [
    "ISSUE_PROFILE",
    "AcceptanceProfile",
    "sweep_profiles",
    "PairedTiming",
    "time_paired",
    "whole_bound_ms",
    "SweepCell",
    "sweep_when_sdvar_pays",
    "DecisionRow",
    "time_decision_rules",
    "measure_stage_acceptance",
    "format_sweep",
    "format_decisions",
]

ISSUE_PROFILE = (1.0, 1.0, 0.9, 0.7, 0.4, 0.2, 0.05, 0.0, 0.0, 0.0)
"""Issue 21's stage acceptance profile on the official 10 stages (likely for a well-trained pair: the early,
small stages accepted, the late ones never)."""


@dataclass(frozen=True)
class AcceptanceProfile:
    """A named per-stage probability that a proposed stage is accepted (for the batch as a whole)."""

    name: str
    stage_probabilities: tuple[float, ...]

    def scenario(self) -> Scenario:
        label = self.name if self.name in ("all", "none") else f"{self.name}[" + ",".join(
            f"{p:g}" for p in self.stage_probabilities) + "]"
        return Scenario(self.name, ScenarioPolicy(stage_probabilities=tuple(self.stage_probabilities), label=label))


def sweep_profiles(num_stages: int, measured: Sequence[float] | None = None) -> list[AcceptanceProfile]:
    """``all`` (every proposal accepted), ``measured`` (if given), ``issue`` (:data:`ISSUE_PROFILE`, mapped to
    ``num_stages`` by relative position), ``none`` (every proposal rejected)."""
    check_int(num_stages, "num_stages", 2)
    profiles = [AcceptanceProfile("all", (1.0,) * num_stages)]
    if measured is not None:
        if len(measured) != num_stages:
            raise ValueError(f"the measured profile has {len(measured)} values, the pair {num_stages} stages")
        profiles.append(AcceptanceProfile("measured", tuple(float(p) for p in measured)))
    profiles.append(AcceptanceProfile("issue", map_profile_to_stages(ISSUE_PROFILE, num_stages)))
    profiles.append(AcceptanceProfile("none", (0.0,) * num_stages))
    return profiles


# ---- paired timing ------------------------------------------------------------------------------
@dataclass
class PairedTiming:
    """Interleaved timings (ms) of a method and the target alone, and what the method's calls did."""

    method_ms: list[float]
    target_ms: list[float]
    outputs: list[object]
    passes: list[list]
    """Per timed method call: ``(VarSpec, passes)`` per model (:func:`~sdvar_lib.bench.methods.call_passes`)."""
    target_passes: list
    captures_during_timing: int

    @property
    def method_median(self) -> float:
        return statistics.median(self.method_ms)

    @property
    def target_median(self) -> float:
        return statistics.median(self.target_ms)

    @property
    def speedup(self) -> float:
        """Target median over method median: above 1 the method is faster than the target alone."""
        return self.target_median / self.method_median


def time_paired(ctx: PairContext, method_call_fn: Callable[[int], object], target_call_fn: Callable[[int], object],
                repeats: int, warmup: int, call_timer: CallTimer = cuda_event_ms, method_row=None) -> PairedTiming:
    """``repeats`` timed calls of each, interleaved (the order alternates), after ``warmup`` untimed calls of each.

    Calls run as the benchmark's rows do (:func:`~sdvar_lib.bench.methods.in_call_context`); seeds differ per call.
    """
    check_int(repeats, "repeats", 1)
    check_int(warmup, "warmup", 0)
    target_row = bench_row("target")

    def run(fn: Callable[[int], object], seed: int) -> Callable[[], object]:
        return lambda: in_call_context(ctx, True, lambda: fn(seed))

    for i in range(warmup):
        run(target_call_fn, 40_000 + i)()
        run(method_call_fn, 50_000 + i)()
    captures = sum(r.counters.captures for r in ctx.factory.runs())
    out = PairedTiming([], [], [], [], [], 0)
    for i in range(repeats):
        order = ("target", "method") if i % 2 == 0 else ("method", "target")
        for which in order:
            if which == "target":
                _, ms = call_timer(run(target_call_fn, i))
                out.target_ms.append(ms)
                out.target_passes = call_passes(ctx, target_row)
            else:
                result, ms = call_timer(run(method_call_fn, i))
                out.method_ms.append(ms)
                out.outputs.append(result)
                out.passes.append(call_passes(ctx, method_row) if method_row is not None else [])
    out.captures_during_timing = sum(r.counters.captures for r in ctx.factory.runs()) - captures
    return out


def whole_bound_ms(ctx: PairContext, B: int, passes: list, ceilings: Ceilings) -> float:
    """The whole-call bound (ms) of a call that made ``passes`` (``(VarSpec, passes)`` per model): its passes, every
    stage sampled once and the VQVAE decode."""
    target = ctx.pair.target
    passes_s = sum(passes_bound_s(spec, 2 * B, p, ceilings) for spec, p in passes)
    return whole_call_bound(passes_s, ctx.pair.vae, target.V, B, [pn * pn for pn in target.patch_nums],
                            ceilings).total_s * 1e3


# ---- when SDVAR pays ----------------------------------------------------------------------------
@dataclass
class SweepCell:
    """Exact SDVAR with gamma ``gamma`` under the acceptance ``profile`` at ``batch``, against the target alone."""

    pair: str
    batch: int
    profile: str
    stage_probabilities: list[float]
    gamma: int
    median_ms: float
    target_ms: float
    speedup: float
    """Measured: target median / this median (paired)."""
    whole_bound_ms: float
    target_whole_bound_ms: float
    bound_speedup: float
    """What the bounds allow: the target's whole-call bound / this call's."""
    ratio_to_whole_bound: float
    target_ratio_to_whole_bound: float
    target_passes: float
    draft_passes: float
    rounds: float
    captures_during_timing: int


def sweep_when_sdvar_pays(ctx: PairContext, B: int, profiles: Sequence[AcceptanceProfile], gammas: Sequence[int],
                          sampling: SamplingConfig, ceilings: Ceilings, repeats: int, warmup: int = 1,
                          call_timer: CallTimer = cuda_event_ms,
                          on_cell: Callable[[SweepCell], None] | None = None) -> list[SweepCell]:
    """Every ``(profile, gamma)`` cell at batch ``B``: exact SDVAR under the profile, paired with the target alone."""
    target_row = bench_row("target")
    target_call = method_call(ctx, target_row, None, B, sampling)
    cells = []
    for gamma in gammas:
        row = bench_row(f"exact_g{gamma}")
        prepare_runs(ctx, row, B, capture_chunks=False)  # device rounds run stage programs, not chunk programs
        for profile in profiles:
            scenario = profile.scenario()
            method = row.for_call(scenario)
            prepare_rounds(ctx, method, B, sampling)
            timing = time_paired(ctx, method_call(ctx, row, scenario, B, sampling), target_call, repeats, warmup,
                                 call_timer, method_row=row)
            bounds = [whole_bound_ms(ctx, B, p, ceilings) for p in timing.passes]
            target_bound = whole_bound_ms(ctx, B, timing.target_passes, ceilings)
            stats = [o.stats for o in timing.outputs if isinstance(o, SDVAROutput)]
            bound = statistics.median(bounds)
            cell = SweepCell(
                pair=ctx.name, batch=B, profile=profile.name, stage_probabilities=list(profile.stage_probabilities),
                gamma=gamma, median_ms=timing.method_median, target_ms=timing.target_median, speedup=timing.speedup,
                whole_bound_ms=bound, target_whole_bound_ms=target_bound, bound_speedup=target_bound / bound,
                ratio_to_whole_bound=timing.method_median / bound,
                target_ratio_to_whole_bound=timing.target_median / target_bound,
                target_passes=statistics.median(s.target_passes for s in stats),
                draft_passes=statistics.median(s.draft_passes for s in stats),
                rounds=statistics.median(s.rounds for s in stats), captures_during_timing=timing.captures_during_timing,
            )
            log.info("%s B=%d exact_g%d %-9s %8.2f ms vs target %8.2f ms: x%.2f (bound x%.2f); %.2f x its whole-call "
                     "bound; T%g D%g", ctx.name, B, gamma, profile.name, cell.median_ms, cell.target_ms, cell.speedup,
                     cell.bound_speedup, cell.ratio_to_whole_bound, cell.target_passes, cell.draft_passes)
            cells.append(cell)
            if on_cell is not None:
                on_cell(cell)
    return cells


# ---- the decision rule --------------------------------------------------------------------------
@dataclass
class DecisionRow:
    """A gamma rule (``exact_calibrated`` or ``exact_adaptive``) under ``scenario`` against the target alone."""

    pair: str
    batch: int
    method: str
    scenario: str
    median_ms: float
    target_ms: float
    speedup: float
    dispatch: str
    """``"target alone"`` when the rule's plan never drafts (the calibrated rule; ``exact_adaptive`` as the fast path
    priced it), else ``"sdvar"``; ``"-"`` where neither applies."""
    gamma_per_round: list[int]
    target_passes: float
    draft_passes: float
    calibration_s: float
    captures_during_timing: int


def time_decision_rules(ctx: PairContext, B: int, scenarios: Sequence[Scenario], config: BenchConfig, decode_ms: float,
                        call_timer: CallTimer = cuda_event_ms, replay_timer: ReplayTimer = median_event_ms,
                        with_adaptive: bool = True, batch_cal: BatchCalibration | None = None,
                        on_row: Callable[[DecisionRow], None] | None = None) -> list[DecisionRow]:
    """Per scenario: calibrate ``exact_calibrated`` (as the benchmark does), then time it paired with the target alone;
    with ``with_adaptive`` the registry's ``exact_adaptive`` too."""
    rows = []
    sampling = config.sampling
    target_call = method_call(ctx, bench_row("target"), None, B, sampling)
    cal_row = BENCH_ONLY_ROWS[CALIBRATED]
    prepare_runs(ctx, cal_row, B)
    if batch_cal is None:
        batch_cal = calibrate_batch(ctx, B, config, decode_ms, replay_timer, call_timer)
    for scenario in scenarios:
        t0 = time.perf_counter()
        cal, rule = calibrate_scenario(ctx, B, scenario, config, batch_cal, call_timer)
        calibration_s = time.perf_counter() - t0
        entries = [(CALIBRATED, cal_row, rule, cal.dispatch)]
        if with_adaptive:
            entries.append(("exact_adaptive", bench_row("exact_adaptive"), None, "-"))
        for name, row, row_rule, dispatch in entries:
            priced = prepare_pricing(ctx, row.for_call(scenario, row_rule), B, sampling)  # exact_adaptive: priced first
            if dispatch == "-" and isinstance(priced, GammaRule):
                dispatch = "target alone" if plan_never_drafts(priced, ctx.pair.target.num_stages) else "sdvar"
            timing = time_paired(ctx, method_call(ctx, row, scenario, B, sampling, rule=row_rule), target_call,
                                 config.repeats, config.warmup, call_timer, method_row=row)
            stats = [o.stats for o in timing.outputs if isinstance(o, SDVAROutput)]
            result = DecisionRow(
                pair=ctx.name, batch=B, method=name, scenario=scenario.describe(row.method), median_ms=timing.method_median,
                target_ms=timing.target_median, speedup=timing.speedup, dispatch=dispatch,
                gamma_per_round=list(stats[-1].gamma_per_round) if stats else [],
                target_passes=statistics.median(s.target_passes for s in stats),
                draft_passes=statistics.median(s.draft_passes for s in stats),
                calibration_s=calibration_s if name == CALIBRATED else 0.0,
                captures_during_timing=timing.captures_during_timing,
            )
            log.info("%s B=%d %-16s %-28s %8.2f ms vs target %8.2f ms: x%.3f (%s; gamma/round %s)", ctx.name, B, name,
                     result.scenario, result.median_ms, result.target_ms, result.speedup, dispatch, result.gamma_per_round)
            rows.append(result)
            if on_row is not None:
                on_row(result)
    return rows


# ---- a measured profile -------------------------------------------------------------------------
def measure_stage_acceptance(sd: SDVAR, calls: int, batch: int, gamma: int, sampling: SamplingConfig, seed: int = 0,
                             shift: bool = True, num_stages: int | None = None) -> tuple[float, ...]:
    """The stage acceptance of ``exact`` SDVAR on ``sd``'s pair, pooled over ``calls`` calls (every other call starts
    with one target step when ``shift``, so that the stages other calls commit as bonus stages are judged too);
    unjudged stages take the nearest judged stage's value; mapped to ``num_stages`` (default: the pair's) by
    relative position. What ``scripts/measure_acceptance_profile.py`` prints."""
    check_int(calls, "calls", 1)
    plain = Method(f"exact_g{gamma}", "sdvar", policy="exact", gamma=gamma)
    shifted = Method(f"exact_g0,{gamma}", "sdvar", policy="exact", gamma=(0, gamma))
    stats = [(shifted if shift and i % 2 else plain).run(sd, batch, None, seed + i, sampling).stats for i in range(calls)]
    measured = fill_missing_stages(pooled_stage_acceptance(stats))
    return map_profile_to_stages(measured, num_stages or sd.num_stages)


# ---- markdown -----------------------------------------------------------------------------------
def format_sweep(cells: Sequence[SweepCell]) -> str:
    """Markdown: per pair and profile, gamma rows and batch columns of ``measured x (bound x)`` against the target."""
    lines = []
    for pair in dict.fromkeys(c.pair for c in cells):
        mine = [c for c in cells if c.pair == pair]
        batches = sorted({c.batch for c in mine})
        lines += [f"When SDVAR pays, {pair}: exact SDVAR under forced stage acceptance, measured speed-up over the "
                  "target alone (paired calls) and, in brackets, the speed-up the whole-call bounds allow; then the "
                  "row against its own whole-call bound.", "",
                  "| profile | gamma | " + " | ".join(f"batch {b}: measured (bound) | batch {b}: x own bound"
                                                      for b in batches) + " |",
                  "|---|---|" + "---|---|" * len(batches)]
        for profile in dict.fromkeys(c.profile for c in mine):
            for gamma in sorted({c.gamma for c in mine if c.profile == profile}):
                cols = []
                for b in batches:
                    cell = next((c for c in mine if (c.profile, c.gamma, c.batch) == (profile, gamma, b)), None)
                    cols += (["-", "-"] if cell is None else
                             [f"{cell.speedup:.2f}× ({cell.bound_speedup:.2f}×)", f"{cell.ratio_to_whole_bound:.2f}"])
                lines.append(f"| {profile} | {gamma} | " + " | ".join(cols) + " |")
        profiles = {c.profile: c.stage_probabilities for c in mine}
        lines += ["", "Profiles (stage acceptance, stage 0 first): " + "; ".join(
            f"{name} " + ",".join(f"{p:g}" for p in probs) for name, probs in profiles.items())]
        lines += ["Target alone against its whole-call bound: " + ", ".join(
            f"batch {b}: {statistics.median(c.target_ratio_to_whole_bound for c in mine if c.batch == b):.2f}×"
            for b in batches), ""]
    return "\n".join(lines).rstrip()


def format_decisions(rows: Sequence[DecisionRow]) -> str:
    """Markdown: every decision-rule row against the target alone (paired)."""
    lines = ["The decision rules against the target alone (paired calls; above 1: faster than the target):", "",
             "| pair | batch | rule | scenario | median ms | target ms | vs target | runs as | gamma per round "
             "(last call) | target / draft passes |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r.pair} | {r.batch} | {r.method} | {r.scenario} | {r.median_ms:.2f} | {r.target_ms:.2f} | "
                     f"{r.speedup:.3f}× | {r.dispatch} | {r.gamma_per_round} | {r.target_passes:g} / {r.draft_passes:g} |")
    return "\n".join(lines)
