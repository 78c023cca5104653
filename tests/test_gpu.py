"""CUDA checks (skipped without CUDA): reference parity in float32, bf16 autocast, SDVAR invariants.

CUDA draws random numbers from a CUDA generator, whose stream differs from the CPU generator that
made the fixture, so seeded *sampling* cannot reproduce the fixture's tokens on the GPU. What can
be compared is everything around the draws: the VQVAE, teacher-forced logits, and the cached
stage-by-stage path replayed with the fixture's own tokens (logits and images), plus greedy runs
(no randomness) against the CPU.
"""

from __future__ import annotations

import copy
from dataclasses import replace

import pytest
import torch

from sdvar_lib import SDVAR, DraftProposal, eager_run
from sdvar_lib.models.sampling import guided_logits
from tests.test_sdvar import _random_tokens, _sequential_logits

pytestmark = pytest.mark.gpu

GPU_LOGIT_TOL = 1e-3
GPU_IMAGE_TOL = 1e-3


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
        assert (decoded.cpu() - reference_expected["vae_idxBl_to_img_last"]).abs().max() <= GPU_IMAGE_TOL
        logits = var(e["var_teacher_labels"], e["var_teacher_input_BLCv"])
    assert (logits.cpu() - reference_expected["var_teacher_logits"]).abs().max() <= GPU_LOGIT_TOL


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
    for si, (a, b) in enumerate(zip(*logits_by_device)):
        assert (a - b).abs().max() <= GPU_LOGIT_TOL, f"stage {si}"
    assert (images[0] - images[1]).abs().max() <= GPU_IMAGE_TOL
    assert (images[0] - run["image"]).abs().max() <= 1e-4


def test_cuda_greedy_matches_cpu(reference_models, cuda_reference_models):
    _, var_cpu = reference_models
    _, var_gpu = cuda_reference_models
    cpu = var_cpu.generate(3, [1, 4, 7], g_seed=0, cfg=1.5, top_k=1)
    gpu = var_gpu.generate(3, [1, 4, 7], g_seed=0, cfg=1.5, top_k=1)
    for si, (a, b) in enumerate(zip(cpu.tokens_per_stage, gpu.tokens_per_stage)):
        assert torch.equal(a, b.cpu()), f"greedy stage {si} differs between CPU and CUDA"
    assert (cpu.images_B3HW - gpu.images_B3HW.cpu()).abs().max() <= GPU_IMAGE_TOL


def test_cuda_bf16_autocast_generation(cuda_reference_models):
    _, var = cuda_reference_models
    fp32 = var.generate(4, [0, 1, 2, 3], g_seed=0, top_k=1)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        bf16 = var.generate(4, [0, 1, 2, 3], g_seed=0, top_k=1)
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
    tol = 1e-4 if dtype == torch.float32 else 5e-2
    cfg = 1.5
    labels = list(range(B))
    S = target.num_stages
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
        for c in range(S):
            for g in range(1, S - c + 1):
                tokens = [t.cuda() for t in _random_tokens(target, B, seed=10 * c + g)]
                state = sd.prepare(B, labels, g_seed=0, cfg=cfg, gamma=1)
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
                    assert diff <= tol, f"{dtype} c={c} g={g} stage {si}: {diff}"


@pytest.mark.parametrize("gamma", [1, 2, 3, 4])
def test_cuda_greedy_identity(cuda_pair, gamma):
    draft, target = cuda_pair
    sd = SDVAR(draft, target)
    reference = target.generate(2, [3, 8], g_seed=1, top_k=1)
    out = sd.generate_parallel(2, [3, 8], g_seed=1, top_k=1, gamma=gamma)
    for a, b in zip(out.tokens_per_stage, reference.tokens_per_stage):
        assert torch.equal(a, b)
    assert torch.equal(out.images_B3HW, reference.images_B3HW)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        ref16 = target.generate(2, [3, 8], g_seed=1, top_k=1)
        out16 = sd.generate_parallel(2, [3, 8], g_seed=1, top_k=1, gamma=gamma)
    agree = torch.cat([(a == b).flatten() for a, b in zip(out16.tokens_per_stage, ref16.tokens_per_stage)]).float().mean()
    assert agree >= 0.9, f"bf16 greedy SDVAR vs bf16 target: {float(agree):.3f} of tokens agree"
