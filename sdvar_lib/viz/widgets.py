"""Interactive exploration of SDVAR: sliders that rerun a plain library function and show its result.

Two callbacks, each a plain, reproducible function that returns a description (images, statistics,
a text with numbers rounded to 4 decimals and no timings, and a figure):

- :func:`run_and_describe` runs ``parallel_v1`` once (notebook 02);
- :func:`run_comparison` runs the baseline (target alone), SDVAR ``parallel_v1``, ``test3`` and the
  draft alone from the same labels and seed and compares each with the baseline (notebook 03).

:class:`LivePanel` wires a callback to controls: every change of a control reruns it and replaces
what its own ``Output`` shows (the figure as a PNG, then the text) in one step, so nothing stacks or
flickers; ``panel.result`` is the latest description. :func:`make_interactive` (``gamma`` and
``cfg`` sliders, a policy dropdown) and :func:`make_comparison_interactive` (``gamma`` and ``cfg``
sliders, greedy or sampled) build the two panels of the notebooks.

Sliders need a live kernel. A stored notebook carries no widget state: :func:`strip_widget_state`
replaces a panel's widget view by the static image of its first run and a note saying so
(``scripts/store_notebooks.py`` executes the notebooks and applies it).
"""

from __future__ import annotations

import base64
import copy
import functools
import io
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from matplotlib.figure import Figure

from sdvar_lib.eval.metrics import compare_images
from sdvar_lib.models.sampling import SamplingConfig, check_labels
from sdvar_lib.sdvar.acceptance import POLICY_NAMES
from sdvar_lib.sdvar.decoder import SDVAR
from sdvar_lib.sdvar.handoff import baseline, draft_alone, generate_test3
from sdvar_lib.sdvar.stats import SDVAROutput, SDVARStats
from sdvar_lib.util.checks import check_bool, check_choice, check_int, check_number, check_seed
from sdvar_lib.viz.plotting import comparison_figure, image_grid

log = logging.getLogger(__name__)

__all__ = [
    "POLICY_OPTIONS",
    "DECODING_OPTIONS",
    "WIDGET_VIEW_MIME",
    "STATIC_NOTE",
    "RunDescription",
    "ComparisonRow",
    "ComparisonDescription",
    "LivePanel",
    "describe_stats",
    "figure_png",
    "run_and_describe",
    "run_comparison",
    "make_interactive",
    "make_comparison_interactive",
    "strip_widget_state",
]

POLICY_OPTIONS: tuple[str, ...] = POLICY_NAMES
"""Dropdown choices: every named acceptance policy (``top1_match``/``relaxed`` with their defaults)."""

DECODING_OPTIONS: tuple[tuple[str, int], ...] = (("greedy (top_k=1)", 1), ("sampled (top_k=0)", 0))
"""Choices of the comparison panel's decoding dropdown: label and ``top_k``."""

WIDGET_VIEW_MIME = "application/vnd.jupyter.widget-view+json"

STATIC_NOTE = "[a static image of the first run: the sliders need a live kernel, run the notebook to move them]"
"""The last line of a panel's text form: what a stored notebook shows under the panel's first image."""


# ---- what a description shows -------------------------------------------------------------------
def figure_png(figure: Figure) -> bytes:
    """``figure`` as PNG bytes (what Jupyter's inline backend shows for it)."""
    if not isinstance(figure, Figure):
        raise TypeError(f"figure must be a matplotlib Figure, got {type(figure).__name__}")
    buf = io.BytesIO()
    figure.savefig(buf, format="png", bbox_inches="tight")
    return buf.getvalue()


class _Shown:
    """A description with a ``figure`` (or ``None``) and a ``text``, shown as the image and then the text.

    The figures are built without ``pyplot`` (:mod:`sdvar_lib.viz.plotting`): nothing registers them
    globally, so they are never shown a second time by the inline backend and are freed with their
    description.
    """

    figure: Figure | None
    text: str

    def display_outputs(self) -> tuple[dict, ...]:
        """The outputs (nbformat dicts) that show this description: the figure as ``image/png``, the text."""
        outputs = []
        if self.figure is not None:
            png = base64.b64encode(figure_png(self.figure)).decode("ascii")
            first_line = self.text.splitlines()[0] if self.text else "figure"
            outputs.append({"output_type": "display_data", "metadata": {},
                            "data": {"image/png": png, "text/plain": f"<image: {first_line}>"}})
        outputs.append({"output_type": "stream", "name": "stdout", "text": self.text + "\n"})
        return tuple(outputs)

    def _ipython_display_(self) -> None:  # a description as the last line of a cell: its image, then its text
        from IPython.display import display

        for out in self.display_outputs():
            data = out["data"] if out["output_type"] == "display_data" else {"text/plain": out["text"].rstrip("\n")}
            display(data, raw=True)


# ---- one parallel_v1 call -----------------------------------------------------------------------
@dataclass
class RunDescription(_Shown):
    """One parallel_v1 call as shown by the panel of :func:`make_interactive`."""

    gamma: int
    cfg: float
    policy: str
    seed: int
    labels: list[int]
    images_B3HW: torch.Tensor = field(repr=False)
    stats: SDVARStats = field(repr=False)
    text: str = ""
    figure: Figure | None = field(default=None, repr=False)


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def describe_stats(stats: SDVARStats) -> str:
    """Counters of one call as text (rounded to 4 decimals, wall time left out so the text is reproducible)."""
    per_stage = ", ".join(_fmt(a) for a in stats.token_acceptance_per_stage)
    return "\n".join([
        f"target passes {stats.target_passes} for {stats.num_stages} stages, draft passes {stats.draft_passes}, "
        f"rounds {stats.rounds}",
        f"gamma per round {stats.gamma_per_round}, accepted stages per round {stats.stages_accepted_per_round}, "
        f"committed stages per round {stats.stages_committed_per_round}",
        f"token acceptance {_fmt(stats.token_acceptance)}; per stage [{per_stage}]",
    ])


def _check_sdvar(sdvar) -> None:
    if not isinstance(sdvar, SDVAR):
        raise TypeError(f"sdvar must be an sdvar_lib.SDVAR, got {type(sdvar).__name__}")


def _check_args(sdvar, gamma, cfg, policy, seed, labels) -> list[int]:
    _check_sdvar(sdvar)
    check_int(gamma, "gamma", 1)
    check_number(cfg, "cfg", 0.0)
    check_choice(policy, "policy", POLICY_OPTIONS)
    check_seed(seed, "seed", allow_none=False)
    return list(check_labels(labels, "labels", sdvar.target_model.num_classes))


@torch.no_grad()
def run_and_describe(
    sdvar: SDVAR,
    gamma: int = 2,
    cfg: float = 1.5,
    policy: str = "exact",
    seed: int = 0,
    labels: Sequence[int] = (0, 1, 2, 3),
    with_figure: bool = True,
) -> RunDescription:
    """Run parallel_v1 for ``labels`` (one image each) and describe it; the callback of :func:`make_interactive`."""
    label_list = _check_args(sdvar, gamma, cfg, policy, seed, labels)
    check_bool(with_figure, "with_figure")
    cfg = float(cfg)
    out = sdvar.generate_parallel(len(label_list), label_list, g_seed=seed, sampling=SamplingConfig(cfg=cfg), gamma=gamma,
                                  policy=policy)
    stats = out.stats
    text = f"parallel_v1 gamma={gamma} cfg={cfg:.2f} policy={policy} seed={seed} labels={label_list}\n" + describe_stats(stats)
    log.debug("run_and_describe: %s", text)
    figure = None
    if with_figure:
        figure = image_grid(
            out.images_B3HW, titles=[f"class {v}" for v in label_list],
            suptitle=f"gamma={gamma}, cfg={cfg:.2f}, {policy}: {stats.target_passes} target passes",
        )
    return RunDescription(
        gamma=gamma, cfg=cfg, policy=policy, seed=seed, labels=label_list, images_B3HW=out.images_B3HW.cpu(),
        stats=stats, text=text, figure=figure,
    )


# ---- baseline vs SDVAR vs test3 vs the draft alone ----------------------------------------------
@dataclass(frozen=True)
class ComparisonRow:
    """One decoder of a comparison: its passes and its images' distance to the baseline's."""

    method: str
    target_passes: int
    draft_passes: int
    mean_abs_diff: float
    l2_distance: float
    pearson: float


@dataclass
class ComparisonDescription(_Shown):
    """The decoders of :func:`run_comparison` for one setting, as shown by :func:`make_comparison_interactive`.

    ``outputs`` maps each method (``"baseline"``, ``"SDVAR parallel_v1"``, ``"test3 entry=E"``,
    ``"draft alone"``) to its :class:`~sdvar_lib.SDVAROutput`; ``rows`` are the table's rows.
    """

    gamma: int
    cfg: float
    top_k: int
    seed: int
    labels: list[int]
    entry: int
    outputs: dict[str, SDVAROutput] = field(repr=False)
    rows: list[ComparisonRow] = field(repr=False)
    text: str = ""
    figure: Figure | None = field(default=None, repr=False)

    def row(self, method: str) -> ComparisonRow:
        """The row of ``method``."""
        for r in self.rows:
            if r.method == method:
                return r
        raise ValueError(f"no method {method!r} in this comparison; it has {[r.method for r in self.rows]}")


def _decoding_name(top_k: int) -> str:
    return "greedy (top_k=1)" if top_k == 1 else f"sampled (top_k={top_k})"


def _comparison_table(rows: Sequence[ComparisonRow]) -> str:
    lines = [f"{'method':<20} {'target':>6} {'draft':>6} {'mean|diff|':>10} {'L2':>9} {'corr':>7}"]
    for r in rows:
        lines.append(f"{r.method:<20} {r.target_passes:>6} {r.draft_passes:>6} {r.mean_abs_diff:>10.4f} "
                     f"{r.l2_distance:>9.4f} {r.pearson:>7.4f}")
    return "\n".join(lines)


@torch.no_grad()
def run_comparison(
    sdvar: SDVAR,
    gamma: int = 2,
    cfg: float = 1.5,
    top_k: int = 1,
    seed: int = 0,
    labels: Sequence[int] = (0, 1, 2, 3),
    entry: int | None = None,
    with_figure: bool = True,
) -> ComparisonDescription:
    """The same labels and seed through the baseline (target alone), SDVAR ``parallel_v1`` (``exact``,
    ``gamma``), ``test3`` (draft first, the target from stage ``entry`` on; default ``S // 2``) and the
    draft alone, each compared with the baseline's images; the callback of :func:`make_comparison_interactive`.

    The text is a settings line, then the table (target and draft passes, mean absolute difference,
    L2 distance and pixel correlation to the baseline) rounded to 4 decimals.
    """
    _check_sdvar(sdvar)
    check_int(gamma, "gamma", 1)
    check_number(cfg, "cfg", 0.0)
    check_int(top_k, "top_k", 0, sdvar.target_model.V)
    check_seed(seed, "seed", allow_none=False)
    label_list = list(check_labels(labels, "labels", sdvar.target_model.num_classes))
    check_bool(with_figure, "with_figure")
    entry = sdvar.num_stages // 2 if entry is None else check_int(entry, "entry", 0, sdvar.num_stages)
    cfg, B = float(cfg), len(label_list)
    sampling = SamplingConfig(cfg=cfg, top_k=top_k)
    outputs = {
        "baseline": baseline(sdvar, B, label_list, seed, sampling),
        "SDVAR parallel_v1": sdvar.generate_parallel(B, label_list, g_seed=seed, sampling=sampling, gamma=gamma),
        f"test3 entry={entry}": generate_test3(sdvar, B, label_list, seed, sampling, entry_num=entry, sd_mask=0),
        "draft alone": draft_alone(sdvar, B, label_list, seed, sampling),
    }
    base = outputs["baseline"].images_B3HW
    rows = []
    for name, out in outputs.items():
        c = compare_images(out.images_B3HW, base)
        rows.append(ComparisonRow(method=name, target_passes=out.stats.target_passes, draft_passes=out.stats.draft_passes,
                                  mean_abs_diff=c.mean_abs_diff, l2_distance=c.l2_distance, pearson=c.pearson))
    setting = f"gamma={gamma} cfg={cfg:.2f} {_decoding_name(top_k)} seed={seed} labels={label_list}"
    text = f"comparison {setting}\n{_comparison_table(rows)}"
    log.debug("run_comparison: %s", text)
    figure = None
    if with_figure:
        captions = {r.method: f"{r.target_passes} target passes\ncorr {r.pearson:.3f}" for r in rows}
        figure = comparison_figure({k: v.images_B3HW for k, v in outputs.items()}, captions,
                                   suptitle=f"{_decoding_name(top_k)}, gamma={gamma}, cfg={cfg:.2f}")
    return ComparisonDescription(gamma=gamma, cfg=cfg, top_k=top_k, seed=seed, labels=label_list, entry=entry,
                                 outputs=outputs, rows=rows, text=text, figure=figure)


# ---- the panel ------------------------------------------------------------------------------------
@dataclass(eq=False, repr=False)
class LivePanel:
    """Controls that rerun ``run`` whenever one of them changes, and an ``Output`` that shows its latest result.

    ``run(**{name: control.value})`` returns a description with ``figure`` and ``text``
    (:class:`RunDescription`, :class:`ComparisonDescription`). The first run happens when the panel is
    built, so displaying it (a cell's last line, Run All) shows that run at once. Each run replaces the
    ``Output``'s outputs in one assignment (the image, then the text): the frontend redraws once, nothing
    stacks. ``result`` is the latest description; ``controls`` are the ipywidgets by name, in display
    order. If a run raises, the ``Output`` shows the error, ``result`` keeps the last good run and the
    exception propagates.

    Displayed, the panel is its widget view; its text form (and ``image/png``) is a static image of the
    current run with :data:`STATIC_NOTE`, which is what :func:`strip_widget_state` leaves in a stored
    notebook.
    """

    run: Callable[..., _Shown]
    controls: dict[str, Any]
    result: Any = field(default=None, init=False)
    """The latest description (``None`` only while the first run is under way)."""
    runs: int = field(default=0, init=False)
    """How many runs have been shown."""
    output: Any = field(default=None, init=False, repr=False)
    """The ``ipywidgets.Output`` that shows the latest result."""
    status: Any = field(default=None, init=False, repr=False)
    """An ``ipywidgets.Label`` beside the controls: what is running now, empty when idle."""
    widget: Any = field(default=None, init=False, repr=False)
    """The ``ipywidgets.VBox`` displayed: the controls and the status in a row, then the output."""

    def __post_init__(self) -> None:
        from ipywidgets import HBox, Label, Output, ValueWidget, VBox

        if not callable(self.run):
            raise TypeError(f"run must be callable, got {type(self.run).__name__}")
        if not isinstance(self.controls, Mapping) or not self.controls:
            raise ValueError("controls must be a non-empty mapping of names to ipywidgets value widgets")
        for name, control in self.controls.items():
            if not isinstance(control, ValueWidget):
                raise TypeError(f"control {name!r} must be an ipywidgets value widget, got {type(control).__name__}")
        self.controls = dict(self.controls)
        self.status = Label(value="")
        self.output = Output()
        self.output.add_class("sdvar-panel-output")  # a stable selector for people and the browser test
        self.widget = VBox([HBox([*self.controls.values(), self.status]), self.output])
        self.widget.add_class("sdvar-panel")
        self.refresh()
        for control in self.controls.values():
            control.observe(self._on_change, names="value")

    def __repr__(self) -> str:
        settings = ", ".join(f"{k}={v!r}" for k, v in self.values().items())
        return f"LivePanel({getattr(self.run, 'func', self.run).__name__}: {settings}; runs={self.runs})"

    def values(self) -> dict[str, Any]:
        """The controls' current values by name (the keyword arguments of the next run)."""
        return {name: control.value for name, control in self.controls.items()}

    def refresh(self):
        """Run with the controls' values and show the result; returns it."""
        values = self.values()
        self.status.value = "running " + ", ".join(f"{k}={v}" for k, v in values.items()) + " ..."
        try:
            result = self.run(**values)
        except Exception as exc:
            self.output.outputs = ({"output_type": "stream", "name": "stderr",
                                    "text": f"run failed for {values}: {type(exc).__name__}: {exc}\n"},)
            self.status.value = "failed"
            raise
        self.output.outputs = result.display_outputs()
        self.result = result
        self.runs += 1
        self.status.value = ""
        return result

    def _on_change(self, change) -> None:
        self.refresh()

    def text_form(self) -> str:
        """The latest result's text and :data:`STATIC_NOTE` (the panel's ``text/plain``)."""
        return f"{self.result.text}\n{STATIC_NOTE}"

    def _repr_mimebundle_(self, **kwargs) -> dict:
        bundle = dict(self.widget._repr_mimebundle_(**kwargs))  # the widget view (and ipywidgets' text form)
        bundle["text/plain"] = self.text_form()
        images = [o["data"]["image/png"] for o in self.output.outputs if "image/png" in o.get("data", {})]
        if images:  # the image the output shows now
            bundle["image/png"] = images[0]
        return bundle


def _check_slider_range(gamma: int, cfg: float, max_gamma: int, max_cfg: float) -> None:
    if gamma > max_gamma:  # a slider would silently clamp it
        raise ValueError(f"gamma must be in [1, max_gamma={max_gamma}] for the slider, got {gamma}")
    if cfg > max_cfg:
        raise ValueError(f"cfg must be in [0, max_cfg={max_cfg}] for the slider, got {cfg}")


def _sliders(gamma: int, cfg: float, max_gamma: int, max_cfg: float) -> dict[str, Any]:
    from ipywidgets import FloatSlider, IntSlider

    return {
        "gamma": IntSlider(value=gamma, min=1, max=max_gamma, step=1, description="gamma", continuous_update=False),
        "cfg": FloatSlider(value=cfg, min=0.0, max=max_cfg, step=0.25, description="cfg", continuous_update=False),
    }


def make_interactive(
    sdvar: SDVAR,
    labels: Sequence[int] = (0, 1, 2, 3),
    seed: int = 0,
    gamma: int = 2,
    cfg: float = 1.5,
    policy: str = "exact",
    max_gamma: int | None = None,
    max_cfg: float = 5.0,
) -> LivePanel:
    """A :class:`LivePanel` over :func:`run_and_describe`: the ``gamma`` slider, the ``cfg`` slider and the
    ``policy`` dropdown (``panel.controls``, in that order); the output shows the image grid and the statistics."""
    from ipywidgets import Dropdown

    _check_args(sdvar, gamma, cfg, policy, seed, labels)
    max_gamma = sdvar.num_stages if max_gamma is None else check_int(max_gamma, "max_gamma", 1)
    check_number(max_cfg, "max_cfg", 0.0, min_inclusive=False)
    _check_slider_range(gamma, cfg, max_gamma, max_cfg)
    controls = _sliders(gamma, cfg, max_gamma, max_cfg)
    controls["policy"] = Dropdown(options=list(POLICY_OPTIONS), value=policy, description="policy")
    run = functools.partial(run_and_describe, sdvar, seed=seed, labels=list(labels))
    return LivePanel(run=run, controls=controls)


def make_comparison_interactive(
    sdvar: SDVAR,
    labels: Sequence[int] = (0, 1, 2, 3),
    seed: int = 0,
    gamma: int = 2,
    cfg: float = 1.5,
    top_k: int = 1,
    entry: int | None = None,
    max_gamma: int | None = None,
    max_cfg: float = 5.0,
) -> LivePanel:
    """A :class:`LivePanel` over :func:`run_comparison`: the ``gamma`` and ``cfg`` sliders and the decoding
    dropdown (``top_k``: greedy or sampled); the output shows the comparison figure and table."""
    from ipywidgets import Dropdown

    _check_sdvar(sdvar)
    check_int(gamma, "gamma", 1)
    check_number(cfg, "cfg", 0.0)
    check_choice(top_k, "top_k", [k for _, k in DECODING_OPTIONS])
    check_seed(seed, "seed", allow_none=False)
    check_labels(labels, "labels", sdvar.target_model.num_classes)
    max_gamma = sdvar.num_stages if max_gamma is None else check_int(max_gamma, "max_gamma", 1)
    check_number(max_cfg, "max_cfg", 0.0, min_inclusive=False)
    _check_slider_range(gamma, cfg, max_gamma, max_cfg)
    controls = _sliders(gamma, cfg, max_gamma, max_cfg)
    controls["top_k"] = Dropdown(options=list(DECODING_OPTIONS), value=top_k, description="decoding")
    run = functools.partial(run_comparison, sdvar, seed=seed, labels=list(labels), entry=entry)
    return LivePanel(run=run, controls=controls)


# ---- stored notebooks ----------------------------------------------------------------------------
def _static_outputs(output: dict) -> list[dict]:
    """What a stored notebook keeps of one output: a widget view becomes its static image and text, or nothing."""
    data = output.get("data", {})
    if WIDGET_VIEW_MIME not in data:
        return [output]
    if "image/png" not in data:  # a bare widget: its text form would be raw ipywidgets reprs
        return []
    text = data.get("text/plain", STATIC_NOTE)
    text = "".join(text) if isinstance(text, list) else text
    image = {"output_type": "display_data", "metadata": {},
             "data": {"image/png": data["image/png"], "text/plain": "<static image of the first run>"}}
    return [image, {"output_type": "stream", "name": "stdout", "text": text.rstrip("\n") + "\n"}]


def strip_widget_state(notebook: Mapping) -> dict:
    """A copy of ``notebook`` (nbformat 4, as plain JSON) without widget state.

    ``metadata.widgets`` (the saved widget models) is removed; an output that is a widget view is
    replaced by its ``image/png`` (a :class:`LivePanel`'s first run) and its text (with
    :data:`STATIC_NOTE`), or removed when it carries no image. Opened without a kernel, the notebook
    then shows what the panel showed after Run All, and no widget the frontend could not restore.
    """
    if not isinstance(notebook, Mapping) or "cells" not in notebook:
        raise TypeError("notebook must be an nbformat-4 notebook as a mapping with 'cells'")
    nb = copy.deepcopy(dict(notebook))
    nb["metadata"] = {k: v for k, v in nb.get("metadata", {}).items() if k != "widgets"}
    for cell in nb["cells"]:
        if cell.get("cell_type") == "code":
            cell["outputs"] = [kept for out in cell.get("outputs", []) for kept in _static_outputs(out)]
    return nb
