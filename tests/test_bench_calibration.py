"""Calibration of the benchmark's adaptive gamma (``exact_calibrated``), on the CPU.

The arithmetic (overhead split, cost folding, priors, profile mapping) is tested on numbers; the
orchestration runs end to end on the tiny pair with the fast path's eager programs and host timers
standing in for CUDA-graph replays and CUDA events.
"""

from __future__ import annotations

import json
from dataclasses import asdict, replace

import pytest
import torch

from sdvar_lib.bench import (
    BENCH_ONLY_ROWS,
    CALIBRATED,
    AdaptiveCalibration,
    BenchConfig,
    CallSample,
    OverheadEstimate,
    PairContext,
    Scenario,
    ScenarioPolicy,
    bench_row,
    build_parser,
    calibrate_batch,
    calibrate_scenario,
    calibrated_costs,
    chunk_of_pass,
    config_from_args,
    declining,
    decode_cost,
    estimate_overheads,
    fill_missing_stages,
    format_calibrations,
    host_call_ms,
    map_profile_to_stages,
    measure_pass_times,
    median_host_ms,
    method_call,
    scenario_stage_acceptance,
)
from sdvar_lib.fast.config import FastConfig
from sdvar_lib.fast.factory import FastRunFactory
from sdvar_lib.fast.run import FastRun, chunk_span
from sdvar_lib.models.presets import ModelPair
from sdvar_lib.models.sampling import SamplingConfig
from sdvar_lib.sdvar import baseline, pooled_stage_acceptance
from sdvar_lib.sdvar.acceptance import make_policy
from sdvar_lib.sdvar.decoder import SDVAR
from sdvar_lib.sdvar.gamma import AdaptiveGamma, RoundContext, RoundHistory, TableCost, UniformCost, plan_never_drafts
from sdvar_lib.sdvar.registry import stage_chunks
from sdvar_lib.sdvar.stats import SDVARStats

NO_GRAPHS = FastConfig(use_cuda_graphs=False)


def _tiny_context(tiny_pair) -> PairContext:
    """The bench's context of the tiny pair on eager fast runs (no CUDA graphs)."""
    vae, draft, target = tiny_pair
    factory = FastRunFactory(NO_GRAPHS)
    return PairContext(name="tiny", pair=ModelPair(vae=vae, draft=draft, target=target, description="tiny"),
                       sd=SDVAR(draft, target, run_factory=factory), factory=factory, specs={})


# ---- chunks and pass tables ---------------------------------------------------------------------
def test_chunk_of_pass_inverts_chunk_span(tiny_pair):
    _, _, target = tiny_pair
    S = target.num_stages
    for s, n in stage_chunks(S, S):
        assert chunk_of_pass(target, *chunk_span(target, s, n)) == (s, n)
    with pytest.raises(ValueError, match="whole stages"):
        chunk_of_pass(target, 1, 2)  # stage 1 has 4 tokens


def test_measure_pass_times_replays_every_chunk_alone(tiny_pair):
    _, _, target = tiny_pair
    run = FastRun(target, 2, NO_GRAPHS)
    run.begin(torch.tensor([0, 1]))
    chunks = stage_chunks(target.num_stages, 2)
    replayed, timer_calls = [], []
    real = run.replay_passes

    def spy(passes):
        replayed.append([(p.position, p.length) for p in passes])
        real(passes)

    run.replay_passes = spy

    def timer(fn, repeats, warmup):
        before = len(replayed)
        fn()
        timer_calls.append((repeats, warmup))
        return float(replayed[before][0][1])  # "time" = tokens of the replayed chunk

    table = measure_pass_times(run, chunks, timer, repeats=3, warmup=1)
    assert list(table) == chunks and timer_calls == [(3, 1)] * len(chunks)
    for (s, n), ms in table.items():
        assert replayed.pop(0) == [chunk_span(target, s, n)] and ms == chunk_span(target, s, n)[1]
    assert run.cache.length == 0 and set(run.programs) >= {chunk_span(target, s, n) for s, n in chunks}


# ---- overheads and costs ------------------------------------------------------------------------
def test_estimate_overheads_recovers_step_and_round_costs():
    S, step, rnd = 10, 0.4, 1.5
    target_calls = [CallSample(total_ms=50.0 + 6.5 + S * step + e, pass_ms=50.0, fixed_ms=6.5, target_stages_read=S)
                    for e in (-0.1, 0.0, 0.3)]
    # a gamma-1 call: 7 drafting rounds (verify chunks of 2 stages, the last of 1) and 1 target step
    sd = CallSample(total_ms=60.0 + 7.0 + step * (7 + 14) + 7 * rnd, pass_ms=60.0, fixed_ms=7.0, draft_passes=7,
                    target_stages_read=14, sdvar_rounds=7)
    est = estimate_overheads(target_calls, [sd])
    assert est.step_ms == pytest.approx(step) and est.round_ms == pytest.approx(rnd)
    assert est.target_calls == 3 and est.sdvar_calls == 1
    cheap = CallSample(total_ms=60.0 + 7.0, pass_ms=60.0, fixed_ms=7.0, draft_passes=7, target_stages_read=14,
                       sdvar_rounds=7)
    est = estimate_overheads(target_calls, [cheap])
    assert est.round_ms == 0.0 and est.round_ms_raw < 0
    assert estimate_overheads(target_calls, []).round_ms == 0.0
    slow_first = CallSample(total_ms=sd.total_ms + 70.0, pass_ms=60.0, fixed_ms=7.0, draft_passes=7,
                            target_stages_read=14, sdvar_rounds=7)
    assert estimate_overheads(target_calls, [slow_first, sd, sd]).round_ms == pytest.approx(rnd)  # a median
    with pytest.raises(ValueError, match="at least one target-alone call"):
        estimate_overheads([], [sd])


def _uniform_tables(S, t_stage, d_stage):
    target = {(s, n): t_stage * 1.1 for s, n in stage_chunks(S, 5)}  # a chunk costs a little more than one stage
    target.update({(s, 1): t_stage for s in range(S)})
    draft = {(s, n): d_stage for s, n in stage_chunks(S, S)}
    return target, draft


def test_calibrated_costs_make_the_rule_price_true_time():
    S, step, rnd = 10, 0.4, 1.0
    target, draft = _uniform_tables(S, 3.0, 1.3)
    costs = calibrated_costs(target, draft, OverheadEstimate(step, rnd, rnd, 2, 2))
    assert costs.target(2, 3) == pytest.approx(3.3 + 3 * step) and costs.target(4, 1) == pytest.approx(3.0 + step)
    assert costs.draft(0, 4) == pytest.approx(1.3 + step) and costs.round_overhead == rnd
    # all accepted, g = 2 from stage 0: the round commits 3 stages (bonus included)
    rule = AdaptiveGamma(prior_acceptance=1.0, costs=costs)
    ctx = RoundContext(c=0, num_stages=S, draft_stages_held=0, history=RoundHistory())
    target_alone = 3 * (3.0 + step)
    round_time = 2 * (1.3 + step) + (3.3 + 3 * step) + rnd
    assert rule.expected_saving(2, ctx, [1.0] * S) == pytest.approx(target_alone - round_time)
    # a large round overhead makes every round a loss: target steps only
    costly = calibrated_costs(target, draft, OverheadEstimate(step, 50.0, 50.0, 2, 2))
    assert AdaptiveGamma(prior_acceptance=1.0, costs=costly).next_gamma(ctx) == 0


# ---- acceptance priors --------------------------------------------------------------------------
def test_pooled_stage_acceptance_and_filling():
    a = SDVARStats(num_stages=4, proposed_stages_per_stage=[2, 1, 0, 0], accepted_stages_per_stage=[2, 0, 0, 0])
    b = SDVARStats(num_stages=4, proposed_stages_per_stage=[2, 1, 0, 1], accepted_stages_per_stage=[1, 1, 0, 0])
    pooled = pooled_stage_acceptance([a, b])
    assert pooled == [0.75, 0.5, None, 0.0]
    assert fill_missing_stages(pooled) == (0.75, 0.5, 0.25, 0.0)  # equally near stages 1 and 3: their mean
    assert fill_missing_stages([None, 0.9, None, None]) == (0.9, 0.9, 0.9, 0.9)
    with pytest.raises(ValueError):
        fill_missing_stages([None, None])
    assert pooled_stage_acceptance([]) == []  # the library's pooling: no calls, no stages


def test_scenario_stage_acceptance():
    profile = ScenarioPolicy(stage_probabilities=(1.0, 0.5))
    assert scenario_stage_acceptance(profile, 8) == (1.0, 0.5)
    per_sample = ScenarioPolicy(stage_probabilities=(1.0, 0.5), per_sample=True)
    assert scenario_stage_acceptance(per_sample, 3) == (1.0, 0.125)
    assert scenario_stage_acceptance(make_policy("exact"), 8) is None
    assert scenario_stage_acceptance(None, 8) is None  # the method's own policy


def test_map_profile_to_stages_by_relative_position():
    seven = (0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0)
    assert map_profile_to_stages(seven, 10) == (0, 1, 1, 2, 3, 3, 4, 5, 5, 6)
    assert map_profile_to_stages(tuple(range(10)), 10) == tuple(range(10))
    assert map_profile_to_stages((0.0, 1.0), 3) == (0.0, 0.0, 1.0)  # stage 1 of 3 sits halfway: the lower stage
    assert map_profile_to_stages((0.7,), 4) == (0.7,) * 4
    with pytest.raises(ValueError):
        map_profile_to_stages((), 10)


# ---- the calibrated row ---------------------------------------------------------------------------
def test_calibrated_row_captures_every_chunk_it_may_price():
    row = BENCH_ONLY_ROWS[CALIBRATED]
    assert row.calibrated and row.adaptive and row.sdvar and row.name == "exact_calibrated"
    target_chunks, draft_chunks = row.chunks(10)
    assert target_chunks == stage_chunks(10, 5) and draft_chunks == stage_chunks(10, 10)
    assert len(draft_chunks) == 55


# ---- end to end on the tiny pair ----------------------------------------------------------------




def test_pass_ratio_times_both_models_single_stage_passes(tiny_pair):
    from sdvar_lib.bench import measure_pass_ratio

    _, draft, target = tiny_pair
    S = target.num_stages
    ctx = _tiny_context(tiny_pair)
    factory = ctx.factory
    replayed: list[tuple[str, int, int]] = []
    for model, name in ((draft, "draft"), (target, "target")):
        run = factory.run_for(model, 2)  # the runs measure_pass_ratio will use, recording what they replay

        def recording(passes, run=run, name=name, replay=run.replay_passes):
            replayed.extend((name, p.position, p.length) for p in passes)
            return replay(passes)

        run.replay_passes = recording

    def fake_timer(fn, repeats, warmup):  # one replay, priced by which model ran how many tokens
        fn()
        name, _, length = replayed[-1]
        return (1.0 if name == "draft" else 4.0) * length

    ratio = measure_pass_ratio(ctx, 2, repeats=1, replay_timer=fake_timer)
    lengths = tuple(float(pn * pn) for pn in target.patch_nums)
    assert ratio.draft_ms == lengths and ratio.target_ms == tuple(4.0 * n for n in lengths)
    assert ratio.ratio == pytest.approx(0.25)
    starts = [sum(pn * pn for pn in target.patch_nums[:s]) for s in range(S)]
    assert replayed == [(m, b, int(n)) for m in ("target", "draft") for b, n in zip(starts, lengths)]


def test_calibration_end_to_end_on_the_tiny_pair(tiny_pair):
    target = tiny_pair[2]
    S, B = target.num_stages, 2
    ctx = _tiny_context(tiny_pair)
    config = BenchConfig(calibration_calls=2, calibration_replays=1, top_k=0, top_p=0.0)
    batch_cal = calibrate_batch(ctx, B, config, decode_ms=0.5, replay_timer=median_host_ms,
                                call_timer=host_call_ms)
    assert set(batch_cal.draft_pass_ms) == set(stage_chunks(S, S))
    assert set(batch_cal.target_pass_ms) == set(stage_chunks(S, 5))
    assert len(batch_cal.target_calls) == 2
    assert all(c.target_stages_read == S and c.draft_passes == 0 and c.pass_ms > 0 for c in batch_cal.target_calls)

    cals = []
    for scenario in (Scenario("exact"), Scenario("all", ScenarioPolicy.all_accepted(S))):
        cal, rule = calibrate_scenario(ctx, B, scenario, config, batch_cal, call_timer=host_call_ms)
        assert isinstance(rule, AdaptiveGamma) and len(rule.prior_acceptance) == S
        assert all(0.0 <= p <= 1.0 for p in cal.priors) and cal.round_overhead_ms >= 0
        assert len(cal.target_pass_ms) == len(batch_cal.target_pass_ms) and len(cal.sdvar_call_ms) == 2
        out = method_call(ctx, BENCH_ONLY_ROWS[CALIBRATED], scenario, B, config.sampling, rule=rule)(0)
        assert sum(out.stats.stages_committed_per_round) == S
        cal.gamma_per_round = list(out.stats.gamma_per_round)
        cals.append(cal)
    exact, all_accepted = cals
    assert exact.scenario == "exact (random weights)"
    assert exact.prior_source.startswith("measured") and all_accepted.prior_source == "scenario profile"
    assert all_accepted.priors == [1.0] * S
    # gamma 1 and the shifted schedule judge stage 0 in both calls and, between them, all but stage 1
    assert all_accepted.measured_stage_acceptance == [1.0, None, 1.0, 1.0]
    assert all_accepted.dispatch in ("sdvar", "target alone")

    text = format_calibrations(cals)
    assert "| tiny | 2 | all-accepted | 1,1,1,1 | scenario profile |" in text
    data = json.loads(json.dumps([asdict(c) for c in cals]))
    assert data[0]["target_pass_ms"][0][:2] == [0, 1]
    assert isinstance(cals[0], AdaptiveCalibration)


def test_calibration_times_no_call_that_prepares_its_programs(tiny_pair, monkeypatch):
    """A call's first run builds its programs (compiles, captures: 250 ms beside 23.5 ms warm for the target alone at
    batch 1 on an H200); every call the calibration times - the target-alone calls, the scenario's SDVAR calls of each
    calibration rule, the paired check of a plan - follows an untimed run of the same call. Here a call function's first
    run reads 1000 ms on the stand-in timer, the rest 1 ms."""
    import sdvar_lib.bench.calibration as calibration

    target = tiny_pair[2]
    S, B = target.num_stages, 2
    ctx = _tiny_context(tiny_pair)
    first_runs = []
    real = calibration.method_call

    def method_call(*args, **kwargs):
        call, runs = real(*args, **kwargs), []

        def counted(seed):
            if not runs:
                first_runs.append(seed)
            runs.append(seed)
            return call(seed)

        return counted

    def timer(fn):
        before = len(first_runs)
        out = fn()
        return out, (1000.0 if len(first_runs) > before else 1.0)

    monkeypatch.setattr(calibration, "method_call", method_call)
    config = BenchConfig(calibration_calls=3, calibration_replays=1, top_k=0, top_p=0.0)
    batch_cal = calibrate_batch(ctx, B, config, decode_ms=0.0, replay_timer=median_host_ms, call_timer=timer)
    assert [c.total_ms for c in batch_cal.target_calls] == [1.0] * 3
    scenario = Scenario("all", ScenarioPolicy.all_accepted(S))
    cal, rule = calibrate_scenario(ctx, B, scenario, config, batch_cal, call_timer=timer)
    assert cal.sdvar_call_ms == [1.0] * 3
    assert all(ms == 1.0 for ms in cal.check_rule_ms or []) and all(ms == 1.0 for ms in cal.check_target_ms or [])
    checked = calibration._check_rule(ctx, B, scenario, config, AdaptiveGamma(prior_acceptance=1.0), timer)
    assert checked == ([1.0] * 4, [1.0] * 4)
    assert len(first_runs) >= 1 + len(calibration.CALIBRATION_RULES) + 2  # every call function ran once untimed


def test_plan_never_drafts():
    S = 10
    target, draft = _uniform_tables(S, 3.0, 1.3)
    costs = calibrated_costs(target, draft, OverheadEstimate(0.4, 1.0, 1.0, 2, 2))
    assert plan_never_drafts(AdaptiveGamma(prior_acceptance=0.0, costs=costs), S)
    assert not plan_never_drafts(AdaptiveGamma(prior_acceptance=1.0, costs=costs), S)
    late = AdaptiveGamma(prior_acceptance=(0.0,) * 6 + (1.0,) * 4, costs=costs)  # drafting pays only late
    assert not plan_never_drafts(late, S)


def test_calibrated_row_needs_its_rule_and_runs_the_target_alone_when_it_never_drafts(tiny_pair):
    target = tiny_pair[2]
    S = target.num_stages
    ctx = _tiny_context(tiny_pair)
    factory = ctx.factory
    scenario = Scenario("exact")
    sampling = BenchConfig(top_k=0, top_p=0.0).sampling
    row = BENCH_ONLY_ROWS[CALIBRATED]
    with pytest.raises(ValueError, match="calibrated gamma rule"):
        method_call(ctx, row, scenario, 2, sampling)
    never = AdaptiveGamma(prior_acceptance=0.0)
    out = method_call(ctx, row, scenario, 2, sampling, rule=never)(0)
    # SDVAR.generate_parallel itself decodes a never-drafting plan with the target alone
    assert [run.model for run in factory.call_runs()] == [target]
    ref = baseline(ctx.sd, 2, None, g_seed=0, sampling=SamplingConfig(top_k=0))
    assert out.stats.draft_passes == 0 and out.stats.gamma_per_round == [0] * S and out.stats.target_passes == S
    assert all(torch.equal(a, b) for a, b in zip(out.tokens_per_stage, ref.tokens_per_stage))
    eager_prices = AdaptiveGamma(prior_acceptance=1.0, costs=UniformCost())  # (RunCost: the fast path's own prices)
    out = method_call(ctx, row, scenario, 2, sampling, rule=eager_prices)(0)
    assert any(out.stats.gamma_per_round) and out.stats.draft_passes > 0
    with pytest.raises(ValueError, match="own gamma"):
        method_call(ctx, bench_row("exact_g2"), scenario, 2, sampling, rule=never)


def test_cli_calibration_options():
    args = build_parser().parse_args(["--calibration-calls", "4", "--calibration-replays", "5"])
    config = config_from_args(args)
    assert config.calibration_calls == 4 and config.calibration_replays == 5
    with pytest.raises(ValueError, match="calibration_calls"):
        BenchConfig(calibration_calls=0)


def test_measure_acceptance_profile_script(tmp_path, tiny_pair, capsys):
    import importlib.util
    from pathlib import Path

    from sdvar_lib.models.presets import TINY_CONFIG

    vae, draft, target = tiny_pair
    config = {"vae": TINY_CONFIG["vae"], "target": TINY_CONFIG["var"], "draft": dict(TINY_CONFIG["var"], depth=1),
              "description": "tiny test pair"}
    (tmp_path / "config.json").write_text(json.dumps(config))
    for name, module in (("vae", vae), ("target", target), ("draft", draft)):
        torch.save(module.state_dict(), tmp_path / f"{name}.pth")
    path = Path(__file__).resolve().parents[1] / "scripts" / "measure_acceptance_profile.py"
    spec = importlib.util.spec_from_file_location("measure_acceptance_profile", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    assert script.main(["--folder", str(tmp_path), "--calls", "2", "--batch", "2", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "official stage -> bundled stage: 0->0, 1->0, 2->1" in out
    profile = out.strip().splitlines()[-1]
    assert profile.startswith("--acceptance-profile ")
    values = [float(v) for v in profile.split()[-1].split(",")]
    assert len(values) == 10 and all(0.0 <= v <= 1.0 for v in values)
    for bad in (["--calls", "0"], ["--gamma", "0"], ["--top-p", "2"]):
        with pytest.raises(SystemExit) as exc:
            script.main(["--folder", str(tmp_path / "missing"), *bad])  # refused before any model is loaded
        assert exc.value.code == 2


def test_run_bench_end_to_end_on_the_tiny_pair(tiny_pair, monkeypatch, tmp_path):
    """The whole run (rows, scenarios, calibration, partial reports) with host timers and the tiny pair."""
    import functools

    from sdvar_lib.bench import BenchReport, Ceilings, DecodeTiming, run_bench, write_report
    from sdvar_lib.bench import core as core_module

    vae, draft, target = tiny_pair
    S = target.num_stages
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "host stand-in")
    for name in ("synchronize", "reset_peak_memory_stats"):
        monkeypatch.setattr(torch.cuda, name, lambda *a, **k: None)
    for name in ("max_memory_allocated", "max_memory_reserved"):
        monkeypatch.setattr(torch.cuda, name, lambda *a, **k: 0)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", torch.backends.cudnn.benchmark)
    monkeypatch.setattr(core_module, "measure_ceilings", lambda device: Ceilings(1e12, 1e14))
    monkeypatch.setattr(core_module, "measure_decode", lambda model, B, graphed=None: DecodeTiming(B, 0.5, 0.25))
    monkeypatch.setattr(core_module, "build_pair_bf16", lambda d, t, device: ModelPair(vae, draft, target, "tiny"))
    monkeypatch.setattr(core_module, "cuda_event_ms", host_call_ms)
    monkeypatch.setattr(core_module, "calibrate_batch", functools.partial(
        core_module.calibrate_batch, replay_timer=median_host_ms, call_timer=host_call_ms))
    monkeypatch.setattr(core_module, "calibrate_scenario", functools.partial(
        core_module.calibrate_scenario, call_timer=host_call_ms))
    monkeypatch.setattr(core_module, "measure_pass_ratio", functools.partial(
        core_module.measure_pass_ratio, replay_timer=median_host_ms))
    config = BenchConfig(pairs=((16, 30),), batches=(2,), methods=("eager_target", "target", "sdvar_g2", CALIBRATED),
                         scenarios=("exact", "all"), repeats=2, warmup=0, calibration_calls=2, calibration_replays=1,
                         top_k=0, top_p=0.0, use_cuda_graphs=False, graph_decode=False, out=str(tmp_path))
    partials: list[BenchReport] = []

    def on_progress(partial):
        partials.append(partial)
        write_report(partial, tmp_path)

    report = run_bench(config, "python -m sdvar_lib.bench (test)", on_progress=on_progress)
    got = [(r.method, r.scenario) for r in report.rows]
    assert got == [("eager_target", "-"), ("target", "-"), ("exact_g2", "exact (random weights)"),
                   ("exact_g2", "all-accepted"), ("exact_calibrated", "exact (random weights)"),
                   ("exact_calibrated", "all-accepted")]
    assert [c.scenario for c in report.calibrations] == ["exact (random weights)", "all-accepted"]
    for cal, row in zip(report.calibrations, report.rows[4:]):
        assert row.gamma_per_round and cal.gamma_per_round == row.gamma_per_round
    assert report.rows[0].speedup_vs_eager == pytest.approx(1.0) and report.rows[1].speedup_vs_target == pytest.approx(1.0)
    assert report.machine.device_name == "host stand-in"
    cost = decode_cost(vae, 2)
    assert report.decode == [DecodeTiming(2, 0.5, 0.25, bound_ms=pytest.approx(1e3 * (cost.bytes / 1e12 + cost.flops / 1e14)))]
    # the batch was calibrated: its single-stage pass times are the calibration's, not timed again
    (ratio,) = report.pass_ratios
    cal = report.calibrations[0]
    assert (ratio.pair, ratio.batch) == ("d16->d30", 2)
    assert ratio.target_ms == tuple(ms for s, n, ms in cal.target_pass_ms if n == 1)
    assert ratio.draft_ms == tuple(ms for s, n, ms in cal.draft_pass_ms if n == 1) and len(ratio.draft_ms) == S
    assert ratio.ratio == pytest.approx(sum(ratio.draft_ms) / sum(ratio.target_ms))
    assert all(r.whole_bound_ms > r.bound_ms and r.one_off_s >= 0 for r in report.rows)
    assert len(partials) >= 4 and len(partials[0].rows) < len(report.rows)
    stored = json.loads((tmp_path / "bench.json").read_text())
    assert [r["method"] for r in stored["rows"]] == [m for m, _ in got]
    assert stored["config"]["methods"] == ["eager_target", "target", "exact_g2", "exact_calibrated"]
    assert "| 2 | exact_calibrated | all-accepted |" in (tmp_path / "bench.md").read_text()
    line = f"| 2 | {sum(ratio.draft_ms):.2f} | {sum(ratio.target_ms):.2f} | {ratio.ratio:.3f} |"
    assert line in (tmp_path / "bench.md").read_text()
    assert len(stored["pass_ratios"]) == 1 and stored["rows"][0]["whole_bound_ms"] > 0
    assert S == len(report.calibrations[1].priors)


def test_declining_never_drafts_whatever_the_prices():
    """A calibrated rule that lost its check runs the target's steps, even when its measured prices (host timings on
    a busy CPU) make a round look cheaper than the step it replaces."""
    S = 4
    times = {(s, n): (1.0 if n == 1 else 0.5) for s in range(S) for n in range(1, S + 1)}  # chunks "cheaper" than steps
    noisy = AdaptiveGamma(prior_acceptance=0.9, costs=TableCost(times, {k: 0.01 for k in times}))
    assert not plan_never_drafts(replace(noisy, prior_acceptance=0.0), S), "the prices do make drafting look free"
    assert plan_never_drafts(declining(noisy, S), S)


def test_a_rule_is_checked_and_planned_once_per_rule_object(tiny_pair, monkeypatch):
    """``generate_parallel`` checks and plans a frozen rule (every rule of ``sdvar.gamma``, the calibrated one too) once
    per rule object, not at every call (0.3 ms of host time per call put ``exact_calibrated`` behind the target alone at
    batch 1); a rule that is not a frozen dataclass is planned at every call, so a change between calls is seen; a rule
    that cannot serve the pair is refused at every call."""
    import sdvar_lib.sdvar.decoder as decoder
    from sdvar_lib.sdvar.gamma import GammaRule

    _, draft, target = tiny_pair
    sd = SDVAR(draft, target)
    S = sd.num_stages
    plans = []
    real = decoder.plan_never_drafts
    monkeypatch.setattr(decoder, "plan_never_drafts", lambda rule, n: plans.append(rule) or real(rule, n))
    sampling = SamplingConfig(top_k=1)
    never = AdaptiveGamma(prior_acceptance=0.0, costs=TableCost(*_uniform_tables(S, 3.0, 1.3)))
    for seed in range(3):
        out = sd.generate_parallel(2, [1, 2], seed, sampling, gamma=never)
        assert out.stats.draft_passes == 0
    assert plans == [never]

    class Switch(GammaRule):  # a mutable rule: drafts once switched on
        def __init__(self):
            self.on = False

        def next_gamma(self, ctx):
            return 1 if self.on else 0

    switch = Switch()
    assert sd.generate_parallel(2, [1, 2], 0, sampling, gamma=switch).stats.draft_passes == 0
    switch.on = True
    assert sd.generate_parallel(2, [1, 2], 0, sampling, gamma=switch).stats.draft_passes > 0
    short = AdaptiveGamma(prior_acceptance=(0.5,) * (S - 1), costs=UniformCost())
    for _ in range(2):
        with pytest.raises(ValueError, match="prior_acceptance"):
            sd.generate_parallel(2, [1, 2], 0, sampling, gamma=short)
