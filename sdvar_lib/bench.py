"""GPU benchmark of the decoders at the official sizes: ``python -m sdvar_lib.bench``.

Official-size draft/target pairs with random bf16 weights are timed on the fast path
(:mod:`sdvar_lib.fast`) against the library's eager loop under bf16 autocast (the reference's
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

from sdvar_lib.acceptance import AcceptancePolicy, StageVerdict, make_policy
from sdvar_lib.checkpoints import OFFICIAL_PATCH_NUMS, ModelPair, build_vae, build_var, official_var_kwargs
from sdvar_lib.decoding import fhat_to_unit_images
from sdvar_lib.fast import FastConfig, FastRun, FastRunFactory, GraphedDecode, PassRecord, chunk_span, stage_chunks
from sdvar_lib.sampling import sample_from_probs
from sdvar_lib.sdvar import SDVAR, SDVAROutput
from sdvar_lib.var import VAR

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
    """A decoder to time. ``kind``: eager, target, draft, sdvar, test3 or code."""

    name: str
    kind: str
    gamma: int | str | None = None
    entry_num: int | None = None

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
            return stage_chunks(S, (4 if self.gamma == "adaptive" else int(self.gamma)) + 1)
        if self.kind == "test3":
            return [(0, self.entry_num + 1)] + [(s, 1) for s in range(self.entry_num + 1, S)]
        if self.kind == "code":
            return [(s, 1) for s in range(self.entry_num)]
        return []

    def draft_chunks(self, S: int) -> list[tuple[int, int]]:
        if self.kind == "draft":
            return stage_chunks(S, 1)
        if self.kind == "sdvar":
            return stage_chunks(S, 2)
        if self.kind == "test3":
            return [(s, 1) for s in range(self.entry_num)]
        if self.kind == "code":
            return [(0, self.entry_num + 1)] + [(s, 1) for s in range(self.entry_num + 1, S)]
        return []


METHODS: dict[str, MethodSpec] = {
    m.name: m
    for m in (
        MethodSpec("eager_target", "eager"),
        MethodSpec("draft", "draft"),
        MethodSpec("target", "target"),
        *(MethodSpec(f"sdvar_g{g}", "sdvar", gamma=g) for g in (1, 2, 3, 4)),
        MethodSpec("sdvar_adaptive", "sdvar", gamma="adaptive"),
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


@dataclass
class DecodeTiming:
    """VQVAE decode alone (bf16 autocast): eager, and replayed as a CUDA graph (what fast-path rows use)."""

    batch: int
    eager_ms: float
    graphed_ms: float | None = None


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
                 config: BenchConfig) -> Callable[[int], object]:
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
    return lambda seed: sd.generate_parallel(B, None, g_seed=seed, gamma=method.gamma, policy=scenario.policy, **kw)


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
                 ceilings: Ceilings) -> BenchRow:
    _prepare_runs(ctx, method, B)
    call = _method_call(ctx, method, scenario, B, config)

    graphed_decode = ctx.decoder is not None and method.kind != "eager"

    def timed(seed: int) -> object:
        with contextlib.ExitStack() as stack:
            if graphed_decode:
                stack.enter_context(ctx.decoder.installed())
            stack.enter_context(torch.autocast("cuda", dtype=torch.bfloat16))
            return call(seed)

    for i in range(config.warmup):
        timed(10_000 + i)
    torch.cuda.synchronize()
    captures_before = sum(r.counters.captures for r in ctx.factory.runs())
    torch.cuda.reset_peak_memory_stats()
    times, t_passes, d_passes, bounds, acceptance = [], [], [], [], []
    last_passes: list = []
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
    )
    log.info("%s B=%d %-15s %-26s %8.2f ms (p10 %.2f, p90 %.2f)  bound %.2f ms  x%.2f  T%g D%g  %.1f GiB%s",
             ctx.name, B, method.name, row.scenario, median, row.latency_ms_p10, row.latency_ms_p90, bound,
             row.ratio_to_bound, row.target_passes, row.draft_passes, peak,
             f"  passes-only {passes_only:.2f} ms" if passes_only is not None else "")
    return row


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
    methods = [METHODS[m] for m in METHODS if m in config.methods]  # canonical order (runs released least)
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
            if all(d.batch != B for d in decode):
                decode.append(measure_decode(pair.target, B, graphed=ctx.decoder))
            for method in (m for m in methods if m.kind != "eager"):
                for scenario in scenarios if method.kind == "sdvar" else [None]:
                    rows.append(bench_method(ctx, method, scenario, B, config, ceilings))
            factory.release()
            ctx.decoder = None
            if on_progress is not None:
                partial = BenchReport(environment=env, ceilings=ceilings, decode=decode, rows=list(rows), config=config)
                add_speedups(partial.rows)
                on_progress(partial)
        del ctx, pair, factory
        gc.collect()
        torch.cuda.empty_cache()
    add_speedups(rows)
    return BenchReport(environment=env, ceilings=ceilings, decode=decode, rows=rows, config=config)


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
        repeats=args.repeats, warmup=args.warmup, passes_only_repeats=args.passes_only_repeats, top_k=args.top_k,
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
