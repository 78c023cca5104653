"""The harness cannot be fooled: a bug planted in each step it checks (by monkeypatching the library) is reported.

Every row plants one bug in the code under test — the decoder, the model's run and KV cache, the
sampling filter, the quantizer's ``f_hat`` path, the image decoding, the statistics, the acceptance
policy — and asserts that the named harness test fails with a message naming the problem. Several
bugs sit in code the harness's references used to share (``filter_top_k_top_p``, ``stage_contribution``,
``fhat_to_img``, ``KVCache``): these rows fail if a reference goes back to calling the implementation.
The sampled rows also show that the greedy tests cannot see acceptance-probability or bonus-stage bugs.
"""

from __future__ import annotations

import ast
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import sdvar_lib.sdvar.acceptance as acceptance
import sdvar_lib.sdvar.decoder as decoder
import sdvar_lib.sdvar.handoff as handoff
import sdvar_lib.sdvar.registry as registry
import test_framework.reference
from sdvar_lib import SDVAR
from sdvar_lib.models import sampling, var
from sdvar_lib.models.kv_cache import KVCache, block_causal_mask
from sdvar_lib.models.quant import MultiScaleQuantizer
from sdvar_lib.models.run import ModelRun
from sdvar_lib.models.vqvae import VQVAE
from sdvar_lib.sdvar import VerifyResult
from sdvar_lib.sdvar.stats import SDVARStats
from test_framework import SDVARParallelV1Tester


# ---- the planted bugs ---------------------------------------------------------------------------------
def _mask_sees_the_next_stage(mp):
    def verify_mask(self, state, query):
        keys = self.target_model.lvl_1L[0, : query.position + query.stage_ids_l.numel()]
        return block_causal_mask(query.stage_ids_l + 1, keys)

    mp.setattr(SDVAR, "verify_mask", verify_mask)


def _input_reads_the_wrong_f_hat(mp):
    orig = ModelRun.stage_input

    def stage_input(self, si, f_hats):
        if si == 0 or len(f_hats) <= si:
            return orig(self, si, f_hats)
        return self.model.next_stage_input(si - 1, f_hats[si], self.lvl_pos_1LC)  # f_hat after stage si, not si - 1

    mp.setattr(ModelRun, "stage_input", stage_input)


def _split_guides_with_the_next_strength(mp):
    orig = decoder.guided_logits
    mp.setattr(decoder, "guided_logits", lambda lg, si, S, cfg: orig(lg, min(si + 1, S - 1), S, cfg))


def _q_reported_before_top_k(mp):
    orig = var.VAR.sample_stage

    def sample_stage(self, logits_BlV, si, sampling_config, rng):
        out = orig(self, logits_BlV, si, sampling_config, rng)
        return replace(out, probs_BlV=logits_BlV.softmax(dim=-1))

    mp.setattr(var.VAR, "sample_stage", sample_stage)


def _top_p_keeps_two(mp):
    """The sampling filter keeps the two most likely tokens (the harness's reference must not share it)."""
    orig = sampling.filter_top_k_top_p

    def keep_two(logits, top_k=0, top_p=0.0):
        out = orig(logits, top_k, top_p)
        second = logits.topk(2, dim=-1).indices[..., 1:]
        return out.scatter(-1, second, logits.gather(-1, second))

    for module in (sampling, var):  # stage_probs (every p and q) and the more_smooth mixture
        mp.setattr(module, "filter_top_k_top_p", keep_two)


def _verify_without_top_k(mp):
    mp.setattr(decoder, "stage_probs", lambda guided_BlV, sampling_config: guided_BlV.softmax(dim=-1))


def _verify_stage_by_stage(mp):
    def verify(self, state, proposal):
        query = self.verify_query(state, proposal)
        outs, off = [], 0
        for si in query.stages:
            l = self.patch_nums[si] ** 2
            outs.append(state.target.forward(query.x_2BlC[:, off : off + l]))
            off += l
        per_stage = self.split_logits(state, proposal, torch.cat(outs, dim=1))
        s = state.sampling
        p = [sampling.filter_top_k_top_p(lg, s.top_k, s.top_p).softmax(-1) for lg in per_stage]
        return VerifyResult(stages=query.stages, logits=per_stage, p_probs=p, target_passes=len(query.stages))

    mp.setattr(SDVAR, "verify", verify)


def _bilinear_f_hat(mp):
    """f_hat contributions upsampled bilinearly (the harness's f_hat reference must not share the quantizer's)."""

    def stage_contribution(self, si, h_BChw, upsample=None):  # whatever upsampling the caller asks for
        HW = self.v_patch_nums[-1]
        if si != self.num_stages - 1:
            h_BChw = F.interpolate(h_BChw, size=(HW, HW), mode="bilinear")
        return self.phi(si)(h_BChw).contiguous()

    mp.setattr(MultiScaleQuantizer, "stage_contribution", stage_contribution)


def _cache_stores_perturbed_values(mp):
    """The current pass reads the right values, later passes read slightly wrong ones (the reference
    cache must not be a KVCache)."""
    orig = KVCache.write

    def write(self, layer, k, v):
        keys, values = orig(self, layer, k, v)
        keys, values = keys.clone(), values.clone()
        self.v_NBHLc[layer, :, :, self.length : self.length + k.shape[2]] *= 1.001
        return keys, values

    mp.setattr(KVCache, "write", write)


def _images_skip_post_quant_conv(mp):
    mp.setattr(VQVAE, "fhat_to_img", lambda self, f_hat: self.decoder(f_hat).clamp(-1, 1))


def _stats_count_an_extra_pass(mp):
    orig = SDVARStats.after_round_counted  # what every round's statistics go through, eager and device rounds
    mp.setattr(SDVARStats, "after_round_counted",
               lambda self, target_passes, *args, **kw: orig(self, target_passes + 1, *args, **kw))


def _corrections_from_the_draft(mp):
    mp.setattr(acceptance, "residual_distribution", lambda p, q: q)


def _corrections_from_p(mp):
    mp.setattr(acceptance, "residual_distribution", lambda p, q: p)


def _hand_off_one_stage_early(mp):
    orig = handoff.decode_handoff
    mp.setattr(handoff, "decode_handoff",
               lambda sd, first_is_target, labels, s, rng, entry_num, sd_mask:
               orig(sd, first_is_target, labels, s, rng, max(entry_num - 1, 0), sd_mask))


def _baseline_is_the_draft(mp):
    mp.setattr(registry, "baseline", handoff.draft_alone)


def _acceptance_to_the_power(exponent: float):
    def plant(mp):
        def verdict(target_mass_Bl, p_BlV, q_BlV, proposals_Bl, rng):
            q_x = q_BlV.gather(-1, proposals_Bl.unsqueeze(-1)).squeeze(-1)
            u = torch.rand(proposals_Bl.shape, generator=rng, device=proposals_Bl.device)
            ratio = torch.where(q_x > 0, target_mass_Bl / q_x.clamp_min(1e-30), torch.zeros_like(q_x)).clamp(max=1)
            accepted = u < ratio**exponent
            corrections = sampling.sample_from_probs(acceptance.residual_distribution(p_BlV, q_BlV), rng)
            tokens = torch.where(accepted, proposals_Bl, corrections)
            return acceptance.StageVerdict(accepted_Bl=accepted, stage_accepted_B=accepted.all(dim=1), tokens_if_last_Bl=tokens)

        mp.setattr(acceptance, "_speculative_verdict", verdict)

    return plant


def _greedy_bonus_stage(mp):
    mp.setattr(decoder, "sample_from_probs", lambda probs, rng: probs.argmax(dim=-1))


SAMPLED = dict(top_k=8, top_p=0.6)
PLANTED = [
    # (id, plant, tester options, harness test, expected words in its message)
    ("mask sees the next stage", _mask_sees_the_next_stage, {}, "test_build_combined_query", "is not the block-causal mask"),
    ("input reads the wrong f_hat", _input_reads_the_wrong_f_hat, {}, "test_build_combined_query", "input of stage"),
    ("split guided with the next stage's strength", _split_guides_with_the_next_strength, {},
     "test_split_logits_by_stage", "logits differ from the reference split"),
    ("q reported before top-k", _q_reported_before_top_k, SAMPLED, "test_draft_generate_batch",
     "q differs from the draft's sequential recomputation"),
    ("top-p keeps two tokens (draft)", _top_p_keeps_two, SAMPLED, "test_draft_generate_batch",
     "q differs from the draft's sequential recomputation"),
    ("top-p keeps two tokens (target)", _top_p_keeps_two, SAMPLED, "test_target_verify_batch",
     "p differs from the sequential distribution"),
    ("verify without top-k", _verify_without_top_k, SAMPLED, "test_target_verify_batch",
     "p differs from the sequential distribution"),
    ("verify stage by stage", _verify_stage_by_stage, {}, "test_target_verify_batch", "target passes, expected 1"),
    ("f_hat upsampled bilinearly (draft)", _bilinear_f_hat, {}, "test_draft_generate_batch",
     "differs from the one rebuilt from tokens"),
    ("f_hat upsampled bilinearly (commit)", _bilinear_f_hat, {}, "test_state_update",
     "differs from the one rebuilt from committed tokens"),
    ("cache stores perturbed values", _cache_stores_perturbed_values, {}, "test_kv_cache_consistency",
     "cache values of layer"),
    ("images skip post_quant_conv", _images_skip_post_quant_conv, {}, "test_end_to_end",
     "images are not the decoded f_hat of the committed tokens"),
    ("statistics count an extra pass", _stats_count_an_extra_pass, {}, "test_end_to_end", "target passes"),
    ("corrections drawn from the draft", _corrections_from_the_draft, {}, "test_greedy_identity",
     "not the target's greedy tokens"),
    ("hand-off one stage early", _hand_off_one_stage_early, {}, "test_compare_with_test3", "draft / "),
    ("baseline is the draft", _baseline_is_the_draft, {}, "test_compare_with_baseline", "not both greedy"),
    ("acceptance min(1, p/q) ** 0.8", _acceptance_to_the_power(0.8), {}, "test_sampled_distribution",
     "proposals accepted"),
    ("corrections drawn from p", _corrections_from_p, {}, "test_sampled_distribution",
     "committed tokens do not follow the target's p"),
    ("greedy bonus stage", _greedy_bonus_stage, {}, "test_sampled_distribution",
     "tokens do not follow the target's p"),
]


@pytest.fixture(scope="module")
def pair(tiny_pair):
    _, draft, target = tiny_pair
    return draft, target


@pytest.mark.parametrize(("plant", "options", "test_name", "expected"), [row[1:] for row in PLANTED],
                         ids=[row[0] for row in PLANTED])
def test_the_harness_reports_a_planted_bug(pair, monkeypatch, plant, options, test_name, expected):
    draft, target = pair
    tester = SDVARParallelV1Tester(SDVAR(draft, target), **options)
    with monkeypatch.context() as mp:
        plant(mp)
        result = getattr(tester, test_name)(B=2)
    assert result.passed is False, f"{test_name} missed the bug: {result.message}"
    assert expected in result.message, result.message
    assert getattr(tester, test_name)(B=2).passed, "without the bug the same test passes"


@pytest.mark.parametrize("plant", [_acceptance_to_the_power(0.8), _corrections_from_p, _greedy_bonus_stage],
                         ids=["acceptance ** 0.8", "corrections from p", "greedy bonus stage"])
def test_greedy_checks_cannot_see_sampling_bugs(pair, monkeypatch, plant):
    """Why the harness needs its sampled check: under ``top_k=1`` these bugs change nothing."""
    draft, target = pair
    tester = SDVARParallelV1Tester(SDVAR(draft, target))
    with monkeypatch.context() as mp:
        plant(mp)
        assert tester.test_greedy_identity(B=2).passed
        assert tester.test_compare_with_baseline(B=2).passed


# names of the code under test that a reference computation must not call (it would share their bugs)
CHECKED_CODE = {
    # sampling contract
    "filter_top_k_top_p", "guided_logits", "apply_cfg", "cfg_strength", "sample_from_probs", "gumbel_softmax_with_rng",
    # quantizer f_hat path and image decoding
    "stage_contribution", "embed_to_fhat", "idxBl_to_h", "idx_to_h", "phi", "next_input", "fhat_to_img",
    "images_from_f_hat", "idxBl_to_img",
    # the model's per-call run and cache
    "new_cache", "stage_input_of", "next_stage_input", "start_input", "lvl_pos", "class_condition", "chunk_input",
    "eager_run", "truncate",
    # the decoder and the policies
    "f_hats_after", "verify_query", "verify_mask", "split_logits", "residual_distribution", "verify_stage",
}


def test_the_references_call_none_of_the_code_they_check():
    """A static guard next to the planted bugs: ``test_framework/reference.py`` names none of the checked functions."""
    tree = ast.parse(Path(test_framework.reference.__file__).read_text())
    used = {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
    used |= {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
    used |= {a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) for a in n.names}
    assert not used & CHECKED_CODE, sorted(used & CHECKED_CODE)
