"""SDVAR parallel verification: chunked = sequential, greedy identity, self-draft, caches, bad input."""

from __future__ import annotations

import copy
import math
from dataclasses import replace

import pytest
import torch

from sdvar_lib import SDVAR, SamplingConfig, get_method
from sdvar_lib.compat import SDVAR as ResearchSDVAR
from sdvar_lib.models import build_tiny, eager_run
from sdvar_lib.models.sampling import guided_logits
from sdvar_lib.sdvar import DraftProposal, baseline, generate_test3

GREEDY = SamplingConfig(cfg=1.5, top_k=1)

S_TINY = 4


def _random_tokens(model, B: int, seed: int) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(0, model.V, (B, pn * pn), generator=gen) for pn in model.patch_nums]


def _state_with_prefix(sd: SDVAR, tokens: list[torch.Tensor], c: int, B: int, cfg: float, labels):
    """A state with stages < c committed and the target cache holding their inputs."""
    state = sd.prepare(B, labels, g_seed=0, sampling=SamplingConfig(cfg=cfg), gamma=1)
    f_hats = sd.f_hats_after([], 0, tokens[:c])
    if c > 0:
        state.target.forward(state.target.chunk_input(range(c), f_hats))
    return replace(state, tokens=tuple(tokens[:c]), f_hats=tuple(f_hats))


def _sequential_logits(model, tokens: list[torch.Tensor], stop: int, B: int, cfg: float, labels) -> list[torch.Tensor]:
    """Guided logits of stages 0..stop-1 from one cached pass per stage over the given tokens."""
    from sdvar_lib.models.sampling import prepare_labels

    sd = SDVAR(model, model)
    label_B = prepare_labels(B, labels, model.num_classes, None, model.device)
    run = eager_run(model, label_B)
    f_hats = sd.f_hats_after([], 0, tokens[: max(stop - 1, 0)])
    out = []
    for si in range(stop):
        logits = run.forward(run.stage_input(si, f_hats))
        out.append(guided_logits(logits, si, model.num_stages, cfg))
    return out


@pytest.mark.parametrize("cfg", [0.0, 1.5])
@pytest.mark.parametrize("B", [1, 3])
def test_chunked_verify_equals_sequential(sd, B, cfg):
    target = sd.target_model
    labels = list(range(B))
    for c in range(S_TINY):
        for g in range(1, S_TINY - c + 1):
            tokens = _random_tokens(target, B, seed=10 * c + g)
            state = _state_with_prefix(sd, tokens, c, B, cfg, labels)
            proposals = tokens[c : c + g]
            draft = DraftProposal(
                start=c, tokens=proposals, q_probs=[None] * g,
                f_hats=sd.f_hats_after(list(state.f_hats), c, proposals), draft_cache_before=0,
            )
            verify = sd.verify(state, draft)
            last = min(c + g, S_TINY - 1)
            assert verify.stages == list(range(c, last + 1))
            reference = _sequential_logits(target, tokens, last + 1, B, cfg, labels)
            for si, got in zip(verify.stages, verify.logits):
                diff = (got - reference[si]).abs().max().item()
                assert diff <= 1e-4, f"c={c} g={g} stage {si}: max abs diff {diff}"
            assert state.target.cache.length == target.begin_ends[last][1]


def test_combined_query_uses_target_embeddings_and_positions(sd):
    target = sd.target_model
    B = 2
    tokens = _random_tokens(target, B, seed=3)
    state = _state_with_prefix(sd, tokens, 1, B, 1.5, [4, 5])
    draft = DraftProposal(start=1, tokens=tokens[1:3], q_probs=[None, None],
                          f_hats=sd.f_hats_after(list(state.f_hats), 1, tokens[1:3]), draft_cache_before=0)
    query = sd.verify_query(state, draft)
    assert query.stages == [1, 2, 3]
    assert query.position == target.begin_ends[1][0]
    assert query.x_2BlC.shape == (2 * B, 4 + 9 + 16, target.C)
    # the chunk is the CFG-doubled batch: both halves read the same feature map
    assert torch.equal(query.x_2BlC[:B], query.x_2BlC[B:])
    quant = target.vae.quantize
    f_hats = list(state.f_hats) + draft.f_hats
    lvl_pos = target.lvl_pos()
    expected_stage2 = target.word_embed(quant.next_input(1, f_hats[1])) + lvl_pos[:, 5:14]
    assert torch.allclose(query.x_2BlC[:B, 4:13], expected_stage2, atol=1e-6)
    mask = sd.verify_mask(state, query)
    assert mask.shape == (29, 30)
    ids = target.lvl_1L[0]
    assert torch.equal(mask, ids[:30].unsqueeze(0) <= ids[1:30].unsqueeze(1))


@pytest.mark.parametrize("gamma", [1, 2, 3, 4])
@pytest.mark.parametrize("labels", [[0, 1], [7, 3], [9, 9]])
def test_greedy_identity(sd, gamma, labels):
    target = sd.target_model
    reference = target.generate(2, labels, g_seed=11, sampling=GREEDY)
    out = sd.generate_parallel(2, labels, g_seed=11, sampling=GREEDY, gamma=gamma, policy="exact")
    for si, (a, b) in enumerate(zip(out.tokens_per_stage, reference.tokens_per_stage)):
        assert torch.equal(a, b), f"stage {si} differs from the target's greedy tokens"
    assert torch.equal(out.images_B3HW, reference.images_B3HW)
    research = ResearchSDVAR(sd.draft_model, sd.target_model)
    images = research.sdvar_autoregressive_infer_cfg_parallel_v1(2, labels, g_seed=11, cfg=1.5, top_k=1, gamma=gamma)
    assert torch.equal(images, reference.images_B3HW)
    assert research.last_output.stats.target_passes <= S_TINY


def test_greedy_self_draft_all_decoders_agree(self_sd):
    target = self_sd.target_model
    reference = target.generate(3, [1, 2, 3], g_seed=0, sampling=GREEDY).images_B3HW
    outs = {"baseline": baseline(self_sd, 3, [1, 2, 3], 0, GREEDY).images_B3HW}
    for gamma in (1, 2, 3, 4):
        outs[f"parallel g{gamma}"] = self_sd.generate_parallel(3, [1, 2, 3], 0, GREEDY, gamma).images_B3HW
    for entry in range(S_TINY + 1):
        outs[f"test3 e{entry}"] = get_method(f"test3_e{entry}").run(self_sd, 3, [1, 2, 3], 0, GREEDY).images_B3HW
    for name, images in outs.items():
        assert (images - reference).abs().max() <= 1e-4, name


@pytest.mark.parametrize("gamma", [1, 2, 3, 4])
def test_self_draft_accepts_everything(self_sd, gamma):
    accepted = proposed = 0
    for seed in range(6):
        out = self_sd.generate_parallel(4, None, g_seed=seed, gamma=gamma)
        st = out.stats
        accepted += sum(st.accepted_tokens_per_stage)
        proposed += sum(st.proposed_tokens_per_stage)
        assert st.target_passes == math.ceil(S_TINY / (gamma + 1)), st.summary()
    assert proposed > 0 and accepted / proposed >= 0.999


def test_statistics_are_consistent(sd):
    out = sd.generate_parallel(3, [1, 2, 3], g_seed=5, gamma=2)
    st = out.stats
    assert st.rounds == len(st.gamma_per_round) == len(st.stages_accepted_per_round)
    assert sum(st.stages_committed_per_round) == S_TINY
    assert st.target_passes == st.rounds
    assert st.draft_passes == sum(st.gamma_per_round)
    assert all(0 <= a <= p for a, p in zip(st.accepted_tokens_per_stage, st.proposed_tokens_per_stage))
    assert all(acc <= g for acc, g in zip(st.stages_accepted_per_round, st.gamma_per_round))
    assert st.wall_time_s > 0
    assert [t.shape for t in out.tokens_per_stage] == [(3, pn * pn) for pn in sd.patch_nums]
    assert out.images_B3HW.shape == (3, 3, 64, 64)
    assert 0 <= float(out.images_B3HW.min()) and float(out.images_B3HW.max()) <= 1


def test_seeded_calls_are_reproducible(sd):
    a = sd.generate_parallel(2, [1, 2], g_seed=3, gamma=2)
    b = sd.generate_parallel(2, [1, 2], g_seed=3, gamma=2)
    assert all(torch.equal(x, y) for x, y in zip(a.tokens_per_stage, b.tokens_per_stage))


def test_relaxed_with_zero_budget_equals_exact(sd):
    for seed in range(3):
        exact = sd.generate_parallel(3, None, g_seed=seed, gamma=2, policy="exact")
        relaxed = sd.generate_parallel(3, None, g_seed=seed, gamma=2, policy="relaxed", budget=0.0)
        assert all(torch.equal(x, y) for x, y in zip(exact.tokens_per_stage, relaxed.tokens_per_stage))


def test_relaxed_budget_raises_acceptance(self_sd, tiny_pair):
    _, draft, target = tiny_pair
    noisy = _noisy_copy(target, 0.3, seed=1)
    pair = SDVAR(noisy, target)
    exact = relaxed = 0
    for seed in range(4):
        exact += sum(pair.generate_parallel(4, None, g_seed=seed, gamma=1).stats.accepted_tokens_per_stage)
        relaxed += sum(pair.generate_parallel(4, None, g_seed=seed, gamma=1, policy="relaxed", budget=0.5,
                                              neighbours=16).stats.accepted_tokens_per_stage)
    assert relaxed > exact


def _noisy_copy(model, scale: float, seed: int):
    twin = copy.deepcopy(model)
    twin.vae_proxy = model.vae_proxy
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in twin.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * scale * p.std().nan_to_num(0.0))
    return twin


def test_adaptive_gamma_falls_back_with_a_useless_draft(sd, self_sd):
    out = sd.generate_parallel(2, [1, 2], g_seed=0, gamma="adaptive")
    st = out.stats
    assert st.target_passes <= S_TINY
    assert 0 in st.gamma_per_round, st.summary()
    good = self_sd.generate_parallel(2, [1, 2], g_seed=0, gamma="adaptive").stats
    assert good.target_passes < S_TINY and 0 not in good.gamma_per_round


def test_gamma_schedule_with_target_steps(sd):
    out = sd.generate_parallel(2, [1, 2], g_seed=0, gamma=(0, 2, 1))
    assert out.stats.gamma_per_round[0] == 0
    reference = sd.target_model.generate(2, [1, 2], g_seed=0, sampling=GREEDY)
    greedy = sd.generate_parallel(2, [1, 2], g_seed=0, sampling=GREEDY, gamma=(0, 2, 1))
    assert all(torch.equal(x, y) for x, y in zip(greedy.tokens_per_stage, reference.tokens_per_stage))


# ---- caches -------------------------------------------------------------------------------------
def _sequential_cache(model, tokens, n_stages: int, label_B: torch.Tensor):
    """A cache filled by one pass per stage over the inputs of stages < n_stages."""
    run = eager_run(model, label_B)
    f_hats = SDVAR(model, model).f_hats_after([], 0, tokens[: max(n_stages - 1, 0)])
    for si in range(n_stages):
        run.forward(run.stage_input(si, f_hats))
    return run.cache


def _assert_cache_matches(cache, reference, what: str):
    assert cache.length == reference.length, f"{what}: length {cache.length} != {reference.length}"
    for layer in range(cache.num_layers):
        assert (cache.keys(layer) - reference.keys(layer)).abs().max() <= 1e-5, f"{what}: keys of layer {layer}"
        assert (cache.values(layer) - reference.values(layer)).abs().max() <= 1e-5, f"{what}: values of layer {layer}"


@pytest.mark.parametrize("gamma", [1, 2, 3, (2, 0, 1), "adaptive"])
@pytest.mark.parametrize("pair", ["different", "self"])
def test_caches_after_every_round_equal_sequential(sd, self_sd, gamma, pair):
    model = sd if pair == "different" else self_sd
    state = model.prepare(3, [1, 2, 3], g_seed=2, gamma=gamma)
    rounds = 0
    for record in model.iter_rounds(state):
        st = record.state
        rounds += 1
        ref_t = _sequential_cache(model.target_model, list(st.tokens), st.c, st.label_B)
        _assert_cache_matches(st.target.cache, ref_t, f"target after round {record.index}")
        d = st.draft.cache.stages_held()
        assert d <= st.c
        if isinstance(gamma, int):
            assert d in (st.c, st.c - 1)
        ref_d = _sequential_cache(model.draft_model, list(st.tokens), d, st.label_B)
        _assert_cache_matches(st.draft.cache, ref_d, f"draft after round {record.index}")
        f_ref = model.f_hats_after([], 0, list(st.tokens))
        assert all(torch.equal(a, b) for a, b in zip(st.f_hats, f_ref)), "f_hat must be rebuilt from committed tokens"
    assert rounds >= 1


def test_a_call_that_raises_leaves_nothing_behind(tiny_pair):
    _, draft, target = tiny_pair
    sd = SDVAR(draft, target)
    expected = sd.generate_parallel(2, [4, 5], g_seed=9, gamma=2)

    class Boom(RuntimeError):
        pass

    calls = {"n": 0}
    real = SDVAR.accept

    def failing(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise Boom("injected failure in round 2")
        return real(self, *args, **kwargs)

    mp = pytest.MonkeyPatch()
    mp.setattr(SDVAR, "accept", failing)
    try:
        with pytest.raises(Boom):
            sd.generate_parallel(2, [4, 5], g_seed=9, gamma=2)
    finally:
        mp.undo()
    again = sd.generate_parallel(2, [4, 5], g_seed=9, gamma=2)
    assert all(torch.equal(x, y) for x, y in zip(expected.tokens_per_stage, again.tokens_per_stage))
    assert torch.equal(expected.images_B3HW, again.images_B3HW)


def test_state_is_not_mutated_by_a_round(sd):
    state = sd.prepare(2, [1, 2], g_seed=0, gamma=2)
    first = next(sd.iter_rounds(state))
    assert state.tokens == () and state.f_hats == ()
    assert first.state is not state and first.state.c >= 1


# ---- bad input ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kwargs", "exc", "pattern"),
    [
        (dict(gamma=0), ValueError, r"gamma must be an int >= 1"),
        (dict(gamma=-2), ValueError, r"gamma must be an int >= 1"),
        (dict(gamma=1.5), TypeError, r"gamma must be an int >= 1, 'adaptive'"),
        (dict(gamma="fast"), ValueError, r"gamma must be an int >= 1, 'adaptive'"),
        (dict(gamma=(0, 0)), ValueError, r"only zeros"),
        (dict(policy="greedy"), ValueError, r"unknown policy 'greedy'; allowed: exact, top1_match, relaxed"),
        (dict(policy="top1_match", threshold=0.0), ValueError, r"threshold .* must be a finite number in \(0, 1\]"),
        (dict(policy="relaxed", budget=2.0), ValueError, r"budget .* must be a finite number in \[0, 1\]"),
        (dict(sampling=SamplingConfig(more_smooth=True)), ValueError,
         r"more_smooth=True cannot be used with the token-level policy 'exact'"),
        (dict(policy="top1_match", sampling=SamplingConfig(more_smooth=True)), ValueError, r"more_smooth=True cannot be used"),
        (dict(sampling=SamplingConfig(top_k=10**6)), ValueError, r"top_k must be in \[0, 64\]"),
        (dict(B=0), ValueError, r"B must be an int >= 1"),
    ],
)
def test_parallel_rejects_bad_input(sd, kwargs, exc, pattern):
    args = dict(B=2, label_B=[1, 2], g_seed=0)
    args.update(kwargs)
    with pytest.raises(exc, match=pattern):
        sd.generate_parallel(**args)


@pytest.mark.parametrize(("kwargs", "pattern"), [
    (dict(entry_num=-1), r"entry_num must be an int in \[0, 4\]"),
    (dict(entry_num=5), r"entry_num must be an int in \[0, 4\]"),
    (dict(sd_mask=6), r"sd_mask must be one of \[0, 1, 2, 3, 4, 5\]"),
    (dict(sd_mask=-1), r"sd_mask must be one of"),
])
def test_test3_rejects_bad_input(sd, kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        generate_test3(sd, 2, [1, 2], g_seed=0, **{"entry_num": 2, **kwargs})


def test_mismatched_models_are_rejected():
    from sdvar_lib.models import VAR, VQVAE
    from sdvar_lib.models.presets import TINY_CONFIG

    vae, target = build_tiny(0)
    other_vae, other = build_tiny(1)  # same shapes, different codebook
    with pytest.raises(ValueError, match="codebooks differ"):
        SDVAR(other, target)
    small_vocab = VQVAE(**dict(TINY_CONFIG["vae"], vocab_size=32))
    with pytest.raises(ValueError, match=r"vocabulary sizes differ \(draft 32, target 64\)"):
        SDVAR(VAR(small_vocab, **TINY_CONFIG["var"]), target)
    with pytest.raises(ValueError, match="numbers of classes differ"):
        SDVAR(VAR(vae, **dict(TINY_CONFIG["var"], num_classes=5)), target)
    other_scales = VQVAE(**dict(TINY_CONFIG["vae"], v_patch_nums=(1, 2, 4)))
    with pytest.raises(ValueError, match="patch numbers differ"):
        SDVAR(VAR(other_scales, **dict(TINY_CONFIG["var"], patch_nums=(1, 2, 4))), target)
    wide = VQVAE(**dict(TINY_CONFIG["vae"], z_channels=16))
    with pytest.raises(ValueError, match="Cvae differs"):
        SDVAR(VAR(wide, **TINY_CONFIG["var"]), target)
    with pytest.raises(TypeError, match="two sdvar_lib.models.VAR models"):
        SDVAR(target.vae, target)


def test_experimental_masks_change_the_prefill(sd):
    outs = [generate_test3(sd, 2, [1, 2], 0, GREEDY, entry_num=3, sd_mask=m).images_B3HW for m in range(6)]
    assert torch.equal(outs[0], outs[3])  # native training mask == block-causal
    assert any(not torch.equal(outs[0], o) for o in outs[1:3] + outs[4:])


def test_a_rule_that_never_drafts_decodes_like_the_target_alone(sd):
    from sdvar_lib.sdvar.gamma import AdaptiveGamma

    never = AdaptiveGamma(prior_acceptance=0.0)
    out = sd.generate_parallel(2, [1, 2], g_seed=4, gamma=never)
    reference = sd.target_model.generate(2, [1, 2], g_seed=4)
    assert all(torch.equal(a, b) for a, b in zip(out.tokens_per_stage, reference.tokens_per_stage))
    assert torch.equal(out.images_B3HW, reference.images_B3HW)
    st = out.stats
    assert st.target_passes == S_TINY and st.draft_passes == 0
    assert st.gamma_per_round == [0] * S_TINY and sum(st.stages_committed_per_round) == S_TINY
