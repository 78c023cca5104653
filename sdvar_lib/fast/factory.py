"""The run factory of the fast path: reusable :class:`~sdvar_lib.fast.run.FastRun` objects per model and batch."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import replace

import torch

from sdvar_lib.fast.config import FastConfig
from sdvar_lib.fast.round import DeviceRound
from sdvar_lib.fast.run import FastRun
from sdvar_lib.fast.sampling import FusedSampler, resolve_sampler
from sdvar_lib.models.sampling import SamplingConfig
from sdvar_lib.models.var import VAR
from sdvar_lib.sdvar.acceptance import AcceptancePolicy
from sdvar_lib.sdvar.decoder import SDVAR
from sdvar_lib.sdvar.gamma import AdaptiveGamma, GammaRule, ProgramCost, RunCost
from sdvar_lib.sdvar.state import SDVARInferenceState
from sdvar_lib.util.progress import progress_log

log = logging.getLogger(__name__)

__all__ = ["FastRunFactory", "make_fast_sdvar", "one_off_seconds"]


def _triton_cache_dir() -> str:
    return os.environ.get("TRITON_CACHE_DIR", os.path.join(os.path.expanduser("~"), ".triton", "cache"))


def one_off_seconds(runs: Iterable[FastRun], decodes: Iterable = ()) -> float:
    """One-off seconds of fast runs (kernel checks and compiles, graph captures) and graphed decodes (captures)."""
    return (sum(run.counters.capture_time_s + run.counters.setup_time_s for run in runs)
            + sum(decode.capture_time_s for decode in decodes))


class FastRunFactory:
    """``run_factory`` for :class:`~sdvar_lib.sdvar.decoder.SDVAR`: hands out reusable :class:`FastRun` objects.

    Runs are kept per ``(model, batch size)``. One generation call asks for each of its runs with
    the same label tensor, so a request with a new label tensor starts a new call and frees every
    run again; within a call a model asked for twice (draft == target) gets a second run. A run
    is reset (cache emptied, condition copied) whenever it is handed out, so nothing leaks from a
    call into the next, also after an exception.
    """

    def __init__(self, config: FastConfig | None = None) -> None:
        if config is not None and not isinstance(config, FastConfig):
            raise TypeError(f"config must be a FastConfig, got {type(config).__name__}")
        self.config = config or FastConfig()
        self._runs: dict[tuple[int, int], list[FastRun]] = {}
        self._call_labels: torch.Tensor | None = None
        self._claimed: list[FastRun] = []
        self._released_one_off_s = 0.0
        self._rounds: dict[tuple[int, int], DeviceRound] = {}
        self._prices: dict[tuple, tuple[DeviceRound, ProgramCost | None]] = {}
        self._pricing_s = 0.0
        self._priced_rules: dict[tuple, AdaptiveGamma] = {}
        self._prepared_sampling: set[tuple[bool, bool, bool]] = set()
        self._prepared_models: set[tuple[int, torch.dtype]] = set()
        self._compile_threads = self.config.compile_threads  # asked once: os.cpu_count() takes ~9 µs
        self._prepare_s = 0.0
        self.precompiled = 0
        """Triton specialisations :meth:`prepare_call` built ahead so far (compiled, or loaded from Triton's disk
        cache)."""

    def __call__(self, model: VAR, label_B: torch.Tensor) -> FastRun:
        if not isinstance(model, VAR):
            raise TypeError(f"run_factory needs an sdvar_lib.models.VAR, got {type(model).__name__}")
        if not isinstance(label_B, torch.Tensor) or label_B.ndim != 1 or label_B.dtype.is_floating_point:
            raise TypeError("label_B must be a 1-D integer tensor of class labels")
        if label_B is not self._call_labels:
            self._call_labels = label_B
            self._claimed = []
        claimed = {id(r) for r in self._claimed}
        run = next((r for r in self._runs_for(model, label_B.numel()) if id(r) not in claimed), None)
        if run is None:
            run = self._new_run(model, label_B.numel())
        self._claimed.append(run)
        run.begin(label_B)
        return run

    def _runs_for(self, model: VAR, batch_size: int) -> list[FastRun]:
        key = (id(model), batch_size)
        runs, stale = [], []
        for r in self._runs.get(key, []):
            (runs if r.model is model and r.is_current() else stale).append(r)
        self._released_one_off_s += one_off_seconds(stale)
        self._runs[key] = runs
        return runs

    def _new_run(self, model: VAR, batch_size: int) -> FastRun:
        if not any(b == batch_size and runs for (_, b), runs in self._runs.items()):
            progress_log.info(
                "fast path, first call at batch %d: compiling kernels (several at a time) and capturing one CUDA graph per "
                "pass shape as each is first used (5-10 s on a fresh machine, about 3 s once Triton's on-disk kernel "
                "cache in %s holds the kernels); later calls replay them", batch_size, _triton_cache_dir())
        run = FastRun(model, batch_size, self.config)
        self._runs.setdefault((id(model), batch_size), []).append(run)
        log.debug("new fast run: %r", run)
        return run

    def prepare_call(self, models: Sequence[VAR], batch_size: int, sampling: SamplingConfig) -> None:
        """Before a call's first pass (:meth:`SDVAR.start_call <sdvar_lib.sdvar.decoder.SDVAR.start_call>` asks):
        compile, in one go and several at a time, the Triton kernels the call will meet for the first time - the
        block kernels of ``models`` not prepared yet in their dtype, the sampler's for ``sampling``'s filters
        (:mod:`sdvar_lib.fast.kernels.precompile`) - so that a first call waits for its slowest compile rather than
        for them all, one after another. Later calls find nothing new and return at once (``batch_size`` does not
        change what is compiled)."""
        threads = self._compile_threads
        if not threads:
            return
        flags = (sampling.top_k > 0, sampling.top_p > 0, sampling.more_smooth)
        # compiled kernels stay with the process: a model is prepared once per dtype, whatever the batch
        new = [m for m in dict.fromkeys(models) if (id(m), m.pos_1LC.dtype) not in self._prepared_models]
        if not new and flags in self._prepared_sampling:
            return
        t0 = time.perf_counter()
        warmups = [w for m in new for w in FastRun.kernel_warmups(m, self.config)]
        self._prepared_models.update((id(m), m.pos_1LC.dtype) for m in new)
        cuda_models = [m for m in models if m.device.type == "cuda"]
        if flags not in self._prepared_sampling and cuda_models and not sampling.more_smooth:
            if resolve_sampler(self.config.sampler, cuda_models[0].device) == "fused":
                warmups += FusedSampler(cuda_models[0]).warmups(sampling)
        self._prepared_sampling.add(flags)
        if warmups:
            from sdvar_lib.fast.kernels.precompile import compile_ahead

            report = compile_ahead(warmups, threads)
            self.precompiled += report.built
            self._prepare_s += time.perf_counter() - t0
            log.debug("prepared a call at batch %d: %d Triton specialisations built in %.2f s", batch_size,
                      report.built, report.seconds)

    def run_for(self, model: VAR, batch_size: int) -> FastRun:
        """The first run of ``(model, batch_size)``, created if needed (for precapture and diagnostics)."""
        runs = self._runs_for(model, batch_size)
        return runs[0] if runs else self._new_run(model, batch_size)

    def prepare(self, model: VAR, batch_size: int, chunks: Iterable[tuple[int, int]]) -> FastRun:
        """Capture the programs of ``(start stage, number of stages)`` chunks before timing."""
        run = self.run_for(model, batch_size)
        run.precapture(chunks)
        return run

    def round_runner(self, state: SDVARInferenceState) -> DeviceRound | None:
        """The device rounds of a fresh SDVAR call on two of this factory's runs (:mod:`sdvar_lib.fast.round`), or
        ``None`` where the call runs the eager round (the reason is logged at debug level)."""
        draft, target = state.draft, state.target
        if not isinstance(draft, FastRun) or not isinstance(target, FastRun) or draft is target:
            return None
        device_round = self.device_round(draft, target)
        problem = device_round.unsupported(state)
        if problem is not None:
            log.debug("eager SDVAR rounds: %s", problem)
            return None
        return device_round

    def price_rule(self, rule: GammaRule, draft: VAR, target: VAR, batch_size: int, sampling: SamplingConfig,
                   policy: AcceptancePolicy) -> GammaRule:
        """``rule`` priced for this machine: an :class:`~sdvar_lib.sdvar.gamma.AdaptiveGamma` whose costs are
        :class:`~sdvar_lib.sdvar.gamma.RunCost` gets the measured times of the fast path's own programs
        (:meth:`DeviceRound.price <sdvar_lib.fast.round.DeviceRound.price>`) and, unless it has its own, the loss
        bound of its ``RunCost`` (``max_loss``, 1.5 % of the call's target steps by default); any other rule, and a
        call that does not run as device rounds, is returned as it is.

        :class:`~sdvar_lib.sdvar.decoder.SDVAR` asks before every call. The times are measured on the first call
        per (pair, batch size, sampling, policy) - a one-off, counted in :attr:`one_off_s` - and kept: later
        calls decide with the same table (:meth:`program_costs`), so they draft the same way for the same seed.
        """
        if not isinstance(rule, AdaptiveGamma) or not isinstance(rule.costs, RunCost) or draft is target:
            return rule
        max_loss = rule.costs.max_loss if rule.max_loss is None else rule.max_loss
        costs = self.program_costs(draft, target, batch_size, sampling, policy, rule.max_gamma, max_loss)
        if costs is None:
            return rule
        key = (id(costs), rule.max_gamma, rule.prior_acceptance, rule.prior_weight, max_loss)
        kept = self._priced_rules.get(key)
        if kept is None or kept.costs is not costs:  # one priced rule per rule and prices: its plan is kept too
            kept = replace(rule, costs=costs, max_loss=max_loss)
            self._priced_rules[key] = kept
        return kept

    def program_costs(self, draft: VAR, target: VAR, batch_size: int, sampling: SamplingConfig,
                      policy: AcceptancePolicy, max_gamma: int, max_loss: float | None = None) -> ProgramCost | None:
        """The measured program times :meth:`price_rule` prices with (measured on first use, then kept), or
        ``None`` where such calls do not run as device rounds. With ``max_loss`` the table may stop at the
        gamma-1 rounds when no round can be within that loss bound (:meth:`DeviceRound.price
        <sdvar_lib.fast.round.DeviceRound.price>`)."""
        draft_run, target_run = self.run_for(draft, batch_size), self.run_for(target, batch_size)
        device_round = self.device_round(draft_run, target_run)
        key = (id(draft_run), id(target_run), sampling.cfg, sampling.top_k, sampling.top_p, sampling.more_smooth,
               policy.describe(), max_gamma, max_loss)
        kept = self._prices.get(key)
        if kept is not None and kept[0] is device_round:
            return kept[1]
        t0, built0 = time.perf_counter(), one_off_seconds(self.runs())
        labels = torch.zeros(batch_size, dtype=torch.long, device=target.device)
        draft_run.begin(labels)
        target_run.begin(labels)
        costs = device_round.price(sampling, policy, max_gamma, max_loss)
        built = one_off_seconds(self.runs()) - built0  # compiles and captures: the runs count them already
        self._pricing_s += max(time.perf_counter() - t0 - built, 0.0)
        self._prices[key] = (device_round, costs)
        if costs is not None:
            progress_log.info("fast path, batch %d: priced the adaptive rule's programs in %.1f s (target steps %.2f ms "
                              "in all; round from stage 0, gamma 1: %.2f ms)", batch_size, time.perf_counter() - t0,
                              sum(costs.step_times), costs.round(0, 0, 1, target.num_stages))
        return costs

    def device_round(self, draft: FastRun, target: FastRun) -> DeviceRound:
        """The :class:`~sdvar_lib.fast.round.DeviceRound` of two runs (kept as long as both runs are)."""
        key = (id(draft), id(target))
        device_round = self._rounds.get(key)
        if device_round is None or device_round.draft is not draft or device_round.target is not target:
            kept = {id(r) for r in self.runs()}  # rounds (and their prices) of dropped runs go with them
            self._rounds = {k: v for k, v in self._rounds.items() if k[0] in kept and k[1] in kept}
            self._prices = {k: v for k, v in self._prices.items() if k[0] in kept and k[1] in kept}
            self._priced_rules = {}
            device_round = DeviceRound(draft, target)
            self._rounds[key] = device_round
        return device_round

    def call_runs(self) -> list[FastRun]:
        """The runs handed out for the latest call, in order."""
        return list(self._claimed)

    def runs(self) -> list[FastRun]:
        return [r for runs in self._runs.values() for r in runs]

    @property
    def one_off_s(self) -> float:
        """Seconds every run built so far spent on one-off work (kernel checks and compiles, graph captures), the
        kernels compiled ahead for calls (:meth:`prepare_call`) and the timing of programs for adaptive rules
        (:meth:`price_rule`)."""
        return self._released_one_off_s + self._pricing_s + self._prepare_s + one_off_seconds(self.runs())

    def release(self, model: VAR | None = None) -> None:
        """Drop the runs (caches, buffers, graphs) of ``model``, or of every model."""
        for key in list(self._runs):
            if model is None or key[0] == id(model):
                self._released_one_off_s += one_off_seconds(self._runs.pop(key))
        kept = {id(r) for r in self.runs()}
        self._rounds = {k: v for k, v in self._rounds.items() if k[0] in kept and k[1] in kept}
        self._prices = {k: v for k, v in self._prices.items() if k[0] in kept and k[1] in kept}
        self._priced_rules = {}
        self._claimed = [r for r in self._claimed if model is not None and r.model is not model]
        if model is None:
            self._call_labels = None


def make_fast_sdvar(draft: VAR, target: VAR, config: FastConfig | None = None) -> SDVAR:
    """``SDVAR(draft, target)`` on the fast path (models are used in their current dtype)."""
    return SDVAR(draft, target, run_factory=FastRunFactory(config))
