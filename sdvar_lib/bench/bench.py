"""GPU benchmark of the decoders at the official sizes: ``python -m sdvar_lib.bench``.

Official-size draft/target pairs with random bf16 weights are timed on the fast path
(:mod:`sdvar_lib.fast.run`) against the library's eager loop under bf16 autocast (the reference's
``autoregressive_infer_cfg``) in the same run. Every figure comes with its physical lower bound:
the sum over the transformer passes actually made of (weight + KV-cache bytes) / HBM bandwidth +
FLOPs / bf16 tensor throughput, with both ceilings measured at the start of the run.

Random weights make acceptance meaningless, so SDVAR is also timed under fixed acceptance
scenarios (:class:`ScenarioPolicy`): a proposed stage is accepted with a fixed per-stage
probability (kept as proposed) or replaced by a sample from the target's ``p``.

The bound arithmetic (:class:`VarSpec`, :func:`pass_flops`, :func:`pass_bytes`, ...) runs on the
CPU and is unit-tested; only :func:`main` needs CUDA.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import logging
import math
import platform
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from sdvar_lib.decoding.reference import fhat_to_unit_images
from sdvar_lib.decoding.sampling import sample_from_probs
from sdvar_lib.fast.run import FastConfig, FastRun, FastRunFactory, GraphedDecode, PassRecord, chunk_span, stage_chunks
from sdvar_lib.models.checkpoints import OFFICIAL_PATCH_NUMS, ModelPair, build_vae, build_var, official_var_kwargs
from sdvar_lib.models.var import VAR
from sdvar_lib.sdvar.acceptance import AcceptancePolicy, StageVerdict, make_policy
from sdvar_lib.sdvar.decoder import SDVAR, SDVAROutput, SDVARStats
from sdvar_lib.sdvar.gamma import AdaptiveGamma, FixedGamma, GammaRule, GammaSchedule, TableCost, plan_never_drafts

log = logging.getLogger(__name__)

__all__ = [
    "VarSpec",
    "Ceilings",
    "ScenarioPolicy",
    "MethodSpec",
    "Scenario",
    "BenchConfig",
    "BenchRow",
    "BenchReport",
    "METHODS",
    "pass_weight_params",
    "total_params",
    "attended_keys",
    "pass_flops",
    "pass_bytes",
    "pass_bound_s",
    "passes_bound_s",
    "sequential_passes",
    "format_markdown",
    "CallSample",
    "OverheadEstimate",
    "AdaptiveCalibration",
    "chunk_of_pass",
    "measure_pass_times",
    "estimate_overheads",
    "calibrated_costs",
    "pooled_stage_acceptance",
    "fill_missing_stages",
    "scenario_stage_acceptance",
    "map_profile_to_stages",
    "calibrate_batch",
    "calibrate_scenario",
    "format_calibrations",
    "main",
]


# ---- model arithmetic ---------------------------------------------------------------------------
@dataclass(frozen=True)
class VarSpec:
    """The sizes of a VAR that the bound needs (no weights)."""

    depth: int
    width: int
    heads: int
    vocab: int
    cond_dim: int
    mlp_hidden: int
    patch_nums: tuple[int, ...]
    cvae: int = 32
    num_classes: int = 1000
    attn_l2_norm: bool = True

    @classmethod
    def from_model(cls, model: VAR) -> VarSpec:
        if model.blocks[0].shared_aln:
            raise ValueError("VarSpec covers VARs with shared_aln=False (the official models)")
        return cls(
            depth=model.depth, width=model.C, heads=model.num_heads, vocab=model.V, cond_dim=model.D,
            mlp_hidden=model.blocks[0].ffn.fc1.out_features, patch_nums=tuple(model.patch_nums), cvae=model.Cvae,
            num_classes=model.num_classes, attn_l2_norm=model.blocks[0].attn.attn_l2_norm,
        )

    @classmethod
    def official(cls, depth: int) -> VarSpec:
        kw = official_var_kwargs(depth)
        C = kw["embed_dim"]
        return cls(
            depth=depth, width=C, heads=kw["num_heads"], vocab=4096, cond_dim=C, mlp_hidden=round(C * kw["mlp_ratio"]),
            patch_nums=tuple(OFFICIAL_PATCH_NUMS), cvae=32, num_classes=kw["num_classes"], attn_l2_norm=kw["attn_l2_norm"],
        )

    @property
    def L(self) -> int:
        return sum(pn * pn for pn in self.patch_nums)

    def stage_end_of_position(self) -> list[int]:
        """For every token position, the end of its stage (block-causal: the keys it attends to)."""
        ends: list[int] = []
        cur = 0
        for pn in self.patch_nums:
            cur += pn * pn
            ends.extend([cur] * (pn * pn))
        return ends


def _block_params(spec: VarSpec) -> int:
    C, D, hid = spec.width, spec.cond_dim, spec.mlp_hidden
    attn = 3 * C * C + 2 * C + (spec.heads if spec.attn_l2_norm else 0) + C * C + C  # qkv, q/v bias, scale_mul, proj
    ffn = C * hid + hid + hid * C + C
    ada = D * 6 * C + 6 * C
    return attn + ffn + ada


def pass_weight_params(spec: VarSpec) -> int:
    """Parameters every pass streams: the blocks, the head's AdaLN and the head."""
    C, D = spec.width, spec.cond_dim
    return spec.depth * _block_params(spec) + (D * 2 * C + 2 * C) + (C * spec.vocab + spec.vocab)


def total_params(spec: VarSpec) -> int:
    """All parameters of the VAR (embeddings included)."""
    C, S = spec.width, len(spec.patch_nums)
    embeds = (spec.cvae * C + C) + (spec.num_classes + 1) * C + spec.patch_nums[0] ** 2 * C + spec.L * C + S * C
    return pass_weight_params(spec) + embeds


def _check_chunk(spec: VarSpec, rows: int, position: int, length: int) -> None:
    if rows < 1 or length < 1 or position < 0 or position + length > spec.L:
        raise ValueError(f"a pass needs rows >= 1 and a chunk inside [0, {spec.L}); got rows={rows}, "
                         f"position={position}, length={length}")


def attended_keys(spec: VarSpec, position: int, length: int) -> int:
    """Sum over the chunk's queries of the keys they attend to under the block-causal mask."""
    _check_chunk(spec, 1, position, length)
    return sum(spec.stage_end_of_position()[position : position + length])


def pass_flops(spec: VarSpec, rows: int, position: int, length: int) -> float:
    """FLOPs of one pass over ``length`` tokens at ``position`` for ``rows`` sequences (CFG rows count).

    Matrix products of the blocks and the head per token, the AdaLN projections per row, and
    attention (QK^T and AV) over the keys each query may see.
    """
    _check_chunk(spec, rows, position, length)
    C, D, hid = spec.width, spec.cond_dim, spec.mlp_hidden
    per_token = 2 * (4 * C * C + 2 * C * hid)
    layer = rows * (length * per_token + 2 * D * 6 * C + 4 * C * attended_keys(spec, position, length))
    head = rows * (length * 2 * C * spec.vocab + 2 * D * 2 * C)
    return float(spec.depth * layer + head)


def pass_bytes(spec: VarSpec, rows: int, position: int, length: int, weight_bytes: int = 2, kv_bytes: int = 2) -> float:
    """Bytes a pass must move: its weights once, the cached keys/values it reads and the ones it writes."""
    _check_chunk(spec, rows, position, length)
    kv_per_token = spec.depth * 2 * spec.width * kv_bytes
    return float(pass_weight_params(spec) * weight_bytes + rows * (position + length) * kv_per_token
                 + rows * length * kv_per_token)


@dataclass(frozen=True)
class Ceilings:
    """Measured device ceilings: HBM bandwidth (bytes read + written per second) and bf16 matmul FLOP/s."""

    hbm_bytes_per_s: float
    bf16_flops_per_s: float

    def __post_init__(self) -> None:
        if not (self.hbm_bytes_per_s > 0 and self.bf16_flops_per_s > 0):
            raise ValueError(f"ceilings must be > 0, got {self}")


def pass_bound_s(spec: VarSpec, rows: int, position: int, length: int, ceilings: Ceilings) -> float:
    """Lower bound of one pass: bytes / bandwidth + FLOPs / tensor throughput (no overlap assumed)."""
    return (pass_bytes(spec, rows, position, length) / ceilings.hbm_bytes_per_s
            + pass_flops(spec, rows, position, length) / ceilings.bf16_flops_per_s)


def passes_bound_s(spec: VarSpec, rows: int, passes: Sequence[PassRecord], ceilings: Ceilings) -> float:
    return sum(pass_bound_s(spec, rows, p.position, p.length, ceilings) for p in passes)


def sequential_passes(spec: VarSpec) -> list[PassRecord]:
    """The passes of target-only decoding: one per stage."""
    out, cur = [], 0
    for pn in spec.patch_nums:
        out.append(PassRecord(position=cur, length=pn * pn, graphed=False))
        cur += pn * pn
    return out


# ---- acceptance scenarios -----------------------------------------------------------------------
@dataclass(frozen=True)
class ScenarioPolicy(AcceptancePolicy):
    """Accept a proposed stage with a fixed per-stage probability (timing scenarios, not a decoder).

    One draw per stage for the whole batch (``per_sample=False``) or one per sample. Accepted:
    the proposal is kept; rejected: the stage is drawn from the target's ``p``. Tokens stay valid,
    so the work done (and synchronisation) is that of a real call with that acceptance.
    """

    stage_probabilities: tuple[float, ...]
    per_sample: bool = False
    label: str = "scenario"
    name: str = field(default="scenario", init=False)

    def __post_init__(self) -> None:
        probs = self.stage_probabilities
        if not isinstance(probs, tuple) or len(probs) == 0:
            raise ValueError("stage_probabilities must be a non-empty tuple of probabilities, one per stage")
        for p in probs:
            if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= p <= 1.0:
                raise ValueError(f"every stage probability must be a number in [0, 1], got {p!r}")

    @classmethod
    def all_accepted(cls, num_stages: int) -> ScenarioPolicy:
        return cls(stage_probabilities=(1.0,) * num_stages, label="all-accepted")

    def verify_stage(self, si, proposals_Bl, q_BlV, p_BlV, rng, context=None) -> StageVerdict:
        if not 0 <= si < len(self.stage_probabilities):
            raise ValueError(f"the scenario has {len(self.stage_probabilities)} stage probabilities, stage {si} asked")
        B, l = proposals_Bl.shape
        u = torch.rand((B if self.per_sample else 1,), generator=rng, device=proposals_Bl.device)
        stage_ok_B = (u < self.stage_probabilities[si]).expand(B)
        resampled = sample_from_probs(p_BlV, rng)
        tokens = torch.where(stage_ok_B.unsqueeze(1), proposals_Bl, resampled)
        return StageVerdict(accepted_Bl=stage_ok_B.unsqueeze(1).expand(B, l), stage_accepted_B=stage_ok_B,
                            tokens_if_last_Bl=tokens)

    def describe(self) -> str:
        if self.label != "scenario":
            return self.label
        return "profile[" + ",".join(f"{p:g}" for p in self.stage_probabilities) + "]"


# ---- methods and configuration ------------------------------------------------------------------
@dataclass(frozen=True)
class MethodSpec:
    """A decoder to time. ``kind``: eager, target, draft, sdvar, test3 or code.

    An SDVAR ``gamma`` is an int, ``"adaptive"`` (:class:`AdaptiveGamma` defaults) or ``"calibrated"``
    (:class:`AdaptiveGamma` with pass costs, overheads and acceptance priors measured on the same GPU,
    batch size and scenario right before the row is timed; see :func:`calibrate_scenario`).
    """

    name: str
    kind: str
    gamma: int | str | None = None
    entry_num: int | None = None

    @property
    def adaptive(self) -> bool:
        return self.gamma in ("adaptive", "calibrated")

    @property
    def uses_draft(self) -> bool:
        return self.kind in ("draft", "sdvar", "test3", "code")

    @property
    def uses_target(self) -> bool:
        return self.kind in ("eager", "target", "sdvar", "test3", "code")

    def target_chunks(self, S: int) -> list[tuple[int, int]]:
        if self.kind == "target":
            return stage_chunks(S, 1)
        if self.kind == "sdvar":
            return stage_chunks(S, (ADAPTIVE_MAX_GAMMA if self.adaptive else int(self.gamma)) + 1)
        if self.kind == "test3":
            return [(0, self.entry_num + 1)] + [(s, 1) for s in range(self.entry_num + 1, S)]
        if self.kind == "code":
            return [(s, 1) for s in range(self.entry_num)]
        return []

    def draft_chunks(self, S: int) -> list[tuple[int, int]]:
        if self.kind == "draft":
            return stage_chunks(S, 1)
        if self.kind == "sdvar":
            # after target steps (gamma 0) the draft catches up over several stages in one chunk;
            # the calibrated rule prices every such chunk, so all of them are captured (and measured)
            return stage_chunks(S, S if self.gamma == "calibrated" else 2)
        if self.kind == "test3":
            return [(s, 1) for s in range(self.entry_num)]
        if self.kind == "code":
            return [(0, self.entry_num + 1)] + [(s, 1) for s in range(self.entry_num + 1, S)]
        return []


ADAPTIVE_MAX_GAMMA = AdaptiveGamma().max_gamma

METHODS: dict[str, MethodSpec] = {
    m.name: m
    for m in (
        MethodSpec("eager_target", "eager"),
        MethodSpec("draft", "draft"),
        MethodSpec("target", "target"),
        *(MethodSpec(f"sdvar_g{g}", "sdvar", gamma=g) for g in (1, 2, 3, 4)),
        MethodSpec("sdvar_adaptive", "sdvar", gamma="adaptive"),
        MethodSpec("sdvar_adaptive_cal", "sdvar", gamma="calibrated"),
        MethodSpec("test3_e5", "test3", entry_num=5),
        MethodSpec("code_e6", "code", entry_num=6),
        MethodSpec("code_e8", "code", entry_num=8),
    )
}
SCENARIOS = ("exact", "all", "profile")


@dataclass(frozen=True)
class Scenario:
    """How SDVAR rows accept: the real ``exact`` policy, or a :class:`ScenarioPolicy`."""

    name: str
    policy: AcceptancePolicy

    def describe(self) -> str:
        return "exact (random weights)" if self.name == "exact" else self.policy.describe()


@dataclass(frozen=True)
class BenchConfig:
    pairs: tuple[tuple[int, int], ...] = ((16, 30), (16, 24))
    batches: tuple[int, ...] = (1, 8, 32)
    methods: tuple[str, ...] = tuple(METHODS)
    scenarios: tuple[str, ...] = ("exact", "all")
    acceptance_profile: tuple[float, ...] | None = None
    per_sample_acceptance: bool = False
    repeats: int = 10
    warmup: int = 2
    passes_only_repeats: int = 5
    calibration_calls: int = 2
    calibration_replays: int = 3
    top_k: int = 900
    top_p: float = 0.96
    cfg: float = 1.5
    use_cuda_graphs: bool = True
    graph_decode: bool = True
    cudnn_benchmark: bool = True
    out: str = "bench_out"

    def __post_init__(self) -> None:
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown:
            raise ValueError(f"unknown methods {unknown}; allowed: {', '.join(METHODS)}")
        bad = [s for s in self.scenarios if s not in SCENARIOS]
        if bad:
            raise ValueError(f"unknown scenarios {bad}; allowed: {', '.join(SCENARIOS)}")
        if "profile" in self.scenarios and self.acceptance_profile is None:
            raise ValueError("scenario 'profile' needs --acceptance-profile p0,p1,...")
        if self.acceptance_profile is not None and len(self.acceptance_profile) != len(OFFICIAL_PATCH_NUMS):
            raise ValueError(f"--acceptance-profile needs {len(OFFICIAL_PATCH_NUMS)} probabilities (one per stage), "
                             f"got {len(self.acceptance_profile)}")
        if self.repeats < 1 or self.warmup < 0:
            raise ValueError(f"repeats must be >= 1 and warmup >= 0, got {self.repeats} and {self.warmup}")
        if self.calibration_calls < 1 or self.calibration_replays < 1:
            raise ValueError(f"calibration_calls and calibration_replays must be >= 1, got {self.calibration_calls} "
                             f"and {self.calibration_replays}")
        if any(b < 1 for b in self.batches) or not self.batches:
            raise ValueError(f"batch sizes must be >= 1, got {self.batches}")
        for depths in self.pairs:
            for depth in depths:
                official_var_kwargs(depth)  # raises ValueError for a depth that is not official


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


@dataclass
class DecodeTiming:
    """VQVAE decode alone (bf16 autocast): eager, and replayed as a CUDA graph (what fast-path rows use)."""

    batch: int
    eager_ms: float
    graphed_ms: float | None = None


@dataclass(frozen=True)
class CallSample:
    """One calibration call: its latency, the measured time of the passes it made, and what it did.

    ``fixed_ms``: per-call work that is neither a pass nor per stage (the VQVAE decode and each run's
    ``begin``). ``draft_passes``: draft passes (one per proposal); ``target_stages_read``: stages over
    all target passes (a target step reads 1, a verify chunk ``g + 1``); ``sdvar_rounds``: rounds
    that drafted (gamma >= 1).
    """

    total_ms: float
    pass_ms: float
    fixed_ms: float
    draft_passes: int = 0
    target_stages_read: int = 0
    sdvar_rounds: int = 0

    @property
    def other_ms(self) -> float:
        """Time outside the passes and the fixed per-call work: sampling, VQ ops, acceptance, syncs."""
        return self.total_ms - self.pass_ms - self.fixed_ms


@dataclass(frozen=True)
class OverheadEstimate:
    """Time outside the passes, as :func:`estimate_overheads` splits it.

    ``step_ms``: per stage a pass reads or proposes (what a target step costs beyond its pass: its
    stage input, guidance, sampling and ``f_hat`` update); ``round_ms``: what a drafting round costs
    beyond that (acceptance, the verdicts' host transfer, bookkeeping), clamped at 0
    (``round_ms_raw`` unclamped).
    """

    step_ms: float
    round_ms: float
    round_ms_raw: float
    target_calls: int
    sdvar_calls: int


@dataclass
class AdaptiveCalibration:
    """What the calibrated adaptive rule of one (pair, batch, scenario) row was built from.

    Pass tables are ``[start stage, stages, ms]`` rows (graph replays, CUDA events); the cost model
    the rule got adds ``stages * step_overhead_ms`` to a target chunk, ``step_overhead_ms`` to a
    draft chunk and ``round_overhead_ms`` per round (:func:`calibrated_costs`).
    """

    pair: str
    batch: int
    scenario: str
    prior_source: str
    priors: list[float]
    measured_stage_acceptance: list[float | None]
    step_overhead_ms: float
    round_overhead_ms: float
    round_overhead_raw_ms: float
    fixed_ms: float
    target_pass_ms: list[list[float]]
    draft_pass_ms: list[list[float]]
    target_call_ms: list[float]
    sdvar_call_ms: list[float]
    seconds: float
    dispatch: str = "sdvar"
    """``"sdvar"``, or ``"target alone"`` when the calibrated plan never drafts (:func:`plan_never_drafts`)."""
    gamma_per_round: list[int] | None = None
    """The gamma of every round of the row's last timed call (filled after timing; ``[]`` for target alone)."""


@dataclass
class BenchEnvironment:
    gpu: str
    driver: str
    torch: str
    cuda: str
    python: str
    command: str


@dataclass
class BenchReport:
    environment: BenchEnvironment
    ceilings: Ceilings
    decode: list[DecodeTiming]
    rows: list[BenchRow]
    config: BenchConfig
    calibrations: list[AdaptiveCalibration] = field(default_factory=list)


# ---- statistics and formatting ------------------------------------------------------------------
def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolation percentile (``q`` in [0, 100])."""
    if not values:
        raise ValueError("percentile of no values")
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def add_speedups(rows: list[BenchRow]) -> None:
    """Fill ``speedup_vs_target`` / ``speedup_vs_eager`` from the same pair and batch."""
    ref: dict[tuple[str, int, str], float] = {
        (r.pair, r.batch, r.method): r.latency_ms_median for r in rows if r.method in ("target", "eager_target")
    }
    for r in rows:
        t = ref.get((r.pair, r.batch, "target"))
        e = ref.get((r.pair, r.batch, "eager_target"))
        r.speedup_vs_target = t / r.latency_ms_median if t else None
        r.speedup_vs_eager = e / r.latency_ms_median if e else None


def _fmt(v: float | None, digits: int = 1, suffix: str = "") -> str:
    return "-" if v is None else f"{v:.{digits}f}{suffix}"


def format_markdown(report: BenchReport) -> str:
    env, ceil = report.environment, report.ceilings
    lines = [
        f"GPU: {env.gpu}; driver {env.driver}; torch {env.torch} (CUDA {env.cuda}); python {env.python}",
        f"Measured ceilings: HBM copy {ceil.hbm_bytes_per_s / 1e12:.2f} TB/s (read + write), "
        f"bf16 matmul {ceil.bf16_flops_per_s / 1e12:.0f} TFLOP/s",
        "VQVAE decode alone (bf16 autocast; inside every timed call), eager / CUDA graph: "
        + ", ".join(f"batch {d.batch}: {d.eager_ms:.2f} / {_fmt(d.graphed_ms, 2)} ms" for d in report.decode),
        f"Fast path: CUDA graphs {'on' if report.config.use_cuda_graphs else 'off'}, graphed VQVAE decode "
        f"{'on' if report.config.graph_decode else 'off'} (eager_target always decodes eagerly), cudnn.benchmark "
        f"{'on' if report.config.cudnn_benchmark else 'off'}",
        f"Sampling: top-k {report.config.top_k}, top-p {report.config.top_p}, cfg {report.config.cfg}; "
        f"{report.config.repeats} timed runs after {report.config.warmup} warm-up runs; latency per call "
        "(CUDA events, VAE decode included)",
        "",
    ]
    header = ("| batch | method | scenario | median ms | p10–p90 ms | img/s | target passes | draft passes | "
              "peak alloc / reserved GiB | bound ms | meas/bound | passes-only ms | vs target | vs eager |")
    sep = "|" + "---|" * 14
    for pair in dict.fromkeys(r.pair for r in report.rows):
        lines += [f"#### {pair}", "", header, sep]
        for r in (r for r in report.rows if r.pair == pair):
            lines.append(
                f"| {r.batch} | {r.method} | {r.scenario} | {r.latency_ms_median:.2f} | "
                f"{r.latency_ms_p10:.2f}–{r.latency_ms_p90:.2f} | {r.images_per_s:.1f} | {r.target_passes:g} | "
                f"{r.draft_passes:g} | {r.peak_mem_gib:.1f} / {r.peak_reserved_gib:.1f} | {r.bound_ms:.2f} | "
                f"{r.ratio_to_bound:.2f} | "
                f"{_fmt(r.passes_only_ms, 2)} | {_fmt(r.speedup_vs_target, 2, '×')} | {_fmt(r.speedup_vs_eager, 2, '×')} |"
            )
        lines.append("")
    if report.calibrations:
        lines += [format_calibrations(report.calibrations), ""]
    return "\n".join(lines)


def _fmt_list(values: Sequence[float | None], digits: int = 2) -> str:
    return ",".join("-" if v is None else f"{round(v, digits):g}" for v in values)


def format_calibrations(calibrations: Sequence[AdaptiveCalibration]) -> str:
    """Markdown: per calibrated row the priors, the overheads and the gamma of every round of one timed call."""
    lines = [
        "Calibrated adaptive gamma (`sdvar_adaptive_cal`): pass times are CUDA-graph replays of every chunk "
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
            f"| {c.pair} | {c.batch} | {c.scenario} | {_fmt_list(c.priors)} | {c.prior_source} | "
            f"{_fmt_list(c.measured_stage_acceptance)} | {c.step_overhead_ms:.3f} | {c.round_overhead_ms:.3f} "
            f"({c.round_overhead_raw_ms:.3f}) | {t1:.2f} / {d1:.2f} | {c.dispatch} | {c.gamma_per_round} | "
            f"{c.seconds:.1f} |"
        )
    return "\n".join(lines)


def report_to_json(report: BenchReport) -> str:
    return json.dumps(asdict(report), indent=1)


# ---- device measurements ------------------------------------------------------------------------
def _median_event_ms(fn: Callable[[], object], repeats: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def _copy_ms(device: torch.device, n: int, repeats: int) -> float:
    src = torch.randn(n, dtype=torch.bfloat16, device=device)
    dst = torch.empty_like(src)
    return _median_event_ms(lambda: dst.copy_(src), repeats)


def _matmul_ms(device: torch.device, n: int, repeats: int) -> float:
    a = torch.randn(n, n, dtype=torch.bfloat16, device=device)
    b = torch.randn(n, n, dtype=torch.bfloat16, device=device)
    return _median_event_ms(lambda: a @ b, repeats)


def measure_ceilings(device: torch.device, copy_gib: float = 2.0, matmul_n: int = 8192, repeats: int = 10) -> Ceilings:
    """HBM bandwidth from a large device-to-device copy, bf16 FLOP/s from a large matmul (random data)."""
    n = int(copy_gib * 2**30) // 2
    copy_ms = _copy_ms(device, n, repeats)
    mm_ms = _matmul_ms(device, matmul_n, repeats)
    torch.cuda.empty_cache()
    return Ceilings(hbm_bytes_per_s=2 * n * 2 / (copy_ms / 1e3), bf16_flops_per_s=2 * matmul_n**3 / (mm_ms / 1e3))


def measure_decode(model: VAR, batch: int, repeats: int = 10, graphed: GraphedDecode | None = None) -> DecodeTiming:
    """VQVAE decode of ``batch`` feature maps under bf16 autocast (as inside every call), eager and graphed."""
    pn = model.patch_nums[-1]
    f_hat = torch.randn(batch, model.Cvae, pn, pn, device=model.device)

    def decode() -> None:
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
            fhat_to_unit_images(model, f_hat)

    eager = _median_event_ms(decode, repeats)
    graphed_ms = None
    if graphed is not None:
        with graphed.installed():
            graphed_ms = _median_event_ms(decode, repeats)
    return DecodeTiming(batch=batch, eager_ms=eager, graphed_ms=graphed_ms)


def describe_environment(device: torch.device, command: str) -> BenchEnvironment:
    driver = "unknown"
    try:
        res = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20, check=False)
        if res.returncode == 0 and res.stdout.strip():
            driver = res.stdout.strip().splitlines()[0]
    except (OSError, subprocess.SubprocessError):
        pass
    return BenchEnvironment(gpu=torch.cuda.get_device_name(device), driver=driver, torch=torch.__version__,
                            cuda=str(torch.version.cuda), python=platform.python_version(), command=command)


def build_pair_bf16(draft_depth: int, target_depth: int, device: torch.device) -> ModelPair:
    """Official-size random-weight VARs built on ``device`` and converted to bf16 (the VQVAE stays float32)."""
    vae = build_vae(device)
    models = []
    for depth in (draft_depth, target_depth):
        models.append(build_var(vae, depth, device).to(torch.bfloat16).eval())
        torch.cuda.empty_cache()
    return ModelPair(vae=vae, draft=models[0], target=models[1],
                     description=f"official-size random weights d{draft_depth} -> d{target_depth} (bf16)")


# ---- timing one method --------------------------------------------------------------------------
@dataclass
class _PairContext:
    name: str
    pair: ModelPair
    sd: SDVAR
    factory: FastRunFactory
    specs: dict[int, VarSpec]
    decoder: GraphedDecode | None


def _method_call(ctx: _PairContext, method: MethodSpec, scenario: Scenario | None, B: int,
                 config: BenchConfig, gamma: GammaRule | None = None) -> Callable[[int], object]:
    """``seed -> output`` of one call; ``gamma`` overrides an SDVAR method's gamma (the calibrated rule)."""
    sd, kw = ctx.sd, dict(cfg=config.cfg, top_k=config.top_k, top_p=config.top_p)
    if method.kind == "eager":
        return lambda seed: ctx.pair.target.autoregressive_infer_cfg(B, None, g_seed=seed, **kw)
    if method.kind == "target":
        return lambda seed: sd.baseline(B, None, g_seed=seed, **kw)
    if method.kind == "draft":
        return lambda seed: sd.draft_alone(B, None, g_seed=seed, **kw)
    if method.kind == "test3":
        return lambda seed: sd.generate_test3(B, None, g_seed=seed, entry_num=method.entry_num, **kw)
    if method.kind == "code":
        return lambda seed: sd.code_handoff(B, None, g_seed=seed, entry_num=method.entry_num, **kw)
    assert scenario is not None
    if method.gamma == "calibrated":
        if gamma is None:
            raise ValueError(f"{method.name} needs the calibrated gamma rule (calibrate_scenario)")
        if plan_never_drafts(gamma, ctx.pair.target.num_stages):
            return lambda seed: sd.baseline(B, None, g_seed=seed, **kw)
    rule = gamma if gamma is not None else method.gamma
    return lambda seed: sd.generate_parallel(B, None, g_seed=seed, gamma=rule, policy=scenario.policy, **kw)


def _in_call_context(ctx: _PairContext, graphed_decode: bool, fn: Callable[[], object]) -> object:
    """Run ``fn`` as the timed calls run: graphed VQVAE decode (fast-path rows) and bf16 autocast on CUDA."""
    with contextlib.ExitStack() as stack:
        if graphed_decode and ctx.decoder is not None:
            stack.enter_context(ctx.decoder.installed())
        if ctx.pair.target.device.type == "cuda":
            stack.enter_context(torch.autocast("cuda", dtype=torch.bfloat16))
        return fn()


def _prepare_runs(ctx: _PairContext, method: MethodSpec, B: int) -> None:
    """Keep only the runs the method uses (peak memory is per method) and capture its chunks up front."""
    draft, target = ctx.pair.draft, ctx.pair.target
    if method.kind == "eager":
        ctx.factory.release()
    elif not method.uses_draft:
        ctx.factory.release(draft)
    elif not method.uses_target:
        ctx.factory.release(target)
    gc.collect()
    torch.cuda.empty_cache()
    S = target.num_stages
    if method.kind != "eager":
        t0 = time.perf_counter()
        if method.uses_target and method.target_chunks(S):
            ctx.factory.prepare(target, B, method.target_chunks(S))
        if method.uses_draft and method.draft_chunks(S):
            ctx.factory.prepare(draft, B, method.draft_chunks(S))
        log.debug("precaptured %s in %.2f s", method.name, time.perf_counter() - t0)


def _call_passes(ctx: _PairContext, method: MethodSpec) -> list[tuple[VarSpec, list[PassRecord]]]:
    if method.kind == "eager":
        spec = ctx.specs[id(ctx.pair.target)]
        return [(spec, sequential_passes(spec))]
    return [(ctx.specs[id(run.model)], list(run.pass_log)) for run in ctx.factory.call_runs()]


def bench_method(ctx: _PairContext, method: MethodSpec, scenario: Scenario | None, B: int, config: BenchConfig,
                 ceilings: Ceilings, gamma: GammaRule | None = None) -> BenchRow:
    _prepare_runs(ctx, method, B)
    call = _method_call(ctx, method, scenario, B, config, gamma)

    graphed_decode = ctx.decoder is not None and method.kind != "eager"

    def timed(seed: int) -> object:
        return _in_call_context(ctx, graphed_decode, lambda: call(seed))

    for i in range(config.warmup):
        timed(10_000 + i)
    torch.cuda.synchronize()
    captures_before = sum(r.counters.captures for r in ctx.factory.runs())
    torch.cuda.reset_peak_memory_stats()
    times, t_passes, d_passes, bounds, acceptance = [], [], [], [], []
    last_passes: list = []
    gamma_per_round: list[int] | None = None
    for i in range(config.repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        out = timed(i)
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
        passes = _call_passes(ctx, method)
        bounds.append(sum(passes_bound_s(spec, 2 * B, p, ceilings) for spec, p in passes) * 1e3)
        if isinstance(out, SDVAROutput):
            t_passes.append(out.stats.target_passes)
            d_passes.append(out.stats.draft_passes)
            if out.stats.token_acceptance is not None:
                acceptance.append(out.stats.token_acceptance)
            if method.kind == "sdvar":
                gamma_per_round = list(out.stats.gamma_per_round)
        else:
            t_passes.append(len(passes[0][1]))
            d_passes.append(0)
        if method.kind != "eager":
            last_passes = [(run, list(run.pass_log)) for run in ctx.factory.call_runs()]
    peak = torch.cuda.max_memory_allocated() / 2**30
    reserved = torch.cuda.max_memory_reserved() / 2**30
    captures = sum(r.counters.captures for r in ctx.factory.runs()) - captures_before
    passes_only = None
    if last_passes and config.passes_only_repeats > 0 and all(p.graphed for _, ps in last_passes for p in ps):
        passes_only = _median_event_ms(lambda: [run.replay_passes(ps) for run, ps in last_passes],
                                       config.passes_only_repeats, warmup=1)
    median = statistics.median(times)
    bound = statistics.median(bounds)
    row = BenchRow(
        pair=ctx.name, batch=B, method=method.name, scenario=scenario.describe() if scenario else "-",
        latency_ms_median=median, latency_ms_p10=percentile(times, 10), latency_ms_p90=percentile(times, 90),
        latency_ms_min=min(times), latency_ms_max=max(times), images_per_s=B * 1e3 / median,
        target_passes=statistics.median(t_passes), draft_passes=statistics.median(d_passes), peak_mem_gib=peak,
        peak_reserved_gib=reserved,
        bound_ms=bound, ratio_to_bound=median / bound, passes_only_ms=passes_only,
        token_acceptance=statistics.median(acceptance) if acceptance else None, captures_during_timing=captures,
        gamma_per_round=gamma_per_round,
    )
    log.info("%s B=%d %-18s %-26s %8.2f ms (p10 %.2f, p90 %.2f)  bound %.2f ms  x%.2f  T%g D%g  %.1f GiB%s%s",
             ctx.name, B, method.name, row.scenario, median, row.latency_ms_p10, row.latency_ms_p90, bound,
             row.ratio_to_bound, row.target_passes, row.draft_passes, peak,
             f"  passes-only {passes_only:.2f} ms" if passes_only is not None else "",
             f"  gamma/round {gamma_per_round}" if method.adaptive else "")
    return row


# ---- calibrated adaptive gamma ------------------------------------------------------------------
ReplayTimer = Callable[[Callable[[], object], int, int], float]
"""``(fn, repeats, warmup) -> median ms`` of ``fn`` (on the GPU: CUDA events around each run)."""
CallTimer = Callable[[Callable[[], object]], tuple[object, float]]
"""``fn -> (result, ms)`` of one run of ``fn``."""


def cuda_event_call_ms(fn: Callable[[], object]) -> tuple[object, float]:
    """One run of ``fn`` timed with CUDA events (what the timed rows measure)."""
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    out = fn()
    end.record()
    end.synchronize()
    return out, start.elapsed_time(end)


def chunk_of_pass(model: VAR, position: int, length: int) -> tuple[int, int]:
    """``(start stage, number of stages)`` of a pass over ``[position, position + length)`` (inverse of ``chunk_span``)."""
    starts = {b: i for i, (b, _) in enumerate(model.begin_ends)}
    ends = {e: i for i, (_, e) in enumerate(model.begin_ends)}
    end = position + length
    if position not in starts or end not in ends or ends[end] < starts[position]:
        raise ValueError(f"a pass at {position} of {length} tokens is not a chunk of whole stages")
    return starts[position], ends[end] - starts[position] + 1


def measure_pass_times(run: FastRun, chunks: Sequence[tuple[int, int]], timer: ReplayTimer, repeats: int = 3,
                       warmup: int = 1) -> dict[tuple[int, int], float]:
    """Median time (ms) of the program (CUDA-graph replay) of every ``(start stage, stages)`` chunk of ``run``.

    The chunks are captured first (:meth:`FastRun.precapture`); each is then replayed alone at its
    position, ``warmup`` + ``repeats`` times, and ``timer`` gives the median. The cache is left empty.
    """
    run.precapture(chunks)
    out: dict[tuple[int, int], float] = {}
    for start, n in chunks:
        position, length = chunk_span(run.model, start, n)
        rec = PassRecord(position, length, graphed=run.use_cuda_graphs)
        out[(start, n)] = float(timer(lambda rec=rec: run.replay_passes([rec]), repeats, warmup))
    return out


def estimate_overheads(target_calls: Sequence[CallSample], sdvar_calls: Sequence[CallSample]) -> OverheadEstimate:
    """Split the time outside the passes into a per-stage and a per-round part.

    Target-alone calls give the per-stage part: ``step = other / stages read`` (median over the
    calls; ``other = total - passes - fixed``). A draft proposal is charged one ``step`` too (it
    samples and updates ``f_hat`` like a target step), and so is every stage of a verify chunk (its
    input, guidance and probabilities). What an SDVAR call spends beyond that, per drafting round,
    is ``(other - step * (draft passes + target stages read)) / drafting rounds``; ``round`` is its
    median over the SDVAR calls that drafted (a median, so one slow first call does not set it).
    """
    if not target_calls:
        raise ValueError("estimate_overheads needs at least one target-alone call")
    per_step = []
    for c in target_calls:
        steps = c.target_stages_read + c.draft_passes
        if steps < 1:
            raise ValueError(f"a target-alone call must read stages, got {c}")
        per_step.append(c.other_ms / steps)
    step = max(0.0, statistics.median(per_step))
    per_round = [(c.other_ms - step * (c.draft_passes + c.target_stages_read)) / c.sdvar_rounds
                 for c in sdvar_calls if c.sdvar_rounds > 0]
    raw = statistics.median(per_round) if per_round else 0.0
    return OverheadEstimate(step_ms=step, round_ms=max(0.0, raw), round_ms_raw=raw, target_calls=len(target_calls),
                            sdvar_calls=len(sdvar_calls))


def calibrated_costs(target_pass_ms: dict[tuple[int, int], float], draft_pass_ms: dict[tuple[int, int], float],
                     overheads: OverheadEstimate) -> TableCost:
    """The rule's cost model: measured pass times plus the host/device work that goes with them.

    A target chunk of ``n`` stages costs its pass + ``n * step`` (so a single stage costs what a
    target step costs), a draft chunk its pass + ``step`` (one proposal), a round ``round`` more.
    With these, :class:`AdaptiveGamma`'s expected saving is the expected time saved by the round
    (the step overhead of every stage it commits is saved too).
    """
    step = overheads.step_ms
    return TableCost(
        target_times={k: t + k[1] * step for k, t in target_pass_ms.items()},
        draft_times={k: t + step for k, t in draft_pass_ms.items()},
        round_overhead=overheads.round_ms,
    )


def pooled_stage_acceptance(stats: Sequence[SDVARStats]) -> list[float | None]:
    """Per stage: judged proposals every sample accepted / judged proposals, pooled over calls (``None``: never judged)."""
    if not stats:
        raise ValueError("pooled_stage_acceptance needs at least one call's statistics")
    S = stats[0].num_stages
    accepted, proposed = [0] * S, [0] * S
    for st in stats:
        for s in range(S):
            accepted[s] += st.accepted_stages_per_stage[s]
            proposed[s] += st.proposed_stages_per_stage[s]
    return [a / p if p else None for a, p in zip(accepted, proposed)]


def fill_missing_stages(values: Sequence[float | None]) -> tuple[float, ...]:
    """Stages without a value take the nearest stage's value (the mean of both where two are equally near)."""
    known = [i for i, v in enumerate(values) if v is not None]
    if not known:
        raise ValueError("no stage has a value")
    out = []
    for i, v in enumerate(values):
        if v is None:
            dist = min(abs(i - k) for k in known)
            near = [values[k] for k in known if abs(i - k) == dist]
            v = sum(near) / len(near)
        out.append(float(v))
    return tuple(out)


def scenario_stage_acceptance(policy: AcceptancePolicy, batch: int) -> tuple[float, ...] | None:
    """A :class:`ScenarioPolicy`'s stage acceptance (every sample accepts: ``p``, or ``p ** batch`` per sample)."""
    if not isinstance(policy, ScenarioPolicy):
        return None
    return tuple(float(p) ** batch if policy.per_sample else float(p) for p in policy.stage_probabilities)


def map_profile_to_stages(values: Sequence[float], num_stages: int) -> tuple[float, ...]:
    """Map a per-stage profile of ``S'`` stages to ``num_stages`` by relative position in the pyramid.

    Stage ``s`` takes the value of stage ``t`` with ``t / (S' - 1)`` nearest to ``s / (num_stages - 1)``
    (the lower ``t`` on a tie).
    """
    src = len(values)
    if src < 1 or num_stages < 1:
        raise ValueError(f"need at least one value and one stage, got {src} values for {num_stages} stages")
    if src == 1 or num_stages == 1:
        return tuple(float(values[0]) for _ in range(num_stages))
    # |t/(src-1) - s/(N-1)| compared in integers: |t*(N-1) - s*(src-1)|
    return tuple(float(values[min(range(src), key=lambda t: abs(t * (num_stages - 1) - s * (src - 1)))])
                 for s in range(num_stages))


@dataclass
class BatchCalibration:
    """What :func:`calibrate_batch` measures once per batch size (scenarios share it)."""

    batch: int
    target_pass_ms: dict[tuple[int, int], float]
    draft_pass_ms: dict[tuple[int, int], float]
    decode_ms: float
    begin_target_ms: float
    begin_draft_ms: float
    target_calls: list[CallSample]
    seconds: float


def _table_rows(table: dict[tuple[int, int], float]) -> list[list[float]]:
    return [[s, n, ms] for (s, n), ms in sorted(table.items())]


def _call_sample(ctx: _PairContext, total_ms: float, fixed_ms: float, cal_tables: tuple[dict, dict],
                 sdvar_rounds: int = 0) -> CallSample:
    """The passes of the latest call (its runs' pass logs) priced with the measured tables."""
    target_table, draft_table = cal_tables
    pass_ms, draft_passes, stages_read = 0.0, 0, 0
    for run in ctx.factory.call_runs():
        is_target = run.model is ctx.pair.target
        table = target_table if is_target else draft_table
        for rec in run.pass_log:
            key = chunk_of_pass(run.model, rec.position, rec.length)
            if key not in table:
                raise ValueError(f"no measured {'target' if is_target else 'draft'} pass time for chunk {key}")
            pass_ms += table[key]
            if is_target:
                stages_read += key[1]
            else:
                draft_passes += 1
    return CallSample(total_ms=total_ms, pass_ms=pass_ms, fixed_ms=fixed_ms, draft_passes=draft_passes,
                      target_stages_read=stages_read, sdvar_rounds=sdvar_rounds)


def calibrate_batch(ctx: _PairContext, B: int, config: BenchConfig, decode_ms: float,
                    replay_timer: ReplayTimer = _median_event_ms,
                    call_timer: CallTimer = cuda_event_call_ms) -> BatchCalibration:
    """Measure, for batch ``B``, every target and draft chunk the calibrated rule may use, each run's
    ``begin`` and ``config.calibration_calls`` target-alone calls (their time outside the passes)."""
    t0 = time.perf_counter()
    draft, target = ctx.pair.draft, ctx.pair.target
    S = target.num_stages
    method = METHODS["sdvar_adaptive_cal"]
    target_run = ctx.factory.run_for(target, B)
    draft_run = ctx.factory.run_for(draft, B)
    reps = config.calibration_replays
    target_ms = measure_pass_times(target_run, method.target_chunks(S), replay_timer, reps)
    draft_ms = measure_pass_times(draft_run, method.draft_chunks(S), replay_timer, reps)
    labels = torch.zeros(B, dtype=torch.long, device=target.device)
    begin_target = float(replay_timer(lambda: target_run.begin(labels), reps, 1))
    begin_draft = float(replay_timer(lambda: draft_run.begin(labels), reps, 1))
    tables = (target_ms, draft_ms)
    call = _method_call(ctx, METHODS["target"], None, B, config)
    samples = []
    for i in range(config.calibration_calls):
        _, ms = call_timer(lambda i=i: _in_call_context(ctx, True, lambda: call(20_000 + i)))
        samples.append(_call_sample(ctx, ms, decode_ms + begin_target, tables))
    cal = BatchCalibration(batch=B, target_pass_ms=target_ms, draft_pass_ms=draft_ms, decode_ms=decode_ms,
                           begin_target_ms=begin_target, begin_draft_ms=begin_draft, target_calls=samples,
                           seconds=time.perf_counter() - t0)
    log.info("%s B=%d calibration: %d target and %d draft chunks timed; single-stage passes target %.2f ms, "
             "draft %.2f ms (sums); begin %.3f / %.3f ms; target-alone calls %s ms (%.1f s)", ctx.name, B,
             len(target_ms), len(draft_ms), sum(target_ms[(s, 1)] for s in range(S)),
             sum(draft_ms[(s, 1)] for s in range(S)), begin_target, begin_draft,
             [round(c.total_ms, 2) for c in samples], cal.seconds)
    return cal


CALIBRATION_RULES: tuple[GammaRule, ...] = (FixedGamma(1), GammaSchedule((1, 0, 1)))
"""The calibration calls alternate these. Both judge stage 0 (the one stage a batch of random-weight
models ever accepts whole, so every call should see it); gamma 1 judges every stage a round starts
at, and the one target step of the second shifts the rounds, so that between them the stages that
one commits as bonus stages are judged too (all but stage 1 when every proposal is accepted)."""


def calibrate_scenario(ctx: _PairContext, B: int, scenario: Scenario, config: BenchConfig, batch_cal: BatchCalibration,
                       call_timer: CallTimer = cuda_event_call_ms) -> tuple[AdaptiveCalibration, AdaptiveGamma]:
    """The calibrated :class:`AdaptiveGamma` of one (batch, scenario) row, and what it was built from.

    ``config.calibration_calls`` SDVAR calls of the scenario (alternating :data:`CALIBRATION_RULES`)
    give the per-round overhead (:func:`estimate_overheads`) and the stage acceptance. The prior is
    the measured stage acceptance for the real ``exact`` policy (stages never judged take the nearest
    judged stage's value) and the scenario's own profile for a :class:`ScenarioPolicy` (what the
    measurement converges to).
    """
    t0 = time.perf_counter()
    S = ctx.pair.target.num_stages
    kw = dict(cfg=config.cfg, top_k=config.top_k, top_p=config.top_p)
    tables = (batch_cal.target_pass_ms, batch_cal.draft_pass_ms)
    fixed = batch_cal.decode_ms + batch_cal.begin_target_ms + batch_cal.begin_draft_ms
    stats, samples = [], []
    for i in range(config.calibration_calls):
        rule = CALIBRATION_RULES[i % len(CALIBRATION_RULES)]

        def call(i=i, rule=rule) -> object:
            return ctx.sd.generate_parallel(B, None, g_seed=30_000 + i, gamma=rule, policy=scenario.policy, **kw)

        out, ms = call_timer(lambda call=call: _in_call_context(ctx, True, call))
        stats.append(out.stats)
        rounds = sum(1 for g in out.stats.gamma_per_round if g > 0)
        samples.append(_call_sample(ctx, ms, fixed, tables, sdvar_rounds=rounds))
    overheads = estimate_overheads(batch_cal.target_calls, samples)
    measured = pooled_stage_acceptance(stats)
    profile = scenario_stage_acceptance(scenario.policy, B)
    if profile is not None:
        priors, source = profile, "scenario profile"
    elif any(v is not None for v in measured):
        priors, source = fill_missing_stages(measured), f"measured ({len(stats)} calls)"
    else:
        priors, source = (0.0,) * S, "none judged (0)"
    rule = AdaptiveGamma(max_gamma=ADAPTIVE_MAX_GAMMA, prior_acceptance=tuple(priors),
                         costs=calibrated_costs(batch_cal.target_pass_ms, batch_cal.draft_pass_ms, overheads))
    cal = AdaptiveCalibration(
        pair=ctx.name, batch=B, scenario=scenario.describe(), prior_source=source, priors=list(priors),
        measured_stage_acceptance=measured, step_overhead_ms=overheads.step_ms, round_overhead_ms=overheads.round_ms,
        round_overhead_raw_ms=overheads.round_ms_raw, fixed_ms=fixed, target_pass_ms=_table_rows(batch_cal.target_pass_ms),
        draft_pass_ms=_table_rows(batch_cal.draft_pass_ms), target_call_ms=[c.total_ms for c in batch_cal.target_calls],
        sdvar_call_ms=[c.total_ms for c in samples], seconds=batch_cal.seconds + time.perf_counter() - t0,
        dispatch="target alone" if plan_never_drafts(rule, S) else "sdvar",
    )
    log.info("%s B=%d %s: priors %s (%s); step overhead %.3f ms, round overhead %.3f ms (raw %.3f); "
             "calibration calls %s ms; runs as %s", ctx.name, B, cal.scenario, [round(p, 3) for p in priors], source,
             overheads.step_ms, overheads.round_ms, overheads.round_ms_raw, [round(c.total_ms, 2) for c in samples],
             cal.dispatch)
    return cal, rule


def _scenarios(config: BenchConfig, num_stages: int) -> list[Scenario]:
    out = []
    for name in config.scenarios:
        if name == "exact":
            out.append(Scenario("exact", make_policy("exact")))
        elif name == "all":
            out.append(Scenario("all", ScenarioPolicy.all_accepted(num_stages)))
        else:
            out.append(Scenario("profile", ScenarioPolicy(stage_probabilities=tuple(config.acceptance_profile),
                                                          per_sample=config.per_sample_acceptance)))
    return out


def run_bench(config: BenchConfig, command: str = "",
              on_progress: Callable[[BenchReport], None] | None = None) -> BenchReport:
    """Time every configured pair, batch, method and scenario; ``on_progress`` sees the partial report."""
    if not torch.cuda.is_available():
        raise RuntimeError("the benchmark needs CUDA")
    device = torch.device("cuda")
    torch.backends.cudnn.benchmark = config.cudnn_benchmark
    env = describe_environment(device, command)
    log.info("GPU %s, driver %s, torch %s", env.gpu, env.driver, env.torch)
    ceilings = measure_ceilings(device)
    log.info("ceilings: HBM %.2f TB/s, bf16 %.0f TFLOP/s", ceilings.hbm_bytes_per_s / 1e12, ceilings.bf16_flops_per_s / 1e12)
    rows: list[BenchRow] = []
    decode: list[DecodeTiming] = []
    calibrations: list[AdaptiveCalibration] = []
    methods = [METHODS[m] for m in METHODS if m in config.methods]  # canonical order (runs released least)

    def progress() -> None:
        if on_progress is not None:
            partial = BenchReport(environment=env, ceilings=ceilings, decode=decode, rows=list(rows), config=config,
                                  calibrations=list(calibrations))
            add_speedups(partial.rows)
            on_progress(partial)

    for draft_depth, target_depth in config.pairs:
        t0 = time.perf_counter()
        pair = build_pair_bf16(draft_depth, target_depth, device)
        factory = FastRunFactory(FastConfig(use_cuda_graphs=config.use_cuda_graphs))
        ctx = _PairContext(
            name=f"d{draft_depth}->d{target_depth}", pair=pair, sd=SDVAR(pair.draft, pair.target, run_factory=factory),
            factory=factory, specs={id(m): VarSpec.from_model(m) for m in (pair.draft, pair.target)},
            decoder=None,
        )
        log.info("built %s in %.1f s", pair.description, time.perf_counter() - t0)
        scenarios = _scenarios(config, pair.target.num_stages)
        for B in config.batches:
            # the eager baseline first, before any graph of this batch size holds memory
            for method in (m for m in methods if m.kind == "eager"):
                rows.append(bench_method(ctx, method, None, B, config, ceilings))
            ctx.decoder = GraphedDecode(pair.vae) if config.graph_decode else None
            decode_timing = next((d for d in decode if d.batch == B), None)  # the VQVAE is the same for every pair
            if decode_timing is None:
                decode_timing = measure_decode(pair.target, B, graphed=ctx.decoder)
                decode.append(decode_timing)
            decode_ms = decode_timing.graphed_ms if decode_timing.graphed_ms is not None else decode_timing.eager_ms
            batch_cal: BatchCalibration | None = None
            for method in (m for m in methods if m.kind != "eager"):
                for scenario in scenarios if method.kind == "sdvar" else [None]:
                    cal, rule = None, None
                    if method.gamma == "calibrated":
                        try:
                            _prepare_runs(ctx, method, B)
                            if batch_cal is None:
                                batch_cal = calibrate_batch(ctx, B, config, decode_ms)
                            cal, rule = calibrate_scenario(ctx, B, scenario, config, batch_cal)
                        except Exception:  # one failed calibration must not cost the other rows
                            log.exception("%s B=%d: calibration of %s failed; row skipped", ctx.name, B, method.name)
                            continue
                    row = bench_method(ctx, method, scenario, B, config, ceilings, gamma=rule)
                    rows.append(row)
                    if cal is not None:
                        cal.gamma_per_round = row.gamma_per_round
                        calibrations.append(cal)
                    progress()
            factory.release()
            ctx.decoder = None
            progress()
        del ctx, pair, factory
        gc.collect()
        torch.cuda.empty_cache()
    add_speedups(rows)
    return BenchReport(environment=env, ceilings=ceilings, decode=decode, rows=rows, config=config,
                       calibrations=calibrations)


# ---- where a pass spends its time ----------------------------------------------------------------
@dataclass
class KernelTime:
    name: str
    total_us: float
    count: int


@dataclass
class PassProfile:
    """One fast-path pass: graph replay time vs its bound, and the GPU kernels it runs (profiled eagerly)."""

    depth: int
    batch: int
    stage: int
    tokens: int
    replay_ms: float
    bound_ms: float
    kernel_sum_ms: float
    kernels: int
    top: list[KernelTime]


@torch.no_grad()
def profile_pass(model: VAR, batch: int, stage: int, ceilings: Ceilings, top: int = 12) -> PassProfile:
    """Time the CUDA-graph replay of the single-stage pass ``stage`` and list its kernels (torch.profiler)."""
    run = FastRun(model, batch, FastConfig(use_cuda_graphs=True))
    run.begin(torch.zeros(batch, dtype=torch.long, device=model.device))
    position, length = chunk_span(model, stage, 1)
    run.precapture([(stage, 1)])
    rec = PassRecord(position, length, graphed=True)
    replay_ms = _median_event_ms(lambda: run.replay_passes([rec]), 20)
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        run._step(position, length)
        torch.cuda.synchronize()
    by_name: dict[str, KernelTime] = {}
    n = 0
    for ev in prof.events():
        if ev.device_type != torch.autograd.DeviceType.CUDA:
            continue
        n += 1
        k = by_name.setdefault(ev.name[:90], KernelTime(ev.name[:90], 0.0, 0))
        k.total_us += ev.time_range.elapsed_us()
        k.count += 1
    kernels = sorted(by_name.values(), key=lambda k: -k.total_us)
    spec = VarSpec.from_model(model)
    return PassProfile(
        depth=model.depth, batch=batch, stage=stage, tokens=length, replay_ms=replay_ms,
        bound_ms=pass_bound_s(spec, 2 * batch, position, length, ceilings) * 1e3,
        kernel_sum_ms=sum(k.total_us for k in kernels) / 1e3, kernels=n, top=kernels[:top],
    )


def format_profiles(profiles: Sequence[PassProfile]) -> str:
    lines = []
    for p in profiles:
        lines += [
            f"d{p.depth} batch {p.batch} stage {p.stage} ({p.tokens} tokens): graph replay {p.replay_ms:.3f} ms, bound "
            f"{p.bound_ms:.3f} ms, {p.kernels} kernels summing to {p.kernel_sum_ms:.3f} ms",
            "| kernel | total µs | count |", "|---|---|---|",
        ]
        lines += [f"| `{k.name}` | {k.total_us:.1f} | {k.count} |" for k in p.top]
        lines.append("")
    return "\n".join(lines)


# ---- command line -------------------------------------------------------------------------------
def _int_list(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected comma-separated ints, got {text!r}") from exc


def _float_list(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from exc


def _pairs(text: str) -> tuple[tuple[int, int], ...]:
    try:
        return tuple((int(a), int(b)) for a, b in (p.split(":") for p in text.split(",") if p.strip()))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected draft:target depth pairs like 16:30,16:24, got {text!r}") from exc


def _str_list(text: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in text.split(",") if v.strip())


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m sdvar_lib.bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--pairs", type=_pairs, default=((16, 30), (16, 24)), help="draft:target depths (default 16:30,16:24)")
    p.add_argument("--batches", type=_int_list, default=(1, 8, 32), help="batch sizes (default 1,8,32)")
    p.add_argument("--methods", type=_str_list, default=tuple(METHODS),
                   help=f"comma-separated subset of {','.join(METHODS)} (default all)")
    p.add_argument("--scenarios", type=_str_list, default=None,
                   help="SDVAR acceptance: exact (real policy), all (every proposal accepted), profile "
                        "(default exact,all plus profile when --acceptance-profile is given)")
    p.add_argument("--acceptance-profile", type=_float_list, default=None,
                   help="per-stage probability that a proposed stage is accepted, e.g. 1,1,1,0.9,0.8,...")
    p.add_argument("--acceptance-per-sample", action="store_true",
                   help="draw the scenario acceptance per sample instead of once per stage for the batch")
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--passes-only-repeats", type=int, default=5, help="0 disables the transformer-only replay timing")
    p.add_argument("--calibration-calls", type=int, default=2,
                   help="sdvar_adaptive_cal: target-alone calls per batch and SDVAR calls per scenario measured before "
                        "timing (default 2)")
    p.add_argument("--calibration-replays", type=int, default=3,
                   help="sdvar_adaptive_cal: timed graph replays per chunk (median; default 3)")
    p.add_argument("--top-k", type=int, default=900)
    p.add_argument("--top-p", type=float, default=0.96)
    p.add_argument("--cfg", type=float, default=1.5)
    p.add_argument("--no-cuda-graphs", action="store_true", help="fast path without graphs (diagnostics)")
    p.add_argument("--no-graph-decode", action="store_true", help="fast-path rows decode eagerly too")
    p.add_argument("--no-cudnn-benchmark", action="store_true", help="leave torch.backends.cudnn.benchmark off")
    p.add_argument("--out", default="bench_out", help="folder for bench.json and bench.md")
    p.add_argument("--profile-stages", type=_int_list, default=(),
                   help="after the bench, profile the single-stage passes of these stages of each pair's target "
                        "(graph replay time and kernel breakdown) at every batch size; written to profile.md")
    return p


def config_from_args(args: argparse.Namespace) -> BenchConfig:
    scenarios = args.scenarios
    if scenarios is None:
        scenarios = ("exact", "all") + (("profile",) if args.acceptance_profile is not None else ())
    return BenchConfig(
        pairs=args.pairs, batches=args.batches, methods=args.methods, scenarios=scenarios,
        acceptance_profile=args.acceptance_profile, per_sample_acceptance=args.acceptance_per_sample,
        repeats=args.repeats, warmup=args.warmup, passes_only_repeats=args.passes_only_repeats,
        calibration_calls=args.calibration_calls, calibration_replays=args.calibration_replays, top_k=args.top_k,
        top_p=args.top_p, cfg=args.cfg, use_cuda_graphs=not args.no_cuda_graphs,
        graph_decode=not args.no_graph_decode, cudnn_benchmark=not args.no_cudnn_benchmark, out=args.out,
    )


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    try:
        config = config_from_args(args)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not torch.cuda.is_available():
        print("error: python -m sdvar_lib.bench needs a CUDA GPU (torch.cuda.is_available() is False); "
              "the official-size benchmark cannot run on the CPU", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    command = "python -m sdvar_lib.bench " + shlex.join(argv)
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)

    def write(report: BenchReport) -> str:
        (out / "bench.json").write_text(report_to_json(report))
        table = format_markdown(report)
        (out / "bench.md").write_text(table + "\n")
        return table

    report = run_bench(config, command, on_progress=write)
    table = write(report)
    if args.profile_stages:
        profiles = []
        device = torch.device("cuda")
        for _, target_depth in config.pairs:
            target = build_var(build_vae(device), target_depth, device).to(torch.bfloat16).eval()
            for B in config.batches:
                for stage in args.profile_stages:
                    profiles.append(profile_pass(target, B, stage, report.ceilings))
            del target
            torch.cuda.empty_cache()
        text = format_profiles(profiles)
        (out / "profile.md").write_text(text + "\n")
        (out / "profile.json").write_text(json.dumps([asdict(p) for p in profiles], indent=1))
        print(text)
    print(table)
    if report.calibrations:
        print("calibrated priors and gamma per round of one timed call:")
        for c in report.calibrations:
            print(f"  {c.pair} B={c.batch} {c.scenario}: priors [{_fmt_list(c.priors, 3)}] ({c.prior_source}); "
                  f"step {c.step_overhead_ms:.3f} ms, round {c.round_overhead_ms:.3f} ms; runs as {c.dispatch}; "
                  f"gamma/round {c.gamma_per_round}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
