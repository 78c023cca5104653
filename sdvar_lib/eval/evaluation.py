"""Quality against target passes: every decoder of the workbench on one draft/target pair.

    python -m sdvar_lib.evaluate --out outputs/evaluation

Each method (:class:`MethodSpec`: the target alone, the draft alone, SDVAR with a policy and a
gamma rule, the ``test3`` scale hand-off, the CoDe-style hand-off) generates ``samples_per_seed``
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

:func:`default_methods` is the list of issue 5; :class:`EvaluationReport` holds the results with
the settings and the machine, is written as ``evaluation.json`` and rendered as a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shlex
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from sdvar_lib.decoding.sampling import SamplingConfig
from sdvar_lib.eval.metrics import (
    DigitClassifier,
    SeedQuality,
    SeedSummary,
    balanced_labels,
    class_consistency,
    feature_frechet_distance,
    summarize_over_seeds,
)
from sdvar_lib.models.checkpoints import ModelPair
from sdvar_lib.sdvar.acceptance import AcceptancePolicy, ExactPolicy, RelaxedPolicy, Top1MatchPolicy
from sdvar_lib.sdvar.decoder import SDVAR, SDVAROutput
from sdvar_lib.sdvar.gamma import GammaRule, make_gamma_rule
from sdvar_lib.util.checks import check_int

log = logging.getLogger(__name__)

__all__ = [
    "METHOD_KINDS",
    "SEED_STRIDE",
    "MethodSpec",
    "default_methods",
    "select_methods",
    "MethodResult",
    "MachineInfo",
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

METHOD_KINDS = ("target", "draft", "sdvar", "test3", "code_handoff")
SEED_STRIDE = 100_000
"""Call ``i`` of seed ``s`` uses ``g_seed = SEED_STRIDE * s + i`` (so at most this many calls per seed)."""


# ---- methods ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class MethodSpec:
    """One row of the table: a name and how to call the decoder.

    - ``kind="target"`` / ``"draft"``: :meth:`SDVAR.baseline` / :meth:`SDVAR.draft_alone`;
    - ``kind="sdvar"``: :meth:`SDVAR.generate_parallel` with ``gamma`` (an int >= 1, ``"adaptive"``
      or a :class:`~sdvar_lib.sdvar.gamma.GammaRule`) and ``policy``;
    - ``kind="test3"``: :meth:`SDVAR.generate_test3` with ``entry_num`` (draft first) and ``sd_mask=0``;
    - ``kind="code_handoff"``: :meth:`SDVAR.code_handoff` with ``entry_num`` (target first).
    """

    name: str
    kind: str
    gamma: int | str | GammaRule | None = None
    policy: AcceptancePolicy | None = None
    entry_num: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            raise ValueError(f"a method needs a non-empty name, got {self.name!r}")
        if self.kind not in METHOD_KINDS:
            raise ValueError(f"method kind must be one of {METHOD_KINDS}, got {self.kind!r}")
        if self.kind == "sdvar":
            if self.gamma is None or self.policy is None:
                raise ValueError(f"SDVAR method {self.name!r} needs a gamma and a policy")
            make_gamma_rule(self.gamma)  # raises ValueError for a bad gamma
            if not isinstance(self.policy, AcceptancePolicy):
                raise ValueError(f"policy of {self.name!r} must be an AcceptancePolicy, got {type(self.policy).__name__}")
        elif self.gamma is not None or self.policy is not None:
            raise ValueError(f"method {self.name!r} of kind {self.kind!r} takes no gamma or policy")
        if self.kind in ("test3", "code_handoff"):
            e = self.entry_num
            if isinstance(e, bool) or not isinstance(e, int) or e < 0:
                raise ValueError(f"{self.kind} method {self.name!r} needs an int entry_num >= 0, got {e!r}")
        elif self.entry_num is not None:
            raise ValueError(f"method {self.name!r} of kind {self.kind!r} takes no entry_num")

    @property
    def lossless(self) -> bool:
        """Whether the method's output distribution is the target's."""
        if self.kind == "target":
            return True
        if self.kind == "sdvar":
            return bool(self.policy.lossless)
        return False

    @property
    def uses_draft_proposals(self) -> bool:
        return self.kind == "sdvar"

    def describe(self) -> str:
        if self.kind == "target":
            return "target alone"
        if self.kind == "draft":
            return "draft alone"
        if self.kind == "sdvar":
            return f"SDVAR {self.policy.describe()}, gamma {make_gamma_rule(self.gamma).describe()}"
        if self.kind == "test3":
            return f"test3 (draft stages < {self.entry_num}, then target)"
        return f"CoDe hand-off (target stages < {self.entry_num}, then draft)"

    def check_for(self, num_stages: int) -> None:
        """Raise ``ValueError`` if the method cannot run on a pair with ``num_stages`` stages."""
        if self.entry_num is not None and self.entry_num > num_stages:
            raise ValueError(f"method {self.name!r}: entry_num {self.entry_num} exceeds the {num_stages} stages of the pair")

    def run(self, sd: SDVAR, label_B: torch.Tensor, g_seed: int, sampling: SamplingConfig) -> SDVAROutput:
        """One call: ``label_B.numel()`` images."""
        B = int(label_B.numel())
        kw = dict(g_seed=g_seed, cfg=sampling.cfg, top_k=sampling.top_k, top_p=sampling.top_p)
        if self.kind == "target":
            return sd.baseline(B, label_B, **kw)
        if self.kind == "draft":
            return sd.draft_alone(B, label_B, **kw)
        if self.kind == "sdvar":
            return sd.generate_parallel(B, label_B, gamma=self.gamma, policy=self.policy, **kw)
        if self.kind == "test3":
            return sd.generate_test3(B, label_B, entry_num=self.entry_num, sd_mask=0, **kw)
        return sd.code_handoff(B, label_B, entry_num=self.entry_num, **kw)


def default_methods(
    num_stages: int = 7,
    gammas: Sequence[int] = (1, 2, 3, 4),
    lossy_gamma: int = 2,
    top1_thresholds: Sequence[float] = (0.5, 0.9),
    relaxed_budgets: Sequence[float] = (0.05, 0.1, 0.3),
    test3_entries: Sequence[int] = (2, 3, 4, 5),
    code_entries: Sequence[int] = (3, 5),
) -> list[MethodSpec]:
    """The methods of issue 5: target, draft, exact SDVAR (each gamma and adaptive), top1_match and
    relaxed (at ``lossy_gamma``), test3 and the CoDe hand-off at each entry.

    Hand-off entries outside ``1 .. num_stages - 1`` (which would be the draft or the target alone)
    are left out, so the list also fits pairs with fewer stages (e.g. the 4-stage tiny random pair).
    """
    check_int(num_stages, "num_stages", 2)
    methods = [MethodSpec("target", "target"), MethodSpec("draft", "draft")]
    methods += [MethodSpec(f"exact_g{g}", "sdvar", gamma=g, policy=ExactPolicy()) for g in gammas]
    methods.append(MethodSpec("exact_adaptive", "sdvar", gamma="adaptive", policy=ExactPolicy()))
    methods += [
        MethodSpec(f"top1_{t:g}_g{lossy_gamma}", "sdvar", gamma=lossy_gamma, policy=Top1MatchPolicy(threshold=t))
        for t in top1_thresholds
    ]
    methods += [
        MethodSpec(f"relaxed_{b:g}_g{lossy_gamma}", "sdvar", gamma=lossy_gamma, policy=RelaxedPolicy(budget=b))
        for b in relaxed_budgets
    ]
    for kind, prefix, entries in (("test3", "test3_e", test3_entries), ("code_handoff", "code_e", code_entries)):
        for e in entries:
            if 1 <= e < num_stages:
                methods.append(MethodSpec(f"{prefix}{e}", kind, entry_num=e))
            else:
                log.debug("%s entry_num %d left out: outside 1..%d", kind, e, num_stages - 1)
    return methods


def select_methods(methods: Sequence[MethodSpec], names: Sequence[str]) -> list[MethodSpec]:
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


@dataclass
class MachineInfo:
    """Where the evaluation ran."""

    device: str
    cpu: str
    torch_threads: int
    torch_version: str
    python_version: str
    platform: str

    @classmethod
    def current(cls, device: torch.device | str) -> MachineInfo:
        device = torch.device(device)
        if device.type == "cuda":
            cpu_or_gpu = torch.cuda.get_device_name(device)
        else:
            cpu_or_gpu = platform.processor() or platform.machine()
            try:
                for line in Path("/proc/cpuinfo").read_text().splitlines():
                    if line.startswith("model name"):
                        cpu_or_gpu = line.split(":", 1)[1].strip()
                        break
            except OSError:
                pass
            cpu_or_gpu = f"{cpu_or_gpu}, {os.cpu_count()} cores"
        return cls(
            device=device.type, cpu=cpu_or_gpu, torch_threads=torch.get_num_threads(), torch_version=torch.__version__,
            python_version=platform.python_version(), platform=platform.platform(),
        )


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

    def save(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=1, ensure_ascii=False) + "\n")
        return path

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
    from sdvar_lib.models.checkpoints import BUNDLED_DIR

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
    from sdvar_lib.tiny.data import load_digits_split, to_unit_range

    heldout = load_digits_split().heldout_img_B3HW
    return to_unit_range(heldout), f"the {heldout.shape[0]} held-out real digits (classifier features)"


def _ratios(num: Sequence[int], den: Sequence[int]) -> list[float | None]:
    return [n / d if d else None for n, d in zip(num, den)]


@torch.no_grad()
def _evaluate_one(
    sd: SDVAR,
    spec: MethodSpec,
    seeds: Sequence[int],
    samples_per_seed: int,
    batch_size: int,
    sampling: SamplingConfig,
    classifier: DigitClassifier,
    real_img_B3HW: torch.Tensor,
) -> MethodResult:
    t0 = time.perf_counter()
    S = sd.num_stages
    device = sd.target_model.device
    proposed_tokens, accepted_tokens = [0] * S, [0] * S
    proposed_stages, accepted_stages = [0] * S, [0] * S
    target_per_seed, draft_per_seed, per_seed = [], [], []
    call_seconds = 0.0
    num_calls = 0
    labels_N = balanced_labels(samples_per_seed, sd.target_model.num_classes)
    for seed in seeds:
        images, t_passes, d_passes = [], 0, 0
        for i, start in enumerate(range(0, samples_per_seed, batch_size)):
            out = spec.run(sd, labels_N[start : start + batch_size].to(device), SEED_STRIDE * seed + i, sampling)
            st = out.stats
            images.append(out.images_B3HW.float().cpu())
            t_passes += st.target_passes
            d_passes += st.draft_passes
            call_seconds += st.wall_time_s
            num_calls += 1
            for s, (pt, at, ps, as_) in enumerate(zip(st.proposed_tokens_per_stage, st.accepted_tokens_per_stage,
                                                       st.proposed_stages_per_stage, st.accepted_stages_per_stage)):
                proposed_tokens[s] += pt
                accepted_tokens[s] += at
                proposed_stages[s] += ps
                accepted_stages[s] += as_
        calls = samples_per_seed // batch_size
        target_per_seed.append(t_passes / calls)
        draft_per_seed.append(d_passes / calls)
        img_N3HW = torch.cat(images)
        cc = class_consistency(classifier, img_N3HW, labels_N).accuracy
        fd = feature_frechet_distance(classifier, img_N3HW, real_img_B3HW)
        per_seed.append(SeedQuality(seed=int(seed), class_consistency=cc, frechet_distance=fd))
        log.debug("%s seed %d: target passes/call %.3f, cc %.4f, FD %.3f", spec.name, seed, target_per_seed[-1], cc, fd)
    result = MethodResult(
        name=spec.name, description=spec.describe(), kind=spec.kind, lossless=spec.lossless, batch_size=batch_size,
        seeds=[int(s) for s in seeds], samples_per_seed=samples_per_seed, num_calls=num_calls,
        target_passes_per_call=summarize_over_seeds(target_per_seed),
        draft_passes_per_call=summarize_over_seeds(draft_per_seed),
        token_acceptance_per_stage=_ratios(accepted_tokens, proposed_tokens),
        stage_acceptance_per_stage=_ratios(accepted_stages, proposed_stages),
        token_acceptance=sum(accepted_tokens) / sum(proposed_tokens) if sum(proposed_tokens) else None,
        class_consistency=summarize_over_seeds([q.class_consistency for q in per_seed]),
        frechet_distance=summarize_over_seeds([q.frechet_distance for q in per_seed]),
        per_seed=per_seed, ms_per_call=1000 * call_seconds / num_calls, wall_time_s=time.perf_counter() - t0,
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
    methods: Sequence[MethodSpec],
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
    if not all(isinstance(m, MethodSpec) for m in methods):
        raise ValueError("methods must be MethodSpec instances")
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
        from sdvar_lib.eval.metrics import load_bundled_classifier

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
    p.add_argument("--out", required=True, help="output folder (evaluation.json, evaluation.md)")
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
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(asctime)s %(message)s",
                        stream=sys.stderr)
    from sdvar_lib.eval.metrics import load_bundled_classifier
    from sdvar_lib.models.checkpoints import load_bundled

    torch.set_num_threads(check_int(args.threads, "--threads", 1))
    t0 = time.perf_counter()
    pair = load_bundled(device=args.device, folder=args.bundle_dir)
    all_methods = default_methods(pair.target.num_stages)
    if args.list_methods:
        for m in all_methods:
            print(f"{m.name:<16} {m.describe()}")
        return 0
    methods = all_methods if args.methods is None else select_methods(all_methods, args.methods)
    classifier = load_bundled_classifier(device=args.device, folder=args.bundle_dir)
    real, reference = real_reference_images()
    common = dict(seeds=args.seeds, cfg=args.cfg, top_k=args.top_k, top_p=args.top_p, classifier=classifier,
                  real_img_B3HW=real)
    results = evaluate_methods(pair, methods, samples_per_seed=args.samples, batch_size=args.batch_size, **common)
    if args.extra_batch_size:
        extra = select_methods(all_methods, args.extra_methods)
        samples = args.extra_samples if args.extra_samples is not None else args.samples
        results += evaluate_methods(pair, extra, samples_per_seed=samples, batch_size=args.extra_batch_size, **common)
    argv_list = list(sys.argv[1:] if argv is None else argv)
    report = EvaluationReport(
        pair_description=pair.description, num_stages=pair.target.num_stages, patch_nums=list(pair.target.patch_nums),
        cfg=args.cfg, top_k=args.top_k, top_p=args.top_p, reference=reference,
        machine=MachineInfo.current(args.device), results=results,
        command="python -m sdvar_lib.evaluate " + shlex.join(argv_list), wall_time_s=time.perf_counter() - t0,
    )
    out = Path(args.out)
    report.save(out / "evaluation.json")
    table = report.markdown()
    (out / "evaluation.md").write_text(table + "\n")
    print(f"wrote {out / 'evaluation.json'} and {out / 'evaluation.md'} ({report.wall_time_s:.0f} s)")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
