"""Measured program costs (``ProgramCost``) and the costs of whatever decodes a call (``RunCost``).

The fast path prices an adaptive rule with the times of its own programs: a target step per stage and a
whole drafting round per ``(c, d, g)``. These tests pin how the rule reads such a table: a round's price is
its measured time (no pass arithmetic on top), a draft lagging further than the table pays the missing draft
steps, a committed stage saves its measured step, and the rule drafts exactly when a round is cheaper than
the steps it is expected to save. ``RunCost`` prices with its fallback wherever nothing measured it (the
eager loop), so the eager rule's decisions do not change.
"""

from __future__ import annotations

import pytest

from sdvar_lib.sdvar.gamma import (
    AdaptiveGamma,
    ProgramCost,
    RoundContext,
    RoundHistory,
    RunCost,
    TableCost,
    UniformCost,
    make_gamma_rule,
    plan_never_drafts,
)

S = 4


def _table(step=1.0, round_of=lambda c, d, g: 0.5 + 0.25 * g, draft=0.2) -> ProgramCost:
    rounds = {(c, d, g): round_of(c, d, g) for c in range(S) for d in {max(c - 1, 0), c} for g in range(1, S - c + 1)}
    return ProgramCost(step_times=(step,) * S, round_times=rounds, catch_up_times=(draft,) * S)


def _ctx(c=0, d=0) -> RoundContext:
    return RoundContext(c=c, num_stages=S, draft_stages_held=d, history=RoundHistory())


def test_a_round_costs_its_measured_time_and_a_stage_saves_its_step():
    costs = _table(step=2.0)
    rule = AdaptiveGamma(max_gamma=2, prior_acceptance=1.0, costs=costs)
    # g = 2 from stage 0: stages 0, 1 and the bonus stage 2 committed (each saves a 2.0 step); the round costs 1.0
    assert rule.expected_saving(2, _ctx(), [1.0] * S) == pytest.approx(3 * 2.0 - 1.0)
    # with acceptance 0.5: stage 0 always, stage 1 with 0.5, stage 2 with 0.25
    assert rule.expected_saving(2, _ctx(), [0.5] * S) == pytest.approx(2.0 * (1 + 0.5 + 0.25) - 1.0)


def test_a_draft_lagging_further_than_the_table_pays_its_missing_steps():
    costs = _table(round_of=lambda c, d, g: 10.0 * c + d + g, draft=0.125)
    assert costs.round(3, 3, 1, S) == 10.0 * 3 + 3 + 1
    assert costs.round(3, 2, 1, S) == 10.0 * 3 + 2 + 1
    assert costs.round(3, 0, 1, S) == pytest.approx(costs.round(3, 2, 1, S) + 2 * 0.125)  # stages 0 and 1 caught up


def test_the_rule_drafts_exactly_when_a_round_is_cheaper_than_the_steps_it_saves():
    cheap = AdaptiveGamma(max_gamma=1, prior_acceptance=1.0, costs=_table(round_of=lambda c, d, g: 1.9))
    dear = AdaptiveGamma(max_gamma=1, prior_acceptance=1.0, costs=_table(round_of=lambda c, d, g: 2.1))
    assert cheap.next_gamma(_ctx()) == 1  # saves stages 0 and 1 (2.0) for 1.9
    assert dear.next_gamma(_ctx()) == 0
    assert not plan_never_drafts(cheap, S)
    assert plan_never_drafts(dear, S)


def test_run_cost_prices_with_its_fallback():
    fallback = UniformCost(draft_cost=0.3, round_overhead=0.1)
    run = RunCost(fallback)
    ctx = _ctx()
    for g in range(1, 4):
        a = [0.7] * S
        assert (AdaptiveGamma(costs=run).expected_saving(g, ctx, a)
                == AdaptiveGamma(costs=fallback).expected_saving(g, ctx, a))
    assert run.round_overhead == 0.1
    assert isinstance(make_gamma_rule("adaptive").costs, RunCost)
    assert make_gamma_rule("adaptive").costs.fallback == UniformCost()


def test_check_for_refuses_a_table_that_misses_a_round():
    costs = _table()
    rounds = dict(costs.round_times)
    del rounds[(1, 1, 2)]
    partial = ProgramCost(step_times=costs.step_times, round_times=rounds, catch_up_times=costs.catch_up_times)
    AdaptiveGamma(max_gamma=1, costs=partial).check_for(S)  # gamma 2 is never priced
    with pytest.raises(ValueError, match=r"round \(1, 1, 2\)"):
        AdaptiveGamma(max_gamma=2, costs=partial).check_for(S)
    with pytest.raises(ValueError, match="target step 4"):
        AdaptiveGamma(max_gamma=1, costs=costs).check_for(S + 1)


@pytest.mark.parametrize("kwargs,error,match", [
    (dict(step_times=[1.0, -1.0]), ValueError, "step_times"),
    (dict(step_times="12"), TypeError, "step_times"),
    (dict(catch_up_times=()), ValueError, "catch_up_times"),
    (dict(round_times={(0, 1, 1): 1.0}), ValueError, "draft cannot hold more stages"),
    (dict(round_times={(0, 0): 1.0}), TypeError, "three ints"),
    (dict(round_times={(0, 0, 0): 1.0}), ValueError, "gamma"),
    (dict(round_times=[1.0]), TypeError, "round_times"),
])
def test_program_cost_refuses_bad_tables(kwargs, error, match):
    args = dict(step_times=(1.0,) * S, round_times={(0, 0, 1): 1.0}, catch_up_times=(0.2,) * S) | kwargs
    with pytest.raises(error, match=match):
        ProgramCost(**args)


def test_program_cost_prices_steps_and_rounds_only():
    costs = _table()
    with pytest.raises(ValueError, match="not target chunks"):
        costs.target(0, 2)
    with pytest.raises(ValueError, match="not draft chunks"):
        costs.draft(0, 2)
    with pytest.raises(ValueError, match="no measured round"):
        costs.round(0, 0, 9, S)


def test_run_cost_refuses_a_run_cost_fallback_and_a_non_model():
    with pytest.raises(TypeError, match="fallback"):
        RunCost(RunCost())
    with pytest.raises(TypeError, match="CostModel"):
        RunCost("uniform")
    RunCost(TableCost({(0, 1): 1.0}, {(0, 1): 0.5}))


def test_the_loss_bound_keeps_rounds_whose_rejection_costs_more_out():
    """A rejected round from stage 0 costs round - step(0) = 1.9 - 1 = 0.9 beyond the target: with 4 steps of 1, a
    bound of 0.25 (1.0 in all) allows it, 0.2 (0.8) does not, and no bound allows whatever saves on average."""
    costs = _table(round_of=lambda c, d, g: 1.9)
    rule = AdaptiveGamma(max_gamma=1, prior_acceptance=1.0, costs=costs)
    assert rule.next_gamma(_ctx()) == 1
    assert AdaptiveGamma(max_gamma=1, prior_acceptance=1.0, costs=costs, max_loss=0.25).next_gamma(_ctx()) == 1
    assert AdaptiveGamma(max_gamma=1, prior_acceptance=1.0, costs=costs, max_loss=0.2).next_gamma(_ctx()) == 0
    assert plan_never_drafts(AdaptiveGamma(max_gamma=1, prior_acceptance=1.0, costs=costs, max_loss=0.2), S)


def test_the_loss_bound_counts_what_the_call_lost_and_gained_so_far():
    """Rounds so far: a rejected round from stage 0 (commits stage 0: lost 1.9 - 1 = 0.9); then from stage 1 the
    budget 0.25 * 4 - 0.9 = 0.1 allows no rejection costing 0.9. After an accepted round (gamma 1 from stage 0 with
    its bonus: stages 0 and 1 for 1.9, a gain of 0.1) the budget is 1.1 and the round is taken."""
    costs = _table(round_of=lambda c, d, g: 1.9)
    rule = AdaptiveGamma(max_gamma=1, prior_acceptance=1.0, costs=costs, max_loss=0.25)
    rejected = RoundHistory().add(1, 0, [(0, False)])
    accepted = RoundHistory().add(1, 1, [(0, True)])
    assert rule.priced_loss(RoundContext(1, S, 1, rejected)) == pytest.approx(0.9)
    assert rule.priced_loss(RoundContext(2, S, 1, accepted)) == pytest.approx(-0.1)
    assert rule.loss_budget(RoundContext(1, S, 1, rejected)) == pytest.approx(0.1)
    assert rule.next_gamma(RoundContext(1, S, 1, rejected)) == 0
    assert rule.next_gamma(RoundContext(2, S, 1, accepted)) == 1
    steps = RoundHistory().add(0, 0).add(0, 0)
    assert rule.priced_loss(RoundContext(2, S, 0, steps)) == 0.0  # target steps cost nothing extra


def test_max_loss_is_checked_and_described():
    with pytest.raises(ValueError, match="max_loss"):
        AdaptiveGamma(max_loss=-0.1)
    with pytest.raises(TypeError, match="max_loss"):
        AdaptiveGamma(max_loss="1%")
    with pytest.raises(ValueError, match="max_loss"):
        RunCost(max_loss=-1.0)
    assert "max_loss=0.015" in AdaptiveGamma(max_loss=0.015).describe()
    assert "max_loss" not in AdaptiveGamma().describe()
