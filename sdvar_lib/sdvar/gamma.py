"""How many stages the draft proposes per SDVAR round: a fixed ``gamma``, a schedule, or an adaptive rule.

A rule sees a :class:`RoundContext` (the next stage, how far the draft's cache lags, and the
rounds made so far) and returns the next ``gamma``; ``0`` means a plain target step (no draft),
which is how the adaptive rule falls back to target-only decoding.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from sdvar_lib.util.checks import check_int

__all__ = [
    "RoundHistory",
    "RoundContext",
    "GammaRule",
    "FixedGamma",
    "GammaSchedule",
    "CostModel",
    "UniformCost",
    "TableCost",
    "AdaptiveGamma",
    "make_gamma_rule",
    "plan_never_drafts",
]


@dataclass(frozen=True)
class RoundHistory:
    """What the rounds of one call did so far.

    ``proposed``/``accepted``: stages proposed and fully accepted per round (``0``/``0`` for a
    target step); ``judged``: every verified stage as ``(stage, accepted by every sample)``.
    """

    proposed: tuple[int, ...] = ()
    accepted: tuple[int, ...] = ()
    judged: tuple[tuple[int, bool], ...] = ()

    def add(self, proposed: int, accepted: int, judged: Sequence[tuple[int, bool]] = ()) -> RoundHistory:
        return RoundHistory(self.proposed + (proposed,), self.accepted + (accepted,), self.judged + tuple(judged))


@dataclass(frozen=True)
class RoundContext:
    """What a rule may look at before a round: next stage ``c``, stages ``S``, draft cache stages ``d``."""

    c: int
    num_stages: int
    draft_stages_held: int
    history: RoundHistory


class GammaRule:
    """Base class: ``next_gamma(ctx)`` -> stages to propose next round (``0`` = target step)."""

    def next_gamma(self, ctx: RoundContext) -> int:
        raise NotImplementedError

    def describe(self) -> str:
        return type(self).__name__


@dataclass(frozen=True)
class FixedGamma(GammaRule):
    gamma: int

    def __post_init__(self) -> None:
        check_int(self.gamma, "gamma", 1)

    def next_gamma(self, ctx: RoundContext) -> int:
        return self.gamma

    def describe(self) -> str:
        return str(self.gamma)


@dataclass(frozen=True)
class GammaSchedule(GammaRule):
    """``gamma`` per round (``0`` = target step); the last value repeats."""

    values: tuple[int, ...]

    def __post_init__(self) -> None:
        if len(self.values) == 0:
            raise ValueError("a gamma schedule needs at least one value")
        for v in self.values:
            check_int(v, "every gamma of a schedule", 0)
        if all(v == 0 for v in self.values):
            raise ValueError("a gamma schedule of only zeros never uses the draft; use the baseline instead")

    def next_gamma(self, ctx: RoundContext) -> int:
        i = len(ctx.history.proposed)
        return self.values[min(i, len(self.values) - 1)]

    def describe(self) -> str:
        return f"schedule{self.values}"


# ---- costs --------------------------------------------------------------------------------------
class CostModel:
    """Time of a pass over the inputs of stages ``start .. start + n - 1`` (any unit, same for both models)."""

    round_overhead: float = 0.0
    """Extra time of an SDVAR round over a target step (verification, acceptance), same unit."""

    def target(self, start: int, n: int) -> float:
        raise NotImplementedError

    def draft(self, start: int, n: int) -> float:
        raise NotImplementedError


@dataclass(frozen=True)
class UniformCost(CostModel):
    """Launch-bound regime: every target pass costs 1 and every draft pass ``draft_cost``, whatever its size."""

    draft_cost: float = 0.5
    round_overhead: float = 0.0

    def __post_init__(self) -> None:
        if not self.draft_cost >= 0 or not self.round_overhead >= 0:
            raise ValueError(f"draft_cost and round_overhead must be >= 0, got {self.draft_cost}, {self.round_overhead}")

    def target(self, start: int, n: int) -> float:
        return 1.0

    def draft(self, start: int, n: int) -> float:
        return self.draft_cost


@dataclass(frozen=True)
class TableCost(CostModel):
    """Measured pass times keyed by ``(start stage, number of stages)`` (e.g. CUDA-graph replays)."""

    target_times: Mapping[tuple[int, int], float]
    draft_times: Mapping[tuple[int, int], float]
    round_overhead: float = 0.0

    def _get(self, table: Mapping[tuple[int, int], float], which: str, start: int, n: int) -> float:
        try:
            return table[(start, n)]
        except KeyError:
            raise ValueError(f"no measured {which} time for a chunk of {n} stages from stage {start}") from None

    def target(self, start: int, n: int) -> float:
        return self._get(self.target_times, "target", start, n)

    def draft(self, start: int, n: int) -> float:
        return self._get(self.draft_times, "draft", start, n)


# ---- adaptive -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class AdaptiveGamma(GammaRule):
    """Pick ``gamma`` by the expected time it saves over target-only decoding; ``0`` when nothing is saved.

    Stage ``s`` is accepted with estimated probability ``a_s = min(1, prior_s * rho)``: ``prior_s`` is
    ``prior_acceptance`` (one number, or one per stage, e.g. measured on earlier calls of the same
    pair) and ``rho = (accepted + w) / (expected + w)`` scales it by this call's evidence (stages
    accepted so far vs what the priors predicted for them, ``w = prior_weight``).

    With ``g`` proposals from stage ``c``, stage ``c + i`` is committed with probability
    ``prod_{j < i} a_{c+j}`` (``i <= g``; ``i = g`` is the bonus stage), and each committed stage
    saves the target step it would have cost. The round costs the draft's passes (its catch-up
    chunk from the stage its cache holds, then one pass per further proposal), the target's verify
    chunk and ``costs.round_overhead``. The rule proposes the ``g`` with the largest expected
    saving, and falls back to a target step (``g = 0``) when no ``g >= 1`` saves anything, so with
    calibrated costs and priors it does not make decoding slower than the target alone.
    """

    max_gamma: int = 4
    prior_acceptance: float | tuple[float, ...] = 0.8
    prior_weight: float = 2.0
    costs: CostModel = UniformCost()

    def __post_init__(self) -> None:
        check_int(self.max_gamma, "max_gamma", 1)
        if isinstance(self.prior_acceptance, list):
            raise TypeError("prior_acceptance must be a float or a tuple of floats (one per stage)")
        priors = self.prior_acceptance if isinstance(self.prior_acceptance, tuple) else (self.prior_acceptance,)
        if not priors or any(not 0 <= p <= 1 for p in priors):
            raise ValueError(f"prior_acceptance values must be in [0, 1], got {self.prior_acceptance}")
        if not self.prior_weight > 0:
            raise ValueError(f"prior_weight must be > 0, got {self.prior_weight}")
        if not isinstance(self.costs, CostModel):
            raise TypeError(f"costs must be a CostModel, got {type(self.costs).__name__}")

    def prior(self, stage: int) -> float:
        if isinstance(self.prior_acceptance, tuple):
            if stage >= len(self.prior_acceptance):
                raise ValueError(f"prior_acceptance has {len(self.prior_acceptance)} values, stage {stage} has none")
            return self.prior_acceptance[stage]
        return self.prior_acceptance

    def acceptance_estimates(self, ctx: RoundContext) -> list[float]:
        """``a_s`` for every stage, given this call's verdicts so far."""
        accepted = sum(1 for _, ok in ctx.history.judged if ok)
        expected = sum(self.prior(s) for s, _ in ctx.history.judged)
        rho = (accepted + self.prior_weight) / (expected + self.prior_weight)
        return [min(1.0, self.prior(s) * rho) for s in range(ctx.num_stages)]

    def expected_saving(self, g: int, ctx: RoundContext, a: Sequence[float]) -> float:
        """Expected target-step time saved by proposing ``g`` stages from ``ctx.c`` (minus the round's cost)."""
        c, S, d = ctx.c, ctx.num_stages, ctx.draft_stages_held
        costs = self.costs
        last = min(c + g, S - 1)
        spend = costs.draft(d, c - d + 1) + sum(costs.draft(c + i, 1) for i in range(1, g))
        spend += costs.target(c, last - c + 1) + costs.round_overhead
        saved, p_committed = 0.0, 1.0
        for i in range(last - c + 1):
            saved += p_committed * costs.target(c + i, 1)
            p_committed *= a[c + i]
        return saved - spend

    def next_gamma(self, ctx: RoundContext) -> int:
        a = self.acceptance_estimates(ctx)
        best_g, best = 0, 0.0
        for g in range(1, min(self.max_gamma, ctx.num_stages - ctx.c) + 1):
            saving = self.expected_saving(g, ctx, a)
            if saving > best + 1e-12:
                best_g, best = g, saving
        return best_g

    def describe(self) -> str:
        return f"adaptive(max={self.max_gamma}, costs={type(self.costs).__name__})"


def make_gamma_rule(gamma) -> GammaRule:
    """``gamma``: an int >= 1, ``"adaptive"``, a sequence of ints >= 0 (a schedule) or a :class:`GammaRule`."""
    if isinstance(gamma, GammaRule):
        return gamma
    if isinstance(gamma, str):
        if gamma == "adaptive":
            return AdaptiveGamma()
        raise ValueError(f"gamma must be an int >= 1, 'adaptive', a schedule (sequence of ints) or a GammaRule, got {gamma!r}")
    if isinstance(gamma, int) and not isinstance(gamma, bool):
        return FixedGamma(gamma)
    if isinstance(gamma, Sequence):
        return GammaSchedule(tuple(gamma))
    raise ValueError(f"gamma must be an int >= 1, 'adaptive', a schedule (sequence of ints) or a GammaRule, got {gamma!r}")


def plan_never_drafts(rule: GammaRule, num_stages: int) -> bool:
    """True when ``rule`` proposes nothing in any state a call reaches without drafting.

    A call that has not drafted yet has made only target steps: after ``c`` of them the rule sees
    ``RoundContext(c, S, 0, history)`` with ``history`` holding ``c`` target steps (``proposed`` and
    ``accepted`` ``(0,) * c``, nothing judged), exactly what :meth:`SDVAR.run_round
    <sdvar_lib.sdvar.decoder.SDVAR.run_round>` hands it. The plan walks those ``S`` states; if the rule
    returns 0 in every one of them, the call is the target's sequential decode and ``SDVAR`` runs the
    target-alone loop instead of the rounds, with the same draws and statistics. A rule that drafts in
    any of them (a schedule ``(0, 2)`` in its second round) runs the rounds. Rules must be functions of
    their :class:`RoundContext` (the plan calls ``next_gamma`` on contexts the call may never reach).
    """
    history = RoundHistory()
    for c in range(num_stages):
        if rule.next_gamma(RoundContext(c=c, num_stages=num_stages, draft_stages_held=0, history=history)) != 0:
            return False
        history = history.add(0, 0)
    return True
