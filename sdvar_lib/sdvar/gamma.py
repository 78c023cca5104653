"""How many stages the draft proposes per SDVAR round: a fixed ``gamma``, a schedule, or an adaptive rule.

A rule sees a :class:`RoundContext` (the next stage, how far the draft's cache lags, and the
rounds made so far) and returns the next ``gamma``; ``0`` means a plain target step (no draft),
which is how the adaptive rule falls back to target-only decoding.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from sdvar_lib.util.checks import check_instance, check_int, check_int_sequence, check_mapping, check_number, check_sequence

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
    "check_gamma_rule",
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
    """Base class: ``next_gamma(ctx)`` -> stages to propose next round (``0`` = target step).

    A rule is a function of its context (the calls plan with it: :func:`plan_never_drafts`);
    :meth:`check_for` refuses a pair the rule cannot serve before any model call.
    """

    def next_gamma(self, ctx: RoundContext) -> int:
        raise NotImplementedError

    def check_for(self, num_stages: int) -> None:
        """Raise ``ValueError`` if the rule cannot pick a gamma for every state of a pair with ``num_stages`` stages."""

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
        values = check_int_sequence(self.values, "a gamma schedule (gamma per round, 0 = a target step)", 0)
        object.__setattr__(self, "values", values)
        if all(v == 0 for v in values):
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
        check_number(self.draft_cost, "draft_cost (a draft pass's cost, a target pass costing 1)", 0.0)
        check_number(self.round_overhead, "round_overhead", 0.0)

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

    def __post_init__(self) -> None:
        for name in ("target_times", "draft_times"):
            table = check_mapping(getattr(self, name), name, _check_chunk_key, _check_time,
                                  "(start stage, number of stages) -> time")
            object.__setattr__(self, name, table)
        check_number(self.round_overhead, "round_overhead", 0.0)

    def missing(self, target_chunks: Sequence[tuple[int, int]], draft_chunks: Sequence[tuple[int, int]]) -> list[str]:
        """The chunks of the two lists that have no measured time, as ``"target (start, n)"``/``"draft (start, n)"``."""
        return ([f"target {k}" for k in target_chunks if k not in self.target_times]
                + [f"draft {k}" for k in draft_chunks if k not in self.draft_times])

    def _get(self, table: Mapping[tuple[int, int], float], which: str, start: int, n: int) -> float:
        try:
            return table[(start, n)]
        except KeyError:
            raise ValueError(f"no measured {which} time for a chunk of {n} stages from stage {start}") from None

    def target(self, start: int, n: int) -> float:
        return self._get(self.target_times, "target", start, n)

    def draft(self, start: int, n: int) -> float:
        return self._get(self.draft_times, "draft", start, n)


def _check_chunk_key(key, label: str) -> tuple[int, int]:
    if not isinstance(key, tuple) or len(key) != 2:
        raise TypeError(f"{label} must be a (start stage, number of stages) tuple of two ints, got {key!r}")
    return check_int(key[0], f"{label} (start stage)", 0), check_int(key[1], f"{label} (number of stages)", 1)


def _check_time(value, label: str) -> float:
    return check_number(value, f"{label} (a measured time)", 0.0)


def _check_costs(costs) -> CostModel:
    check_instance(costs, "costs", CostModel, "a CostModel (UniformCost, TableCost or a subclass)")
    unimplemented = [m for m in ("target", "draft") if getattr(type(costs), m) is getattr(CostModel, m)]
    if unimplemented:
        raise TypeError(f"costs {type(costs).__name__} must implement {' and '.join(unimplemented)}(start, n)")
    check_number(costs.round_overhead, "costs.round_overhead", 0.0)
    return costs


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
            raise TypeError("prior_acceptance must be a float or a tuple of floats (one per stage), got a list")
        if isinstance(self.prior_acceptance, tuple):
            check_sequence(self.prior_acceptance, "prior_acceptance", _check_prior, "probabilities in [0, 1] (one per stage)")
        else:
            _check_prior(self.prior_acceptance, "prior_acceptance (a float in [0, 1] or a tuple of them, one per stage)")
        check_number(self.prior_weight, "prior_weight", 0.0, min_inclusive=False)
        _check_costs(self.costs)

    def check_for(self, num_stages: int) -> None:
        """Per-stage priors must cover every stage; measured cost tables every chunk the rule may price."""
        if isinstance(self.prior_acceptance, tuple) and len(self.prior_acceptance) < num_stages:
            raise ValueError(f"prior_acceptance has {len(self.prior_acceptance)} values, the pair has {num_stages} stages; "
                             "give one per stage (or one float for all)")
        if isinstance(self.costs, TableCost):
            missing = self.costs.missing(*self.chunks_priced(num_stages))
            if missing:
                raise ValueError(f"the cost table has no measured time for {len(missing)} chunk(s) this rule may price "
                                 f"on {num_stages} stages, e.g. {', '.join(missing[:4])}; measure them (python -m "
                                 "sdvar_lib.bench calibrates every chunk) or use UniformCost")

    def chunks_priced(self, num_stages: int) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
        """``(target chunks, draft chunks)`` that :meth:`expected_saving` may look up on ``num_stages`` stages."""
        S = num_stages
        target, draft = set(), set()
        for c in range(S):
            for g in range(1, min(self.max_gamma, S - c) + 1):
                last = min(c + g, S - 1)
                target.add((c, last - c + 1))
                target.update((c + i, 1) for i in range(last - c + 1))
                draft.update((d, c - d + 1) for d in range(c + 1))
                draft.update((c + i, 1) for i in range(1, g))
        return sorted(target), sorted(draft)

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


def _check_prior(value, label: str) -> float:
    return check_number(value, label, 0.0, 1.0)


_GAMMA_KINDS = "an int >= 1, 'adaptive', a schedule (a list or tuple of ints >= 0, 0 = a target step) or a GammaRule"


def make_gamma_rule(gamma) -> GammaRule:
    """``gamma``: an int >= 1, ``"adaptive"``, a sequence of ints >= 0 (a schedule) or a :class:`GammaRule`."""
    if isinstance(gamma, GammaRule):
        return check_gamma_rule(gamma)
    if isinstance(gamma, str):
        if gamma == "adaptive":
            return AdaptiveGamma()
        raise ValueError(f"gamma must be {_GAMMA_KINDS}, got {gamma!r}")
    if isinstance(gamma, int) and not isinstance(gamma, bool):
        return FixedGamma(gamma)
    if isinstance(gamma, Sequence) and not isinstance(gamma, (bytes, bytearray)):
        return GammaSchedule(tuple(gamma))
    raise TypeError(f"gamma must be {_GAMMA_KINDS}, got {type(gamma).__name__} {gamma!r}")


def check_gamma_rule(rule: GammaRule) -> GammaRule:
    """``rule`` if its class implements :meth:`GammaRule.next_gamma` (the base class picks nothing)."""
    check_instance(rule, "gamma rule", GammaRule, "a GammaRule")
    if type(rule).next_gamma is GammaRule.next_gamma:
        raise TypeError(f"gamma rule {type(rule).__name__} must implement next_gamma(ctx) -> int (GammaRule is a base class)")
    return rule


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
