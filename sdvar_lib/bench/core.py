"""Timing rows and whole runs: :func:`bench_method` times one row, :func:`run_bench` every configured row.

Official-size draft/target pairs with random bf16 weights are timed on the fast path
(:mod:`sdvar_lib.fast.run`) against the eager loop under bf16 autocast in the same run. Every
figure comes with two physical lower bounds at ceilings measured at the start of the run
(:mod:`sdvar_lib.bench.bounds`): its passes' and the whole call's, passes + sampling + VQVAE decode;
and with the one-off seconds (kernel checks, graph captures) its
preparation and warm-up cost. SDVAR rows run under each acceptance scenario
(:mod:`sdvar_lib.bench.scenarios`); the calibrated row is calibrated right before it is timed
(:mod:`sdvar_lib.bench.calibration`). Per batch the run also times the single-stage passes of draft
and target (their ratio; also on the first fast path when a ``target_v1`` row runs, which gets its own
run factory and the reference decode) and, when asked, the pieces of a call alone
(:mod:`sdvar_lib.bench.components`).
"""

from __future__ import annotations

import gc
import logging
import statistics
import time
from collections.abc import Callable
from dataclasses import replace

import torch

from sdvar_lib.bench.bounds import Ceilings, WholeCallBound, passes_bound_s, whole_call_bound
from sdvar_lib.bench.calibration import (
    AdaptiveCalibration,
    BatchCalibration,
    PassRatio,
    calibrate_batch,
    calibrate_scenario,
    measure_pass_ratio,
)
from sdvar_lib.bench.components import BatchComponents, measure_components
from sdvar_lib.bench.config import BenchConfig
from sdvar_lib.bench.methods import (
    BenchMethod,
    PairContext,
    build_pair_bf16,
    call_passes,
    in_call_context,
    method_call,
    prepare_pricing,
    prepare_rounds,
    prepare_runs,
)
from sdvar_lib.bench.report import BenchReport, BenchRow, add_speedups
from sdvar_lib.bench.scenarios import Scenario, make_scenarios
from sdvar_lib.bench.timing import DecodeTiming, cuda_event_ms, measure_ceilings, measure_decode, median_event_ms, percentile
from sdvar_lib.fast.config import FastConfig
from sdvar_lib.fast.factory import FastRunFactory
from sdvar_lib.fast.graphs import GraphedDecode
from sdvar_lib.sdvar.gamma import GammaRule
from sdvar_lib.sdvar.stats import SDVAROutput
from sdvar_lib.util.machine import MachineInfo

log = logging.getLogger(__name__)

__all__ = ["bench_method", "run_bench", "one_off_s", "beyond_passes_bound"]


def one_off_s(ctx: PairContext) -> float:
    """One-off seconds spent so far by the pair's fast runs and its graphed decode (kernel checks, captures)."""
    return ctx.factory.one_off_s + (ctx.decoder.capture_time_s if ctx.decoder is not None else 0.0)


def beyond_passes_bound(ctx: PairContext, B: int, ceilings: Ceilings) -> WholeCallBound:
    """What the whole-call bound adds to a call's passes bound (``passes_s`` 0): sampling every stage once and
    the VQVAE decode."""
    target = ctx.pair.target
    return whole_call_bound(0.0, ctx.pair.vae, target.V, B, [pn * pn for pn in target.patch_nums], ceilings)


def bench_method(ctx: PairContext, row: BenchMethod, scenario: Scenario | None, B: int, config: BenchConfig,
                 ceilings: Ceilings, rule: GammaRule | None = None) -> BenchRow:
    """Time ``config.repeats`` calls of ``row`` at batch ``B`` (after ``config.warmup``), with bounds and memory.

    ``one_off_s`` of the row: the one-off seconds its preparation and warm-up cost (0 when earlier rows
    had captured everything it runs).
    """
    one_off_before = one_off_s(ctx)
    prepare_runs(ctx, row, B)
    if row.sdvar and not row.adaptive:  # an adaptive rule's rounds (any gamma) are captured as they come
        prepare_rounds(ctx, row.for_call(scenario, rule), B, config.sampling)
    elif row.sdvar:  # or when the fast path prices it (exact_adaptive: every round program built and timed)
        prepare_pricing(ctx, row.for_call(scenario, rule), B, config.sampling)
    call = method_call(ctx, row, scenario, B, config.sampling, rule)
    graphed_decode = ctx.decoder is not None and not row.eager

    def timed(seed: int) -> object:
        return in_call_context(ctx, graphed_decode, lambda: call(seed))

    for i in range(config.warmup):
        timed(10_000 + i)
    torch.cuda.synchronize()
    row_one_off_s = one_off_s(ctx) - one_off_before
    beyond_passes_ms = beyond_passes_bound(ctx, B, ceilings).total_s * 1e3
    captures_before = sum(r.counters.captures for r in ctx.factory.runs())
    torch.cuda.reset_peak_memory_stats()
    times, t_passes, d_passes, bounds, acceptance = [], [], [], [], []
    last_passes: list = []
    gamma_per_round: list[int] | None = None
    for i in range(config.repeats):
        out, ms = cuda_event_ms(lambda i=i: timed(i))
        times.append(ms)
        passes = call_passes(ctx, row)
        bounds.append(sum(passes_bound_s(spec, 2 * B, p, ceilings) for spec, p in passes) * 1e3)
        if isinstance(out, SDVAROutput):
            t_passes.append(out.stats.target_passes)
            d_passes.append(out.stats.draft_passes)
            if out.stats.token_acceptance is not None:
                acceptance.append(out.stats.token_acceptance)
            if row.sdvar:
                gamma_per_round = list(out.stats.gamma_per_round)
        else:
            t_passes.append(len(passes[0][1]))
            d_passes.append(0)
        if not row.eager:
            last_passes = [(run, list(run.pass_log)) for run in ctx.factory.call_runs()]
    peak = torch.cuda.max_memory_allocated() / 2**30
    reserved = torch.cuda.max_memory_reserved() / 2**30
    captures = sum(r.counters.captures for r in ctx.factory.runs()) - captures_before
    passes_only = None
    if last_passes and config.passes_only_repeats > 0 and all(p.graphed for _, ps in last_passes for p in ps):
        passes_only = median_event_ms(lambda: [run.replay_passes(ps) for run, ps in last_passes],
                                      config.passes_only_repeats, warmup=1)
    median = statistics.median(times)
    bound = statistics.median(bounds)
    whole_bound = bound + beyond_passes_ms
    result = BenchRow(
        pair=ctx.name, batch=B, method=row.name,
        scenario=scenario.describe(row.method) if scenario is not None and row.sdvar else "-",
        latency_ms_median=median, latency_ms_p10=percentile(times, 10), latency_ms_p90=percentile(times, 90),
        latency_ms_min=min(times), latency_ms_max=max(times), images_per_s=B * 1e3 / median,
        target_passes=statistics.median(t_passes), draft_passes=statistics.median(d_passes), peak_mem_gib=peak,
        peak_reserved_gib=reserved, bound_ms=bound, ratio_to_bound=median / bound, passes_only_ms=passes_only,
        token_acceptance=statistics.median(acceptance) if acceptance else None, captures_during_timing=captures,
        gamma_per_round=gamma_per_round, whole_bound_ms=whole_bound, ratio_to_whole_bound=median / whole_bound,
        one_off_s=row_one_off_s,
    )
    log.info("%s B=%d %-18s %-26s %8.2f ms (p10 %.2f, p90 %.2f)  bound %.2f ms  x%.2f  whole-call bound %.2f ms  "
             "x%.2f  one-off %.1f s  T%g D%g  %.1f GiB%s%s",
             ctx.name, B, row.name, result.scenario, median, result.latency_ms_p10, result.latency_ms_p90, bound,
             result.ratio_to_bound, whole_bound, result.ratio_to_whole_bound, row_one_off_s, result.target_passes,
             result.draft_passes, peak,
             f"  passes-only {passes_only:.2f} ms" if passes_only is not None else "",
             f"  gamma/round {gamma_per_round}" if row.adaptive else "")
    return result


def _activate(contexts: list[PairContext], ctx: PairContext) -> PairContext:
    """``ctx``, with the runs of every other context (another fast path of the pair) released: peak memory is per row."""
    for other in contexts:
        if other is not ctx:
            other.factory.release()
    return ctx


def run_bench(config: BenchConfig, command: str = "", on_progress: Callable[[BenchReport], None] | None = None) -> BenchReport:
    """Time every configured pair, batch, row and scenario; ``on_progress`` sees the partial report."""
    if not torch.cuda.is_available():
        raise RuntimeError("the benchmark needs CUDA")
    device = torch.device("cuda")
    torch.backends.cudnn.benchmark = config.cudnn_benchmark
    machine = MachineInfo.current(device)
    log.info("GPU %s, driver %s, torch %s", machine.device_name, machine.driver, machine.torch_version)
    ceilings = measure_ceilings(device)
    log.info("ceilings: HBM %.2f TB/s, bf16 %.0f TFLOP/s", ceilings.hbm_bytes_per_s / 1e12, ceilings.bf16_flops_per_s / 1e12)
    rows: list[BenchRow] = []
    decode: list[DecodeTiming] = []
    calibrations: list[AdaptiveCalibration] = []
    pass_ratios: list[PassRatio] = []
    components: list[BatchComponents] = []
    bench_rows = config.rows

    def report() -> BenchReport:
        partial = BenchReport(machine=machine, command=command, ceilings=ceilings, decode=list(decode), rows=list(rows),
                              config=config, calibrations=list(calibrations), pass_ratios=list(pass_ratios),
                              components=list(components))
        add_speedups(partial.rows)
        return partial

    def progress() -> None:
        if on_progress is not None:
            on_progress(report())

    for draft_depth, target_depth in config.pairs:
        t0 = time.perf_counter()
        pair = build_pair_bf16(draft_depth, target_depth, device)
        name = f"d{draft_depth}->d{target_depth}"
        ctx = PairContext.for_pair(name, pair, FastRunFactory(FastConfig(use_cuda_graphs=config.use_cuda_graphs)))
        contexts = [ctx]
        if any(r.first_version for r in bench_rows):  # the first version of the fast path: its own runs and decode
            first = FastConfig.first_version(use_cuda_graphs=config.use_cuda_graphs)
            contexts.append(PairContext.for_pair(name, pair, FastRunFactory(first), fast_version="first"))
        log.info("built %s in %.1f s", pair.description, time.perf_counter() - t0)
        scenarios = make_scenarios(config.scenarios, pair.target.num_stages, config.acceptance_profile,
                                   config.per_sample_acceptance)

        for B in config.batches:
            # the eager baseline first, before any graph of this batch size holds memory
            for row in (r for r in bench_rows if r.eager):
                rows.append(bench_method(ctx, row, None, B, config, ceilings))
            for c in contexts:
                fast = config.fast_decode and c.fast_version == "current"  # the first version decodes the reference way
                c.decoder = GraphedDecode(pair.vae, fast=fast) if config.graph_decode else None
            decode_timing = next((d for d in decode if d.batch == B), None)  # the VQVAE is the same for every pair
            if decode_timing is None:
                decode_timing = replace(measure_decode(pair.target, B, graphed=ctx.decoder),
                                        bound_ms=beyond_passes_bound(ctx, B, ceilings).decode_s * 1e3)
                decode.append(decode_timing)
            decode_ms = decode_timing.graphed_ms if decode_timing.graphed_ms is not None else decode_timing.eager_ms
            batch_cal: BatchCalibration | None = None
            for row in (r for r in bench_rows if not r.eager):
                for scenario in scenarios if row.sdvar else [None]:
                    cal, rule = None, None
                    row_ctx = _activate(contexts, contexts[-1] if row.first_version else ctx)
                    if row.calibrated:
                        try:
                            prepare_runs(ctx, row, B)
                            if batch_cal is None:
                                batch_cal = calibrate_batch(ctx, B, config, decode_ms)
                            cal, rule = calibrate_scenario(ctx, B, scenario, config, batch_cal)
                        except Exception:  # one failed calibration must not cost the other rows
                            log.exception("%s B=%d: calibration of %s failed; row skipped", ctx.name, B, row.name)
                            continue
                    result = bench_method(row_ctx, row, scenario, B, config, ceilings, rule=rule)
                    rows.append(result)
                    if cal is not None:
                        cal.gamma_per_round = result.gamma_per_round
                        calibrations.append(cal)
                    progress()
            if any(not r.eager for r in bench_rows):
                for c in contexts:
                    _activate(contexts, c)
                    try:
                        pass_ratios.append(measure_pass_ratio(c, B, config.calibration_replays,
                                                              calibration=batch_cal if c is ctx else None))
                    except Exception:  # a failed measurement must not cost the rows already timed
                        log.exception("%s B=%d: the single-stage pass times (%s fast path) could not be measured",
                                      c.name, B, c.fast_version)
                    progress()
            if config.components:
                _activate(contexts, ctx)
                try:
                    components.append(measure_components(ctx, B, config.components, config.sampling, ceilings,
                                                         config.repeats))
                except Exception:  # a failed measurement must not cost the rows already timed
                    log.exception("%s B=%d: the components could not be measured", ctx.name, B)
                progress()
            for c in contexts:
                c.factory.release()
                c.decoder = None
            progress()
        del ctx, contexts, pair
        gc.collect()
        torch.cuda.empty_cache()
    return report()
