"""The workbench's main job: every decoder that matters on one pair, and what each one trades.

    python -m sdvar_lib --out outputs/demo        (the command: :mod:`sdvar_lib.demo.cli`)

runs, from the same seed, the target alone, SDVAR ``exact`` (lossless, adaptive gamma), SDVAR
``relaxed`` at two budgets (lossy), the ``test3`` hand-off (draft first) and the CoDe hand-off
(target first), all through the decoder registry (:func:`sdvar_lib.sdvar.registry.get_method`,
:meth:`~sdvar_lib.sdvar.registry.Method.run`). Per method it measures target passes per image at
batch 1 (one call per image: where SDVAR's savings live) and per call at the batch used (one call
of all labels: a stage is committed from the draft only if *every* image accepts it), acceptance
per stage, and time (:func:`run_methods`); quality against the target (class-consistency and
Fréchet distance with 95% confidence intervals) comes from the stored evaluation of the bundled
pair (:func:`stored_quality`). The command writes, as one set, ``comparison.png`` (the images per
method and a quality-against-passes panel, :func:`demo_figure`), ``stats.md`` (:func:`format_table`)
and ``stats.json``; a run id in all three ties them together.
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from matplotlib.figure import Figure

from sdvar_lib.eval.evaluation import EvaluationReport, load_bundled_report
from sdvar_lib.eval.metrics import SeedSummary
from sdvar_lib.fast.setup import precapture
from sdvar_lib.models.sampling import SamplingConfig
from sdvar_lib.sdvar.decoder import SDVAR
from sdvar_lib.sdvar.registry import Method, get_method
from sdvar_lib.sdvar.stats import pool_stats
from sdvar_lib.viz.plotting import comparison_figure

__all__ = ["DEFAULT_METHODS", "NOT_MEASURED", "Quality", "MethodRow", "resolve_methods", "prepare_methods", "run_methods",
           "stored_quality",
           "format_table", "demo_figure"]

DEFAULT_METHODS = ("target", "exact_adaptive", "relaxed_0.1_g2", "relaxed_0.3_g2", "test3_e3", "code_e3")
"""The rows of the main job: registry names (:func:`sdvar_lib.sdvar.registry.get_method`)."""

NOT_MEASURED = "not measured here"


# ---- rows ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Quality:
    """Quality against the target for one method: means with 95% CIs over seeds, and where they come from."""

    source: str
    class_consistency: SeedSummary | None = None
    frechet_distance: SeedSummary | None = None
    target_passes_per_image: float | None = None
    """Target passes per image of the stored evaluation (batch 1), the x of the figure's quality panel."""
    overlaps_target: tuple[bool, bool] | None = None
    """Whether the class-consistency / Fréchet-distance CIs overlap the target's."""


@dataclass(frozen=True)
class MethodRow:
    """One method of the main job: passes, acceptance and time measured here, quality from the stored evaluation."""

    name: str
    description: str
    lossless: bool
    batch_size: int
    target_passes_per_image_at_batch_1: float
    draft_passes_per_image_at_batch_1: float
    token_acceptance_per_stage_at_batch_1: list[float | None]
    stage_acceptance_per_stage_at_batch_1: list[float | None]
    ms_per_image_at_batch_1: float
    target_passes_per_call: int
    """One call of ``batch_size`` images."""
    draft_passes_per_call: int
    stage_acceptance_per_stage: list[float | None]
    """In the call of ``batch_size`` images: proposals of a stage that every image accepted."""
    ms_per_call: float
    one_off_s_in_timed_calls: float
    """One-off preparation (compiles, captures) that still fell into this row's timed calls; it is left out of
    the row's times (they are steady times), and after the warm-up it is normally 0."""
    quality: Quality


def _rounded(values: Sequence[float | None]) -> list[float | None]:
    return [None if v is None else round(v, 4) for v in values]


# ---- methods ------------------------------------------------------------------------------------
def _with_gamma(method: Method, gamma) -> Method:
    """The SDVAR ``method`` with another gamma, named by the registry's scheme (``exact_g3``, ``relaxed_0.1_adaptive``)."""
    base = re.sub(r"_(g\d+|adaptive)$", "", method.name)
    return method.with_gamma(gamma, name=f"{base}_{'adaptive' if gamma == 'adaptive' else f'g{gamma}'}")


def resolve_methods(names: Sequence[str], gamma=None) -> list[Method]:
    """The registry's methods ``names``; ``gamma`` (if given) replaces the gamma of every SDVAR method."""
    if len(set(names)) != len(names):
        raise ValueError(f"--methods repeat: {list(names)}")
    methods = [get_method(n) for n in names]
    if gamma is not None:
        methods = [_with_gamma(m, gamma) if m.decoder == "sdvar" else m for m in methods]
    return methods


def prepare_methods(sd: SDVAR, methods: Sequence[Method], labels: Sequence[int], seed: int,
                    sampling: SamplingConfig) -> float:
    """The untimed warm-up of :func:`run_methods`: capture every pass shape of ``methods`` at batch 1 and at
    ``len(labels)``, then run each method once at both sizes (lazy initialisation, and whatever a method uses
    that the capture did not foresee). Returns the seconds it took (all one-off on the fast path)."""
    t0 = time.perf_counter()
    B = len(labels)
    precapture(sd, methods, sorted({1, B}))
    for m in methods:
        m.run(sd, 1, [labels[0]], seed, sampling)
        m.run(sd, B, list(labels), seed, sampling)
    return time.perf_counter() - t0


def run_methods(
    sd: SDVAR, methods: Sequence[Method], labels: Sequence[int], seed: int, sampling: SamplingConfig
) -> tuple[list[dict], list[torch.Tensor]]:
    """Every method: one call per image at batch 1 (seeds ``seed + i``) and one call of all labels (seed ``seed``).

    Call :func:`prepare_methods` first. Times are steady times: a call's one-off part (a capture the
    warm-up did not trigger) is counted apart (``one_off_s_in_timed_calls``), never in the times.
    Returns per method the measured fields of a :class:`MethodRow` (without ``quality``) and the
    images of its call of all labels.
    """
    B = len(labels)
    measured, images = [], []
    for m in methods:
        singles = pool_stats([m.run(sd, 1, [label], seed + i, sampling).stats for i, label in enumerate(labels)])
        call = m.run(sd, B, list(labels), seed, sampling)
        measured.append(dict(
            name=m.name, description=m.describe(), lossless=m.lossless, batch_size=B,
            target_passes_per_image_at_batch_1=singles.target_passes / B,
            draft_passes_per_image_at_batch_1=singles.draft_passes / B,
            token_acceptance_per_stage_at_batch_1=_rounded(singles.token_acceptance_per_stage),
            stage_acceptance_per_stage_at_batch_1=_rounded(singles.stage_acceptance_per_stage),
            ms_per_image_at_batch_1=round(singles.steady_time_s / B * 1000, 1),
            target_passes_per_call=call.stats.target_passes, draft_passes_per_call=call.stats.draft_passes,
            stage_acceptance_per_stage=_rounded(call.stats.stage_acceptance_per_stage),
            ms_per_call=round(call.stats.steady_time_s * 1000, 1),
            one_off_s_in_timed_calls=round(singles.one_off_s + call.stats.one_off_s, 2),
        ))
        images.append(call.images_B3HW)
    return measured, images


# ---- quality ------------------------------------------------------------------------------------
def _report_settings(report: EvaluationReport) -> str:
    r = report.result("target", 1)
    return (f"stored evaluation of the bundled pair: batch 1, {len(r.seeds)} seeds x {r.samples_per_seed} "
            f"images, cfg {report.cfg:g}, top-k {report.top_k}, top-p {report.top_p:g}")


def stored_quality(names: Sequence[str], bundled: bool, sampling: SamplingConfig) -> dict[str, Quality]:
    """Quality of each method from the stored evaluation (bundled pair only), else "not measured here"."""
    if not bundled:
        return {n: Quality(source=f"{NOT_MEASURED} (the stored evaluation is of the bundled pair)") for n in names}
    report = load_bundled_report()
    source = _report_settings(report)
    if (report.cfg, report.top_k, report.top_p) != (sampling.cfg, sampling.top_k, sampling.top_p):
        source += f" (this run: cfg {sampling.cfg:g}, top-k {sampling.top_k}, top-p {sampling.top_p:g})"
    out = {}
    for n in names:
        try:
            r = report.result(n, 1)
        except KeyError:
            out[n] = Quality(source=f"{NOT_MEASURED} (not in the stored evaluation)")
            continue
        out[n] = Quality(source=source, class_consistency=r.class_consistency, frechet_distance=r.frechet_distance,
                         target_passes_per_image=r.target_passes_per_image,
                         overlaps_target=None if r.kind == "target" else report.matches_target(r))
    return out


# ---- outputs ------------------------------------------------------------------------------------
def _fmt_stages(values: Sequence[float | None]) -> str:
    return " ".join("-" if v is None else f"{v:.2f}" for v in values)


def _fmt_ci(s: SeedSummary | None, digits: int) -> str:
    return "n/a" if s is None else f"{s.mean:.{digits}f} [{s.ci_low:.{digits}f}, {s.ci_high:.{digits}f}]"


def format_table(rows: Sequence[MethodRow]) -> str:
    """The Markdown table of ``stats.md``."""
    B = rows[0].batch_size
    lines = [
        f"| method | lossless | target passes / image, batch 1 | target passes / call of {B} | draft passes / image, "
        f"batch 1 | stage acceptance per stage, batch 1 | stage acceptance per stage, batch {B} | ms / image, batch 1 | "
        f"ms / call of {B} | class-consistency [95% CI] | Fréchet distance [95% CI] |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        q = r.quality
        lines.append(
            f"| `{r.name}` ({r.description}) | {'yes' if r.lossless else 'no'} | {r.target_passes_per_image_at_batch_1:.2f} "
            f"| {r.target_passes_per_call} | {r.draft_passes_per_image_at_batch_1:.2f} "
            f"| {_fmt_stages(r.stage_acceptance_per_stage_at_batch_1)} | {_fmt_stages(r.stage_acceptance_per_stage)} "
            f"| {r.ms_per_image_at_batch_1:.1f} | {r.ms_per_call:.1f} "
            f"| {_fmt_ci(q.class_consistency, 3) if q.class_consistency else NOT_MEASURED} "
            f"| {_fmt_ci(q.frechet_distance, 1) if q.frechet_distance else NOT_MEASURED} |"
        )
    return "\n".join(lines)


def _marker(ax, r: MethodRow, x: float, y: float, yerr=None) -> None:
    ax.errorbar(x, y, yerr=yerr, fmt="o" if r.lossless else "s", mfc="#2b6cb0" if r.lossless else "white",
                color="#2b6cb0", ms=4, capsize=2, lw=1)
    ax.annotate(r.name, (x, y), fontsize=6, xytext=(3, 3), textcoords="offset points")


def _quality_panels(axes, measured: Sequence[MethodRow]) -> None:
    """Class-consistency and Fréchet distance (stored evaluation, 95% CIs) against target passes per image."""
    panels = (("class_consistency", "class-consistency ↑"), ("frechet_distance", "Fréchet distance ↓"))
    target = next((r for r in measured if r.name == "target"), None)
    for k, (ax, (metric, ylabel)) in enumerate(zip(axes, panels)):
        if target is not None:
            s = getattr(target.quality, metric)
            ax.axhspan(s.ci_low, s.ci_high, color="#a0aec0", alpha=0.3, lw=0)
        for r in measured:
            s = getattr(r.quality, metric)
            _marker(ax, r, r.quality.target_passes_per_image, s.mean, [[s.mean - s.ci_low], [s.ci_high - s.mean]])
        ax.set_ylabel(ylabel, fontsize=7)
        if k == 1:
            ax.set_xlabel("target passes per image (batch 1)", fontsize=7)
        else:
            ax.set_title("stored evaluation: 95% CIs; grey band: target;\nfilled: lossless, hollow: lossy", fontsize=7)


def _speed_panels(axes, rows: Sequence[MethodRow]) -> None:
    """Steady time against target passes, measured in this run: per image at batch 1, and per call of all labels."""
    B = rows[0].batch_size
    target = next((r for r in rows if r.name == "target"), None)
    panels = ((lambda r: r.target_passes_per_image_at_batch_1, lambda r: r.ms_per_image_at_batch_1,
               "ms per image, batch 1 ↓", "target passes per image (batch 1)"),
              (lambda r: r.target_passes_per_call, lambda r: r.ms_per_call,
               f"ms per call of {B} ↓", f"target passes per call of {B}"))
    for k, (ax, (x_of, y_of, ylabel, xlabel)) in enumerate(zip(axes, panels)):
        if target is not None:
            ax.axhline(y_of(target), color="#a0aec0", lw=1)
        for r in rows:
            _marker(ax, r, x_of(r), y_of(r))
        ax.set_ylabel(ylabel, fontsize=7)
        ax.set_xlabel(xlabel, fontsize=7)
        if k == 0:
            ax.set_title(f"measured here (quality {NOT_MEASURED}); grey line: target;\n"
                         "filled: lossless, hollow: lossy; steady times (no one-off preparation)", fontsize=7)


def demo_figure(rows: Sequence[MethodRow], images: Sequence[torch.Tensor], labels: Sequence[int], run_id: str,
                title: str) -> Figure:
    """The images of every method (one row each) and, on the right, quality against target passes per image
    (the stored evaluation), or, for models without one, the measured time against target passes."""
    captions = {r.name: f"{r.target_passes_per_image_at_batch_1:.1f} target passes" for r in rows}
    fig = comparison_figure({r.name: img for r, img in zip(rows, images)}, captions=captions,
                            row_labels=[f"class {label}" for label in labels], methods_as_rows=True, cell_size=1.0)
    width, height = fig.get_size_inches()
    extra = 4.2
    fig.set_size_inches(width + extra, max(height, 5.0) + 0.5)
    sx, sy = width / (width + extra), max(height, 5.0) / (max(height, 5.0) + 0.5)
    for ax in fig.axes:  # keep the image grid where it was, in the enlarged canvas
        p = ax.get_position()
        ax.set_position([p.x0 * sx, p.y0 * sy, p.width * sx, p.height * sy])
    panel_x, panel_w = (width + 0.9) / (width + extra), (extra - 1.3) / (width + extra)
    measured = [r for r in rows if r.quality.class_consistency is not None]
    axes = [fig.add_axes([panel_x, 0.56 * sy - 0.47 * sy * k + 0.08 * sy, panel_w, 0.36 * sy]) for k in range(2)]
    if measured:
        _quality_panels(axes, measured)
    else:  # no stored quality for these models: what was measured here, time against target passes
        _speed_panels(axes, rows)
    for ax in axes:
        ax.tick_params(labelsize=6)
        ax.grid(alpha=0.3)
    fig.suptitle(f"{title}; captions: target passes per image at batch 1", fontsize=9, x=0.02, ha="left")
    fig.text(0.99, 0.005, f"run {run_id}", ha="right", va="bottom", fontsize=6, color="#4a5568")
    return fig
