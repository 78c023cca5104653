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
    "ProgramCost",
    "RunCost",
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
    """Time of a pass over the inputs of stages ``start .. start + n - 1`` (any unit, same for both models).

    :class:`AdaptiveGamma` prices a target step with :meth:`step` and a drafting round with :meth:`round`;
    a model of passes (``target``/``draft``) gets both from its pass times, a model of measured programs
    (:class:`ProgramCost`) overrides them.
    """

    round_overhead: float = 0.0
    """Extra time of an SDVAR round over a target step (verification, acceptance), same unit."""

    def target(self, start: int, n: int) -> float:
        raise NotImplementedError

    def draft(self, start: int, n: int) -> float:
        raise NotImplementedError

    def step(self, stage: int) -> float:
        """A target step of ``stage`` (what a committed stage saves)."""
        return self.target(stage, 1)

    def round(self, c: int, d: int, g: int, num_stages: int) -> float:
        """A drafting round from stage ``c`` with ``g`` proposals, the draft's cache holding stages ``< d``: the
        draft's catch-up chunk ``d .. c``, one draft pass per further proposal, the target's verify chunk
        ``c .. min(c + g, S - 1)`` and :attr:`round_overhead`."""
        last = min(c + g, num_stages - 1)
        spend = self.draft(d, c - d + 1) + sum(self.draft(c + i, 1) for i in range(1, g))
        return spend + self.target(c, last - c + 1) + self.round_overhead


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


@dataclass(frozen=True)
class ProgramCost(CostModel):
    """Measured times of the programs a call runs (the fast path's stage and round programs, timed on its GPU).

    ``step_times[s]``: a target step of stage ``s``; ``round_times[(c, d, g)]``: a whole drafting round
    from stage ``c`` with ``g`` proposals on a draft cache of ``d`` stages (the draft's program, the
    target's verify chunk, the acceptance, the host's read of the result and the bonus stage's draw);
    ``catch_up_times[s]``: a draft step of stage ``s``. A round whose draft lags further than the table
    (``(c, d, g)`` absent, ``d < c``) is priced as the round ``(c, d', g)`` with the nearest timed
    ``d' > d`` plus the draft steps of stages ``d .. d' - 1`` (an upper bound: a chunk costs at most
    its stages one by one).

    ``covers_max_loss``: ``None`` when every round a rule may take was timed. A number ``m`` when only the
    rounds of gamma 1 were, because each of them, rejected, already costs more than ``m`` of the call's
    target steps (:meth:`sdvar_lib.fast.round.DeviceRound.price` stops there): a round of more proposals
    is then priced at the gamma-1 round from its stage, a lower bound (it does that round's work and more).
    Such a table decides right only for a rule whose loss bound is at most ``m`` - every round is outside
    its budget either way - and :meth:`AdaptiveGamma.check_for` refuses it to any other.
    """

    step_times: tuple[float, ...]
    round_times: Mapping[tuple[int, int, int], float]
    catch_up_times: tuple[float, ...]
    covers_max_loss: float | None = None

    def __post_init__(self) -> None:
        for name in ("step_times", "catch_up_times"):
            values = check_sequence(getattr(self, name), name, _check_time, "times per stage (numbers >= 0)")
            object.__setattr__(self, name, tuple(values))
        table = check_mapping(self.round_times, "round_times", _check_round_key, _check_time,
                              "(start stage, draft stages held, gamma) -> time")
        object.__setattr__(self, "round_times", table)
        if self.covers_max_loss is not None:
            check_number(self.covers_max_loss, "covers_max_loss (a fraction of the call's target steps, or None)", 0.0)

    def _stage(self, values: tuple[float, ...], which: str, stage: int) -> float:
        if not 0 <= stage < len(values):
            raise ValueError(f"no measured {which} time for stage {stage} (the table has {len(values)} stages)")
        return values[stage]

    def target(self, start: int, n: int) -> float:
        if n != 1:
            raise ValueError("ProgramCost prices target steps and whole rounds, not target chunks of several stages")
        return self._stage(self.step_times, "target step", start)

    def draft(self, start: int, n: int) -> float:
        if n != 1:
            raise ValueError("ProgramCost prices draft steps and whole rounds, not draft chunks of several stages")
        return self._stage(self.catch_up_times, "draft step", start)

    def round(self, c: int, d: int, g: int, num_stages: int) -> float:
        if self.covers_max_loss is not None and g > 1 and (c, c, g) not in self.round_times:
            g = 1  # only gamma 1 was timed: its round is the lower bound of every round from stage c
        if (c, d, g) in self.round_times:
            return self.round_times[(c, d, g)]
        nearest = next((h for h in range(d + 1, c + 1) if (c, h, g) in self.round_times), None)
        if nearest is None:
            raise ValueError(f"no measured round from stage {c} with gamma {g} (draft cache {d} stages)")
        return self.round_times[(c, nearest, g)] + sum(self.draft(s, 1) for s in range(d, nearest))

    def missing(self, num_stages: int, max_gamma: int) -> list[str]:
        """What a rule with ``max_gamma`` on ``num_stages`` stages may price and the tables lack."""
        out = [f"target step {s}" for s in range(len(self.step_times), num_stages)]
        out += [f"draft step {s}" for s in range(len(self.catch_up_times), num_stages)]
        top = 1 if self.covers_max_loss is not None else max_gamma
        for c in range(num_stages):
            for g in range(1, min(top, num_stages - c) + 1):
                if (c, c, g) not in self.round_times:
                    out.append(f"round {(c, c, g)}")
        return out


@dataclass(frozen=True)
class RunCost(CostModel):
    """The costs of whatever decodes the call: a run factory that times its own programs replaces this model by
    their times before the call (the fast path: :meth:`FastRunFactory.price_rule
    <sdvar_lib.fast.factory.FastRunFactory.price_rule>`, a :class:`ProgramCost`); elsewhere (the eager loop)
    ``fallback`` prices the rounds."""

    fallback: CostModel = UniformCost()
    max_loss: float | None = 0.015
    """The loss bound (:attr:`AdaptiveGamma.max_loss`) a rule priced by its run factory takes when it sets none: at
    most 1.5 % of the call's target steps at the measured prices. On an H200 a rejected round's measured cost was up
    to twice its price (the draft's per-call set-up and the host's draws are not priced), so this keeps a call within
    about 3 % of the target alone (issue 21 asks at least 0.97x). The eager loop's fallback prices have no time
    unit, so no bound applies there."""

    def __post_init__(self) -> None:
        _check_costs(self.fallback)
        if self.max_loss is not None:
            check_number(self.max_loss, "RunCost.max_loss (a fraction of the call's target steps, or None)", 0.0)
        if isinstance(self.fallback, RunCost):
            raise TypeError("RunCost's fallback must be a cost model of its own (UniformCost, TableCost, ...)")

    @property
    def round_overhead(self) -> float:  # type: ignore[override]
        return self.fallback.round_overhead

    def target(self, start: int, n: int) -> float:
        return self.fallback.target(start, n)

    def draft(self, start: int, n: int) -> float:
        return self.fallback.draft(start, n)

    def step(self, stage: int) -> float:
        return self.fallback.step(stage)

    def round(self, c: int, d: int, g: int, num_stages: int) -> float:
        return self.fallback.round(c, d, g, num_stages)


def _check_round_key(key, label: str) -> tuple[int, int, int]:
    if not isinstance(key, tuple) or len(key) != 3:
        raise TypeError(f"{label} must be a (start stage, draft stages held, gamma) tuple of three ints, got {key!r}")
    c = check_int(key[0], f"{label} (start stage)", 0)
    d = check_int(key[1], f"{label} (draft stages held)", 0)
    g = check_int(key[2], f"{label} (gamma)", 1)
    if d > c:
        raise ValueError(f"{label}: the draft cannot hold more stages ({d}) than the round starts at ({c})")
    return c, d, g


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
    chunk and ``costs.round_overhead`` (:meth:`CostModel.round`; a :class:`ProgramCost` holds measured
    rounds and steps instead). The rule proposes the ``g`` with the largest expected
    saving, and falls back to a target step (``g = 0``) when no ``g >= 1`` saves anything, so with
    calibrated costs and priors it does not make decoding slower than the target alone.

    **A bound on the loss.** An expected saving is an average: a round whose first proposal is rejected
    costs ``round(c, d, g) - step(c)`` more than the target step it replaces, whatever the priors said.
    With ``max_loss`` set, the rule takes a round only if that worst case, added to what the call's
    rounds so far cost beyond the target steps they replaced (:meth:`priced_loss`; gains count against
    it), stays within ``max_loss`` times the call's target steps (``sum(step(s))``). So, at the prices
    the rule has, no call is slower than the target alone by more than that fraction, in any scenario;
    rounds that cost more than that when rejected are never risked.
    """

    max_gamma: int = 4
    prior_acceptance: float | tuple[float, ...] = 0.8
    prior_weight: float = 2.0
    costs: CostModel = RunCost()
    """The default :class:`RunCost` lets the fast path price the rounds with its own timed programs (the eager
    loop with :class:`UniformCost`)."""
    max_loss: float | None = None
    """The loss bound as a fraction of the call's target steps (``None``: no bound). A rule the fast path prices
    (:class:`RunCost`) without one gets :attr:`RunCost.max_loss`."""

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
        if self.max_loss is not None:
            check_number(self.max_loss, "max_loss (a fraction of the call's target steps, or None)", 0.0)

    def check_for(self, num_stages: int) -> None:
        """Per-stage priors must cover every stage; measured cost tables every chunk the rule may price."""
        if isinstance(self.prior_acceptance, tuple) and len(self.prior_acceptance) < num_stages:
            raise ValueError(f"prior_acceptance has {len(self.prior_acceptance)} values, the pair has {num_stages} stages; "
                             "give one per stage (or one float for all)")
        if isinstance(self.costs, ProgramCost):
            covers = self.costs.covers_max_loss
            if covers is not None and (self.max_loss is None or self.max_loss > covers):
                raise ValueError(f"these program costs timed only the gamma-1 rounds (every one, rejected, costs more "
                                 f"than {covers:g} of the call's target steps); they price a rule with max_loss at most "
                                 f"{covers:g}, this rule has max_loss={self.max_loss}")
            missing = self.costs.missing(num_stages, self.max_gamma)
            if missing:
                raise ValueError(f"the program cost tables lack {len(missing)} entries this rule may price on {num_stages} "
                                 f"stages, e.g. {', '.join(missing[:4])}; time them (FastRunFactory.price_rule)")
        costs = self.costs.fallback if isinstance(self.costs, RunCost) else self.costs
        if isinstance(costs, TableCost):
            missing = costs.missing(*self.chunks_priced(num_stages))
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
        c, S, costs = ctx.c, ctx.num_stages, self.costs
        last = min(c + g, S - 1)
        saved, p_committed = 0.0, 1.0
        for i in range(last - c + 1):
            saved += p_committed * costs.step(c + i)
            p_committed *= a[c + i]
        return saved - costs.round(c, ctx.draft_stages_held, g, S)

    def priced_loss(self, ctx: RoundContext) -> float:
        """What the call's rounds so far cost beyond the target steps of the stages they committed, at this rule's
        prices (negative when they saved time). Target steps cost nothing extra; a drafting round of ``g`` proposals
        from stage ``c`` with ``a`` accepted committed ``a + 1`` stages (``g + 1`` with the bonus stage when one
        was left), and is priced as if the draft held ``c`` stages (the history does not keep how far it lagged)."""
        S, costs, c, loss = ctx.num_stages, self.costs, 0, 0.0
        for proposed, accepted in zip(ctx.history.proposed, ctx.history.accepted):
            if proposed == 0:
                c += 1
                continue
            committed = accepted + 1 if accepted < proposed else proposed + int(c + proposed < S)
            loss += costs.round(c, c, proposed, S) - sum(costs.step(c + i) for i in range(committed))
            c += committed
        return loss

    def loss_budget(self, ctx: RoundContext) -> float | None:
        """How much more a rejected round may cost in this call (``None``: no bound): ``max_loss`` times the call's
        target steps, minus :meth:`priced_loss`."""
        if self.max_loss is None:
            return None
        total = sum(self.costs.step(s) for s in range(ctx.num_stages))
        return self.max_loss * total - self.priced_loss(ctx)

    def next_gamma(self, ctx: RoundContext) -> int:
        gammas = range(1, min(self.max_gamma, ctx.num_stages - ctx.c) + 1)
        budget = self.loss_budget(ctx)
        if budget is not None:  # rejected at stage c, a round may not cost more than the call may still lose
            step = self.costs.step(ctx.c)
            gammas = [g for g in gammas
                      if self.costs.round(ctx.c, ctx.draft_stages_held, g, ctx.num_stages) - step <= budget]
            if not gammas:
                return 0
        a = self.acceptance_estimates(ctx)
        best_g, best = 0, 0.0
        for g in gammas:
            saving = self.expected_saving(g, ctx, a)
            if saving > best + 1e-12:
                best_g, best = g, saving
        return best_g

    def describe(self) -> str:
        bound = "" if self.max_loss is None else f", max_loss={self.max_loss:g}"
        return f"adaptive(max={self.max_gamma}, costs={_describe_costs(self.costs)}{bound})"


def _describe_costs(costs: CostModel) -> str:
    if isinstance(costs, RunCost):
        return f"{type(costs.fallback).__name__} or the fast path's timed programs"
    return type(costs).__name__


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
