"""Physical-bound arithmetic of the GPU benchmark, the acceptance scenarios and the CLI (CPU only)."""

from __future__ import annotations

import json

import pytest
import torch

from sdvar_lib import SDVAR
from sdvar_lib.bench import bench as bench
from sdvar_lib.bench.bench import (
    BenchConfig,
    BenchEnvironment,
    BenchReport,
    BenchRow,
    Ceilings,
    DecodeTiming,
    ScenarioPolicy,
    VarSpec,
    add_speedups,
    attended_keys,
    format_markdown,
    pass_bound_s,
    pass_bytes,
    pass_flops,
    pass_weight_params,
    passes_bound_s,
    percentile,
    report_to_json,
    sequential_passes,
    total_params,
)
from sdvar_lib.fast.run import PassRecord
from sdvar_lib.models.checkpoints import build_vae, build_var


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


def test_percentile():
    assert percentile([3.0, 1.0, 2.0], 50) == 2.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 10) == pytest.approx(1.3)
    with pytest.raises(ValueError):
        percentile([], 50)


# ---- acceptance scenarios -----------------------------------------------------------------------
def test_scenario_all_accepted_keeps_every_proposal(tiny_pair):
    _, draft, target = tiny_pair
    S = target.num_stages
    out = SDVAR(draft, target).generate_parallel(2, [1, 2], g_seed=0, top_k=0, gamma=S - 1,
                                                 policy=ScenarioPolicy.all_accepted(S))
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


@pytest.mark.parametrize("probs", [(), (1.5,), (-0.1,), (True,)])
def test_scenario_rejects_bad_probabilities(probs):
    with pytest.raises(ValueError, match="probabilit"):
        ScenarioPolicy(stage_probabilities=probs)


# ---- configuration, report, CLI -----------------------------------------------------------------
def test_config_validation():
    with pytest.raises(ValueError, match="unknown methods"):
        BenchConfig(methods=("nope",))
    with pytest.raises(ValueError, match="acceptance-profile"):
        BenchConfig(scenarios=("profile",))
    with pytest.raises(ValueError, match="one per stage"):
        BenchConfig(acceptance_profile=(1.0, 0.5))
    with pytest.raises(ValueError, match="depth"):
        BenchConfig(pairs=((16, 31),))


def test_method_chunks_cover_what_decoders_use():
    S = 10
    m = bench.METHODS
    assert m["target"].target_chunks(S) == [(s, 1) for s in range(S)]
    assert max(n for _, n in m["sdvar_adaptive"].target_chunks(S)) == 5
    assert (0, 6) in m["test3_e5"].target_chunks(S) and (0, 9) in m["code_e8"].draft_chunks(S)
    assert not m["eager_target"].uses_draft and m["code_e6"].uses_draft


def _report() -> BenchReport:
    rows = [
        BenchRow(pair="d16->d30", batch=1, method=name, scenario="-", latency_ms_median=ms, latency_ms_p10=ms,
                 latency_ms_p90=ms, latency_ms_min=ms, latency_ms_max=ms, images_per_s=1e3 / ms, target_passes=10,
                 draft_passes=0, peak_mem_gib=5.0, peak_reserved_gib=6.0, bound_ms=10.0, ratio_to_bound=ms / 10.0)
        for name, ms in (("eager_target", 200.0), ("target", 20.0), ("sdvar_g4", 10.0))
    ]
    add_speedups(rows)
    env = BenchEnvironment(gpu="GPU", driver="1", torch="2", cuda="12", python="3", command="python -m sdvar_lib.bench")
    return BenchReport(environment=env, ceilings=Ceilings(3e12, 7e14), decode=[DecodeTiming(1, 10.0, 2.0)], rows=rows,
                       config=BenchConfig())


def test_speedups_and_markdown():
    report = _report()
    by = {r.method: r for r in report.rows}
    assert by["sdvar_g4"].speedup_vs_target == pytest.approx(2.0)
    assert by["sdvar_g4"].speedup_vs_eager == pytest.approx(20.0)
    text = format_markdown(report)
    assert "| 1 | sdvar_g4 | - | 10.00 |" in text and "2.00×" in text and "#### d16->d30" in text
    data = json.loads(report_to_json(report))
    assert data["rows"][1]["method"] == "target" and data["ceilings"]["hbm_bytes_per_s"] == 3e12


def test_cli_without_cuda_fails_clearly(capsys):
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    assert bench.main(["--batches", "1", "--repeats", "1"]) != 0
    assert "CUDA" in capsys.readouterr().err


def test_cli_rejects_bad_arguments(capsys):
    assert bench.main(["--methods", "bogus"]) == 2
    assert "unknown methods" in capsys.readouterr().err


def test_plot_from_report(tmp_path):
    from sdvar_lib.viz.latency import load_points, main

    report = _report()
    path = tmp_path / "bench.json"
    path.write_text(report_to_json(report))
    points = load_points(path)
    assert [p.series for p in points] == ["eager_target", "target", "sdvar_g4"]
    assert main([str(path), "--out", str(tmp_path / "lat.png")]) == 0
    assert (tmp_path / "lat.png").stat().st_size > 0
    bad = tmp_path / "bad.json"
    bad.write_text("[]")
    assert main([str(bad)]) == 2


def test_format_profiles():
    prof = bench.PassProfile(depth=30, batch=1, stage=9, tokens=256, replay_ms=3.2, bound_ms=1.5, kernel_sum_ms=2.5,
                             kernels=600, top=[bench.KernelTime("gemm", 1000.0, 120)])
    text = bench.format_profiles([prof])
    assert "d30 batch 1 stage 9 (256 tokens): graph replay 3.200 ms" in text and "| `gemm` | 1000.0 | 120 |" in text
