"""GPU checks of the fused fast path (skipped without CUDA): Triton kernels at official widths, bf16 and fp16.

- the Triton block kernels give the PyTorch kernels' logits (and the float32 eager pass's, within
  half-precision tolerance) for single stages and block-causal chunks, in bf16 and in fp16 (the
  dtype of GPUs without bf16, such as the T4);
- greedy SDVAR equals the greedy target on the fused, graphed path;
- the fused sampler draws what the PyTorch sampler draws from the same generator, and
  ``torch.multinomial`` is the ``argmax(p / Exp(1))`` draw the fused sampler relies on;
- the fast VQVAE decode (bf16 and fp16, Triton GroupNorm) stays close to the float32 decode, graphed or not.
"""

from __future__ import annotations

import pytest
import torch

from sdvar_lib import SDVAR, SamplingConfig
from sdvar_lib.fast.config import FastConfig
from sdvar_lib.fast.decode import FastDecoder
from sdvar_lib.fast.factory import FastRunFactory
from sdvar_lib.fast.graphs import GraphedDecode
from sdvar_lib.fast.run import FastRun, chunk_span
from sdvar_lib.models.presets import build_tiny, build_vae, build_var
from sdvar_lib.models.sampling import guided_logits, sample_from_probs, stage_probs
from sdvar_lib.sdvar.handoff import baseline

pytestmark = pytest.mark.gpu

HALF = [torch.bfloat16, torch.float16]


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


@pytest.fixture(scope="module")
def d16(cuda_device_module):
    torch.manual_seed(0)
    vae = build_vae(cuda_device_module)
    return vae, build_var(vae, 16, cuda_device_module)


@pytest.fixture(scope="module")
def cuda_device_module():
    if not torch.cuda.is_available():
        pytest.skip("CUDA is not available")
    return torch.device("cuda")


def _chunk_logits(run: FastRun, label_B: torch.Tensor, xs: list[torch.Tensor], together: bool) -> torch.Tensor:
    run.begin(label_B)
    if together:
        return run.forward(torch.cat(xs, dim=1)).clone()
    return torch.cat([run.forward(x).clone() for x in xs], dim=1)


@pytest.mark.parametrize("dtype", HALF)
def test_gpu_triton_pass_matches_torch_and_float32(d16, dtype):
    vae, model32 = d16
    model = build_var(vae, 16, model32.device)
    model.load_state_dict(model32.state_dict())
    model = model.to(dtype).eval()
    label_B = torch.tensor([3, 999], device=model.device)
    gen = torch.Generator(device=model.device).manual_seed(1)
    xs = [torch.randn(4, chunk_span(model, s, 1)[1], model.C, generator=gen, device=model.device) * 0.5 for s in range(5)]
    tri = FastRun(model, 2, FastConfig(use_cuda_graphs=False, kernels="triton"))
    ref = FastRun(model, 2, FastConfig(use_cuda_graphs=False, kernels="torch", head="float32"))
    exact = FastRun(model32, 2, FastConfig(use_cuda_graphs=False, kernels="torch"))
    assert (tri.kernels, tri.head) == ("triton", "half") and (ref.kernels, ref.head, exact.head) == ("torch", "float32",
                                                                                                       "float32")
    got = _chunk_logits(tri, label_B, [x.to(dtype) for x in xs], together=False)
    want = _chunk_logits(ref, label_B, [x.to(dtype) for x in xs], together=False)
    want32 = _chunk_logits(exact, label_B, xs, together=False)
    chunked = _chunk_logits(tri, label_B, [x.to(dtype) for x in xs], together=True)
    assert bool(torch.isfinite(got).all())
    assert _rel(got, want) < 2e-2 and _rel(got, want32) < 3e-2
    assert _rel(chunked, got) < 2e-2  # one block-causal pass over five stages = five single-stage passes


@pytest.mark.parametrize("chunk_attention", ["masked", "per_stage"])
def test_gpu_fused_graphed_greedy_sdvar_equals_greedy_target(cuda_device_module, chunk_attention):
    vae, target = build_tiny(seed=0, device=cuda_device_module)
    _, draft = build_tiny(seed=1, depth=1, vae=vae, device=cuda_device_module)
    draft, target = draft.to(torch.bfloat16), target.to(torch.bfloat16)
    sd = SDVAR(draft, target, run_factory=FastRunFactory(FastConfig(use_cuda_graphs=True, kernels="triton",
                                                                    sampler="fused", chunk_attention=chunk_attention)))
    for labels in ([1, 7], [4, 4], [0, 9]):
        want = baseline(sd, 2, labels, g_seed=3, sampling=SamplingConfig(top_k=1))
        for gamma in (1, 2, 3):
            got = sd.generate_parallel(2, labels, g_seed=3, gamma=gamma, sampling=SamplingConfig(top_k=1))
            assert [t.tolist() for t in got.tokens_per_stage] == [t.tolist() for t in want.tokens_per_stage]
    runs = sd.run_factory.runs()
    assert {(r.kernels, r.sampler) for r in runs} == {("triton", "fused")}
    assert sum(r.counters.capture_failures for r in runs) == 0 and sum(r.counters.replays for r in runs) > 0


@pytest.mark.parametrize("top_k,top_p", [(0, 0.0), (900, 0.96), (1, 0.0), (0, 0.5)])
def test_gpu_fused_sampler_draws_the_torch_samplers_tokens(cuda_device_module, top_k, top_p):
    from sdvar_lib.fast.kernels.sampling import sample_stage

    device = cuda_device_module
    gen = torch.Generator(device=device).manual_seed(2)
    B, chunk_l, l, V = 8, 300, 256, 4096
    logits = torch.randn(2 * B, chunk_l, V, generator=gen, device=device) * 4
    codebook = torch.randn(V, 32, generator=gen, device=device)
    idx, probs, h = sample_stage(logits, l, 1.5, top_k, top_p, codebook, torch.Generator(device=device).manual_seed(7))
    want_p = stage_probs(guided_logits(logits[:, -l:], 9, 10, 1.5), SamplingConfig(top_k=top_k, top_p=top_p))
    want = sample_from_probs(want_p, torch.Generator(device=device).manual_seed(7))
    agree = float((idx == want).float().mean())
    assert agree >= 0.999, f"fused sampler agrees with the PyTorch draw on {agree:.4%} of tokens"
    assert float((probs - want_p).abs().max()) < 1e-5
    assert torch.equal(h, codebook[idx])


def test_gpu_multinomial_is_the_exponential_argmax_draw(cuda_device_module):
    device = cuda_device_module
    p = torch.rand(512, 4096, device=device).pow(8)
    p = p / p.sum(dim=-1, keepdim=True)
    a = torch.multinomial(p, 1, replacement=True, generator=torch.Generator(device=device).manual_seed(5))
    noise = torch.empty_like(p).exponential_(generator=torch.Generator(device=device).manual_seed(5))
    assert torch.equal(a.squeeze(1), (p / noise).argmax(dim=-1))


@pytest.mark.parametrize("C", [160, 320, 640])
def test_gpu_group_norm_kernel(cuda_device_module, C):
    from sdvar_lib.fast.kernels.groupnorm import group_norm_nhwc

    device = cuda_device_module
    x = (torch.randn(3, C, 37, 29, device=device) * 3 + 1).to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
    w, b = torch.randn(C, device=device), torch.randn(C, device=device)
    want = torch.nn.functional.silu(torch.nn.functional.group_norm(x.float(), 32, w, b, 1e-6))
    got = group_norm_nhwc(x, 32, w.to(torch.bfloat16), b.to(torch.bfloat16), 1e-6, silu=True)
    assert got.dtype == torch.bfloat16 and got.is_contiguous(memory_format=torch.channels_last)
    assert _rel(got, want) < 1e-2


@pytest.mark.parametrize("dtype", HALF)
def test_gpu_fast_decode_close_to_float32(d16, dtype):
    vae, _ = d16
    f_hat = torch.randn(2, vae.Cvae, 16, 16, device=vae.post_quant_conv.weight.device)
    with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
        want = vae.fhat_to_img(f_hat)
        fast = FastDecoder(vae, dtype=dtype)
        assert fast.backend == "triton"
        got = fast(f_hat)
        graphed = GraphedDecode(vae, fast=True, dtype=dtype)
        with graphed.installed():
            got_graphed = vae.fhat_to_img(f_hat)
        with torch.autocast("cuda", dtype=dtype):  # the first fast path's decode: the reference under autocast
            autocast_err = _rel(vae.fhat_to_img(f_hat), want)
    assert got.dtype == torch.float32 and bool(torch.isfinite(got).all())
    assert _rel(got, want) < max(1.5 * autocast_err, 1e-2), f"autocast decode error {autocast_err:.2e}"
    assert _rel(got_graphed, got) < 1e-3 and graphed.capture_time_s > 0


@pytest.mark.parametrize("sampler", ["torch", "fused"])
def test_gpu_whole_stage_graphs_equal_the_step_by_step_stage(d16, sampler):
    """A whole-stage CUDA graph draws the tokens the pass + sampler + VQ steps draw (same noise, same kernels)."""
    vae, model32 = d16
    model = build_var(vae, 16, model32.device)
    model.load_state_dict(model32.state_dict())
    model = model.to(torch.bfloat16).eval()
    from sdvar_lib.models.run import ModelRun
    from sdvar_lib.models.sampling import SamplingConfig

    sampling = SamplingConfig(cfg=1.5, top_k=900, top_p=0.96)
    run = FastRun(model, 2, FastConfig(use_cuda_graphs=True, sampler=sampler))
    labels = torch.tensor([1, 500], device=model.device)
    outs = []
    for whole in (True, False):
        run.begin(labels)
        rng = torch.Generator(device=model.device).manual_seed(4)
        tokens, f_hats = [], []
        for si in range(model.num_stages):
            step = run.decode_stage if whole else (lambda *a: ModelRun.decode_stage(run, *a))
            sample, f_hat = step(si, f_hats, sampling, rng)
            tokens.append(sample.idx_Bl)
            f_hats.append(f_hat)
        outs.append((tokens, f_hats))
    for a, b in zip(*(o[0] for o in outs)):
        assert torch.equal(a, b)
    assert torch.equal(outs[0][1][-1], outs[1][1][-1])
    assert run.counters.replays > 0 and run.counters.capture_failures == 0


@pytest.mark.parametrize("dtype", HALF)
def test_gpu_first_stage_pass_without_attention_is_bit_exact(d16, dtype):
    """On the GPU too, the first stage's fused pass without attention (one key: weight exactly 1) gives the logits and
    cache of the same pass through the attention kernel (forced by an explicit all-true mask), bit for bit."""
    vae, model32 = d16
    model = build_var(vae, 16, model32.device)
    model.load_state_dict(model32.state_dict())
    model = model.to(dtype).eval()
    run = FastRun(model, 2, FastConfig(use_cuda_graphs=False))
    x = torch.randn(4, 1, model.C, generator=torch.Generator(device=model.device).manual_seed(0),
                    device=model.device).to(dtype)
    outs = []
    with torch.no_grad():
        for mask in (None, torch.ones(1, 1, dtype=torch.bool, device=model.device)):
            run.begin(torch.tensor([3, 7], device=model.device))
            out = torch.empty(4, 1, model.V, device=model.device)
            run._fused.step(x, run.cache, 0, mask, out)
            outs.append((out, run.cache.v_NBHLc[:, :, :, :1].clone()))
    assert torch.equal(outs[0][0], outs[1][0]) and torch.equal(outs[0][1], outs[1][1])


@pytest.mark.parametrize("dtype", HALF)
def test_gpu_per_stage_chunk_attention_matches_the_masked_one(d16, dtype):
    """At the official d16 width, a verify chunk's pass with one unmasked attention per stage gives the masked pass's
    logits (within half-precision rounding: other kernels, the same scores) and the single-stage passes' too, at the
    chunks of gamma 4 and gamma 2, batch 2 and 8, graphed."""
    vae, model32 = d16
    model = build_var(vae, 16, model32.device)
    model.load_state_dict(model32.state_dict())
    model = model.to(dtype).eval()
    gen = torch.Generator(device=model.device).manual_seed(2)
    for B, (c, n) in ((2, (0, 5)), (2, (5, 5)), (8, (7, 3))):
        label_B = torch.arange(B, device=model.device) * 97
        xs = [torch.randn(2 * B, chunk_span(model, s, 1)[1], model.C, generator=gen, device=model.device).to(dtype) * 0.5
              for s in range(c + n)]
        got = {}
        for mode in ("masked", "per_stage"):
            run = FastRun(model, B, FastConfig(chunk_attention=mode))
            run.begin(label_B)
            for x in xs[:c]:  # the prefix, stage by stage
                run.forward(x)
            got[mode] = run.forward(torch.cat(xs[c:], dim=1)).clone()
            attention = run._chunk_attention(*chunk_span(model, c, n))
            assert (attention.mask is None) == (mode == "per_stage") and run.counters.capture_failures == 0
        single = FastRun(model, B, FastConfig())
        single.begin(label_B)
        alone = torch.cat([single.forward(x).clone() for x in xs], dim=1)[:, -got["masked"].shape[1]:]
        assert bool(torch.isfinite(got["per_stage"]).all())
        assert _rel(got["per_stage"], got["masked"]) < 1e-2 and _rel(got["per_stage"], alone) < 2e-2


@pytest.mark.parametrize("dtype", HALF)
def test_gpu_fused_stage_attention_matches_sdpa(d16, dtype):
    """At the official d16 width, graphed, batch 1 and 8: every single stage's pass with the fused stage attention
    (one Triton kernel: q/k norm, cache write, attention) gives the logits of the pass through the q/k norm kernel and
    PyTorch's SDPA within half-precision rounding, the same greedy tokens almost everywhere, and the same first layer's
    KV cache bit for bit (the same normalised keys; later layers' inputs differ by the attention's rounding)."""
    vae, model32 = d16
    model = build_var(vae, 16, model32.device)
    model.load_state_dict(model32.state_dict())
    model = model.to(dtype).eval()
    gen = torch.Generator(device=model.device).manual_seed(4)
    for B in (1, 8):
        label_B = torch.arange(B, device=model.device) * 97
        xs = [torch.randn(2 * B, chunk_span(model, s, 1)[1], model.C, generator=gen, device=model.device).to(dtype) * 0.5
              for s in range(model.num_stages)]
        got, caches = {}, {}
        for mode in ("sdpa", "fused"):
            run = FastRun(model, B, FastConfig(stage_attention=mode))
            run.begin(label_B)
            got[mode] = torch.cat([run.forward(x).clone() for x in xs], dim=1)
            caches[mode] = (run.cache.k_NBHLc[0].clone(), run.cache.v_NBHLc[0].clone())
            assert run._chunk_attention(*chunk_span(model, 3, 1)).fused == (mode == "fused")
            assert run.counters.capture_failures == 0 and run.counters.replays > 0
        assert bool(torch.isfinite(got["fused"]).all())
        assert _rel(got["fused"], got["sdpa"]) < 1e-2
        assert (got["fused"].argmax(-1) == got["sdpa"].argmax(-1)).float().mean() > 0.99
        assert all(torch.equal(a, b) for a, b in zip(caches["fused"], caches["sdpa"]))


def test_gpu_fused_stage_attention_is_deterministic(d16):
    """The fused stage attention forced at every stage of the official d16 (bf16, batch 2, graphed): four runs over the
    same inputs give the same logits bit for bit at every stage (pipelined, the compiled kernel did not at stage 9:
    ``kernels.attention.NUM_STAGES``)."""
    vae, model32 = d16
    model = build_var(vae, 16, model32.device)
    model.load_state_dict(model32.state_dict())
    model = model.to(torch.bfloat16).eval()
    gen = torch.Generator(device=model.device).manual_seed(5)
    xs = [torch.randn(4, chunk_span(model, s, 1)[1], model.C, generator=gen, device=model.device).bfloat16() * 0.5
          for s in range(model.num_stages)]
    run = FastRun(model, 2, FastConfig(stage_attention="fused"))
    outs = []
    for _ in range(4):
        run.begin(torch.tensor([1, 500], device=model.device))
        outs.append(torch.cat([run.forward(x).clone() for x in xs], dim=1))
    assert all(torch.equal(outs[0], o) for o in outs[1:])


def test_gpu_bicubic_kernel_is_interpolate_bit_for_bit(d16):
    """At official sizes (Cvae 32, every upsampled stage from 1x1 to 13x13, to 16x16) and batch 1 and 32, the f_hat
    update's Triton upsampling equals ``F.interpolate``'s CUDA kernel bit for bit, layout included; so a fast run of an
    official model takes it (``FastRun.upsample``), and its stage programs' f_hat stays the reference's."""
    from sdvar_lib.fast.kernels.bicubic import upsample_bicubic
    from sdvar_lib.fast.upsample import check_upsample

    _, model = d16
    for batch in (1, 32):
        assert check_upsample(upsample_bicubic, model, batch=batch) is None
    assert FastRun(model, 1, FastConfig(use_cuda_graphs=False)).upsample is upsample_bicubic
    assert FastRun(model, 1, FastConfig(use_cuda_graphs=False, kernels="torch")).upsample is not upsample_bicubic


def _compiled_versions(kernel) -> int:
    """Compiled versions of a Triton kernel in this process (``device_caches`` in Triton 3.x, ``cache`` before)."""
    caches = getattr(kernel, "device_caches", None)
    if caches is not None:
        return sum(len(entry[0]) for entry in caches.values())
    return sum(len(cache) for cache in kernel.cache.values())


def test_gpu_block_kernels_compile_one_version_for_every_chunk(cuda_device_module):
    """The chunk sizes (rows, tokens, cache position) are not specialised: chunks of 1, 8, 9, 16 and 50 tokens
    at positions 0, 1, 16 and 30 reuse one compiled version per kernel (unspecialised, a chunk of 1 token or of
    a multiple of 16 would compile its own: 49 versions in a cold d16 -> d30 process, H200 12-02)."""
    from sdvar_lib.fast.kernels import block

    device, C, H, D, rows = cuda_device_module, 1024, 16, 64, 2
    scale = torch.ones(rows, 6, C, dtype=torch.bfloat16, device=device)
    k_cache = torch.zeros(rows, H, 128, D, dtype=torch.bfloat16, device=device)
    v_cache = torch.zeros_like(k_cache)
    factor = torch.ones(H, dtype=torch.float32, device=device)
    chunks = [(0, 1), (1, 8), (16, 9), (30, 16), (50, 50)]
    for position, l in chunks[:1]:  # compile once
        x = torch.randn(rows, l, C, dtype=torch.bfloat16, device=device)
        block.add_ln_modulate(x, scale[:, 2], scale[:, 4], 1e-6, o=x, gate=scale[:, 0])
        block.qk_norm_into_cache(torch.randn(rows, l, 3 * C, dtype=torch.bfloat16, device=device), k_cache, v_cache,
                                 position, factor)
    before = (_compiled_versions(block._add_ln_modulate_kernel), _compiled_versions(block._qk_norm_cache_kernel))
    for position, l in chunks[1:]:
        x = torch.randn(rows, l, C, dtype=torch.bfloat16, device=device)
        block.add_ln_modulate(x, scale[:, 2], scale[:, 4], 1e-6, o=x, gate=scale[:, 0])
        block.qk_norm_into_cache(torch.randn(rows, l, 3 * C, dtype=torch.bfloat16, device=device), k_cache, v_cache,
                                 position, factor)
    torch.cuda.synchronize()
    after = (_compiled_versions(block._add_ln_modulate_kernel), _compiled_versions(block._qk_norm_cache_kernel))
    assert after == before, f"compiled versions (add_ln_modulate, qk_norm_into_cache) {before} -> {after}"


def test_gpu_drawn_labels_are_the_references_multinomial_draw(cuda_device_module):
    """On CUDA too, batch-1 labels (multinomial's one-sample draw without its checks) are ``torch.multinomial``'s,
    and the generator moves as far."""
    from sdvar_lib.models.sampling import prepare_labels

    device = cuda_device_module
    uniform = torch.full((1, 1000), 1e-3, device=device)
    for seed in range(200):
        ours = torch.Generator(device=device).manual_seed(seed)
        ref = torch.Generator(device=device).manual_seed(seed)
        labels = prepare_labels(1, None, 1000, ours, device)
        assert torch.equal(labels, torch.multinomial(uniform, 1, replacement=True, generator=ref).reshape(1)), seed
        assert torch.equal(torch.rand(4, device=device, generator=ours), torch.rand(4, device=device, generator=ref))


def test_gpu_graphed_stage_programs_without_a_seed_take_the_global_stream(cuda_device_module):
    """``g_seed=None`` on a GPU: the graphed stage programs draw from the global CUDA generator's stream (what the
    eager step-by-step loop draws after the same ``torch.manual_seed``) and move it on as far."""
    from sdvar_lib.models.run import ModelRun

    device = cuda_device_module
    _, model = build_tiny(seed=0, device=device)
    run = FastRun(model, 2, FastConfig(use_cuda_graphs=True))
    labels = torch.tensor([1, 3], device=device)
    outs = []
    for graphed in (True, False, True):  # the first graphed call captures, the second replays
        run.begin(labels)
        torch.manual_seed(11)
        if graphed:
            decoded = run.decode_stages((), (), model.num_stages, SamplingConfig(top_k=0), None)
            tokens = decoded.tokens
        else:
            tokens, f_hats = [], []
            for si in range(model.num_stages):
                sample, f_hat = ModelRun.decode_stage(run, si, f_hats, SamplingConfig(top_k=0), None)
                tokens.append(sample.idx_Bl)
                f_hats.append(f_hat)
        outs.append(([t.tolist() for t in tokens], torch.rand(3, device=device).tolist()))
    assert outs[0] == outs[1] == outs[2]
    assert run.counters.replays > 0 and run.counters.capture_failures == 0


_COLD_CALLS = """
import json, sys, torch, triton
from sdvar_lib import SamplingConfig
from sdvar_lib.bench.methods import build_pair_bf16
from sdvar_lib.fast.config import FastConfig
from sdvar_lib.fast.factory import make_fast_sdvar
from sdvar_lib.fast.kernels import precompile
from sdvar_lib.sdvar.handoff import baseline

compiles = []

def hook(*, key, repr, fn, compile, is_manual_warmup, already_compiled):
    compiles.append({"kernel": fn.name, "ahead": bool(is_manual_warmup)})
    return None

triton.knobs.runtime.jit_cache_hook = hook
phases = []
ahead = precompile.compile_ahead

def recording(warmups, workers):
    report = ahead(warmups, workers)
    phases.append(report.built)
    return report

precompile.compile_ahead = recording
pair = build_pair_bf16(16, 30, torch.device("cuda"))
sd = make_fast_sdvar(pair.draft, pair.target, FastConfig(compile_workers=int(sys.argv[1])))
sampling = SamplingConfig(cfg=1.5, top_k=900, top_p=0.96)
for batch in (1, 2):
    sd.generate_parallel(batch, list(range(batch)), g_seed=batch, gamma=2, sampling=sampling)
    baseline(sd, batch, list(range(batch)), g_seed=batch, sampling=sampling)
torch.cuda.synchronize()
print(json.dumps({"compiles": compiles, "phases": phases}))
"""


@pytest.mark.parametrize("workers", [0, 3])
def test_gpu_cold_process_compiles_every_kernel_ahead(cuda_device_module, tmp_path, workers):
    """In a fresh process with an empty Triton cache (d16 -> d30 at official widths, bf16; SDVAR exact g2 and the target
    alone at batch 1 and 2, top-k/top-p sampling): with compile threads every block and sampling kernel specialisation
    is built ahead by the warm-ups (:mod:`sdvar_lib.fast.kernels.precompile`), all in the first call's one
    ``prepare_call``, none when a pass first launches it; with ``compile_workers=0`` every one is compiled at its
    first launch, as before."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "TRITON_CACHE_DIR": str(tmp_path / "triton"), "PYTHONPATH": str(root)}
    done = subprocess.run([sys.executable, "-c", _COLD_CALLS, str(workers)], cwd=root, env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    found = json.loads(done.stdout.strip().splitlines()[-1])
    kernels = {"_add_ln_modulate_kernel", "_qk_norm_cache_kernel", "_sample_kernel", "_bicubic_kernel"}
    ours = [c for c in found["compiles"] if c["kernel"] in kernels]
    assert {c["kernel"] for c in ours} == kernels
    if workers:
        assert all(c["ahead"] for c in ours), f"compiled at a launch: {[c for c in ours if not c['ahead']]}"
        # all in one go: the first call's prepare_call built them; the runs' and sampler's own warm-ups found them
        assert found["phases"][0] > 0 and not any(found["phases"][1:]), found["phases"]
    else:
        assert not any(c["ahead"] for c in ours) and found["phases"] == []
