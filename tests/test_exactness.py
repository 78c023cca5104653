"""Per-stage acceptance, exactly: 10^6 verdicts of one vectorised call against the law of speculative sampling.

For fixed ``p`` (target) and ``q`` (draft) over ``V = 8`` tokens, one ``verify_stage`` call judges
``n`` proposals ``x ~ q`` (one stage of ``n`` tokens; ``n = 10^6`` in the power case, ``2 x 10^5`` in the
edge cases). The reference is written here from
DESIGN §5, not taken from the library: token ``x`` is accepted with probability ``a(x) = min(1, p(x)/q(x))``
and a rejected token is replaced by a draw from ``r = normalize(max(p - q, 0))``, so the committed
token follows ``p``. Each case checks

1. no committed token outside ``p``'s support and no accepted proposal with ``p(x) = 0``;
2. the committed tokens follow ``p`` (Pearson chi-square);
3. the acceptance frequency of every proposed token is ``a(x)``: exact for ``a in {0, 1}``, and for
   ``0 < a < 1`` a pooled binomial z-test (sensitive to a distortion of every ``a`` in one direction)
   and a per-token chi-square;
4. the corrections of rejected proposals follow ``r`` (chi-square), and ``residual_distribution`` is
   ``r`` to float rounding.

Significance: every statistic at ``ALPHA = 1e-4`` (about 50 statistics in this file: family-wise
false-alarm rate <= 5e-3; seeds are fixed, so the outcome is deterministic). Power:
:func:`test_the_design_sees_a_one_percent_distortion_of_the_acceptance_probability` computes it for the
``generic`` case — >= 0.99 for the pooled z-test against ``a ** 0.99`` and ``0.99 a`` (1 %), and
>= 0.99 for the committed-law chi-square against ``a ** 0.97`` (the 3 % bug).
"""

from __future__ import annotations

import math

import pytest
import torch
from scipy import stats

from sdvar_lib.sdvar import DraftProposal, VerifyResult
from sdvar_lib.sdvar.acceptance import ExactPolicy, RelaxedPolicy, residual_distribution
from tests.stat_checks import binomial_z, chi_square, chi_square_power, total_variation, z_bound, z_power

N = 1_000_000
ALPHA = 1e-4
V = 8


def _dist(*values: float) -> torch.Tensor:
    t = torch.tensor(values, dtype=torch.float64)
    assert abs(float(t.sum()) - 1) < 1e-12, values
    return t.float()


def _masked_softmax(logits: list[float], keep: list[int]) -> torch.Tensor:
    """A distribution truncated to ``keep`` (the shape top-k/top-p leave: zeros outside the support)."""
    x = torch.tensor(logits, dtype=torch.float32)
    mask = torch.full_like(x, -torch.inf)
    mask[keep] = 0.0
    return (x + mask).softmax(-1)


GENERIC_P = _dist(0.06, 0.07, 0.08, 0.09, 0.12, 0.16, 0.19, 0.23)
GENERIC_Q = _dist(0.2, 0.2, 0.2, 0.2, 0.05, 0.05, 0.05, 0.05)
_g = torch.Generator().manual_seed(5)
_NEAR_Q = (GENERIC_P * (1 + 0.05 * torch.randn(V, generator=_g))).clamp_min(1e-3)

CASES = {
    # a(x) in {0.3, 0.35, 0.4, 0.45, 1, 1, 1, 1}: the power case (most proposals have 0 < a < 1)
    "generic": (GENERIC_P, GENERIC_Q),
    # tokens 4..7 are never proposed: they are reached only through the residual
    "q zero where p > 0": (_dist(0.1, 0.2, 0.2, 0.1, 0.1, 0.1, 0.1, 0.1), _dist(0.3, 0.3, 0.2, 0.2, 0, 0, 0, 0)),
    # nothing to correct: every proposal accepted, the residual is empty (falls back to p)
    "p equals q": (GENERIC_P, GENERIC_P),
    # nothing accepted: every committed token comes from the residual (= p)
    "disjoint supports": (_dist(0.25, 0.25, 0.25, 0.25, 0, 0, 0, 0), _dist(0, 0, 0, 0, 0.25, 0.25, 0.25, 0.25)),
    # proposals outside p's support must always be rejected
    "p zero where q > 0": (_dist(0.4, 0.3, 0.3, 0, 0, 0, 0, 0), GENERIC_Q),
    # truncated supports as top-k / top-p leave them (partly overlapping)
    "truncated supports": (_masked_softmax([2.0, 1.5, 1.0, 0.5, 0.0, -1.0, 0.3, 0.1], [0, 1, 2, 6, 7]),
                           _masked_softmax([1.0, 2.0, 0.5, 1.5, 1.0, 0.0, -0.5, 0.2], [0, 1, 3, 4])),
    # a draft within about 2 % of the target (acceptance close to 1 everywhere)
    "nearly equal": (GENERIC_P, _NEAR_Q / _NEAR_Q.sum()),
}


def reference_acceptance(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """``a(x) = min(1, p(x)/q(x))`` where ``q(x) > 0`` (0 elsewhere: never proposed)."""
    p, q = p.double(), q.double()
    return torch.where(q > 0, (p / q.clamp_min(1e-300)).clamp(max=1.0), torch.zeros_like(p))


def reference_residual(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """``normalize(max(p - q, 0))``, or ``p`` when nothing is left."""
    r = (p.double() - q.double()).clamp_min(0)
    return r / r.sum() if float(r.sum()) > 0 else p.double()


def committed_law(p: torch.Tensor, q: torch.Tensor, accept: torch.Tensor) -> torch.Tensor:
    """The committed token's law when ``x ~ q`` is accepted w.p. ``accept(x)``, else replaced by a draw from ``r``."""
    q = q.double()
    accepted = q * accept
    return accepted + (1 - accepted.sum()) * reference_residual(p, q)


def draw_verdicts(policy, p: torch.Tensor, q: torch.Tensor, n: int = N, seed: int = 0, context=None, device="cpu"):
    """``n`` proposals ``x ~ q`` judged in ONE ``verify_stage`` call (one stage of ``n`` tokens), on ``device``;
    returns proposals, acceptance flags and committed tokens on the CPU."""
    gen = torch.Generator(device=device).manual_seed(seed)
    p, q = p.to(device), q.to(device)
    x = torch.multinomial(q, n, replacement=True, generator=gen)
    p_1nV, q_1nV = p.expand(1, n, -1), q.expand(1, n, -1)
    rng = torch.Generator(device=device).manual_seed(seed + 1)
    verdict = policy.verify_stage(0, x.unsqueeze(0), q_1nV, p_1nV, rng, context)
    return x.cpu(), verdict.accepted_Bl[0].cpu(), verdict.tokens_if_last_Bl[0].cpu()


def _counts(tokens: torch.Tensor) -> torch.Tensor:
    return torch.bincount(tokens, minlength=V).double()


@pytest.fixture(scope="module", params=list(CASES), ids=list(CASES))
def case(request):
    """10^6 verdicts for the power case, 2 x 10^5 for the edge cases (whose checks are exact or coarse)."""
    p, q = CASES[request.param]
    n = N if request.param == "generic" else N // 5
    x, accepted, committed = draw_verdicts(ExactPolicy(), p, q, n=n, seed=list(CASES).index(request.param))
    return request.param, p, q, x, accepted, committed


def test_nothing_outside_the_target_support(case):
    _, p, q, x, accepted, committed = case
    assert int((p[committed] == 0).sum()) == 0, "committed a token the target gives probability 0"
    assert int((accepted & (p[x] == 0)).sum()) == 0, "accepted a proposal the target gives probability 0"


def test_the_committed_token_follows_p(case):
    name, p, _, _, _, committed = case
    result = chi_square(_counts(committed), p)
    assert result.passes(ALPHA), (name, result)


def test_every_proposal_is_accepted_with_probability_min_1_p_over_q(case):
    name, p, q, x, accepted, _ = case
    a = reference_acceptance(p, q)
    n_x = _counts(x)
    acc_x = _counts(x[accepted])
    sure, never = (a == 1) & (n_x > 0), (a == 0) & (n_x > 0)
    assert torch.equal(acc_x[sure], n_x[sure]), f"{name}: a proposal with p >= q was rejected"
    assert int(acc_x[never].sum()) == 0, f"{name}: a proposal with p = 0 was accepted"
    mid = (a > 0) & (a < 1) & (n_x > 0)
    if not bool(mid.any()):
        return
    pooled = binomial_z(float(acc_x[mid].sum()), n_x[mid], a[mid])
    assert abs(pooled) <= z_bound(ALPHA), f"{name}: accepted {int(acc_x[mid].sum())} of {int(n_x[mid].sum())}, z = {pooled:.2f}"
    z_each = (acc_x[mid] - n_x[mid] * a[mid]) / (n_x[mid] * a[mid] * (1 - a[mid])).sqrt()
    per_token = float((z_each**2).sum())
    assert stats.chi2.sf(per_token, int(mid.sum())) > ALPHA, f"{name}: per-token acceptance z {z_each.tolist()}"


def test_rejected_proposals_are_corrected_from_the_residual(case):
    name, p, q, _, accepted, committed = case
    r = reference_residual(p, q)
    assert torch.allclose(residual_distribution(p.view(1, 1, V), q.view(1, 1, V)).double().flatten(), r, atol=1e-6)
    rejected = committed[~accepted]
    if rejected.numel() == 0:
        assert name == "p equals q"
        return
    result = chi_square(_counts(rejected), r)
    assert result.passes(ALPHA), (name, result)


def test_p_equal_to_q_accepts_every_proposal():
    p = GENERIC_P
    x, accepted, committed = draw_verdicts(ExactPolicy(), p, p, n=100_000, seed=11)
    assert bool(accepted.all()) and torch.equal(committed, x)


def test_residual_distribution_is_normalize_max_p_minus_q():
    """Deterministic, on many random pairs (with zeros, equal rows and disjoint rows)."""
    gen = torch.Generator().manual_seed(3)
    logits_p = torch.randn(64, 16, generator=gen) * 2
    logits_q = torch.randn(64, 16, generator=gen) * 2
    logits_p[:16, 8:] = -torch.inf  # truncated supports
    logits_q[8:24, :4] = -torch.inf
    logits_q[32:40] = logits_p[32:40]  # p == q: nothing left, falls back to p
    logits_q[40:48, :8], logits_p[40:48, 8:] = -torch.inf, -torch.inf  # disjoint
    p, q = logits_p.softmax(-1), logits_q.softmax(-1)
    got = residual_distribution(p.unsqueeze(0), q.unsqueeze(0))[0]
    for i in range(p.shape[0]):
        want = reference_residual(p[i], q[i])
        assert torch.allclose(got[i].double(), want, atol=1e-6), i
        assert bool((got[i][(p[i] <= q[i]) & (p[i] != q[i])] == 0).all()), i
    assert torch.equal(got[32:40], p[32:40])


def test_the_design_sees_a_one_percent_distortion_of_the_acceptance_probability():
    """Power of the tests above in the ``generic`` case, computed (no sampling).

    Pooled acceptance z-test (level ``ALPHA``, two-sided) against ``a' = a ** 0.99`` and ``a' = 0.99 a``
    (1 % distortions of the acceptance probability) and the committed-law chi-square against the
    ``a ** 0.97`` bug: each must have power >= 0.99 with ``N`` draws.
    """
    p, q = GENERIC_P, GENERIC_Q
    a = reference_acceptance(p, q)
    n_x = N * q.double()
    mid = (a > 0) & (a < 1)
    sd = math.sqrt(float((n_x * a * (1 - a))[mid].sum()))
    for name, distorted in (("a ** 0.99", a**0.99), ("0.99 a", 0.99 * a)):
        expected_z = float((n_x * (distorted - a))[mid].sum()) / sd
        power = z_power(expected_z, ALPHA)
        assert power >= 0.99, f"pooled acceptance z-test vs {name}: expected |z| {abs(expected_z):.2f}, power {power:.4f}"
    bug = committed_law(p, q, a**0.97)
    assert torch.allclose(committed_law(p, q, a), p.double(), atol=1e-7)
    power = chi_square_power(p, bug, N, ALPHA)
    assert power >= 0.99, f"committed-law chi-square vs a ** 0.97: power {power:.4f}"


# ---- the bonus stage ----------------------------------------------------------------------------------
def check_bonus_stage(sd, n: int = 50_000) -> None:
    """``SDVAR.accept`` on a fabricated round where every proposal is accepted: the bonus stage follows ``p``."""
    V64, device = sd.target_model.V, sd.target_model.device
    gen = torch.Generator().manual_seed(21)
    p0 = (torch.randn(V64, generator=gen) * 2).softmax(-1)
    p1 = (torch.randn(4, V64, generator=gen) * 2).softmax(-1)
    x0 = torch.multinomial(p0, n, replacement=True, generator=gen).view(n, 1).to(device)
    p0_d, p1_d = p0.to(device), p1.to(device)
    state = sd.prepare(1, 0, g_seed=7, gamma=1)
    proposal = DraftProposal(start=0, tokens=[x0], q_probs=[p0_d.expand(n, 1, V64)], f_hats=[], draft_cache_before=0,
                             draft_passes=1)
    verify = VerifyResult(stages=[0, 1], logits=[], p_probs=[p0_d.expand(n, 1, V64), p1_d.expand(n, 4, V64)])
    acc = sd.accept(state, proposal, verify)
    assert acc.bonus and acc.stage_all_accepted == [True] and len(acc.committed) == 2
    bonus = acc.committed[1].cpu()
    assert tuple(bonus.shape) == (n, 4)
    for pos in range(4):
        result = chi_square(torch.bincount(bonus[:, pos], minlength=V64).double(), p1[pos])
        assert result.passes(ALPHA), (pos, result)


def test_the_bonus_stage_is_a_sample_from_p(sd):
    """Every proposal accepted (``q = p``): the bonus stage's tokens follow ``p`` of that stage (not its argmax).

    ``SDVAR.accept`` on a fabricated round: stage 0 proposed by ``n = 50,000`` samples with ``q = p``
    (all accepted, so the bonus stage 1 is drawn), stage 1's ``p`` fixed per position. Per position a
    chi-square at ``ALPHA`` (power against a greedy bonus stage: that law puts mass 1 on the argmax, so
    the statistic is of order ``n (1 - p_max) / p_max``, far beyond any critical value).
    """
    check_bonus_stage(sd)


# ---- relaxed: LANTERN-style pooling under a budget ------------------------------------------------------
CODEBOOK = torch.randn(V, 3, generator=torch.Generator().manual_seed(8))
RELAXED_P = _dist(0.02, 0.03, 0.04, 0.05, 0.06, 0.2, 0.3, 0.3)
RELAXED_Q = _dist(0.3, 0.2, 0.2, 0.1, 0.1, 0.04, 0.03, 0.03)
BUDGET = 0.105  # not a sum of masses of RELAXED_P (multiples of 0.01): no float ties at the boundary


def reference_pooled_mass(p: torch.Tensor, codebook: torch.Tensor, budget: float, neighbours: int) -> torch.Tensor:
    """For every token ``x``: ``p(x)`` plus the largest proximity-ordered prefix of its nearest neighbours'
    mass (L2 distance of codebook entries, ``neighbours`` entries counting ``x`` itself) that stays ``<= budget``."""
    p = p.double()
    dist = (codebook[:, None, :] - codebook[None, :, :]).pow(2).sum(-1)
    out = torch.empty_like(p)
    for x in range(p.numel()):
        others = [int(j) for j in torch.argsort(dist[x]) if int(j) != x][: neighbours - 1]
        extra = 0.0
        for j in others:
            if extra + float(p[j]) > budget + 1e-12:
                break
            extra += float(p[j])
        out[x] = p[x] + extra
    return out


def reference_committed_mass(p: torch.Tensor, q: torch.Tensor, pooled: torch.Tensor, budget: float) -> torch.Tensor:
    """What ``relaxed`` commits of each token from accepted proposals: ``min(p, q)`` plus the over-proposed
    tokens' excess ``min(q, pooled) - min(q, p)``, scaled down so that the excesses total at most ``budget``."""
    p, q = p.double(), q.double()
    floor = torch.minimum(p, q)
    excess = (torch.minimum(q, pooled) - floor).clamp_min(0)
    total = float(excess.sum())
    return floor + excess * (min(1.0, budget / total) if total > 0 else 1.0)


def _relaxed_law(p: torch.Tensor, q: torch.Tensor, pooled: torch.Tensor, budget: float = 1.0) -> torch.Tensor:
    q = q.double()
    mass = reference_committed_mass(p, q, pooled, budget)
    return committed_law(p, q, torch.where(q > 0, (mass / q.clamp_min(1e-300)).clamp(max=1.0), torch.zeros_like(q)))


def test_relaxed_pooled_mass_matches_an_independent_reference():
    for budget, k in ((0.0, 8), (0.055, 4), (BUDGET, 8), (0.305, 8), (1.0, 3)):
        policy = RelaxedPolicy(budget=budget, neighbours=k)
        context = policy.prepare(CODEBOOK)
        x = torch.arange(V).view(1, V)
        got = policy.pooled_mass(RELAXED_P.expand(1, V, V), x, context)[0].double()
        want = reference_pooled_mass(RELAXED_P, CODEBOOK, budget, k)
        assert torch.allclose(got, want, atol=1e-6), (budget, k, got.tolist(), want.tolist())
        assert bool((got - RELAXED_P.double() <= budget + 1e-6).all())


def test_relaxed_commits_its_documented_law_within_its_budget():
    """``relaxed(budget=0.105)`` with five over-proposed tokens: 10^6 verdicts follow its law (chi-square at
    ``ALPHA``), and that law is within ``budget`` of ``p`` in total variation although the pooled excesses
    alone would total more (so the scaling to the budget is exercised).

    Power against a policy that does not scale its excesses to the budget (each token capped on its own,
    TV 0.17 here) and against one that ignores its budget altogether: ``chi_square_power`` >= 0.99, asserted.
    """
    policy = RelaxedPolicy(budget=BUDGET, neighbours=V)
    pooled = reference_pooled_mass(RELAXED_P, CODEBOOK, BUDGET, V)
    law = _relaxed_law(RELAXED_P, RELAXED_Q, pooled, BUDGET)
    _, _, committed = draw_verdicts(policy, RELAXED_P, RELAXED_Q, seed=31, context=policy.prepare(CODEBOOK))
    result = chi_square(_counts(committed), law)
    assert result.passes(ALPHA), result
    over = RELAXED_Q.double() > RELAXED_P.double()
    gap = (RELAXED_Q.double() - RELAXED_P.double()).clamp_min(0)
    per_token = float(torch.minimum(gap, pooled - RELAXED_P.double())[over].sum())
    assert per_token > BUDGET + 0.05  # the unscaled excesses (0.17) would exceed the budget
    assert total_variation(law, RELAXED_P) == pytest.approx(BUDGET, abs=1e-6)  # (float32 inputs)
    assert total_variation(_counts(committed) / N, RELAXED_P) <= BUDGET + math.sqrt(V / N)
    unscaled = _relaxed_law(RELAXED_P, RELAXED_Q, pooled, budget=1.0)
    assert total_variation(unscaled, RELAXED_P) == pytest.approx(per_token, abs=1e-6)
    unbounded = _relaxed_law(RELAXED_P, RELAXED_Q, reference_pooled_mass(RELAXED_P, CODEBOOK, 1.0, V))
    for other in (unscaled, unbounded):
        assert chi_square_power(law, other, N, ALPHA) >= 0.99


def test_relaxed_committed_law_is_within_the_budget_of_p_when_one_token_is_over_proposed():
    """The budget as a bound on the committed law: with one over-proposed token ``y`` (``q(y) > p(y)``,
    ``q <= p`` elsewhere), ``TV(committed, p) <= budget`` — checked analytically and on 10^6 verdicts
    (the empirical TV may exceed the true one by sampling noise: margin ``sqrt(V / n) = 0.003``).
    Ignoring the budget would give ``min(q(y) - p(y), all neighbours' mass) = 0.3 > budget`` here.
    """
    p = RELAXED_P
    y = 0
    q = p.double() * 0.6
    q[y] += 1 - float(q.sum())
    q = q.float()
    assert int((q.double() > p.double()).sum()) == 1 and float(q[y] - p[y]) > 0.3
    policy = RelaxedPolicy(budget=BUDGET, neighbours=V)
    law = _relaxed_law(p, q, reference_pooled_mass(p, CODEBOOK, BUDGET, V), BUDGET)
    assert total_variation(law, p) <= BUDGET + 1e-9
    unbounded = _relaxed_law(p, q, reference_pooled_mass(p, CODEBOOK, 1.0, V))
    assert total_variation(unbounded, p) > BUDGET + 0.1
    _, _, committed = draw_verdicts(policy, p, q, seed=41, context=policy.prepare(CODEBOOK))
    empirical = _counts(committed) / N
    assert total_variation(empirical, p) <= BUDGET + math.sqrt(V / N)
    assert chi_square(_counts(committed), law).passes(ALPHA)


def test_relaxed_with_budget_zero_is_exact_draw_for_draw():
    p, q = CASES["truncated supports"]
    exact = draw_verdicts(ExactPolicy(), p, q, seed=51)
    relaxed_policy = RelaxedPolicy(budget=0.0)
    relaxed = draw_verdicts(relaxed_policy, p, q, seed=51, context=relaxed_policy.prepare(CODEBOOK))
    for a, b in zip(exact, relaxed):
        assert torch.equal(a, b)


def test_relaxed_with_budget_zero_decodes_like_exact(sd):
    for seed in range(3):
        a = sd.generate_parallel(2, [1, 5], g_seed=seed, gamma=2, policy="exact")
        b = sd.generate_parallel(2, [1, 5], g_seed=seed, gamma=2, policy="relaxed", budget=0.0)
        assert all(torch.equal(x, y) for x, y in zip(a.tokens_per_stage, b.tokens_per_stage))
