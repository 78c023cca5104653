"""Static KV cache: explicit length, append/truncate, block-causal chunk masks, no leaks between calls."""

from __future__ import annotations

import pytest
import torch

from sdvar_lib.models import VAR
from sdvar_lib.models.kv_cache import KVCache, block_causal_mask, stage_ids_for
from sdvar_lib.models.sampling import cfg_labels

PATCH_NUMS = (1, 2, 3)


def _cache(batch: int = 2) -> KVCache:
    return KVCache(num_layers=2, batch_size=batch, num_heads=1, head_dim=4, stage_ids_L=stage_ids_for(PATCH_NUMS))


def test_stage_ids_and_mask():
    ids = stage_ids_for(PATCH_NUMS)
    assert ids.tolist() == [0, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 2]
    mask = block_causal_mask(ids, ids)
    for q in range(ids.numel()):
        for k in range(ids.numel()):
            assert bool(mask[q, k]) == (ids[k] <= ids[q])


def test_write_advance_truncate():
    cache = _cache()
    k = torch.randn(2, 1, 1, 4)
    for layer in range(2):
        k_all, v_all = cache.write(layer, k, k + 1)
        assert k_all.shape[2] == 1
    cache.advance(1)
    assert cache.length == 1 and cache.stages_held() == 1
    k2 = torch.randn(2, 1, 4, 4)
    for layer in range(2):
        k_all, _ = cache.write(layer, k2, k2)
        assert torch.equal(k_all[:, :, :1], k) and torch.equal(k_all[:, :, 1:5], k2)
    cache.advance(4)
    assert cache.length == 5 and cache.stages_held() == 2
    cache.truncate(1)
    assert cache.length == 1 and torch.equal(cache.keys(0), k)
    with pytest.raises(ValueError, match="truncate length"):
        cache.truncate(3)
    with pytest.raises(ValueError, match="advance"):
        cache.advance(2)


def test_overflow_raises():
    cache = _cache()
    with pytest.raises(ValueError, match="overflows"):
        cache.write(0, torch.zeros(2, 1, 15, 4), torch.zeros(2, 1, 15, 4))
    with pytest.raises(ValueError, match="overflows"):
        cache.chunk_mask(15)


def test_chunk_mask_from_stage_ids():
    cache = _cache()
    assert cache.chunk_mask(1) is None  # stage 0 alone
    mask = cache.chunk_mask(5)  # stages 0 and 1 in one chunk
    assert mask.shape == (5, 5)
    assert mask[0].tolist() == [True, False, False, False, False]
    assert mask[1:].all()
    for layer in range(2):
        cache.write(layer, torch.zeros(2, 1, 5, 4), torch.zeros(2, 1, 5, 4))
    cache.advance(5)
    assert cache.chunk_mask(9) is None  # one stage over a cached prefix sees everything
    cache.truncate(1)
    mask = cache.chunk_mask(13)  # stages 1 and 2 after stage 0
    assert mask.shape == (13, 14)
    assert mask[:4, 5:].sum() == 0 and mask[:4, :5].all() and mask[4:].all()


def _teacher_inputs(model, B: int, seed: int):
    gen = torch.Generator().manual_seed(seed)
    tokens = [torch.randint(0, model.V, (B, pn * pn), generator=gen) for pn in model.patch_nums]
    labels = torch.randint(0, model.num_classes, (B,), generator=gen)
    return tokens, labels


@pytest.mark.parametrize("split", [(4,), (1, 3), (1, 1, 1, 1), (2, 2), (3, 1)])
def test_chunked_cached_passes_equal_teacher_forcing(tiny_pair, split):
    vae, _, target = tiny_pair
    B = 3
    tokens, labels = _teacher_inputs(target, B, seed=sum(split))
    with torch.no_grad():
        ref = target(labels, vae.quantize.idxBl_to_var_input(tokens))
        x_BLCv = vae.quantize.idxBl_to_var_input(tokens)
        cond = target.class_condition(labels)
        lvl_pos = target.lvl_pos()
        full_BLC = torch.cat(
            [target.start_input(cond, lvl_pos), target.word_embed(x_BLCv) + lvl_pos[:, target.first_l:]], dim=1
        )
        cache = target.new_cache(B)
        outs, stage = [], 0
        for n in split:
            bg, ed = target.begin_ends[stage][0], target.begin_ends[stage + n - 1][1]
            outs.append(target.forward_cached(full_BLC[:, bg:ed], cond, cache))
            stage += n
    got = torch.cat(outs, dim=1)
    assert cache.length == target.L
    assert (got - ref).abs().max() <= 1e-5


def _caches_reachable(model) -> list[str]:
    found = []
    for name, module in model.named_modules():
        for attr, value in vars(module).items():
            if isinstance(value, KVCache):
                found.append(f"{name}.{attr}")
    return found


def test_no_cache_survives_a_call_even_when_it_raises(tiny_pair, monkeypatch):
    _, _, target = tiny_pair
    reference = target.generate(2, [1, 2], g_seed=5)
    assert _caches_reachable(target) == []

    calls = {"n": 0}
    real_sample_stage = VAR.sample_stage

    def failing_sample_stage(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("injected failure at stage 2")
        return real_sample_stage(*args, **kwargs)

    monkeypatch.setattr(VAR, "sample_stage", failing_sample_stage)
    with pytest.raises(RuntimeError, match="injected"):
        target.generate(2, [1, 2], g_seed=5)
    monkeypatch.setattr(VAR, "sample_stage", real_sample_stage)
    assert _caches_reachable(target) == []
    again = target.generate(2, [1, 2], g_seed=5)
    for a, b in zip(reference.tokens_per_stage, again.tokens_per_stage):
        assert torch.equal(a, b)
    assert torch.equal(reference.images_B3HW, again.images_B3HW)


def test_reused_cache_is_reset(tiny_pair):
    _, _, target = tiny_pair
    cache = target.new_cache(4)
    first = target.generate(2, [3, 4], g_seed=1, cache=cache)
    # leave garbage in the cache as an interrupted call would
    cond = target.class_condition(cfg_labels(torch.tensor([0, 0]), target.num_classes))
    target.forward_cached(target.start_input(cond), cond, cache)
    second = target.generate(2, [3, 4], g_seed=1, cache=cache)
    assert torch.equal(first.images_B3HW, second.images_B3HW)
    with pytest.raises(ValueError, match="cache holds"):
        target.generate(3, 1, g_seed=1, cache=cache)
