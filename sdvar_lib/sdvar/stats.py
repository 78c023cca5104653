"""Statistics of one generation call, and the output a decoder returns with them.

:class:`SDVARStats` is immutable: every step returns new statistics (``with_*``/``after_*``), so
statistics belong to the inference state they describe. Committing twice from the same state gives
two states whose statistics each count that round once, never twice.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import torch

from sdvar_lib.util.checks import check_instance, check_int, check_sequence

__all__ = ["SDVARStats", "SDVAROutput", "PooledStats", "pool_stats", "pooled_stage_acceptance"]


def _zeros(n: int) -> list[int]:
    return [0] * n


@dataclass(frozen=True)
class SDVARStats:
    """Counters of one generation call (target/draft passes, rounds, acceptance per stage, time).

    ``wall_time_s`` is the whole call; ``one_off_s`` the part of it spent on work done once per process
    and shape (the fast path's kernel compiles and CUDA-graph captures), so ``steady_time_s``, their
    difference, is what the same call costs from then on: the time to report.
    """

    num_stages: int
    target_passes: int = 0
    draft_passes: int = 0
    rounds: int = 0
    gamma_per_round: list[int] = field(default_factory=list)
    stages_accepted_per_round: list[int] = field(default_factory=list)
    stages_committed_per_round: list[int] = field(default_factory=list)
    proposed_tokens_per_stage: list[int] = field(default_factory=list)
    proposed_stages_per_stage: list[int] = field(default_factory=list)
    accepted_stages_per_stage: list[int] = field(default_factory=list)
    wall_time_s: float = 0.0
    one_off_s: float = 0.0
    accepted_tokens_S: torch.Tensor | None = None
    """Accepted draft tokens per stage, counted on the models' device (no host sync per round);
    read it through :attr:`accepted_tokens_per_stage`."""

    def __post_init__(self) -> None:
        for name in ("proposed_tokens_per_stage", "proposed_stages_per_stage", "accepted_stages_per_stage"):
            if not getattr(self, name):
                object.__setattr__(self, name, _zeros(self.num_stages))

    # ---- updates (each returns new statistics) ----
    def with_passes(self, target: int = 0, draft: int = 0) -> SDVARStats:
        return replace(self, target_passes=self.target_passes + target, draft_passes=self.draft_passes + draft)

    def after_target_steps(self, n: int = 1) -> SDVARStats:
        """``n`` rounds that were plain target steps (gamma 0), one target pass each."""
        return replace(
            self, target_passes=self.target_passes + n, rounds=self.rounds + n,
            gamma_per_round=self.gamma_per_round + [0] * n, stages_accepted_per_round=self.stages_accepted_per_round + [0] * n,
            stages_committed_per_round=self.stages_committed_per_round + [1] * n,
        )

    def after_round(
        self,
        target_passes: int,
        draft_passes: int,
        gamma: int,
        committed: int,
        judged: Sequence[tuple[int, torch.Tensor, bool]],
    ) -> SDVARStats:
        """One drafting round: its passes, ``gamma``, committed stages and every judged stage as
        ``(stage, accepted_Bl, accepted by every sample)``."""
        counted = self.after_round_counted(target_passes, draft_passes, gamma, committed,
                                           [(si, accepted_Bl.numel(), ok) for si, accepted_Bl, ok in judged])
        accepted_S = None
        for si, accepted_Bl, _ in judged:
            if accepted_S is None:  # a new tensor: the statistics of the state before stay as they were
                accepted_S = (self.accepted_tokens_S.clone() if self.accepted_tokens_S is not None
                              else torch.zeros(self.num_stages, dtype=torch.long, device=accepted_Bl.device))
            accepted_S[si] += accepted_Bl.sum()
        return counted if accepted_S is None else replace(counted, accepted_tokens_S=accepted_S)

    def after_round_counted(
        self,
        target_passes: int,
        draft_passes: int,
        gamma: int,
        committed: int,
        judged: Sequence[tuple[int, int, bool]],
    ) -> SDVARStats:
        """:meth:`after_round` from host numbers, every judged stage as ``(stage, tokens judged, accepted by every
        sample)``; ``accepted_tokens_S`` stays as it is (a round that counts accepted tokens on the device, as the
        fast path's device rounds do, sets it itself)."""
        proposed_tokens = list(self.proposed_tokens_per_stage)
        proposed_stages = list(self.proposed_stages_per_stage)
        accepted_stages = list(self.accepted_stages_per_stage)
        for si, tokens, ok in judged:
            proposed_tokens[si] += tokens
            proposed_stages[si] += 1
            accepted_stages[si] += int(ok)
        return replace(
            self, target_passes=self.target_passes + target_passes, draft_passes=self.draft_passes + draft_passes,
            rounds=self.rounds + 1, gamma_per_round=self.gamma_per_round + [gamma],
            stages_accepted_per_round=self.stages_accepted_per_round + [sum(ok for _, _, ok in judged)],
            stages_committed_per_round=self.stages_committed_per_round + [committed],
            proposed_tokens_per_stage=proposed_tokens, proposed_stages_per_stage=proposed_stages,
            accepted_stages_per_stage=accepted_stages,
        )

    def with_wall_time(self, seconds: float, one_off_s: float = 0.0) -> SDVARStats:
        """The call's wall time and the one-off preparation it included (``0 <= one_off_s <= seconds``)."""
        if not 0.0 <= one_off_s <= seconds:
            raise ValueError(f"one-off seconds must be within [0, wall time {seconds}], got {one_off_s}")
        return replace(self, wall_time_s=seconds, one_off_s=one_off_s)

    @property
    def steady_time_s(self) -> float:
        """The call's wall time without its one-off preparation."""
        return self.wall_time_s - self.one_off_s

    # ---- reading ----
    @property
    def accepted_tokens_per_stage(self) -> list[int]:
        if self.accepted_tokens_S is None:
            return _zeros(self.num_stages)
        return [int(v) for v in self.accepted_tokens_S.tolist()]

    @property
    def token_acceptance_per_stage(self) -> list[float | None]:
        """Accepted / proposed draft tokens per stage (``None`` where nothing was proposed)."""
        return [a / p if p else None for a, p in zip(self.accepted_tokens_per_stage, self.proposed_tokens_per_stage)]

    @property
    def stage_acceptance_per_stage(self) -> list[float | None]:
        """Fraction of verified proposals of a stage that every sample accepted."""
        return [a / p if p else None for a, p in zip(self.accepted_stages_per_stage, self.proposed_stages_per_stage)]

    @property
    def token_acceptance(self) -> float | None:
        proposed = sum(self.proposed_tokens_per_stage)
        return sum(self.accepted_tokens_per_stage) / proposed if proposed else None

    def to_dict(self) -> dict:
        """JSON-ready counters (the device tensor read once)."""
        return dict(
            num_stages=self.num_stages, target_passes=self.target_passes, draft_passes=self.draft_passes,
            rounds=self.rounds, gamma_per_round=list(self.gamma_per_round),
            stages_accepted_per_round=list(self.stages_accepted_per_round),
            stages_committed_per_round=list(self.stages_committed_per_round),
            proposed_tokens_per_stage=list(self.proposed_tokens_per_stage),
            accepted_tokens_per_stage=self.accepted_tokens_per_stage,
            proposed_stages_per_stage=list(self.proposed_stages_per_stage),
            accepted_stages_per_stage=list(self.accepted_stages_per_stage), wall_time_s=self.wall_time_s,
            one_off_s=self.one_off_s,
        )

    def summary(self) -> str:
        acc = ", ".join("-" if a is None else f"{a:.2f}" for a in self.token_acceptance_per_stage)
        one_off = f" (+ {self.one_off_s:.1f} s one-off preparation)" if self.one_off_s else ""
        return (
            f"target passes {self.target_passes}, draft passes {self.draft_passes}, rounds {self.rounds}, "
            f"gamma/round {self.gamma_per_round}, accepted stages/round {self.stages_accepted_per_round}, "
            f"token acceptance per stage [{acc}], {self.steady_time_s * 1000:.1f} ms{one_off}"
        )


def _ratios(num: Sequence[int], den: Sequence[int]) -> list[float | None]:
    return [n / d if d else None for n, d in zip(num, den)]


@dataclass(frozen=True)
class PooledStats:
    """Counters summed over several calls (of one method, one batch size): what tables report."""

    num_stages: int
    calls: int
    target_passes: int
    draft_passes: int
    wall_time_s: float
    proposed_tokens_per_stage: tuple[int, ...]
    accepted_tokens_per_stage: tuple[int, ...]
    proposed_stages_per_stage: tuple[int, ...]
    accepted_stages_per_stage: tuple[int, ...]
    one_off_s: float = 0.0

    @property
    def steady_time_s(self) -> float:
        """The calls' wall time without their one-off preparation."""
        return self.wall_time_s - self.one_off_s

    @property
    def token_acceptance_per_stage(self) -> list[float | None]:
        return _ratios(self.accepted_tokens_per_stage, self.proposed_tokens_per_stage)

    @property
    def stage_acceptance_per_stage(self) -> list[float | None]:
        return _ratios(self.accepted_stages_per_stage, self.proposed_stages_per_stage)

    @property
    def token_acceptance(self) -> float | None:
        proposed = sum(self.proposed_tokens_per_stage)
        return sum(self.accepted_tokens_per_stage) / proposed if proposed else None

    def __add__(self, other: PooledStats) -> PooledStats:
        if other.num_stages != self.num_stages:
            raise ValueError(f"cannot pool statistics of {self.num_stages} and {other.num_stages} stages")

        def add(a: Sequence[int], b: Sequence[int]) -> tuple[int, ...]:
            return tuple(x + y for x, y in zip(a, b))

        return PooledStats(
            num_stages=self.num_stages, calls=self.calls + other.calls, target_passes=self.target_passes + other.target_passes,
            draft_passes=self.draft_passes + other.draft_passes, wall_time_s=self.wall_time_s + other.wall_time_s,
            proposed_tokens_per_stage=add(self.proposed_tokens_per_stage, other.proposed_tokens_per_stage),
            accepted_tokens_per_stage=add(self.accepted_tokens_per_stage, other.accepted_tokens_per_stage),
            proposed_stages_per_stage=add(self.proposed_stages_per_stage, other.proposed_stages_per_stage),
            accepted_stages_per_stage=add(self.accepted_stages_per_stage, other.accepted_stages_per_stage),
            one_off_s=self.one_off_s + other.one_off_s,
        )

    @classmethod
    def empty(cls, num_stages: int) -> PooledStats:
        zeros = (0,) * num_stages
        return cls(num_stages, 0, 0, 0, 0.0, zeros, zeros, zeros, zeros)

    @classmethod
    def of(cls, stats: SDVARStats) -> PooledStats:
        """One call's counters (reads the device's accepted-token counts once)."""
        return cls(
            num_stages=stats.num_stages, calls=1, target_passes=stats.target_passes, draft_passes=stats.draft_passes,
            wall_time_s=stats.wall_time_s, proposed_tokens_per_stage=tuple(stats.proposed_tokens_per_stage),
            accepted_tokens_per_stage=tuple(stats.accepted_tokens_per_stage),
            proposed_stages_per_stage=tuple(stats.proposed_stages_per_stage),
            accepted_stages_per_stage=tuple(stats.accepted_stages_per_stage), one_off_s=stats.one_off_s,
        )


def pool_stats(stats: Sequence[SDVARStats], num_stages: int | None = None) -> PooledStats:
    """The counters of several calls summed (``num_stages`` is needed only when ``stats`` is empty)."""
    stats = _check_stats_list(stats)
    if num_stages is not None:
        check_int(num_stages, "num_stages", 1)
    if not stats and num_stages is None:
        raise ValueError("pool_stats of no calls needs num_stages")
    total = PooledStats.empty(stats[0].num_stages if stats else num_stages)
    for s in stats:
        total = total + PooledStats.of(s)
    return total


def pooled_stage_acceptance(stats: Sequence[SDVARStats]) -> list[float | None]:
    """Stage acceptance per stage pooled over calls: accepted / verified proposals (``None``: never verified)."""
    stats = _check_stats_list(stats)
    return pool_stats(stats).stage_acceptance_per_stage if stats else []


def _check_stats_list(stats) -> tuple[SDVARStats, ...]:
    return check_sequence(stats, "stats", lambda s, label: check_instance(s, label, SDVARStats, "an SDVARStats"),
                          "SDVARStats (one per call)", non_empty=False)


@dataclass
class SDVAROutput:
    """Images in ``[0, 1]``, committed tokens of every stage, labels and statistics."""

    images_B3HW: torch.Tensor
    tokens_per_stage: list[torch.Tensor]
    label_B: torch.Tensor
    f_hat_BChw: torch.Tensor
    stats: SDVARStats
