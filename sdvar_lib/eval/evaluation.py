"""Quality against target passes: every decoder of the workbench on one draft/target pair.

    python -m sdvar_lib.evaluate --out outputs/evaluation

Each method (a :class:`~sdvar_lib.sdvar.registry.Method` of the decoder registry: the target alone,
the draft alone, SDVAR with a policy and a gamma rule, the ``test3`` scale hand-off, the CoDe-style
hand-off) generates ``samples_per_seed``
digits with balanced labels for every seed, in calls of ``batch_size`` images; call ``i`` of seed
``s`` uses ``g_seed = SEED_STRIDE * s + i`` (the same streams for every method). Per method,
:func:`evaluate_methods` reports

- class-consistency and Fréchet distance to real images (one value per seed, scored with
  :func:`sdvar_lib.eval.metrics.class_consistency` and :func:`sdvar_lib.eval.metrics.feature_frechet_distance`;
  mean and 95% Student-t CI over seeds via :func:`sdvar_lib.eval.metrics.summarize_over_seeds`),
- target and draft passes **per call** (a call makes ``batch_size`` images; with ``batch_size=1``
  this is per image), as a mean with a CI over seeds,
- token acceptance per stage (accepted / proposed draft tokens) and stage acceptance per stage
  (verified proposals of a stage that every sample of the call accepted), summed over all calls,
- the mean time of a call and the method's total wall time.

Batch size matters for SDVAR: a stage is committed from the proposals only if every sample of the
call accepts it, so stage acceptance (and with it the passes saved) drops as the batch grows.

:func:`default_methods` is the stored evaluation's list; :class:`EvaluationReport` holds the results with
the settings and the machine, is written as ``evaluation.json`` and rendered as a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from sdvar_lib.data.digits import load_digits_split, to_unit_range
from sdvar_lib.eval.metrics import (
    DigitClassifier,
    SeedQuality,
    SeedSummary,
    balanced_labels,
    class_consistency,
    feature_frechet_distance,
    load_bundled_classifier,
    summarize_over_seeds,
)
from sdvar_lib.models.checkpoints import BUNDLED_DIR, load_bundled, pick_device
from sdvar_lib.models.presets import ModelPair
from sdvar_lib.models.sampling import SamplingConfig
from sdvar_lib.sdvar.decoder import SDVAR
from sdvar_lib.sdvar.registry import DECODERS, EVALUATION_METHODS, Method, get_method, methods_for
from sdvar_lib.sdvar.stats import PooledStats
from sdvar_lib.util.atomic import atomic_folder, atomic_write_text, check_output_folder
from sdvar_lib.util.checks import SEED_LIMIT, check_int, check_int_sequence
from sdvar_lib.util.machine import MachineInfo

log = logging.getLogger(__name__)

__all__ = [
    "METHOD_KINDS",
    "SEED_STRIDE",
    "default_methods",
    "select_methods",
    "MethodResult",
    "EvaluationReport",
    "ci_overlap",
    "real_reference_images",
    "evaluate_methods",
    "load_report",
    "bundled_report_path",
    "load_bundled_report",
    "build_parser",
    "main",
]

METHOD_KINDS = tuple(DECODERS)
SEED_STRIDE = 100_000
"""Call ``i`` of seed ``s`` uses ``g_seed = SEED_STRIDE * s + i`` (so at most this many calls per seed)."""


# ---- methods ----------------------------------------------------------------------------------------
def default_methods(num_stages: int = 7) -> list[Method]:
    """The stored evaluation's methods (:data:`~sdvar_lib.sdvar.registry.EVALUATION_METHODS`) that fit
    ``num_stages``: target, draft, exact SDVAR (gamma 1-4 and adaptive), top1_match and relaxed at gamma 2,
    test3 and the CoDe hand-off at each entry (entries outside ``1 .. num_stages - 1`` are left out)."""
    check_int(num_stages, "num_stages", 2)
    fits = {m.name for m in methods_for(num_stages)}
    return [get_method(n) for n in EVALUATION_METHODS if n in fits]


def select_methods(methods: Sequence[Method], names: Sequence[str]) -> list[Method]:
    """The methods called ``names``, in that order; an unknown or repeated name raises ``ValueError``."""
    by_name = {m.name: m for m in methods}
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}; known: {', '.join(by_name)}")
    if len(set(names)) != len(names):
        raise ValueError(f"method names repeat: {list(names)}")
    return [by_name[n] for n in names]


# ---- results ----------------------------------------------------------------------------------------
@dataclass
class MethodResult:
    """One method at one batch size, over every seed."""

    name: str
    description: str
    kind: str
    lossless: bool
    batch_size: int
    seeds: list[int]
    samples_per_seed: int
    num_calls: int
    target_passes_per_call: SeedSummary
    """Mean target passes of a call (per seed, then mean ± CI over seeds); a call makes ``batch_size`` images."""
    draft_passes_per_call: SeedSummary
    token_acceptance_per_stage: list[float | None]
    """Accepted / proposed draft tokens per stage over all calls (``None``: nothing proposed there)."""
    stage_acceptance_per_stage: list[float | None]
    """Verified proposals of a stage accepted by every sample of the call, over all calls."""
    token_acceptance: float | None
    class_consistency: SeedSummary
    frechet_distance: SeedSummary
    per_seed: list[SeedQuality]
    ms_per_call: float
    """Mean time of one decoder call (``SDVARStats.wall_time_s``), in milliseconds."""
    wall_time_s: float
    """The method's whole evaluation (generation and scoring)."""

    @property
    def target_passes_per_image(self) -> float:
        return self.target_passes_per_call.mean / self.batch_size

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> MethodResult:
        d = dict(d)
        for key in ("target_passes_per_call", "draft_passes_per_call", "class_consistency", "frechet_distance"):
            d[key] = SeedSummary(**d[key])
        d["per_seed"] = [SeedQuality(**q) for q in d["per_seed"]]
        return cls(**d)


def ci_overlap(a: SeedSummary, b: SeedSummary) -> bool:
    """Whether two 95% confidence intervals overlap."""
    return a.ci_low <= b.ci_high and b.ci_low <= a.ci_high


def _fmt_stages(values: Sequence[float | None]) -> str:
    return " ".join("–" if v is None else f"{v:.2f}" for v in values)


def _fmt_summary(s: SeedSummary, digits: int) -> str:
    return f"{s.mean:.{digits}f} ± {s.half_width:.{digits}f}"


@dataclass
class EvaluationReport:
    """Settings, machine and the results of every method (``evaluation.json``)."""

    pair_description: str
    num_stages: int
    patch_nums: list[int]
    cfg: float
    top_k: int
    top_p: float
    reference: str
    """What the Fréchet distance compares against."""
    machine: MachineInfo
    results: list[MethodResult]
    command: str = ""
    wall_time_s: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def batch_sizes(self) -> list[int]:
        return sorted({r.batch_size for r in self.results})

    def result(self, name: str, batch_size: int | None = None) -> MethodResult:
        """The result of method ``name`` (at ``batch_size``, or the smallest batch it was run at)."""
        found = [r for r in self.results if r.name == name and (batch_size is None or r.batch_size == batch_size)]
        if not found:
            raise KeyError(f"no result for method {name!r}" + ("" if batch_size is None else f" at batch {batch_size}"))
        return min(found, key=lambda r: r.batch_size)

    def reference_result(self, batch_size: int) -> MethodResult | None:
        """The target-alone row at ``batch_size`` (``None`` if it was not evaluated)."""
        return next((r for r in self.results if r.kind == "target" and r.batch_size == batch_size), None)

    def matches_target(self, result: MethodResult) -> tuple[bool, bool] | None:
        """``(class-consistency, Fréchet distance)``: whether each CI overlaps the target's at the same batch size."""
        ref = self.reference_result(result.batch_size)
        if ref is None:
            return None
        return (ci_overlap(result.class_consistency, ref.class_consistency),
                ci_overlap(result.frechet_distance, ref.frechet_distance))

    def markdown_table(self, batch_size: int | None = None, timings: bool = True) -> str:
        """One row per method (rows of ``batch_size`` only, if given)."""
        rows = [r for r in self.results if batch_size is None or r.batch_size == batch_size]
        head = ["method", "batch", "target passes / call", "draft passes / call", "token acceptance per stage",
                "stage acceptance per stage", "class-consistency", "Fréchet distance", "CIs overlap target (cc, FD)"]
        if timings:
            head.append("ms / call")
        lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] + ["---:"] * 3 + ["---"] * 5
                                                               + (["---:"] if timings else [])) + "|"]
        for r in rows:
            match = self.matches_target(r)
            overlap = "–" if match is None or r.kind == "target" else " / ".join("yes" if m else "no" for m in match)
            cells = [
                f"`{r.name}`", str(r.batch_size), _fmt_summary(r.target_passes_per_call, 2),
                f"{r.draft_passes_per_call.mean:.2f}",
                _fmt_stages(r.token_acceptance_per_stage) if r.kind == "sdvar" else "–",
                _fmt_stages(r.stage_acceptance_per_stage) if r.kind == "sdvar" else "–",
                _fmt_summary(r.class_consistency, 3), _fmt_summary(r.frechet_distance, 1), overlap,
            ]
            if timings:
                cells.append(f"{r.ms_per_call:.1f}")
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines)

    def markdown(self) -> str:
        """The table(s) with the settings, the machine and the command."""
        m = self.machine
        seeds = sorted({s for r in self.results for s in r.seeds})
        samples = sorted({r.samples_per_seed for r in self.results})
        parts = [
            f"Pair: {self.pair_description} ({self.num_stages} stages, patch numbers {tuple(self.patch_nums)}).",
            f"Sampling: cfg {self.cfg:g}, top_k {self.top_k}, top_p {self.top_p:g}; balanced labels; seeds {seeds}, "
            f"{', '.join(map(str, samples))} samples per seed; call i of seed s uses g_seed = {SEED_STRIDE} s + i.",
            f"Fréchet distance against {self.reference}. Values: mean ± half-width of the 95% Student-t CI over seeds.",
            f"Machine: {m.cpu} ({m.device}, {m.torch_threads} torch thread(s)), torch {m.torch_version}, "
            f"Python {m.python_version}. Total wall time {self.wall_time_s:.0f} s.",
        ]
        if self.command:
            parts.append(f"Command: `{self.command}`")
        parts += self.notes
        text = "\n".join(f"- {p}" for p in parts)
        for b in self.batch_sizes:
            text += f"\n\n**Batch size {b}** (target passes per call = per {'image' if b == 1 else f'{b} images'}):\n\n"
            text += self.markdown_table(b)
        return text

    def to_dict(self) -> dict:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1, ensure_ascii=False) + "\n"

    def save(self, path: str | os.PathLike) -> Path:
        """Write ``evaluation.json`` atomically (the old file or the new one, never a truncated one)."""
        return atomic_write_text(path, self.to_json())

    @classmethod
    def from_dict(cls, d: dict) -> EvaluationReport:
        d = dict(d)
        d["machine"] = MachineInfo(**d["machine"])
        d["results"] = [MethodResult.from_dict(r) for r in d["results"]]
        return cls(**d)


def load_report(path: str | os.PathLike) -> EvaluationReport:
    """Read an ``evaluation.json`` written by :meth:`EvaluationReport.save`."""
    return EvaluationReport.from_dict(json.loads(Path(path).read_text()))


BUNDLED_REPORT_NAME = "evaluation.json"


def bundled_report_path() -> Path:
    """Where the stored evaluation of the bundled pair lives (inside the package, next to its weights)."""
    return BUNDLED_DIR / BUNDLED_REPORT_NAME


def load_bundled_report() -> EvaluationReport:
    """The stored evaluation of the bundled pair (the table of ``BENCHMARKS.md``); ``FileNotFoundError``
    with the command that writes it when it is missing."""
    path = bundled_report_path()
    if not path.is_file():
        raise FileNotFoundError(
            f"no stored evaluation at {path}; write it with `python -m sdvar_lib.evaluate --out outputs/evaluation "
            f"--samples 300 --extra-batch-size 8 --extra-samples 320` and copy outputs/evaluation/{BUNDLED_REPORT_NAME} there"
        )
    return load_report(path)


# ---- evaluation ---------------------------------------------------------------------------------------
def real_reference_images() -> tuple[torch.Tensor, str]:
    """The held-out real digits in ``[0, 1]`` (the reference of the bundled pair's Fréchet distance)."""
    heldout = load_digits_split().heldout_img_B3HW
    return to_unit_range(heldout), f"the {heldout.shape[0]} held-out real digits (classifier features)"


@torch.no_grad()
def _evaluate_one(
    sd: SDVAR,
    spec: Method,
    seeds: Sequence[int],
    samples_per_seed: int,
    batch_size: int,
    sampling: SamplingConfig,
    classifier: DigitClassifier,
    real_img_B3HW: torch.Tensor,
) -> MethodResult:
    t0 = time.perf_counter()
    device = sd.target_model.device
    totals = PooledStats.empty(sd.num_stages)
    target_per_seed, draft_per_seed, per_seed = [], [], []
    labels_N = balanced_labels(samples_per_seed, sd.target_model.num_classes)
    for seed in seeds:
        images, seed_totals = [], PooledStats.empty(sd.num_stages)
        for i, start in enumerate(range(0, samples_per_seed, batch_size)):
            labels = labels_N[start : start + batch_size].to(device)
            out = spec.run(sd, len(labels), labels, SEED_STRIDE * seed + i, sampling)
            images.append(out.images_B3HW.float().cpu())
            seed_totals = seed_totals + PooledStats.of(out.stats)
        totals = totals + seed_totals
        target_per_seed.append(seed_totals.target_passes / seed_totals.calls)
        draft_per_seed.append(seed_totals.draft_passes / seed_totals.calls)
        img_N3HW = torch.cat(images)
        cc = class_consistency(classifier, img_N3HW, labels_N).accuracy
        fd = feature_frechet_distance(classifier, img_N3HW, real_img_B3HW)
        per_seed.append(SeedQuality(seed=int(seed), class_consistency=cc, frechet_distance=fd))
        log.debug("%s seed %d: target passes/call %.3f, cc %.4f, FD %.3f", spec.name, seed, target_per_seed[-1], cc, fd)
    result = MethodResult(
        name=spec.name, description=spec.describe(), kind=spec.decoder, lossless=spec.lossless, batch_size=batch_size,
        seeds=[int(s) for s in seeds], samples_per_seed=samples_per_seed, num_calls=totals.calls,
        target_passes_per_call=summarize_over_seeds(target_per_seed),
        draft_passes_per_call=summarize_over_seeds(draft_per_seed),
        token_acceptance_per_stage=totals.token_acceptance_per_stage,
        stage_acceptance_per_stage=totals.stage_acceptance_per_stage,
        token_acceptance=totals.token_acceptance,
        class_consistency=summarize_over_seeds([q.class_consistency for q in per_seed]),
        frechet_distance=summarize_over_seeds([q.frechet_distance for q in per_seed]),
        per_seed=per_seed, ms_per_call=1000 * totals.wall_time_s / totals.calls, wall_time_s=time.perf_counter() - t0,
    )
    log.info(
        "%-16s batch %d: target passes/call %.2f, draft %.2f, class-consistency %s, Fréchet distance %s, %.1f ms/call "
        "(%.0f s)", spec.name, batch_size, result.target_passes_per_call.mean, result.draft_passes_per_call.mean,
        _fmt_summary(result.class_consistency, 3), _fmt_summary(result.frechet_distance, 1), result.ms_per_call,
        result.wall_time_s,
    )
    return result


def evaluate_methods(
    pair: ModelPair,
    methods: Sequence[Method],
    seeds: Sequence[int] = (0, 1, 2, 3, 4),
    samples_per_seed: int = 100,
    batch_size: int = 1,
    cfg: float = 1.5,
    top_k: int = 0,
    top_p: float = 0.0,
    classifier: DigitClassifier | None = None,
    real_img_B3HW: torch.Tensor | None = None,
) -> list[MethodResult]:
    """Evaluate every method on ``pair`` (see the module docstring); one :class:`MethodResult` each.

    ``classifier`` defaults to the bundled digit classifier and ``real_img_B3HW`` (images in
    ``[0, 1]``) to the held-out real digits; pass both for other pairs (e.g. a random classifier
    for the tiny random pair in tests). ``samples_per_seed`` must be a multiple of ``batch_size``
    (every call has the same batch size) and at least 2 (a Fréchet distance needs 2 samples).
    """
    if not methods:
        raise ValueError("need at least one method")
    if not all(isinstance(m, Method) for m in methods):
        raise TypeError("methods must be sdvar_lib.Method instances (see sdvar_lib.get_method)")
    names = [m.name for m in methods]
    if len(set(names)) != len(names):
        raise ValueError(f"method names repeat: {names}")
    seeds = list(seeds)
    if not seeds:
        raise ValueError("need at least one seed")
    for s in seeds:
        check_int(s, "every seed", 0)
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds repeat: {seeds}")
    check_int(samples_per_seed, "samples_per_seed", 2)
    check_int(batch_size, "batch_size", 1)
    if samples_per_seed % batch_size:
        raise ValueError(f"samples_per_seed ({samples_per_seed}) must be a multiple of batch_size ({batch_size})")
    if samples_per_seed // batch_size > SEED_STRIDE:
        raise ValueError(f"at most {SEED_STRIDE} calls per seed (g_seed = {SEED_STRIDE} * seed + call index)")
    sampling = SamplingConfig(cfg=cfg, top_k=top_k, top_p=top_p)
    sd = SDVAR(pair.draft, pair.target)
    for m in methods:
        m.check_for(sd.num_stages)
    if classifier is None:
        classifier = load_bundled_classifier(device=sd.target_model.device)
    if real_img_B3HW is None:
        real_img_B3HW, _ = real_reference_images()
    cc = classifier.config
    size = pair.vae.image_size
    if cc.image_size != size:
        raise ValueError(f"the classifier takes {cc.image_size}x{cc.image_size} images, the pair makes {size}x{size}")
    if cc.num_classes != pair.target.num_classes:
        raise ValueError(f"the classifier has {cc.num_classes} classes, the pair {pair.target.num_classes}")
    if real_img_B3HW.ndim != 4 or tuple(real_img_B3HW.shape[1:]) != (3, size, size) or real_img_B3HW.shape[0] < 2:
        raise ValueError(f"real images must be (N >= 2, 3, {size}, {size}) in [0, 1], got {tuple(real_img_B3HW.shape)}")
    log.info("evaluating %d method(s): %d seed(s) x %d samples, batch %d, cfg %g, top_k %d, top_p %g",
             len(methods), len(seeds), samples_per_seed, batch_size, cfg, top_k, top_p)
    return [
        _evaluate_one(sd, m, seeds, samples_per_seed, batch_size, sampling, classifier, real_img_B3HW) for m in methods
    ]


# ---- CLI ----------------------------------------------------------------------------------------------
DEFAULT_EXTRA_METHODS = ("target", "exact_g1", "exact_g2", "exact_g3", "exact_g4", "exact_adaptive")


def _names(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise argparse.ArgumentTypeError(f"expected comma-separated method names, got {text!r}")
    return names


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m sdvar_lib.evaluate",
        description="Quality (class-consistency, Fréchet distance) against target passes for every decoder on the "
                    "bundled draft/target pair; writes evaluation.json and evaluation.md and prints the table.",
    )
    p.add_argument("--out", default=None, help="output folder (evaluation.json, evaluation.md); required unless --list-methods")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4], help="seeds (default 0 1 2 3 4)")
    p.add_argument("--samples", type=int, default=100, help="samples per seed and method (default 100)")
    p.add_argument("--batch-size", type=int, default=1, help="images per call of the main table (default 1)")
    p.add_argument("--methods", type=_names, default=None,
                   help="comma-separated subset of the default methods (default: all); see --list-methods")
    p.add_argument("--extra-batch-size", type=int, default=0,
                   help="also evaluate --extra-methods at this batch size (default 0: no extra table)")
    p.add_argument("--extra-methods", type=_names, default=list(DEFAULT_EXTRA_METHODS),
                   help=f"methods of the extra table (default {','.join(DEFAULT_EXTRA_METHODS)})")
    p.add_argument("--extra-samples", type=int, default=None, help="samples per seed of the extra table (default --samples)")
    p.add_argument("--cfg", type=float, default=1.5)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--top-p", type=float, default=0.0)
    p.add_argument("--bundle-dir", default=None, help="folder of the bundled pair and classifier (default: the package's)")
    p.add_argument("--threads", type=int, default=1, help="torch threads on the CPU (default 1)")
    p.add_argument("--device", default="cpu", help="device (default cpu)")
    p.add_argument("--list-methods", action="store_true", help="print the default methods and exit")
    p.add_argument("-v", "--verbose", action="store_true", help="log per method (INFO) to stderr")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(asctime)s %(message)s",
                        stream=sys.stderr)
    try:  # every argument before the first model call; a mistake is one line
        check_int(args.threads, "--threads", 1)
        check_int_sequence(args.seeds, "--seeds", 0, SEED_LIMIT - 1)
        check_int(args.samples, "--samples", 2)
        check_int(args.batch_size, "--batch-size", 1)
        check_int(args.extra_batch_size, "--extra-batch-size", 0)
        if args.extra_samples is not None:
            check_int(args.extra_samples, "--extra-samples", 2)
        SamplingConfig(cfg=args.cfg, top_k=args.top_k, top_p=args.top_p)
        device = pick_device(args.device)
        pair = load_bundled(device=device, folder=args.bundle_dir)
        all_methods = default_methods(pair.target.num_stages)
        methods = all_methods if args.methods is None else select_methods(all_methods, args.methods)
        extra = select_methods(all_methods, args.extra_methods) if args.extra_batch_size else []
        if not args.list_methods:
            if args.out is None:
                raise ValueError("--out is required (the output folder)")
            check_output_folder(args.out)
    except (TypeError, ValueError) as exc:
        parser.error(str(exc))
    if args.list_methods:
        for m in all_methods:
            print(f"{m.name:<16} {m.describe()}")
        return 0
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    classifier = load_bundled_classifier(device=device, folder=args.bundle_dir)
    real, reference = real_reference_images()
    common = dict(seeds=args.seeds, cfg=args.cfg, top_k=args.top_k, top_p=args.top_p, classifier=classifier,
                  real_img_B3HW=real)
    results = evaluate_methods(pair, methods, samples_per_seed=args.samples, batch_size=args.batch_size, **common)
    if extra:
        samples = args.extra_samples if args.extra_samples is not None else args.samples
        results += evaluate_methods(pair, extra, samples_per_seed=samples, batch_size=args.extra_batch_size, **common)
    argv_list = list(sys.argv[1:] if argv is None else argv)
    report = EvaluationReport(
        pair_description=pair.description, num_stages=pair.target.num_stages, patch_nums=list(pair.target.patch_nums),
        cfg=args.cfg, top_k=args.top_k, top_p=args.top_p, reference=reference,
        machine=MachineInfo.current(device), results=results,
        command="python -m sdvar_lib.evaluate " + shlex.join(argv_list), wall_time_s=time.perf_counter() - t0,
    )
    out = Path(args.out)
    table = report.markdown()
    with atomic_folder(out, "python -m sdvar_lib.evaluate") as tmp:
        report.save(tmp / "evaluation.json")
        (tmp / "evaluation.md").write_text(table + "\n")
    print(f"wrote {out / 'evaluation.json'} and {out / 'evaluation.md'} ({report.wall_time_s:.0f} s)")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
