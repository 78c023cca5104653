"""The decoder registry: one frozen spec per method, one way to run it, names, chunks and bad specs."""

from __future__ import annotations

import pytest
import torch

from sdvar_lib import METHODS, SDVAR, Method, SamplingConfig, get_method
from sdvar_lib.sdvar import (
    DECODERS,
    AdaptiveGamma,
    ExactPolicy,
    FixedGamma,
    RelaxedPolicy,
    Top1MatchPolicy,
    baseline,
    code_handoff,
    draft_alone,
    generate_test3,
    methods_for,
    register,
)
from sdvar_lib.sdvar.registry import EVALUATION_METHODS, stage_chunks


def _same(a, b) -> bool:
    return torch.equal(a.images_B3HW, b.images_B3HW) and all(
        torch.equal(x, y) for x, y in zip(a.tokens_per_stage, b.tokens_per_stage)
    )


@pytest.mark.parametrize(
    ("name", "direct"),
    [
        ("target", lambda sd, kw: baseline(sd, **kw)),
        ("draft", lambda sd, kw: draft_alone(sd, **kw)),
        ("exact_g2", lambda sd, kw: sd.generate_parallel(**kw, gamma=2, policy="exact")),
        ("exact_adaptive", lambda sd, kw: sd.generate_parallel(**kw, gamma="adaptive")),
        ("relaxed_0.1_g2", lambda sd, kw: sd.generate_parallel(**kw, gamma=2, policy="relaxed", budget=0.1)),
        ("top1_0.5_g2", lambda sd, kw: sd.generate_parallel(**kw, gamma=2, policy="top1_match", threshold=0.5)),
        ("test3_e2", lambda sd, kw: generate_test3(sd, **kw, entry_num=2)),
        ("code_e3", lambda sd, kw: code_handoff(sd, **kw, entry_num=3)),
    ],
)
def test_a_method_runs_exactly_its_decoder(sd, name, direct):
    sampling = SamplingConfig(cfg=1.5, top_k=5, top_p=0.9)
    kw = dict(B=2, label_B=[1, 7], g_seed=11, sampling=sampling)
    got = get_method(name).run(sd, 2, [1, 7], 11, sampling)
    want = direct(sd, kw)
    assert _same(got, want)
    assert got.stats.target_passes == want.stats.target_passes and got.stats.draft_passes == want.stats.draft_passes


def test_registered_methods_and_their_options():
    assert set(EVALUATION_METHODS) <= set(METHODS)
    assert set(DECODERS) == {"target", "draft", "sdvar", "test3", "code_handoff"}
    m = METHODS["exact_adaptive"]
    assert m.decoder == "sdvar" and isinstance(m.gamma, AdaptiveGamma) and isinstance(m.policy, ExactPolicy)
    assert m.lossless and METHODS["target"].lossless
    assert not METHODS["relaxed_0.1_g2"].lossless and not METHODS["draft"].lossless and not METHODS["code_e6"].lossless
    assert METHODS["relaxed_0.05_g2"].policy == RelaxedPolicy(budget=0.05)
    assert METHODS["top1_0.9_g2"].policy == Top1MatchPolicy(threshold=0.9)
    assert METHODS["code_e8"].entry_num == 8 and METHODS["code_e8"].describe().startswith("CoDe hand-off")


def test_each_decoder_kind_describes_its_methods():
    """``Method.describe`` is the kind's: one line per decoder with the method's options."""
    assert METHODS["target"].describe() == "target alone" and METHODS["draft"].describe() == "draft alone"
    assert METHODS["exact_g2"].describe() == "SDVAR exact, gamma 2"
    assert METHODS["test3_e3"].describe() == "test3 (draft stages < 3, then target)"
    assert Method("m", "test3", entry_num=3, sd_mask=2).describe() == "test3 (draft stages < 3, then target, sd_mask 2)"
    assert METHODS["code_e5"].describe() == "CoDe hand-off (target stages < 5, then draft)"
    for kind in DECODERS.values():
        assert callable(kind.describe) and callable(kind.run)


def test_names_outside_the_registry_follow_the_scheme():
    assert get_method("exact_g3").gamma == FixedGamma(3)
    assert get_method("relaxed_0.2_g3").policy == RelaxedPolicy(budget=0.2)
    assert get_method("top1_0.7_g1").policy == Top1MatchPolicy(threshold=0.7)
    assert get_method("test3_e7").entry_num == 7 and get_method("code_e9").decoder == "code_handoff"
    with pytest.raises(ValueError, match="unknown method 'beam'.*registered: target, draft"):
        get_method("beam")
    with pytest.raises(ValueError, match="relaxed budget"):
        get_method("relaxed_2_g2")
    with pytest.raises(TypeError, match="method name must be a string"):
        get_method(3)


def test_methods_for_a_pair_leave_out_handoffs_that_do_not_fit():
    names = [m.name for m in methods_for(7)]
    assert "code_e8" not in names and "code_e6" in names and "test3_e5" in names
    assert [m.name for m in methods_for(10, ["target", "code_e8"])] == ["target", "code_e8"]
    with pytest.raises(ValueError, match="entry_num 8 exceeds the 7 stages"):
        methods_for(7, ["code_e8"])
    with pytest.raises(ValueError, match="repeat"):
        methods_for(7, ["target", "target"])


def test_register_adds_one_entry_and_refuses_a_duplicate(sd):
    method = Method("exact_g5_test", "sdvar", policy="exact", gamma=5)
    try:
        assert register(method) is method and get_method("exact_g5_test") is method
        with pytest.raises(ValueError, match="already registered"):
            register(Method("exact_g5_test", "target"))
        out = method.run(sd, 1, [2], 0)
        assert out.stats.gamma_per_round[0] == min(5, sd.num_stages)
    finally:
        METHODS.pop("exact_g5_test", None)


def test_chunks_of_each_decoder():
    S = 10
    assert METHODS["target"].chunks(S) == (stage_chunks(S, 1), [])
    assert METHODS["draft"].chunks(S) == ([], stage_chunks(S, 1))
    t, d = METHODS["exact_g2"].chunks(S)
    assert t == stage_chunks(S, 3) and d == stage_chunks(S, 2)
    t, d = METHODS["exact_adaptive"].chunks(S)  # may take target steps: the draft can lag any number of stages
    assert t == stage_chunks(S, AdaptiveGamma().max_gamma + 1) and d == stage_chunks(S, S)
    t, d = METHODS["test3_e5"].chunks(S)
    assert t == [(0, 6)] + [(s, 1) for s in range(6, S)] and d == [(s, 1) for s in range(5)]
    t, d = METHODS["code_e6"].chunks(S)
    assert t == [(s, 1) for s in range(6)] and d == [(0, 7)] + [(s, 1) for s in range(7, S)]


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        (dict(name="", decoder="target"), ValueError, "a method's name must be a non-empty string"),
        (dict(name="x", decoder="beam"), ValueError, "decoder must be one of target, draft, sdvar"),
        (dict(name="x", decoder="sdvar", gamma=2), ValueError, "needs a gamma and a policy"),
        (dict(name="x", decoder="sdvar", gamma=0, policy="exact"), ValueError, "gamma must be an int >= 1"),
        (dict(name="x", decoder="sdvar", gamma=2, policy=3), TypeError, "policy must be one of"),
        (dict(name="x", decoder="sdvar", gamma=2, policy="greedy"), ValueError, "unknown policy 'greedy'"),
        (dict(name="x", decoder="target", gamma=2), ValueError, "takes no gamma"),
        (dict(name="x", decoder="test3"), TypeError, "entry_num of 'x' must be an int >= 0"),
        (dict(name="x", decoder="code_handoff", entry_num=-1), ValueError, "entry_num of 'x' must be an int >= 0"),
        (dict(name="x", decoder="draft", entry_num=2), ValueError, "takes no entry_num"),
        (dict(name="x", decoder="code_handoff", entry_num=2, sd_mask=1), ValueError, "takes no sd_mask"),
        (dict(name="x", decoder="test3", entry_num=2, sd_mask=9), ValueError, "sd_mask must be one of"),
    ],
)
def test_bad_method_specs_are_refused(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        Method(**kwargs)


def test_run_checks_its_arguments(sd):
    m = METHODS["target"]
    with pytest.raises(TypeError, match="sd must be an sdvar_lib.SDVAR"):
        m.run(object(), 1)
    with pytest.raises(TypeError, match="sampling must be a SamplingConfig"):
        m.run(sd, 1, sampling={"cfg": 1.0})
    with pytest.raises(ValueError, match="entry_num 8 exceeds"):
        METHODS["code_e8"].run(sd, 1)
    assert isinstance(sd, SDVAR)


def test_policies_are_frozen_dataclasses():
    """``AcceptancePolicy`` and every policy are frozen dataclasses (what ARCHITECTURE.md tells a new policy to be)."""
    import dataclasses

    from sdvar_lib.sdvar import AcceptancePolicy

    for cls in (AcceptancePolicy, ExactPolicy, Top1MatchPolicy, RelaxedPolicy):
        assert dataclasses.is_dataclass(cls) and cls.__dataclass_params__.frozen, cls.__name__
    with pytest.raises(dataclasses.FrozenInstanceError):
        RelaxedPolicy(budget=0.1).budget = 0.2
