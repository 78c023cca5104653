"""top1_match accepts a stage exactly when the share of proposals equal to the target's argmax reaches its threshold.

The boundary is checked per sample on stages built so that the share is known: at the threshold the
stage is accepted, one matching token less rejects it (a rule applied at 0.9 x its threshold, one of
issue 20's surviving plants, accepts those). Rejected samples are redrawn from ``p``; accepted ones keep
their proposals.
"""

from __future__ import annotations

import pytest
import torch

from sdvar_lib.sdvar.acceptance import Top1MatchPolicy, make_policy

V, L = 8, 20  # 20 tokens a stage: shares in steps of 0.05


def _stage(matches_per_sample: list[int]):
    """Proposals of which the first ``m`` of each sample are the target's argmax (token 0), the rest token 1."""
    B = len(matches_per_sample)
    p = torch.full((B, L, V), 0.02)
    p[..., 0] = 1.0 - 0.02 * (V - 1)  # argmax 0 everywhere
    q = torch.full((B, L, V), 1.0 / V)
    proposals = torch.ones(B, L, dtype=torch.long)
    for b, m in enumerate(matches_per_sample):
        proposals[b, :m] = 0
    return proposals, q, p


@pytest.mark.parametrize("threshold", [0.25, 0.5, 0.6, 0.9, 1.0])
def test_a_stage_is_accepted_exactly_from_the_threshold_on(threshold):
    policy = Top1MatchPolicy(threshold=threshold)
    at = round(threshold * L)  # the fewest matches that reach the threshold
    below = list(range(max(0, at - 3), at))  # 0.85 .. 0.95 x the threshold: must be rejected
    above = list(range(at, min(L, at + 2) + 1))
    proposals, q, p = _stage(below + above)
    verdict = policy.verify_stage(2, proposals, q, p, torch.Generator().manual_seed(0))
    assert verdict.stage_accepted_B.tolist() == [False] * len(below) + [True] * len(above), (threshold, below, above)
    assert verdict.accepted_Bl.tolist() == (proposals == 0).tolist()  # per token: matches the argmax
    kept = verdict.tokens_if_last_Bl[len(below):]
    assert torch.equal(kept, proposals[len(below):])  # accepted samples keep every proposal


def test_a_rule_at_ninety_percent_of_its_threshold_would_be_seen():
    """The plant's arithmetic: at threshold 0.5 the shares 0.45 (9 of 20) and 0.5 (10 of 20) fall on either side."""
    proposals, q, p = _stage([9, 10])
    verdict = make_policy("top1_match", threshold=0.5).verify_stage(0, proposals, q, p, torch.Generator().manual_seed(1))
    assert verdict.stage_accepted_B.tolist() == [False, True]
    assert 9 / L >= 0.9 * 0.5  # what a 0.9 x threshold rule would accept


def test_rejected_samples_are_redrawn_from_p():
    proposals, q, p = _stage([0] * 64)  # no match: every sample rejects the stage
    p = torch.full_like(p, 0.0)
    p[..., 3] = 1.0  # the redraw can only be token 3
    verdict = Top1MatchPolicy(threshold=0.5).verify_stage(1, proposals, q, p, torch.Generator().manual_seed(2))
    assert not verdict.stage_accepted_B.any()
    assert bool((verdict.tokens_if_last_Bl == 3).all())
