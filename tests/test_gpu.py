"""CUDA checks (skipped without CUDA): reference parity in float32, bf16 autocast, SDVAR invariants, exactness.

CUDA draws random numbers from a CUDA generator, whose stream differs from the CPU generator that
made the fixture, so seeded *sampling* cannot reproduce the fixture's tokens on the GPU. What can
be compared is everything around the draws: the VQVAE, teacher-forced logits, and the cached
stage-by-stage path replayed with the fixture's own tokens (logits and images), plus greedy runs
(no randomness) against the CPU. The *laws* of the draws, though, must be the same on any device:
the distributional tests at the end (10^6 acceptance verdicts, the bonus stage, exact SDVAR end to
end, the harness with its sampled check) are the CPU tests' statistics on CUDA streams.

Tolerances. The tolerances below are those the suite passed with on H200 runs (commit 5c64265, and
53 GPU tests at commit 1f58aee on 2026-11-29, docs/bench/HISTORY.md "Final run"). Measured errors recorded so
far (H200, official-size random d16 -> d30, the harness check then in ``scripts/``, 2026-11-29): float32
chunked vs sequential verify logits 0.0000 (tolerance 1e-4 + 1e-4 |logit|, i.e. 4e-4); bf16 fast path
0.0271 (tolerance 0.2383); bf16 greedy tokens equal up to near ties with the largest argmax gap 0.0161
(tolerance 0.227); the fast bf16 decode differs from the autocast decode by 1.2e-2 relative. Every
numerical test here prints its measured error next to its tolerance (``pytest -m gpu -s``; the run
above used ``-q`` and did not keep them), so that a run with ``-s`` records the rest; tighten a
tolerance to a few times the recorded error once it is known. The statistical
tests need no tolerance: they run at the CPU tests' significance levels (``ALPHA`` 1e-4 per statistic,
1e-3 family-wise for the lossless criterion).
"""

from __future__ import annotations

import copy
from dataclasses import replace

import pytest
import torch

from sdvar_lib import SDVAR, SamplingConfig
from sdvar_lib.models import VAR, VQVAE, eager_run
from sdvar_lib.models.init import sharpen_random_weights_
from sdvar_lib.models.sampling import guided_logits
from sdvar_lib.sdvar import DraftProposal
from sdvar_lib.sdvar.acceptance import ExactPolicy
from test_framework import SDVARParallelV1Tester
from tests.stat_checks import binomial_z, chi_square, z_bound
from tests.test_exactness import ALPHA, GENERIC_P, GENERIC_Q, N, check_bonus_stage, draw_verdicts, reference_acceptance
from tests.test_lossless import LOSSY_CALLS, PATCH_NUMS, _perturbed, run_calls
from tests.test_sdvar import _random_tokens, _sequential_logits

pytestmark = pytest.mark.gpu

GPU_LOGIT_TOL = 1e-3
"""float32 with TF32 off vs the CPU fixture; passed on the H200 run of 5c64265 (measured value not recorded)."""
GPU_IMAGE_TOL = 1e-3
"""Images in [0, 1] vs the CPU; same provenance."""


@pytest.fixture(scope="module", autouse=True)
def strict_float32():
    """Parity in float32 means real float32: cuDNN convolutions default to TF32 on Ampere and later."""
    if not torch.cuda.is_available():
        yield
        return
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


@pytest.fixture(scope="module")
def cuda_reference_models(reference_models):
    if not torch.cuda.is_available():
        pytest.skip("CUDA is not available")
    vae, var = reference_models
    vae_c = copy.deepcopy(vae).cuda()
    var_c = copy.deepcopy(var).cuda()
    var_c.vae_proxy = (vae_c,)
    return vae_c, var_c


@pytest.fixture(scope="module")
def cuda_pair(tiny_pair):
    if not torch.cuda.is_available():
        pytest.skip("CUDA is not available")
    vae, draft, target = tiny_pair
    vae_c = copy.deepcopy(vae).cuda()
    draft_c, target_c = copy.deepcopy(draft).cuda(), copy.deepcopy(target).cuda()
    draft_c.vae_proxy = target_c.vae_proxy = (vae_c,)
    return draft_c, target_c


def test_cuda_vqvae_and_teacher_logits(cuda_reference_models, reference_expected):
    vae, var = cuda_reference_models
    e = {k: (v.cuda() if isinstance(v, torch.Tensor) else v) for k, v in reference_expected.items()}
    with torch.no_grad():
        idx = vae.img_to_idxBl(e["vae_input_img"])
        for si, (got, ref) in enumerate(zip(idx, reference_expected["vae_img_to_idxBl"])):
            assert torch.equal(got.cpu(), ref), f"stage {si} tokens differ on CUDA"
        decoded = vae.idxBl_to_img([t.cuda() for t in reference_expected["vae_img_to_idxBl"]], last_one=True)
        image_diff = float((decoded.cpu() - reference_expected["vae_idxBl_to_img_last"]).abs().max())
        logits = var(e["var_teacher_labels"], e["var_teacher_input_BLCv"])
    logit_diff = float((logits.cpu() - reference_expected["var_teacher_logits"]).abs().max())
    print(f"measured: VQVAE decode max abs diff {image_diff:.2e} (tol {GPU_IMAGE_TOL:g}), teacher logits "
          f"{logit_diff:.2e} (tol {GPU_LOGIT_TOL:g})")
    assert image_diff <= GPU_IMAGE_TOL
    assert logit_diff <= GPU_LOGIT_TOL


@pytest.mark.parametrize("run_index", range(4))  # run 4 (more_smooth) mixes Gumbel noise: not replayable by tokens
def test_cuda_cached_path_replays_fixture_tokens(cuda_reference_models, reference_models, reference_expected, run_index):
    """Feed the fixture's tokens through the cached stage-by-stage path on CUDA and on the CPU."""
    _, var_gpu = cuda_reference_models
    _, var_cpu = reference_models
    run = reference_expected["sampling_runs"][run_index]
    args = run["args"]
    tokens = run["tokens_per_stage"]
    B = args["B"]
    label = args["label_B"]
    logits_by_device = []
    images = []
    for model, device in ((var_cpu, "cpu"), (var_gpu, "cuda")):
        from sdvar_lib.models.sampling import prepare_labels

        if label is None:  # the fixture drew labels on the CPU generator: recover them the same way
            gen = torch.Generator().manual_seed(args["g_seed"])
            labels = prepare_labels(B, None, model.num_classes, gen, "cpu").to(device)
        else:
            labels = prepare_labels(B, label, model.num_classes, None, device)
        sd = SDVAR(model, model)
        toks = [t.to(device) for t in tokens]
        f_hats = sd.f_hats_after([], 0, toks)
        r = eager_run(model, labels)
        per_stage = []
        with torch.no_grad():
            for si in range(model.num_stages):
                per_stage.append(guided_logits(r.forward(r.stage_input(si, f_hats)), si, model.num_stages, args["cfg"]).cpu())
            images.append(model.images_from_f_hat(f_hats[-1]).cpu())
        logits_by_device.append(per_stage)
    logit_diff = max(float((a - b).abs().max()) for a, b in zip(*logits_by_device))
    image_diff = float((images[0] - images[1]).abs().max())
    print(f"measured (run {run_index}): cached-path logits CPU vs CUDA {logit_diff:.2e} (tol {GPU_LOGIT_TOL:g}), "
          f"images {image_diff:.2e} (tol {GPU_IMAGE_TOL:g})")
    assert logit_diff <= GPU_LOGIT_TOL
    assert image_diff <= GPU_IMAGE_TOL
    assert (images[0] - run["image"]).abs().max() <= 1e-4


def test_cuda_greedy_matches_cpu(reference_models, cuda_reference_models):
    _, var_cpu = reference_models
    _, var_gpu = cuda_reference_models
    cpu = var_cpu.generate(3, [1, 4, 7], g_seed=0, sampling=SamplingConfig(cfg=1.5, top_k=1))
    gpu = var_gpu.generate(3, [1, 4, 7], g_seed=0, sampling=SamplingConfig(cfg=1.5, top_k=1))
    for si, (a, b) in enumerate(zip(cpu.tokens_per_stage, gpu.tokens_per_stage)):
        assert torch.equal(a, b.cpu()), f"greedy stage {si} differs between CPU and CUDA"
    image_diff = float((cpu.images_B3HW - gpu.images_B3HW.cpu()).abs().max())
    print(f"measured: greedy images CPU vs CUDA {image_diff:.2e} (tol {GPU_IMAGE_TOL:g})")
    assert image_diff <= GPU_IMAGE_TOL


def test_cuda_bf16_autocast_generation(cuda_reference_models):
    _, var = cuda_reference_models
    fp32 = var.generate(4, [0, 1, 2, 3], g_seed=0, sampling=SamplingConfig(top_k=1))
    with torch.autocast("cuda", dtype=torch.bfloat16):
        bf16 = var.generate(4, [0, 1, 2, 3], g_seed=0, sampling=SamplingConfig(top_k=1))
    assert bf16.images_B3HW.shape == fp32.images_B3HW.shape
    assert torch.isfinite(bf16.images_B3HW).all()
    assert 0 <= float(bf16.images_B3HW.min()) and float(bf16.images_B3HW.max()) <= 1
    agree = torch.cat([(a == b).flatten() for a, b in zip(fp32.tokens_per_stage, bf16.tokens_per_stage)]).float().mean()
    print(f"bf16 autocast: greedy tokens agreeing with float32: {float(agree):.4f}")
    assert agree >= 0.8


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("B", [1, 3])
def test_cuda_chunked_verify_equals_sequential(cuda_pair, dtype, B):
    draft, target = cuda_pair
    sd = SDVAR(draft, target)
    tol = 1e-4 if dtype == torch.float32 else 5e-2  # passed on the H200 run of 5c64265; the worst diff is printed
    worst = 0.0
    cfg = 1.5
    labels = list(range(B))
    S = target.num_stages
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
        for c in range(S):
            for g in range(1, S - c + 1):
                tokens = [t.cuda() for t in _random_tokens(target, B, seed=10 * c + g)]
                state = sd.prepare(B, labels, g_seed=0, gamma=1, sampling=SamplingConfig(cfg=cfg))
                f_hats = sd.f_hats_after([], 0, tokens[:c])
                if c > 0:
                    state.target.forward(state.target.chunk_input(range(c), f_hats))
                state = replace(state, tokens=tuple(tokens[:c]), f_hats=tuple(f_hats))
                proposals = tokens[c : c + g]
                proposal = DraftProposal(start=c, tokens=proposals, q_probs=[None] * g,
                                         f_hats=sd.f_hats_after(list(state.f_hats), c, proposals), draft_cache_before=0)
                verify = sd.verify(state, proposal)
                reference = _sequential_logits(target, tokens, verify.stages[-1] + 1, B, cfg, labels)
                for si, got in zip(verify.stages, verify.logits):
                    diff = (got - reference[si]).abs().max().item()
                    worst = max(worst, diff)
                    assert diff <= tol, f"{dtype} c={c} g={g} stage {si}: {diff}"
    print(f"measured: chunked vs sequential verify logits, {dtype}, B={B}: max abs diff {worst:.2e} (tol {tol:g})")


@pytest.mark.parametrize("gamma", [1, 2, 3, 4])
def test_cuda_greedy_identity(cuda_pair, gamma):
    draft, target = cuda_pair
    sd = SDVAR(draft, target)
    reference = target.generate(2, [3, 8], g_seed=1, sampling=SamplingConfig(top_k=1))
    out = sd.generate_parallel(2, [3, 8], g_seed=1, gamma=gamma, sampling=SamplingConfig(top_k=1))
    for a, b in zip(out.tokens_per_stage, reference.tokens_per_stage):
        assert torch.equal(a, b)
    assert torch.equal(out.images_B3HW, reference.images_B3HW)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        ref16 = target.generate(2, [3, 8], g_seed=1, sampling=SamplingConfig(top_k=1))
        out16 = sd.generate_parallel(2, [3, 8], g_seed=1, gamma=gamma, sampling=SamplingConfig(top_k=1))
    agree = torch.cat([(a == b).flatten() for a, b in zip(out16.tokens_per_stage, ref16.tokens_per_stage)]).float().mean()
    assert agree >= 0.9, f"bf16 greedy SDVAR vs bf16 target: {float(agree):.3f} of tokens agree"


# ---- exactness on CUDA: the CPU tests' statistics on CUDA random streams -----------------------------------
def test_cuda_exact_acceptance_law(cuda_device):
    """10^6 verdicts in one call on CUDA (``tests/test_exactness.py``'s power case): the committed token follows
    ``p`` (chi-square) and the acceptance count is ``sum q min(1, p/q)`` (z), each at ``ALPHA`` = 1e-4."""
    x, accepted, committed = draw_verdicts(ExactPolicy(), GENERIC_P, GENERIC_Q, n=N, seed=0, device=cuda_device)
    fit = chi_square(torch.bincount(committed, minlength=8).double(), GENERIC_P)
    a = reference_acceptance(GENERIC_P, GENERIC_Q)
    n_x = torch.bincount(x, minlength=8).double()
    z = binomial_z(float(accepted.sum()), n_x, a)
    print(f"measured: CUDA acceptance law chi-square p-value {fit.p_value:.3g}, acceptance z {z:+.2f}")
    assert fit.passes(ALPHA), fit
    assert abs(z) <= z_bound(ALPHA)


def test_cuda_bonus_stage_is_a_sample_from_p(cuda_pair):
    draft, target = cuda_pair
    check_bonus_stage(SDVAR(draft, target))


@pytest.fixture(scope="module")
def cuda_micro():
    """The micro pair of ``tests/test_lossless.py`` (target, close draft, far draft) on CUDA."""
    if not torch.cuda.is_available():
        pytest.skip("CUDA is not available")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        vae = VQVAE(vocab_size=4, z_channels=4, ch=32, ch_mult=(1,), v_patch_nums=PATCH_NUMS, num_res_blocks=1)
        target = VAR(vae, num_classes=3, depth=1, embed_dim=32, num_heads=1, patch_nums=PATCH_NUMS, attn_l2_norm=True).eval()
    sharpen_random_weights_(target, 0, 2.0)
    close, far = _perturbed(target, 0.25, head_only=True), _perturbed(target, 0.5, head_only=False)
    vae_c = copy.deepcopy(vae).cuda()
    models = [copy.deepcopy(m).cuda() for m in (target, close, far)]
    for m in models:
        m.vae_proxy = (vae_c,)
    return models


@pytest.mark.parametrize(("gamma", "B", "calls"), [(1, 1, 200), (2, 4, 100)])
def test_cuda_exact_sdvar_draws_the_target_law(cuda_micro, gamma, B, calls):
    """``tests/test_lossless.py`` on CUDA: exact SDVAR passes the lossless criterion (family-wise 1e-3)."""
    target, close, _ = cuda_micro
    outcome = run_calls(SDVAR(close, target), gamma, B, calls)
    print(f"measured: CUDA exact gamma {gamma}, B {B}: {outcome.describe()}")
    assert outcome.verdict.lossless, outcome.describe()


def test_cuda_top1_match_fails_the_lossless_criterion(cuda_micro):
    target, close, _ = cuda_micro
    outcome = run_calls(SDVAR(close, target), 2, 8, LOSSY_CALLS, "top1_match", threshold=0.6)
    print(f"measured: CUDA top1_match(0.6): {outcome.describe()}")
    assert not outcome.verdict.lossless


def _print_harness(results) -> None:
    for r in results:
        diffs = {k: v for k, v in r.details_dict().items() if "diff" in k or "p_value" in k or k == "acceptance_z"}
        print(f"measured: {r.test_name}: {diffs}")


def test_cuda_harness_passes_in_float32_with_its_sampled_check(cuda_pair):
    """The harness (independent references, sampled check) on CUDA float32, TF32 off; its tolerances come from
    ``Tolerances.for_dtype(float32, 'cuda')`` (logits 1e-4 + 1e-4 relative); the measured differences are printed."""
    draft, target = cuda_pair
    tester = SDVARParallelV1Tester(SDVAR(draft, target), top_k=16, top_p=0.9)
    results = tester.run_all_tests(B=2, gamma=2, show_times=False)
    _print_harness(results)
    assert all(r.passed for r in results), [f"{r.test_name}: {r.message}" for r in results if not r.passed]


def test_cuda_harness_passes_in_bfloat16_on_the_fast_path(cuda_pair):
    """bf16 weights on the CUDA fast path (graphs, fused blocks): tolerances of ``Tolerances.for_dtype(bf16)``
    (logits 0.15 + 3 % relative, cache 5e-2 + 2 %); the sampled check is exact whatever the dtype."""
    from sdvar_lib.fast import FastConfig, FastRunFactory
    draft, target = cuda_pair
    d16, t16 = copy.deepcopy(draft).to(torch.bfloat16), copy.deepcopy(target).to(torch.bfloat16)
    d16.vae_proxy = t16.vae_proxy = target.vae_proxy
    tester = SDVARParallelV1Tester(SDVAR(d16, t16, run_factory=FastRunFactory(FastConfig())))
    results = tester.run_all_tests(B=2, gamma=2, show_times=False)
    _print_harness(results)
    assert all(r.passed for r in results), [f"{r.test_name}: {r.message}" for r in results if not r.passed]
