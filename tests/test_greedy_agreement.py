"""test_framework.greedy_agreement: two greedy decodes agree, or differ only from a near tie on (the harness's rule)."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from sdvar_lib import SamplingConfig
from sdvar_lib.sdvar import baseline, draft_alone
from test_framework import GreedyAgreement, Tolerances, greedy_agreement

LABELS = [1, 2, 3]


@pytest.fixture(scope="module")
def greedy(sd):
    greedy = SamplingConfig(cfg=1.5, top_k=1)
    return {
        "sdvar": sd.generate_parallel(len(LABELS), LABELS, 0, greedy, gamma=2),
        "baseline": baseline(sd, len(LABELS), LABELS, 0, greedy),
        "draft": draft_alone(sd, len(LABELS), LABELS, 0, greedy),
    }


def test_greedy_sdvar_and_the_baseline_agree_token_for_token(sd, greedy):
    a = greedy_agreement(sd.target_model, greedy["sdvar"], greedy["baseline"], cfg=1.5)
    assert isinstance(a, GreedyAgreement) and a.passed and a.tokens_identical
    assert (a.first_differing_stage, a.differing_tokens, a.candidate, a.reference) == (None, 0, None, None)
    assert a.images_max_abs_diff == 0.0 and a.images_tolerance == Tolerances.for_model(sd.target_model).images.abs
    assert a.describe().startswith("identical tokens; images max |diff| 0.0000")


def test_a_decode_that_is_not_the_targets_greedy_one_fails_in_float32(sd, greedy):
    a = greedy_agreement(sd.target_model, greedy["draft"], greedy["baseline"], cfg=1.5)
    assert not a.passed and not a.tokens_identical and a.differing_tokens > 0
    differing = [si for si, (x, y) in enumerate(zip(greedy["draft"].tokens_per_stage, greedy["baseline"].tokens_per_stage))
                 if not torch.equal(x, y)]
    assert a.first_differing_stage == differing[0]
    assert not a.candidate.consistent and a.reference.consistent and a.reference.identical
    assert "NOT both greedy" in a.describe() and f"up to stage {differing[0]}" in a.describe()


def test_differences_within_the_near_tie_width_pass(sd, greedy):
    """With a logits tolerance wider than any gap, every token counts as a near tie: the same outputs pass."""
    wide = Tolerances.for_model(sd.target_model).with_logits(1e6)
    a = greedy_agreement(sd.target_model, greedy["draft"], greedy["baseline"], cfg=1.5, tolerances=wide)
    assert a.passed and not a.tokens_identical and a.candidate.consistent
    assert "the first difference is a near tie" in a.describe()


def test_identical_tokens_with_different_images_fail(sd, greedy):
    off = replace(greedy["sdvar"], images_B3HW=greedy["sdvar"].images_B3HW + 0.01)
    a = greedy_agreement(sd.target_model, off, greedy["baseline"], cfg=1.5)
    assert a.tokens_identical and not a.passed and "images DIFFER" in a.describe()
    assert a.images_max_abs_diff == pytest.approx(0.01, abs=1e-6)


def test_greedy_agreement_rejects_bad_input(sd, greedy):
    target, base = sd.target_model, greedy["baseline"]
    with pytest.raises(TypeError, match="model must be an sdvar_lib.VAR"):
        greedy_agreement(sd, base, base, cfg=1.5)
    with pytest.raises(TypeError, match="candidate must be an sdvar_lib.SDVAROutput"):
        greedy_agreement(target, base.images_B3HW, base, cfg=1.5)
    with pytest.raises(ValueError, match="cfg must be a finite number"):
        greedy_agreement(target, base, base, cfg=float("nan"))
    with pytest.raises(TypeError, match="tolerances must be a Tolerances"):
        greedy_agreement(target, base, base, cfg=1.5, tolerances=1e-4)
    other = replace(base, label_B=base.label_B + 1)
    with pytest.raises(ValueError, match="same labels through the same stages"):
        greedy_agreement(target, other, base, cfg=1.5)
