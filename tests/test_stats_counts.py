"""What the statistics count (survivors of scripts/mutate.py: stats-tokens-per-sample, handoff-passes-swapped).

- proposed draft tokens count every sample of the batch: ``B * l_s`` per proposed stage ``s``;
- a hand-off counts each model's passes as that model's: CoDe's target makes the stages below
  ``entry_num`` (one pass each) and the draft reads the prefix and finishes (one pass per stage
  left), ``test3`` the other way round; the target or the draft alone make every stage.
"""

from __future__ import annotations

import pytest

from sdvar_lib.sdvar.handoff import baseline, code_handoff, draft_alone, generate_test3


def test_proposed_tokens_count_every_sample(sd):
    B = 3
    stats = sd.generate_parallel(B, [1, 2, 3], g_seed=0, gamma=2).stats
    sizes = [pn * pn for pn in sd.patch_nums]
    assert sum(stats.proposed_stages_per_stage) > 0
    for s, (tokens, stages) in enumerate(zip(stats.proposed_tokens_per_stage, stats.proposed_stages_per_stage)):
        assert tokens == B * sizes[s] * stages, s
    assert all(a <= p for a, p in zip(stats.accepted_tokens_per_stage, stats.proposed_tokens_per_stage))


@pytest.mark.parametrize("entry_num", [0, 1, 2, 3, 4])
def test_handoffs_count_each_models_passes(sd, entry_num):
    S = sd.num_stages
    assert S == 4
    code = code_handoff(sd, 2, [1, 2], g_seed=0, entry_num=entry_num).stats
    assert (code.target_passes, code.draft_passes) == (entry_num, S - entry_num)
    test3 = generate_test3(sd, 2, [1, 2], g_seed=0, entry_num=entry_num).stats
    assert (test3.target_passes, test3.draft_passes) == (S - entry_num, entry_num)


def test_one_model_alone_counts_its_own_passes(sd):
    S = sd.num_stages
    target = baseline(sd, 2, [1, 2], g_seed=0).stats
    draft = draft_alone(sd, 2, [1, 2], g_seed=0).stats
    assert (target.target_passes, target.draft_passes) == (S, 0)
    assert (draft.target_passes, draft.draft_passes) == (0, S)
