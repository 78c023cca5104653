"""The harness's float32 cache bound, pinned between the measured rounding noise and an error a bug makes.

``Tolerances.for_dtype(float32, "cpu").cache`` is fixed, not derived (tests/test_harness_teeth.py plants
bugs far larger than any bound). Issue 20 found that loosening it 10x let every test pass. So:

- the bound must sit in a window above the float32 noise floor measured on the same caches -- two
  mathematically equal float32 prefills (one pass per stage, one block-causal pass over all stages)
  disagree by about one ulp of the cached magnitudes -- wide enough not to flake (>= 10x the floor)
  and narrow enough to see an error (<= 500x; measured here: about 180x, a 10x looser bound 1,800x);
- an error just above the bound (a constant 4e-5 added to every stored value, about 4x the bound and
  over 100x the noise floor) is reported by the harness's cache test; a bound 10x looser misses it.

The numbers below are independent of ``test_framework/tolerances.py``: a change of its float32 bounds
must be argued against this measurement.
"""

from __future__ import annotations

import pytest
import torch

from sdvar_lib import SDVAR
from sdvar_lib.models.kv_cache import KVCache
from test_framework import SDVARParallelV1Tester, Tolerances
from test_framework.reference import cache_drift, exact_cache, sequential_cache
from test_framework.tolerances import MANTISSA_BITS, ulp

WINDOW = (10.0, 500.0)
"""The float32 cache bound over the noise floor: at least 10x (no flakes), at most 500x (sees a bug)."""
PLANTED_ERROR = 4e-5
"""Added to every cached value: about 4x the float32 bound on the tiny pair's caches (|v| < 1)."""


@pytest.fixture(scope="module")
def measured(tiny_pair):
    """The cached magnitude and the float32 noise floor of the tiny target's cache after a whole call."""
    _, draft, target = tiny_pair
    out = SDVAR(draft, target).generate_parallel(2, [1, 2], g_seed=0, gamma=2)
    seq = sequential_cache(target, out.label_B, out.tokens_per_stage, target.num_stages)
    exact = exact_cache(target, out.label_B, out.tokens_per_stage, target.num_stages)
    drift = cache_drift(seq, exact)
    magnitude = max(float(t.abs().max()) for layer in range(seq.num_layers) for t in (seq.keys(layer), seq.values(layer)))
    floor = max(max(drift.keys), max(drift.values), ulp(magnitude, MANTISSA_BITS[torch.float32]))
    return magnitude, floor, seq


def test_float32_cache_bound_sits_in_its_window_above_the_noise_floor(measured):
    magnitude, floor, seq = measured
    assert 0.05 < magnitude < 10, magnitude  # the window below was measured at this scale
    bound = Tolerances.for_dtype(torch.float32, "cpu").cache
    allowed = max(bound.allowed(seq.keys(layer)) for layer in range(seq.num_layers))
    lo, hi = WINDOW
    assert lo * floor <= allowed <= hi * floor, (
        f"the float32 cache bound allows {allowed:.3g}, {allowed / floor:.0f}x the float32 noise floor {floor:.3g} "
        f"(window {lo:g}x..{hi:g}x)")
    assert allowed < PLANTED_ERROR < 10 * allowed  # the planted error falls between the bound and a 10x looser one
    assert PLANTED_ERROR > 100 * floor  # ...and is no rounding


def _cache_stores_shifted_values(mp):
    """Every stored value is off by PLANTED_ERROR for later passes (the current pass reads the right ones)."""
    orig = KVCache.write

    def write(self, layer, k, v):
        keys, values = orig(self, layer, k, v)
        keys, values = keys.clone(), values.clone()
        self.v_NBHLc[layer, :, :, self.length : self.length + k.shape[2]] += PLANTED_ERROR
        return keys, values

    mp.setattr(KVCache, "write", write)


def test_the_harness_reports_a_cache_error_just_above_its_float32_bound(tiny_pair, monkeypatch):
    _, draft, target = tiny_pair
    tester = SDVARParallelV1Tester(SDVAR(draft, target))
    assert tester.tol == Tolerances.for_dtype(torch.float32, "cpu")
    clean = tester.test_kv_cache_consistency(B=2)
    assert clean.passed, clean.message
    with monkeypatch.context() as mp:
        _cache_stores_shifted_values(mp)
        result = tester.test_kv_cache_consistency(B=2)
    assert result.passed is False, f"a cache error of {PLANTED_ERROR:g} went unseen: {result.message}"
    assert "cache values of layer" in result.message, result.message
