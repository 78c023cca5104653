"""The workbench's main job: every decoder that matters on one pair, and what each one trades.

    python -m sdvar_lib --out outputs/demo

runs, from the same seed, the target alone, SDVAR ``exact`` (lossless, adaptive gamma), SDVAR
``relaxed`` at two budgets (lossy), the ``test3`` hand-off (draft first) and the CoDe hand-off
(target first), all through the decoder registry (:func:`sdvar_lib.sdvar.registry.get_method`,
:meth:`~sdvar_lib.sdvar.registry.Method.run`). Per method it measures target passes per image at
batch 1 (one call per image: where SDVAR's savings live) and per call at the batch used (one call
of all labels: a stage is committed from the draft only if *every* image accepts it), acceptance
per stage, and time; quality against the target (class-consistency and Fréchet distance with 95%
confidence intervals) comes from the stored evaluation of the bundled pair. It writes, as one
set, ``comparison.png`` (the images per method and a quality-against-passes panel), ``stats.md``
and ``stats.json``; a run id in all three ties them together.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import shlex
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

import torch
from matplotlib.figure import Figure

from sdvar_lib.eval.evaluation import EvaluationReport, load_bundled_report
from sdvar_lib.eval.metrics import SeedSummary
from sdvar_lib.fast.setup import describe_setup, make_pair_sdvar, precapture, uses_fast_path
from sdvar_lib.models.checkpoints import MODEL_CHOICES, load_pair, pick_device
from sdvar_lib.models.presets import ModelPair, check_official_depth
from sdvar_lib.models.sampling import SamplingConfig
from sdvar_lib.sdvar.decoder import SDVAR
from sdvar_lib.sdvar.registry import Method, get_method
from sdvar_lib.sdvar.stats import pool_stats
from sdvar_lib.util.atomic import atomic_folder, check_output_folder
from sdvar_lib.util.checks import SEED_LIMIT, check_seed
from sdvar_lib.viz.plotting import comparison_figure

__all__ = ["DEFAULT_METHODS", "Quality", "MethodRow", "resolve_methods", "run_methods", "stored_quality", "format_table",
           "demo_figure", "build_parser", "main"]

DEFAULT_METHODS = ("target", "exact_adaptive", "relaxed_0.1_g2", "relaxed_0.3_g2", "test3_e3", "code_e3")
"""The rows of the main job: registry names (:func:`sdvar_lib.sdvar.registry.get_method`)."""

NOT_MEASURED = "not measured here"
FIGURE = "comparison.png"


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
    quality: Quality


def _rounded(values: Sequence[float | None]) -> list[float | None]:
    return [None if v is None else round(v, 4) for v in values]


# ---- methods ------------------------------------------------------------------------------------
def parse_gamma(text: str):
    """``--gamma``: an int >= 1 or ``"adaptive"``."""
    if text == "adaptive":
        return "adaptive"
    if not re.fullmatch(r"[0-9]+", text) or int(text) < 1:
        raise ValueError(f"--gamma must be an int >= 1 or 'adaptive', got {text!r}")
    return int(text)


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


def run_methods(
    sd: SDVAR, methods: Sequence[Method], labels: Sequence[int], seed: int, sampling: SamplingConfig
) -> tuple[list[dict], list[torch.Tensor]]:
    """Every method: one call per image at batch 1 (seeds ``seed + i``) and one call of all labels (seed ``seed``).

    Returns per method the measured fields of a :class:`MethodRow` (without ``quality``) and the
    images of its call of all labels.
    """
    B = len(labels)
    precapture(sd, methods, sorted({1, B}))  # on the fast path: times do not include graph captures
    methods[0].run(sd, 1, [labels[0]], seed, sampling)  # warm-up (lazy initialisation), not reported
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
            ms_per_image_at_batch_1=round(singles.wall_time_s / B * 1000, 1),
            target_passes_per_call=call.stats.target_passes, draft_passes_per_call=call.stats.draft_passes,
            stage_acceptance_per_stage=_rounded(call.stats.stage_acceptance_per_stage),
            ms_per_call=round(call.stats.wall_time_s * 1000, 1),
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


def demo_figure(rows: Sequence[MethodRow], images: Sequence[torch.Tensor], labels: Sequence[int], run_id: str,
                title: str) -> Figure:
    """The images of every method (one row each) and, on the right, quality against target passes per image."""
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
    panels = (("class_consistency", "class-consistency ↑"), ("frechet_distance", "Fréchet distance ↓"))
    for k, (metric, ylabel) in enumerate(panels):
        ax = fig.add_axes([panel_x, 0.56 * sy - 0.47 * sy * k + 0.08 * sy, panel_w, 0.36 * sy])
        if not measured:
            ax.text(0.5, 0.5, f"quality {NOT_MEASURED}", ha="center", va="center", fontsize=8, transform=ax.transAxes)
            ax.set_xticks([])
            ax.set_yticks([])
            continue
        target = next((r for r in measured if r.name == "target"), None)
        if target is not None:
            s = getattr(target.quality, metric)
            ax.axhspan(s.ci_low, s.ci_high, color="#a0aec0", alpha=0.3, lw=0)
        for r in measured:
            s, x = getattr(r.quality, metric), r.quality.target_passes_per_image
            ax.errorbar(x, s.mean, yerr=[[s.mean - s.ci_low], [s.ci_high - s.mean]], fmt="o" if r.lossless else "s",
                        mfc="#2b6cb0" if r.lossless else "white", color="#2b6cb0", ms=4, capsize=2, lw=1)
            ax.annotate(r.name, (x, s.mean), fontsize=6, xytext=(3, 3), textcoords="offset points")
        ax.set_ylabel(ylabel, fontsize=7)
        ax.tick_params(labelsize=6)
        ax.grid(alpha=0.3)
        if k == 1:
            ax.set_xlabel("target passes per image (batch 1)", fontsize=7)
        else:
            ax.set_title("stored evaluation: 95% CIs; grey band: target;\nfilled: lossless, hollow: lossy", fontsize=7)
    fig.suptitle(f"{title}; captions: target passes per image at batch 1", fontsize=9, x=0.02, ha="left")
    fig.text(0.99, 0.005, f"run {run_id}", ha="right", va="bottom", fontsize=6, color="#4a5568")
    return fig


# ---- the command --------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m sdvar_lib", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("outputs/demo"), help="output folder (replaced as a whole)")
    parser.add_argument("--models", choices=MODEL_CHOICES, default="bundled",
                        help="bundled (default, offline), official (d16 -> d30 from ./checkpoints or the hub), tiny-random")
    parser.add_argument("--draft-depth", type=int, default=None, help="official draft depth: 16, 20, 24 or 30 (default 16)")
    parser.add_argument("--target-depth", type=int, default=None, help="official target depth: 16, 20, 24 or 30 (default 30)")
    parser.add_argument("--labels", type=int, nargs="+", default=None, help="class labels (default: every class, max 10)")
    parser.add_argument("--methods", nargs="+", default=list(DEFAULT_METHODS), metavar="NAME",
                        help=f"decoders by registry name (default: {' '.join(DEFAULT_METHODS)}; also exact_g<N>, "
                             "top1_<t>_g<N>, relaxed_<b>_g<N>, test3_e<N>, code_e<N>, draft, ...)")
    parser.add_argument("--gamma", default=None, help="int >= 1 or 'adaptive': replaces the gamma of every SDVAR method")
    parser.add_argument("--seed", type=int, default=0, help="seed of the call of all labels; image i at batch 1 uses seed + i")
    parser.add_argument("--cfg", type=float, default=1.5)
    parser.add_argument("--top-k", type=int, default=0)
    parser.add_argument("--top-p", type=float, default=0.0)
    parser.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when available)")
    parser.add_argument("--eager", action="store_true",
                        help="run the eager float32 path on a GPU too (default there: the bf16/fp16 fast path)")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads for torch (default 1 on the CPU: the bundled models are tiny)")
    parser.add_argument("--verbose", action="store_true")
    return parser


@dataclass(frozen=True)
class _Args:
    """The checked arguments (everything a user can get wrong is checked before any model is loaded)."""

    out: Path
    models: str
    draft_depth: int
    target_depth: int
    methods: list[Method]
    sampling: SamplingConfig
    seed: int
    device: torch.device
    eager: bool
    threads: int | None


def _check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> _Args:
    try:
        check_output_folder(args.out)
        if args.models != "official" and (args.draft_depth is not None or args.target_depth is not None):
            raise ValueError("--draft-depth/--target-depth choose official checkpoints; they need --models official")
        draft_depth = 16 if args.draft_depth is None else args.draft_depth
        target_depth = 30 if args.target_depth is None else args.target_depth
        if args.models == "official":
            check_official_depth(draft_depth, "--draft-depth")
            check_official_depth(target_depth, "--target-depth")
        gamma = None if args.gamma is None else parse_gamma(args.gamma)
        methods = resolve_methods(args.methods, gamma)
        sampling = SamplingConfig(cfg=args.cfg, top_k=args.top_k, top_p=args.top_p)
        check_seed(args.seed, "--seed", allow_none=False)
        if args.seed + max(len(args.labels or ()), 10) > SEED_LIMIT:
            raise ValueError(f"--seed must leave room for one seed per image below 2**63, got {args.seed}")
        device = pick_device(args.device)
        if args.threads is not None and args.threads < 1:
            raise ValueError(f"--threads must be an int >= 1, got {args.threads}")
    except (TypeError, ValueError) as exc:
        parser.error(str(exc))
    return _Args(out=args.out, models=args.models, draft_depth=draft_depth, target_depth=target_depth, methods=methods,
                 sampling=sampling, seed=args.seed, device=device, eager=args.eager, threads=args.threads)


def _check_against_pair(parser: argparse.ArgumentParser, a: _Args, labels_arg, pair: ModelPair) -> list[int]:
    try:
        num_classes = pair.target.num_classes
        labels = list(labels_arg) if labels_arg is not None else list(range(min(num_classes, 10)))
        bad = [c for c in labels if not 0 <= c < num_classes]
        if bad:
            raise ValueError(f"--labels must be class ids in [0, {num_classes}) for {pair.description}, got {bad}")
        a.sampling.check_vocabulary(pair.target.V)
        for m in a.methods:
            m.check_for(pair.target.num_stages)
    except ValueError as exc:
        parser.error(str(exc))
    return labels


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    ns = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if ns.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    a = _check_args(parser, ns)
    if a.device.type == "cpu":
        torch.set_num_threads(a.threads or 1)
    elif a.threads is not None:
        torch.set_num_threads(a.threads)
    run_id = f"{datetime.now(timezone.utc).strftime('%Y%m%dT%H%M%SZ')}-{uuid.uuid4().hex[:8]}"

    pair = load_pair(a.models, a.draft_depth, a.target_depth, device=a.device)
    if pair.fallback_reason:
        print(f"FALLBACK: the bundled tiny pair stands in for the official models ({pair.fallback_reason})")
    labels = _check_against_pair(parser, a, ns.labels, pair)
    sd = make_pair_sdvar(pair, fast=False if a.eager else None)
    setup = describe_setup(sd)
    print(f"models: {pair.description}")
    print(setup)

    t0 = time.perf_counter()
    measured, images = run_methods(sd, a.methods, labels, a.seed, a.sampling)
    quality = stored_quality([m["name"] for m in measured], a.models == "bundled" or pair.fallback_reason is not None,
                             a.sampling)
    rows = [MethodRow(**m, quality=quality[m["name"]]) for m in measured]
    elapsed = time.perf_counter() - t0

    title = (f"{pair.description}\n{len(labels)} labels, seed {a.seed}, cfg {a.sampling.cfg:g}: one row per method "
             "(images of one call of all labels)")
    fig = demo_figure(rows, images, labels, run_id, title)
    table = format_table(rows)
    command = "python -m sdvar_lib " + shlex.join(sys.argv[1:] if argv is None else argv)
    quality_note = rows[0].quality.source
    stats = {
        "run_id": run_id, "figure": FIGURE, "command": command, "setup": setup,
        "pair": {"description": pair.description, "fallback_reason": pair.fallback_reason,
                 "device": str(pair.target.device), "var_dtype": str(pair.target.pos_1LC.dtype).removeprefix("torch."),
                 "fast_path": uses_fast_path(sd), "num_stages": pair.target.num_stages},
        "sampling": asdict(a.sampling), "seed": a.seed, "labels": labels, "batch_size": len(labels),
        "quality_source": quality_note, "wall_time_s": round(elapsed, 2),
        "rows": [asdict(r) for r in rows],
    }
    markdown = (
        f"# SDVAR main job, run {run_id}\n\nModels: {pair.description}; {setup}.\n\n"
        + (f"FALLBACK: {pair.fallback_reason}\n\n" if pair.fallback_reason else "")
        + f"Figure: `{FIGURE}` (same run id). Command: `{command}`. {len(labels)} labels {labels}, seed {a.seed}; "
        f"batch 1 = one call per image (seed + i), batch {len(labels)} = one call of all labels.\n\n"
        f"Quality: {quality_note}.\n\n{table}\n"
    )
    with atomic_folder(a.out, "python -m sdvar_lib") as tmp:
        fig.savefig(tmp / FIGURE, dpi=100, metadata={"Description": f"sdvar_lib main job, run {run_id}"})
        (tmp / "stats.md").write_text(markdown)
        (tmp / "stats.json").write_text(json.dumps(stats, indent=2) + "\n")
    print(table)
    print(f"quality: {quality_note}")
    print(f"run {run_id}: wrote {a.out / FIGURE}, {a.out / 'stats.md'}, {a.out / 'stats.json'} ({elapsed:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
