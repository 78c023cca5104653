"""The fast path (static caches, per-chunk programs, CUDA graphs) gives the eager path's tokens.

CPU tests run the fast path's code with graphs disabled (float32, so tokens must be identical);
GPU tests (``-m gpu``) compare graph replay with the same path run eagerly in bf16.
"""

from __future__ import annotations

import copy

import pytest
import torch

from sdvar_lib import SDVAR, SamplingConfig
from sdvar_lib.fast.config import FastConfig
from sdvar_lib.fast.factory import FastRunFactory, make_fast_sdvar
from sdvar_lib.fast.graphs import GraphedDecode
from sdvar_lib.fast.run import FastRun, StaticKVCache, chunk_span
from sdvar_lib.models.presets import TINY_CONFIG, build_tiny
from sdvar_lib.models.run import ModelRun, eager_run
from sdvar_lib.models.var import VAR
from sdvar_lib.sdvar.acceptance import ExactPolicy
from sdvar_lib.sdvar.gamma import AdaptiveGamma, UniformCost
from sdvar_lib.sdvar.handoff import baseline, code_handoff, draft_alone, generate_test3
from sdvar_lib.sdvar.registry import stage_chunks

B = 2
UNIFORM_ADAPTIVE = AdaptiveGamma(costs=UniformCost())
NO_GRAPHS = FastConfig(use_cuda_graphs=False)


def _tokens(out) -> list[list[list[int]]]:
    return [t.tolist() for t in out.tokens_per_stage]


def _decoders(gamma_values=(1, 2, 3)):
    def s(k):
        return SamplingConfig(top_k=k)

    cases = [("baseline", lambda sd, lb, k, seed: baseline(sd, B, lb, seed, s(k))),
             ("draft_alone", lambda sd, lb, k, seed: draft_alone(sd, B, lb, seed, s(k))),
             ("test3", lambda sd, lb, k, seed: generate_test3(sd, B, lb, seed, s(k), entry_num=2)),
             ("code", lambda sd, lb, k, seed: code_handoff(sd, B, lb, seed, s(k), entry_num=2)),
             # the eager loop's prices on both paths (the fast path would price "adaptive" with its own timed programs)
             ("adaptive", lambda sd, lb, k, seed: sd.generate_parallel(B, lb, seed, s(k), gamma=UNIFORM_ADAPTIVE))]
    for g in gamma_values:
        cases.append((f"parallel_g{g}", lambda sd, lb, k, seed, g=g: sd.generate_parallel(B, lb, seed, s(k), gamma=g)))
    return cases


DECODERS = _decoders()


@pytest.fixture(scope="module")
def pair(tiny_pair):
    _, draft, target = tiny_pair
    return draft, target


@pytest.fixture(scope="module")
def fast_sd(pair):
    """One factory reused by every test of the module: runs persist across calls and decoders."""
    return SDVAR(*pair, run_factory=FastRunFactory(NO_GRAPHS))


@pytest.mark.parametrize("name,call", DECODERS, ids=[n for n, _ in DECODERS])
def test_fast_equals_eager_greedy(pair, fast_sd, name, call):
    eager = SDVAR(*pair)
    for labels in ([1, 7], [4, 4]):
        ref, got = call(eager, labels, 1, 5), call(fast_sd, labels, 1, 5)
        assert _tokens(got) == _tokens(ref), f"{name}: fast tokens differ from eager for labels {labels}"
        assert torch.equal(got.images_B3HW, ref.images_B3HW)
        assert got.stats.target_passes == ref.stats.target_passes
        assert got.stats.draft_passes == ref.stats.draft_passes


@pytest.mark.parametrize("name,call", DECODERS[:1] + DECODERS[-2:], ids=[n for n, _ in DECODERS[:1] + DECODERS[-2:]])
def test_fast_equals_eager_when_sampling_across_calls(pair, name, call):
    """Sampled (top_k=0) calls with changing labels: a reused fast factory matches fresh eager calls."""
    eager = SDVAR(*pair)
    fast = SDVAR(*pair, run_factory=FastRunFactory(NO_GRAPHS))
    for labels, seed in (([1, 7], 0), ([2, 5], 1), ([1, 7], 0), (None, 3)):
        assert _tokens(call(fast, labels, 0, seed)) == _tokens(call(eager, labels, 0, seed))


def test_greedy_equals_target_greedy(pair, fast_sd):
    """Lossless SDVAR on the fast path still reproduces the target's greedy tokens."""
    _, target = pair
    ref = target.generate(B, [3, 8], g_seed=2, sampling=SamplingConfig(top_k=1))
    out = fast_sd.generate_parallel(B, [3, 8], g_seed=2, gamma=2, sampling=SamplingConfig(top_k=1))
    assert _tokens(out) == [t.tolist() for t in ref.tokens_per_stage]


def test_same_model_as_draft_and_target_gets_two_runs(pair):
    _, target = pair
    factory = FastRunFactory(NO_GRAPHS)
    sd = SDVAR(target, target, run_factory=factory)
    out = sd.generate_parallel(B, [1, 2], g_seed=0, gamma=2, sampling=SamplingConfig(top_k=1))
    ref = SDVAR(target, target).generate_parallel(B, [1, 2], g_seed=0, gamma=2, sampling=SamplingConfig(top_k=1))
    assert _tokens(out) == _tokens(ref)
    assert out.stats.stages_accepted_per_round == ref.stats.stages_accepted_per_round
    assert sum(out.stats.accepted_stages_per_stage) == sum(out.stats.proposed_stages_per_stage)  # draft == target
    runs = factory.call_runs()
    assert len(runs) == 2 and runs[0] is not runs[1]
    assert runs[0].cache.k_NBHLc.data_ptr() != runs[1].cache.k_NBHLc.data_ptr()


def test_static_cache_is_reused_and_reset(pair):
    draft, target = pair
    factory = FastRunFactory(NO_GRAPHS)
    sd = SDVAR(draft, target, run_factory=factory)
    sd.generate_parallel(B, [1, 2], g_seed=0, gamma=2, sampling=SamplingConfig(top_k=1))
    runs = factory.runs()
    ptrs = sorted(r.cache.k_NBHLc.data_ptr() for r in runs)
    programs = {id(r): len(r.programs) for r in runs}
    for _ in range(3):
        sd.generate_parallel(B, [5, 6], g_seed=1, gamma=2, sampling=SamplingConfig(top_k=1))
        baseline(sd, B, [5, 6], g_seed=1, sampling=SamplingConfig(top_k=1))
    assert sorted(r.cache.k_NBHLc.data_ptr() for r in factory.runs()) == ptrs, "caches must be allocated once"
    assert len(factory.runs()) == 2
    assert all(isinstance(r.cache, StaticKVCache) and r.cache.length == 0 for r in factory.runs())
    assert all(len(r.programs) >= programs[id(r)] for r in factory.runs())
    baseline(sd, 3, [5, 6, 7], g_seed=1, sampling=SamplingConfig(top_k=1))  # another batch size: its own run
    assert len(factory.runs()) == 3


def test_pass_log_matches_statistics(pair):
    draft, target = pair
    factory = FastRunFactory(NO_GRAPHS)
    sd = SDVAR(draft, target, run_factory=factory)
    out = baseline(sd, B, [1, 2], g_seed=0, sampling=SamplingConfig(top_k=1))
    (run,) = factory.call_runs()
    assert [(p.position, p.length) for p in run.pass_log] == [(bg, ed - bg) for bg, ed in target.begin_ends]
    out = sd.generate_parallel(B, [1, 2], g_seed=0, gamma=3, sampling=SamplingConfig(top_k=1))
    d_run, t_run = factory.call_runs()
    assert d_run.model is draft and t_run.model is target
    assert len(t_run.pass_log) == out.stats.target_passes
    assert len(d_run.pass_log) == out.stats.draft_passes
    assert not any(p.graphed for p in t_run.pass_log)


class _FailingPolicy(ExactPolicy):
    def verify_stage(self, si, proposals_Bl, q_BlV, p_BlV, rng, context=None):
        if si >= 2:
            raise RuntimeError("policy failure for the test")
        return super().verify_stage(si, proposals_Bl, q_BlV, p_BlV, rng, context)


def test_a_call_that_raises_leaves_nothing_behind(pair):
    draft, target = pair
    sd = SDVAR(draft, target, run_factory=FastRunFactory(NO_GRAPHS))
    with pytest.raises(RuntimeError, match="policy failure"):
        sd.generate_parallel(B, [1, 2], g_seed=0, gamma=1, policy=_FailingPolicy(), sampling=SamplingConfig(top_k=1))
    out = sd.generate_parallel(B, [3, 4], g_seed=0, gamma=1, sampling=SamplingConfig(top_k=1))
    ref = SDVAR(draft, target).generate_parallel(B, [3, 4], g_seed=0, gamma=1, sampling=SamplingConfig(top_k=1))
    assert _tokens(out) == _tokens(ref)


def test_precapture_sizes_buffers_once(pair):
    _, target = pair
    run = FastRun(target, B, NO_GRAPHS)
    S = target.num_stages
    new = run.precapture(stage_chunks(S, S))
    assert new == S * (S + 1) // 2 and len(run.programs) == new
    assert run.capacity == target.L and run.cache.length == 0
    assert run.precapture([(0, 1), (1, 2)]) == 0
    assert chunk_span(target, 1, 2) == (1, 4 + 9)


def test_experimental_mask_runs_eagerly(pair, fast_sd):
    eager = SDVAR(*pair)
    ref = generate_test3(eager, B, [1, 2], g_seed=0, entry_num=2, sd_mask=4, sampling=SamplingConfig(top_k=1))
    got = generate_test3(fast_sd, B, [1, 2], g_seed=0, entry_num=2, sd_mask=4, sampling=SamplingConfig(top_k=1))
    assert _tokens(got) == _tokens(ref)


def test_bf16_weights_give_float32_logits_and_probabilities(pair):
    draft, target = pair
    t16, d16 = copy.deepcopy(target).to(torch.bfloat16), copy.deepcopy(draft).to(torch.bfloat16)
    t16.vae_proxy = d16.vae_proxy = target.vae_proxy
    factory = FastRunFactory(NO_GRAPHS)
    label_B = torch.tensor([1, 2])
    run, ref_run = factory(t16, label_B), FastRun(target, B, NO_GRAPHS)
    ref_run.begin(label_B)
    assert run.cache.k_NBHLc.dtype == torch.bfloat16
    x = run.stage_input(0, [])
    logits = run.forward(x)
    ref = ref_run.forward(ref_run.stage_input(0, []))
    assert logits.dtype == torch.float32
    assert float((logits - ref).norm() / ref.norm()) < 2e-2
    out = SDVAR(d16, t16, run_factory=factory).generate_parallel(B, [1, 2], g_seed=0, gamma=2, sampling=SamplingConfig(top_k=0))
    assert out.images_B3HW.dtype == torch.float32 and bool(torch.isfinite(out.images_B3HW).all())


@pytest.mark.parametrize("l2_norm", [True, False])
def test_fused_pass_equals_forward_cached(tiny_pair, l2_norm):
    """Chunked passes of the fused step give VAR.forward_cached's logits (and cache contents)."""
    vae, _, target = tiny_pair
    if not l2_norm:
        torch.manual_seed(0)
        target = VAR(vae, **{**TINY_CONFIG["var"], "attn_l2_norm": False}).eval()
    label_B = torch.tensor([3, 8])
    fused, generic = FastRun(target, B, NO_GRAPHS), FastRun(target, B, FastConfig(use_cuda_graphs=False, fused=False))
    assert fused.fused and not generic.fused
    gen = torch.Generator().manual_seed(1)
    for chunks in ([(0, 1), (1, 1), (2, 2)], [(0, 3), (3, 1)], [(0, 4)]):
        for run in (fused, generic):
            run.begin(label_B)
        for s, n in chunks:
            _, l = chunk_span(target, s, n)
            x = torch.randn(2 * B, l, target.C, generator=gen)
            a, b = fused.forward(x), generic.forward(x)
            assert torch.allclose(a, b, rtol=1e-4, atol=1e-4), f"chunk {(s, n)}: max diff {(a - b).abs().max()}"
        n = fused.cache.length
        assert torch.allclose(fused.cache.k_NBHLc[:, :, :, :n], generic.cache.k_NBHLc[:, :, :, :n], atol=1e-5)
        assert torch.allclose(fused.cache.v_NBHLc[:, :, :, :n], generic.cache.v_NBHLc[:, :, :, :n], atol=1e-5)


def test_generic_step_equals_eager(pair):
    cfg = FastConfig(use_cuda_graphs=False, fused=False)
    for name, call in DECODERS[:1] + DECODERS[-1:]:
        ref = call(SDVAR(*pair), [1, 7], 1, 5)
        assert _tokens(call(SDVAR(*pair, run_factory=FastRunFactory(cfg)), [1, 7], 1, 5)) == _tokens(ref), name


def test_graphed_decode_falls_back_on_cpu(tiny_pair):
    vae = tiny_pair[0]
    f_hat = torch.randn(2, vae.Cvae, 4, 4)
    decoder = GraphedDecode(vae)
    with decoder.installed():
        assert vae.fhat_to_img is decoder
        with pytest.raises(RuntimeError, match="already"), decoder.installed():
            pass
        got = vae.fhat_to_img(f_hat)
    assert "fhat_to_img" not in vars(vae)
    assert torch.equal(got, vae.fhat_to_img(f_hat))
    with pytest.raises(TypeError, match="VQVAE"):
        GraphedDecode(tiny_pair[2])


class _CountingRun(ModelRun):
    draws: list = []

    def sample_stage(self, logits_2BlV, si, sampling, rng):
        _CountingRun.draws.append((self.model.depth, si))
        return super().sample_stage(logits_2BlV, si, sampling, rng)


def test_decoders_draw_every_stage_through_their_run(pair):
    """The hook the fast path's fused sampler uses: every drawn stage goes through ``run.sample_stage``."""
    draft, target = pair

    def factory(model, label_B):
        run = eager_run(model, label_B)
        return _CountingRun(run.model, run.cond_2BD, run.lvl_pos_1LC, run.cache)

    sd, ref = SDVAR(draft, target, run_factory=factory), SDVAR(draft, target)
    _CountingRun.draws.clear()
    out = baseline(sd, B, [1, 2], g_seed=3, sampling=SamplingConfig(top_k=0))
    assert _CountingRun.draws == [(target.depth, s) for s in range(target.num_stages)]
    assert _tokens(out) == _tokens(baseline(ref, B, [1, 2], g_seed=3, sampling=SamplingConfig(top_k=0)))
    _CountingRun.draws.clear()
    out = sd.generate_parallel(B, [1, 2], g_seed=3, gamma=2, sampling=SamplingConfig(top_k=0))
    assert sum(d == draft.depth for d, _ in _CountingRun.draws) == out.stats.draft_passes
    assert _tokens(out) == _tokens(ref.generate_parallel(B, [1, 2], g_seed=3, gamma=2, sampling=SamplingConfig(top_k=0)))


def test_whole_stage_programs_equal_the_step_by_step_stage(pair):
    """FastRun.decode_stage (one program per stage: input, pass, draw, f_hat) = the generic composition, bit for bit."""
    _, target = pair
    from sdvar_lib.models.sampling import SamplingConfig

    sampling = SamplingConfig(cfg=1.5, top_k=7, top_p=0.9)
    run = FastRun(target, B, NO_GRAPHS)
    results = []
    for whole in (True, False):
        run.begin(torch.tensor([3, 8]))
        rng = torch.Generator().manual_seed(6)
        samples, f_hats = [], []
        for si in range(target.num_stages):
            step = run.decode_stage if whole else (lambda *a: ModelRun.decode_stage(run, *a))
            sample, f_hat = step(si, f_hats, sampling, rng)
            samples.append(sample)
            f_hats.append(f_hat)
        results.append((samples, f_hats, [(p.position, p.length) for p in run.pass_log]))
    (sa, fa, la), (sb, fb, lb) = results
    assert la == lb == [chunk_span(target, s, 1) for s in range(target.num_stages)]
    for x, y in zip(sa, sb):
        assert torch.equal(x.idx_Bl, y.idx_Bl) and torch.equal(x.probs_BlV, y.probs_BlV)
        assert torch.equal(x.h_BChw, y.h_BChw)
    assert all(torch.equal(x, y) for x, y in zip(fa, fb))
    assert len(run._stage_programs) == target.num_stages
    step_by_step = FastRun(target, B, FastConfig(use_cuda_graphs=False, whole_stage=False))
    step_by_step.begin(torch.tensor([3, 8]))
    sample, f_hat = step_by_step.decode_stage(0, [], sampling, torch.Generator().manual_seed(6))
    assert torch.equal(sample.idx_Bl, sa[0].idx_Bl) and torch.equal(f_hat, fa[0]) and not step_by_step._stage_programs
    kept = fa[-1].clone()
    run.begin(torch.tensor([5, 6]))
    run.decode_stage(0, [], sampling, torch.Generator().manual_seed(1))
    assert torch.equal(fa[-1], kept), "outputs of a call must not share memory with the run's static buffers"


def test_kernel_and_sampler_choices(pair):
    _, target = pair
    run = FastRun(target, B, NO_GRAPHS)
    assert (run.kernels, run.sampler, run.head) == ("torch", "torch", "float32")  # auto on the CPU
    old = FastConfig.first_version(use_cuda_graphs=False)
    assert (old.kernels, old.sampler, old.head, old.whole_stage, old.use_cuda_graphs) == ("torch", "torch", "float32",
                                                                                           False, False)
    with pytest.raises(TypeError, match="whole_stage"):
        FastConfig(whole_stage=1)
    with pytest.raises(ValueError, match="head"):
        FastConfig(head="bf16")
    with pytest.raises(ValueError, match="bf16 or fp16"):
        FastRun(target, B, FastConfig(use_cuda_graphs=False, head="half"))  # a float32 model
    with pytest.raises(ValueError, match="kernels"):
        FastConfig(kernels="cuda")
    with pytest.raises(ValueError, match="sampler"):
        FastConfig(sampler="gumbel")
    with pytest.raises(ValueError, match="chunk_attention"):
        FastConfig(chunk_attention="flash")
    from sdvar_lib.fast.kernels import resolve_backend

    assert resolve_backend("auto", "cpu") == "torch" and resolve_backend("torch", "meta") == "torch"
    with pytest.raises(ValueError, match="meta"):
        resolve_backend("triton", "meta")


def test_eager_path_stays_the_default(pair):
    assert SDVAR(*pair).run_factory is None


def test_bad_input(pair):
    draft, target = pair
    assert target.device.type == "cpu"
    with pytest.raises(ValueError, match="CUDA"):
        FastRun(target, B, FastConfig(use_cuda_graphs=True))
    with pytest.raises(ValueError, match="batch_size"):
        FastRun(target, 0, NO_GRAPHS)
    with pytest.raises(ValueError, match="capture_warmup"):
        FastConfig(capture_warmup=-1)
    with pytest.raises(TypeError, match="use_cuda_graphs"):
        FastConfig(use_cuda_graphs="yes")
    with pytest.raises(TypeError, match="FastConfig"):
        FastRunFactory({"use_cuda_graphs": False})
    run = FastRun(target, B, NO_GRAPHS)
    with pytest.raises(ValueError, match="labels"):
        run.begin(torch.tensor([1, 2, 3]))
    run.begin(torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="chunk input"):
        run.forward(torch.zeros(2 * B + 1, 1, target.C))
    with pytest.raises(ValueError, match="does not fit"):
        run.forward(torch.zeros(2 * B, target.L + 1, target.C))
    with pytest.raises(ValueError, match="does not fit"):
        chunk_span(target, target.num_stages - 1, 2)
    with pytest.raises(TypeError, match="label_B"):
        FastRunFactory(NO_GRAPHS)(target, torch.tensor([1.0, 2.0]))
    training = copy.deepcopy(target).train()
    with pytest.raises(ValueError, match="eval mode"):
        FastRun(training, B, NO_GRAPHS)


# ---- GPU --------------------------------------------------------------------------------------------
def _cuda_bf16_pair(device: torch.device):
    vae, target = build_tiny(seed=0, device=device)
    _, draft = build_tiny(seed=1, depth=1, vae=vae, device=device)
    return draft.to(torch.bfloat16), target.to(torch.bfloat16)


@pytest.mark.gpu
@pytest.mark.parametrize("name,call", DECODERS, ids=[n for n, _ in DECODERS])
def test_gpu_graphs_equal_eager_bf16_greedy(cuda_device, name, call):
    draft, target = _cuda_bf16_pair(cuda_device)
    graphed = SDVAR(draft, target, run_factory=FastRunFactory(FastConfig(use_cuda_graphs=True)))
    eager = SDVAR(draft, target, run_factory=FastRunFactory(NO_GRAPHS))
    for labels in ([1, 7], [4, 4], [0, 9]):
        ref, got = call(eager, labels, 1, 5), call(graphed, labels, 1, 5)
        assert _tokens(got) == _tokens(ref), f"{name}: graph replay differs from the eager bf16 pass"
        assert got.stats.target_passes == ref.stats.target_passes
    counters = [r.counters for r in graphed.run_factory.runs()]
    assert sum(c.captures for c in counters) > 0 and sum(c.replays for c in counters) > 0
    assert sum(c.capture_failures for c in counters) == 0 and sum(c.eager_passes for c in counters) == 0


@pytest.mark.gpu
def test_gpu_graph_replay_has_no_stale_state(cuda_device):
    """Graphs replayed across calls with other labels give what fresh eager calls give (sampling on)."""
    draft, target = _cuda_bf16_pair(cuda_device)
    graphed = make_fast_sdvar(draft, target, FastConfig(use_cuda_graphs=True))
    for labels, seed in (([1, 7], 0), ([2, 5], 1), ([9, 0], 2), ([1, 7], 0)):
        for gamma in (2, 3):
            fresh = SDVAR(draft, target, run_factory=FastRunFactory(NO_GRAPHS))
            got = graphed.generate_parallel(B, labels, g_seed=seed, gamma=gamma, sampling=SamplingConfig(top_k=0))
            ref = fresh.generate_parallel(B, labels, g_seed=seed, gamma=gamma, sampling=SamplingConfig(top_k=0))
            assert _tokens(got) == _tokens(ref), f"labels {labels} gamma {gamma}"
        got_b = baseline(graphed, B, labels, g_seed=seed, sampling=SamplingConfig(top_k=0))
        ref_b = baseline(SDVAR(draft, target, run_factory=FastRunFactory(NO_GRAPHS)), B, labels, seed, SamplingConfig(top_k=0))
        assert _tokens(got_b) == _tokens(ref_b)
        assert torch.allclose(got_b.images_B3HW, ref_b.images_B3HW)
    assert all(r.cache.length == 0 for r in graphed.run_factory.runs())


@pytest.mark.gpu
def test_gpu_bf16_close_to_float32_eager(cuda_device):
    """Gross errors (wrong cache, stale buffers) would break agreement with the float32 eager path."""
    vae, target32 = build_tiny(seed=0, device=cuda_device)
    draft, target = _cuda_bf16_pair(cuda_device)
    sd = make_fast_sdvar(draft, target, FastConfig(use_cuda_graphs=True))
    agree = total = 0
    for seed in range(6):
        labels = [seed % 10, (3 * seed + 1) % 10]
        ref = target32.generate(B, labels, g_seed=seed, sampling=SamplingConfig(top_k=1))
        got = baseline(sd, B, labels, g_seed=seed, sampling=SamplingConfig(top_k=1))
        for a, b in zip(got.tokens_per_stage, ref.tokens_per_stage):
            agree += int((a == b).sum())
            total += a.numel()
    assert agree / total >= 0.9, f"bf16 graphs agree with float32 eager on only {agree}/{total} greedy tokens"


@pytest.mark.gpu
def test_gpu_graphed_decode_equals_eager(cuda_device):
    vae, _ = build_tiny(seed=0, device=cuda_device)
    decoder = GraphedDecode(vae)
    for batch in (1, 3, 1):
        f_hat = torch.randn(batch, vae.Cvae, 4, 4, device=cuda_device)
        ref = vae.fhat_to_img(f_hat)
        with decoder.installed():
            got = vae.fhat_to_img(f_hat)
            with torch.autocast("cuda", dtype=torch.bfloat16):
                got16 = vae.fhat_to_img(f_hat)
                ref16 = GraphedDecode._eager(decoder, f_hat)
        assert torch.allclose(got, ref, atol=1e-5), f"batch {batch}"
        assert torch.allclose(got16, ref16, atol=1e-2)
    assert len(decoder._graphs) == 4


def test_a_call_without_a_seed_draws_from_the_global_stream():
    """``g_seed=None``: the stage programs (which draw inside) take the global generator's stream, as the eager
    loop does, and move it on as far; a device whose global generator is unknown is refused with a way out."""
    from sdvar_lib.fast.run import _default_generator

    vae, model = build_tiny(seed=0)
    fast = FastRun(model, 2, FastConfig(use_cuda_graphs=False))
    want_labels = torch.tensor([1, 3])
    outs = []
    for run in (fast, eager_run(model, want_labels)):
        run.begin(want_labels) if run is fast else None
        torch.manual_seed(11)
        decoded = run.decode_stages((), (), model.num_stages, SamplingConfig(top_k=0), None)
        outs.append(([t.tolist() for t in decoded.tokens], torch.rand(3)))
    assert outs[0][0] == outs[1][0] and torch.equal(outs[0][1], outs[1][1])
    assert _default_generator(torch.device("cpu")) is torch.default_generator
    with pytest.raises(ValueError, match="g_seed"):
        _default_generator(torch.device("meta"))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_first_stage_pass_launches_no_attention_and_gives_its_logits(tiny_pair, monkeypatch, dtype):
    """The first stage's fused pass (one token at position 0) skips the attention, whose one softmax weight is exactly
    1: its logits and cache are bit for bit those of the same pass through the attention (forced by an explicit
    all-true mask); the next stage's pass attends as before."""
    import torch.nn.functional as F

    _, _, target = tiny_pair
    model = copy.deepcopy(target).to(dtype)
    run = FastRun(model, 2, FastConfig(use_cuda_graphs=False))
    real, calls = F.scaled_dot_product_attention, []
    monkeypatch.setattr(F, "scaled_dot_product_attention", lambda *a, **k: calls.append(1) or real(*a, **k))
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(4, 1, model.C, generator=gen).to(dtype)
    outs, caches, counts = [], [], []
    with torch.no_grad():  # as every pass runs (FastRun.forward)
        for mask in (None, torch.ones(1, 1, dtype=torch.bool)):
            run.begin(torch.tensor([3, 7]))
            out = torch.empty(4, 1, model.V)
            run._fused.step(x, run.cache, 0, mask, out)
            outs.append(out)
            caches.append((run.cache.k_NBHLc[:, :, :, :1].clone(), run.cache.v_NBHLc[:, :, :, :1].clone()))
            counts.append(len(calls))
        run.cache.set_length(1)
        run._fused.step(torch.randn(4, 4, model.C, generator=gen).to(dtype), run.cache, 1, None,
                        torch.empty(4, 4, model.V))
    assert counts == [0, model.depth]
    assert torch.equal(outs[0], outs[1]) and all(torch.equal(a, b) for a, b in zip(*caches))
    assert len(calls) == 2 * model.depth


def _official_stage_ids() -> list[int]:
    from sdvar_lib.models.presets import OFFICIAL_PATCH_NUMS

    return [si for si, pn in enumerate(OFFICIAL_PATCH_NUMS) for _ in range(pn * pn)]


def test_chunk_stage_ends():
    from sdvar_lib.fast.fused import chunk_stage_ends

    ids = _official_stage_ids()
    assert chunk_stage_ends(ids, 55, 625) == (36, 100, 200, 369, 625)  # gamma 4's second verify chunk, stages 5-9
    assert chunk_stage_ends(ids, 0, 55) == (1, 5, 14, 30, 55)
    assert chunk_stage_ends(ids, 424, 256) == (256,)  # a single stage
    assert chunk_stage_ends(ids, 430, 250) == (250,)  # a chunk that starts inside a stage
    assert chunk_stage_ends(ids, 20, 20) == (10, 20)  # ... and ends inside one
    for position, length in ((0, 0), (-1, 3), (600, 81)):
        with pytest.raises(ValueError, match="does not fit"):
            chunk_stage_ends(ids, position, length)


def test_per_stage_attention_is_taken_where_it_was_measured_faster():
    """``chunk_attention="auto"``: per-stage attention where graph replays on one H200 found it faster than the masked
    one (d30 and d16 verify chunks of stages 5-9, 7-9 and 8-9 from batch 8, stages 6-8 at d30 batch 8), the masked
    one where it was as fast or faster (everything at batch 1, the chunks of the small stages at any batch)."""
    from sdvar_lib.fast.fused import chunk_stage_ends, dropped_scores, per_stage_pays

    ids = _official_stage_ids()
    assert dropped_scores(55, (36, 100, 200, 369, 625)) == 625 * 680 - 284432  # gamma 4's chunk of stages 5-9
    assert dropped_scores(424, (256,)) == 0
    begins = [ids.index(s) for s in range(10)] + [680]

    def pays(heads: int, batch: int, c: int, n: int) -> bool:
        position = begins[c]
        return per_stage_pays(2 * batch * heads, position, chunk_stage_ends(ids, position, begins[c + n] - position))

    for heads, batch in ((30, 8), (30, 32), (16, 8), (16, 32)):
        assert all(pays(heads, batch, c, n) for c, n in ((5, 5), (7, 3), (8, 2)))
        assert not any(pays(heads, batch, c, n) for c, n in ((0, 5), (0, 3), (3, 3)))
    assert pays(30, 8, 6, 3) and not pays(16, 8, 6, 3)
    for heads in (30, 16):
        assert not any(pays(heads, 1, c, n) for c, n in ((0, 5), (5, 5), (0, 3), (3, 3), (6, 3), (7, 3), (8, 2)))


def test_fused_stage_attention_is_taken_where_it_was_measured_faster():
    """``stage_attention="auto"``: the fused kernel for the single stages where graph replays on one H200 found it
    faster than the q/k norm kernel + SDPA (every stage of batch 1 but d16's last, stages 1-6 of batch 8 and 1-4 of
    batch 32), SDPA where it was slower (stages 7-9 at batch 8 and 32)."""
    from sdvar_lib.fast.fused import fused_stage_pays

    ids = _official_stage_ids()
    begins = [ids.index(s) for s in range(10)] + [680]

    def pays(heads: int, batch: int, stage: int) -> bool:
        return fused_stage_pays(2 * batch * heads, begins[stage], begins[stage + 1] - begins[stage])

    for heads in (30, 16):
        assert all(pays(heads, 1, s) for s in range(1, 9))
        assert all(pays(heads, 8, s) for s in range(1, 7)) and not any(pays(heads, 8, s) for s in (7, 8, 9))
        assert all(pays(heads, 32, s) for s in range(1, 5)) and not any(pays(heads, 32, s) for s in (7, 8, 9))
    assert pays(30, 1, 9) is False  # x0.997 measured: as fast, left to cuDNN


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_per_stage_chunk_attention_gives_the_masked_logits(tiny_pair, monkeypatch, dtype):
    """A chunk of several stages attending once per stage (no mask, each stage's queries against the cache up to its
    end) gives the masked pass's logits and cache: one attention per stage and layer, none with a mask."""
    import torch.nn.functional as F

    _, _, target = tiny_pair
    model = copy.deepcopy(target).to(dtype)
    runs = {mode: FastRun(model, 2, FastConfig(use_cuda_graphs=False, chunk_attention=mode))
            for mode in ("masked", "per_stage")}
    real, calls = F.scaled_dot_product_attention, []

    def spy(q, k, v, attn_mask=None, **kw):
        calls.append((q.shape[2], k.shape[2], attn_mask is not None))
        return real(q, k, v, attn_mask=attn_mask, **kw)

    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)
    gen = torch.Generator().manual_seed(3)
    position, l = chunk_span(model, 1, 3)  # stages 1, 2, 3 after stage 0
    x0 = torch.randn(4, 1, model.C, generator=gen).to(dtype)
    x = torch.randn(4, l, model.C, generator=gen).to(dtype)
    outs, seen = {}, {}
    with torch.no_grad():
        for mode, run in runs.items():
            run.begin(torch.tensor([3, 7]))
            run.forward(x0)
            calls.clear()
            outs[mode] = (run.forward(x).clone(), run.cache.k_NBHLc[:, :, :, :position + l].clone(),
                          run.cache.v_NBHLc[:, :, :, :position + l].clone())
            seen[mode] = sorted(set(calls)), len(calls)
    assert seen["masked"] == ([(l, position + l, True)], model.depth)
    ends = [position + sum(pn * pn for pn in model.patch_nums[1:s + 1]) for s in (1, 2, 3)]
    assert seen["per_stage"] == (sorted({(e - b, e, False) for b, e in zip([position, *ends[:-1]], ends)}),
                                 3 * model.depth)
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    for a, b in zip(outs["per_stage"], outs["masked"]):
        assert torch.allclose(a.float(), b.float(), rtol=tol, atol=tol)


@pytest.mark.parametrize("name,call", DECODERS[-3:], ids=[n for n, _ in DECODERS[-3:]])
def test_per_stage_chunk_attention_equals_eager(pair, name, call):
    """SDVAR's rounds with every verify chunk attending once per stage give the eager path's tokens and images."""
    eager = SDVAR(*pair)
    fast = SDVAR(*pair, run_factory=FastRunFactory(FastConfig(use_cuda_graphs=False, chunk_attention="per_stage")))
    for labels, k in (([1, 7], 1), ([4, 4], 0)):
        ref, got = call(eager, labels, k, 5), call(fast, labels, k, 5)
        assert _tokens(got) == _tokens(ref), f"{name}: per-stage fast tokens differ from eager for labels {labels}"
        assert torch.allclose(got.images_B3HW, ref.images_B3HW, atol=1e-5)
    chunks = [a for r in fast.run_factory.runs() for a in r._attentions.values() if a.mask is not None or a.stage_ends]
    assert chunks and all(a.mask is None and len(a.stage_ends) > 1 for a in chunks)
