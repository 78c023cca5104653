"""Gamma rules: fixed, schedule and the cost-aware adaptive rule."""

from __future__ import annotations

import pytest

from sdvar_lib.sdvar.gamma import (
    AdaptiveGamma,
    FixedGamma,
    GammaSchedule,
    RoundContext,
    RoundHistory,
    TableCost,
    UniformCost,
    make_gamma_rule,
)

S = 10


EMPTY = RoundHistory()


def ctx(c: int = 0, d: int | None = None, history: RoundHistory = EMPTY) -> RoundContext:
    return RoundContext(c=c, num_stages=S, draft_stages_held=c if d is None else d, history=history)


def test_fixed_and_schedule():
    assert FixedGamma(3).next_gamma(ctx()) == 3
    rule = GammaSchedule((0, 2, 1))
    h = RoundHistory()
    got = []
    for _ in range(5):
        g = rule.next_gamma(ctx(history=h))
        got.append(g)
        h = h.add(g, 0)
    assert got == [0, 2, 1, 1, 1]
    assert isinstance(make_gamma_rule("adaptive"), AdaptiveGamma)
    assert make_gamma_rule(2) == FixedGamma(2)


def test_adaptive_uniform_cost_matches_hand_computation():
    # a = 0.8, draft 0.5: savings g=1: 1.8-1.5=0.3, g=2: 2.44-2=0.44, g=3: 2.952-2.5=0.452, g=4: 3.3616-3=0.36
    rule = AdaptiveGamma(prior_acceptance=0.8, costs=UniformCost(draft_cost=0.5))
    assert rule.next_gamma(ctx()) == 3
    assert rule.expected_saving(1, ctx(), [0.8] * S) == pytest.approx(0.3)
    assert AdaptiveGamma(prior_acceptance=0.1).next_gamma(ctx()) == 0


def test_adaptive_backs_off_after_rejections():
    rule = AdaptiveGamma(prior_acceptance=0.8)
    h = RoundHistory()
    gammas = []
    c = 0
    for _ in range(4):
        g = rule.next_gamma(ctx(c=c, history=h))
        gammas.append(g)
        if g == 0:
            break
        h = h.add(g, 0, [(c, False)])
        c += 1
    assert gammas[0] > 0 and gammas[-1] == 0
    assert gammas == sorted(gammas, reverse=True)


def test_adaptive_declines_when_verification_is_compute_bound():
    # target chunk cost proportional to tokens (large batch): verifying g stages costs as much as g steps
    tokens = [pn * pn for pn in (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)]
    target = {(s, n): float(sum(tokens[s : s + n])) for s in range(S) for n in range(1, S - s + 1)}
    draft = {k: 0.3 * v for k, v in target.items()}
    rule = AdaptiveGamma(prior_acceptance=1.0, costs=TableCost(target, draft))
    assert all(rule.next_gamma(ctx(c=c)) == 0 for c in range(S))


def test_adaptive_pays_for_the_draft_catching_up():
    costs = UniformCost(draft_cost=0.5)
    rule = AdaptiveGamma(prior_acceptance=0.7, costs=costs)
    a = [0.7] * S
    assert rule.expected_saving(2, ctx(c=5, d=5), a) == pytest.approx(rule.expected_saving(2, ctx(c=5, d=2), a))
    lagging = TableCost({(s, n): 1.0 for s in range(S) for n in range(1, S - s + 1)},
                        {(s, n): 0.2 * n for s in range(S) for n in range(1, S - s + 1)})
    rule = AdaptiveGamma(prior_acceptance=0.7, costs=lagging)
    assert rule.expected_saving(2, ctx(c=5, d=1), a) < rule.expected_saving(2, ctx(c=5, d=5), a)


def test_per_stage_priors():
    rule = AdaptiveGamma(prior_acceptance=(1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0))
    assert rule.next_gamma(ctx(c=0)) >= 2
    assert rule.next_gamma(ctx(c=4)) == 0


@pytest.mark.parametrize(("kwargs", "exc", "pattern"), [
    (dict(max_gamma=0), ValueError, "max_gamma must be an int >= 1"),
    (dict(prior_acceptance=1.5), ValueError, r"prior_acceptance .* must be a finite number in \[0, 1\]"),
    (dict(prior_acceptance=[0.5]), TypeError, "tuple of floats"),
    (dict(prior_weight=0), ValueError, "prior_weight must be a finite number > 0"),
    (dict(costs="fast"), TypeError, "costs must be a CostModel"),
])
def test_adaptive_rejects_bad_config(kwargs, exc, pattern):
    with pytest.raises(exc, match=pattern):
        AdaptiveGamma(**kwargs)


def test_table_cost_names_missing_chunk():
    with pytest.raises(ValueError, match="no measured target time for a chunk of 2 stages from stage 3"):
        TableCost({}, {}).target(3, 2)
