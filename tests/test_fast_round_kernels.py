"""The sampling kernel's probabilities-only mode (a verify chunk's ``p``) and device rounds on the fused sampler, on the
CPU in Triton's interpreter (as ``tests/test_fast_kernels.py``: the interpreter is switched on at collection when no GPU
is present; on a GPU ``tests/test_gpu_fast_round.py`` runs the compiled kernels)."""

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
from sdvar_lib.fast.kernels import interpreter_active  # noqa: E402
from sdvar_lib.models.sampling import cfg_strength, guided_logits, stage_probs  # noqa: E402

pytestmark = [pytest.mark.no_cuda,
              pytest.mark.skipif(not interpreter_active(), reason="Triton's CPU interpreter is not available here")]


@pytest.mark.parametrize(("top_k", "top_p"), [(0, 0.0), (5, 0.0), (0, 0.8), (7, 0.9)])
def test_probs_only_mode_gives_the_draw_modes_distribution_at_any_offset(top_k, top_p):
    from sdvar_lib.fast.kernels.sampling import sample_stage_into, stage_probs_into

    gen = torch.Generator().manual_seed(3)
    B, V, Cv, sizes = 2, 32, 4, (1, 4, 9)
    chunk = sum(sizes)
    logits = torch.randn(2 * B, chunk, V, generator=gen) * 3
    codebook = torch.randn(V, Cv, generator=gen)
    offset = 0
    for si, l in enumerate(sizes):
        cfg_t = cfg_strength(1.5, si + 1, 5)
        got = torch.full((B * l, V), float("nan"))
        stage_probs_into(logits, offset, l, cfg_t, top_k, top_p, got, codebook)
        want = stage_probs(guided_logits(logits[:, offset:offset + l], si + 1, 5, 1.5),
                           SamplingConfig(cfg=1.5, top_k=top_k, top_p=top_p)).reshape(B * l, V)
        assert torch.allclose(got, want, rtol=1e-5, atol=1e-7), (si, float((got - want).abs().max()))
        if offset + l == chunk:  # the draw mode covers the chunk's last stage: the same distribution, bit for bit
            probs = torch.empty(B * l, V)
            idx = torch.empty(B * l, dtype=torch.long)
            sample_stage_into(logits, l, cfg_t, top_k, top_p, codebook, torch.ones(B * l, V), idx, probs, torch.empty(B * l, Cv))
            assert torch.equal(got, probs)
        offset += l
    with pytest.raises(ValueError, match="covering the stage"):
        stage_probs_into(logits, chunk - 3, 4, 0.5, 0, 0.0, torch.empty(B * 4, V), codebook)


def test_device_rounds_on_the_fused_sampler_equal_the_eager_rounds(tiny_pair):
    """Draft draws from the kernel in both; ``p`` from the kernel (device) or stage_probs (eager): equal tokens here."""
    _, draft, target = tiny_pair
    config = dict(use_cuda_graphs=False, sampler="fused")
    device = SDVAR(draft, target, run_factory=FastRunFactory(FastConfig(**config)))
    eager = SDVAR(draft, target, run_factory=FastRunFactory(FastConfig(**config, device_rounds=False)))
    for gamma, seed in ((2, 1),):  # one call: every kernel call is slow in the interpreter
        sampling = SamplingConfig(top_k=6, top_p=0.9)
        got = device.generate_parallel(1, [4], seed, sampling, gamma=gamma)
        want = eager.generate_parallel(1, [4], seed, sampling, gamma=gamma)
        assert [t.tolist() for t in got.tokens_per_stage] == [t.tolist() for t in want.tokens_per_stage], (gamma, seed)
    assert all(r._accept for r in device.run_factory._rounds.values())
    assert all(run.sampler == "fused" for run in device.run_factory.runs())
