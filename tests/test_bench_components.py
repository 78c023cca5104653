"""What the benchmark measures beside its rows (the former scripts/perf_v2.py): the first fast path's ``target_v1``
row, the pieces of a call alone (``--components``), the decode profile; on the CPU with host timers and the tiny
pair (their plumbing, not their numbers), and the device script's benchmark commands."""

from __future__ import annotations

import functools
import json
import re
import shlex
from pathlib import Path

import pytest
import torch

from sdvar_lib.bench import (
    COMPONENTS,
    TARGET_V1,
    BatchComponents,
    BenchConfig,
    CallTimeline,
    Ceilings,
    DecodeComparison,
    DecodeProfile,
    DecodeTiming,
    HostOp,
    KernelTime,
    PairContext,
    SamplingTiming,
    bench_row,
    build_parser,
    call_timeline,
    compare_decodes,
    config_from_args,
    decode_cost,
    format_components,
    format_profiles,
    host_call_ms,
    host_profile,
    measure_components,
    median_host_ms,
    run_bench,
    run_order,
    time_sampling,
    timeline_from_intervals,
    write_report,
)
from sdvar_lib.bench import core as core_module
from sdvar_lib.fast.config import FastConfig
from sdvar_lib.fast.factory import FastRunFactory
from sdvar_lib.models.presets import ModelPair
from sdvar_lib.models.sampling import SamplingConfig

ROOT = Path(__file__).resolve().parents[1]
CEIL = Ceilings(1e12, 1e14)






@pytest.fixture
def pair(tiny_pair):
    vae, draft, target = tiny_pair
    return ModelPair(vae, draft, target, "tiny")


# ---- the rows --------------------------------------------------------------------------------------
def test_target_v1_is_the_target_on_the_first_fast_path():
    row = bench_row(TARGET_V1)
    assert row.first_version and row.method.name == "target" and not row.eager and not row.sdvar
    assert not bench_row("target").first_version
    order = [r.name for r in run_order(bench_row(n) for n in ("exact_g2", "target", TARGET_V1, "draft", "eager_target"))]
    assert order == ["eager_target", TARGET_V1, "draft", "target", "exact_g2"]  # each fast path's runs built once
    assert BenchConfig(methods=("target", TARGET_V1)).methods == ("target", TARGET_V1)


# ---- the components --------------------------------------------------------------------------------
def test_decode_comparison(pair):
    got = compare_decodes(pair, 2, CEIL, repeats=1, replay_timer=median_host_ms)
    cost = decode_cost(pair.vae, 2)
    assert got.reference_ms > 0 and got.fast_ms > 0
    assert got.bound_ms == pytest.approx(1e3 * (cost.bytes / 1e12 + cost.flops / 1e14))
    assert (got.gflop, got.gbytes) == (pytest.approx(cost.flops / 1e9), pytest.approx(cost.bytes / 1e9))
    assert got.rel_diff == 0.0  # on the CPU the fast decode is the reference decode
    assert "fhat_to_img" not in vars(pair.vae)  # both graphed decodes were uninstalled


def test_sampling_timing_on_the_cpu(pair):
    sampling = SamplingConfig(cfg=1.5, top_k=10, top_p=0.9)
    got = time_sampling(pair, 2, sampling, repeats=1, replay_timer=median_host_ms)
    last = pair.target.num_stages - 1
    assert (got.stage, got.tokens_per_image) == (last, pair.target.patch_nums[last] ** 2)
    assert got.torch_ms > 0 and got.fused_ms is None and got.same_tokens is None  # no fused sampler on the CPU
    assert time_sampling(pair, 1, sampling, 1, median_host_ms, stage=0).tokens_per_image == 1


def test_host_profile_lists_the_operators_of_one_call():
    x = torch.randn(64, 64)
    ops = host_profile(lambda: (x @ x).relu().sum(), top=5)
    assert 0 < len(ops) <= 5 and all(isinstance(op, HostOp) for op in ops)
    assert any("matmul" in op.name or "mm" in op.name for op in ops)
    assert ops == sorted(ops, key=lambda op: -op.self_cpu_ms)


def test_timeline_from_intervals_merges_clips_and_finds_the_gaps():
    # a call from 1000 to 11000 us; activities overlap (2000-3000 and 2500-3500), one starts before the call and
    # one ends after it (clipped), one lies outside it (dropped)
    intervals = [(2500, 3500), (2000, 3000), (900, 1200), (6000, 6500), (10500, 11500), (12000, 13000)]
    t = timeline_from_intervals(1000, 11000, intervals, top=2)
    assert t == CallTimeline(wall_ms=10.0, gpu_busy_ms=0.2 + 1.5 + 0.5 + 0.5, gpu_activities=5, lead_ms=0.0,
                             tail_ms=0.0, idle_ms=0.8 + 2.5 + 4.0, gaps=((5.5, 4.0), (2.5, 2.5)))
    late = timeline_from_intervals(0, 10000, [(3000, 4000), (5000, 9000)])
    assert (late.lead_ms, late.tail_ms, late.idle_ms, late.gaps) == (3.0, 1.0, 1.0, ((4.0, 1.0),))
    assert timeline_from_intervals(0, 5000, []) == CallTimeline(5.0, 0.0, 0, 5.0, 0.0, 0.0)
    with pytest.raises(ValueError, match="ends after it starts"):
        timeline_from_intervals(10, 5, [])


def test_call_timeline_of_a_cpu_call():
    x = torch.randn(128, 128)
    t = call_timeline(lambda: [(x @ x).relu() for _ in range(20)])
    assert t.wall_ms > 0 and t.lead_ms == t.wall_ms  # no GPU here: nothing runs on it
    assert (t.gpu_busy_ms, t.gpu_activities, t.gaps) == (0.0, 0, ())


def test_measure_components_of_a_pair(pair):
    ctx = PairContext.for_pair("tiny", pair, FastRunFactory(FastConfig(use_cuda_graphs=False)))
    sampling = SamplingConfig(cfg=1.5, top_k=0, top_p=0.0)
    got = measure_components(ctx, 2, ("sampling", "host", "timeline"), sampling, CEIL, 1, replay_timer=median_host_ms)
    assert (got.pair, got.batch, got.decode) == ("tiny", 2, None)
    assert got.sampling.torch_ms > 0 and got.host and got.host_method == "target"
    assert got.timeline.wall_ms > 0 and got.timeline.gpu_activities == 0
    assert [run.model for run in ctx.factory.call_runs()] == [pair.target]  # the host profile ran the target row


def test_format_components():
    comps = [BatchComponents("d16->d30", 1, decode=DecodeComparison(6.7, 2.64, 0.64, 394.0, 0.62, 1.2e-2),
                             sampling=SamplingTiming(9, 256, 0.887, 0.227, 1.0),
                             host=[HostOp("cudaGraphLaunch", 2.5, 10)],
                             timeline=CallTimeline(31.0, 24.5, 40, 3.2, 0.4, 2.9, ((12.0, 1.5), (20.1, 0.7))))]
    text = format_components(comps)
    assert ("One `target` call at batch 1 on the GPU's clock: 31.00 ms, the GPU busy 24.50 ms (40 activities), "
            "3.20 ms before its first activity, 0.40 ms after its last, 2.90 ms idle in between; largest gaps: "
            "1.50 ms at 12.00, 0.70 ms at 20.10.") in text
    assert "| 1 | 6.70 | 2.64 | 0.64 | 394 | 0.62 | 1.2e-02 |" in text
    assert "Sampling stage 9 (256 tokens per image)" in text and "| 1 | 0.887 | 0.227 | 1.0000 |" in text
    assert "Host time of one `target` call at batch 1" in text and "| `cudaGraphLaunch` | 2.50 | 10 |" in text
    cpu = [BatchComponents("tiny", 2, sampling=SamplingTiming(3, 16, 0.5))]
    assert "| 2 | 0.500 | - | - |" in format_components(cpu) and "VQVAE" not in format_components(cpu)


def test_format_decode_profiles():
    text = format_profiles([], [DecodeProfile(batch=32, kernel_sum_ms=38.6, kernels=120, top=[KernelTime("conv", 900.0, 30)])])
    assert "fast VQVAE decode, batch 32: 120 kernels summing to 38.600 ms" in text and "| `conv` | 900.0 | 30 |" in text


# ---- the command line ------------------------------------------------------------------------------
def test_cli_options_of_the_former_perf_script():
    args = build_parser().parse_args(["--methods", "eager_target,target_v1,target", "--components",
                                      "decode,sampling,host,timeline",
                                      "--profile-decode", "--profile-stages", "0,9"])
    config = config_from_args(args)
    assert config.components == COMPONENTS and config.profile_decode
    assert config.profile_stages == (0, 9)
    assert config.methods == ("eager_target", "target_v1", "target")
    one_of = "every component must be one of 'decode', 'sampling', 'host', 'timeline', got 'kernels'"
    with pytest.raises(ValueError, match=one_of):
        config_from_args(build_parser().parse_args(["--components", "decode,kernels"]))
    with pytest.raises(ValueError, match="components must not repeat"):
        BenchConfig(components=("host", "host"))


def _device_script_bench_argv() -> list[list[str]]:
    text = (ROOT / "scripts" / "device_perf_v2.sh").read_text().replace("\\\n", " ").replace("$OUT", "/tmp/out")
    commands = []
    for line in text.splitlines():
        match = re.search(r"-m sdvar_lib\.bench (.*?)(?:2>&1|\||$)", line)
        if match and not line.lstrip().startswith("#"):
            commands.append(shlex.split(match.group(1)))
    return commands


def test_the_device_script_runs_the_bench_with_valid_arguments():
    commands = _device_script_bench_argv()
    assert len(commands) == 2, commands
    configs = [config_from_args(build_parser().parse_args(argv)) for argv in commands]
    perf, bench = configs
    assert TARGET_V1 in perf.methods and perf.components == COMPONENTS and perf.profile_decode
    assert "exact_calibrated" in bench.methods


# ---- a whole run ----------------------------------------------------------------------------------
def test_run_bench_with_the_first_fast_path_and_components(tiny_pair, monkeypatch, tmp_path):
    vae, draft, target = tiny_pair
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "host stand-in")
    for name in ("synchronize", "reset_peak_memory_stats", "empty_cache"):
        monkeypatch.setattr(torch.cuda, name, lambda *a, **k: None)
    for name in ("max_memory_allocated", "max_memory_reserved"):
        monkeypatch.setattr(torch.cuda, name, lambda *a, **k: 0)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", torch.backends.cudnn.benchmark)
    monkeypatch.setattr(core_module, "measure_ceilings", lambda device: CEIL)
    monkeypatch.setattr(core_module, "measure_decode", lambda model, B, graphed=None: DecodeTiming(B, 0.5, 0.25))
    monkeypatch.setattr(core_module, "build_pair_bf16", lambda d, t, device: ModelPair(vae, draft, target, "tiny"))
    monkeypatch.setattr(core_module, "cuda_event_ms", host_call_ms)
    monkeypatch.setattr(core_module, "measure_pass_ratio", functools.partial(
        core_module.measure_pass_ratio, replay_timer=median_host_ms))
    monkeypatch.setattr(core_module, "measure_components", functools.partial(
        core_module.measure_components, replay_timer=median_host_ms))
    seen = []
    real_bench_method = core_module.bench_method

    def spy(ctx, row, *args, **kwargs):
        seen.append((row.name, ctx.fast_version, ctx.factory.config, ctx.decoder))
        return real_bench_method(ctx, row, *args, **kwargs)

    monkeypatch.setattr(core_module, "bench_method", spy)
    config = BenchConfig(pairs=((16, 30),), batches=(2,), methods=("eager_target", "target", TARGET_V1, "exact_g2"),
                         scenarios=("all",), repeats=1, warmup=0, calibration_replays=1, top_k=0, top_p=0.0,
                         use_cuda_graphs=False, components=("decode", "sampling", "host"),
                         out=str(tmp_path))
    report = run_bench(config, "python -m sdvar_lib.bench (test)")
    assert [r.method for r in report.rows] == ["eager_target", TARGET_V1, "target", "exact_g2"]
    first = FastConfig.first_version(use_cuda_graphs=False)
    assert [(name, version, cfg) for name, version, cfg, _ in seen[1:]] == [
        (TARGET_V1, "first", first), ("target", "current", FastConfig(use_cuda_graphs=False)),
        ("exact_g2", "current", FastConfig(use_cuda_graphs=False))]
    assert [decoder.fast for _, _, _, decoder in seen[1:]] == [False, True, True]  # v1 decodes the reference way
    by = {r.method: r for r in report.rows}
    assert by[TARGET_V1].target_passes == target.num_stages and by[TARGET_V1].speedup_vs_target > 0
    assert by[TARGET_V1].whole_bound_ms == pytest.approx(by["target"].whole_bound_ms)  # the same passes
    assert [(p.fast_version, p.batch) for p in report.pass_ratios] == [("current", 2), ("first", 2)]
    (comp,) = report.components
    assert (comp.pair, comp.batch) == ("d16->d30", 2) and comp.decode.fast_ms > 0 and comp.sampling.torch_ms > 0
    assert comp.host
    table = write_report(report, tmp_path)
    assert "| 2 | target_v1 | - |" in table and "| 2 (first fast path) |" in table
    assert "target_v1: the first version of the fast path" in table and "Host time of one `target` call" in table
    stored = json.loads((tmp_path / "bench.json").read_text())
    assert stored["components"][0]["sampling"]["stage"] == target.num_stages - 1
    assert stored["pass_ratios"][1]["fast_version"] == "first"
