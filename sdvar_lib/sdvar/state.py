"""The data of an SDVAR round: the inference state between rounds and what each step hands to the next.

One round (:meth:`sdvar_lib.sdvar.decoder.SDVAR.run_round`) goes
``SDVARInferenceState`` -> :class:`DraftProposal` (draft) -> :class:`CombinedQuery` (verify input)
-> :class:`VerifyResult` (target logits and ``p``) -> :class:`AcceptanceResult` (verdicts, committed
tokens) -> a new ``SDVARInferenceState`` (commit), recorded as a :class:`RoundRecord`.

What belongs together is linked by identity: every state and every step's result has a ``key`` (unique
in the process, :func:`new_key`), and each result records the key of what it was made from (a
proposal its state's, a verify result its proposal's, an acceptance its proposal's and its verify
result's). Every step checks the links of what it is given before any model call and refuses, with
a ``ValueError`` naming the mismatch, a proposal of another state (an older state of the same call,
or another call), a verify result of another proposal, an acceptance of another one. A result made
by hand (tests, the harness's references: the link left ``None``) is checked for its shapes only.

A state's tokens, ``f_hat`` maps, history and statistics are its own (immutable), but its two KV
caches and its generator are the call's, shared with every state before and after it: the caches
hold the newest state's stages. So only the newest state of a call is *current*; every state
records the runs' epochs when it took their caches over (:func:`take_over`), and every step refuses
a stale state with a ``ValueError`` before any model call (:meth:`SDVARInferenceState.check_current`).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field, replace

import torch

from sdvar_lib.models.run import ModelRun
from sdvar_lib.models.sampling import SamplingConfig
from sdvar_lib.sdvar.acceptance import AcceptancePolicy, StageVerdict
from sdvar_lib.sdvar.gamma import GammaRule, RoundContext, RoundHistory
from sdvar_lib.sdvar.stats import SDVARStats

__all__ = [
    "SDVARInferenceState",
    "new_key",
    "take_over",
    "successor",
    "DraftProposal",
    "CombinedQuery",
    "VerifyResult",
    "AcceptanceResult",
    "RoundRecord",
]


_KEYS = itertools.count(1)


def new_key() -> int:
    """A fresh identity for a state or a step's result (unique in this process)."""
    return next(_KEYS)


@dataclass(frozen=True)
class SDVARInferenceState:
    """Everything between two rounds. Rounds return a new state instead of mutating this one.

    ``tokens``/``f_hats`` hold the committed stages ``< c``; the target cache holds the inputs of
    stages ``< c``, the draft cache those of stages ``< d`` with ``d <= c``. ``stats`` counts what
    the rounds that led to this state did. ``epochs`` are the draft's and the target's run epochs
    when this state took their caches over; once a newer state takes them over this one is stale.
    ``key`` is the state's identity, which the proposals drafted from it record.
    """

    B: int
    label_B: torch.Tensor
    sampling: SamplingConfig
    gamma_rule: GammaRule
    policy: AcceptancePolicy
    policy_context: object | None
    rng: torch.Generator | None
    draft: ModelRun
    target: ModelRun
    stats: SDVARStats
    tokens: tuple[torch.Tensor, ...] = ()
    f_hats: tuple[torch.Tensor, ...] = ()
    history: RoundHistory = RoundHistory()
    verbose: bool = False
    epochs: tuple[int, int] = (0, 0)
    key: int = field(default_factory=new_key)

    @property
    def c(self) -> int:
        """Number of committed stages (the next stage to generate)."""
        return len(self.tokens)

    @property
    def num_stages(self) -> int:
        return self.target.model.num_stages

    @property
    def done(self) -> bool:
        return self.c >= self.num_stages

    @property
    def f_hat(self) -> torch.Tensor:
        return self.f_hats[-1]

    def check_current(self) -> None:
        """Raise ``ValueError`` unless this is the newest state of its call (the one its KV caches hold)."""
        now = (self.draft.epoch, self.target.epoch)
        if now != self.epochs:
            raise ValueError(
                f"this SDVAR state (c={self.c} committed stages) is stale: a newer state took over its KV caches "
                f"(run epochs {now}, this state's {self.epochs}) - a commit or target step from it or from an "
                "older state, or a new call on the same runs. A state's caches and generator are shared with the "
                "states after it, so only the newest state can run steps: continue from the state the last commit "
                "returned (RoundRecord.state), or start again with prepare() (the same g_seed repeats the call)."
            )

    def round_context(self) -> RoundContext:
        """What a gamma rule sees before the next round."""
        return RoundContext(c=self.c, num_stages=self.num_stages, draft_stages_held=self.draft.cache.stages_held(),
                            history=self.history)


def take_over(draft: ModelRun, target: ModelRun) -> tuple[int, int]:
    """Advance both runs' epochs for a new current state; returns the epochs that state records."""
    draft.epoch += 1
    target.epoch += 1
    return draft.epoch, target.epoch


def successor(state: SDVARInferenceState, **changes) -> SDVARInferenceState:
    """The state after a round or a target step: ``changes`` applied, a new key, and the caches taken over
    (``state`` is stale from now on)."""
    return replace(state, **changes, epochs=take_over(state.draft, state.target), key=new_key())


@dataclass(frozen=True)
class DraftProposal:
    """The draft's proposals for stages ``start .. start + gamma - 1``."""

    start: int
    tokens: list[torch.Tensor]
    q_probs: list[torch.Tensor]
    """The draft's sampling distribution ``(B, l, V)`` of every proposed stage."""
    f_hats: list[torch.Tensor]
    """``f_hat`` after each proposed stage (on top of the committed prefix)."""
    draft_cache_before: int
    """Draft cache length before the draft read its missing inputs."""
    draft_passes: int = 0
    """Draft passes the proposal took (one per proposed stage)."""
    state_key: int | None = None
    """Key of the state it was drafted from (``None``: made by hand, checked for its shapes only)."""
    key: int = field(default_factory=new_key)

    @property
    def gamma(self) -> int:
        return len(self.tokens)

    @property
    def stages(self) -> list[int]:
        return list(range(self.start, self.start + self.gamma))


@dataclass(frozen=True)
class CombinedQuery:
    """The target's verify chunk: inputs of ``stages`` (CFG-doubled) placed at ``[position, + l)``."""

    x_2BlC: torch.Tensor
    stages: list[int]
    position: int
    stage_ids_l: torch.Tensor


@dataclass(frozen=True)
class VerifyResult:
    """Guided target logits and sampling distributions of every stage of the verify chunk (one target pass)."""

    stages: list[int]
    logits: list[torch.Tensor]
    p_probs: list[torch.Tensor]
    target_passes: int = 1
    proposal_key: int | None = None
    """Key of the proposal it verified (``None``: made by hand, checked for its shapes only)."""
    key: int = field(default_factory=new_key)


@dataclass(frozen=True)
class AcceptanceResult:
    """Verdicts of the verified stages and what the round commits."""

    verdicts: list[StageVerdict]
    """Verdicts of the stages up to and including the first one not accepted by every sample."""
    stage_all_accepted: list[bool]
    """Per verdict: every sample accepted the stage (read from the device once per round)."""
    first_rejected: int | None
    """Stage index ``r`` of the first stage not accepted by every sample (``None``: all accepted)."""
    committed: list[torch.Tensor]
    """Tokens committed by this round, stages ``c ..`` in order (corrected stage or bonus included)."""
    bonus: bool
    target_passes: int = 1
    """Target passes of the verification these verdicts come from."""
    proposal_key: int | None = None
    """Key of the proposal it judged (``None``: made by hand, checked for its shapes only)."""
    verify_key: int | None = None
    """Key of the verify result it judged with."""
    key: int = field(default_factory=new_key)


@dataclass(frozen=True)
class RoundRecord:
    """One round: what it did and the state after it."""

    index: int
    start_stage: int
    gamma: int
    accepted_stages: int
    committed_stages: int
    first_rejected: int | None
    bonus: bool
    state: SDVARInferenceState
    acceptance: AcceptanceResult | None = None

    @property
    def target_stage_acceptance(self) -> list[float]:
        """Token acceptance rate of every verified stage (reads from the device)."""
        if self.acceptance is None:
            return []
        return [float(v.accepted_Bl.float().mean()) for v in self.acceptance.verdicts]
