"""How many stages the draft proposes per SDVAR round: a fixed ``gamma``, a schedule, or an adaptive rule.

A rule sees the rounds made so far and returns the next ``gamma``; ``0`` means a plain target
step (no draft), which is how the adaptive rule falls back to target-only decoding.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["RoundHistory", "GammaRule", "FixedGamma", "GammaSchedule", "AdaptiveGamma", "make_gamma_rule"]


@dataclass(frozen=True)
class RoundHistory:
    """What the rounds of one call did so far: stages proposed and fully accepted per round."""

    proposed: tuple[int, ...] = ()
    accepted: tuple[int, ...] = ()

    def add(self, proposed: int, accepted: int) -> RoundHistory:
        return RoundHistory(self.proposed + (proposed,), self.accepted + (accepted,))


class GammaRule:
    """Base class: ``next_gamma(history)`` -> stages to propose next round (``0`` = target step)."""

    def next_gamma(self, history: RoundHistory) -> int:
        raise NotImplementedError

    def describe(self) -> str:
        return type(self).__name__


def _check_gamma_int(value, what: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{what} must be an int >= {minimum}, got {value!r}")
    if value < minimum:
        raise ValueError(f"{what} must be an int >= {minimum}, got {value}")
    return value


@dataclass(frozen=True)
class FixedGamma(GammaRule):
    gamma: int

    def __post_init__(self) -> None:
        _check_gamma_int(self.gamma, "gamma", 1)

    def next_gamma(self, history: RoundHistory) -> int:
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
            _check_gamma_int(v, "every gamma of a schedule", 0)
        if all(v == 0 for v in self.values):
            raise ValueError("a gamma schedule of only zeros never uses the draft; use the baseline instead")

    def next_gamma(self, history: RoundHistory) -> int:
        i = len(history.proposed)
        return self.values[min(i, len(self.values) - 1)]

    def describe(self) -> str:
        return f"schedule{self.values}"


@dataclass(frozen=True)
class AdaptiveGamma(GammaRule):
    """Choose ``gamma`` to maximise expected committed stages per unit of cost.

    The stage acceptance probability ``a`` is estimated as a Beta posterior mean
    (``prior_acceptance`` with weight ``prior_weight``, updated with every accepted and rejected
    proposed stage of this call). A round with ``g`` proposals commits on average
    ``sum_{i=0..g} a**i`` stages (the accepted prefix plus the corrected or bonus stage) at a cost
    of one target pass plus ``g * draft_cost`` (the draft pass cost relative to a target pass).
    ``g = 0`` (a target step) commits one stage for cost 1, so the rule falls back to target-only
    decoding as soon as no ``g >= 1`` is expected to beat it.
    """

    max_gamma: int = 4
    prior_acceptance: float = 0.8
    prior_weight: float = 2.0
    draft_cost: float = 0.5

    def __post_init__(self) -> None:
        _check_gamma_int(self.max_gamma, "max_gamma", 1)
        if not 0 < self.prior_acceptance < 1:
            raise ValueError(f"prior_acceptance must be in (0, 1), got {self.prior_acceptance}")
        if not self.prior_weight > 0:
            raise ValueError(f"prior_weight must be > 0, got {self.prior_weight}")
        if not self.draft_cost >= 0:
            raise ValueError(f"draft_cost must be >= 0, got {self.draft_cost}")

    def acceptance_estimate(self, history: RoundHistory) -> float:
        accepted = sum(history.accepted)
        rejected = sum(1 for p, a in zip(history.proposed, history.accepted) if p > 0 and a < p)
        alpha = self.prior_acceptance * self.prior_weight + accepted
        beta = (1 - self.prior_acceptance) * self.prior_weight + rejected
        return alpha / (alpha + beta)

    def expected_rate(self, g: int, a: float) -> float:
        """Expected committed stages per unit cost for ``g`` proposals."""
        committed = sum(a**i for i in range(g + 1))
        return committed / (1 + g * self.draft_cost)

    def next_gamma(self, history: RoundHistory) -> int:
        a = self.acceptance_estimate(history)
        best_g, best_rate = 0, 1.0
        for g in range(1, self.max_gamma + 1):
            rate = self.expected_rate(g, a)
            if rate > best_rate + 1e-12:
                best_g, best_rate = g, rate
        return best_g

    def describe(self) -> str:
        return f"adaptive(max={self.max_gamma}, draft_cost={self.draft_cost})"


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
