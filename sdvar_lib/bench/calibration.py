"""Calibration of the adaptive gamma rule of the ``exact_calibrated`` row, on the GPU it is timed on.

Right before the row is timed, for its batch size (:func:`calibrate_batch`, shared by the scenarios):
every target and draft chunk the rule may use is replayed alone (:func:`measure_pass_times`), each
run's ``begin`` is timed, and a few target-alone calls give the time outside the passes per stage.
Per scenario (:func:`calibrate_scenario`) a few SDVAR calls give the per-round overhead
(:func:`estimate_overheads`) and the stage acceptance; the rule is an
:class:`~sdvar_lib.sdvar.gamma.AdaptiveGamma` with these costs (:func:`calibrated_costs`) and priors,
kept only if it beats the target alone on a few paired calls (else it declines every stage: the
target's own program). Every timed call follows an untimed one of the same kind (``_warmed``): a first call's
compiles and captures are not overhead.
Timers are arguments, so the CPU tests run all of it with host timers on the tiny pair.

The pass tables also give every batch of the benchmark its draft/target single-stage pass ratio
(:func:`measure_pass_ratio`, reusing the calibration's tables when the batch was calibrated).
"""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace

import torch

from sdvar_lib.bench.config import BenchConfig
from sdvar_lib.bench.methods import BENCH_ONLY_ROWS, CALIBRATED, PairContext, bench_row, in_call_context, method_call
from sdvar_lib.bench.scenarios import Scenario, fill_missing_stages, scenario_stage_acceptance
from sdvar_lib.bench.timing import CallTimer, ReplayTimer, cuda_event_ms, median_event_ms
from sdvar_lib.fast.config import PassRecord
from sdvar_lib.fast.run import FastRun, chunk_span
from sdvar_lib.models.var import VAR
from sdvar_lib.sdvar.gamma import AdaptiveGamma, FixedGamma, GammaRule, GammaSchedule, TableCost, UniformCost, plan_never_drafts
from sdvar_lib.sdvar.stats import pooled_stage_acceptance

log = logging.getLogger(__name__)

__all__ = [
    "CallSample",
    "OverheadEstimate",
    "AdaptiveCalibration",
    "BatchCalibration",
    "CALIBRATION_RULES",
    "chunk_of_pass",
    "measure_pass_times",
    "pass_time_ratio",
    "PassRatio",
    "measure_pass_ratio",
    "estimate_overheads",
    "calibrated_costs",
    "calibrate_batch",
    "calibrate_scenario",
    "declining",
]


@dataclass(frozen=True)
class CallSample:
    """One calibration call: its latency, the measured time of the passes it made, and what it did.

    ``fixed_ms``: per-call work that is neither a pass nor per stage (the VQVAE decode and each run's
    ``begin``). ``draft_passes``: draft passes (one per proposal); ``target_stages_read``: stages over
    all target passes (a target step reads 1, a verify chunk ``g + 1``); ``sdvar_rounds``: rounds
    that drafted (gamma >= 1).
    """

    total_ms: float
    pass_ms: float
    fixed_ms: float
    draft_passes: int = 0
    target_stages_read: int = 0
    sdvar_rounds: int = 0

    @property
    def other_ms(self) -> float:
        """Time outside the passes and the fixed per-call work: sampling, VQ ops, acceptance, syncs."""
        return self.total_ms - self.pass_ms - self.fixed_ms


@dataclass(frozen=True)
class OverheadEstimate:
    """Time outside the passes, as :func:`estimate_overheads` splits it.

    ``step_ms``: per stage a pass reads or proposes (what a target step costs beyond its pass: its
    stage input, guidance, sampling and ``f_hat`` update); ``round_ms``: what a drafting round costs
    beyond that (acceptance, the verdicts' host transfer, bookkeeping), clamped at 0
    (``round_ms_raw`` unclamped).
    """

    step_ms: float
    round_ms: float
    round_ms_raw: float
    target_calls: int
    sdvar_calls: int


@dataclass
class AdaptiveCalibration:
    """What the calibrated adaptive rule of one (pair, batch, scenario) row was built from.

    Pass tables are ``[start stage, stages, ms]`` rows (graph replays, CUDA events); the cost model
    the rule got adds ``stages * step_overhead_ms`` to a target chunk, ``step_overhead_ms`` to a
    draft chunk and ``round_overhead_ms`` per round (:func:`calibrated_costs`).
    """

    pair: str
    batch: int
    scenario: str
    prior_source: str
    priors: list[float]
    measured_stage_acceptance: list[float | None]
    step_overhead_ms: float
    round_overhead_ms: float
    round_overhead_raw_ms: float
    fixed_ms: float
    target_pass_ms: list[list[float]]
    draft_pass_ms: list[list[float]]
    target_call_ms: list[float]
    sdvar_call_ms: list[float]
    seconds: float
    dispatch: str = "sdvar"
    """``"sdvar"``, or ``"target alone"`` when the calibrated plan never drafts (:func:`plan_never_drafts`:
    ``SDVAR.generate_parallel`` then runs the target-alone call, the same stage program as the ``target`` row), or
    ``"target alone (the plan lost its check)"``."""
    gamma_per_round: list[int] | None = None
    """The gamma of every round of the row's last timed call (filled after timing; ``[0] * S`` for target alone)."""
    check_rule_ms: list[float] | None = None
    check_target_ms: list[float] | None = None
    """A plan that drafts is checked on paired calls against the target alone (ms of each); one slower than the target
    is replaced by a plan that declines every stage (``dispatch`` says so)."""


@dataclass
class BatchCalibration:
    """What :func:`calibrate_batch` measures once per batch size (scenarios share it)."""

    batch: int
    target_pass_ms: dict[tuple[int, int], float]
    draft_pass_ms: dict[tuple[int, int], float]
    decode_ms: float
    begin_target_ms: float
    begin_draft_ms: float
    target_calls: list[CallSample]
    seconds: float


CALIBRATION_RULES: tuple[GammaRule, ...] = (FixedGamma(1), GammaSchedule((1, 0, 1)))
"""The calibration calls alternate these. Both judge stage 0 (the one stage a batch of random-weight
models ever accepts whole, so every call should see it); gamma 1 judges every stage a round starts
at, and the one target step of the second shifts the rounds, so that between them the stages that
one commits as bonus stages are judged too (all but stage 1 when every proposal is accepted)."""


# ---- pass tables --------------------------------------------------------------------------------
def chunk_of_pass(model: VAR, position: int, length: int) -> tuple[int, int]:
    """``(start stage, number of stages)`` of a pass over ``[position, position + length)`` (inverse of ``chunk_span``)."""
    starts = {b: i for i, (b, _) in enumerate(model.begin_ends)}
    ends = {e: i for i, (_, e) in enumerate(model.begin_ends)}
    end = position + length
    if position not in starts or end not in ends or ends[end] < starts[position]:
        raise ValueError(f"a pass at {position} of {length} tokens is not a chunk of whole stages")
    return starts[position], ends[end] - starts[position] + 1


def measure_pass_times(run: FastRun, chunks: Sequence[tuple[int, int]], timer: ReplayTimer, repeats: int = 3,
                       warmup: int = 1) -> dict[tuple[int, int], float]:
    """Median time (ms) of the program (CUDA-graph replay) of every ``(start stage, stages)`` chunk of ``run``.

    The chunks are captured first (:meth:`FastRun.precapture`); each is then replayed alone at its
    position, ``warmup`` + ``repeats`` times, and ``timer`` gives the median. The cache is left empty.
    """
    run.precapture(chunks)
    out: dict[tuple[int, int], float] = {}
    for start, n in chunks:
        position, length = chunk_span(run.model, start, n)
        rec = PassRecord(position, length, graphed=run.use_cuda_graphs)
        out[(start, n)] = float(timer(lambda rec=rec: run.replay_passes([rec]), repeats, warmup))
    return out


def pass_time_ratio(draft_ms: Mapping[tuple[int, int], float], target_ms: Mapping[tuple[int, int], float]) -> float:
    """Draft over target time of the single-stage passes both have: ``sum(draft) / sum(target)``.

    Keys are chunks ``(start stage, number of stages)``; only ``(s, 1)`` keys present in both count.
    """
    keys = sorted(k for k in draft_ms if k[1] == 1 and k in target_ms)
    if not keys:
        raise ValueError("pass_time_ratio needs single-stage passes (keys (s, 1)) timed for both models")
    return sum(draft_ms[k] for k in keys) / sum(target_ms[k] for k in keys)


@dataclass(frozen=True)
class PassRatio:
    """Single-stage pass times (ms, stage 0 first; graph replays on the fast path) of draft and target at one batch."""

    pair: str
    batch: int
    target_ms: tuple[float, ...]
    draft_ms: tuple[float, ...]
    fast_version: str = "current"
    """``"first"``: the passes of the first version of the fast path (measured when a ``target_v1`` row runs)."""

    @property
    def ratio(self) -> float:
        """Draft over target: the sum of the draft's single-stage passes over the target's (:func:`pass_time_ratio`)."""
        return pass_time_ratio({(s, 1): ms for s, ms in enumerate(self.draft_ms)},
                               {(s, 1): ms for s, ms in enumerate(self.target_ms)})


def measure_pass_ratio(ctx: PairContext, B: int, repeats: int, replay_timer: ReplayTimer = median_event_ms,
                       calibration: BatchCalibration | None = None) -> PassRatio:
    """Every stage's single-stage pass of the draft and the target at batch ``B``, replayed alone.

    With ``calibration`` (the batch's :func:`calibrate_batch`) its tables are reused, nothing is timed again.
    """
    S = ctx.pair.target.num_stages
    chunks = [(s, 1) for s in range(S)]
    if calibration is not None:
        target_ms, draft_ms = calibration.target_pass_ms, calibration.draft_pass_ms
    else:
        target_ms = measure_pass_times(ctx.factory.run_for(ctx.pair.target, B), chunks, replay_timer, repeats)
        draft_ms = measure_pass_times(ctx.factory.run_for(ctx.pair.draft, B), chunks, replay_timer, repeats)
    ratio = PassRatio(pair=ctx.name, batch=B, target_ms=tuple(target_ms[k] for k in chunks),
                      draft_ms=tuple(draft_ms[k] for k in chunks), fast_version=ctx.fast_version)
    log.info("%s B=%d single-stage passes (%s fast path): draft %.2f ms, target %.2f ms (ratio %.3f)", ctx.name, B,
             ctx.fast_version, sum(ratio.draft_ms), sum(ratio.target_ms), ratio.ratio)
    return ratio


def _table_rows(table: dict[tuple[int, int], float]) -> list[list[float]]:
    return [[s, n, ms] for (s, n), ms in sorted(table.items())]


def _call_sample(ctx: PairContext, total_ms: float, fixed_ms: float, tables: tuple[dict, dict],
                 sdvar_rounds: int = 0) -> CallSample:
    """The passes of the latest call (its runs' pass logs) priced with the measured tables."""
    target_table, draft_table = tables
    pass_ms, draft_passes, stages_read = 0.0, 0, 0
    for run in ctx.factory.call_runs():
        is_target = run.model is ctx.pair.target
        table = target_table if is_target else draft_table
        for rec in run.pass_log:
            key = chunk_of_pass(run.model, rec.position, rec.length)
            if key not in table:
                raise ValueError(f"no measured {'target' if is_target else 'draft'} pass time for chunk {key}")
            pass_ms += table[key]
            if is_target:
                stages_read += key[1]
            else:
                draft_passes += 1
    return CallSample(total_ms=total_ms, pass_ms=pass_ms, fixed_ms=fixed_ms, draft_passes=draft_passes,
                      target_stages_read=stages_read, sdvar_rounds=sdvar_rounds)


# ---- the cost model -----------------------------------------------------------------------------
def estimate_overheads(target_calls: Sequence[CallSample], sdvar_calls: Sequence[CallSample]) -> OverheadEstimate:
    """Split the time outside the passes into a per-stage and a per-round part.

    Target-alone calls give the per-stage part: ``step = other / stages read`` (median over the
    calls; ``other = total - passes - fixed``). A draft proposal is charged one ``step`` too (it
    samples and updates ``f_hat`` like a target step), and so is every stage of a verify chunk (its
    input, guidance and probabilities). What an SDVAR call spends beyond that, per drafting round,
    is ``(other - step * (draft passes + target stages read)) / drafting rounds``; ``round`` is its
    median over the SDVAR calls that drafted (a median, so one slow first call does not set it).
    """
    if not target_calls:
        raise ValueError("estimate_overheads needs at least one target-alone call")
    per_step = []
    for c in target_calls:
        steps = c.target_stages_read + c.draft_passes
        if steps < 1:
            raise ValueError(f"a target-alone call must read stages, got {c}")
        per_step.append(c.other_ms / steps)
    step = max(0.0, statistics.median(per_step))
    per_round = [(c.other_ms - step * (c.draft_passes + c.target_stages_read)) / c.sdvar_rounds
                 for c in sdvar_calls if c.sdvar_rounds > 0]
    raw = statistics.median(per_round) if per_round else 0.0
    return OverheadEstimate(step_ms=step, round_ms=max(0.0, raw), round_ms_raw=raw, target_calls=len(target_calls),
                            sdvar_calls=len(sdvar_calls))


def calibrated_costs(target_pass_ms: dict[tuple[int, int], float], draft_pass_ms: dict[tuple[int, int], float],
                     overheads: OverheadEstimate) -> TableCost:
    """The rule's cost model: measured pass times plus the host/device work that goes with them.

    A target chunk of ``n`` stages costs its pass + ``n * step`` (so a single stage costs what a
    target step costs), a draft chunk its pass + ``step`` (one proposal), a round ``round`` more.
    With these, :class:`AdaptiveGamma`'s expected saving is the expected time saved by the round
    (the step overhead of every stage it commits is saved too).
    """
    step = overheads.step_ms
    return TableCost(
        target_times={k: t + k[1] * step for k, t in target_pass_ms.items()},
        draft_times={k: t + step for k, t in draft_pass_ms.items()},
        round_overhead=overheads.round_ms,
    )


# ---- orchestration ------------------------------------------------------------------------------
def calibrate_batch(ctx: PairContext, B: int, config: BenchConfig, decode_ms: float,
                    replay_timer: ReplayTimer = median_event_ms, call_timer: CallTimer = cuda_event_ms) -> BatchCalibration:
    """Measure, for batch ``B``, every target and draft chunk the calibrated rule may use, each run's
    ``begin`` and ``config.calibration_calls`` target-alone calls (their time outside the passes)."""
    t0 = time.perf_counter()
    draft, target = ctx.pair.draft, ctx.pair.target
    S = target.num_stages
    target_chunks, draft_chunks = BENCH_ONLY_ROWS[CALIBRATED].chunks(S)
    target_run = ctx.factory.run_for(target, B)
    draft_run = ctx.factory.run_for(draft, B)
    reps = config.calibration_replays
    target_ms = measure_pass_times(target_run, target_chunks, replay_timer, reps)
    draft_ms = measure_pass_times(draft_run, draft_chunks, replay_timer, reps)
    labels = torch.zeros(B, dtype=torch.long, device=target.device)
    begin_target = float(replay_timer(lambda: target_run.begin(labels), reps, 1))
    begin_draft = float(replay_timer(lambda: draft_run.begin(labels), reps, 1))
    tables = (target_ms, draft_ms)
    call = _warmed(ctx, method_call(ctx, bench_row("target"), None, B, config.sampling), 20_000)
    samples = []
    for i in range(config.calibration_calls):
        _, ms = call_timer(lambda i=i: in_call_context(ctx, True, lambda: call(20_000 + i)))
        samples.append(_call_sample(ctx, ms, decode_ms + begin_target, tables))
    cal = BatchCalibration(batch=B, target_pass_ms=target_ms, draft_pass_ms=draft_ms, decode_ms=decode_ms,
                           begin_target_ms=begin_target, begin_draft_ms=begin_draft, target_calls=samples,
                           seconds=time.perf_counter() - t0)
    log.info("%s B=%d calibration: %d target and %d draft chunks timed; single-stage passes target %.2f ms, "
             "draft %.2f ms (sums); begin %.3f / %.3f ms; target-alone calls %s ms (%.1f s)", ctx.name, B,
             len(target_ms), len(draft_ms), sum(target_ms[(s, 1)] for s in range(S)),
             sum(draft_ms[(s, 1)] for s in range(S)), begin_target, begin_draft,
             [round(c.total_ms, 2) for c in samples], cal.seconds)
    return cal


def calibrate_scenario(ctx: PairContext, B: int, scenario: Scenario, config: BenchConfig, batch_cal: BatchCalibration,
                       call_timer: CallTimer = cuda_event_ms) -> tuple[AdaptiveCalibration, AdaptiveGamma]:
    """The calibrated :class:`AdaptiveGamma` of one (batch, scenario) row, and what it was built from.

    ``config.calibration_calls`` SDVAR calls of the scenario (alternating :data:`CALIBRATION_RULES`)
    give the per-round overhead (:func:`estimate_overheads`) and the stage acceptance. The prior is
    the measured stage acceptance for the method's own policy (stages never judged take the nearest
    judged stage's value) and the scenario's own profile for a
    :class:`~sdvar_lib.bench.scenarios.ScenarioPolicy` (what the measurement converges to). A plan that
    drafts is then checked: ``config.calibration_calls + 1`` calls with it, interleaved with as many of the
    target alone; if its median is slower, the row gets a plan that declines every stage
    (:func:`declining`), which runs the target's own stage program, so the row is never slower than the
    target alone by more than the noise of that check.
    """
    t0 = time.perf_counter()
    row = BENCH_ONLY_ROWS[CALIBRATED]
    S = ctx.pair.target.num_stages
    tables = (batch_cal.target_pass_ms, batch_cal.draft_pass_ms)
    fixed = batch_cal.decode_ms + batch_cal.begin_target_ms + batch_cal.begin_draft_ms
    calls = [_warmed(ctx, method_call(ctx, row, scenario, B, config.sampling, rule=rule), 30_000)
             for rule in CALIBRATION_RULES[:config.calibration_calls]]
    stats, samples = [], []
    for i in range(config.calibration_calls):
        call = calls[i % len(calls)]
        out, ms = call_timer(lambda call=call, i=i: in_call_context(ctx, True, lambda: call(30_000 + i)))
        stats.append(out.stats)
        rounds = sum(1 for g in out.stats.gamma_per_round if g > 0)
        samples.append(_call_sample(ctx, ms, fixed, tables, sdvar_rounds=rounds))
    overheads = estimate_overheads(batch_cal.target_calls, samples)
    measured = pooled_stage_acceptance(stats)
    profile = scenario_stage_acceptance(scenario.policy, B)
    if profile is not None:
        priors, source = profile, "scenario profile"
    elif any(v is not None for v in measured):
        priors, source = fill_missing_stages(measured), f"measured ({len(stats)} calls)"
    else:
        priors, source = (0.0,) * S, "none judged (0)"
    rule = AdaptiveGamma(max_gamma=row.method.gamma.max_gamma, prior_acceptance=tuple(priors),
                         costs=calibrated_costs(batch_cal.target_pass_ms, batch_cal.draft_pass_ms, overheads))
    dispatch, check_rule, check_target = ("target alone" if plan_never_drafts(rule, S) else "sdvar"), [], []
    if dispatch == "sdvar":  # the plan drafts: keep it only if it beats the target alone on paired calls
        check_rule, check_target = _check_rule(ctx, B, scenario, config, rule, call_timer)
        if statistics.median(check_rule) > statistics.median(check_target):
            rule = declining(rule, S)
            dispatch = "target alone (the plan lost its check)"
    cal = AdaptiveCalibration(
        pair=ctx.name, batch=B, scenario=scenario.describe(row.method), prior_source=source, priors=list(priors),
        measured_stage_acceptance=measured, step_overhead_ms=overheads.step_ms, round_overhead_ms=overheads.round_ms,
        round_overhead_raw_ms=overheads.round_ms_raw, fixed_ms=fixed, target_pass_ms=_table_rows(batch_cal.target_pass_ms),
        draft_pass_ms=_table_rows(batch_cal.draft_pass_ms), target_call_ms=[c.total_ms for c in batch_cal.target_calls],
        sdvar_call_ms=[c.total_ms for c in samples], seconds=batch_cal.seconds + time.perf_counter() - t0,
        dispatch=dispatch, check_rule_ms=check_rule, check_target_ms=check_target,
    )
    log.info("%s B=%d %s: priors %s (%s); step overhead %.3f ms, round overhead %.3f ms (raw %.3f); "
             "calibration calls %s ms; runs as %s", ctx.name, B, cal.scenario, [round(p, 3) for p in priors], source,
             overheads.step_ms, overheads.round_ms, overheads.round_ms_raw, [round(c.total_ms, 2) for c in samples],
             cal.dispatch)
    return cal, rule


def declining(rule: AdaptiveGamma, num_stages: int) -> AdaptiveGamma:
    """``rule`` made to decline every stage: no acceptance expected, and priced with unit costs (``UniformCost``:
    a round costs a target pass and more, a committed stage saves one), not with the measured ones, which host
    timings on a busy CPU can make price a round below the step it replaces. A call with it is the target-alone
    call, the target's own stage program (:func:`~sdvar_lib.sdvar.gamma.plan_never_drafts`)."""
    never = replace(rule, prior_acceptance=0.0, costs=UniformCost(), max_loss=None)
    if not plan_never_drafts(never, num_stages):
        raise RuntimeError("a rule expecting no acceptance drafts at unit costs")  # a broken rule, not a measurement
    return never


def _warmed(ctx: PairContext, call: Callable[[int], object], seed: int) -> Callable[[int], object]:
    """``call`` after one untimed run of it (seed ``seed - 1``): a call's first run builds what its shapes need (kernel
    compiles, CUDA-graph captures, a fresh plan's programs), hundreds of ms that a timed call must not hold. On an H200
    at batch 1 a cold target-alone call took 250 ms beside 23.5 ms warm; timed, it set the step overhead to 11.5 ms,
    which priced every round out: the calibrated rule declined to draft even where every proposal is accepted."""
    in_call_context(ctx, True, lambda: call(seed - 1))
    return call


def _check_rule(ctx: PairContext, B: int, scenario: Scenario, config: BenchConfig, rule: AdaptiveGamma,
                call_timer: CallTimer) -> tuple[list[float], list[float]]:
    """``config.calibration_calls + 1`` calls of the calibrated row with ``rule`` and as many of the target alone,
    interleaved (the order alternates): their times (ms)."""
    rule_call = _warmed(ctx, method_call(ctx, BENCH_ONLY_ROWS[CALIBRATED], scenario, B, config.sampling, rule=rule), 60_000)
    target_call = _warmed(ctx, method_call(ctx, bench_row("target"), None, B, config.sampling), 60_000)
    rule_ms, target_ms = [], []
    for i in range(config.calibration_calls + 1):
        for which in (("rule", "target") if i % 2 == 0 else ("target", "rule")):
            call = rule_call if which == "rule" else target_call
            _, ms = call_timer(lambda call=call, i=i: in_call_context(ctx, True, lambda: call(60_000 + i)))
            (rule_ms if which == "rule" else target_ms).append(ms)
    return rule_ms, target_ms
