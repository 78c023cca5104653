"""Options and records of the fast path: :class:`FastConfig`, the passes a run made, its counters."""

from __future__ import annotations

import os
from dataclasses import dataclass

from sdvar_lib.fast.fused import CHUNK_ATTENTIONS, HEADS, STAGE_ATTENTIONS
from sdvar_lib.fast.kernels import BACKENDS
from sdvar_lib.fast.sampling import SAMPLERS
from sdvar_lib.util.checks import check_bool, check_choice, check_int

__all__ = ["FastConfig", "PassRecord", "FastRunCounters", "MAX_COMPILE_WORKERS"]

MAX_COMPILE_WORKERS = 4
"""Most threads ``FastConfig(compile_workers=None)`` compiles with: compiles share Python's lock in part (on one H200
machine's 16 cores, 12-02: 8 specialisations in 2.4 s one after another, 1.0 s in 2 or 4 threads)."""


@dataclass(frozen=True)
class FastConfig:
    """Options of the fast path.

    ``use_cuda_graphs``: ``None`` captures graphs when the model is on CUDA and runs eagerly
    otherwise; ``True`` requires CUDA. ``capture_warmup``: eager passes on a side stream before a
    capture (lazy CUDA/cuBLAS initialisation stays out of the graph). ``fallback_to_eager``: a
    chunk whose capture fails runs eagerly (with a warning) instead of raising. ``fused``: the
    pass of :class:`~sdvar_lib.fast.fused.FusedPass` (AdaLN modulations computed once per call, fewer and fused
    kernels per block); ``False`` runs :meth:`sdvar_lib.models.var.VAR.forward_cached` itself.
    ``kernels``: the fused pass's block steps — ``"triton"`` (Triton kernels, 7-8 kernels per block),
    ``"torch"`` (PyTorch kernels, 18 per block) or ``"auto"`` (Triton on a GPU where it runs and
    passes a check against PyTorch at the run's start, else PyTorch); with Triton's block kernels on a GPU the
    ``f_hat`` update's bicubic upsampling is a Triton kernel too, where it matches PyTorch's bit for bit
    (:mod:`sdvar_lib.fast.upsample`). ``sampler``: a stage's
    sampling — ``"fused"`` (one Triton kernel after PyTorch's noise draw, same random stream:
    :mod:`sdvar_lib.fast.sampling`), ``"torch"`` or ``"auto"`` (fused where Triton runs on a GPU, at every stage
    size: 4-6x faster than PyTorch's kernels from 1 to 8192 token rows, one H200, 12-02).
    ``head``: the fused pass's head product — ``"float32"`` (float32 copies of the weights),
    ``"half"`` (the bf16/fp16 weights, float32 accumulation and logits) or ``"auto"`` (half for
    half-precision models on a GPU where it runs, float32 otherwise). ``whole_stage``: a stage read
    on its own (no catch-up chunk) runs as one program — input, pass, draw, codebook lookup and
    ``f_hat`` update (:meth:`FastRun.decode_stage`), and the stages a model decodes in a row run as
    one program (:meth:`FastRun.decode_stages`); ``False`` runs them step by step. ``device_rounds``:
    SDVAR's whole calls (``generate_parallel``) run their rounds as device programs with one host read
    per round (:mod:`sdvar_lib.fast.round`) where the policy has a device form; ``False`` runs the
    eager round (:meth:`SDVAR.run_round <sdvar_lib.sdvar.decoder.SDVAR.run_round>`) on the fast runs.
    ``compile_workers``: threads that compile the Triton kernels a call will meet for the first time, all at
    once before its first pass (``FastRunFactory.prepare_call``; a run built on its own compiles its block
    kernels so, the sampler a top-k/top-p combination when first met; :mod:`sdvar_lib.fast.kernels.precompile`)
    - ``None``: as many as the CPU has, at most :data:`MAX_COMPILE_WORKERS`; ``0``: each kernel compiles when a
    pass first launches it. ``chunk_attention``: how the fused pass of a chunk of several stages (SDVAR's verify
    chunk, a catch-up chunk) attends - ``"masked"`` (one attention with the block-causal mask, which also computes
    the scores the mask then drops), ``"per_stage"`` (one unmasked attention per stage, its queries against the cache
    up to its end: only the scores that count, one more launch per stage and a copy of the outputs) or ``"auto"``
    (per stage where that was measured faster: :func:`~sdvar_lib.fast.fused.per_stage_pays`). ``stage_attention``:
    how the fused pass of a single stage attends - ``"sdpa"`` (the q/k norm kernel, then PyTorch's SDPA: two launches
    and cuDNN's memset), ``"fused"`` (one Triton kernel: q/k norm, the KV cache write and the attention,
    :mod:`sdvar_lib.fast.kernels.attention`; with Triton's block kernels only, else as ``"sdpa"``) or ``"auto"``
    (fused where that was measured faster: :func:`~sdvar_lib.fast.fused.fused_stage_pays`).
    """

    use_cuda_graphs: bool | None = None
    capture_warmup: int = 1
    fallback_to_eager: bool = True
    fused: bool = True
    kernels: str = "auto"
    sampler: str = "auto"
    head: str = "auto"
    whole_stage: bool = True
    device_rounds: bool = True
    compile_workers: int | None = None
    chunk_attention: str = "auto"
    stage_attention: str = "auto"

    def __post_init__(self) -> None:
        if self.use_cuda_graphs is not None and not isinstance(self.use_cuda_graphs, bool):
            raise TypeError(f"use_cuda_graphs must be True, False or None (auto), got {self.use_cuda_graphs!r}")
        check_bool(self.fused, "fused")
        check_bool(self.fallback_to_eager, "fallback_to_eager")
        check_int(self.capture_warmup, "capture_warmup", 0)
        check_choice(self.kernels, "kernels", BACKENDS)
        check_choice(self.sampler, "sampler", SAMPLERS)
        check_choice(self.head, "head", HEADS)
        check_bool(self.whole_stage, "whole_stage")
        check_bool(self.device_rounds, "device_rounds")
        check_choice(self.chunk_attention, "chunk_attention", CHUNK_ATTENTIONS)
        check_choice(self.stage_attention, "stage_attention", STAGE_ATTENTIONS)
        if self.compile_workers is not None:
            check_int(self.compile_workers, "compile_workers", 0)

    @property
    def compile_threads(self) -> int:
        """The threads :attr:`compile_workers` stands for (``None``: the CPU's count, at most
        :data:`MAX_COMPILE_WORKERS`)."""
        if self.compile_workers is not None:
            return self.compile_workers
        return max(1, min(MAX_COMPILE_WORKERS, os.cpu_count() or 1))

    @classmethod
    def first_version(cls, **kwargs) -> FastConfig:
        """The fast path before fused kernels (PyTorch block kernels and sampling): the benchmark's "old" rows."""
        return cls(kernels="torch", sampler="torch", head="float32", whole_stage=False, device_rounds=False, **kwargs)


@dataclass(frozen=True)
class PassRecord:
    """One transformer pass of a run: a chunk of ``length`` tokens placed at ``position``."""

    position: int
    length: int
    graphed: bool


@dataclass
class FastRunCounters:
    """What a run did since it was created (captures, replays, eager passes)."""

    captures: int = 0
    replays: int = 0
    eager_passes: int = 0
    capture_failures: int = 0
    capture_time_s: float = 0.0
    setup_time_s: float = 0.0
    """Compiling and checking the Triton block kernels when the run was built."""
    precompiled: int = 0
    """Triton specialisations built ahead, several at a time, when the run was built
    (:mod:`sdvar_lib.fast.kernels.precompile`)."""


