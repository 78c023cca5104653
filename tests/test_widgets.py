"""sdvar_lib.viz.widgets: the callbacks are plain, reproducible functions; the sliders drive them and what the
panel's output area displays (the image, the text) follows every control."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
import torch
from ipywidgets import IntSlider, Output, ValueWidget

from sdvar_lib import SDVAR, SamplingConfig
from sdvar_lib.viz.widgets import (
    DECODING_OPTIONS,
    POLICY_OPTIONS,
    STATIC_NOTE,
    WIDGET_VIEW_MIME,
    ComparisonDescription,
    LivePanel,
    RunDescription,
    describe_stats,
    figure_png,
    make_comparison_interactive,
    make_interactive,
    run_and_describe,
    run_comparison,
    strip_widget_state,
)

NOTEBOOK_DIR = Path(__file__).resolve().parents[1] / "notebooks"
PANEL_NOTEBOOKS = {"02_parallel_verify": "make_interactive(", "03_var_baseline_comparison": "make_comparison_interactive("}


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


# ---- what the panel displays ---------------------------------------------------------------------
def shown(panel: LivePanel) -> tuple[bytes, str]:
    """The PNG and the text that the panel's output area displays now (exactly one of each, in that order)."""
    outs = panel.output.outputs
    assert [o["output_type"] for o in outs] == ["display_data", "stream"], outs
    png = base64.b64decode(outs[0]["data"]["image/png"])
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    return png, outs[1]["text"]


def test_the_panel_shows_its_first_run_when_built(sd):
    w = make_interactive(sd, labels=[1, 2], seed=0)
    assert isinstance(w, LivePanel) and isinstance(w.output, Output) and w.runs == 1
    assert list(w.controls) == ["gamma", "cfg", "policy"]
    assert all(isinstance(c, ValueWidget) for c in w.controls.values())
    gamma, cfg, policy = w.controls.values()
    assert (gamma.description, cfg.description, policy.description) == ("gamma", "cfg", "policy")
    assert list(policy.options) == list(POLICY_OPTIONS) and gamma.max == sd.num_stages
    assert list(w.widget.children[0].children[:3]) == [gamma, cfg, policy] and w.widget.children[1] is w.output
    png, text = shown(w)
    assert text == w.result.text + "\n" and text.startswith("parallel_v1 gamma=2 cfg=1.50 policy=exact seed=0 labels=[1, 2]")
    assert png == figure_png(w.result.figure)  # the image grid of the run whose statistics are printed
    assert w.status.value == ""


@pytest.mark.parametrize(
    ("control", "value", "first_line"),
    [
        ("gamma", 3, "parallel_v1 gamma=3 cfg=1.50 policy=exact"),
        ("cfg", 3.0, "parallel_v1 gamma=2 cfg=3.00 policy=exact"),
        ("policy", "top1_match", "parallel_v1 gamma=2 cfg=1.50 policy=top1_match"),
    ],
)
def test_every_control_redraws_the_image_and_the_statistics(sd, control, value, first_line):
    w = make_interactive(sd, labels=[1, 2], seed=0)
    png_before, _ = shown(w)
    w.controls[control].value = value
    png, text = shown(w)  # replaced, not appended: one image and one text
    assert text.startswith(first_line) and text == w.result.text + "\n" and w.runs == 2
    assert png != png_before and png == figure_png(w.result.figure)
    assert getattr(w.result, control) == value


def test_the_panel_follows_several_moves(sd):
    w = make_interactive(sd, labels=[1, 2], seed=0)
    w.controls["gamma"].value = 3
    w.controls["cfg"].value = 3.0
    w.controls["policy"].value = "top1_match"
    assert w.result.gamma == 3 and max(w.result.stats.gamma_per_round) <= 3
    _, text = shown(w)
    assert text.startswith("parallel_v1 gamma=3 cfg=3.00 policy=top1_match seed=0 labels=[1, 2]")
    assert w.runs == 4 and "gamma=3" in repr(w) and "runs=4" in repr(w)


def test_the_panels_text_form_is_a_static_image_with_a_note(sd):
    w = make_interactive(sd, labels=[1, 2], seed=0)
    bundle = w._repr_mimebundle_()
    assert bundle[WIDGET_VIEW_MIME]["model_id"] == w.widget.model_id
    assert bundle["text/plain"] == f"{w.result.text}\n{STATIC_NOTE}"
    assert base64.b64decode(bundle["image/png"]) == figure_png(w.result.figure)


def test_a_failed_run_is_shown_and_raised_and_keeps_the_last_result():
    calls = []

    def run(n):
        calls.append(n)
        if n == 3:
            raise ValueError("n must not be 3")
        return run_result(n)

    panel = LivePanel(run=run, controls={"n": IntSlider(value=1, min=0, max=5)})
    first = panel.result
    with pytest.raises(ValueError, match="n must not be 3"):
        panel.controls["n"].value = 3
    (out,) = panel.output.outputs
    assert out["name"] == "stderr" and "n must not be 3" in out["text"] and panel.result is first and calls == [1, 3]
    panel.controls["n"].value = 4
    assert shown(panel)[1] == "n=4\n"


def run_result(n):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(1, 1))
    fig.suptitle(str(n))
    return RunDescription(gamma=1, cfg=0.0, policy="exact", seed=0, labels=[0], images_B3HW=torch.zeros(1, 3, 2, 2),
                          stats=None, text=f"n={n}", figure=fig)


@pytest.mark.parametrize(
    ("kwargs", "error", "pattern"),
    [
        (dict(run=None), TypeError, "run must be callable"),
        (dict(controls={}), ValueError, "controls must be a non-empty mapping"),
        (dict(controls={"n": 3}), TypeError, "control 'n' must be an ipywidgets value widget"),
    ],
)
def test_live_panel_rejects_bad_input(kwargs, error, pattern):
    args = dict(run=run_result, controls={"n": IntSlider(value=1)})
    args.update(kwargs)
    with pytest.raises(error, match=pattern):
        LivePanel(**args)


# ---- the comparison of notebook 03 ---------------------------------------------------------------------
def test_run_comparison_compares_every_decoder_with_the_baseline(sd):
    c = run_comparison(sd, gamma=2, cfg=1.5, top_k=1, seed=0, labels=[1, 2, 3])
    assert isinstance(c, ComparisonDescription) and c.entry == sd.num_stages // 2
    assert list(c.outputs) == ["baseline", "SDVAR parallel_v1", f"test3 entry={c.entry}", "draft alone"]
    assert [r.method for r in c.rows] == list(c.outputs)
    assert c.row("baseline").mean_abs_diff == 0.0 and c.row("baseline").target_passes == sd.num_stages
    exact = c.row("SDVAR parallel_v1")  # greedy exact SDVAR is the target's greedy decode
    assert exact.mean_abs_diff == 0.0 and exact.pearson == pytest.approx(1.0)
    assert c.row("draft alone").target_passes == 0 and c.row("draft alone").mean_abs_diff > 0
    lines = c.text.splitlines()
    assert lines[0] == "comparison gamma=2 cfg=1.50 greedy (top_k=1) seed=0 labels=[1, 2, 3]"
    assert lines[1].split() == ["method", "target", "draft", "mean|diff|", "L2", "corr"] and len(lines) == 6
    assert lines[3].startswith("SDVAR parallel_v1") and f"{exact.target_passes:>6} {exact.draft_passes:>6}" in lines[3]
    assert len([ax for ax in c.figure.axes if ax.images]) == 4 * 3
    sampled = run_comparison(sd, gamma=2, cfg=1.5, top_k=0, seed=0, labels=[1, 2, 3], entry=1, with_figure=False)
    assert sampled.figure is None and "sampled (top_k=0)" in sampled.text and "test3 entry=1" in sampled.outputs
    with pytest.raises(ValueError, match="no method 'x'"):
        c.row("x")


@pytest.mark.parametrize(
    ("kwargs", "error", "pattern"),
    [
        (dict(gamma=0), ValueError, "gamma must be an int >= 1"),
        (dict(cfg=float("inf")), ValueError, "cfg must be a finite number >= 0"),
        (dict(top_k=-1), ValueError, "top_k must be an int in"),
        (dict(entry=99), ValueError, "entry must be an int in"),
        (dict(labels=[]), ValueError, "labels must not be empty"),
        (dict(seed=-1), ValueError, "seed must be an int"),
    ],
)
def test_run_comparison_rejects_bad_input(sd, kwargs, error, pattern):
    args = dict(gamma=2, cfg=1.5, top_k=1, seed=0, labels=[1])
    args.update(kwargs)
    with pytest.raises(error, match=pattern):
        run_comparison(sd, **args)


def test_the_comparison_panel_redraws_for_every_control(sd):
    w = make_comparison_interactive(sd, labels=[1, 2], seed=0)
    assert list(w.controls) == ["gamma", "cfg", "top_k"]
    assert list(w.controls["top_k"].options) == list(DECODING_OPTIONS)
    png, text = shown(w)
    assert text.startswith("comparison gamma=2 cfg=1.50 greedy (top_k=1)")
    for control, value, first_line in [("gamma", 3, "comparison gamma=3 cfg=1.50 greedy"),
                                       ("cfg", 2.5, "comparison gamma=3 cfg=2.50 greedy"),
                                       ("top_k", 0, "comparison gamma=3 cfg=2.50 sampled (top_k=0)")]:
        w.controls[control].value = value
        new_png, text = shown(w)
        assert text.startswith(first_line) and new_png != png and new_png == figure_png(w.result.figure)
        png = new_png
    assert (w.result.gamma, w.result.cfg, w.result.top_k) == (3, 2.5, 0)


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [(dict(top_k=5), "top_k must be one of"), (dict(gamma=99), "max_gamma"), (dict(cfg=9.0), "max_cfg")],
)
def test_the_comparison_panel_rejects_bad_input(sd, kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        make_comparison_interactive(sd, labels=[1], **kwargs)


# ---- stored notebooks ----------------------------------------------------------------------------
def test_strip_widget_state_keeps_the_static_image_and_the_note():
    image = {"output_type": "display_data", "metadata": {},
             "data": {WIDGET_VIEW_MIME: {"model_id": "abc"}, "image/png": "iVBORw0K", "text/plain": f"stats\n{STATIC_NOTE}"}}
    bare = {"output_type": "execute_result", "execution_count": 1, "metadata": {},
            "data": {WIDGET_VIEW_MIME: {"model_id": "def"}, "text/plain": "IntSlider(value=3)"}}
    text = {"output_type": "stream", "name": "stdout", "text": "kept\n"}
    nb = {"cells": [{"cell_type": "code", "outputs": [image, bare, text], "source": ""},
                    {"cell_type": "markdown", "source": "x"}],
          "metadata": {"kernelspec": {"name": "python3"}, "widgets": {"state": {}}}, "nbformat": 4, "nbformat_minor": 5}
    before = json.dumps(nb, sort_keys=True)
    out = strip_widget_state(nb)
    assert json.dumps(nb, sort_keys=True) == before  # a copy; the argument is left alone
    assert out["metadata"] == {"kernelspec": {"name": "python3"}}
    first, note, kept = out["cells"][0]["outputs"]
    assert first["data"] == {"image/png": "iVBORw0K", "text/plain": "<static image of the first run>"}
    assert note == {"output_type": "stream", "name": "stdout", "text": f"stats\n{STATIC_NOTE}\n"}
    assert kept == text and out["cells"][1] == nb["cells"][1]
    with pytest.raises(TypeError, match="notebook must be"):
        strip_widget_state([])


@pytest.mark.parametrize("name", sorted(PANEL_NOTEBOOKS))
def test_stored_notebooks_show_the_first_run_and_hold_no_widget_state(name):
    """Opened without a kernel, a panel's cell shows a static image of its first run and the note; nothing else of
    the widgets is stored (scripts/store_notebooks.py)."""
    nb = json.loads((NOTEBOOK_DIR / f"{name}.ipynb").read_text())
    assert "widgets" not in nb["metadata"]
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert not [o for c in code for o in c["outputs"] if WIDGET_VIEW_MIME in o.get("data", {})]
    (cell,) = [c for c in code if PANEL_NOTEBOOKS[name] in "".join(c["source"])]
    assert "".join(cell["source"]).startswith("# NBVAL_IGNORE_OUTPUT")  # nbval never compares a panel's output
    image, note = cell["outputs"]
    assert base64.b64decode(image["data"]["image/png"])[:4] == b"\x89PNG"
    assert "".join(note["text"]).rstrip("\n").endswith(STATIC_NOTE)
    assert "gamma=2 cfg=1.50" in "".join(note["text"]).splitlines()[0]
