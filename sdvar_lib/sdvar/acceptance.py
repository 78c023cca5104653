"""Acceptance policies of SDVAR: decide, per proposed stage, which draft tokens the target keeps.

A policy sees one stage at a time: the draft's proposals ``x`` ``(B, l)``, the draft's sampling
distribution ``q`` and the target's ``p`` ``(B, l, V)`` (both after CFG, top-k and top-p). It
returns a :class:`StageVerdict`: which tokens were accepted, whether each sample accepts the stage
as a whole, and the tokens to commit if this stage turns out to be the first one not fully
accepted (accepted proposals kept, the rest corrected).

- :class:`ExactPolicy` (default): token-wise speculative sampling, lossless.
- :class:`Top1MatchPolicy`: the research fork's lossy rule on argmax agreement, judged per sample
  (the fork pooled the whole batch and fixed the threshold at 0.5; ``docs/MIGRATING.md``).
- :class:`RelaxedPolicy`: LANTERN-style latent-neighbourhood pooling under a total-variation
  budget; with budget 0 it draws exactly what :class:`ExactPolicy` draws.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch

from sdvar_lib.models.sampling import sample_from_probs
from sdvar_lib.util.checks import check_int, check_number

__all__ = [
    "StageVerdict",
    "AcceptancePolicy",
    "ExactPolicy",
    "Top1MatchPolicy",
    "RelaxedPolicy",
    "POLICY_NAMES",
    "make_policy",
    "residual_distribution",
]


@dataclass
class StageVerdict:
    """Outcome of verifying one proposed stage."""

    accepted_Bl: torch.Tensor
    """Per token: the proposal was accepted (bool)."""
    stage_accepted_B: torch.Tensor
    """Per sample: the whole stage is accepted, so later proposals of this sample may stand."""
    tokens_if_last_Bl: torch.Tensor
    """Tokens committed for this stage if it is the first stage not accepted by every sample."""

    @property
    def all_accepted(self) -> bool:
        return bool(self.stage_accepted_B.all())


def residual_distribution(p_BlV: torch.Tensor, q_BlV: torch.Tensor) -> torch.Tensor:
    """``normalize(max(p - q, 0))``; where ``p == q`` (nothing left) it falls back to ``p``."""
    resid = (p_BlV - q_BlV).clamp_min(0)
    mass = resid.sum(dim=-1, keepdim=True)
    return torch.where(mass > 0, resid / mass.clamp_min(torch.finfo(resid.dtype).tiny), p_BlV)


def _gather(probs_BlV: torch.Tensor, idx_Bl: torch.Tensor) -> torch.Tensor:
    return probs_BlV.gather(-1, idx_Bl.unsqueeze(-1)).squeeze(-1)


def _speculative_verdict(
    target_mass_Bl: torch.Tensor,
    p_BlV: torch.Tensor,
    q_BlV: torch.Tensor,
    proposals_Bl: torch.Tensor,
    rng: torch.Generator | None,
) -> StageVerdict:
    """Accept ``x`` with probability ``min(1, target_mass(x) / q(x))``, else draw from the residual."""
    q_x = _gather(q_BlV, proposals_Bl)
    u_Bl = torch.rand(proposals_Bl.shape, generator=rng, device=proposals_Bl.device)
    accepted = u_Bl * q_x < target_mass_Bl  # u < p/q without dividing by a possibly tiny q
    corrections = sample_from_probs(residual_distribution(p_BlV, q_BlV), rng)
    tokens = torch.where(accepted, proposals_Bl, corrections)
    return StageVerdict(accepted_Bl=accepted, stage_accepted_B=accepted.all(dim=1), tokens_if_last_Bl=tokens)


@dataclass(frozen=True)
class AcceptancePolicy:
    """Base class, a frozen dataclass like its subclasses (a policy's options never change); subclasses
    implement :meth:`verify_stage` and set ``name``, ``lossless`` and ``token_level``."""

    name: ClassVar[str] = "policy"
    lossless: ClassVar[bool] = False
    token_level: ClassVar[bool] = True
    """Needs the proposals to be tokens drawn from ``q`` (rules out ``more_smooth``)."""

    def prepare(self, codebook_VC: torch.Tensor) -> object | None:
        """Per-call precomputation from the VQ codebook, passed back as ``context``."""
        return None

    def verify_stage(
        self,
        si: int,
        proposals_Bl: torch.Tensor,
        q_BlV: torch.Tensor,
        p_BlV: torch.Tensor,
        rng: torch.Generator | None,
        context: object | None = None,
    ) -> StageVerdict:
        raise NotImplementedError

    def describe(self) -> str:
        return self.name


@dataclass(frozen=True)
class ExactPolicy(AcceptancePolicy):
    """Token-wise speculative sampling: accept ``x`` w.p. ``min(1, p(x)/q(x))``, else draw from ``max(p-q, 0)``.

    Tokens of one stage are conditionally independent given earlier stages, so every committed
    stage is distributed exactly as the target's ``p``.
    """

    name: str = field(default="exact", init=False)
    lossless: bool = field(default=True, init=False)

    def verify_stage(self, si, proposals_Bl, q_BlV, p_BlV, rng, context=None):
        return _speculative_verdict(_gather(p_BlV, proposals_Bl), p_BlV, q_BlV, proposals_Bl, rng)


@dataclass(frozen=True)
class Top1MatchPolicy(AcceptancePolicy):
    """Accept a stage when at least ``threshold`` of its proposals equal the target's argmax (lossy).

    A sample that rejects the stage gets a fresh draw from ``p`` for all of its tokens.
    """

    threshold: float = 0.9
    name: str = field(default="top1_match", init=False)

    def __post_init__(self) -> None:
        check_number(self.threshold, "top1_match threshold (fraction of matching proposals)", 0.0, 1.0, min_inclusive=False)

    def verify_stage(self, si, proposals_Bl, q_BlV, p_BlV, rng, context=None):
        matches = proposals_Bl == p_BlV.argmax(dim=-1)
        stage_ok = matches.float().mean(dim=1) >= self.threshold
        resampled = sample_from_probs(p_BlV, rng)
        tokens = torch.where(stage_ok.unsqueeze(1), proposals_Bl, resampled)
        return StageVerdict(accepted_Bl=matches, stage_accepted_B=stage_ok, tokens_if_last_Bl=tokens)

    def describe(self) -> str:
        return f"top1_match(threshold={self.threshold})"


@dataclass(frozen=True)
class RelaxedPolicy(AcceptancePolicy):
    """LANTERN-style relaxed acceptance over latent neighbourhoods of the VQ codebook (lossy), within a
    total-variation budget.

    For every token value ``y`` the target mass is pooled over ``y``'s nearest codebook entries (L2
    distance of the embeddings, ``y`` first): neighbours join in order of proximity while the pooled
    extra mass stays ``<= budget``. Where the draft over-proposes ``y`` (``q(y) > p(y)``), pooling lets
    the stage commit up to ``min(q(y), pooled(y))`` of ``y`` instead of ``p(y)``: an excess
    ``e(y) = min(q(y), pooled(y)) - min(q(y), p(y))``. The excesses of a token position are scaled by
    ``min(1, budget / sum_y e(y))``, so the committed law ``c`` satisfies ``TV(c, p) = sum_y scaled e(y)
    <= budget`` (the rejected mass shrinks by the same amount, taken from the under-proposed tokens in
    proportion to ``max(p - q, 0)``). The proposal ``x`` is accepted w.p.
    ``(min(p(x), q(x)) + scaled e(x)) / q(x)``; a rejection draws from ``normalize(max(p - q, 0))`` as in
    :class:`ExactPolicy`. Tokens committed beyond ``p`` are over-proposed tokens with target mass in
    their latent neighbourhood. With ``budget == 0`` nothing is pooled and the random draws are exactly
    those of :class:`ExactPolicy`.
    """

    budget: float = 0.1
    neighbours: int = 8
    name: str = field(default="relaxed", init=False)

    def __post_init__(self) -> None:
        check_number(self.budget, "relaxed budget (total variation of the committed law from p)", 0.0, 1.0)
        check_int(self.neighbours, "relaxed neighbours", 1)

    @property
    def lossless(self) -> bool:  # type: ignore[override]
        return self.budget == 0

    def prepare(self, codebook_VC: torch.Tensor) -> torch.Tensor:
        """Indices ``(V, k)`` of each codebook entry's ``k`` nearest entries by L2 (itself first); ``k`` is
        ``neighbours``, or the whole codebook where it has fewer entries (the default 8 on a tiny codebook)."""
        k = min(self.neighbours, codebook_VC.shape[0])
        d_VV = torch.cdist(codebook_VC.float(), codebook_VC.float())
        d_VV.fill_diagonal_(-1.0)
        return d_VV.topk(k, dim=1, largest=False).indices

    def _pool(self, p_Blk: torch.Tensor) -> torch.Tensor:
        """``p`` of the first of ``k`` neighbours plus the largest proximity-ordered prefix of the others' mass
        within the budget (the cumulative sum is non-decreasing, so "<= budget" is a prefix)."""
        extra = p_Blk[..., 1:].cumsum(dim=-1)
        if extra.shape[-1] == 0:
            return p_Blk[..., 0]
        return p_Blk[..., 0] + extra.masked_fill(extra > self.budget, 0.0).amax(dim=-1)

    def pooled_mass(self, p_BlV: torch.Tensor, proposals_Bl: torch.Tensor, neigh_Vk: torch.Tensor) -> torch.Tensor:
        """The pooled target mass of each proposal (``p(x)`` plus neighbour mass within the budget)."""
        return self._pool(p_BlV.gather(-1, neigh_Vk[proposals_Bl]))

    def committed_mass(self, p_BlV: torch.Tensor, q_BlV: torch.Tensor, neigh_Vk: torch.Tensor) -> torch.Tensor:
        """Mass ``(B, l, V)`` the stage commits of each token value from accepted proposals:
        ``min(p, q)`` plus the over-proposed tokens' pooled excess, scaled to total at most ``budget``."""
        pooled_BlV = self._pool(p_BlV[..., neigh_Vk])
        floor_BlV = torch.minimum(p_BlV, q_BlV)
        excess_BlV = (torch.minimum(q_BlV, pooled_BlV) - floor_BlV).clamp_min(0.0)
        total_Bl1 = excess_BlV.sum(dim=-1, keepdim=True)
        scale_Bl1 = torch.where(total_Bl1 > self.budget, self.budget / total_Bl1.clamp_min(1e-30), torch.ones_like(total_Bl1))
        return floor_BlV + excess_BlV * scale_Bl1

    def verify_stage(self, si, proposals_Bl, q_BlV, p_BlV, rng, context=None):
        if self.budget == 0:
            target_mass = _gather(p_BlV, proposals_Bl)
        else:
            if context is None:
                raise ValueError("relaxed policy with a budget > 0 needs its neighbourhoods: pass context=prepare(codebook)")
            target_mass = _gather(self.committed_mass(p_BlV, q_BlV, context), proposals_Bl)
        return _speculative_verdict(target_mass, p_BlV, q_BlV, proposals_Bl, rng)

    def describe(self) -> str:
        return f"relaxed(budget={self.budget}, neighbours={self.neighbours})"


POLICY_NAMES = ("exact", "top1_match", "relaxed")


def make_policy(policy: str | AcceptancePolicy, **kwargs) -> AcceptancePolicy:
    """A policy from its name (with keyword arguments) or an instance."""
    if isinstance(policy, AcceptancePolicy):
        if kwargs:
            raise ValueError(f"policy options {sorted(kwargs)} are only allowed with a policy name")
        if type(policy).verify_stage is AcceptancePolicy.verify_stage:
            raise TypeError(f"policy {type(policy).__name__} must implement verify_stage (AcceptancePolicy is a base "
                            f"class); use one of {', '.join(POLICY_NAMES)} or a subclass that implements it")
        return policy
    if not isinstance(policy, str):
        raise TypeError(f"policy must be one of {', '.join(POLICY_NAMES)} or an AcceptancePolicy, got {policy!r}")
    if policy == "exact":
        if kwargs:
            raise ValueError(f"policy 'exact' takes no options, got {sorted(kwargs)}")
        return ExactPolicy()
    options = {"top1_match": ("threshold",), "relaxed": ("budget", "neighbours")}.get(policy)
    if options is not None:
        unknown = sorted(set(kwargs) - set(options))
        if unknown:
            raise ValueError(f"policy {policy!r} takes the options {', '.join(options)}; got unknown {unknown}")
        return (Top1MatchPolicy if policy == "top1_match" else RelaxedPolicy)(**kwargs)
    raise ValueError(f"unknown policy {policy!r}; allowed: {', '.join(POLICY_NAMES)} or an AcceptancePolicy instance")
