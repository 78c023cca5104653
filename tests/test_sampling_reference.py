"""The sampling contract (DESIGN §4) against references written here, not the library's functions.

- top-k: drop logits below the k-th largest (ties at the k-th are kept);
- top-p: sort ascending, drop the entries whose cumulative softmax is ``<= 1 - top_p``, always keep
  the largest — with ties, ``top_p`` close to 1, ``top_p = 1`` and single-token results;
- CFG ramp: ``t = cfg * s / (S - 1)``, logits ``(1 + t) cond - t uncond``;
- Gumbel smoothing: noise ``-log E`` with ``E ~ Exp(1)`` from ``exponential_(generator=rng)`` on a tensor
  shaped like the logits (replayed draw for draw), and the Gumbel-max law of that noise (10^6 draws);
- ``more_smooth`` in ``VAR.sample_stage``: logits scaled by ``1 + ratio``, temperature
  ``max(0.27 (1 - 0.95 ratio), 0.005)``, ``ratio = s / (S - 1)``, mixture of codebook entries.

The references run in float64 where a boundary matters; random designs assert that no cumulative
probability lies within rounding distance of a top-p threshold, so float32 and float64 must agree.
The one statistical test (Gumbel-max) runs at ``ALPHA = 1e-4``; its power against a wrong noise is
asserted (>= 0.99).
"""

from __future__ import annotations

import pytest
import torch

from sdvar_lib.models.sampling import (
    SamplingConfig,
    apply_cfg,
    cfg_strength,
    filter_top_k_top_p,
    guided_logits,
    gumbel_softmax_with_rng,
    smooth_temperature,
)
from tests.stat_checks import chi_square, chi_square_power

ALPHA = 1e-4
BOUNDARY_MARGIN = 1e-5
"""A cumulative probability within this relative distance of ``1 - top_p`` could be decided either way by
float32 rounding (a float32 cumulative sum of 64 terms is accurate to a few 1e-7 of its value)."""


# ---- references ------------------------------------------------------------------------------------------
def reference_top_k_keep(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Keep mask: logits at least the k-th largest of their row (``k = 0``: keep all)."""
    if k == 0:
        return torch.ones_like(logits, dtype=torch.bool)
    kth = logits.double().sort(dim=-1, descending=True).values[..., k - 1 : k]
    return logits.double() >= kth


def reference_top_p_keep(logits: torch.Tensor, top_p: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep mask of the DESIGN rule, and per row the relative distance of the nearest cumulative sum to ``1 - top_p``.

    Ascending order (stable, by value), cumulative softmax in float64, drop entries with cumulative
    ``<= 1 - top_p``, never drop the largest. With ties the *number* dropped does not depend on the
    order among equal values; which of them is dropped does (callers compare counts for tied rows).
    """
    x = logits.double()
    if top_p == 0:
        return torch.ones_like(x, dtype=torch.bool), torch.full(x.shape[:-1], float("inf"), dtype=torch.float64)
    values, order = x.sort(dim=-1, stable=True)
    cum = values.softmax(dim=-1).cumsum(dim=-1)
    threshold = 1 - top_p
    drop_sorted = cum <= threshold
    drop_sorted[..., -1] = False
    keep = torch.ones_like(x, dtype=torch.bool).scatter(-1, order, ~drop_sorted)
    relative = (cum - threshold).abs() / torch.maximum(cum, torch.full_like(cum, threshold)).clamp_min(1e-300)
    margin = torch.where(torch.isfinite(values), relative, torch.full_like(cum, float("inf"))).amin(dim=-1)
    return keep, margin


def reference_filter(logits: torch.Tensor, top_k: int, top_p: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``logits`` with the dropped entries at ``-inf`` (top-k first, then top-p over what is left), and the margin."""
    out = logits.masked_fill(~reference_top_k_keep(logits, top_k), -torch.inf)
    keep, margin = reference_top_p_keep(out, top_p)
    return out.masked_fill(~keep, -torch.inf), margin


def _kept(filtered: torch.Tensor) -> torch.Tensor:
    return torch.isfinite(filtered)


# ---- top-k / top-p ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("top_k", [0, 1, 2, 5, 17, 64])
@pytest.mark.parametrize("top_p", [0.0, 1e-3, 0.3, 0.8, 0.96, 0.999, 0.9999, 1.0])
def test_top_k_top_p_matches_the_reference(top_k, top_p):
    """Random logits (200 rows of 64): the kept sets equal the reference's, row for row.

    A row whose cumulative sums come within ``BOUNDARY_MARGIN`` of the threshold is a float-rounding
    tie: such rows (at most 2 % by design) are held to the order-free properties only (kept count within
    one of the reference's, kept set a top set).
    """
    gen = torch.Generator().manual_seed(1000 * top_k + int(1e4 * top_p))
    logits = torch.randn(4, 50, 64, generator=gen) * 3
    want, margin = reference_filter(logits, top_k, top_p)
    clear = margin > BOUNDARY_MARGIN
    assert float(clear.double().mean()) >= 0.98, "the random design put too many rows at a top-p threshold"
    got = filter_top_k_top_p(logits, top_k, top_p)
    assert torch.equal(_kept(got)[clear], _kept(want)[clear]), (top_k, top_p)
    assert torch.equal(got[_kept(got)], logits[_kept(got)]), "kept logits must be unchanged"
    n_got, n_want = _kept(got).sum(-1), _kept(want).sum(-1)
    assert int((n_got - n_want).abs().max()) <= 1
    smallest_kept = torch.where(_kept(got), logits, torch.full_like(logits, torch.inf)).amin(-1, keepdim=True)
    assert bool((~_kept(got) | (logits >= smallest_kept)).all()) and bool((_kept(got) | (logits <= smallest_kept)).all())
    if top_p == 1.0:  # nothing has probability 0 here, so nothing beyond top-k is dropped
        assert torch.equal(_kept(got), reference_top_k_keep(logits, top_k))


def test_top_p_keeps_a_single_token_when_the_largest_has_enough_mass():
    logits = torch.tensor([[[4.0, 1.0, 0.5, 0.0, -1.0]]])  # the largest has ~0.91 of the mass
    for top_p in (1e-6, 0.5, 0.9):
        got = filter_top_k_top_p(logits, 0, top_p)
        assert _kept(got).sum() == 1 and bool(_kept(got)[..., 0]), top_p
    got = filter_top_k_top_p(logits, 0, 0.95)
    assert _kept(got).sum() == 2
    one = torch.tensor([[[0.3]]])  # a vocabulary of one token: it is always kept
    for top_k, top_p in ((0, 0.5), (1, 0.0), (1, 1e-6), (0, 1.0)):
        assert torch.equal(filter_top_k_top_p(one, top_k, top_p), one)
    assert int(_kept(filter_top_k_top_p(torch.randn(2, 3, 16), 1, 0.0)).sum()) == 6  # top-k 1 = greedy


@pytest.mark.parametrize("top_p", [0.2, 0.45, 0.7, 0.9])
def test_top_p_with_ties_keeps_the_right_number_of_the_most_likely_tokens(top_p):
    """Tied logits: the kept count is the reference's, and the kept set is a top set (never a smaller
    logit kept while a larger one is dropped; every logit above the boundary value kept)."""
    rows = torch.tensor([
        [1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0],
        [2.0, 0.0, 2.0, 0.0, 2.0, 0.0, 2.0, 0.0],
        [0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5],
        [3.0, 1.0, 1.0, 1.0, 1.0, -1.0, -1.0, -1.0],
        [0.0, 0.0, 0.7, 0.7, 0.7, 1.4, 1.4, 2.1],
    ]).unsqueeze(0)
    want, margin = reference_filter(rows, 0, top_p)
    assert float(margin.min()) > BOUNDARY_MARGIN
    got = filter_top_k_top_p(rows, 0, top_p)
    kept, want_kept = _kept(got)[0], _kept(want)[0]
    assert torch.equal(kept.sum(-1), want_kept.sum(-1)), (kept.sum(-1), want_kept.sum(-1))
    for r in range(rows.shape[1]):
        row, k = rows[0, r], kept[r]
        if bool((~k).any()):
            assert float(row[k].min()) >= float(row[~k].max()), f"row {r}: a smaller logit kept, a larger dropped"
            boundary = float(row[k].min())
            assert bool(k[row > boundary].all())


def test_top_k_keeps_ties_at_the_kth_value():
    logits = torch.tensor([[[3.0, 2.0, 2.0, 2.0, 1.0, 0.0]]])
    assert _kept(filter_top_k_top_p(logits, 2, 0.0)).tolist() == [[[True, True, True, True, False, False]]]
    assert torch.equal(_kept(filter_top_k_top_p(logits, 2, 0.0)), reference_top_k_keep(logits, 2))


def test_top_p_below_a_dominant_token_keeps_only_it_even_with_top_k():
    """Top-k first, then top-p over the top-k distribution: a planted 'always keep the two largest' shows here."""
    gen = torch.Generator().manual_seed(2)
    logits = torch.randn(8, 16, 32, generator=gen)
    logits[..., 5] += 8.0  # token 5 carries > 0.99 of the mass
    for top_k in (0, 4, 32):
        got = filter_top_k_top_p(logits, top_k, 0.5)
        assert int(_kept(got).sum()) == 8 * 16 and bool(_kept(got)[..., 5].all()), top_k


# ---- CFG ramp ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("cfg", [0.0, 1.5, 4.0])
@pytest.mark.parametrize("S", [2, 4, 10])
def test_cfg_ramp_matches_the_reference(cfg, S):
    gen = torch.Generator().manual_seed(S)
    logits_2BlV = torch.randn(6, 5, 16, generator=gen)
    cond, uncond = logits_2BlV[:3].double(), logits_2BlV[3:].double()
    for si in range(S):
        t = cfg * si / (S - 1)
        want = (1 + t) * cond - t * uncond
        assert cfg_strength(cfg, si, S) == pytest.approx(t, abs=1e-12)
        assert torch.allclose(guided_logits(logits_2BlV, si, S, cfg).double(), want, atol=1e-5), (cfg, S, si)
        assert torch.allclose(apply_cfg(logits_2BlV, t).double(), want, atol=1e-5)
    assert torch.equal(guided_logits(logits_2BlV, 0, S, cfg), logits_2BlV[:3]), "stage 0 is unguided"


# ---- Gumbel smoothing ----------------------------------------------------------------------------------------
def reference_gumbel_softmax(logits: torch.Tensor, tau: float, rng: torch.Generator) -> torch.Tensor:
    """``softmax((logits - log E) / tau)``, ``E ~ Exp(1)`` drawn with ``exponential_`` on a logits-shaped tensor."""
    e = torch.empty(logits.shape, dtype=logits.dtype).exponential_(generator=rng)
    return ((logits.double() - e.double().log()) / tau).softmax(dim=-1)


def _clone(gen: torch.Generator) -> torch.Generator:
    twin = torch.Generator()
    twin.set_state(gen.get_state())
    return twin


@pytest.mark.parametrize("tau", [0.005, 0.27, 1.0])
def test_gumbel_softmax_replays_the_reference_draw_for_draw(tau):
    gen = torch.Generator().manual_seed(4)
    logits = torch.randn(3, 9, 32, generator=gen)
    logits[0, :, 3] = -torch.inf
    twin = _clone(gen)
    got = gumbel_softmax_with_rng(logits, tau, gen)
    want = reference_gumbel_softmax(logits, tau, twin)
    assert torch.allclose(got.double(), want, atol=1e-5)
    assert bool((got[0, :, 3] == 0).all())
    assert torch.equal(gen.get_state(), twin.get_state()), "one exponential draw per logit, nothing else"


def test_gumbel_noise_has_the_gumbel_max_law():
    """``argmax(logits + G)`` follows ``softmax(logits)`` (10^6 rows, one call): chi-square at ``ALPHA``.

    Power: uniform noise in place of ``-log E`` (a plausible slip) gives another law; the test's power
    against it is computed from that law's exact probabilities (estimated once with 10^6 draws of
    the wrong noise) and asserted >= 0.99.
    """
    n = 1_000_000
    logits = torch.tensor([1.0, 0.5, 0.0, -0.5, -1.0, 2.0, 0.2, -2.0])
    weights = gumbel_softmax_with_rng(logits.expand(n, -1).contiguous(), 1.0, torch.Generator().manual_seed(5))
    counts = torch.bincount(weights.argmax(dim=-1), minlength=8).double()
    law = logits.double().softmax(-1)
    assert chi_square(counts, law).passes(ALPHA)
    u = torch.rand(n, 8, generator=torch.Generator().manual_seed(6))
    wrong = torch.bincount((logits + u).argmax(dim=-1), minlength=8).double() / n
    assert chi_square_power(law, wrong, n, ALPHA) >= 0.99


def test_smooth_temperature_is_the_reference_schedule():
    for ratio in (0.0, 0.1, 0.5, 0.9, 1.0):
        assert smooth_temperature(ratio) == pytest.approx(max(0.27 * (1 - 0.95 * ratio), 0.005), abs=1e-12)
    assert smooth_temperature(1.0) == pytest.approx(0.0135)


# ---- a whole stage, as VAR.sample_stage draws it ------------------------------------------------------------
def reference_sample_stage(model, logits_BlV, si: int, sampling: SamplingConfig, rng: torch.Generator):
    """Tokens, embedded map and probabilities of one stage, from DESIGN §4 with torch primitives only."""
    B, l, V = logits_BlV.shape
    pn = model.patch_nums[si]
    filtered, _ = reference_filter(logits_BlV, sampling.top_k, sampling.top_p)
    probs = filtered.softmax(dim=-1)
    idx = torch.multinomial(probs.view(-1, V), 1, replacement=True, generator=rng).view(B, l)
    codebook = model.vae.quantize.embedding.weight.detach()
    if sampling.more_smooth:
        ratio = si / (model.num_stages - 1)
        tau = max(0.27 * (1 - 0.95 * ratio), 0.005)
        weights = reference_gumbel_softmax(filtered * (1 + ratio), tau, rng).float()
        h_BlC = weights @ codebook
    else:
        h_BlC = codebook[idx]
    return idx, h_BlC.transpose(1, 2).reshape(B, -1, pn, pn), probs


@pytest.mark.parametrize("top_k, top_p", [(0, 0.0), (10, 0.0), (0, 0.8), (20, 0.9)])
@pytest.mark.parametrize("more_smooth", [False, True])
def test_sample_stage_matches_the_reference(tiny_pair, top_k, top_p, more_smooth):
    _, _, target = tiny_pair
    sampling = SamplingConfig(cfg=1.5, top_k=top_k, top_p=top_p, more_smooth=more_smooth)
    gen = torch.Generator().manual_seed(7)
    for si, pn in enumerate(target.patch_nums):
        logits = torch.randn(3, pn * pn, target.V, generator=gen) * 2
        twin = _clone(gen)
        with torch.no_grad():
            got = target.sample_stage(logits, si, sampling, gen)
        idx, h, probs = reference_sample_stage(target, logits, si, sampling, twin)
        assert torch.equal(got.idx_Bl, idx), si
        assert torch.allclose(got.probs_BlV, probs, atol=1e-6), si
        assert torch.allclose(got.h_BChw, h, atol=1e-5), (si, float((got.h_BChw - h).abs().max()))
        assert torch.equal(gen.get_state(), twin.get_state()), f"stage {si}: a different number of random draws"


@pytest.mark.parametrize("B", [1, 3])
def test_drawn_labels_are_the_references_multinomial_draw(B):
    """``prepare_labels(B, None, ...)`` draws what the reference's ``torch.multinomial`` call draws and leaves the
    generator where it leaves it (batch 1 takes multinomial's own one-sample way without its checks)."""
    from sdvar_lib.models.sampling import prepare_labels

    uniform = torch.full((1, 1000), 1e-3)
    for seed in range(300):
        ours, ref = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed)
        labels = prepare_labels(B, None, 1000, ours, "cpu")
        want = torch.multinomial(uniform, num_samples=B, replacement=True, generator=ref).reshape(B)
        assert labels.shape == (B,) and labels.dtype == torch.long
        assert torch.equal(labels, want), f"seed {seed}"
        assert torch.equal(torch.rand(4, generator=ours), torch.rand(4, generator=ref)), f"seed {seed}: stream moved"
