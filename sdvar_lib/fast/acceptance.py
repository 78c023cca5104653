"""Acceptance tests of the policies as device code: what an SDVAR round program runs after its verify pass.

A :class:`DevicePolicy` is an acceptance policy (:mod:`sdvar_lib.sdvar.acceptance`) split in two:

- :attr:`DevicePolicy.draws`: the random numbers the policy's ``verify_stage`` draws for one stage, in
  its order (uniforms as ``torch.rand`` makes them, the ``Exp(1)`` noise ``torch.multinomial`` draws).
  The host makes these draws from the call's generator before the round's program runs, so the
  random stream is the eager round's;
- :meth:`DevicePolicy.verdict`: pure tensor code from the proposals, ``q``, ``p`` and those draws to the
  verdict (accepted tokens, stage accepted per sample, the tokens to commit if the stage is the first
  one not accepted by every sample). No host synchronisation, no data-dependent Python control flow:
  a CUDA graph holds it, and on the CPU the very same code runs (that is what the tests check, draw
  for draw against the eager policies and in law against the target's ``p``).

``torch.multinomial`` with one sample per row is ``argmax(probs / Exp(1))`` (:func:`draw_from`), which is
how the device code draws a correction or a resample.

:func:`device_policy` maps a policy to its device form by its exact type (a subclass, e.g. a policy
a test or a user derived, is not assumed to keep its parent's verdict: it runs the eager round).
Forms are registered with :func:`register_device_policy`; the benchmark registers its
acceptance scenarios (:mod:`sdvar_lib.bench.scenarios`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import torch

from sdvar_lib.sdvar.acceptance import AcceptancePolicy, ExactPolicy, RelaxedPolicy, Top1MatchPolicy, residual_distribution

__all__ = [
    "Draw",
    "DevicePolicy",
    "ExactDevice",
    "Top1MatchDevice",
    "RelaxedDevice",
    "draw_from",
    "speculative_verdict",
    "register_device_policy",
    "device_policy",
]


@dataclass(frozen=True)
class Draw:
    """One random draw of a stage's verdict: ``kind`` ``"uniform"`` (``torch.rand``) or ``"exponential"`` (the
    ``Exp(1)`` noise of ``torch.multinomial``), of ``shape`` for a stage of ``B`` samples, ``l`` tokens, ``V`` values."""

    name: str
    kind: str
    shape: Callable[[int, int, int], tuple[int, ...]]

    def __post_init__(self) -> None:
        if self.kind not in ("uniform", "exponential"):
            raise ValueError(f"a draw is 'uniform' or 'exponential', got {self.kind!r}")

    def fill_(self, out: torch.Tensor, rng: torch.Generator | None) -> None:
        """Draw into ``out`` (the same numbers ``torch.rand`` / ``torch.multinomial`` take from ``rng``)."""
        if self.kind == "uniform":
            out.uniform_(0.0, 1.0, generator=rng)
        else:
            out.exponential_(generator=rng)


UNIFORM_PER_TOKEN = Draw("u_Bl", "uniform", lambda B, l, V: (B, l))
NOISE_PER_TOKEN = Draw("e_nV", "exponential", lambda B, l, V: (B * l, V))


def draw_from(probs_BlV: torch.Tensor, noise_nV: torch.Tensor) -> torch.Tensor:
    """One draw per token from ``probs`` with pre-drawn ``Exp(1)`` noise: ``argmax(probs / noise)`` (``(B, l)``),
    the draw ``torch.multinomial(probs, 1)`` makes with that noise."""
    B, l, V = probs_BlV.shape
    return torch.argmax(probs_BlV.reshape(B * l, V) / noise_nV, dim=-1).view(B, l)


def _gather(probs_BlV: torch.Tensor, idx_Bl: torch.Tensor) -> torch.Tensor:
    return probs_BlV.gather(-1, idx_Bl.unsqueeze(-1)).squeeze(-1)


def speculative_verdict(target_mass_Bl: torch.Tensor, p_BlV: torch.Tensor, q_BlV: torch.Tensor, x_Bl: torch.Tensor,
                        u_Bl: torch.Tensor, e_nV: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Accept ``x`` iff ``u * q(x) < target_mass(x)`` (probability ``min(1, target_mass(x) / q(x))``), else take the
    draw from ``normalize(max(p - q, 0))``: ``(accepted_Bl, stage_accepted_B, tokens_if_last_Bl)``."""
    accepted = u_Bl * _gather(q_BlV, x_Bl) < target_mass_Bl
    corrections = draw_from(residual_distribution(p_BlV, q_BlV), e_nV)
    return accepted, accepted.all(dim=1), torch.where(accepted, x_Bl, corrections)


class DevicePolicy:
    """A policy's verdict as device code; see the module docstring. Subclasses set :attr:`draws` and :meth:`verdict`."""

    draws: ClassVar[tuple[Draw, ...]] = ()

    def __init__(self, policy: AcceptancePolicy) -> None:
        self.policy = policy

    def check_stage(self, si: int) -> None:
        """Raise ``ValueError`` where the policy cannot judge stage ``si`` (checked before a program is built)."""

    def static_context(self, context: object | None) -> torch.Tensor | None:
        """The part of the call's policy context the verdict reads (a tensor a program may hold a copy of)."""
        return None

    def verdict(self, si: int, x_Bl: torch.Tensor, q_BlV: torch.Tensor, p_BlV: torch.Tensor,
                draws: dict[str, torch.Tensor], context: torch.Tensor | None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(accepted_Bl, stage_accepted_B, tokens_if_last_Bl)`` of stage ``si``
        (:class:`~sdvar_lib.sdvar.acceptance.StageVerdict`)."""
        raise NotImplementedError


class ExactDevice(DevicePolicy):
    """:class:`~sdvar_lib.sdvar.acceptance.ExactPolicy`: a uniform per token, then the residual's noise."""

    draws = (UNIFORM_PER_TOKEN, NOISE_PER_TOKEN)

    def verdict(self, si, x_Bl, q_BlV, p_BlV, draws, context):
        return speculative_verdict(_gather(p_BlV, x_Bl), p_BlV, q_BlV, x_Bl, draws["u_Bl"], draws["e_nV"])


class Top1MatchDevice(DevicePolicy):
    """:class:`~sdvar_lib.sdvar.acceptance.Top1MatchPolicy`: the resample's noise only."""

    draws = (NOISE_PER_TOKEN,)

    def verdict(self, si, x_Bl, q_BlV, p_BlV, draws, context):
        matches = x_Bl == p_BlV.argmax(dim=-1)
        stage_ok = matches.float().mean(dim=1) >= self.policy.threshold
        resampled = draw_from(p_BlV, draws["e_nV"])
        return matches, stage_ok, torch.where(stage_ok.unsqueeze(1), x_Bl, resampled)


class RelaxedDevice(DevicePolicy):
    """:class:`~sdvar_lib.sdvar.acceptance.RelaxedPolicy`: as exact, with the pooled committed mass as target mass."""

    draws = (UNIFORM_PER_TOKEN, NOISE_PER_TOKEN)

    def static_context(self, context):
        if self.policy.budget == 0:
            return None
        if not isinstance(context, torch.Tensor):
            raise ValueError("relaxed policy with a budget > 0 needs its neighbourhoods: pass context=prepare(codebook)")
        return context

    def verdict(self, si, x_Bl, q_BlV, p_BlV, draws, context):
        if self.policy.budget == 0:
            target_mass = _gather(p_BlV, x_Bl)
        else:
            target_mass = _gather(self.policy.committed_mass(p_BlV, q_BlV, context), x_Bl)
        return speculative_verdict(target_mass, p_BlV, q_BlV, x_Bl, draws["u_Bl"], draws["e_nV"])


_FORMS: dict[type, Callable[[AcceptancePolicy], DevicePolicy]] = {
    ExactPolicy: ExactDevice,
    Top1MatchPolicy: Top1MatchDevice,
    RelaxedPolicy: RelaxedDevice,
}


def register_device_policy(policy_type: type, form: Callable[[AcceptancePolicy], DevicePolicy]) -> None:
    """Give policies of exactly ``policy_type`` a device form (``form(policy)`` -> :class:`DevicePolicy`)."""
    if not (isinstance(policy_type, type) and issubclass(policy_type, AcceptancePolicy)):
        raise TypeError(f"policy_type must be an AcceptancePolicy subclass, got {policy_type!r}")
    if not callable(form):
        raise TypeError(f"form must be callable (policy) -> DevicePolicy, got {form!r}")
    _FORMS[policy_type] = form


def device_policy(policy: AcceptancePolicy) -> DevicePolicy | None:
    """The device form of ``policy`` (by its exact type), or ``None`` (the round then runs eagerly)."""
    form = _FORMS.get(type(policy))
    return None if form is None else form(policy)
