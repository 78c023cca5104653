"""Is a decoder lossless? Its tokens tested against the target's own conditional distributions.

A lossless decoder (the target alone, SDVAR with the ``exact`` policy) draws every token of stage
``s`` from the target's sampling distribution ``p(. | stages < s)`` (after CFG, top-k and top-p).
Given a decoder's tokens, one teacher-forced target pass (:meth:`VAR.forward`, no cache) gives that
conditional distribution ``p_i`` for every token ``x_i``. Two statistics per stage, summed over every
token of the stage in every sample:

- **argmax rate** ``1{x_i = argmax p_i}``: mean ``p_i(argmax)``, variance ``p_i(argmax) (1 - p_i(argmax))``.
  Lossy rules that favour the target's argmax (``top1_match``; a greedy bonus stage) raise it.
- **surprisal** ``-log p_i(x_i)``: mean the entropy ``H(p_i)``, variance ``sum p log^2 p - H^2``.
  Tokens the target finds unlikely (``relaxed`` pooling, stages made by the draft) raise it.

Under the null hypothesis "the tokens follow the target's law", each centred sum is a sum of
martingale differences (tokens of one stage are independent given the earlier stages, samples are
independent), so ``Z = sum(f - E f) / sqrt(sum Var f)`` is approximately standard normal (martingale
central limit theorem; use at least ~100 samples so that stage 0, one token per sample, has enough
terms). :func:`lossless_verdict` accepts when every one of the ``2 S`` values ``|Z|`` is at most the
two-sided Bonferroni bound ``z_{alpha / (4 S)}`` (family-wise false-alarm rate ``<= alpha``) and no
token lies outside the target's support (``p = 0``: impossible for a lossless decoder).

Unlike "the confidence intervals of a quality metric overlap", this separates lossless from lossy
decoders: quality metrics average the distortion away, these statistics read every token. It is a
test of the token law only; it says nothing about speed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from sdvar_lib.models.sampling import SamplingConfig, cfg_labels, filter_top_k_top_p, guided_logits
from sdvar_lib.models.var import VAR
from sdvar_lib.util.checks import check_probability
from sdvar_lib.util.modes import eval_mode

__all__ = ["TokenEvidence", "token_evidence", "LosslessVerdict", "lossless_verdict", "normal_two_sided_bound"]


@dataclass(frozen=True)
class TokenEvidence:
    """Per stage: tokens seen, the centred sums of both statistics and their null variances.

    Evidence of several calls adds up with ``+`` (sums of independent martingales).
    """

    tokens_per_stage: tuple[int, ...]
    argmax_excess: tuple[float, ...]
    """``sum(1{x = argmax p} - p(argmax))`` per stage."""
    argmax_variance: tuple[float, ...]
    surprisal_excess: tuple[float, ...]
    """``sum(-log p(x) - H(p))`` per stage (tokens with ``p(x) = 0`` left out: see ``impossible_tokens``)."""
    surprisal_variance: tuple[float, ...]
    impossible_tokens: int = 0
    """Tokens the target gives probability 0 (outside its top-k/top-p support)."""

    @classmethod
    def empty(cls, num_stages: int) -> TokenEvidence:
        zeros = (0.0,) * num_stages
        return cls((0,) * num_stages, zeros, zeros, zeros, zeros, 0)

    @property
    def num_stages(self) -> int:
        return len(self.tokens_per_stage)

    def __add__(self, other: TokenEvidence) -> TokenEvidence:
        if not isinstance(other, TokenEvidence):
            return NotImplemented
        if other.num_stages != self.num_stages:
            raise ValueError(f"cannot add evidence of {other.num_stages} stages to evidence of {self.num_stages}")

        def add(a, b):
            return tuple(x + y for x, y in zip(a, b))

        return TokenEvidence(
            add(self.tokens_per_stage, other.tokens_per_stage), add(self.argmax_excess, other.argmax_excess),
            add(self.argmax_variance, other.argmax_variance), add(self.surprisal_excess, other.surprisal_excess),
            add(self.surprisal_variance, other.surprisal_variance), self.impossible_tokens + other.impossible_tokens,
        )


@torch.no_grad()
def token_evidence(
    target: VAR, label_B: torch.Tensor, tokens_per_stage: Sequence[torch.Tensor], sampling: SamplingConfig
) -> TokenEvidence:
    """The evidence of one batch of samples: ``tokens_per_stage[s]`` ``(B, pn_s**2)`` with labels ``label_B``.

    ``label_B`` holds the labels the samples were drawn with (``num_classes`` = no class);
    ``sampling`` is the call's CFG/top-k/top-p. The target (float32 weights) is run in eval mode.
    """
    if not isinstance(sampling, SamplingConfig):
        raise TypeError(f"sampling must be a SamplingConfig, got {type(sampling).__name__}")
    S = target.num_stages
    if len(tokens_per_stage) != S:
        raise ValueError(f"need the tokens of all {S} stages, got {len(tokens_per_stage)}")
    labels = label_B.to(target.device).reshape(-1)
    tokens = [t.to(target.device) for t in tokens_per_stage]
    B = labels.numel()
    for si, (t, pn) in enumerate(zip(tokens, target.patch_nums)):
        if tuple(t.shape) != (B, pn * pn):
            raise ValueError(f"stage {si} tokens have shape {tuple(t.shape)}, expected {(B, pn * pn)}")
    x_BLCv = target.vae.quantize.idxBl_to_var_input(tokens)
    with eval_mode(target):
        logits_2BLV = target(cfg_labels(labels, target.num_classes), torch.cat((x_BLCv, x_BLCv)))
    counts, a_exc, a_var, s_exc, s_var, impossible = [], [], [], [], [], 0
    for si, (b, e) in enumerate(target.begin_ends):
        guided = guided_logits(logits_2BLV[:, b:e], si, S, sampling.cfg)
        logp_BlV = filter_top_k_top_p(guided, sampling.top_k, sampling.top_p).double().log_softmax(dim=-1)
        p_BlV = logp_BlV.exp()
        x_Bl1 = tokens[si].unsqueeze(-1)
        p_max, argmax = p_BlV.max(dim=-1)
        plogp = torch.where(p_BlV > 0, p_BlV * logp_BlV, torch.zeros_like(p_BlV))
        plog2p = torch.where(p_BlV > 0, p_BlV * logp_BlV.square(), torch.zeros_like(p_BlV))
        entropy = -plogp.sum(dim=-1)
        logp_x = logp_BlV.gather(-1, x_Bl1).squeeze(-1)
        possible = torch.isfinite(logp_x)
        impossible += int((~possible).sum())
        counts.append(int(tokens[si].numel()))
        a_exc.append(float(((tokens[si] == argmax).double() - p_max).sum()))
        a_var.append(float((p_max * (1 - p_max)).sum()))
        s_exc.append(float(torch.where(possible, -logp_x - entropy, torch.zeros_like(entropy)).sum()))
        s_var.append(float((plog2p.sum(dim=-1) - entropy.square()).clamp_min(0).sum()))
    return TokenEvidence(tuple(counts), tuple(a_exc), tuple(a_var), tuple(s_exc), tuple(s_var), impossible)


def normal_two_sided_bound(alpha: float) -> float:
    """``z`` with ``P(|N(0, 1)| > z) = alpha`` (``alpha`` in ``(0, 1)``)."""
    check_probability(alpha, "alpha")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    return float(torch.special.ndtri(torch.tensor(1 - alpha / 2, dtype=torch.float64)))


def _z(excess: float, variance: float) -> float:
    return excess / math.sqrt(variance) if variance > 0 else 0.0


@dataclass(frozen=True)
class LosslessVerdict:
    """Standardised statistics per stage and the decision at family-wise level ``alpha``."""

    z_argmax: tuple[float, ...]
    z_surprisal: tuple[float, ...]
    bound: float
    """Reject "lossless" when any ``|z|`` exceeds this (two-sided Bonferroni over ``2 S`` statistics)."""
    alpha: float
    tokens: int
    impossible_tokens: int

    @property
    def lossless(self) -> bool:
        return self.impossible_tokens == 0 and self.max_abs_z <= self.bound

    @property
    def max_abs_z(self) -> float:
        return max(abs(z) for z in self.z_argmax + self.z_surprisal)

    @property
    def worst(self) -> tuple[str, int, float]:
        """``(statistic, stage, z)`` of the largest ``|z|``."""
        rows = [("argmax rate", s, z) for s, z in enumerate(self.z_argmax)]
        rows += [("surprisal", s, z) for s, z in enumerate(self.z_surprisal)]
        return max(rows, key=lambda r: abs(r[2]))

    def describe(self) -> str:
        name, stage, z = self.worst
        verdict = "consistent with the target's law" if self.lossless else "NOT the target's law"
        extra = f", {self.impossible_tokens} token(s) outside the target's support" if self.impossible_tokens else ""
        return (f"{verdict}: largest |z| {abs(z):.2f} ({name}, stage {stage}) vs bound {self.bound:.2f} "
                f"(alpha {self.alpha:g}, {self.tokens} tokens{extra})")


def lossless_verdict(evidence: TokenEvidence, alpha: float = 1e-3) -> LosslessVerdict:
    """Decide "lossless" at family-wise level ``alpha`` (see the module docstring)."""
    if not isinstance(evidence, TokenEvidence):
        raise TypeError(f"evidence must be a TokenEvidence, got {type(evidence).__name__}")
    if sum(evidence.tokens_per_stage) == 0:
        raise ValueError("no tokens in the evidence")
    bound = normal_two_sided_bound(alpha / (2 * evidence.num_stages))
    return LosslessVerdict(
        z_argmax=tuple(_z(e, v) for e, v in zip(evidence.argmax_excess, evidence.argmax_variance)),
        z_surprisal=tuple(_z(e, v) for e, v in zip(evidence.surprisal_excess, evidence.surprisal_variance)),
        bound=bound, alpha=alpha, tokens=sum(evidence.tokens_per_stage), impossible_tokens=evidence.impossible_tokens,
    )
