"""The rows the benchmark times, and how one call of each runs on a draft/target pair.

A row is a registry :class:`~sdvar_lib.sdvar.registry.Method` (``target``, ``draft``, ``exact_g2``,
``exact_adaptive``, ``test3_e5``, ``code_e6``, ... : any name :func:`get_method` knows), run through
:meth:`Method.run` and precaptured with :meth:`Method.chunks`, or one of three bench-only rows
(:data:`BENCH_ONLY_ROWS`):

- ``eager_target``: the target's reference loop (:meth:`VAR.generate`) without the fast path, under
  bf16 autocast: the baseline every speed-up is measured against;
- ``target_v1``: the target alone on the first version of the fast path
  (:meth:`~sdvar_lib.fast.config.FastConfig.first_version`: PyTorch block kernels and sampling, a
  float32 head, stages step by step) with the reference VQVAE decode under bf16 autocast, graphed:
  what the fused path gained over it (the run gives it its own run factory and decode);
- ``exact_calibrated``: exact SDVAR with an :class:`AdaptiveGamma` built right before the row from pass
  costs, overheads and acceptance measured on the same GPU, batch and scenario
  (:mod:`sdvar_lib.bench.calibration`).

An SDVAR row runs under each acceptance scenario (:meth:`Scenario.apply`). Stored reports of the
first runs used older names (``sdvar_g2``, ``sdvar_adaptive_cal``, ...); :func:`bench_row` accepts them.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch

from sdvar_lib.bench.bounds import VarSpec, sequential_passes
from sdvar_lib.bench.scenarios import Scenario
from sdvar_lib.fast.config import PassRecord
from sdvar_lib.fast.factory import FastRunFactory
from sdvar_lib.fast.graphs import GraphedDecode
from sdvar_lib.fast.round import round_keys, rule_gammas
from sdvar_lib.models.presets import ModelPair, build_vae, build_var
from sdvar_lib.models.sampling import SamplingConfig
from sdvar_lib.sdvar.acceptance import ExactPolicy
from sdvar_lib.sdvar.decoder import SDVAR
from sdvar_lib.sdvar.gamma import AdaptiveGamma, GammaRule
from sdvar_lib.sdvar.registry import Method, get_method
from sdvar_lib.viz.latency import canonical_method_name

log = logging.getLogger(__name__)

__all__ = [
    "EAGER_TARGET",
    "TARGET_V1",
    "CALIBRATED",
    "BenchMethod",
    "BENCH_ONLY_ROWS",
    "DEFAULT_METHODS",
    "bench_row",
    "run_order",
    "PairContext",
    "build_pair_bf16",
    "method_call",
    "in_call_context",
    "prepare_runs",
    "prepare_rounds",
    "prepare_pricing",
    "call_passes",
]

EAGER_TARGET = "eager_target"
TARGET_V1 = "target_v1"
CALIBRATED = "exact_calibrated"


@dataclass(frozen=True)
class BenchMethod:
    """One row of the benchmark: a registry ``method`` (a template for the calibrated row) or the eager loop."""

    name: str
    method: Method | None
    """``None``: the eager loop (:data:`EAGER_TARGET`)."""
    calibrated: bool = False
    """The gamma rule is built at run time (:func:`~sdvar_lib.bench.calibration.calibrate_scenario`)."""
    first_version: bool = False
    """Runs on the first version of the fast path and the reference decode (:data:`TARGET_V1`)."""

    @property
    def eager(self) -> bool:
        return self.method is None

    @property
    def sdvar(self) -> bool:
        """Runs SDVAR rounds (so it is timed once per acceptance scenario)."""
        return self.method is not None and self.method.decoder == "sdvar"

    @property
    def adaptive(self) -> bool:
        return self.sdvar and isinstance(self.method.gamma, AdaptiveGamma)

    @property
    def uses_draft(self) -> bool:
        return self.method is not None and self.method.uses_draft

    @property
    def uses_target(self) -> bool:
        return self.method is None or self.method.uses_target

    def chunks(self, num_stages: int) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
        """``(target chunks, draft chunks)`` the fast path captures before timing (none for the eager loop)."""
        return ([], []) if self.method is None else self.method.chunks(num_stages)

    def for_call(self, scenario: Scenario | None, rule: GammaRule | None = None) -> Method:
        """The registry method one call runs: the calibrated ``rule`` put in, the ``scenario`` applied."""
        if self.method is None:
            raise ValueError(f"{self.name} is the eager loop, not a registry method")
        method = self.method
        if self.calibrated:
            if rule is None:
                raise ValueError(f"{self.name} needs the calibrated gamma rule (calibrate_scenario)")
            method = method.with_gamma(rule)
        elif rule is not None:
            raise ValueError(f"{self.name} has its own gamma; only {CALIBRATED} takes a calibrated rule")
        if method.decoder == "sdvar":
            if scenario is None:
                raise ValueError(f"SDVAR row {self.name} needs an acceptance scenario")
            method = scenario.apply(method)
        return method


BENCH_ONLY_ROWS: dict[str, BenchMethod] = {
    EAGER_TARGET: BenchMethod(EAGER_TARGET, None),
    # the template's AdaptiveGamma sets the chunks to capture: verify chunks of up to max_gamma + 1
    # stages and every draft catch-up chunk (the calibrated rule prices and may use all of them)
    CALIBRATED: BenchMethod(CALIBRATED, Method(CALIBRATED, "sdvar", policy=ExactPolicy(), gamma=AdaptiveGamma(),
                                               notes="gamma rule calibrated on the GPU before the row"),
                            calibrated=True),
    TARGET_V1: BenchMethod(TARGET_V1, get_method("target"), first_version=True),
}
"""The rows that are no registry method."""

DEFAULT_METHODS: tuple[str, ...] = (
    EAGER_TARGET, "draft", "target", "exact_g1", "exact_g2", "exact_g3", "exact_g4", "exact_adaptive", CALIBRATED,
    "test3_e5", "code_e6", "code_e8",
)
"""The rows of a default run, in the order they are timed."""


def bench_row(name: str) -> BenchMethod:
    """The row ``name``: a bench-only row, or a registry method (older names map to the current ones)."""
    if not isinstance(name, str):
        raise TypeError(f"a method name must be a string, got {name!r}")
    name = canonical_method_name(name)
    if name in BENCH_ONLY_ROWS:
        return BENCH_ONLY_ROWS[name]
    try:
        method = get_method(name)
    except ValueError as exc:
        raise ValueError(f"{exc}; bench-only rows: {', '.join(BENCH_ONLY_ROWS)}") from None
    return BenchMethod(name, method)


_RUN_ORDER = {"draft": 1, "target": 2, "sdvar": 3, "test3": 4, "code_handoff": 5}


def run_order(rows: Iterable[BenchMethod]) -> list[BenchMethod]:
    """Rows in timing order: eager, the first fast path, draft, target, SDVAR, hand-offs (each method's runs, and
    each fast path's, are released least often)."""
    return sorted(rows, key=lambda r: 0 if r.eager else 0.5 if r.first_version else _RUN_ORDER[r.method.decoder])


# ---- one pair -----------------------------------------------------------------------------------
@dataclass
class PairContext:
    """A pair under test: the models, the fast-path SDVAR and its run factory, sizes for the bound."""

    name: str
    pair: ModelPair
    sd: SDVAR
    factory: FastRunFactory
    specs: dict[int, VarSpec]
    """``id(model) -> VarSpec`` of the draft and the target."""
    decoder: GraphedDecode | None = None
    """The graphed VQVAE decode fast-path rows use (``None``: eager decode)."""
    fast_version: str = "current"
    """``"current"``: today's fast path; ``"first"``: its first version (the :data:`TARGET_V1` row's)."""

    @classmethod
    def for_pair(cls, name: str, pair: ModelPair, factory: FastRunFactory, fast_version: str = "current") -> PairContext:
        return cls(name=name, pair=pair, sd=SDVAR(pair.draft, pair.target, run_factory=factory), factory=factory,
                   specs={id(m): VarSpec.from_model(m) for m in (pair.draft, pair.target)}, fast_version=fast_version)


def build_pair_bf16(draft_depth: int, target_depth: int, device: torch.device) -> ModelPair:
    """Official-size random-weight VARs built on ``device`` and converted to bf16 (the VQVAE stays float32)."""
    vae = build_vae(device)
    models = []
    for depth in (draft_depth, target_depth):
        models.append(build_var(vae, depth, device).to(torch.bfloat16).eval())
        torch.cuda.empty_cache()
    return ModelPair(vae=vae, draft=models[0], target=models[1],
                     description=f"official-size random weights d{draft_depth} -> d{target_depth} (bf16)")


def method_call(ctx: PairContext, row: BenchMethod, scenario: Scenario | None, B: int, sampling: SamplingConfig,
                rule: GammaRule | None = None) -> Callable[[int], object]:
    """``seed -> output`` of one call of ``row`` (``rule``: the calibrated gamma rule of :data:`CALIBRATED`)."""
    if row.eager:
        return lambda seed: ctx.pair.target.generate(B, None, seed, sampling)
    method = row.for_call(scenario, rule)
    return lambda seed: method.run(ctx.sd, B, None, seed, sampling)


def in_call_context(ctx: PairContext, graphed_decode: bool, fn: Callable[[], object]) -> object:
    """Run ``fn`` as the timed calls run: graphed VQVAE decode (fast-path rows) and bf16 autocast on CUDA."""
    with contextlib.ExitStack() as stack:
        if graphed_decode and ctx.decoder is not None:
            stack.enter_context(ctx.decoder.installed())
        if ctx.pair.target.device.type == "cuda":
            stack.enter_context(torch.autocast("cuda", dtype=torch.bfloat16))
        return fn()


def prepare_runs(ctx: PairContext, row: BenchMethod, B: int, capture_chunks: bool = True) -> None:
    """Keep only the runs the row uses (peak memory is per row) and capture its chunks up front (the pass programs
    that passes-only replays and pass tables use; ``capture_chunks=False`` only creates the runs)."""
    draft, target = ctx.pair.draft, ctx.pair.target
    if row.eager:
        ctx.factory.release()
    elif not row.uses_draft:
        ctx.factory.release(draft)
    elif not row.uses_target:
        ctx.factory.release(target)
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    if row.eager:
        return
    t0 = time.perf_counter()
    target_chunks, draft_chunks = row.chunks(target.num_stages)
    if not capture_chunks:
        for model, chunks in ((target, target_chunks), (draft, draft_chunks)):
            if chunks:
                ctx.factory.run_for(model, B)
        return
    if target_chunks:
        ctx.factory.prepare(target, B, target_chunks)
    if draft_chunks:
        ctx.factory.prepare(draft, B, draft_chunks)
    log.debug("precaptured %s in %.2f s", row.name, time.perf_counter() - t0)


def prepare_rounds(ctx: PairContext, method: Method, B: int, sampling: SamplingConfig) -> int:
    """Capture the device-round programs (:mod:`sdvar_lib.fast.round`) an SDVAR ``method``'s calls use at batch ``B``
    (every start stage, the draft at most one stage behind; after :func:`prepare_runs`). Returns how many were new;
    0 for other methods, a draft that is the target, or a call that runs eager rounds."""
    if method.decoder != "sdvar" or ctx.pair.draft is ctx.pair.target:
        return 0
    S = ctx.pair.target.num_stages
    device_round = ctx.factory.device_round(ctx.factory.run_for(ctx.pair.draft, B), ctx.factory.run_for(ctx.pair.target, B))
    t0 = time.perf_counter()
    new = device_round.precapture(sampling, method.policy, round_keys(rule_gammas(method.gamma), S))
    log.debug("precaptured %d round programs of %s in %.2f s", new, method.name, time.perf_counter() - t0)
    return new


def prepare_pricing(ctx: PairContext, method: Method, B: int, sampling: SamplingConfig) -> GammaRule:
    """Let the fast path price ``method``'s gamma rule at batch ``B`` before its calls are timed (the first call of an
    adaptive rule with :class:`~sdvar_lib.sdvar.gamma.RunCost` would otherwise time its programs inside a timed call:
    :meth:`FastRunFactory.price_rule <sdvar_lib.fast.factory.FastRunFactory.price_rule>`). Returns the priced rule
    (the rule itself for any other rule, decoder or run factory)."""
    rule = method.gamma
    if method.decoder != "sdvar" or ctx.pair.draft is ctx.pair.target or not isinstance(rule, GammaRule):
        return rule
    return ctx.factory.price_rule(rule, ctx.pair.draft, ctx.pair.target, B, sampling, method.policy)


def call_passes(ctx: PairContext, row: BenchMethod) -> list[tuple[VarSpec, list[PassRecord]]]:
    """The passes the latest call made, per model (the eager loop: one pass per stage of the target)."""
    if row.eager:
        spec = ctx.specs[id(ctx.pair.target)]
        return [(spec, sequential_passes(spec))]
    return [(ctx.specs[id(run.model)], list(run.pass_log)) for run in ctx.factory.call_runs()]
