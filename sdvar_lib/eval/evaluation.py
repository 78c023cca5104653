"""Quality against target passes: every decoder of the workbench on one draft/target pair.

    python -m sdvar_lib.evaluate --out outputs/evaluation     (the command: :mod:`sdvar_lib.eval.cli`)

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

import json
import logging
import os
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
from sdvar_lib.models.checkpoints import BUNDLED_DIR
from sdvar_lib.models.presets import ModelPair
from sdvar_lib.models.sampling import SamplingConfig
from sdvar_lib.sdvar.decoder import SDVAR
from sdvar_lib.sdvar.registry import DECODERS, EVALUATION_METHODS, Method, get_method, methods_for
from sdvar_lib.sdvar.stats import PooledStats
from sdvar_lib.util.atomic import atomic_write_text
from sdvar_lib.util.checks import check_int
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
