"""Whole calls and the round API agree on every gamma rule: the same draws and the same statistics, round by round.

A whole call (``SDVAR.generate_parallel``, ``Method.run``) may decode a rule that never drafts with
the target-alone loop instead of rounds (``plan_never_drafts``); the round API always runs rounds.
For every kind of rule (an int, schedules with and without zeros, ``"adaptive"``, ``AdaptiveGamma``
instances, a calibrated rule with measured cost tables, every SDVAR method of the registry) both
must give the same tokens and the same counters (gamma per round, passes, acceptance).
"""

from __future__ import annotations

import pytest
import torch

from sdvar_lib import METHODS, SamplingConfig
from sdvar_lib.bench import calibrated_costs
from sdvar_lib.bench.calibration import OverheadEstimate
from sdvar_lib.sdvar import AdaptiveGamma, GammaSchedule, make_gamma_rule
from sdvar_lib.sdvar.gamma import plan_never_drafts
from sdvar_lib.sdvar.registry import stage_chunks

S_TINY = 4
LABELS = [3, 7]
SAMPLING = SamplingConfig(cfg=1.5)


def _calibrated_rule(priors: tuple[float, ...]) -> AdaptiveGamma:
    """An adaptive rule built the way the benchmark calibrates one: measured chunk times plus overheads."""
    target_ms = {(s, n): 1.0 + 0.05 * n for s, n in stage_chunks(S_TINY, 5)}
    draft_ms = {(s, n): 0.1 + 0.01 * n for s, n in stage_chunks(S_TINY, S_TINY)}
    overheads = OverheadEstimate(step_ms=0.02, round_ms=0.05, round_ms_raw=0.05, target_calls=3, sdvar_calls=3)
    return AdaptiveGamma(max_gamma=4, prior_acceptance=priors, costs=calibrated_costs(target_ms, draft_ms, overheads))


RULES = {
    "int 1": 1,
    "int 2": 2,
    "int 3": 3,
    "schedule (2, 1)": (2, 1),
    "schedule (2, 0, 1)": (2, 0, 1),
    "schedule (1, 0)": (1, 0),
    "schedule (0, 2)": (0, 2),
    "schedule (0, 0, 1)": (0, 0, 1),
    "schedule (0, 1, 0)": (0, 1, 0),
    "schedule (0, 0, 0, 1)": (0, 0, 0, 1),  # drafts only for the last stage
    "schedule (0, 0, 0, 0, 1)": (0, 0, 0, 0, 1),  # the draft's turn never comes on 4 stages
    "GammaSchedule (0, 3)": GammaSchedule((0, 3)),
    "adaptive": "adaptive",
    "AdaptiveGamma never drafts": AdaptiveGamma(prior_acceptance=0.0),
    "AdaptiveGamma per-stage priors": AdaptiveGamma(max_gamma=2, prior_acceptance=(0.0, 0.9, 0.9, 0.9)),
    "calibrated, drafts": _calibrated_rule((0.9, 0.9, 0.5, 0.1)),
    "calibrated, target step first": _calibrated_rule((0.0, 0.9, 0.9, 0.9)),
    "calibrated, never drafts": _calibrated_rule((0.0, 0.0, 0.0, 0.0)),
}


def _counters(stats) -> dict:
    """Everything a call counts (not its times)."""
    d = stats.to_dict()
    for key in ("wall_time_s", "one_off_s", "steady_time_s"):
        d.pop(key, None)
    return d


def _round_api(sd, seed: int, gamma, policy):
    state = sd.prepare(len(LABELS), LABELS, g_seed=seed, sampling=SAMPLING, gamma=gamma, policy=policy)
    for record in sd.iter_rounds(state):
        state = record.state
    return list(state.tokens), state.stats


def _assert_agree(whole, tokens, stats, what: str) -> None:
    assert _counters(whole.stats) == _counters(stats), (
        f"{what}: the whole call's statistics differ from the round API's "
        f"(gamma per round {whole.stats.gamma_per_round} vs {stats.gamma_per_round})")
    assert len(whole.tokens_per_stage) == len(tokens) == S_TINY
    assert all(torch.equal(a, b) for a, b in zip(whole.tokens_per_stage, tokens, strict=True)), f"{what}: tokens differ"


@pytest.mark.parametrize("pair", ["different", "self"])
@pytest.mark.parametrize("name", list(RULES))
def test_generate_parallel_agrees_with_the_round_api(sd, self_sd, pair, name):
    model = sd if pair == "different" else self_sd
    gamma = RULES[name]
    for seed in (0, 5):
        whole = model.generate_parallel(len(LABELS), LABELS, g_seed=seed, sampling=SAMPLING, gamma=gamma)
        tokens, stats = _round_api(model, seed, gamma, "exact")
        _assert_agree(whole, tokens, stats, f"{name} ({pair} draft, seed {seed})")


def test_a_schedule_starting_with_zero_drafts_after_its_target_steps(sd):
    """The case the target-alone shortcut used to misjudge: ``(0, 2)`` and ``(0, 0, 1)`` draft from their second and
    third round on, in a whole call as in the round API."""
    for schedule, first in (((0, 2), [0, 2]), ((0, 0, 1), [0, 0, 1])):
        whole = sd.generate_parallel(len(LABELS), LABELS, g_seed=0, sampling=SAMPLING, gamma=schedule)
        assert whole.stats.gamma_per_round[: len(first)] == first, whole.stats.gamma_per_round
        assert whole.stats.draft_passes > 0
        assert not plan_never_drafts(make_gamma_rule(schedule), S_TINY)
    assert plan_never_drafts(make_gamma_rule((0, 0, 0, 0, 1)), S_TINY)


SDVAR_METHODS = [m for m in METHODS.values() if m.decoder == "sdvar"]


@pytest.mark.parametrize("method", SDVAR_METHODS + [
    METHODS["exact_adaptive"].with_gamma(RULES["calibrated, target step first"], name="exact_calibrated"),
    METHODS["exact_adaptive"].with_gamma(RULES["calibrated, never drafts"], name="exact_calibrated_never"),
    METHODS["relaxed_0.1_g2"].with_gamma((0, 2), name="relaxed_0.1_schedule_0_2"),
], ids=lambda m: m.name)
def test_every_sdvar_method_of_the_registry_agrees_with_the_round_api(sd, method):
    whole = method.run(sd, len(LABELS), LABELS, 1, SAMPLING)
    tokens, stats = _round_api(sd, 1, method.gamma, method.policy)
    _assert_agree(whole, tokens, stats, method.name)
