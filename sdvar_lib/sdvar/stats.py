"""Statistics of one generation call, and the output a decoder returns with them.

:class:`SDVARStats` is immutable: every step returns new statistics (``with_*``/``after_*``), so
statistics belong to the inference state they describe. Committing twice from the same state gives
two states whose statistics each count that round once, never twice.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import torch

__all__ = ["SDVARStats", "SDVAROutput", "pooled_stage_acceptance"]


def _zeros(n: int) -> list[int]:
    return [0] * n


@dataclass(frozen=True)
class SDVARStats:
    """Counters of one generation call (target/draft passes, rounds, acceptance per stage, time)."""

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
        proposed_tokens = list(self.proposed_tokens_per_stage)
        proposed_stages = list(self.proposed_stages_per_stage)
        accepted_stages = list(self.accepted_stages_per_stage)
        accepted_S = None
        for si, accepted_Bl, ok in judged:
            proposed_tokens[si] += accepted_Bl.numel()
            proposed_stages[si] += 1
            accepted_stages[si] += int(ok)
            if accepted_S is None:  # a new tensor: the statistics of the state before stay as they were
                accepted_S = (self.accepted_tokens_S.clone() if self.accepted_tokens_S is not None
                              else torch.zeros(self.num_stages, dtype=torch.long, device=accepted_Bl.device))
            accepted_S[si] += accepted_Bl.sum()
        if accepted_S is None:
            accepted_S = self.accepted_tokens_S
        return replace(
            self, target_passes=self.target_passes + target_passes, draft_passes=self.draft_passes + draft_passes,
            rounds=self.rounds + 1, gamma_per_round=self.gamma_per_round + [gamma],
            stages_accepted_per_round=self.stages_accepted_per_round + [sum(ok for _, _, ok in judged)],
            stages_committed_per_round=self.stages_committed_per_round + [committed],
            proposed_tokens_per_stage=proposed_tokens, proposed_stages_per_stage=proposed_stages,
            accepted_stages_per_stage=accepted_stages, accepted_tokens_S=accepted_S,
        )

    def with_wall_time(self, seconds: float) -> SDVARStats:
        return replace(self, wall_time_s=seconds)

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
        )

    def summary(self) -> str:
        acc = ", ".join("-" if a is None else f"{a:.2f}" for a in self.token_acceptance_per_stage)
        return (
            f"target passes {self.target_passes}, draft passes {self.draft_passes}, rounds {self.rounds}, "
            f"gamma/round {self.gamma_per_round}, accepted stages/round {self.stages_accepted_per_round}, "
            f"token acceptance per stage [{acc}], {self.wall_time_s * 1000:.1f} ms"
        )


def pooled_stage_acceptance(stats: Sequence[SDVARStats]) -> list[float | None]:
    """Stage acceptance per stage pooled over calls: accepted / verified proposals (``None``: never verified)."""
    if not stats:
        return []
    S = stats[0].num_stages
    proposed = [sum(s.proposed_stages_per_stage[i] for s in stats) for i in range(S)]
    accepted = [sum(s.accepted_stages_per_stage[i] for s in stats) for i in range(S)]
    return [a / p if p else None for a, p in zip(accepted, proposed)]


@dataclass
class SDVAROutput:
    """Images in ``[0, 1]``, committed tokens of every stage, labels and statistics."""

    images_B3HW: torch.Tensor
    tokens_per_stage: list[torch.Tensor]
    label_B: torch.Tensor
    f_hat_BChw: torch.Tensor
    stats: SDVARStats
