"""Every Triton kernel of the fast path against its PyTorch equivalent, on the CPU in Triton's interpreter.

The interpreter must be on before Triton is first imported, so this module switches it on at
collection when no GPU is present (nothing imports Triton earlier: ``sdvar_lib`` imports it only
when a kernel backend resolves to Triton). The tests skip when Triton is not installed or was
imported without the interpreter; without CUDA such a skip fails the session (tests/skip_policy.py).
Shapes are tiny: the interpreter runs each program in numpy.
On a GPU the same kernels are compiled and checked at official sizes by ``tests/test_gpu_fast.py``.
"""

from __future__ import annotations

import os
import sys

import pytest
import torch

if not torch.cuda.is_available() and "triton" not in sys.modules:
    os.environ.setdefault("TRITON_INTERPRET", "1")

from sdvar_lib import SDVAR, SamplingConfig  # noqa: E402
from sdvar_lib.fast.config import FastConfig  # noqa: E402
from sdvar_lib.fast.factory import FastRunFactory  # noqa: E402
from sdvar_lib.fast.fused import TorchBlockOps, check_block_ops  # noqa: E402
from sdvar_lib.fast.kernels import interpreter_active, resolve_backend  # noqa: E402
from sdvar_lib.fast.run import FastRun, chunk_span  # noqa: E402
from sdvar_lib.models.sampling import guided_logits, sample_from_probs, stage_probs  # noqa: E402
from sdvar_lib.sdvar.handoff import baseline  # noqa: E402

# Without CUDA these tests must run (tests/skip_policy.py fails the session if the interpreter is off); on a CUDA
# machine the compiled kernels are checked by tests/test_gpu_fast.py instead.
pytestmark = [pytest.mark.no_cuda,
              pytest.mark.skipif(not interpreter_active(), reason="Triton's CPU interpreter is not available here")]

B = 2


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


@pytest.fixture(scope="module")
def triton_ops():
    from sdvar_lib.fast.fused import TritonBlockOps

    return TritonBlockOps()


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-6), (torch.bfloat16, 1e-2)])
def test_add_ln_modulate_kernel(triton_ops, dtype, tol):
    gen = torch.Generator().manual_seed(0)
    rows, l, C = 3, 2, 80  # C not a power of two: the masked lanes must not enter the statistics
    x, o = (torch.randn(rows, l, C, generator=gen).mul(3).add(1).to(dtype) for _ in range(2))
    ada = torch.randn(rows, 6, C, generator=gen).to(dtype)
    gate = torch.randn(rows, 2, C, generator=gen).to(dtype)[:, 1]  # another table: another row stride (the head's case)
    ref_ops = TorchBlockOps()
    for kwargs in ({}, {"o": o, "gate": ada[:, 0]}, {"o": o, "gate": gate, "h_dtype": torch.float32}):
        want = ref_ops.add_ln_modulate(x, ada[:, 3], ada[:, 5], 1e-6, **kwargs)
        got = triton_ops.add_ln_modulate(x, ada[:, 3], ada[:, 5], 1e-6, **kwargs)
        assert got[1].dtype == want[1].dtype and got[0].dtype == dtype
        assert _rel(got[0], want[0]) <= tol and _rel(got[1], want[1]) <= tol, kwargs


@pytest.mark.parametrize("norm", [True, False])
def test_qk_norm_into_cache_kernel(triton_ops, norm):
    gen = torch.Generator().manual_seed(1)
    rows, l, H, D, position = 2, 3, 3, 16, 4
    qkv = torch.randn(rows, l, 3 * H * D, generator=gen)
    factor = None
    if norm:
        factor = torch.rand(2, H, 1, generator=gen) + 0.5
        factor[1] = 1
    caches = [torch.full((rows, H, 10, D), 7.0) for _ in range(4)]
    want = TorchBlockOps().qk_norm_into_cache(qkv, caches[0], caches[1], position, factor)
    got = triton_ops.qk_norm_into_cache(qkv, caches[2], caches[3], position, factor)
    assert _rel(got, want) < 1e-6
    for a, b in ((caches[2], caches[0]), (caches[3], caches[1])):
        assert torch.allclose(a, b, atol=1e-6)  # chunk written at [position, position + l), the rest untouched
        assert bool((a[:, :, position : position + l] != 7.0).all()) and bool((a[:, :, :position] == 7.0).all())


def _attention_reference(qkv, k_cache, v_cache, position, factor, scale):
    """A single stage's attention in float64 from the kernel's inputs: q/k L2 norm, q times its head's factor, every
    query against the cached prefix and the stage's own keys; also the stage's normalised keys and values."""
    rows, l, _ = qkv.shape
    _, H, _, D = k_cache.shape
    q, k, v = qkv.double().view(rows, l, 3, H, D).unbind(2)
    if factor is not None:
        q = q / q.norm(dim=-1, keepdim=True).clamp_min(1e-12) * factor.double().view(1, 1, H, 1)
        k = k / k.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    keys = torch.cat([k_cache[:, :, :position].double(), k.transpose(1, 2)], dim=2)
    values = torch.cat([v_cache[:, :, :position].double(), v.transpose(1, 2)], dim=2)
    w = torch.softmax(q.transpose(1, 2) @ keys.transpose(-1, -2) * scale, dim=-1)
    return (w @ values).transpose(1, 2).reshape(rows, l, H * D), k.transpose(1, 2), v.transpose(1, 2)


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-6), (torch.bfloat16, 1.5e-2)])
@pytest.mark.parametrize("rows,l,H,D,position,norm", [
    (2, 4, 3, 16, 5, True),     # a small stage after a short prefix, query block of 16
    (2, 20, 2, 32, 70, False),  # no L2 norm, a prefix of two key blocks (64 keys each), query block of 32
    (1, 70, 2, 16, 3, True),    # two query blocks: only the first writes the cache; the stage's keys in two blocks
    (2, 1, 2, 64, 0, True),     # one query, no prefix
])
def test_stage_attention_kernel(triton_ops, dtype, tol, rows, l, H, D, position, norm):
    """The fused single-stage attention (``kernels.attention``) equals a float64 reference of q/k norm + softmax
    attention over the prefix and the stage, writes the stage's k and v into the cache exactly as the q/k norm kernel
    does (the same bits) and leaves every other cache position as it was."""
    gen = torch.Generator().manual_seed(rows * 100 + l)
    qkv = torch.randn(rows, l, 3 * H * D, generator=gen).to(dtype)
    length = position + l + 3
    k0, v0 = (torch.randn(rows, H, length, D, generator=gen).to(dtype) for _ in range(2))
    factor = torch.stack([torch.rand(H, 1, generator=gen) + 0.5, torch.ones(H, 1)]) if norm else None
    k_cache, v_cache = k0.clone(), v0.clone()
    got = triton_ops.stage_attention(qkv, k_cache, v_cache, position, factor, 0.3)
    want, k_new, v_new = _attention_reference(qkv, k0, v0, position, None if factor is None else factor[0, :, 0], 0.3)
    assert got.shape == (rows, l, H * D) and got.dtype == dtype
    assert _rel(got, want) <= tol
    k_qk, v_qk = k0.clone(), v0.clone()
    triton_ops.qk_norm_into_cache(qkv, k_qk, v_qk, position, factor)
    assert torch.equal(k_cache, k_qk) and torch.equal(v_cache, v_qk)
    assert _rel(k_cache[:, :, position : position + l], k_new) <= tol
    for cache, before in ((k_cache, k0), (v_cache, v0)):
        assert torch.equal(cache[:, :, :position], before[:, :, :position])
        assert torch.equal(cache[:, :, position + l :], before[:, :, position + l :])
    # the PyTorch form (q/k norm, then SDPA) is the same computation
    k_ref, v_ref = k0.clone(), v0.clone()
    assert _rel(TorchBlockOps().stage_attention(qkv, k_ref, v_ref, position, factor, 0.3), want) <= tol


def test_stage_attention_refuses_what_it_cannot_take(triton_ops):
    from sdvar_lib.fast.kernels.attention import stage_attention

    qkv, cache = torch.zeros(2, 4, 3 * 2 * 16), torch.zeros(2, 2, 6, 16)
    with pytest.raises(ValueError, match="does not fit"):
        stage_attention(qkv, cache, cache.clone(), 3, None, 1.0)
    with pytest.raises(ValueError, match="16-128 channels"):
        stage_attention(torch.zeros(2, 4, 3 * 2 * 24), torch.zeros(2, 2, 6, 24), torch.zeros(2, 2, 6, 24), 0, None, 1.0)
    with pytest.raises(ValueError, match="contiguous qkv"):
        stage_attention(torch.zeros(2, 4, 3 * 2 * 16 + 1), cache, cache.clone(), 0, None, 1.0)
    # heads it does not take fall back to the two-launch form in the block ops
    qkv24, k24, v24 = torch.randn(2, 4, 3 * 2 * 24), torch.randn(2, 2, 6, 24), torch.randn(2, 2, 6, 24)
    want = TorchBlockOps().stage_attention(qkv24, k24.clone(), v24.clone(), 1, None, 1.0)
    assert _rel(triton_ops.stage_attention(qkv24, k24, v24, 1, None, 1.0), want) < 1e-6


def test_block_ops_check_passes_and_catches_a_wrong_kernel(triton_ops):
    assert check_block_ops(triton_ops, 64, 2, torch.float32, torch.device("cpu")) is None

    class Wrong(type(triton_ops)):
        def fc1_gelu(self, h, weight, bias):
            return torch.relu(torch.nn.functional.linear(h, weight, bias))

    problem = check_block_ops(Wrong(), 64, 2, torch.float32, torch.device("cpu"))
    assert problem is not None and "gelu" in problem

    class NoPrefix(type(triton_ops)):  # a stage attention that ignores the cached prefix
        def stage_attention(self, qkv, k_cache, v_cache, position, qk_factor_2H1, scale):
            return super().stage_attention(qkv, k_cache[:, :, position:], v_cache[:, :, position:], 0, qk_factor_2H1,
                                           scale)

    problem = check_block_ops(NoPrefix(), 64, 2, torch.float32, torch.device("cpu"))
    assert problem is not None and "stage attention" in problem


def test_group_norm_kernel():
    from sdvar_lib.fast.kernels.groupnorm import group_norm_nhwc

    gen = torch.Generator().manual_seed(2)
    for C, H, W in ((64, 5, 3), (96, 4, 4)):
        x = (torch.randn(2, C, H, W, generator=gen) * 2 + 3).contiguous(memory_format=torch.channels_last)
        w, b, pre = (torch.randn(C, generator=gen) for _ in range(3))
        for silu, pre_bias in ((False, None), (True, None), (True, pre)):
            src = x if pre_bias is None else x + pre_bias.view(1, -1, 1, 1)
            want = torch.nn.functional.group_norm(src, 32, w, b, 1e-6)
            want = torch.nn.functional.silu(want) if silu else want
            got = group_norm_nhwc(x, 32, w, b, 1e-6, silu=silu, pre_bias=pre_bias)
            assert got.is_contiguous(memory_format=torch.channels_last)
            assert _rel(got, want) < 1e-5, (C, H, W, silu, pre_bias is not None)
    with pytest.raises(ValueError, match="channels-last"):
        group_norm_nhwc(torch.randn(1, 64, 2, 3), 32, w[:64], b[:64], 1e-6)


def test_group_norm_kernels_under_small_tilings():
    """The GPU's tilings cut a map into many tiles and statistics splits; the interpreter runs the same cuts."""
    from sdvar_lib.fast.kernels.groupnorm import Tiling, add_bias_residual_nhwc, group_norm_nhwc, upsample2x_nhwc

    gen = torch.Generator().manual_seed(7)
    cl = torch.channels_last
    x = (torch.randn(2, 160, 7, 5, generator=gen) * 2 + 1).contiguous(memory_format=cl)
    w, b, pre = (torch.randn(160, generator=gen) for _ in range(3))
    want = torch.nn.functional.silu(torch.nn.functional.group_norm(x + pre.view(1, -1, 1, 1), 32, w, b, 1e-6))
    for tiling in (Tiling(values=256, stat_programs=3), Tiling(values=1024, stat_programs=8),
                   Tiling(values=2048, warps=16, stat_programs=1)):
        got = group_norm_nhwc(x, 32, w, b, 1e-6, silu=True, pre_bias=pre, tiling=tiling)
        assert _rel(got, want) < 1e-5, tiling
        h = torch.randn(2, 160, 7, 5, generator=gen).contiguous(memory_format=cl)
        assert torch.allclose(add_bias_residual_nhwc(x, h, b, tiling=tiling), x + (h + b.view(1, -1, 1, 1)))
        assert torch.equal(upsample2x_nhwc(x, tiling=tiling), torch.nn.functional.interpolate(x, scale_factor=2))
    with pytest.raises(TypeError, match="Tiling"):
        group_norm_nhwc(x, 32, w, b, 1e-6, tiling={"values": 256})


def test_tile_rows_follow_the_tiling():
    from sdvar_lib.fast.kernels.groupnorm import DEFAULT_TILING, Tiling, _tile_rows

    assert DEFAULT_TILING == Tiling()
    assert _tile_rows(65536, 256, Tiling()) == 32  # 8192 values: 32 pixels of 160 channels (padded to 256)
    assert _tile_rows(256, 1024, Tiling(values=512)) == 1  # never less than one pixel
    assert _tile_rows(3, 64, Tiling(values=4096)) == 4  # never more than the map's rows (next power of two)
    with pytest.raises(ValueError, match="powers of two"):
        Tiling(values=3000)
    with pytest.raises(ValueError, match=r"Tiling.stat_programs must be an int >= 1"):
        Tiling(stat_programs=0)
    with pytest.raises(TypeError, match=r"Tiling.warps must be an int >= 1"):
        Tiling(warps=8.0)


def test_residual_and_upsample_kernels():
    from sdvar_lib.fast.kernels.groupnorm import add_bias_residual_nhwc, upsample2x_nhwc

    gen = torch.Generator().manual_seed(5)
    cl = torch.channels_last
    a, h = (torch.randn(2, 48, 3, 5, generator=gen).contiguous(memory_format=cl) for _ in range(2))
    bias = torch.randn(48, generator=gen)
    got = add_bias_residual_nhwc(a, h, bias)
    assert got.is_contiguous(memory_format=cl) and torch.allclose(got, a + (h + bias.view(1, -1, 1, 1)))
    x = torch.randn(2, 40, 3, 5, generator=gen).contiguous(memory_format=cl)
    up = upsample2x_nhwc(x)
    assert up.is_contiguous(memory_format=cl)
    assert torch.equal(up, torch.nn.functional.interpolate(x, scale_factor=2, mode="nearest"))


def test_fast_decoder_on_the_kernels_equals_pytorch(tiny_pair):
    from sdvar_lib.fast.decode import FastDecoder

    vae = tiny_pair[0]
    f_hat = torch.randn(2, vae.Cvae, 4, 4, generator=torch.Generator().manual_seed(3))
    got = FastDecoder(vae, dtype=torch.float32, kernels="triton")(f_hat)
    assert _rel(got, FastDecoder(vae, dtype=torch.float32, kernels="torch")(f_hat)) < 1e-5
    assert _rel(got, vae.fhat_to_img(f_hat)) < 1e-4


@pytest.mark.parametrize("top_k,top_p", [(0, 0.0), (7, 0.0), (0, 0.8), (9, 0.9), (1, 0.0)])
def test_sampling_kernel_draws_what_multinomial_draws(top_k, top_p):
    """Same generator, same noise: the fused kernel's tokens, distribution and codebook map are the reference's.

    The kernel is the fused equivalent of the one stage step's distribution, ``stage_probs`` of the
    guided logits (what the draft's ``q`` and the target's ``p`` are), then the draw and the lookup.
    """
    from sdvar_lib.fast.kernels.sampling import sample_stage

    gen = torch.Generator().manual_seed(3)
    chunk_l, l, V, Cv = 5, 4, 32, 6
    logits = torch.randn(2 * B, chunk_l, V, generator=gen) * 3
    codebook = torch.randn(V, Cv, generator=gen)
    t = 1.5 * 2 / 3
    idx, probs, h = sample_stage(logits, l, t, top_k, top_p, codebook, torch.Generator().manual_seed(11))
    guided = guided_logits(logits[:, -l:], 2, 4, 1.5)
    want_p = stage_probs(guided, SamplingConfig(cfg=1.5, top_k=top_k, top_p=top_p))
    want_idx = sample_from_probs(want_p, torch.Generator().manual_seed(11))
    assert torch.equal(idx, want_idx)
    assert torch.allclose(probs, want_p, atol=1e-6) and torch.equal(probs > 0, want_p > 0)
    assert torch.equal(h, codebook[want_idx])


def _kept_with_whole_tie_groups(guided_BlV: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """Which tokens survive the filters when a tie at a cut-off keeps every tied token (float64 masses).

    Top-k is the reference's (values below the k-th largest dropped); top-p keeps a value when the mass of the values
    at or below it exceeds ``1 - top_p`` (and always the largest): the reference's rule where no two values tie at its
    boundary (it cuts its ascending sort at a position, so it may keep only some of a tied group).
    """
    x = guided_BlV.double()
    if top_k:
        x = x.masked_fill(x < x.topk(top_k, dim=-1).values[..., -1:], float("-inf"))
    if top_p:
        p = x.softmax(dim=-1)
        mass_at_or_below = ((x.unsqueeze(-2) <= x.unsqueeze(-1)) * p.unsqueeze(-2)).sum(-1)
        keep = (mass_at_or_below > 1 - top_p) | (x == x.amax(dim=-1, keepdim=True))
        x = x.masked_fill(~keep, float("-inf"))
    return x > float("-inf")


@pytest.mark.parametrize("top_k,top_p", [(7, 0.0), (1, 0.0), (0, 0.8), (0, 0.5), (7, 0.9), (64, 0.99), (3, 0.3),
                                         (0, 1e-9), (9, 1e-9)])
def test_sampling_kernel_cut_offs_on_tied_values(top_k, top_p):
    """The kernel's cut-offs (found by bisection, not a sort) on logits with many ties, at both filters' boundaries.

    The logits are rounded to halves, and in three trials of four both CFG halves are equal (the guided values tie
    where the logits do), so the k-th value and the top-p boundary fall on tied values: the surviving tokens are
    those of the tie-keeping rule above, top-k alone is the reference's exactly, and the distribution and draws
    follow from the surviving tokens. A top-p of 1e-9 (``1 - top_p`` is 1 in float32) keeps only the largest values.
    The rule at the top-p boundary itself (``mass <= 1 - top_p`` dropped, the reference's) cannot be told apart from
    ``<`` by any float32 row: the mass of a tied group's values equals ``1 - top_p`` only by rounding accident.
    """
    from sdvar_lib.fast.kernels.sampling import sample_stage

    gen = torch.Generator().manual_seed(5)
    V, Cv, l, t = 64, 6, 5, 0.7
    for trial in range(4):
        logits = (torch.randn(2 * B, l + 1, V, generator=gen) * 4).round() / 2
        if trial < 3:
            logits[B:] = logits[:B]
        codebook = torch.randn(V, Cv, generator=gen)
        idx, probs, h = sample_stage(logits, l, t, top_k, top_p, codebook, torch.Generator().manual_seed(trial))
        guided = logits[:B, -l:] * (1 + t) - logits[B:, -l:] * t
        kept = _kept_with_whole_tie_groups(guided, top_k, top_p)
        assert torch.equal(probs > 0, kept), (trial, (probs > 0).sum(-1), kept.sum(-1))
        want_p = guided.masked_fill(~kept, float("-inf")).softmax(dim=-1)
        assert torch.allclose(probs, want_p, atol=1e-6)
        if not top_p:
            assert torch.allclose(probs, stage_probs(guided, SamplingConfig(cfg=1.5, top_k=top_k)), atol=1e-6)
        assert torch.equal(idx, sample_from_probs(want_p, torch.Generator().manual_seed(trial)))
        assert torch.equal(h, codebook[idx])


def test_stage_attention_choice_and_its_pass(tiny_pair, monkeypatch):
    """``FastConfig.stage_attention``: ``"fused"`` sends every single stage after the first through the one kernel,
    ``"sdpa"`` none (and PyTorch's block ops never); ``"auto"`` follows :func:`fused_stage_pays`; a chunk of several
    stages never. Both give the same logits (float32) and the same greedy tokens of the target and of SDVAR."""
    from sdvar_lib.fast import fused as fused_module
    from sdvar_lib.fast.kernels import attention

    _, draft, target = tiny_pair
    launched = []
    real = attention.stage_attention
    monkeypatch.setattr(attention, "stage_attention", lambda *a, **k: launched.append(a[0].shape[1]) or real(*a, **k))
    gen = torch.Generator().manual_seed(0)
    xs = [torch.randn(2 * B, chunk_span(target, s, 1)[1], target.C, generator=gen) for s in range(target.num_stages)]
    logits = {}
    for mode, kernels in (("fused", "triton"), ("sdpa", "triton"), ("fused", "torch")):
        run = FastRun(target, B, FastConfig(use_cuda_graphs=False, kernels=kernels, stage_attention=mode))
        run.begin(torch.tensor([1, 4]))
        launched.clear()
        logits[mode, kernels] = torch.cat([run.forward(x).clone() for x in xs], dim=1)
        fused = mode == "fused" and kernels == "triton"
        assert launched == ([x.shape[1] for x in xs[1:] for _ in range(target.depth)] if fused else [])
        assert [run._chunk_attention(*chunk_span(target, s, 1)).fused for s in range(target.num_stages)] == (
            [fused] * target.num_stages)
        assert not run._chunk_attention(*chunk_span(target, 1, 2)).fused
    assert _rel(logits["fused", "triton"], logits["sdpa", "triton"]) < 1e-5
    assert _rel(logits["fused", "torch"], logits["sdpa", "triton"]) < 1e-5
    for verdict in (True, False):
        monkeypatch.setattr(fused_module, "fused_stage_pays", lambda rows_heads, position, l, v=verdict: v)
        monkeypatch.setattr("sdvar_lib.fast.run.fused_stage_pays", fused_module.fused_stage_pays)
        run = FastRun(target, B, FastConfig(use_cuda_graphs=False, kernels="triton"))
        assert run._chunk_attention(*chunk_span(target, 2, 1)).fused == verdict
    calls = (lambda sd: baseline(sd, 1, [7], g_seed=5, sampling=SamplingConfig(top_k=1)),
             lambda sd: sd.generate_parallel(1, [3], g_seed=5, gamma=2, sampling=SamplingConfig(top_k=1)))
    tokens = {}
    for mode in ("fused", "sdpa"):
        sd = SDVAR(draft, target, run_factory=FastRunFactory(FastConfig(use_cuda_graphs=False, kernels="triton",
                                                                        sampler="torch", stage_attention=mode)))
        tokens[mode] = [[t.tolist() for t in call(sd).tokens_per_stage] for call in calls]
    assert tokens["fused"] == tokens["sdpa"]


def test_triton_block_kernels_in_the_fast_path_equal_eager(tiny_pair):
    """The fast path on the interpreted block kernels: greedy tokens of the target alone and of SDVAR equal the eager ones."""
    _, draft, target = tiny_pair
    assert resolve_backend("triton", "cpu") == "triton"
    fast = SDVAR(draft, target, run_factory=FastRunFactory(FastConfig(use_cuda_graphs=False, kernels="triton",
                                                                      sampler="torch")))
    eager = SDVAR(draft, target)
    for call in (lambda sd: baseline(sd, 1, [7], g_seed=5, sampling=SamplingConfig(top_k=1)),
                 lambda sd: sd.generate_parallel(1, [3], g_seed=5, gamma=2, sampling=SamplingConfig(top_k=1))):
        got, ref = call(fast), call(eager)
        assert [t.tolist() for t in got.tokens_per_stage] == [t.tolist() for t in ref.tokens_per_stage]
    assert {(r.kernels, r.sampler) for r in fast.run_factory.runs()} == {("triton", "torch")}


def test_fused_sampler_in_the_fast_path_draws_the_eager_tokens(tiny_pair):
    """Sampled (top-k 5, top-p 0.9) with a seed: the fused sampler's tokens are the eager path's, stage for stage."""
    _, draft, target = tiny_pair
    fast = SDVAR(draft, target, run_factory=FastRunFactory(FastConfig(use_cuda_graphs=False, kernels="torch",
                                                                      sampler="fused")))
    got = baseline(fast, 1, [4], g_seed=9, sampling=SamplingConfig(top_k=5, top_p=0.9))
    ref = baseline(SDVAR(draft, target), 1, [4], g_seed=9, sampling=SamplingConfig(top_k=5, top_p=0.9))
    assert [t.tolist() for t in got.tokens_per_stage] == [t.tolist() for t in ref.tokens_per_stage]
    assert torch.equal(got.images_B3HW, ref.images_B3HW)
    assert {(r.kernels, r.sampler) for r in fast.run_factory.runs()} == {("torch", "fused")}


def test_triton_chunked_pass_equals_sequential_and_torch(tiny_pair):
    _, _, target = tiny_pair
    label_B = torch.tensor([3])
    tri = FastRun(target, 1, FastConfig(use_cuda_graphs=False, kernels="triton"))
    ref = FastRun(target, 1, FastConfig(use_cuda_graphs=False, kernels="torch"))
    gen = torch.Generator().manual_seed(4)
    xs = [torch.randn(2, chunk_span(target, s, 1)[1], target.C, generator=gen) for s in range(3)]
    outs = {}
    for name, run in (("tri", tri), ("ref", ref)):
        run.begin(label_B)
        outs[name + "_seq"] = torch.cat([run.forward(x).clone() for x in xs], dim=1)
        run.begin(label_B)
        outs[name + "_chunk"] = run.forward(torch.cat(xs, dim=1)).clone()
    assert _rel(outs["tri_chunk"], outs["tri_seq"]) < 1e-5
    assert _rel(outs["tri_seq"], outs["ref_seq"]) < 1e-5


# ---- warm-ups (sdvar_lib.fast.kernels.precompile): they launch what a pass launches ------------------------------
def _launch_key(kernel, grid, args, kwargs) -> tuple:
    """What Triton compiles a launch by: the kernel, its tensors' dtypes and 16-byte alignment, its specialised ints'
    divisibility by 16 (and whether they are 1), and every keyword (constexprs and options); unspecialised sizes are
    left out, and so are ``BLOCK_M`` and ``num_warps``: in the interpreter they follow the row count (see
    ``rows_per_program``), on a GPU at the official widths they are one value per kernel (``tests/test_gpu_fast.py``
    checks that a call compiles nothing after the warm-ups)."""
    import inspect

    from sdvar_lib.fast.kernels.attention import SIZES as SIZES_ATTENTION
    from sdvar_lib.fast.kernels.block import SIZES_ADD_LN, SIZES_QK_NORM
    from sdvar_lib.fast.kernels.sampling import SIZES_SAMPLE, UNALIGNED_SAMPLE

    names = list(inspect.signature(kernel.fn).parameters)
    loose = set(SIZES_ADD_LN) | set(SIZES_QK_NORM) | set(SIZES_SAMPLE) | set(SIZES_ATTENTION)
    parts = []
    for name, a in zip(names, args):
        if isinstance(a, torch.Tensor):
            parts.append((name, a.dtype) if name in UNALIGNED_SAMPLE else (name, a.dtype, a.data_ptr() % 16 == 0))
        elif isinstance(a, bool) or not isinstance(a, int):
            parts.append((name, type(a).__name__))
        else:
            parts.append((name, "int") if name in loose else (name, a == 1, a % 16 == 0))
    # the stage attention's query block follows the stage's length on every device: a compiled version each
    kept = ("BLOCK_M",) if kernel.fn.__name__ == "_stage_attention_kernel" else ()
    options = tuple(sorted((k, v) for k, v in kwargs.items() if k not in ("BLOCK_M", "num_warps") or k in kept))
    return (kernel.fn.__name__, tuple(parts), options)


@pytest.fixture
def launches(monkeypatch):
    """Every kernel launch made through ``precompile.launch`` by the block and sampling kernels, as keys."""
    from sdvar_lib.fast.kernels import attention, block, precompile
    from sdvar_lib.fast.kernels import sampling as sampling_kernels

    seen: list[tuple] = []

    def recording(kernel, grid, *args, **kwargs):
        seen.append(_launch_key(kernel, grid, args, kwargs))
        precompile.launch(kernel, grid, *args, **kwargs)

    monkeypatch.setattr(block, "launch", recording)
    monkeypatch.setattr(attention, "launch", recording)
    monkeypatch.setattr(sampling_kernels, "launch", recording)
    return seen


@pytest.mark.parametrize("dtype,half_head", [(torch.float32, False), (torch.bfloat16, False), (torch.bfloat16, True)])
def test_block_warmups_launch_exactly_what_a_pass_and_its_check_launch(tiny_pair, launches, monkeypatch, dtype,
                                                                       half_head):
    """The block kernels' warm-ups make the same launches (by Triton's compile key) as the fused pass of a stage
    and a chunk and the block check - none missing (it would compile on first use), none extra (wasted)."""
    import copy

    from sdvar_lib.fast import fused
    from sdvar_lib.fast.fused import TritonBlockOps, block_warmups

    _, _, target = tiny_pair
    model = copy.deepcopy(target).to(dtype)
    # the half head's mixed-dtype product has no CPU kernel: a float32 stand-in with the same output
    monkeypatch.setattr(fused, "half_head_matmul",
                        lambda h, w, b, out: torch.addmm(b, h.float(), w.float().t(), out=out))
    run = FastRun(model, B, FastConfig(use_cuda_graphs=False, kernels="triton", sampler="torch"))
    run._fused.half_head = half_head
    run._fused.ops = TritonBlockOps()
    run.begin(torch.tensor([1, 4]))
    gen = torch.Generator().manual_seed(0)
    for s in range(2):
        run.forward(torch.randn(2 * B, chunk_span(model, s, 1)[1], model.C, generator=gen).to(dtype))
    run.forward(torch.randn(2 * B, chunk_span(model, 2, 2)[1], model.C, generator=gen).to(dtype))
    assert check_block_ops(TritonBlockOps(), model.C, model.num_heads, dtype, torch.device("cpu")) is None
    used = set(launches)
    assert any(key[0] == "_stage_attention_kernel" for key in used)  # stage 1 attended through the fused kernel
    launches.clear()
    for warmup in block_warmups(TritonBlockOps(), model, dtype, torch.device("cpu"), half_head):
        warmup()
    assert set(launches) == used


def test_sampler_warmups_launch_exactly_what_sampling_and_verifying_launch(tiny_pair, launches, monkeypatch):
    """The fused sampler's warm-up for a sampling makes the one compiled version that a sampled call (odd batch: token
    slots 8-byte aligned) and an SDVAR call's verify (no draw) launch."""
    from sdvar_lib.fast.kernels import sampling as sampling_kernels
    from sdvar_lib.fast.sampling import FusedSampler

    draws, real_launch = set(), sampling_kernels._launch

    def recording(*args, draw):
        draws.add(draw)
        real_launch(*args, draw=draw)

    monkeypatch.setattr(sampling_kernels, "_launch", recording)
    _, draft, target = tiny_pair
    sampling = SamplingConfig(top_k=5, top_p=0.9)
    fast = SDVAR(draft, target, run_factory=FastRunFactory(FastConfig(use_cuda_graphs=False, kernels="torch",
                                                                      sampler="fused")))
    baseline(fast, 1, [4], g_seed=9, sampling=sampling)
    fast.generate_parallel(2, [3, 5], g_seed=2, gamma=2, sampling=sampling)
    assert draws == {False, True}  # both forms were launched ...
    used = set(launches)
    assert len(used) == 1  # ... as one compiled version
    launches.clear()
    for warmup in FusedSampler(target).warmups(sampling):
        warmup()
    assert set(launches) == used


@pytest.mark.parametrize("pn,out,layout", [(1, 16, "last"), (2, 16, "last"), (3, 16, "last"), (5, 16, "last"),
                                           (13, 16, "last"), (3, 8, "first"), (5, 12, "first"), (4, 7, "last")])
def test_bicubic_kernel_equals_interpolate(pn, out, layout):
    """The f_hat update's bicubic upsampling (``fast.kernels.bicubic``) gives ``F.interpolate``'s values (within the
    interpreter's unfused float32 rounding; bit for bit is checked on a GPU) and its output layout, for the
    channels-last token maps the stage steps make and for contiguous maps; bf16 maps stay bf16."""
    import torch.nn.functional as F

    from sdvar_lib.fast.kernels.bicubic import upsample_bicubic

    gen = torch.Generator().manual_seed(pn * 100 + out)
    B, C = 3, 32
    if layout == "last":
        x = torch.randn(B, pn * pn, C, generator=gen).transpose(1, 2).reshape(B, C, pn, pn)
    else:
        x = torch.randn(B, C, pn, pn, generator=gen)
    got, want = upsample_bicubic(x, (out, out)), F.interpolate(x, size=(out, out), mode="bicubic")
    assert got.stride() == want.stride() and got.dtype == want.dtype
    assert torch.allclose(got, want, rtol=2e-6, atol=2e-6)
    x16 = x.to(torch.bfloat16)
    got16 = upsample_bicubic(x16, (out, out))
    assert got16.dtype == torch.bfloat16
    assert torch.allclose(got16.float(), F.interpolate(x16.float(), size=(out, out), mode="bicubic"), rtol=2**-7, atol=1e-3)


def test_check_upsample_wants_bits_and_layout(tiny_pair):
    """``check_upsample`` passes PyTorch's own upsampling and fails one ulp off, another layout or a raising kernel;
    on the CPU ``resolve_upsample`` keeps PyTorch's (its CPU kernel does other float32 arithmetic than its CUDA one)."""
    from sdvar_lib.fast.upsample import check_upsample, resolve_upsample
    from sdvar_lib.models.quant import bicubic

    _, _, target = tiny_pair
    assert check_upsample(bicubic, target) is None

    def ulp_off(h, size):
        y = bicubic(h, size)
        return torch.nextafter(y, torch.full_like(y, float("inf")))

    def other_layout(h, size):
        return bicubic(h, size).contiguous()

    def broken(h, size):
        raise RuntimeError("no kernel image")

    assert "values differ" in check_upsample(ulp_off, target)
    assert "strides" in check_upsample(other_layout, target)
    assert "no kernel image" in check_upsample(broken, target)
    assert resolve_upsample("triton", target) is bicubic and resolve_upsample("torch", target) is bicubic


def test_bicubic_output_layout_costs_no_heavy_import():
    """Asking PyTorch for the output's layout imports nothing heavy: a meta tensor's first use imports PyTorch's Python
    meta registrations and sympy (2.7 s of every process's first call; measured on the H200 as +3.6-5.5 s first calls)."""
    import subprocess
    import sys

    code = ("import sys, torch\n"
            "from sdvar_lib.fast.kernels.bicubic import _output_strides\n"
            "before = 'sympy' in sys.modules\n"
            "print(before, _output_strides((2, 32, 3, 3), (288, 1, 96, 32), (16, 16)), 'sympy' in sys.modules)\n")
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["False", "(8192,", "1,", "512,", "32)", "False"], done.stdout


def test_triton_upsample_is_checked_once_per_device_and_sizes(tiny_pair, caplog):
    """Every run of a model asks for the same verdict (GPU, software and sizes decide it): the check runs once per
    process and its warning is logged once (on the CPU it fails: PyTorch's CPU kernel rounds otherwise)."""
    import logging

    from sdvar_lib.fast import upsample
    from sdvar_lib.models.quant import bicubic

    _, _, target = tiny_pair
    upsample._triton_upsample.cache_clear()
    key = (torch.device("cpu"), target.Cvae, tuple(target.patch_nums))
    with caplog.at_level(logging.WARNING, logger="sdvar_lib.fast.upsample"):
        assert all(upsample._triton_upsample(*key) is bicubic for _ in range(3))
    assert sum("not bit-exact" in r.getMessage() for r in caplog.records) == 1
    upsample._triton_upsample.cache_clear()
