"""Issue 21's measurements on the CPU (their plumbing and structure, not their numbers): the when-SDVAR-pays sweep, the
decision rules against the target alone, paired timing, first calls, and ``scripts/device_perf_v3.py``.

The fast path's graph-less mode runs the programs a GPU captures; host timers stand in for CUDA events.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sdvar_lib import SDVAR, SamplingConfig
from sdvar_lib.bench import (
    ISSUE_PROFILE,
    BenchConfig,
    Ceilings,
    PairContext,
    Scenario,
    format_decisions,
    format_sweep,
    host_call_ms,
    map_profile_to_stages,
    measure_program_ratio,
    median_host_ms,
    sweep_profiles,
    sweep_when_sdvar_pays,
    time_decision_rules,
    time_first_calls,
    time_paired,
)
from sdvar_lib.fast.config import FastConfig
from sdvar_lib.fast.factory import FastRunFactory
from sdvar_lib.models.presets import ModelPair
from sdvar_lib.sdvar.gamma import GammaSchedule
from sdvar_lib.sdvar.handoff import baseline

ROOT = Path(__file__).resolve().parents[1]
NO_GRAPHS = FastConfig(use_cuda_graphs=False)
CEIL = Ceilings(1e12, 1e14)
SAMPLING = SamplingConfig(cfg=1.5, top_k=0)




@pytest.fixture
def ctx(tiny_pair):
    vae, draft, target = tiny_pair
    return PairContext.for_pair("tiny", ModelPair(vae, draft, target, "tiny"), FastRunFactory(NO_GRAPHS))


def test_profiles_of_the_sweep():
    profiles = sweep_profiles(10, (0.5,) + (0.0,) * 9)
    assert [p.name for p in profiles] == ["all", "measured", "issue", "none"]
    assert profiles[0].stage_probabilities == (1.0,) * 10 and profiles[3].stage_probabilities == (0.0,) * 10
    assert profiles[2].stage_probabilities == ISSUE_PROFILE
    assert [p.name for p in sweep_profiles(4)] == ["all", "issue", "none"]
    assert sweep_profiles(4)[1].stage_probabilities == map_profile_to_stages(ISSUE_PROFILE, 4)
    assert profiles[2].scenario().describe() == "issue[1,1,0.9,0.7,0.4,0.2,0.05,0,0,0]"
    with pytest.raises(ValueError, match="10 stages"):
        sweep_profiles(10, (1.0, 0.5))


def test_paired_timing_interleaves_and_records_each_calls_passes(ctx):
    order = []

    def fake_timer(fn):
        out = fn()
        order.append("method" if out == "m" else "target")
        return out, 2.0 if out == "m" else 4.0

    timing = time_paired(ctx, lambda seed: "m", lambda seed: "t", repeats=4, warmup=1, call_timer=fake_timer)
    assert order == ["target", "method", "method", "target"] * 2
    assert timing.method_ms == [2.0] * 4 and timing.target_ms == [4.0] * 4 and timing.speedup == 2.0
    assert timing.outputs == ["m"] * 4 and timing.captures_during_timing == 0


def test_the_sweep_table(ctx):
    S = ctx.pair.target.num_stages
    profiles = sweep_profiles(S, (0.5, 0.2, 0.0, 0.0))
    cells = sweep_when_sdvar_pays(ctx, 2, profiles, (1, 3), SAMPLING, CEIL, repeats=2, warmup=1, call_timer=host_call_ms)
    assert [(c.profile, c.gamma) for c in cells] == [(p.name, g) for g in (1, 3) for p in profiles]
    for c in cells:
        assert c.speedup == pytest.approx(c.target_ms / c.median_ms)
        assert c.bound_speedup == pytest.approx(c.target_whole_bound_ms / c.whole_bound_ms)
        assert c.ratio_to_whole_bound == pytest.approx(c.median_ms / c.whole_bound_ms)
        assert c.captures_during_timing == 0 and c.batch == 2 and c.pair == "tiny"
    by = {(c.profile, c.gamma): c for c in cells}
    # every proposal accepted: gamma 1 commits 2 stages per round (one proposal + the bonus), gamma 3 all 4 in one
    assert (by["all", 1].target_passes, by["all", 1].draft_passes, by["all", 1].rounds) == (2, 2, 2)
    assert (by["all", 3].target_passes, by["all", 3].draft_passes) == (1, 3)
    # none accepted: one target pass per stage, plus the draft's passes
    assert by["none", 1].target_passes == S and by["none", 3].target_passes == S
    assert by["all", 3].bound_speedup > by["all", 1].bound_speedup > 1 > by["none", 3].bound_speedup
    table = format_sweep(cells)
    assert "| profile | gamma | batch 2: measured (bound) | batch 2: x own bound |" in table
    assert table.count("\n| ") == 1 + 2 * len(profiles)  # header, then one row per (profile, gamma)
    assert "| all | 3 | " in table and "measured 0.5,0.2,0,0" in table


def test_the_decision_rules_against_the_target(ctx):
    S = ctx.pair.target.num_stages
    config = BenchConfig(repeats=2, warmup=1, top_k=0, top_p=0.0, calibration_calls=2, calibration_replays=1)
    scenarios = [Scenario("exact"), sweep_profiles(S)[0].scenario()]
    rows = time_decision_rules(ctx, 2, scenarios, config, 0.1, host_call_ms, median_host_ms)
    assert [(r.method, r.scenario) for r in rows] == [
        ("exact_calibrated", "exact (random weights)"), ("exact_adaptive", "exact (random weights)"),
        ("exact_calibrated", "all"), ("exact_adaptive", "all")]
    for r in rows:
        assert r.speedup == pytest.approx(r.target_ms / r.median_ms) and r.gamma_per_round
        assert r.dispatch in ("sdvar", "target alone")  # exact_adaptive: as the fast path priced it
        assert (r.dispatch == "target alone") == (r.draft_passes == 0) or r.method == "exact_calibrated"
        if r.dispatch == "target alone":
            assert r.gamma_per_round == [0] * S and (r.target_passes, r.draft_passes) == (S, 0)
    assert "| tiny | 2 | exact_calibrated | all |" in format_decisions(rows)


def test_a_rule_that_declines_runs_the_targets_own_program(tiny_pair):
    """Declining every stage is the target-alone call: the same stage program (one per call) and the same tokens; a
    rule that drafts at stage 0 and then declines runs the remaining stages as one target stage program too."""
    _, draft, target = tiny_pair
    S = target.num_stages
    factory = FastRunFactory(NO_GRAPHS)
    sd = SDVAR(draft, target, run_factory=factory)
    ref = baseline(sd, 2, [1, 2], 5, SAMPLING)
    (run,) = factory.call_runs()
    programs, replays = dict(run._stage_programs), run.counters.eager_passes
    never = GammaSchedule((0,) * S + (1,))  # never drafts in a call of S stages
    out = sd.generate_parallel(2, [1, 2], 5, SAMPLING, gamma=never)
    assert [t.tolist() for t in out.tokens_per_stage] == [t.tolist() for t in ref.tokens_per_stage]
    assert run._stage_programs == programs and run.counters.eager_passes == replays + 1
    assert out.stats.gamma_per_round == [0] * S
    once = sd.generate_parallel(2, [1, 2], 5, SAMPLING, gamma=GammaSchedule((1, 0)))
    d_run, t_run = factory.call_runs()
    assert once.stats.gamma_per_round == [1] + [0] * (S - once.stats.stages_committed_per_round[0])
    verify_and_rest = [p for p in t_run.pass_log]
    assert len(verify_and_rest) == 1 + S - once.stats.stages_committed_per_round[0]
    eager = SDVAR(draft, target).generate_parallel(2, [1, 2], 5, SAMPLING, gamma=GammaSchedule((1, 0)))
    assert [t.tolist() for t in once.tokens_per_stage] == [t.tolist() for t in eager.tokens_per_stage]


def test_first_calls_and_program_ratio(ctx):
    sd = ctx.sd
    calls = time_first_calls(sd, ("exact_g2", "target"), 2, SAMPLING)
    assert [(c.method, c.batch) for c in calls] == [("exact_g2", 2), ("target", 2)]
    assert all(c.first_s > 0 and c.second_s > 0 and c.captures == 0 for c in calls)  # no graphs on the CPU
    assert calls[0].preparation_s == pytest.approx(calls[0].first_s - calls[0].second_s)
    with pytest.raises(ValueError, match="FastRunFactory"):
        time_first_calls(SDVAR(ctx.pair.draft, ctx.pair.target), ("target",), 1, SAMPLING)
    draft, target = (ctx.factory.run_for(m, 2) for m in (ctx.pair.draft, ctx.pair.target))
    ratio = measure_program_ratio("tiny", draft, target, SAMPLING, 2, median_host_ms)
    assert ratio.draft_ms > 0 and ratio.target_ms > 0 and ratio.ratio == pytest.approx(ratio.draft_ms / ratio.target_ms)
    assert draft.cache.length == target.cache.length == 0



def test_compiled_kernels_counts_what_triton_s_cache_manager_wrote(tmp_path, monkeypatch):
    """The cache folder as Triton's own ``FileCacheManager`` lays it out (one hashed folder per compilation, the
    metadata group ``__grp__<kernel>.json`` in it): specialisations per kernel, most first."""
    from triton.runtime.cache import FileCacheManager

    from sdvar_lib.bench import compiled_kernels

    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path / "cache"))
    for key, name in (("k1", "_add_ln_modulate_kernel"), ("k2", "_add_ln_modulate_kernel"), ("k3", "_qk_norm_cache_kernel")):
        manager = FileCacheManager(key)
        metadata = manager.put("{}", f"{name}.json", binary=False)
        manager.put(b"\0", f"{name}.cubin")
        manager.put_group(f"{name}.json", {f"{name}.json": metadata})
    assert (tmp_path / "cache" / "k1").is_dir(), "Triton did not write where TRITON_CACHE_DIR points"
    assert compiled_kernels(tmp_path / "cache") == {"_add_ln_modulate_kernel": 2, "_qk_norm_cache_kernel": 1}
    assert compiled_kernels(tmp_path / "absent") == {}


@pytest.mark.no_cuda
@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_device_script_v3_refuses_without_cuda(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable, "OUT": str(tmp_path / "out"), "PYTHONPATH": str(ROOT)}
    for part in ("1", "2"):
        done = subprocess.run(["bash", str(ROOT / "scripts" / "device_perf_v3.sh")], cwd=ROOT, env={**env, "PART": part},
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 2 and "no CUDA GPU" in done.stderr and "SMOKE=1" in done.stderr
    done = subprocess.run(["bash", str(ROOT / "scripts" / "device_perf_v3.sh")], cwd=ROOT, env={**env, "PART": "3"},
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "PART must be 1 or 2" in done.stderr
    assert not (tmp_path / "out").exists()


def test_device_script_v3_smoke_run_writes_every_section(tmp_path):
    """Both parts with the tiny pair on the CPU: every section ends without error, JSON and markdown as they are read."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    part2_sections = ["measured_profile", "decisions", "adaptive_prices", "sweep"]
    for part, sections in ((1, ["rows", "oneoff", "profiles"]), (2, part2_sections)):
        done = subprocess.run([sys.executable, str(ROOT / "scripts" / "device_perf_v3.py"), "--smoke", "--part", str(part),
                               "--out", str(tmp_path), "--budget-s", "900"], cwd=ROOT, env=env, capture_output=True,
                              text=True, timeout=900)
        assert done.returncode == 0, done.stderr[-3000:]
        report = json.loads((tmp_path / f"v3_part{part}.json").read_text())
        assert list(report["sections"]) == sections and not report["errors"] and not report["skipped"]
        text = (tmp_path / f"v3_part{part}.md").read_text()
        assert all(f"## {s}" in text for s in sections)
    part1 = json.loads((tmp_path / "v3_part1.json").read_text())["sections"]
    assert {c["gamma"] for c in part1["rows"]["cells"]} == {2, 4} and part1["rows"]["pass_ratios"]
    assert set(part1["oneoff"]) == {"cold", "cold, compiled at first launch", "warm"}
    assert part1["oneoff"]["cold, compiled at first launch"]["compile_threads"] == 0
    assert part1["oneoff"]["cold"]["compile_threads"] >= 1
    assert [c["method"] for c in part1["oneoff"]["warm"]["calls"]] == ["exact_g2", "target", "exact_adaptive"]
    assert part1["oneoff"]["cold"]["compiled_kernels"] == {}  # the interpreter compiles nothing
    assert [t["call"] for t in part1["profiles"]["timelines"]] == ["target alone", "exact_g4, all accepted"]
    assert all(t["wall_ms"] > 0 and t["gpu_activities"] == 0 for t in part1["profiles"]["timelines"])  # no GPU here
    traces = part1["profiles"]["host_traces"]
    assert list(traces) == ["target alone", "exact_g4, all accepted"]
    assert all(t[0]["name"] == "Method.run" and t[-1]["name"] == "Method.run" for t in traces.values())
    assert any(m["name"] == "DeviceRound._round" for m in traces["exact_g4, all accepted"])
    part2 = json.loads((tmp_path / "v3_part2.json").read_text())["sections"]
    assert len(part2["measured_profile"]["profile"]) == 10
    assert {r["method"] for r in part2["decisions"]} == {"exact_calibrated", "exact_adaptive"}
    (prices,) = part2["adaptive_prices"]
    assert prices["batch"] == 1 and prices["priced"] and len(prices["step_ms"]) == 4 and len(prices["round_ms_from_0"]) == 4
    adaptive = [r for r in part2["decisions"] if r["method"] == "exact_adaptive"]
    expected = "target alone" if prices["never_drafts"] else "sdvar"
    assert all(r["dispatch"] == expected for r in adaptive if "exact" in r["scenario"])
    assert {(c["profile"], c["gamma"]) for c in part2["sweep"]} == {(p, g) for p in ("all", "issue", "none") for g in (1, 3)}
    assert sorted(os.listdir(tmp_path)) == ["v3_part1.json", "v3_part1.md", "v3_part2.json", "v3_part2.md"]


@pytest.mark.parametrize("rule_wins", [True, False])
def test_a_calibrated_plan_that_loses_its_check_declines_every_stage(ctx, rule_wins):
    from sdvar_lib.bench import BatchCalibration, CallSample, calibrate_scenario
    from sdvar_lib.sdvar.gamma import plan_never_drafts
    from sdvar_lib.sdvar.registry import stage_chunks

    S = ctx.pair.target.num_stages
    batch_cal = BatchCalibration(  # a cheap draft and chunks that cost what one stage costs: drafting pays on paper
        batch=2, target_pass_ms={k: 1.0 for k in stage_chunks(S, 5)}, draft_pass_ms={k: 0.1 for k in stage_chunks(S, S)},
        decode_ms=0.0, begin_target_ms=0.0, begin_draft_ms=0.0,
        target_calls=[CallSample(total_ms=S * 1.0, pass_ms=S * 1.0, fixed_ms=0.0, target_stages_read=S)] * 2, seconds=0.0)
    config = BenchConfig(calibration_calls=2, top_k=0, top_p=0.0)
    seen = []

    def timer(fn):
        out = fn()
        seen.append(out.stats.draft_passes)
        if len(seen) <= config.calibration_calls:  # the calibration's own calls: passes as priced, no overhead
            return out, out.stats.target_passes * 1.0 + out.stats.draft_passes * 0.1
        drafted = out.stats.draft_passes > 0
        return out, (5.0 if drafted == rule_wins else 10.0)

    cal, rule = calibrate_scenario(ctx, 2, sweep_profiles(S)[0].scenario(), config, batch_cal, call_timer=timer)
    assert len(cal.check_rule_ms) == len(cal.check_target_ms) == config.calibration_calls + 1
    assert len(seen) == 3 * config.calibration_calls + 2  # the check ran the plan and the target, interleaved
    if rule_wins:
        assert cal.dispatch == "sdvar" and not plan_never_drafts(rule, S)
    else:
        assert cal.dispatch == "target alone (the plan lost its check)" and plan_never_drafts(rule, S)
