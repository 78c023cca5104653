"""The performance device script on a machine without CUDA (its plumbing, not its numbers).

Its benchmark commands are parsed into :class:`~sdvar_lib.bench.BenchConfig` by
``tests/test_bench_components.py`` (what the former ``scripts/perf_v2.py`` measured is now part of the bench).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.no_cuda
@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_device_script_refuses_without_cuda(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable, "OUT": str(tmp_path / "out"), "PYTHONPATH": str(ROOT)}
    done = subprocess.run(["bash", str(ROOT / "scripts" / "device_perf_v2.sh")], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 2
    assert "no CUDA GPU" in done.stderr and "SMOKE=1" in done.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.no_cuda
@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_pdl_probe_refuses_without_cuda_in_one_line(tmp_path):
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "device_pdl_probe.py"), "--out", str(tmp_path / "o")],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and "needs a CUDA GPU" in done.stderr
    assert not (tmp_path / "o").exists()


_PROBE_KERNELS = """
import sys, torch, torch.nn.functional as F
sys.path.insert(0, "scripts")
from device_pdl_probe import _kernels, skinny_linear
triton, norm_kernel, gemv_kernel, skinny_kernel = _kernels()
torch.manual_seed(0)
for rows, k, n, gelu in ((2, 64, 48, False), (3, 32, 80, True)):
    x, w, b = torch.randn(rows, k), torch.randn(n, k), torch.randn(n)
    y = torch.empty(rows, n)
    gemv_kernel[(triton.cdiv(n, 16),)](x, w, b, y, rows, n, K=k, GELU=gelu, USE_GDC=False, BLOCK_M=4, BLOCK_N=16)
    want = F.gelu(F.linear(x, w, b), approximate="tanh") if gelu else F.linear(x, w, b)
    assert (y - want).abs().max() < 1e-4, (rows, k, n, gelu)
for rows, k, n, gelu, tiles in ((2, 64, 48, False, (16, 32, 2, 4)), (18, 96, 40, True, (32, 64, 2, 4))):
    x, w, b = torch.randn(rows, k), torch.randn(n, k), torch.randn(n)
    y = skinny_linear(skinny_kernel, x, w, b, gelu=gelu, tiles=tiles)
    want = F.gelu(F.linear(x, w, b), approximate="tanh") if gelu else F.linear(x, w, b)
    assert (y - want).abs().max() < 1e-3, (rows, k, n, gelu, tiles)
x = torch.randn(3, 96)
y = torch.empty(3, 40)
norm_kernel[(1,)](x, y, 3, 40, x.stride(0), USE_GDC=False, BLOCK_M=4, BLOCK_N=64)
assert (y - F.layer_norm(x[:, :40], (40,), eps=1e-6)).abs().max() < 1e-4
print("ok")
"""


def test_pdl_probe_kernels_compute_what_they_stand_for():
    """The probe's Triton kernels (in Triton's CPU interpreter, without PDL): the matrix-vector and the few-row
    ``tl.dot`` kernels are the linear layer (with the tanh GELU; a K that is not a multiple of the K tile and rows and
    columns past the tiles' ends included), the norm kernel a LayerNorm of a strided slice."""
    pytest.importorskip("triton")
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", _PROBE_KERNELS], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]


_SAMPLER_PROBE = """
import sys, torch
sys.path.insert(0, "scripts")
from device_sampler_probe import fused_way, torch_way
from sdvar_lib.models.sampling import SamplingConfig
gen = torch.Generator().manual_seed(0)
V, Cv, B, l = 64, 8, 2, 5
for sampling in (SamplingConfig(cfg=1.5, top_k=7, top_p=0.9), SamplingConfig(cfg=4.0, top_k=0, top_p=0.8)):
    logits = torch.randn(2 * B, l + 2, V, generator=gen) * 3
    codebook = torch.randn(V, Cv, generator=gen)
    noise = torch.empty(B * l, V).exponential_(generator=gen)
    outs = []
    for way in (torch_way, fused_way):
        idx, probs, h = torch.empty(B * l, dtype=torch.long), torch.empty(B * l, V), torch.empty(B * l, Cv)
        way(logits, l, 9, sampling, codebook, noise, idx, probs, h)
        outs.append((idx, probs, h))
    (i0, p0, h0), (i1, p1, h1) = outs
    assert torch.equal(i0, i1) and torch.allclose(p0, p1, atol=1e-6) and torch.equal(h0, h1)
    assert torch.equal(h0, codebook[i0]) and (p0 > 0).sum() < p0.numel() // 2
print("ok")
"""


def test_sampler_probe_times_two_ways_of_the_same_stage():
    """The probe's two ways (Triton's CPU interpreter for the fused one): same tokens, distribution and codebook
    rows for the same stage buffers, so the timings it reports compare like with like."""
    pytest.importorskip("triton")
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", _SAMPLER_PROBE], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-3000:]


@pytest.mark.no_cuda
@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
@pytest.mark.parametrize("script, extra", [("device_sampler_probe.py", []), ("device_sdpa_probe.py", ["--calls"]),
                                           ("device_decode_probe.py", ["--sweep"]), ("device_bicubic_probe.py", []),
                                           ("device_pass_profile.py", ["--calls", "32"])])
def test_probe_refuses_without_cuda_in_one_line(tmp_path, script, extra):
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / script), "--out", str(tmp_path / "o"), *extra],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and "needs a CUDA GPU" in done.stderr
    assert not (tmp_path / "o").exists()


def test_decode_probe_chooses_the_tiling_whose_slowest_batch_is_fastest():
    sys.path.insert(0, str(ROOT / "scripts"))
    from device_decode_probe import choose_tiling

    default, a, b = {"values": 4096}, {"values": 8192}, {"values": 16384}
    rows = [{"tiling": "before", "ms": {1: 1.0, 32: 10.0}},  # fastest, but not a tiling of this code
            {"tiling": default, "ms": {1: 2.0, 32: 40.0}},
            {"tiling": a, "ms": {1: 2.2, 32: 30.0}},  # much faster at 32, 10 % slower at 1
            {"tiling": b, "ms": {1: 1.9, 32: 39.0}},  # a little faster at both
            {"tiling": default, "ms": {1: 2.0, 32: 40.0}}]
    assert choose_tiling(rows, default, [1, 32])["tiling"] == b
    assert rows[2]["worst_vs_default"] == 1.1
    assert choose_tiling(rows[1:4], default, [32])["tiling"] == a
    with pytest.raises(ValueError, match="default"):
        choose_tiling(rows[2:4], default, [1])


def test_sdpa_probe_inputs_are_the_fused_pass_shapes():
    """The probe's attention inputs: a stage's queries (as qk_norm_into_cache returns them, transposed) against the
    cache's prefix, and a verify chunk's block-causal mask as the KV cache builds it."""
    sys.path.insert(0, str(ROOT / "scripts"))
    import device_sdpa_probe as probe

    from sdvar_lib.models.kv_cache import KVCache, stage_ids_for

    q, k, v, mask = probe._inputs(4, 16, 9, 9, torch.device("cpu"), torch.float32)
    assert q.shape == (4, 16, 256, 64) and k.shape == v.shape == (4, 16, 680, 64) and mask is None
    assert q.stride()[1] == 64  # heads interleaved per token, as the fused pass's q
    q, k, v, mask = probe._inputs(4, 16, 5, 9, torch.device("cpu"), torch.float32)
    cache = KVCache(1, 4, 16, 64, stage_ids_for(probe.PATCH_NUMS))
    cache.write(0, torch.zeros(4, 16, 55, 64), torch.zeros(4, 16, 55, 64))  # stages 0-4 held
    cache.advance(55)
    assert q.shape[2] == 680 - 55 and torch.equal(mask, cache.chunk_mask(680 - 55))


def test_pass_profile_classes_kernels_by_name():
    """The pass profile's classes: attention first (cuDNN's attention kernels are "fprop" kernels too), the
    decode's convolutions apart from the products, our Triton kernels by name, the rest as "other"."""
    sys.path.insert(0, str(ROOT / "scripts"))
    from device_pass_profile import kernel_class

    names = {"cudnn_generated_fort_native_sdpa_sm90_flash_fprop_wgmma_f16": "attention",
             "void pytorch_flash::flash_fwd_kernel<Flash_fwd_kernel_traits": "attention",
             "nvjet_sm90_tst_192x192_64x4_2x1_v_bz_coopB_bias_TNN": "gemm",
             "void cublasLt::splitKreduce_kernel<32, 16, int, float": "gemm",
             "sm90_xmma_fprop_implicit_gemm_bf16bf16_bf16f32_f32_nhwckrsc_execute_kernel__5x_cudnn": "conv",
             "_add_ln_modulate_kernel": "add_ln", "_qk_norm_cache_kernel": "qk_norm", "_gn_apply_kernel": "decode_gn",
             "_sample_kernel": "sampler", "Memset (Device)": "copy",
             "void at::native::(anonymous namespace)::upsample_bicubic2d_out_frame": "other"}
    assert {n: kernel_class(n) for n in names} == names


def test_pass_profile_names_the_library_lines_that_launch_ops(tmp_path):
    """``--sources`` (dry run on the CPU with the tiny pair): every op of a call is counted against the library
    function it ran in - the fused pass's ``step``, the sampler - and the table is written."""
    sys.path.insert(0, str(ROOT / "scripts"))
    import device_pass_profile as probe

    from sdvar_lib import SamplingConfig
    from sdvar_lib.models.presets import ModelPair, build_tiny

    vae, target = build_tiny(seed=0)
    _, draft = build_tiny(seed=1, depth=1, vae=vae)
    pair = ModelPair(vae=vae, draft=draft, target=target, description="tiny")
    lines, data = [], {}
    with torch.no_grad():
        probe.kernel_sources([2], ("target", "exact_g2"), tmp_path, lines, data, device=torch.device("cpu"), pair=pair,
                             sampling=SamplingConfig(top_k=20, top_p=0.9))
    assert [(s["row"], s["batch"]) for s in data["sources"]] == [("target", 2), ("exact_g2", 2)]
    for entry in data["sources"]:
        sources = {s["source"].split(": ")[-1] for s in entry["sources"]}
        assert {"step", "add_ln_modulate"} <= sources
        assert entry["launches"] == sum(s["launches"] for s in entry["sources"]) or len(entry["sources"]) == 100
    written = json.loads((tmp_path / "pass_profile.json").read_text())
    assert written["sources"] == data["sources"] and "fused.py" in (tmp_path / "pass_profile.md").read_text()
