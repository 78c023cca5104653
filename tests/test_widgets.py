"""sdvar_lib.viz.widgets: the widget callback is a plain, reproducible function; the sliders drive it."""

from __future__ import annotations

import pytest
import torch

from sdvar_lib import SDVAR, SamplingConfig
from sdvar_lib.viz.widgets import POLICY_OPTIONS, RunDescription, describe_stats, make_interactive, run_and_describe


@pytest.fixture(scope="module")
def sd(tiny_pair):
    _, draft, target = tiny_pair
    return SDVAR(draft, target)


def test_run_and_describe_returns_images_stats_and_text(sd):
    d = run_and_describe(sd, gamma=2, cfg=1.5, policy="exact", seed=3, labels=[1, 2, 3])
    assert isinstance(d, RunDescription)
    assert (d.gamma, d.cfg, d.policy, d.seed, d.labels) == (2, 1.5, "exact", 3, [1, 2, 3])
    assert d.images_B3HW.shape == (3, 3, 64, 64)
    assert 0 <= float(d.images_B3HW.min()) and float(d.images_B3HW.max()) <= 1
    assert max(d.stats.gamma_per_round) <= 2 and sum(d.stats.stages_committed_per_round) == sd.num_stages
    assert d.text.splitlines()[0] == "parallel_v1 gamma=2 cfg=1.50 policy=exact seed=3 labels=[1, 2, 3]"
    assert d.text.endswith(describe_stats(d.stats))
    assert f"target passes {d.stats.target_passes} for {sd.num_stages} stages" in d.text
    assert d.figure is not None and len([ax for ax in d.figure.axes if ax.images]) == 3


def test_run_and_describe_is_reproducible_and_matches_generate_parallel(sd):
    a = run_and_describe(sd, gamma=3, cfg=2.0, policy="top1_match", seed=5, labels=[4, 5], with_figure=False)
    b = run_and_describe(sd, gamma=3, cfg=2.0, policy="top1_match", seed=5, labels=[4, 5], with_figure=False)
    assert a.figure is None and a.text == b.text and torch.equal(a.images_B3HW, b.images_B3HW)
    ref = sd.generate_parallel(2, [4, 5], g_seed=5, gamma=3, policy="top1_match", sampling=SamplingConfig(cfg=2.0))
    assert torch.equal(a.images_B3HW, ref.images_B3HW.cpu())
    assert a.stats.gamma_per_round == ref.stats.gamma_per_round


def test_describe_stats_has_rounded_numbers_and_no_timings(sd):
    st = sd.generate_parallel(2, [1, 2], g_seed=0, gamma=2).stats
    text = describe_stats(st)
    assert " ms" not in text and "wall" not in text
    assert f"token acceptance {st.token_acceptance:.4f}" in text


@pytest.mark.parametrize(
    ("kwargs", "error", "pattern"),
    [
        (dict(gamma=0), ValueError, "gamma must be an int >= 1"),
        (dict(gamma=True), TypeError, "gamma must be an int >= 1"),
        (dict(cfg=-1.0), ValueError, "cfg must be a finite number >= 0"),
        (dict(cfg=float("nan")), ValueError, "cfg must be a finite number >= 0"),
        (dict(policy="greedy"), ValueError, "policy must be one of"),
        (dict(seed=1.5), TypeError, "seed must be an int"),
        (dict(seed=-1), ValueError, r"seed must be an int in \[0, 2\*\*63\)"),
        (dict(labels=[]), ValueError, "labels must not be empty"),
        (dict(labels="12"), TypeError, "labels must be a sequence of ints"),
        (dict(labels=[1, "2"]), TypeError, "every value of labels must be an int"),
    ],
)
def test_run_and_describe_rejects_bad_input(sd, kwargs, error, pattern):
    args = dict(gamma=2, cfg=1.5, policy="exact", seed=0, labels=[1, 2])
    args.update(kwargs)
    with pytest.raises(error, match=pattern):
        run_and_describe(sd, **args)


def test_run_and_describe_needs_an_sdvar():
    with pytest.raises(TypeError, match="sdvar must be an sdvar_lib.SDVAR"):
        run_and_describe("model")


def test_interactive_sliders_drive_the_callback(sd):
    pytest.importorskip("ipywidgets")
    w = make_interactive(sd, labels=[1, 2], seed=0)
    gamma, cfg, policy = w.children[:3]
    assert (gamma.description, cfg.description, policy.description) == ("gamma", "cfg", "policy")
    assert list(policy.options) == list(POLICY_OPTIONS)
    assert gamma.max == sd.num_stages
    assert w.result.gamma == 2
    gamma.value = 3
    assert w.result.gamma == 3 and max(w.result.stats.gamma_per_round) <= 3
    cfg.value = 3.0
    assert w.result.cfg == 3.0 and w.result.gamma == 3
    policy.value = "top1_match"
    assert w.result.policy == "top1_match"
    assert w.result.text.startswith("parallel_v1 gamma=3 cfg=3.00 policy=top1_match seed=0 labels=[1, 2]")
