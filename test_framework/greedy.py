"""Do two greedy decodes of the same target agree? The rule of ``test_compare_with_baseline``, for any two outputs.

SDVAR's greedy output (``top_k=1``, ``exact``) *is* the target's greedy output: in exact arithmetic
its tokens equal the baseline's (target alone) token for token. The two compute the same logits
through passes of different shapes (one chunked pass per round against one pass per stage), so in
reduced precision (bf16/fp16 on a GPU) two logits within rounding of each other (a *near tie*) may
come out in either order, and from that stage on the two decodes continue from different tokens.

What holds in any precision: the tokens are identical, and then so are the images (within the
harness's image tolerance); or they are identical up to the first stage where they differ, and each
decode is greedy within the logits tolerance at every stage, given its own earlier stages (the
first difference is a near tie; :func:`~test_framework.reference.check_greedy`). The logits
tolerance is the near-tie width (:class:`~test_framework.tolerances.Tolerances`). In float32 on
the CPU it is ``1e-4``, so there the check demands identical tokens unless two logits truly tie.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sdvar_lib import SDVAROutput
from sdvar_lib.models import VAR, check_cfg
from test_framework.reference import GreedyCheck, check_greedy, decode_drift, max_abs_diff
from test_framework.tolerances import Tolerances

__all__ = ["GreedyAgreement", "greedy_agreement"]


@dataclass(frozen=True)
class GreedyAgreement:
    """The verdict of :func:`greedy_agreement` on a candidate greedy decode and a reference one."""

    tokens_identical: bool
    first_differing_stage: int | None
    """The first stage whose tokens differ between the two decodes (``None`` when identical)."""
    differing_tokens: int
    """Tokens that differ between the two decodes, over all stages."""
    images_max_abs_diff: float
    images_tolerance: float
    candidate: GreedyCheck | None = None
    """Only when the tokens differ: is the candidate greedy within the logits tolerance, given its own prefix?"""
    reference: GreedyCheck | None = None
    """Only when the tokens differ: the same for the reference."""

    @property
    def passed(self) -> bool:
        if self.tokens_identical:
            return self.images_max_abs_diff <= self.images_tolerance
        return self.candidate.consistent and self.reference.consistent

    def describe(self) -> str:
        if self.tokens_identical:
            verdict = "" if self.passed else "; images DIFFER although the tokens are the same"
            return (f"identical tokens; images max |diff| {self.images_max_abs_diff:.4f} "
                    f"(tolerance {self.images_tolerance:.4f}){verdict}")
        verdict = "both greedy within the logits tolerance: the first difference is a near tie" if self.passed \
            else "NOT both greedy"
        return (f"identical tokens up to stage {self.first_differing_stage}, then {self.differing_tokens} token(s) "
                f"differ; {verdict} (candidate: {self.candidate.describe()}; reference: {self.reference.describe()})")


def _check_output(out, name: str) -> None:
    if not isinstance(out, SDVAROutput):
        raise TypeError(f"{name} must be an sdvar_lib.SDVAROutput, got {type(out).__name__}")


@torch.no_grad()
def greedy_agreement(
    model: VAR, candidate: SDVAROutput, reference: SDVAROutput, cfg: float, tolerances: Tolerances | None = None
) -> GreedyAgreement:
    """Compare two greedy decodes of ``model`` (e.g. SDVAR's and the baseline's, same labels, ``top_k=1``).

    ``cfg`` is the guidance both were decoded with; ``tolerances`` default to ``model``'s
    (:meth:`Tolerances.for_model`). Identical tokens must give images within ``tolerances.images``;
    differing tokens must be greedy decodes within ``tolerances.logits`` each (near ties only).
    """
    if not isinstance(model, VAR):
        raise TypeError(f"model must be an sdvar_lib.VAR, got {type(model).__name__}")
    _check_output(candidate, "candidate")
    _check_output(reference, "reference")
    check_cfg(cfg)
    if tolerances is not None and not isinstance(tolerances, Tolerances):
        raise TypeError(f"tolerances must be a Tolerances, got {type(tolerances).__name__}")
    tol = tolerances if tolerances is not None else Tolerances.for_model(model)
    if len(candidate.tokens_per_stage) != len(reference.tokens_per_stage) or not torch.equal(
            candidate.label_B.cpu(), reference.label_B.cpu()):
        raise ValueError("candidate and reference must decode the same labels through the same stages")
    differing = [int((a != b).sum()) for a, b in zip(candidate.tokens_per_stage, reference.tokens_per_stage)]
    first = next((si for si, n in enumerate(differing) if n), None)
    image_diff = max_abs_diff(candidate.images_B3HW, reference.images_B3HW)
    image_tol, _ = tol.images_allowed(reference.images_B3HW, decode_drift(model, reference.f_hat_BChw))
    if first is None:
        return GreedyAgreement(tokens_identical=True, first_differing_stage=None, differing_tokens=0,
                               images_max_abs_diff=image_diff, images_tolerance=image_tol)
    S = len(reference.tokens_per_stage)
    label_B = reference.label_B.to(next(model.parameters()).device)
    return GreedyAgreement(
        tokens_identical=False, first_differing_stage=first, differing_tokens=sum(differing),
        images_max_abs_diff=image_diff, images_tolerance=image_tol,
        candidate=check_greedy(model, label_B, cfg, candidate.tokens_per_stage, 0, S, tol.logits),
        reference=check_greedy(model, label_B, cfg, reference.tokens_per_stage, 0, S, tol.logits),
    )
