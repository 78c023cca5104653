"""Statistical checks shared by the distributional tests: goodness of fit, binomial z-scores and power.

Every test that uses these states its significance level and its power against the distortion it is
meant to catch; the power functions below compute that power exactly (non-central chi-square) or
with the normal approximation, so a test can assert its own design before it asserts the result.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from scipy import stats


@dataclass(frozen=True)
class ChiSquare:
    statistic: float
    dof: int
    p_value: float
    impossible: int
    """Observations in cells of probability 0 (each one alone refutes the hypothesis)."""

    @property
    def ok(self) -> bool:
        return self.impossible == 0

    def passes(self, alpha: float) -> bool:
        return self.impossible == 0 and self.p_value > alpha


def _cells(probs: torch.Tensor, n: float, min_expected: float) -> list[torch.Tensor]:
    """Index groups of the cells of ``probs > 0``: cells with expected count below ``min_expected`` merged."""
    probs = probs.flatten().double()
    support = torch.nonzero(probs > 0).flatten()
    order = support[torch.argsort(probs[support])]
    small = probs[order] * n < min_expected
    groups = [order[i : i + 1] for i in torch.nonzero(~small).flatten().tolist()]
    if bool(small.any()):
        groups.append(order[small])
    return groups


def chi_square(counts: torch.Tensor, probs: torch.Tensor, min_expected: float = 5.0) -> ChiSquare:
    """Pearson goodness of fit of ``counts`` against ``probs`` (same shape, any number of dims).

    Cells with expected count below ``min_expected`` are merged into one; counts in cells of
    probability 0 are reported as ``impossible`` (and give p-value 0).
    """
    counts, probs = counts.flatten().double(), probs.flatten().double()
    probs = probs / probs.sum()
    n = float(counts.sum())
    impossible = int(counts[probs <= 0].sum())
    groups = _cells(probs, n, min_expected)
    obs = torch.stack([counts[g].sum() for g in groups])
    exp = torch.stack([probs[g].sum() for g in groups]) * n
    stat = float(((obs - exp) ** 2 / exp).sum())
    dof = len(groups) - 1
    p = 0.0 if impossible else float(stats.chi2.sf(stat, dof)) if dof > 0 else 1.0
    return ChiSquare(stat, dof, p, impossible)


def chi_square_power(null: torch.Tensor, alternative: torch.Tensor, n: int, alpha: float, min_expected: float = 5.0) -> float:
    """Power of :func:`chi_square` at level ``alpha`` with ``n`` draws from ``alternative`` (non-central chi-square)."""
    null, alternative = null.flatten().double(), alternative.flatten().double()
    groups = _cells(null, n, min_expected)
    p0 = torch.stack([null[g].sum() for g in groups])
    p1 = torch.stack([alternative[g].sum() for g in groups])
    dof = len(groups) - 1
    lam = float(n * ((p1 - p0) ** 2 / p0).sum())
    critical = stats.chi2.isf(alpha, dof)
    return float(stats.ncx2.sf(critical, dof, lam))


def z_bound(alpha: float) -> float:
    """Two-sided normal critical value."""
    return float(stats.norm.isf(alpha / 2))


def z_power(expected_z: float, alpha: float) -> float:
    """Power of a two-sided z-test at level ``alpha`` when the statistic is ``N(expected_z, 1)``."""
    c = z_bound(alpha)
    return float(stats.norm.sf(c - expected_z) + stats.norm.cdf(-c - expected_z))


def binomial_z(successes: float, trials: torch.Tensor, probs: torch.Tensor) -> float:
    """``(successes - sum n p) / sqrt(sum n p (1 - p))`` for independent binomials ``(trials_i, probs_i)``."""
    trials, probs = trials.double(), probs.double()
    var = float((trials * probs * (1 - probs)).sum())
    excess = successes - float((trials * probs).sum())
    return excess / math.sqrt(var) if var > 0 else (0.0 if abs(excess) < 0.5 else math.inf)


def total_variation(a: torch.Tensor, b: torch.Tensor) -> float:
    return 0.5 * float((a.double() - b.double()).abs().sum())
