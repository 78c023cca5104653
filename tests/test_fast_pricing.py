"""The fast path prices an adaptive gamma rule with its own programs (``FastRunFactory.price_rule``).

``exact_adaptive`` (``AdaptiveGamma()``, costs ``RunCost``) decides on the fast path with the measured times
of the programs it would run (``DeviceRound.price``): a target step of every stage and every drafting round
it may choose. On the CPU (graph-less fast path, the host clock) these tests pin what a price is made of, that
the call decides with the priced rule (and runs the target's own program when the priced rule never drafts),
that prices are measured once per pair and batch and kept (so later calls draft the same way for a seed),
and which rules and calls keep their own prices.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from sdvar_lib import SDVAR, SamplingConfig
from sdvar_lib.fast import round as fast_round
from sdvar_lib.fast.config import FastConfig
from sdvar_lib.fast.factory import FastRunFactory
from sdvar_lib.fast.round import DeviceRound
from sdvar_lib.sdvar.acceptance import ExactPolicy
from sdvar_lib.sdvar.gamma import AdaptiveGamma, FixedGamma, ProgramCost, RunCost, UniformCost, plan_never_drafts
from sdvar_lib.sdvar.handoff import baseline

NO_GRAPHS = FastConfig(use_cuda_graphs=False)
SAMPLING = SamplingConfig(cfg=1.5, top_k=0)


@pytest.fixture(scope="module")
def pair(tiny_pair):
    _, draft, target = tiny_pair
    return draft, target


def _fast(pair, config=NO_GRAPHS) -> SDVAR:
    return SDVAR(*pair, run_factory=FastRunFactory(config))


def _record(out) -> dict:
    stats = out.stats.to_dict()
    stats.pop("wall_time_s"), stats.pop("one_off_s")
    return dict(tokens=[t.tolist() for t in out.tokens_per_stage], stats=stats)


def _one_ms_each(monkeypatch) -> list:
    """Every timed program 'takes' 1 ms; returns the list of programs timed."""
    timed = []

    def one_ms(fn, device, repeats, warmup=1):
        fn()
        timed.append(fn)
        return 1.0

    monkeypatch.setattr(fast_round, "median_ms", one_ms)
    return timed


def test_a_round_costs_its_draft_program_its_verify_and_acceptance_and_the_bonus_stage(pair, monkeypatch):
    """Every program takes 1 ms: a step costs 1, a round 2 (draft program; verify and acceptance with the read of r)
    plus 1 where a bonus stage can follow it. With a loss bound these rounds fit (10 of the call's steps), every
    round of the rule is timed, each program once."""
    timed = _one_ms_each(monkeypatch)
    sd = _fast(pair)
    S = sd.num_stages
    rule = sd.run_factory.price_rule(AdaptiveGamma(max_gamma=3, max_loss=10.0), *pair, 2, SAMPLING, ExactPolicy())
    costs = rule.costs
    assert isinstance(costs, ProgramCost) and costs.covers_max_loss is None
    rule.check_for(S)  # every round the rule may take is priced
    assert costs.step_times == (1.0,) * S and costs.catch_up_times == (1.0,) * S
    assert set(costs.round_times) == {(c, d, g) for c in range(S) for d in {max(c - 1, 0), c}
                                      for g in range(1, min(3, S - c) + 1)}
    for (c, d, g), ms in costs.round_times.items():
        assert ms == 2.0 + (c + g < S), (c, d, g)
    assert len(timed) == S + len(costs.round_times) + len({(c, g) for c, _, g in costs.round_times}) + (S - 1)


def test_pricing_stops_at_gamma_1_when_no_round_fits_the_loss_bound(pair, monkeypatch):
    """Rejected, a gamma-1 round costs 1-2 ms more than its step, more than 1.5 x the budget (0.015 of 4 steps):
    no round can be taken, so only the steps and the gamma-1 rounds are timed, and the table says whom it serves.
    The rule decides as it would with every round timed (it never drafts)."""
    timed = _one_ms_each(monkeypatch)
    sd = _fast(pair)
    S = sd.num_stages
    rule = sd.run_factory.price_rule(AdaptiveGamma(), *pair, 2, SAMPLING, ExactPolicy())
    costs = rule.costs
    assert rule.max_loss == RunCost().max_loss == costs.covers_max_loss
    assert set(costs.round_times) == {(c, c, 1) for c in range(S)}
    assert len(timed) == S + S + S + (S - 1)  # steps; per gamma-1 round its draft, verify-and-accept, bonus
    rule.check_for(S)
    assert costs.round(0, 0, 3, S) == costs.round(0, 0, 1, S)  # the lower bound of every round from stage 0
    assert plan_never_drafts(rule, S)
    for max_loss in (None, 0.02):
        with pytest.raises(ValueError, match="only the gamma-1 rounds"):
            replace(rule, max_loss=max_loss).check_for(S)
    full = sd.run_factory.price_rule(AdaptiveGamma(costs=RunCost(max_loss=None)), *pair, 2, SAMPLING, ExactPolicy())
    assert full.costs.covers_max_loss is None and len(full.costs.round_times) > S


def _priced_by(costs: ProgramCost):
    def price(self, sampling, policy, max_gamma, max_loss=None, repeats=3):
        return costs
    return price


def _costs(S: int, round_ms: float) -> ProgramCost:
    rounds = {(c, d, g): round_ms for c in range(S) for d in {max(c - 1, 0), c} for g in range(1, S - c + 1)}
    return ProgramCost(step_times=(1.0,) * S, round_times=rounds, catch_up_times=(0.1,) * S)


@pytest.mark.parametrize("round_ms", [0.5, 1.05, 1.1, 2.9, 3.0, 5.0])
@pytest.mark.parametrize("max_loss", [None, 10.0])
def test_the_call_decides_with_the_priced_rule(pair, monkeypatch, round_ms, max_loss):
    """A fast call with an adaptive rule makes the rounds the priced rule plans - the measured prices and, unless the
    rule has its own, RunCost's loss bound: the eager loop with that priced rule given makes the same call, draw for
    draw."""
    S = pair[1].num_stages
    costs = _costs(S, round_ms)
    monkeypatch.setattr(DeviceRound, "price", _priced_by(costs))
    fast = _fast(pair)
    rule = AdaptiveGamma(max_loss=max_loss)
    priced = fast.run_factory.price_rule(rule, *pair, 2, SAMPLING, ExactPolicy())
    assert priced.costs is costs and priced.max_loss == (RunCost().max_loss if max_loss is None else max_loss)
    eager = SDVAR(*pair)
    for seed in (0, 1):
        got = fast.generate_parallel(2, None, seed, SAMPLING, gamma=rule)
        want = eager.generate_parallel(2, None, seed, SAMPLING, gamma=priced)
        assert _record(got) == _record(want), (round_ms, seed)
    # the best round from stage 0 (gamma 3 on 4 stages, prior 0.8) saves 1 + 0.8 + 0.64 + 0.512 = 2.952 steps; a
    # rejected one costs round_ms - 1 more than step 0, within the bound only if <= max_loss * 4 steps
    bound = priced.max_loss * S
    drafted = got.stats.draft_passes > 0
    assert drafted == (round_ms < 2.952 and round_ms - 1.0 <= bound), f"rounds at {round_ms} ms: drafted {drafted}"


def test_a_priced_rule_that_never_drafts_runs_the_target_alone(pair, monkeypatch):
    """The plan is made with the priced rule: a rule that never drafts at these prices is the target-alone call
    (no draft run, no round), the target's own program, whatever the unpriced rule would have done."""
    S = pair[1].num_stages
    monkeypatch.setattr(DeviceRound, "price", _priced_by(_costs(S, 50.0)))
    sd = _fast(pair)
    got = sd.generate_parallel(2, [1, 7], 3, SAMPLING, gamma="adaptive")
    assert [r.model for r in sd.run_factory.call_runs()] == [pair[1]], "only the target ran"
    assert got.stats.draft_passes == 0 and got.stats.target_passes == S
    ref = baseline(SDVAR(*pair), 2, [1, 7], 3, SAMPLING)
    assert [t.tolist() for t in got.tokens_per_stage] == [t.tolist() for t in ref.tokens_per_stage]


def test_prices_are_measured_once_per_pair_batch_and_sampling_then_kept(pair, monkeypatch):
    calls = []
    real = DeviceRound.price

    def counting(self, sampling, policy, max_gamma, max_loss=None, repeats=3):
        calls.append((self.batch_size, sampling.top_k))
        return real(self, sampling, policy, max_gamma, max_loss, repeats)

    monkeypatch.setattr(DeviceRound, "price", counting)
    sd = _fast(pair)
    first = sd.run_factory.price_rule(AdaptiveGamma(), *pair, 2, SAMPLING, ExactPolicy())
    for seed in (0, 1):
        sd.generate_parallel(2, None, seed, SAMPLING, gamma="adaptive")
    again = sd.run_factory.price_rule(AdaptiveGamma(), *pair, 2, SAMPLING, ExactPolicy())
    assert calls == [(2, 0)] and again.costs is first.costs
    sd.generate_parallel(3, None, 0, SAMPLING, gamma="adaptive")
    sd.generate_parallel(2, None, 0, SamplingConfig(cfg=1.5, top_k=5), gamma="adaptive")
    assert calls == [(2, 0), (3, 0), (2, 5)]
    assert sd.run_factory.one_off_s >= sd.run_factory._pricing_s > 0.0
    assert all(t > 0.0 for t in first.costs.step_times + tuple(first.costs.round_times.values()))


def test_rules_and_calls_that_keep_their_own_prices(pair):
    sd = _fast(pair)
    factory = sd.run_factory
    for rule in (FixedGamma(2), AdaptiveGamma(costs=UniformCost()), AdaptiveGamma(costs=_costs(4, 1.0))):
        assert factory.price_rule(rule, *pair, 2, SAMPLING, ExactPolicy()) is rule

    class Custom(ExactPolicy):  # no device form: its rounds run eagerly, nothing to price
        pass

    rule = AdaptiveGamma()
    assert factory.price_rule(rule, *pair, 2, SAMPLING, Custom()).costs == rule.costs
    eager_rounds = _fast(pair, FastConfig(use_cuda_graphs=False, device_rounds=False)).run_factory
    priced = eager_rounds.price_rule(rule, *pair, 2, SAMPLING, ExactPolicy())
    assert isinstance(priced.costs, RunCost), "device_rounds=False: the eager round's prices (the fallback)"
    assert factory.price_rule(rule, pair[1], pair[1], 2, SAMPLING, ExactPolicy()) is rule, "one model as both"


def test_the_eager_loop_prices_with_the_fallback(pair):
    """Without a pricing run factory the default rule decides as UniformCost() does (the stored evaluation's rows)."""
    eager = SDVAR(*pair)
    for seed in (0, 1):
        a = eager.generate_parallel(2, None, seed, SAMPLING, gamma="adaptive")
        b = eager.generate_parallel(2, None, seed, SAMPLING, gamma=AdaptiveGamma(costs=UniformCost()))
        assert _record(a) == _record(b)
        assert torch.equal(a.images_B3HW, b.images_B3HW)


def test_released_runs_take_their_prices_with_them(pair):
    """Prices hold their device round (and its buffers): releasing the runs drops them, and the next call measures
    again on the new runs."""
    sd = _fast(pair)
    factory = sd.run_factory
    first = factory.price_rule(AdaptiveGamma(), *pair, 2, SAMPLING, ExactPolicy()).costs
    assert len(factory._prices) == 1
    factory.release()
    assert factory._prices == {} and factory._rounds == {}
    again = factory.price_rule(AdaptiveGamma(), *pair, 2, SAMPLING, ExactPolicy()).costs
    assert again is not first and len(factory._prices) == 1


def test_the_bench_prices_exact_adaptive_before_it_times_it(tiny_pair, monkeypatch):
    """The decision-rule table times exact_adaptive after the fast path priced it (not inside a timed call), and says
    how the priced plan runs."""
    from sdvar_lib.bench import BenchConfig, PairContext, Scenario, host_call_ms, median_host_ms, sweep, time_decision_rules
    from sdvar_lib.models.presets import ModelPair

    vae, draft, target = tiny_pair
    ctx = PairContext.for_pair("tiny", ModelPair(vae, draft, target, "tiny"), FastRunFactory(NO_GRAPHS))
    timing, priced = [], []
    real_price, real_paired = DeviceRound.price, sweep.time_paired

    def price(self, *args, **kwargs):
        priced.append(bool(timing))
        return real_price(self, *args, **kwargs)

    def paired(*args, **kwargs):
        timing.append(1)
        try:
            return real_paired(*args, **kwargs)
        finally:
            timing.pop()

    monkeypatch.setattr(DeviceRound, "price", price)
    monkeypatch.setattr(sweep, "time_paired", paired)
    config = BenchConfig(repeats=1, warmup=0, calibration_calls=1, calibration_replays=1, top_k=0, top_p=0.0, out="unused")
    rows = time_decision_rules(ctx, 1, [Scenario("exact")], config, 0.0, host_call_ms, median_host_ms)
    assert priced == [False], "priced once, before the timed calls"
    adaptive = next(r for r in rows if r.method == "exact_adaptive")
    assert adaptive.dispatch in ("target alone", "sdvar")
    assert (adaptive.dispatch == "target alone") == (adaptive.draft_passes == 0)


def test_pricing_is_one_off_time_counted_once(pair, monkeypatch):
    """The seconds a first call spends pricing count as one-off time, once: the captures made while pricing are the
    runs' one-off seconds already, only the rest (timing the programs) is added."""
    import time

    def price(self, sampling, policy, max_gamma, max_loss=None, repeats=3):
        time.sleep(0.2)  # 'capturing' for 0.2 s ...
        self.target.counters.capture_time_s += 0.2  # ... which the run counts, as a capture does
        return _costs(self.num_stages, 50.0)

    monkeypatch.setattr(DeviceRound, "price", price)
    factory = _fast(pair).run_factory
    factory.run_for(pair[0], 2), factory.run_for(pair[1], 2)
    before = factory.one_off_s
    factory.price_rule(AdaptiveGamma(), *pair, 2, SAMPLING, ExactPolicy())
    assert 0.2 <= factory.one_off_s - before < 0.3


def test_a_priced_rule_is_handed_out_and_planned_once(pair, monkeypatch):
    """Calls with the same rule and prices get one priced rule object, and the decoder plans it once (planning a
    priced rule at every call cost 0.2-0.4 ms of host time, about 1 % of a batch-1 call on an H200)."""
    from sdvar_lib.sdvar import decoder

    planned = []
    real = decoder.plan_never_drafts

    def counting(rule, num_stages):
        planned.append(isinstance(rule.costs, ProgramCost) if isinstance(rule, AdaptiveGamma) else None)
        return real(rule, num_stages)

    monkeypatch.setattr(decoder, "plan_never_drafts", counting)
    sd = _fast(pair)
    first = sd.run_factory.price_rule(AdaptiveGamma(), *pair, 2, SAMPLING, ExactPolicy())
    assert sd.run_factory.price_rule(AdaptiveGamma(), *pair, 2, SAMPLING, ExactPolicy()) is first
    assert sd.run_factory.price_rule(AdaptiveGamma(max_gamma=2), *pair, 2, SAMPLING, ExactPolicy()) is not first
    for seed in range(3):
        sd.generate_parallel(2, None, seed, SAMPLING, gamma="adaptive")
    assert planned.count(True) == 1, planned


def test_pricing_reserves_the_whole_tables_buffers_first(pair, monkeypatch):
    """The full table is built in two steps (gamma-1 rounds, then the rest): the buffers of the whole table are
    reserved before the first program, so the second step grows nothing (growing would drop the programs built and
    timed in the first)."""
    versions = []
    real = DeviceRound.precapture

    def recording(self, sampling, policy, keys):
        versions.append((self.target.buffers_version, self.draft.buffers_version))
        out = real(self, sampling, policy, keys)
        versions.append((self.target.buffers_version, self.draft.buffers_version))
        return out

    monkeypatch.setattr(DeviceRound, "precapture", recording)
    factory = _fast(pair).run_factory
    rule = factory.price_rule(AdaptiveGamma(costs=RunCost(max_loss=None)), *pair, 2, SAMPLING, ExactPolicy())
    assert rule.costs.covers_max_loss is None and len(versions) == 4  # two steps
    assert len(set(versions)) == 1, versions
