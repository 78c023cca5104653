"""The sampling filter at its exact boundaries (a survivor of scripts/mutate.py: top-p-boundary).

top-p drops, in ascending order, every token whose cumulative probability is ``<= 1 - top_p`` (the
reference VAR's rule), so a token sitting exactly on the boundary is dropped; top-k drops logits
below the k-th largest, so ties with the k-th are kept. Uniform logits make the boundaries exact in
float32 (four tokens of 1/4: cumulative 0.25, 0.5, 0.75, 1).
"""

from __future__ import annotations

import pytest
import torch

from sdvar_lib.models.sampling import SamplingConfig, filter_top_k_top_p, stage_probs


@pytest.mark.parametrize(("top_p", "kept"), [(0.5, 2), (0.75, 3), (0.25, 1), (1.0, 4), (0.6, 3)])
def test_top_p_drops_the_token_on_its_boundary(top_p, kept):
    logits = torch.zeros(2, 3, 4)
    out = filter_top_k_top_p(logits, top_p=top_p)
    assert torch.isfinite(out).sum(dim=-1).eq(kept).all(), out[0, 0]
    probs = stage_probs(logits, SamplingConfig(top_p=top_p))
    assert torch.allclose(probs.max(dim=-1).values, torch.full((2, 3), 1.0 / kept))


@pytest.mark.parametrize(("top_k", "kept"), [(1, 2), (2, 2), (3, 4), (4, 4)])
def test_top_k_keeps_ties_with_the_kth(top_k, kept):
    logits = torch.tensor([[[1.0, 1.0, 0.0, 0.0]]])
    assert int(torch.isfinite(filter_top_k_top_p(logits, top_k=top_k)).sum()) == kept
