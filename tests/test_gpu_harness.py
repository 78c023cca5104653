"""The harness at the official size on the GPU, as the notebooks run it: it passes, and it still catches every bug.

``gpu`` tests (skipped without CUDA). The official-size d16 -> d30 pair with random weights runs on the fast path
exactly as ``make_pair_sdvar`` gives it to the notebooks (half-precision VARs, static caches, CUDA graphs), in
float16 (a T4) and bfloat16. ``SDVARParallelV1Tester(sd).run_all_tests()`` must pass with the tolerances derived
from that arithmetic (``test_framework/tolerances.py``), and with each planted bug of ``tests/test_harness_teeth.py``
the named harness test must still fail. Where a CPU plant patches code the fast path does not run (the eager
model's stage input, sampler and ``KVCache.write``), the fast path's own code is planted instead (the same bug in
the fast run), and the cache perturbation is 16 units of rounding of the half type (``2**-p``), since a bf16 cache
cannot even store a 0.1 % change. Plants that patch code recorded into CUDA graphs get a new run factory, so
that the graphs are captured with the bug in them.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

import sdvar_lib.fast.acceptance as fast_acceptance
from sdvar_lib.fast import FastRun, make_fast_sdvar
from sdvar_lib.models import build_official_pair
from sdvar_lib.sdvar import SDVAR
from test_framework import SDVARParallelV1Tester
from tests import test_harness_teeth as teeth

pytestmark = pytest.mark.gpu


# ---- the fast path's own versions of the plants whose eager code it does not run ---------------------
def _fast_input_reads_the_wrong_f_hat(mp):
    orig = FastRun.stage_input

    def stage_input(self, si, f_hats):
        if si == 0 or len(f_hats) <= si:
            return orig(self, si, f_hats)
        return orig(self, si, list(f_hats[: si - 1]) + [f_hats[si]])  # f_hat after stage si, not si - 1

    mp.setattr(FastRun, "stage_input", stage_input)


def _flattened(sample):
    """``q`` reported at temperature 2 (the square root of each probability, renormalised)."""
    q = sample.probs_BlV.sqrt()
    return replace(sample, probs_BlV=q / q.sum(dim=-1, keepdim=True))


def _fast_q_reported_flattened(mp):
    sample_stage, decode_stage = FastRun.sample_stage, FastRun.decode_stage
    mp.setattr(FastRun, "sample_stage", lambda self, *a, **kw: _flattened(sample_stage(self, *a, **kw)))

    def decode(self, *args, **kwargs):
        sample, f_hat = decode_stage(self, *args, **kwargs)
        return _flattened(sample), f_hat

    mp.setattr(FastRun, "decode_stage", decode)


def _fast_draft_filter_keeps_two(mp):
    teeth._top_p_keeps_two(mp)
    mp.setattr(FastRun, "_use_fused_sampler", lambda self, sampling: False)  # the fused kernel has its own filter


def _fast_cache_stores_perturbed_values(mp):
    """Later passes read values 16 units of rounding too large (the pass that wrote them read them right)."""
    forward = FastRun.forward

    def perturbed(self, x_2BlC, attn_mask=None):
        position = self.cache.length
        logits = forward(self, x_2BlC, attn_mask)
        bits = {torch.bfloat16: 8, torch.float16: 11}.get(self.cache.v_NBHLc.dtype, 24)
        self.cache.v_NBHLc[:, :, :, position : position + x_2BlC.shape[1]] *= 1 + 16 * 2.0**-bits
        return logits

    mp.setattr(FastRun, "forward", perturbed)


def _fast_corrections_from_the_draft(mp):
    """The device verdict's corrections drawn from ``q`` (its own import of ``residual_distribution``)."""
    teeth._corrections_from_the_draft(mp)
    mp.setattr(fast_acceptance, "residual_distribution", lambda p, q: q)


def _fast_acceptance_to_the_power(exponent: float):
    """The device verdict accepts with probability ``min(1, p(x) / q(x)) ** exponent``."""

    def plant(mp):
        teeth._acceptance_to_the_power(exponent)(mp)

        def verdict(target_mass_Bl, p_BlV, q_BlV, x_Bl, u_Bl, e_nV):
            q_x = q_BlV.gather(-1, x_Bl.unsqueeze(-1)).squeeze(-1)
            ratio = torch.where(q_x > 0, target_mass_Bl / q_x.clamp_min(1e-30), torch.zeros_like(q_x)).clamp(max=1)
            accepted = u_Bl < ratio**exponent
            corrections = fast_acceptance.draw_from(fast_acceptance.residual_distribution(p_BlV, q_BlV), e_nV)
            return accepted, accepted.all(dim=1), torch.where(accepted, x_Bl, corrections)

        mp.setattr(fast_acceptance, "speculative_verdict", verdict)

    return plant


FAST_PLANTS = {  # row id of tests/test_harness_teeth.py -> the plant on the fast path
    "input reads the wrong f_hat": _fast_input_reads_the_wrong_f_hat,
    "q reported before top-k": _fast_q_reported_flattened,
    "top-p keeps two tokens (draft)": _fast_draft_filter_keeps_two,
    "cache stores perturbed values": _fast_cache_stores_perturbed_values,
    # the device rounds (FastConfig.device_rounds) have their own verdict code: planted in both
    "corrections drawn from the draft": _fast_corrections_from_the_draft,
    "acceptance min(1, p/q) ** 0.8": _fast_acceptance_to_the_power(0.8),
}
RECAPTURE = {"input reads the wrong f_hat", "q reported before top-k", "top-p keeps two tokens (draft)",
             "f_hat upsampled bilinearly (draft)", "f_hat upsampled bilinearly (commit)",
             "corrections drawn from the draft", "acceptance min(1, p/q) ** 0.8"}
"""Plants of code that runs inside captured programs (stage inputs, the draw, the f_hat update)."""
OPTIONS = {name: {"top_k": 1} for name in ("top-p keeps two tokens (draft)", "top-p keeps two tokens (target)")}
"""With the CPU rows' top-k 8 / top-p 0.6 a flat official-size distribution keeps several tokens, and a filter that
also keeps the second most likely token changes nothing there; with top-k 1 it always adds one."""
ROWS = [(row[0], FAST_PLANTS.get(row[0], row[1]), OPTIONS.get(row[0], row[2]), *row[3:]) for row in teeth.PLANTED]
SAMPLED_DRAWS = 2**15
"""Proposals per sampled check at the official size (the tester's default there is ``2**22 // V`` = 1,024): the
random-weight official pair's ``p`` and ``q`` are nearly flat and nearly equal, so ``min(1, p/q) ** 0.8`` moves
the acceptance rate little, and 1,024 draws missed it in bfloat16 on an H200."""


def _call(tester: SDVARParallelV1Tester, test_name: str):
    extra = {"draws": SAMPLED_DRAWS} if test_name == "test_sampled_distribution" else {}
    return getattr(tester, test_name)(B=2, **extra)


@pytest.fixture(scope="module", params=["float16", "bfloat16"])
def official(request):
    if not torch.cuda.is_available():
        pytest.skip("CUDA is not available")
    torch.manual_seed(0)
    pair = build_official_pair(16, 30, device="cuda")
    dtype = getattr(torch, request.param)
    pair.draft.to(dtype)
    pair.target.to(dtype)
    yield pair, make_fast_sdvar(pair.draft, pair.target)
    del pair
    torch.cuda.empty_cache()


def test_the_harness_passes_at_the_official_size(official):
    _, sd = official
    results = SDVARParallelV1Tester(sd).run_all_tests(B=2, gamma=2, print_results=False)
    for r in results:
        print(f"{r.test_name}: {'PASS' if r.passed else 'FAIL'} {r.message[:300]}")
    assert all(r.passed for r in results), [f"{r.test_name}: {r.message}" for r in results if not r.passed]
    sampled = _call(SDVARParallelV1Tester(sd), "test_sampled_distribution")
    assert sampled.passed, f"with {SAMPLED_DRAWS} draws: {sampled.message}"


@pytest.mark.parametrize(("name", "plant", "options", "test_name", "expected"), ROWS, ids=[row[0] for row in ROWS])
def test_a_planted_bug_fails_at_the_official_size(official, monkeypatch, name, plant, options, test_name, expected):
    pair, shared = official
    with monkeypatch.context() as mp:
        plant(mp)
        sd: SDVAR = make_fast_sdvar(pair.draft, pair.target) if name in RECAPTURE else shared
        try:
            result = _call(SDVARParallelV1Tester(sd, **options), test_name)
        finally:
            if sd is not shared:
                sd.run_factory.release()
                torch.cuda.empty_cache()
    print(f"{name}: {test_name} -> {'PASS' if result.passed else 'FAIL'}: {result.message[:300]}")
    assert result.passed is False, f"{test_name} missed '{name}' at the official size: {result.message}"
    assert expected in result.message, result.message
