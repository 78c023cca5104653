"""Metric functions on known inputs: Fréchet distance, confidence intervals, image comparison, classifier."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from sdvar_lib.eval.metrics import (
    ClassifierConfig,
    DigitClassifier,
    class_consistency,
    compare_images,
    feature_frechet_distance,
    frechet_distance,
    gaussian_stats,
    student_t_975,
    summarize_over_seeds,
)


# ---- Fréchet distance -------------------------------------------------------------------------------
def _features(n: int, d: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, d)) @ rng.normal(size=(d, d))


def test_frechet_zero_for_identical_sets():
    x = _features(300, 8, 0)
    assert frechet_distance(gaussian_stats(x), gaussian_stats(x)) == pytest.approx(0.0, abs=1e-8)


def test_frechet_positive_for_shifted_sets_and_equals_mean_shift():
    x = _features(300, 8, 0)
    shift = np.arange(8, dtype=np.float64) / 4
    fd = frechet_distance(gaussian_stats(x), gaussian_stats(x + shift))
    # same covariance: the distance is exactly the squared mean difference
    assert fd == pytest.approx(float(shift @ shift), rel=1e-6)
    assert fd > 1.0


def test_frechet_matches_closed_form_for_diagonal_gaussians():
    from sdvar_lib.eval.metrics import GaussianStats

    mu_a, mu_b = np.array([0.0, 1.0, -2.0]), np.array([1.0, 1.0, 0.5])
    var_a, var_b = np.array([1.0, 4.0, 0.25]), np.array([9.0, 1.0, 0.25])
    a = GaussianStats(mean_D=mu_a, cov_DD=np.diag(var_a), num_samples=10)
    b = GaussianStats(mean_D=mu_b, cov_DD=np.diag(var_b), num_samples=10)
    closed = float(((mu_a - mu_b) ** 2).sum() + ((np.sqrt(var_a) - np.sqrt(var_b)) ** 2).sum())
    assert frechet_distance(a, b) == pytest.approx(closed, rel=1e-9)
    assert frechet_distance(b, a) == pytest.approx(closed, rel=1e-9)


def test_frechet_handles_singular_covariance():
    x = np.zeros((50, 4))
    x[:, 0] = np.linspace(-1, 1, 50)  # rank-one covariance
    y = x.copy()
    y[:, 0] *= 2
    fd = frechet_distance(gaussian_stats(x), gaussian_stats(y))
    assert math.isfinite(fd)
    assert fd == pytest.approx(float(np.var(x[:, 0], ddof=1)), rel=1e-6)  # (2s - s)^2 = s^2


def test_frechet_matches_scipy_on_random_full_covariances():
    import scipy.linalg as linalg

    a, b = gaussian_stats(_features(200, 6, 1)), gaussian_stats(_features(200, 6, 2) + 0.3)
    covmean = linalg.sqrtm(a.cov_DD @ b.cov_DD).real
    diff = a.mean_D - b.mean_D
    expected = diff @ diff + np.trace(a.cov_DD) + np.trace(b.cov_DD) - 2 * np.trace(covmean)
    assert frechet_distance(a, b) == pytest.approx(float(expected), rel=1e-6)


def test_frechet_rejects_bad_input():
    with pytest.raises(ValueError):
        gaussian_stats(np.zeros((1, 3)))
    with pytest.raises(ValueError):
        frechet_distance(gaussian_stats(np.random.rand(5, 3)), gaussian_stats(np.random.rand(5, 4)))


# ---- confidence intervals -----------------------------------------------------------------------------
def test_summary_on_known_values():
    s = summarize_over_seeds([1.0, 2.0, 3.0, 4.0, 5.0])
    assert s.mean == pytest.approx(3.0)
    assert s.std == pytest.approx(math.sqrt(2.5))
    half = 2.776 * math.sqrt(2.5) / math.sqrt(5)
    assert (s.ci_low, s.ci_high) == (pytest.approx(3.0 - half), pytest.approx(3.0 + half))
    assert s.num_seeds == 5 and s.half_width == pytest.approx(half)
    assert "5 seeds" in s.format()


def test_summary_single_and_constant_values():
    one = summarize_over_seeds([0.7])
    assert (one.mean, one.ci_low, one.ci_high, one.std) == (0.7, 0.7, 0.7, 0.0)
    const = summarize_over_seeds([2.0, 2.0, 2.0])
    assert const.ci_low == const.ci_high == 2.0
    with pytest.raises(ValueError):
        summarize_over_seeds([])
    with pytest.raises(ValueError):
        summarize_over_seeds([1.0, float("nan")])


def test_student_t_table():
    assert student_t_975(4) == pytest.approx(2.776)
    assert student_t_975(10_000) == pytest.approx(1.96, abs=2e-3)
    assert 2.021 > student_t_975(50) > 2.000
    with pytest.raises(ValueError):
        student_t_975(0)
    import scipy.stats as stats

    for df in (1, 2, 5, 9, 30, 35, 50, 90, 500):
        assert student_t_975(df) == pytest.approx(float(stats.t.ppf(0.975, df)), abs=3e-3)


# ---- compare_images -------------------------------------------------------------------------------
def test_compare_images_known_values():
    a = torch.tensor([[0.0, 1.0], [2.0, 3.0]])
    b = a + torch.tensor([[1.0, -1.0], [1.0, -1.0]])
    c = compare_images(a, b)
    assert c.mean_abs_diff == pytest.approx(1.0)
    assert c.l2_distance == pytest.approx(2.0)  # sqrt(4 * 1^2), over the whole batch
    expected_r = float(np.corrcoef(a.reshape(-1).numpy(), b.reshape(-1).numpy())[0, 1])
    assert c.pearson == pytest.approx(expected_r)


def test_compare_images_identical_and_negated():
    x = torch.rand(2, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    same = compare_images(x, x.clone())
    assert (same.mean_abs_diff, same.l2_distance) == (0.0, 0.0)
    assert same.pearson == pytest.approx(1.0)
    assert compare_images(x, 1 - x).pearson == pytest.approx(-1.0)


def test_compare_images_constant_images_do_not_give_nan():
    zeros = torch.zeros(1, 3, 2, 2)
    assert compare_images(zeros, zeros).pearson == 1.0
    assert compare_images(zeros, torch.ones(1, 3, 2, 2)).pearson == 0.0
    varying = torch.arange(12.0).reshape(1, 3, 2, 2)
    c = compare_images(zeros, varying)
    assert c.pearson == 0.0 and c.l2_distance == pytest.approx(float(varying.norm()))


def test_compare_images_rejects_bad_input():
    with pytest.raises(ValueError):
        compare_images(torch.zeros(2, 3), torch.zeros(3, 2))
    with pytest.raises(TypeError):
        compare_images(np.zeros(3), torch.zeros(3))
    with pytest.raises(ValueError):
        compare_images(torch.tensor([float("nan")]), torch.tensor([0.0]))


# ---- classifier-based metrics on a hand-made classifier ---------------------------------------------
def _brightness_classifier() -> DigitClassifier:
    """A DigitClassifier whose logits only depend on the mean input (class 1 = bright, class 0 = dark)."""
    clf = DigitClassifier(ClassifierConfig(num_classes=2, width=32, feature_dim=4))
    with torch.no_grad():
        for p in clf.parameters():
            p.zero_()
        # conv stack: identity-like pass of channel 0 through a positive filter
        clf.conv[0].weight[0, 0, 1, 1] = 1.0
        clf.conv[0].bias[0] = 1.0  # input is centred to [-1, 1]; shift back to [0, 2]
        clf.conv[2].weight[0, 0, 1, 1] = 1.0
        clf.conv[5].weight[0, 0, 1, 1] = 1.0
        clf.fc.weight[0, :16] = 1.0 / 16
        clf.head.weight[1, 0] = 10.0
        clf.head.bias[1] = -10.0  # logit_1 > logit_0 when mean(x) * 2 > 1, i.e. mean pixel > 0.5
    return clf.eval()


def test_class_consistency_and_feature_fd_on_hand_made_classifier():
    clf = _brightness_classifier()
    dark = torch.full((6, 3, 16, 16), 0.1)
    bright = torch.full((6, 3, 16, 16), 0.9)
    img = torch.cat([dark, bright])
    labels = torch.tensor([0] * 6 + [1] * 6)
    assert class_consistency(clf, img, labels).accuracy == 1.0
    wrong = class_consistency(clf, img, 1 - labels)
    assert wrong.accuracy == 0.0 and wrong.per_class_accuracy == {0: 0.0, 1: 0.0}
    mixed = class_consistency(clf, img, torch.tensor([0] * 12))
    assert mixed.accuracy == 0.5
    noisy = img + 0.01 * torch.randn(img.shape, generator=torch.Generator().manual_seed(0))
    assert feature_frechet_distance(clf, noisy, noisy) == pytest.approx(0.0, abs=1e-9)
    assert feature_frechet_distance(clf, noisy[:6], noisy[6:]) > 0.5
    with pytest.raises(ValueError):
        class_consistency(clf, img, labels[:3])
    with pytest.raises(ValueError):
        clf(torch.zeros(2, 3, 8, 8))
