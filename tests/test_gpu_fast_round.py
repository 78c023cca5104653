"""SDVAR's device rounds on a GPU, in CUDA graphs (skipped without CUDA; ``tests/test_fast_round.py`` checks the
same code on the CPU).

- the committed law is the target's: ``tests/test_lossless.py``'s criterion on calls made of graphed device
  rounds (micro pair, close draft: whole stages accepted and bonus stages drawn often);
- a call whose programs are captured during the call (each warmed up once on real data) gives the tokens of
  the same call replaying them, and of the same device rounds run without graphs;
- greedy device rounds give the target's greedy tokens (float32 tiny pair: no near ties).
"""

from __future__ import annotations

import copy

import pytest
import torch

from sdvar_lib import SDVAR, SamplingConfig
from sdvar_lib.fast.config import FastConfig
from sdvar_lib.fast.factory import FastRunFactory
from sdvar_lib.models.presets import build_tiny
from sdvar_lib.sdvar.gamma import AdaptiveGamma, UniformCost
from tests.test_lossless import micro, run_calls  # noqa: F401  (micro is a fixture)

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def cuda():
    if not torch.cuda.is_available():
        pytest.skip("CUDA is not available")
    return torch.device("cuda")


def _to(models, device):
    """Copies of ``(target, draft)`` on ``device`` sharing one VQVAE."""
    target, draft = (copy.deepcopy(m) for m in models)
    draft.vae_proxy = target.vae_proxy
    target.vae.to(device)
    return target.to(device), draft.to(device)


GPU_SCENARIOS = [(1, 1, 200, "auto"), (2, 1, 200, "auto"), (2, 4, 100, "auto"), (2, 4, 100, "per_stage")]


@pytest.mark.parametrize(("gamma", "B", "calls", "chunk_attention"), GPU_SCENARIOS,
                         ids=[f"gamma{g}-B{b}-{a}" for g, b, _, a in GPU_SCENARIOS])
def test_gpu_device_rounds_draw_the_target_law(cuda, micro, gamma, B, calls, chunk_attention):  # noqa: F811
    target, close = _to(micro[:2], cuda)
    factory = FastRunFactory(FastConfig(chunk_attention=chunk_attention))
    outcome = run_calls(SDVAR(close, target, run_factory=factory), gamma, B, calls)
    rounds = list(factory._rounds.values())
    assert rounds and all(r._accept for r in rounds), "device rounds must have run"
    assert all(run.use_cuda_graphs for run in factory.runs())
    assert outcome.verdict.lossless, outcome.describe()
    assert outcome.bonus_per_call >= (0.5 if B == 1 else 0.1), outcome.describe()


UNIFORM_ADAPTIVE = AdaptiveGamma(costs=UniformCost())
"""The adaptive rule with fixed prices on both sides (``"adaptive"`` is priced by each factory with its own timed
programs, so two factories may decide differently: :func:`test_gpu_the_fast_path_prices_the_adaptive_rule`)."""


def _tokens(out) -> list:
    return [t.tolist() for t in out.tokens_per_stage]


def test_gpu_captured_during_a_call_equals_replayed_and_graph_less(cuda):
    vae, target = build_tiny(seed=0, device=cuda)
    _, draft = build_tiny(seed=1, depth=1, vae=vae, device=cuda)
    close = copy.deepcopy(target)
    close.vae_proxy = target.vae_proxy
    with torch.no_grad():
        close.head.weight.add_(0.3 * close.head.weight.std() * torch.randn_like(close.head.weight))
    for d in (draft, close):
        graphed = SDVAR(d, target, run_factory=FastRunFactory())
        plain = SDVAR(d, target, run_factory=FastRunFactory(FastConfig(use_cuda_graphs=False)))
        for gamma in (1, 2, 3, UNIFORM_ADAPTIVE):
            for seed in range(3):
                s = SamplingConfig(top_k=0)
                first = graphed.generate_parallel(3, None, seed, s, gamma=gamma)
                again = graphed.generate_parallel(3, None, seed, s, gamma=gamma)
                ref = plain.generate_parallel(3, None, seed, s, gamma=gamma)
                assert _tokens(first) == _tokens(again) == _tokens(ref), (gamma, seed)
                assert torch.equal(first.f_hat_BChw, again.f_hat_BChw)
                assert first.stats.to_dict()["accepted_tokens_per_stage"] == ref.stats.to_dict()["accepted_tokens_per_stage"]
        assert any(r._accept for r in graphed.run_factory._rounds.values())


def test_gpu_greedy_device_rounds_equal_the_greedy_target(cuda):
    vae, target = build_tiny(seed=0, device=cuda)
    _, draft = build_tiny(seed=1, depth=1, vae=vae, device=cuda)
    sd = SDVAR(draft, target, run_factory=FastRunFactory())
    ref = target.generate(2, [3, 8], g_seed=2, sampling=SamplingConfig(top_k=1))
    for gamma in (1, 2, 4):
        out = sd.generate_parallel(2, [3, 8], g_seed=2, gamma=gamma, sampling=SamplingConfig(top_k=1))
        assert _tokens(out) == [t.tolist() for t in ref.tokens_per_stage], gamma
    assert any(r._accept for r in sd.run_factory._rounds.values())


@pytest.mark.parametrize("size", ["tiny", "official d16"])
def test_gpu_device_rounds_equal_eager_rounds_on_the_torch_sampler(cuda, size):
    """With PyTorch's sampler on both sides (the same p and q kernels), graphed device rounds give the graphed eager
    rounds' tokens: the draws are the same numbers in the same order. Official width in bf16, top-k 900, top-p 0.96."""
    from sdvar_lib.models.presets import build_vae, build_var

    if size == "tiny":
        vae, target = build_tiny(seed=0, device=cuda)
        _, draft = build_tiny(seed=1, depth=1, vae=vae, device=cuda)
        sampling, B = SamplingConfig(top_k=0), 3
    else:
        torch.manual_seed(0)
        vae = build_vae(cuda)
        target = build_var(vae, 16, cuda).to(torch.bfloat16).eval()
        draft = build_var(vae, 16, cuda).to(torch.bfloat16).eval()
        sampling, B = SamplingConfig(top_k=900, top_p=0.96), 2
    device = SDVAR(draft, target, run_factory=FastRunFactory(FastConfig(sampler="torch")))
    eager = SDVAR(draft, target, run_factory=FastRunFactory(FastConfig(sampler="torch", device_rounds=False)))
    for gamma in (1, 3, UNIFORM_ADAPTIVE):
        for seed in range(2):
            got = device.generate_parallel(B, None, seed, sampling, gamma=gamma)
            want = eager.generate_parallel(B, None, seed, sampling, gamma=gamma)
            assert _tokens(got) == _tokens(want), (size, gamma, seed)
            assert got.stats.to_dict()["accepted_tokens_per_stage"] == want.stats.to_dict()["accepted_tokens_per_stage"]
    assert any(r._accept for r in device.run_factory._rounds.values())


def test_gpu_the_fast_path_prices_the_adaptive_rule(cuda):
    """``gamma="adaptive"`` on the graphed fast path decides with the CUDA-event times of its own programs, measured
    once and kept: its calls equal graph-less calls with that priced rule given explicitly."""
    from sdvar_lib.sdvar.acceptance import ExactPolicy
    from sdvar_lib.sdvar.gamma import ProgramCost

    vae, target = build_tiny(seed=0, device=cuda)
    _, draft = build_tiny(seed=1, depth=1, vae=vae, device=cuda)
    sd = SDVAR(draft, target, run_factory=FastRunFactory())
    s = SamplingConfig(top_k=0)
    priced = sd.run_factory.price_rule(AdaptiveGamma(), draft, target, 3, s, ExactPolicy())
    assert isinstance(priced.costs, ProgramCost)
    priced.check_for(target.num_stages)
    assert all(t > 0 for t in priced.costs.step_times + tuple(priced.costs.round_times.values()))
    plain = SDVAR(draft, target, run_factory=FastRunFactory(FastConfig(use_cuda_graphs=False)))
    for seed in range(3):
        got = sd.generate_parallel(3, None, seed, s, gamma="adaptive")
        ref = plain.generate_parallel(3, None, seed, s, gamma=priced)
        assert _tokens(got) == _tokens(ref), seed
        assert got.stats.gamma_per_round == ref.stats.gamma_per_round
    assert sd.run_factory.price_rule(AdaptiveGamma(), draft, target, 3, s, ExactPolicy()).costs is priced.costs
