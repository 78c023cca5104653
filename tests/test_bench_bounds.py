"""Physical-bound arithmetic of the GPU benchmark (passes, sampling, decode), the acceptance scenarios and the CLI (CPU only)."""

from __future__ import annotations

import json

import pytest
import torch

from sdvar_lib import SDVAR
from sdvar_lib.bench import (
    BenchConfig,
    BenchReport,
    BenchRow,
    Ceilings,
    DecodeCost,
    DecodeTiming,
    KernelTime,
    PassProfile,
    ScenarioPolicy,
    VarSpec,
    add_speedups,
    attended_keys,
    bench_row,
    bound_s,
    decode_cost,
    format_markdown,
    format_profiles,
    pass_bound_s,
    pass_bytes,
    pass_flops,
    pass_time_ratio,
    pass_weight_params,
    passes_bound_s,
    percentile,
    report_to_json,
    sampling_bytes,
    sequential_passes,
    total_params,
    whole_call_bound,
)
from sdvar_lib.fast.config import PassRecord
from sdvar_lib.models.presets import build_vae, build_var
from sdvar_lib.util.machine import MachineInfo


def _meta_counts(depth: int) -> tuple[int, int]:
    model = build_var(build_vae("meta"), depth, device="meta")
    per_pass = sum(p.numel() for n, p in model.named_parameters() if n.startswith(("blocks.", "head_nm.", "head.")))
    return per_pass, sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("depth", [16, 30])
def test_param_counts_match_the_official_architecture(depth):
    spec = VarSpec.official(depth)
    per_pass, total = _meta_counts(depth)
    assert pass_weight_params(spec) == per_pass
    assert total_params(spec) == total
    model = build_var(build_vae("meta"), depth, device="meta")
    assert VarSpec.from_model(model) == spec


def test_param_counts_match_tiny(tiny_pair):
    _, draft, target = tiny_pair
    for model in (draft, target):
        spec = VarSpec.from_model(model)
        assert total_params(spec) == sum(p.numel() for p in model.parameters())


def test_d30_weights_are_about_4_gb_in_bf16():
    spec = VarSpec.official(30)
    assert 1.95e9 < total_params(spec) < 2.1e9
    weight_bytes = pass_bytes(spec, rows=2, position=0, length=1) - 2 * 2 * 30 * 2 * 1920 * 2  # minus KV of one token
    assert weight_bytes == pytest.approx(pass_weight_params(spec) * 2)
    assert 3.9e9 < weight_bytes < 4.1e9


def test_flops_scale_with_tokens_and_rows():
    spec = VarSpec.official(16)
    last = spec.L - 256
    one = pass_flops(spec, rows=2, position=last, length=256)
    assert pass_flops(spec, rows=4, position=last, length=256) == pytest.approx(2 * one)
    # per-token matrices (AdaLN projections are per row) dominate; attention adds a little
    C = spec.width
    approx_linear = 2 * 2 * 256 * (spec.depth * (4 * C * C + 2 * C * spec.mlp_hidden) + C * spec.vocab)
    assert approx_linear < one < 1.3 * approx_linear
    small = pass_flops(spec, rows=2, position=0, length=1)
    assert one / small > 100


def test_chunked_pass_flops_equal_sequential_but_weights_are_read_once():
    spec = VarSpec.official(30)
    seq = sequential_passes(spec)
    chunk_pos, chunk_len = seq[5].position, sum(p.length for p in seq[5:9])
    flops_seq = sum(pass_flops(spec, 2, p.position, p.length) for p in seq[5:9])
    chunk_flops = pass_flops(spec, 2, chunk_pos, chunk_len)
    assert chunk_flops < flops_seq and chunk_flops == pytest.approx(flops_seq, rel=0.01)  # AdaLN is per pass
    bytes_seq = sum(pass_bytes(spec, 2, p.position, p.length) for p in seq[5:9])
    assert pass_bytes(spec, 2, chunk_pos, chunk_len) < bytes_seq / 3


def test_attended_keys_are_block_causal():
    spec = VarSpec.official(16)
    assert attended_keys(spec, 0, 1) == 1
    assert attended_keys(spec, 1, 4) == 4 * 5  # stage 1 sees stages 0 and 1
    assert attended_keys(spec, 0, 5) == 1 + 4 * 5
    with pytest.raises(ValueError, match="chunk"):
        attended_keys(spec, spec.L - 1, 2)


def test_bound_combines_bytes_and_flops():
    spec = VarSpec.official(30)
    ceil = Ceilings(hbm_bytes_per_s=3.0e12, bf16_flops_per_s=700e12)
    p = PassRecord(position=0, length=1, graphed=True)
    expected = pass_bytes(spec, 2, 0, 1) / 3.0e12 + pass_flops(spec, 2, 0, 1) / 700e12
    assert pass_bound_s(spec, 2, 0, 1, ceil) == pytest.approx(expected)
    target_alone = passes_bound_s(spec, 2, sequential_passes(spec), ceil)
    assert 10e-3 < target_alone < 20e-3  # the 12-15 ms for d30 at batch 1
    with pytest.raises(ValueError):
        Ceilings(hbm_bytes_per_s=0.0, bf16_flops_per_s=1.0)
    assert passes_bound_s(spec, 2, [p], ceil) == pytest.approx(expected)


def test_decode_flops_equal_pytorch_flop_counter(tiny_pair):
    vae = tiny_pair[0]
    from torch.utils.flop_counter import FlopCounterMode  # imports Triton: not at collection (test_fast_kernels.py)

    with FlopCounterMode(display=False) as counter:
        vae.fhat_to_img(torch.randn(2, vae.Cvae, 4, 4))
    cost = decode_cost(vae, 2)
    assert cost.flops == counter.get_total_flops()
    official = build_vae("meta")
    with FlopCounterMode(display=False) as counter:
        official.fhat_to_img(torch.empty(1, 32, 16, 16, device="meta"))
    one, many = decode_cost(official, 1), decode_cost(official, 8)
    assert one.flops == counter.get_total_flops()
    assert many.flops == 8 * one.flops
    weights = sum(p.numel() for m in (official.post_quant_conv, official.decoder) for p in m.parameters()) * 2
    assert weights < one.bytes and many.bytes - weights == pytest.approx(8 * (one.bytes - weights))
    assert decode_cost(official, 1, dtype_bytes=4).bytes > one.bytes


def test_whole_call_bound_adds_passes_sampling_and_decode(tiny_pair):
    vae = tiny_pair[0]
    assert sampling_bytes(64, 2, [1, 4]) == 2 * 2 * 5 * 64 * 4
    assert bound_s(2e12, 1e9, Ceilings(1e12, 1e15)) == pytest.approx(1e-3 + 2e-3)
    bound = whole_call_bound(0.01, vae, 64, 2, [1, 4, 9, 16], Ceilings(hbm_bytes_per_s=1e12, bf16_flops_per_s=1e14))
    cost: DecodeCost = decode_cost(vae, 2)
    assert bound.decode_s == pytest.approx(cost.bytes / 1e12 + cost.flops / 1e14)
    assert bound.sampling_s == pytest.approx(2 * 2 * 30 * 64 * 4 / 1e12)
    assert bound.total_s == pytest.approx(0.01 + bound.sampling_s + bound.decode_s)


def test_pass_time_ratio():
    draft = {(0, 1): 1.0, (1, 1): 2.0, (0, 2): 50.0}
    target = {(0, 1): 3.0, (1, 1): 5.0, (2, 1): 9.0}
    assert pass_time_ratio(draft, target) == pytest.approx(3.0 / 8.0)
    with pytest.raises(ValueError, match="single-stage"):
        pass_time_ratio({(0, 2): 1.0}, {(0, 2): 1.0})


def test_percentile():
    assert percentile([3.0, 1.0, 2.0], 50) == 2.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 10) == pytest.approx(1.3)
    with pytest.raises(ValueError):
        percentile([], 50)


def test_host_timers_time_each_run_after_untimed_warmups(monkeypatch):
    """The CPU stand-ins of the CUDA-event timers: ms per run on the host clock, the upper middle of the runs."""
    from types import SimpleNamespace

    from sdvar_lib.bench import timing
    from sdvar_lib.util import timing as util_timing  # where the timers live (bench.timing re-exports them)

    clock = iter([0.0, 0.004, 1.0, 1.001, 2.0, 2.003, 3.0, 3.002, 4.0, 4.005])  # seconds: runs of 4, 1, 3, 2, 5 ms
    monkeypatch.setattr(util_timing, "time", SimpleNamespace(perf_counter=lambda: next(clock)))
    assert timing.host_call_ms(lambda: "out") == ("out", pytest.approx(4.0))
    calls = []
    assert timing.median_host_ms(lambda: calls.append(1), repeats=4, warmup=2) == pytest.approx(3.0)  # of 1, 3, 2, 5
    assert len(calls) == 6


# ---- acceptance scenarios -----------------------------------------------------------------------
def test_scenario_all_accepted_keeps_every_proposal(tiny_pair):
    _, draft, target = tiny_pair
    S = target.num_stages
    out = SDVAR(draft, target).generate_parallel(2, [1, 2], g_seed=0, gamma=S - 1, policy=ScenarioPolicy.all_accepted(S))
    assert out.stats.target_passes == 1 and out.stats.draft_passes == S - 1  # last stage is the bonus
    assert out.stats.stages_accepted_per_round == [S - 1] and out.stats.rounds == 1


def test_scenario_zero_rejects_and_samples_from_p():
    policy = ScenarioPolicy(stage_probabilities=(0.0, 1.0))
    p = torch.zeros(2, 3, 5)
    p[..., 4] = 1.0
    proposals = torch.zeros(2, 3, dtype=torch.long)
    verdict = policy.verify_stage(0, proposals, p, p, torch.Generator().manual_seed(0))
    assert not verdict.all_accepted and torch.equal(verdict.tokens_if_last_Bl, torch.full((2, 3), 4))
    verdict = policy.verify_stage(1, proposals, p, p, torch.Generator().manual_seed(0))
    assert verdict.all_accepted and torch.equal(verdict.tokens_if_last_Bl, proposals)
    assert policy.describe() == "profile[0,1]"
    with pytest.raises(ValueError, match="stage 2"):
        policy.verify_stage(2, proposals, p, p, None)


def test_scenario_per_sample_draws_per_sample():
    policy = ScenarioPolicy(stage_probabilities=(0.5,), per_sample=True)
    p = torch.full((64, 1, 3), 1 / 3)
    verdict = policy.verify_stage(0, torch.zeros(64, 1, dtype=torch.long), p, p, torch.Generator().manual_seed(0))
    assert 0 < int(verdict.stage_accepted_B.sum()) < 64


@pytest.mark.parametrize(("probs", "error"), [((), ValueError), ((1.5,), ValueError), ((-0.1,), ValueError),
                                             ((True,), TypeError)])
def test_scenario_rejects_bad_probabilities(probs, error):
    with pytest.raises(error, match="probabilit"):
        ScenarioPolicy(stage_probabilities=probs)


# ---- configuration and rows ---------------------------------------------------------------------
def test_config_validation():
    with pytest.raises(ValueError, match="unknown method"):
        BenchConfig(methods=("nope",))
    with pytest.raises(ValueError, match="acceptance-profile"):
        BenchConfig(scenarios=("profile",))
    with pytest.raises(ValueError, match="one per stage"):
        BenchConfig(scenarios=("profile",), acceptance_profile=(1.0, 0.5))
    with pytest.raises(ValueError, match="depth"):
        BenchConfig(pairs=((16, 31),))
    with pytest.raises(ValueError, match="scenario"):
        BenchConfig(scenarios=("exact", "some"))
    with pytest.raises(ValueError, match="batches"):
        BenchConfig(batches=(1, 0))
    with pytest.raises(ValueError, match="repeats"):
        BenchConfig(repeats=0)
    with pytest.raises(ValueError, match="entry_num 12 exceeds"):
        BenchConfig(methods=("code_e12",))
    with pytest.raises(ValueError, match="repeat"):
        BenchConfig(methods=("exact_g2", "sdvar_g2"))  # the old name is the same row
    with pytest.raises(ValueError, match="top_k"):
        BenchConfig(top_k=5000)  # more than the 4096 codes


def test_config_keeps_todays_row_names():
    config = BenchConfig(methods=("sdvar_g2", "sdvar_adaptive", "sdvar_adaptive_cal", "exact_g4", "eager_target"))
    assert config.methods == ("exact_g2", "exact_adaptive", "exact_calibrated", "exact_g4", "eager_target")
    assert [r.name for r in config.rows] == ["eager_target", "exact_g2", "exact_adaptive", "exact_calibrated", "exact_g4"]


def test_rows_are_registry_methods_with_their_chunks():
    S = 10
    assert bench_row("target").chunks(S) == ([(s, 1) for s in range(S)], [])
    assert max(n for _, n in bench_row("exact_adaptive").chunks(S)[0]) == 5
    assert (0, 6) in bench_row("test3_e5").chunks(S)[0] and (0, 9) in bench_row("code_e8").chunks(S)[1]
    eager = bench_row("eager_target")
    assert eager.eager and not eager.uses_draft and eager.uses_target and eager.chunks(S) == ([], [])
    assert bench_row("code_e6").uses_draft and not bench_row("target").sdvar and bench_row("exact_g2").sdvar
    assert bench_row("sdvar_g3").method == bench_row("exact_g3").method  # old names map to today's rows
    with pytest.raises(ValueError, match="bench-only rows: eager_target, exact_calibrated"):
        bench_row("bogus")


def _report(methods=("eager_target", "target", "exact_g4")) -> BenchReport:
    rows = [
        BenchRow(pair="d16->d30", batch=1, method=name, scenario="-", latency_ms_median=ms, latency_ms_p10=ms,
                 latency_ms_p90=ms, latency_ms_min=ms, latency_ms_max=ms, images_per_s=1e3 / ms, target_passes=10,
                 draft_passes=0, peak_mem_gib=5.0, peak_reserved_gib=6.0, bound_ms=10.0, ratio_to_bound=ms / 10.0)
        for name, ms in zip(methods, (200.0, 20.0, 10.0))
    ]
    add_speedups(rows)
    machine = MachineInfo(device="cuda", cpu="GPU", torch_threads=1, torch_version="2", python_version="3",
                          platform="linux", cuda_version="12", driver="1")
    return BenchReport(machine=machine, command="python -m sdvar_lib.bench", ceilings=Ceilings(3e12, 7e14),
                       decode=[DecodeTiming(1, 10.0, 2.0)], rows=rows, config=BenchConfig())


def test_markdown_has_the_whole_call_bound_one_off_and_pass_ratio_columns():
    from sdvar_lib.bench import PassRatio

    report = _report()
    report.rows[1].whole_bound_ms, report.rows[1].ratio_to_whole_bound, report.rows[1].one_off_s = 12.5, 1.6, 3.25
    report.pass_ratios = [PassRatio("d16->d30", 1, target_ms=(1.0, 2.0, 5.0), draft_ms=(0.5, 0.5, 1.0))]
    report.decode = [DecodeTiming(1, 10.0, 2.0, bound_ms=0.75)]
    text = format_markdown(report)
    assert "| whole bound ms | meas/whole bound | passes-only ms | one-off s |" in text
    assert "| 1 | target | - | 20.00 | 20.00–20.00 | 50.0 | 10 | 0 | 5.0 / 6.0 | 10.00 | 2.00 | 12.50 | 1.60 | - | 3.2 |" in text
    assert "| 1 | exact_g4 | - | 10.00 | 10.00–10.00 | 100.0 | 10 | 0 | 5.0 / 6.0 | 10.00 | 1.00 | - | - | - | - |" in text
    assert "| 1 | 2.00 | 8.00 | 0.250 |" in text  # draft / target single-stage sums and their ratio
    assert "batch 1: 10.00 / 2.00 ms (0.75 ms)" in text
    data = json.loads(report_to_json(report))
    assert data["pass_ratios"][0]["draft_ms"] == [0.5, 0.5, 1.0] and data["rows"][1]["one_off_s"] == 3.25
    assert data["decode"][0]["bound_ms"] == 0.75


def test_speedups_and_markdown():
    report = _report()
    by = {r.method: r for r in report.rows}
    assert by["exact_g4"].speedup_vs_target == pytest.approx(2.0)
    assert by["exact_g4"].speedup_vs_eager == pytest.approx(20.0)
    text = format_markdown(report)
    assert "| 1 | exact_g4 | - | 10.00 |" in text and "2.00×" in text and "#### d16->d30" in text
    assert text.startswith("GPU: GPU; driver 1; torch 2 (CUDA 12); python 3")
    data = json.loads(report_to_json(report))
    assert data["rows"][1]["method"] == "target" and data["ceilings"]["hbm_bytes_per_s"] == 3e12
    assert data["machine"]["cpu"] == "GPU" and data["command"] == "python -m sdvar_lib.bench"


def test_write_report_is_atomic(tmp_path, monkeypatch):
    from sdvar_lib.bench import report as report_module
    from sdvar_lib.bench import write_report

    report = _report()
    table = write_report(report, tmp_path / "out")
    assert (tmp_path / "out" / "bench.md").read_text() == table + "\n"
    assert json.loads((tmp_path / "out" / "bench.json").read_text())["rows"][2]["method"] == "exact_g4"

    # a write that dies half-way (the text cannot be encoded): the old complete bench.md must stay
    monkeypatch.setattr(report_module, "format_markdown", lambda _report: "| half a table \ud800")
    report.rows[0].latency_ms_median = 1.0
    with pytest.raises(UnicodeEncodeError):
        write_report(report, tmp_path / "out")
    assert (tmp_path / "out" / "bench.md").read_text() == table + "\n"
    assert json.loads((tmp_path / "out" / "bench.json").read_text())["rows"][0]["latency_ms_median"] == 1.0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["bench.json", "bench.md"]  # no temporaries left


# ---- command line -------------------------------------------------------------------------------
def _main_error(capsys, argv) -> str:
    """Run the CLI on ``argv``; it must stop with exit status 2 and one error line, no traceback."""
    from sdvar_lib.bench import main

    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if "error:" in line]
    assert len(errors) == 1 and "Traceback" not in err, err
    return errors[0]


@pytest.fixture
def no_model_calls(monkeypatch):
    """Pretend CUDA is there and make the bench fail loudly if it starts: what is checked must stop before."""
    from sdvar_lib.bench import cli

    class Started(Exception):
        pass

    def run_bench(*args, **kwargs):
        raise Started

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(cli, "run_bench", run_bench)
    return Started


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--methods", "bogus"], "unknown method 'bogus'"),
        (["--scenarios", "exact,some"], "scenario"),
        (["--batches", "0"], "batches"),
        (["--batches", "x"], "comma-separated ints"),
        (["--repeats", "0"], "repeats"),
        (["--warmup", "-1"], "warmup"),
        (["--calibration-calls", "0"], "calibration_calls"),
        (["--acceptance-profile", "1,1"], "10 probabilities"),
        (["--acceptance-profile", "1,1,1,1,1,1,1,1,1,1.5"], "acceptance-profile"),
        (["--scenarios", "exact", "--acceptance-profile", "1,1,1,1,1,1,1,1,1,1"], "do not include 'profile'"),
        (["--scenarios", "profile"], "needs --acceptance-profile"),
        (["--pairs", "16:31"], "depth"),
        (["--top-p", "2"], "top_p"),
        (["--profile-stages", "10"], "profile_stages"),
    ],
)
def test_cli_rejects_bad_arguments_before_any_model_call(capsys, no_model_calls, argv, message):
    assert message in _main_error(capsys, argv)


def test_cli_rejects_an_unwritable_out(capsys, no_model_calls, tmp_path):
    afile = tmp_path / "file"
    afile.write_text("x")
    assert "--out" in _main_error(capsys, ["--out", str(afile)])
    assert "--out" in _main_error(capsys, ["--out", str(afile / "below")])


def test_cli_valid_arguments_reach_the_bench(no_model_calls, tmp_path):
    from sdvar_lib.bench import main

    with pytest.raises(no_model_calls):
        main(["--batches", "1", "--methods", "target,sdvar_g2", "--out", str(tmp_path / "out")])


def test_cli_without_cuda_fails_clearly(capsys, monkeypatch, tmp_path):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    line = _main_error(capsys, ["--batches", "1", "--repeats", "1", "--out", str(tmp_path / "out")])
    assert "CUDA" in line
    assert not (tmp_path / "out").exists()


def test_help_runs_as_a_module():
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    res = subprocess.run([sys.executable, "-m", "sdvar_lib.bench", "--help"], capture_output=True, text=True, cwd=root,
                         env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"}, timeout=120, check=False)
    assert res.returncode == 0 and "--acceptance-profile" in res.stdout and "exact_calibrated" in res.stdout


# ---- plots and profiles -------------------------------------------------------------------------
def test_plot_from_report(tmp_path):
    from sdvar_lib.bench.cli import plot_main as main
    from sdvar_lib.viz.latency import load_points

    report = _report()
    path = tmp_path / "bench.json"
    path.write_text(report_to_json(report))
    points = load_points(path)
    assert [p.series for p in points] == ["eager_target", "target", "exact_g4"]
    assert main([str(path), "--out", str(tmp_path / "lat.png")]) == 0
    assert (tmp_path / "lat.png").stat().st_size > 0
    bad = tmp_path / "bad.json"
    bad.write_text("[]")
    with pytest.raises(SystemExit) as exit_:  # a usage error (tests/test_cli_bad_input.py has the rest)
        main([str(bad)])
    assert exit_.value.code == 2


def test_plot_reads_reports_with_the_old_names(tmp_path, monkeypatch):
    from pathlib import Path

    from matplotlib.axes import Axes

    from sdvar_lib.bench.cli import plot_main as main
    from sdvar_lib.viz.latency import load_points

    old = _report(("eager_target", "target", "sdvar_g4"))
    path = tmp_path / "old.json"
    path.write_text(report_to_json(old))
    assert [p.series for p in load_points(path)] == ["eager_target", "target", "exact_g4"]
    stored = Path(__file__).resolve().parents[1] / "docs" / "bench" / "h100_d16_d30.json"
    series = {p.series for p in load_points(stored)}
    assert "exact_calibrated [all-accepted]" in series and "exact_g2 [exact (random weights)]" in series
    assert not any(s.startswith("sdvar_") for s in series)
    drawn = []
    real = Axes.errorbar
    monkeypatch.setattr(Axes, "errorbar", lambda self, *a, **kw: drawn.append(kw["label"]) or real(self, *a, **kw))
    out = tmp_path / "stored.png"
    assert main([str(stored), "--out", str(out), "--series", "target,sdvar_adaptive_cal [all-accepted]"]) == 0
    assert drawn == ["target", "exact_calibrated [all-accepted]"] and out.stat().st_size > 0


def test_format_profiles():
    prof = PassProfile(depth=30, batch=1, stage=9, tokens=256, replay_ms=3.2, bound_ms=1.5, kernel_sum_ms=2.5,
                       kernels=600, top=[KernelTime("gemm", 1000.0, 120)])
    text = format_profiles([prof])
    assert "d30 batch 1 stage 9 (256 tokens): graph replay 3.200 ms" in text and "| `gemm` | 1000.0 | 120 |" in text


# ---- timing rows (host timers stand in for CUDA events) -----------------------------------------
def test_bench_method_rows_on_the_tiny_pair(tiny_pair, monkeypatch):
    import time

    from sdvar_lib.bench import PairContext, Scenario, bench_method, bench_row
    from sdvar_lib.bench import core as core_module
    from sdvar_lib.fast.config import FastConfig
    from sdvar_lib.fast.factory import FastRunFactory
    from sdvar_lib.models.presets import ModelPair

    def host_call_ms(fn):
        t0 = time.perf_counter()
        out = fn()
        return out, (time.perf_counter() - t0) * 1e3 + 1e-6

    monkeypatch.setattr(core_module, "cuda_event_ms", host_call_ms)
    for name in ("synchronize", "reset_peak_memory_stats"):
        monkeypatch.setattr(torch.cuda, name, lambda *a, **k: None)
    for name in ("max_memory_allocated", "max_memory_reserved"):
        monkeypatch.setattr(torch.cuda, name, lambda *a, **k: 0)
    vae, draft, target = tiny_pair
    S = target.num_stages
    ctx = PairContext.for_pair("tiny", ModelPair(vae, draft, target, "tiny"),
                               FastRunFactory(FastConfig(use_cuda_graphs=False)))
    config = BenchConfig(repeats=2, warmup=1, top_k=0, top_p=0.0)
    ceil = Ceilings(1e12, 1e14)
    all_accepted = Scenario("all", ScenarioPolicy.all_accepted(S))
    rows = {
        "eager": bench_method(ctx, bench_row("eager_target"), None, 2, config, ceil),
        "target": bench_method(ctx, bench_row("target"), None, 2, config, ceil),
        "g2": bench_method(ctx, bench_row("sdvar_g2"), all_accepted, 2, config, ceil),
        "g2_exact": bench_method(ctx, bench_row("exact_g2"), Scenario("exact"), 2, config, ceil),
        "test3": bench_method(ctx, bench_row("test3_e2"), None, 2, config, ceil),
    }
    eager, tgt, g2 = rows["eager"], rows["target"], rows["g2"]
    assert (eager.method, eager.scenario, eager.target_passes, eager.draft_passes) == ("eager_target", "-", S, 0)
    assert (tgt.target_passes, tgt.draft_passes, tgt.gamma_per_round) == (S, 0, None)
    assert eager.bound_ms == pytest.approx(tgt.bound_ms) and eager.bound_ms > 0  # the same passes, one per stage
    # all accepted with gamma 2: rounds of 2 proposals + 1 bonus stage; a chunked verify costs less
    assert (g2.method, g2.scenario) == ("exact_g2", "all-accepted") and g2.gamma_per_round[0] == 2
    assert g2.target_passes < S and g2.draft_passes > 0 and g2.token_acceptance == 1.0
    spec = VarSpec.from_model(target)
    chunk = pass_bound_s(spec, 4, 0, 1 + 4 + 9, ceil) * 1e3
    assert g2.bound_ms > chunk  # its first pass verifies stages 0-2 in one chunk, and the draft's passes add to it
    assert rows["g2_exact"].scenario == "exact (random weights)"
    assert rows["test3"].draft_passes == 2 and rows["test3"].scenario == "-" and rows["test3"].gamma_per_round is None
    assert all(r.passes_only_ms is None and r.captures_during_timing == 0 for r in rows.values())  # no graphs on the CPU
    # the whole-call bound: the passes' bound + every stage sampled once (CFG-doubled float32 logits read)
    # + the VQVAE decode (its FLOPs and bytes), priced at the same ceilings
    cost = decode_cost(vae, 2)
    sampling_bytes = sum(2 * 2 * pn * pn * target.V * 4 for pn in target.patch_nums)
    beyond_ms = 1e3 * ((cost.bytes + sampling_bytes) / ceil.hbm_bytes_per_s + cost.flops / ceil.bf16_flops_per_s)
    for r in rows.values():
        assert r.whole_bound_ms == pytest.approx(r.bound_ms + beyond_ms)
        assert r.ratio_to_whole_bound == pytest.approx(r.latency_ms_median / r.whole_bound_ms)
        assert r.one_off_s is not None and r.one_off_s >= 0.0
    assert rows["eager"].one_off_s == 0.0  # the eager loop builds no fast run
    assert rows["target"].one_off_s > 0.0  # its run checked the block kernels when it was built
