"""SDVAR rounds as device programs (``sdvar_lib.fast.round``), on the CPU: the same code the CUDA graphs hold.

The fast path's graph-less mode (``FastConfig(use_cuda_graphs=False)``) runs the very programs a GPU
captures, eagerly. Three kinds of checks:

1. **Draw for draw.** A device round draws the eager round's random numbers in the eager round's order,
   so on the CPU (PyTorch's sampler, float32) a whole call with device rounds equals the same call with
   eager rounds (``FastConfig(device_rounds=False)``, i.e. ``SDVAR.run_round`` on the same fast runs) bit
   for bit: tokens, ``f_hat``, images, every statistic and every pass — for every policy (``exact``,
   ``top1_match``, ``relaxed``, the benchmark's acceptance scenarios), fixed gammas, schedules with
   target steps and the adaptive rule, with a draft that accepts little and one that accepts whole
   stages (bonus stages). The same equality holds when every program is warmed up once when it is built
   (as a capture during a call does, on the buffers as they are then) and when every program runs twice.
2. **In law, per stage.** The device verdict of ``exact`` (:class:`~sdvar_lib.fast.acceptance.ExactDevice`,
   with its draws made as a round makes them) on one stage of ``10**6`` proposals ``x ~ q``: committed
   tokens follow ``p`` (chi-square), every proposal is accepted with probability ``min(1, p/q)``, the
   corrections follow ``normalize(max(p - q, 0))`` — the cases and reference of ``tests/test_exactness.py``.
3. **In law, end to end.** Whole device-round calls on the micro pair of ``tests/test_lossless.py`` (close
   draft: whole stages accepted and bonus stages drawn often) pass its lossless criterion.

Planted bugs these tests caught (each planted in ``sdvar_lib/fast``, seen failing, reverted): the
acceptance test with ``u ** 0.8`` (caught by 1 and 2), the correction drawn from ``p`` instead of the
residual (1, 2, 3), a greedy bonus stage (1, 3), the committed tokens' ``where`` inverted (1), accepted
tokens counted for stages after ``r`` (1), the corrected stage's ``f_hat`` not written (1), accepted
tokens accumulated with ``+=``, the committed tokens written over the proposals (programs that are wrong when
they run twice: the run-twice test of 1).
"""

from __future__ import annotations

import copy

import pytest
import torch

from sdvar_lib import SDVAR, SamplingConfig
from sdvar_lib.bench.scenarios import ScenarioPolicy
from sdvar_lib.fast.acceptance import ExactDevice, device_policy
from sdvar_lib.fast.config import FastConfig
from sdvar_lib.fast.factory import FastRunFactory
from sdvar_lib.fast.round import DeviceRound, round_keys
from sdvar_lib.fast.run import FastRun, _EagerProgram
from sdvar_lib.sdvar.acceptance import ExactPolicy, RelaxedPolicy, Top1MatchPolicy
from sdvar_lib.sdvar.gamma import AdaptiveGamma, UniformCost
from sdvar_lib.sdvar.handoff import baseline, code_handoff, generate_test3
from tests.stat_checks import binomial_z, chi_square, z_bound
from tests.test_exactness import CASES, reference_acceptance, reference_residual
from tests.test_lossless import micro, run_calls  # noqa: F401  (micro is a fixture)

NO_GRAPHS = FastConfig(use_cuda_graphs=False)
EAGER_ROUNDS = FastConfig(use_cuda_graphs=False, device_rounds=False)


def _perturbed_head(target, scale: float, seed: int = 1):
    draft = copy.deepcopy(target)
    draft.vae_proxy = target.vae_proxy
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        draft.head.weight.add_(torch.randn(draft.head.weight.shape, generator=gen) * scale * draft.head.weight.std())
    return draft


@pytest.fixture(scope="module")
def drafts(tiny_pair):
    """The tiny target, its far draft (another model) and a close draft (the target with a perturbed head)."""
    _, far, target = tiny_pair
    return target, {"far": far, "close": _perturbed_head(target, 0.3)}


POLICIES = {
    "exact": ExactPolicy(),
    "top1_match": Top1MatchPolicy(threshold=0.5),
    "relaxed": RelaxedPolicy(budget=0.2),
    "relaxed_0": RelaxedPolicy(budget=0.0),
    "all_accepted": ScenarioPolicy.all_accepted(4),
    "profile": ScenarioPolicy(stage_probabilities=(1.0, 0.6, 0.3, 0.0)),
    "profile_per_sample": ScenarioPolicy(stage_probabilities=(0.9, 0.7, 0.5, 0.2), per_sample=True),
}
GAMMAS = [1, 2, 3, (0, 2), (1, 0, 0, 3), AdaptiveGamma(costs=UniformCost())]
"""The adaptive rule with the eager loop's prices on both factories (the default ``RunCost`` lets the device-round
factory price it with its timed programs and the other one not: ``tests/test_fast_pricing.py``)."""


def _record(out, factory: FastRunFactory) -> dict:
    stats = out.stats.to_dict()
    stats.pop("wall_time_s"), stats.pop("one_off_s")  # times, not results
    passes = [[(p.position, p.length) for p in run.pass_log] for run in factory.call_runs()]
    return dict(tokens=[t.tolist() for t in out.tokens_per_stage], stats=stats, passes=passes)


def _same_call(a, b) -> bool:
    return torch.equal(a.f_hat_BChw, b.f_hat_BChw) and torch.equal(a.images_B3HW, b.images_B3HW)


def _pair_of_sds(draft, target, config: FastConfig = NO_GRAPHS) -> tuple[SDVAR, SDVAR]:
    return (SDVAR(draft, target, run_factory=FastRunFactory(config)),
            SDVAR(draft, target, run_factory=FastRunFactory(EAGER_ROUNDS)))


@pytest.mark.parametrize("draft_name", ["far", "close"])
@pytest.mark.parametrize("policy_name", list(POLICIES))
def test_device_rounds_equal_the_eager_rounds_draw_for_draw(drafts, policy_name, draft_name):
    target, by_name = drafts
    device, eager = _pair_of_sds(by_name[draft_name], target)
    policy = POLICIES[policy_name]
    bonus_rounds = 0
    for gamma in GAMMAS:
        for B, top_k, seed in ((1, 0, 0), (3, 0, 1), (2, 5, 2)):
            sampling = SamplingConfig(cfg=1.5, top_k=top_k)
            got = device.generate_parallel(B, None, seed, sampling, gamma=gamma, policy=policy)
            got_record = _record(got, device.run_factory)
            want = eager.generate_parallel(B, None, seed, sampling, gamma=gamma, policy=policy)
            want_record = _record(want, eager.run_factory)
            where = f"{policy_name}, {draft_name} draft, gamma {gamma}, B {B}, top_k {top_k}, seed {seed}"
            assert got_record == want_record, where
            assert _same_call(got, want), where
            st = want.stats
            bonus_rounds += sum(c == g + 1 for g, c in zip(st.gamma_per_round, st.stages_committed_per_round))
    rounds = list(device.run_factory._rounds.values())
    assert len(rounds) == 3 and all(r._accept for r in rounds), "every batch size ran device rounds"
    assert not any(r._accept for r in eager.run_factory._rounds.values()), "device_rounds=False runs the eager round"
    if draft_name == "close" or policy_name in ("all_accepted", "profile"):
        assert bonus_rounds > 0 and any(r._bonus for r in rounds), "bonus stages must be drawn in these calls"


class _TwiceProgram(_EagerProgram):
    """Runs its work twice each time on the same random numbers (a program that is right only once would show; a
    program that draws, draws the same twice, as a replayed graph draws from the state it is launched with)."""

    def __init__(self, step, rng: torch.Generator) -> None:
        super().__init__(step)
        self._rng = rng

    def run(self) -> None:
        state = self._rng.get_state()
        self._step()
        self._rng.set_state(state)
        self._step()


def _warmed_up(self, fn, what, position, draws=False):
    """What a capture does: one warm-up run on whatever the buffers hold when the program is built (drawing from the
    run's noise generator as it is then), then a program."""
    fn()
    return _EagerProgram(fn)


@pytest.mark.parametrize("build", ["warm-up at build", "run twice"])
def test_programs_built_during_a_call_or_run_twice_give_the_same_result(drafts, monkeypatch, build):
    """A program captured during a call is warmed up once on the buffers as they are then (stale noise, earlier
    proposals): the call must come out the same; and every program must write the same when it runs twice."""
    target, by_name = drafts
    monkeypatch.setattr(FastRun, "_build", _warmed_up if build == "warm-up at build"
                        else (lambda self, fn, what, position, draws=False: _TwiceProgram(fn, self.noise_rng)))
    for draft_name in ("far", "close"):
        device, eager = _pair_of_sds(by_name[draft_name], target)
        for policy_name in ("exact", "top1_match", "profile"):
            for gamma in (1, 3, (0, 2)):
                for seed in (4, 5):
                    policy = POLICIES[policy_name]
                    got = device.generate_parallel(2, None, seed, SamplingConfig(top_k=0), gamma=gamma, policy=policy)
                    want = eager.generate_parallel(2, None, seed, SamplingConfig(top_k=0), gamma=gamma, policy=policy)
                    where = (draft_name, policy_name, gamma, seed)
                    assert _record(got, device.run_factory) == _record(want, eager.run_factory), where
                    assert _same_call(got, want), where


def test_greedy_device_rounds_equal_the_greedy_target(drafts):
    target, by_name = drafts
    ref = target.generate(2, [3, 8], g_seed=2, sampling=SamplingConfig(top_k=1))
    for draft in by_name.values():
        sd = SDVAR(draft, target, run_factory=FastRunFactory(NO_GRAPHS))
        for gamma in (1, 2, 4, "adaptive"):
            out = sd.generate_parallel(2, [3, 8], g_seed=2, gamma=gamma, sampling=SamplingConfig(top_k=1))
            assert [t.tolist() for t in out.tokens_per_stage] == [t.tolist() for t in ref.tokens_per_stage], gamma
        assert sd.run_factory._rounds


def test_what_runs_eagerly_instead(drafts):
    """A policy without a device form (a subclass), more_smooth hand-offs, the first fast path and device_rounds=False
    run the eager round; the device round refuses a state that is not a fresh call's."""
    target, by_name = drafts
    draft = by_name["far"]

    class Custom(ExactPolicy):
        pass

    assert device_policy(Custom()) is None and isinstance(device_policy(ExactPolicy()), ExactDevice)
    for config, policy in ((NO_GRAPHS, Custom()), (FastConfig.first_version(use_cuda_graphs=False), ExactPolicy()),
                           (EAGER_ROUNDS, ExactPolicy())):
        factory = FastRunFactory(config)
        sd = SDVAR(draft, target, run_factory=factory)
        ref = SDVAR(draft, target).generate_parallel(2, [1, 2], 0, SamplingConfig(top_k=0), gamma=2, policy=ExactPolicy())
        out = sd.generate_parallel(2, [1, 2], 0, SamplingConfig(top_k=0), gamma=2, policy=policy)
        assert [t.tolist() for t in out.tokens_per_stage] == [t.tolist() for t in ref.tokens_per_stage]
        assert not any(r._accept for r in factory._rounds.values())
    sd = SDVAR(draft, target, run_factory=FastRunFactory(NO_GRAPHS))
    state = sd.prepare(2, [1, 2], g_seed=0, gamma=2)
    device_round = sd.run_factory.device_round(state.draft, state.target)
    state = sd.run_round(state).state  # the eager round API on the fast runs, unchanged
    assert device_round.unsupported(state) == "the state is not a fresh call's"
    with pytest.raises(ValueError, match="cannot run as device rounds"):
        device_round.run(state)
    with pytest.raises(ValueError, match="a run each"):
        DeviceRound(state.target, state.target)


def test_a_model_decodes_its_stages_in_one_program(drafts):
    """Target alone: one stage program per call; hand-offs: one per model; the same tokens as the eager runs."""
    target, by_name = drafts
    draft = by_name["far"]
    factory = FastRunFactory(NO_GRAPHS)
    sd, ref = SDVAR(draft, target, run_factory=factory), SDVAR(draft, target)
    for call in (lambda s: baseline(s, 2, [1, 2], 3, SamplingConfig(top_k=0)),
                 lambda s: generate_test3(s, 2, [1, 2], 3, SamplingConfig(top_k=0), entry_num=2),
                 lambda s: code_handoff(s, 2, [1, 2], 3, SamplingConfig(top_k=0), entry_num=2)):
        out = call(sd)
        assert [t.tolist() for t in out.tokens_per_stage] == [t.tolist() for t in call(ref).tokens_per_stage]
        runs = factory.call_runs()
        replays = [r.counters.eager_passes for r in runs]
        call(sd)
        assert [r.counters.eager_passes for r in runs] == [n + 1 for n in replays], "one program per model and call"


def test_precapture_builds_every_program_of_a_fixed_gamma(drafts):
    target, by_name = drafts
    factory = FastRunFactory(NO_GRAPHS)
    sd = SDVAR(by_name["close"], target, run_factory=factory)
    state = sd.prepare(2, [1, 2], g_seed=0, gamma=2)
    device_round = factory.device_round(state.draft, state.target)
    keys = round_keys((2,), target.num_stages)
    assert keys == [(0, 0, 2), (1, 0, 2), (1, 1, 2), (2, 1, 2), (2, 2, 2), (3, 2, 1), (3, 3, 1)]
    sampling = SamplingConfig(top_k=0)
    new = device_round.precapture(sampling, ExactPolicy(), keys)
    assert new > 0 and device_round.precapture(sampling, ExactPolicy(), keys) == 0
    assert state.draft.cache.length == state.target.cache.length == 0
    built = new
    for seed in range(6):  # every round of these calls finds its programs built
        sd.generate_parallel(2, [1, 2], seed, sampling, gamma=2)
        assert device_round._count_programs() == built


# ---- the law, per stage ------------------------------------------------------------------------------
N = 1_000_000
ALPHA = 1e-4


def _device_verdicts(p: torch.Tensor, q: torch.Tensor, n: int, seed: int):
    """``n`` proposals ``x ~ q`` judged by the device form of ``exact`` in one stage, with its draws made as a round
    makes them (the uniform per token, then the residual's ``Exp(1)`` noise, from one generator)."""
    gen = torch.Generator().manual_seed(seed)
    V = p.numel()
    x = torch.multinomial(q, n, replacement=True, generator=gen).view(1, n)
    form = ExactDevice(ExactPolicy())
    rng = torch.Generator().manual_seed(seed + 1)
    draws = {}
    for draw in form.draws:
        draws[draw.name] = torch.empty(draw.shape(1, n, V))
        draw.fill_(draws[draw.name], rng)
    accepted, stage_ok, tokens = form.verdict(0, x, q.expand(1, n, V), p.expand(1, n, V), draws, None)
    assert bool(stage_ok[0]) == bool(accepted.all())
    return x[0], accepted[0], tokens[0]


@pytest.mark.parametrize("name", list(CASES))
def test_the_device_verdict_commits_p_and_accepts_with_min_1_p_over_q(name):
    p, q = CASES[name]
    V = p.numel()
    x, accepted, committed = _device_verdicts(p, q, N if name == "generic" else N // 5, seed=7 + list(CASES).index(name))
    assert int((p[committed] == 0).sum()) == 0 and int((accepted & (p[x] == 0)).sum()) == 0
    assert torch.equal(committed[accepted], x[accepted])
    result = chi_square(torch.bincount(committed, minlength=V).double(), p)
    assert result.passes(ALPHA), (name, "committed", result)
    a = reference_acceptance(p, q)
    n_x = torch.bincount(x, minlength=V).double()
    acc_x = torch.bincount(x[accepted], minlength=V).double()
    assert torch.equal(acc_x[(a == 1) & (n_x > 0)], n_x[(a == 1) & (n_x > 0)]), name
    mid = (a > 0) & (a < 1) & (n_x > 0)
    if bool(mid.any()):
        z = binomial_z(float(acc_x[mid].sum()), n_x[mid], a[mid])
        assert abs(z) <= z_bound(ALPHA), (name, "acceptance", z)
    rejected = committed[~accepted]
    if rejected.numel():
        result = chi_square(torch.bincount(rejected, minlength=V).double(), reference_residual(p, q))
        assert result.passes(ALPHA), (name, "corrections", result)


# ---- the law, end to end -----------------------------------------------------------------------------
DEVICE_SCENARIOS = [(1, 1, 200), (2, 1, 200), (2, 4, 100)]


@pytest.mark.parametrize(("gamma", "B", "calls"), DEVICE_SCENARIOS, ids=[f"gamma{g}-B{b}" for g, b, _ in DEVICE_SCENARIOS])
def test_device_rounds_draw_the_target_law(micro, gamma, B, calls):  # noqa: F811
    """``tests/test_lossless.py``'s criterion on calls made of device rounds (its seeds: the outcome is deterministic;
    its power table applies: a greedy bonus stage is caught at gamma 1 and 2, batch 1, with power > 1 - 1e-9)."""
    target, close, _ = micro
    factory = FastRunFactory(NO_GRAPHS)
    outcome = run_calls(SDVAR(close, target, run_factory=factory), gamma, B, calls)
    assert factory._rounds and all(r._accept for r in factory._rounds.values()), "device rounds must have run"
    assert outcome.verdict.lossless, outcome.describe()
    assert min(outcome.stage_acceptance[:2]) >= (0.5 if B == 1 else 0.25), outcome.describe()
    assert outcome.bonus_per_call >= (0.5 if B == 1 else 0.1), outcome.describe()


def test_every_fast_f_hat_update_upsamples_with_the_runs_kernel(tiny_pair, monkeypatch):
    """The stage programs, the acceptance program and the bonus stage all upsample a token map with the run's
    resolved kernel (``FastRun.upsample``: Triton's on a GPU where bit-exact), none with PyTorch's behind its back."""
    import sys
    from collections import Counter

    import sdvar_lib.fast.run as fast_run
    from sdvar_lib.models.quant import bicubic

    _, draft, target = tiny_pair
    callers: Counter = Counter()

    def counting(h, size):  # the very values of PyTorch's, counted by the program function that asked
        callers[sys._getframe(3).f_code.co_name] += 1  # counting <- stage_contribution <- f_hat_after <- caller
        return bicubic(h, size)

    plain = SDVAR(draft, target, run_factory=FastRunFactory(NO_GRAPHS))
    monkeypatch.setattr(fast_run, "resolve_upsample", lambda kernels, model: counting)
    counted = SDVAR(draft, target, run_factory=FastRunFactory(NO_GRAPHS))
    S = target.num_stages
    for policy in (ExactPolicy(), ScenarioPolicy.all_accepted(S)):
        got, want = (sd.generate_parallel(2, [1, 5], 3, SamplingConfig(top_k=4), gamma=2, policy=policy)
                     for sd in (counted, plain))
        assert _same_call(got, want)
    assert {"stages", "accept", "bonus"} <= set(callers), callers
    assert all(r.upsample is counting for r in counted.run_factory.runs())
