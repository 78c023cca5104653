"""The benchmark's results: timed rows, the report around them, and their markdown / JSON forms.

:func:`write_report` writes ``bench.json`` and ``bench.md`` atomically (each file appears complete
or not at all), so a run cut short leaves the last complete partial report.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from sdvar_lib.bench.bounds import Ceilings
from sdvar_lib.bench.calibration import AdaptiveCalibration, PassRatio
from sdvar_lib.bench.components import BatchComponents
from sdvar_lib.bench.config import BenchConfig
from sdvar_lib.bench.methods import CALIBRATED, EAGER_TARGET, TARGET_V1
from sdvar_lib.bench.timing import DecodeTiming
from sdvar_lib.util.atomic import atomic_write_text
from sdvar_lib.util.machine import MachineInfo

__all__ = [
    "BenchRow",
    "BenchReport",
    "add_speedups",
    "format_markdown",
    "format_pass_ratios",
    "format_calibrations",
    "format_components",
    "format_list",
    "report_to_json",
    "write_report",
]


@dataclass
class BenchRow:
    pair: str
    batch: int
    method: str
    scenario: str
    latency_ms_median: float
    latency_ms_p10: float
    latency_ms_p90: float
    latency_ms_min: float
    latency_ms_max: float
    images_per_s: float
    target_passes: float
    draft_passes: float
    peak_mem_gib: float
    peak_reserved_gib: float
    bound_ms: float
    ratio_to_bound: float
    passes_only_ms: float | None = None
    token_acceptance: float | None = None
    captures_during_timing: int = 0
    speedup_vs_target: float | None = None
    speedup_vs_eager: float | None = None
    gamma_per_round: list[int] | None = None
    """SDVAR rows: the gamma of every round of the last timed call (0 = a target step)."""
    whole_bound_ms: float | None = None
    """Whole-call bound: ``bound_ms`` + sampling every stage once + the VQVAE decode (``None`` in older reports)."""
    ratio_to_whole_bound: float | None = None
    one_off_s: float | None = None
    """One-off seconds (kernel checks and compiles, graph captures) of the row's preparation and warm-up."""


@dataclass
class BenchReport:
    machine: MachineInfo
    command: str
    ceilings: Ceilings
    decode: list[DecodeTiming]
    rows: list[BenchRow]
    config: BenchConfig
    calibrations: list[AdaptiveCalibration] = field(default_factory=list)
    pass_ratios: list[PassRatio] = field(default_factory=list)
    components: list[BatchComponents] = field(default_factory=list)


def add_speedups(rows: list[BenchRow]) -> None:
    """Fill ``speedup_vs_target`` / ``speedup_vs_eager`` from the same pair and batch."""
    ref: dict[tuple[str, int, str], float] = {
        (r.pair, r.batch, r.method): r.latency_ms_median for r in rows if r.method in ("target", EAGER_TARGET)
    }
    for r in rows:
        t = ref.get((r.pair, r.batch, "target"))
        e = ref.get((r.pair, r.batch, EAGER_TARGET))
        r.speedup_vs_target = t / r.latency_ms_median if t else None
        r.speedup_vs_eager = e / r.latency_ms_median if e else None


def _fmt(v: float | None, digits: int = 1, suffix: str = "") -> str:
    return "-" if v is None else f"{v:.{digits}f}{suffix}"


def format_list(values: Sequence[float | None], digits: int = 2) -> str:
    """``0.5,1,-``: rounded values, ``-`` for ``None``."""
    return ",".join("-" if v is None else f"{round(v, digits):g}" for v in values)


def format_markdown(report: BenchReport) -> str:
    m, ceil, cfg = report.machine, report.ceilings, report.config
    lines = [
        f"GPU: {m.device_name}; driver {m.driver}; torch {m.torch_version} (CUDA {m.cuda_version}); python {m.python_version}",
        f"Measured ceilings: HBM copy {ceil.hbm_bytes_per_s / 1e12:.2f} TB/s (read + write), "
        f"bf16 matmul {ceil.bf16_flops_per_s / 1e12:.0f} TFLOP/s",
        "VQVAE decode alone (inside every timed call): eager under bf16 autocast / the rows' graphed decode "
        "(bound): " + ", ".join(f"batch {d.batch}: {d.eager_ms:.2f} / {_fmt(d.graphed_ms, 2)} ms "
                                f"({_fmt(d.bound_ms, 2)} ms)" for d in report.decode),
        f"Fast path: CUDA graphs {'on' if cfg.use_cuda_graphs else 'off'}, graphed VQVAE decode "
        f"{'on' if cfg.graph_decode else 'off'} ({'fast decode' if cfg.fast_decode else 'reference decode, bf16 autocast'}; "
        f"{EAGER_TARGET} always decodes eagerly), cudnn.benchmark "
        f"{'on' if cfg.cudnn_benchmark else 'off'}"
        + (f"; {TARGET_V1}: the first version of the fast path (PyTorch block kernels and sampling, float32 head, "
           "stages step by step) with the reference decode under bf16 autocast" if TARGET_V1 in cfg.methods else ""),
        f"Sampling: top-k {cfg.top_k}, top-p {cfg.top_p}, cfg {cfg.cfg}; "
        f"{cfg.repeats} timed runs after {cfg.warmup} warm-up runs; latency per call "
        "(CUDA events, VAE decode included)",
        "",
    ]
    lines += [
        "Bounds: `bound` prices the passes a call made (weights and KV cache over the HBM ceiling + FLOPs over the "
        "bf16 ceiling); `whole bound` adds sampling every stage once and the VQVAE decode. `one-off s`: kernel "
        "checks/compiles and graph captures the row's preparation and warm-up cost (0: earlier rows captured it).",
        "",
    ]
    header = ("| batch | method | scenario | median ms | p10–p90 ms | img/s | target passes | draft passes | "
              "peak alloc / reserved GiB | bound ms | meas/bound | whole bound ms | meas/whole bound | "
              "passes-only ms | one-off s | vs target | vs eager |")
    sep = "|" + "---|" * 17
    for pair in dict.fromkeys(r.pair for r in report.rows):
        lines += [f"#### {pair}", "", header, sep]
        for r in (r for r in report.rows if r.pair == pair):
            lines.append(
                f"| {r.batch} | {r.method} | {r.scenario} | {r.latency_ms_median:.2f} | "
                f"{r.latency_ms_p10:.2f}–{r.latency_ms_p90:.2f} | {r.images_per_s:.1f} | {r.target_passes:g} | "
                f"{r.draft_passes:g} | {r.peak_mem_gib:.1f} / {r.peak_reserved_gib:.1f} | {r.bound_ms:.2f} | "
                f"{r.ratio_to_bound:.2f} | {_fmt(r.whole_bound_ms, 2)} | {_fmt(r.ratio_to_whole_bound, 2)} | "
                f"{_fmt(r.passes_only_ms, 2)} | {_fmt(r.one_off_s, 1)} | {_fmt(r.speedup_vs_target, 2, '×')} | "
                f"{_fmt(r.speedup_vs_eager, 2, '×')} |"
            )
        lines.append("")
        ratios = [p for p in report.pass_ratios if p.pair == pair]
        if ratios:
            lines += [format_pass_ratios(ratios), ""]
        components = [c for c in report.components if c.pair == pair]
        if components:
            lines += [format_components(components), ""]
    if report.calibrations:
        lines += [format_calibrations(report.calibrations), ""]
    return "\n".join(lines)


def format_pass_ratios(ratios: Sequence[PassRatio]) -> str:
    """Markdown: per batch the draft's and the target's single-stage passes (sums over the stages) and their ratio."""
    lines = [
        "Single-stage passes, each replayed alone (sum over the stages; per stage in `bench.json`):",
        "",
        "| batch | draft ms | target ms | draft / target |",
        "|---|---|---|---|",
    ]
    for p in ratios:
        batch = f"{p.batch} (first fast path)" if p.fast_version == "first" else f"{p.batch}"
        lines.append(f"| {batch} | {sum(p.draft_ms):.2f} | {sum(p.target_ms):.2f} | {p.ratio:.3f} |")
    return "\n".join(lines)


def format_components(components: Sequence[BatchComponents]) -> str:
    """Markdown: the pieces of a call timed alone (``--components``), per batch."""
    lines = []
    decodes = [c for c in components if c.decode is not None]
    if decodes:
        lines += ["VQVAE decode alone, graphed (bf16 autocast): the reference decode against the fast decode:", "",
                  "| batch | reference ms | fast ms | bound ms | GFLOP | GB | fast vs reference (rel. diff) |",
                  "|---|---|---|---|---|---|---|"]
        lines += [f"| {c.batch} | {c.decode.reference_ms:.2f} | {c.decode.fast_ms:.2f} | {c.decode.bound_ms:.2f} | "
                  f"{c.decode.gflop:.0f} | {c.decode.gbytes:.2f} | {c.decode.rel_diff:.1e} |" for c in decodes]
        lines.append("")
    samplings = [c for c in components if c.sampling is not None]
    if samplings:
        s0 = samplings[0].sampling
        lines += [f"Sampling stage {s0.stage} ({s0.tokens_per_image} tokens per image) from the same logits: "
                  "PyTorch's kernels against the fused kernel:", "",
                  "| batch | PyTorch ms | fused ms | same tokens |", "|---|---|---|---|"]
        lines += [f"| {c.batch} | {c.sampling.torch_ms:.3f} | {_fmt(c.sampling.fused_ms, 3)} | "
                  f"{_fmt(c.sampling.same_tokens, 4)} |" for c in samplings]
        lines.append("")
    for c in (c for c in components if c.host is not None):
        lines += [f"Host time of one `{c.host_method}` call at batch {c.batch}, by operator (self CPU time):", "",
                  "| operator | self CPU ms | calls |", "|---|---|---|"]
        lines += [f"| `{op.name}` | {op.self_cpu_ms:.2f} | {op.count} |" for op in c.host]
        lines.append("")
    for c in (c for c in components if c.timeline is not None):
        t = c.timeline
        gaps = ", ".join(f"{length:.2f} ms at {start:.2f}" for start, length in t.gaps) or "none"
        lines += [f"One `{c.host_method}` call at batch {c.batch} on the GPU's clock: {t.wall_ms:.2f} ms, the GPU busy "
                  f"{t.gpu_busy_ms:.2f} ms ({t.gpu_activities} activities), {t.lead_ms:.2f} ms before its first "
                  f"activity, {t.tail_ms:.2f} ms after its last, {t.idle_ms:.2f} ms idle in between; largest gaps: "
                  f"{gaps}.", ""]
    return "\n".join(lines).rstrip()


def format_calibrations(calibrations: Sequence[AdaptiveCalibration]) -> str:
    """Markdown: per calibrated row the priors, the overheads and the gamma of every round of one timed call."""
    lines = [
        f"Calibrated adaptive gamma (`{CALIBRATED}`): pass times are CUDA-graph replays of every chunk "
        "(median); step overhead = time outside the passes per stage of a target-alone call; round overhead = "
        "what a drafting round of the calibration calls spends beyond that (see `estimate_overheads`).",
        "",
        "| pair | batch | scenario | priors (stage 0..) | prior source | measured stage acceptance | step ms | "
        "round ms (raw) | target / draft 1-stage passes ms | runs as | gamma per round (last timed call) | "
        "calibration s |",
        "|" + "---|" * 12,
    ]
    for c in calibrations:
        t1 = sum(ms for s, n, ms in c.target_pass_ms if n == 1)
        d1 = sum(ms for s, n, ms in c.draft_pass_ms if n == 1)
        lines.append(
            f"| {c.pair} | {c.batch} | {c.scenario} | {format_list(c.priors)} | {c.prior_source} | "
            f"{format_list(c.measured_stage_acceptance)} | {c.step_overhead_ms:.3f} | {c.round_overhead_ms:.3f} "
            f"({c.round_overhead_raw_ms:.3f}) | {t1:.2f} / {d1:.2f} | {c.dispatch}{_check(c)} | {c.gamma_per_round} | "
            f"{c.seconds:.1f} |"
        )
    return "\n".join(lines)


def _check(c: AdaptiveCalibration) -> str:
    if not c.check_rule_ms:
        return ""
    return (f" (checked: {statistics.median(c.check_rule_ms):.2f} ms against the target's "
            f"{statistics.median(c.check_target_ms):.2f} ms)")


def report_to_json(report: BenchReport) -> str:
    return json.dumps(asdict(report), indent=1)


def write_report(report: BenchReport, out: str | Path) -> str:
    """Write ``bench.json`` and ``bench.md`` into the folder ``out`` (each atomically); returns the markdown."""
    out = Path(out)
    atomic_write_text(out / "bench.json", report_to_json(report))
    table = format_markdown(report)
    atomic_write_text(out / "bench.md", table + "\n")
    return table
