"""The adaptive gamma rule pays a round's overhead (a survivor of scripts/mutate.py: adaptive-ignores-round-overhead).

A drafting round costs the draft's passes, the target's verify chunk and ``costs.round_overhead``
(verification and acceptance work a plain target step does not do). Every expected saving drops by
exactly the overhead, and an overhead larger than the best saving makes the rule fall back to target steps.
"""

from __future__ import annotations

import pytest

from sdvar_lib.sdvar.gamma import AdaptiveGamma, RoundContext, RoundHistory, TableCost, UniformCost

S = 10
CTX = RoundContext(c=0, num_stages=S, draft_stages_held=0, history=RoundHistory())
A = [0.8] * S
SAVINGS = {1: 0.3, 2: 0.44, 3: 0.452, 4: 0.3616}  # sum_{i<=g} 0.8^i - (1 + 0.5 g): prior 0.8, draft 0.5, no overhead


@pytest.mark.parametrize("overhead", [0.0, 0.1, 0.4])
def test_every_expected_saving_pays_the_overhead(overhead):
    rule = AdaptiveGamma(prior_acceptance=0.8, costs=UniformCost(draft_cost=0.5, round_overhead=overhead))
    for g, saving in SAVINGS.items():
        assert rule.expected_saving(g, CTX, A) == pytest.approx(saving - overhead), g


def test_an_overhead_above_the_best_saving_means_target_steps():
    assert AdaptiveGamma(prior_acceptance=0.8, costs=UniformCost(0.5, round_overhead=0.44)).next_gamma(CTX) == 3
    assert AdaptiveGamma(prior_acceptance=0.8, costs=UniformCost(0.5, round_overhead=0.46)).next_gamma(CTX) == 0


def test_table_costs_pay_the_overhead_too():
    times = {(s, n): float(n) for s in range(S) for n in range(1, S + 1)}
    free = AdaptiveGamma(prior_acceptance=0.9, costs=TableCost(times, {k: 0.1 * v for k, v in times.items()}))
    paid = AdaptiveGamma(prior_acceptance=0.9, costs=TableCost(times, {k: 0.1 * v for k, v in times.items()},
                                                               round_overhead=0.25))
    for g in range(1, 5):
        assert paid.expected_saving(g, CTX, A) == pytest.approx(free.expected_saving(g, CTX, A) - 0.25)
