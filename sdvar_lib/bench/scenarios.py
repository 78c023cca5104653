"""Acceptance scenarios: how SDVAR rows accept proposals when random weights make real acceptance meaningless.

A :class:`Scenario` is either the method's own acceptance policy (``exact``: real acceptance, which
random-weight models almost never give) or a :class:`ScenarioPolicy` that accepts a proposed stage
with a fixed per-stage probability (``all``: every proposal; ``profile``: a measured profile). The
per-stage profile helpers (:func:`fill_missing_stages`, :func:`map_profile_to_stages`,
:func:`scenario_stage_acceptance`) turn measured or assumed stage acceptance into priors and
``--acceptance-profile`` values.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from sdvar_lib.fast.acceptance import DevicePolicy, Draw, draw_from, register_device_policy
from sdvar_lib.models.sampling import sample_from_probs
from sdvar_lib.sdvar.acceptance import AcceptancePolicy, StageVerdict
from sdvar_lib.sdvar.registry import Method
from sdvar_lib.util.checks import check_bool, check_choice, check_probability

__all__ = [
    "SCENARIOS",
    "ScenarioPolicy",
    "ScenarioDevice",
    "Scenario",
    "make_scenarios",
    "fill_missing_stages",
    "scenario_stage_acceptance",
    "map_profile_to_stages",
]

SCENARIOS = ("exact", "all", "profile")
"""Scenario names of the command line: the method's own policy, every proposal accepted, a per-stage profile."""


@dataclass(frozen=True)
class ScenarioPolicy(AcceptancePolicy):
    """Accept a proposed stage with a fixed per-stage probability (timing scenarios, not a decoder).

    One draw per stage for the whole batch (``per_sample=False``) or one per sample. Accepted:
    the proposal is kept; rejected: the stage is drawn from the target's ``p``. Tokens stay valid,
    so the work done (and synchronisation) is that of a real call with that acceptance.
    """

    stage_probabilities: tuple[float, ...]
    per_sample: bool = False
    label: str = "scenario"
    name: str = field(default="scenario", init=False)

    def __post_init__(self) -> None:
        probs = self.stage_probabilities
        if not isinstance(probs, tuple) or len(probs) == 0:
            raise ValueError("stage_probabilities must be a non-empty tuple of probabilities, one per stage")
        for p in probs:
            check_probability(p, "every stage probability")
        check_bool(self.per_sample, "per_sample")

    @classmethod
    def all_accepted(cls, num_stages: int) -> ScenarioPolicy:
        return cls(stage_probabilities=(1.0,) * num_stages, label="all-accepted")

    def verify_stage(self, si, proposals_Bl, q_BlV, p_BlV, rng, context=None) -> StageVerdict:
        if not 0 <= si < len(self.stage_probabilities):
            raise ValueError(f"the scenario has {len(self.stage_probabilities)} stage probabilities, stage {si} asked")
        B, l = proposals_Bl.shape
        u = torch.rand((B if self.per_sample else 1,), generator=rng, device=proposals_Bl.device)
        stage_ok_B = (u < self.stage_probabilities[si]).expand(B)
        resampled = sample_from_probs(p_BlV, rng)
        tokens = torch.where(stage_ok_B.unsqueeze(1), proposals_Bl, resampled)
        return StageVerdict(accepted_Bl=stage_ok_B.unsqueeze(1).expand(B, l), stage_accepted_B=stage_ok_B,
                            tokens_if_last_Bl=tokens)

    def describe(self) -> str:
        if self.label != "scenario":
            return self.label
        return "profile[" + ",".join(f"{p:g}" for p in self.stage_probabilities) + "]"


class ScenarioDevice(DevicePolicy):
    """The device form of :class:`ScenarioPolicy` (:mod:`sdvar_lib.fast.acceptance`): a uniform per stage (or per
    sample), then the resample's noise, as its ``verify_stage`` draws them; SDVAR rounds of the fast path run it."""

    draws = (Draw("u_stage", "uniform", lambda B, l, V: (1,)), Draw("e_nV", "exponential", lambda B, l, V: (B * l, V)))

    def __init__(self, policy: ScenarioPolicy) -> None:
        super().__init__(policy)
        if policy.per_sample:
            self.draws = (Draw("u_sample", "uniform", lambda B, l, V: (B,)), self.draws[1])

    def check_stage(self, si: int) -> None:
        if not 0 <= si < len(self.policy.stage_probabilities):
            raise ValueError(f"the scenario has {len(self.policy.stage_probabilities)} stage probabilities, stage {si} asked")

    def verdict(self, si, x_Bl, q_BlV, p_BlV, draws, context):
        B, l = x_Bl.shape
        u = draws[self.draws[0].name]
        stage_ok_B = (u < self.policy.stage_probabilities[si]).expand(B)
        tokens = torch.where(stage_ok_B.unsqueeze(1), x_Bl, draw_from(p_BlV, draws["e_nV"]))
        return stage_ok_B.unsqueeze(1).expand(B, l), stage_ok_B, tokens


register_device_policy(ScenarioPolicy, ScenarioDevice)


@dataclass(frozen=True)
class Scenario:
    """How SDVAR rows accept: ``policy=None`` keeps the method's own policy (``exact``), else a :class:`ScenarioPolicy`."""

    name: str
    policy: AcceptancePolicy | None = None

    def apply(self, method: Method) -> Method:
        """The SDVAR ``method`` under this scenario (its own policy when the scenario has none)."""
        return method if self.policy is None else method.with_policy(self.policy)

    def describe(self, method: Method | None = None) -> str:
        """The scenario column of a row: ``"exact (random weights)"`` for an exact method's own policy."""
        if self.policy is not None:
            return self.policy.describe()
        own = method.policy.describe() if method is not None and method.policy is not None else "exact"
        return f"{own} (random weights)"


def make_scenarios(names: Sequence[str], num_stages: int, profile: Sequence[float] | None = None,
                   per_sample: bool = False) -> list[Scenario]:
    """The scenarios ``names`` (of :data:`SCENARIOS`) for a pair with ``num_stages`` stages."""
    out = []
    for name in names:
        check_choice(name, "scenario", SCENARIOS)
        if name == "exact":
            out.append(Scenario("exact"))
        elif name == "all":
            out.append(Scenario("all", ScenarioPolicy.all_accepted(num_stages)))
        else:
            if profile is None:
                raise ValueError("scenario 'profile' needs an acceptance profile (one probability per stage)")
            out.append(Scenario("profile", ScenarioPolicy(stage_probabilities=tuple(profile), per_sample=per_sample)))
    return out


def fill_missing_stages(values: Sequence[float | None]) -> tuple[float, ...]:
    """Stages without a value take the nearest stage's value (the mean of both where two are equally near)."""
    known = [i for i, v in enumerate(values) if v is not None]
    if not known:
        raise ValueError("no stage has a value")
    out = []
    for i, v in enumerate(values):
        if v is None:
            dist = min(abs(i - k) for k in known)
            near = [values[k] for k in known if abs(i - k) == dist]
            v = sum(near) / len(near)
        out.append(float(v))
    return tuple(out)


def scenario_stage_acceptance(policy: AcceptancePolicy | None, batch: int) -> tuple[float, ...] | None:
    """A :class:`ScenarioPolicy`'s stage acceptance (every sample accepts: ``p``, or ``p ** batch`` per sample)."""
    if not isinstance(policy, ScenarioPolicy):
        return None
    return tuple(float(p) ** batch if policy.per_sample else float(p) for p in policy.stage_probabilities)


def map_profile_to_stages(values: Sequence[float], num_stages: int) -> tuple[float, ...]:
    """Map a per-stage profile of ``S'`` stages to ``num_stages`` by relative position in the pyramid.

    Stage ``s`` takes the value of stage ``t`` with ``t / (S' - 1)`` nearest to ``s / (num_stages - 1)``
    (the lower ``t`` on a tie).
    """
    src = len(values)
    if src < 1 or num_stages < 1:
        raise ValueError(f"need at least one value and one stage, got {src} values for {num_stages} stages")
    if src == 1 or num_stages == 1:
        return tuple(float(values[0]) for _ in range(num_stages))
    # |t/(src-1) - s/(N-1)| compared in integers: |t*(N-1) - s*(src-1)|
    return tuple(float(values[min(range(src), key=lambda t: abs(t * (num_stages - 1) - s * (src - 1)))])
                 for s in range(num_stages))
