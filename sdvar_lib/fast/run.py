"""GPU fast path for VAR decoding: static KV caches, bf16 weights and one CUDA graph per chunk shape.

Every decoder of :mod:`sdvar_lib.sdvar` gets its per-call model context (a
:class:`~sdvar_lib.models.run.ModelRun`) from a *run factory* (``SDVAR(draft, target, run_factory=...)``).
:class:`sdvar_lib.fast.factory.FastRunFactory` supplies :class:`FastRun` objects that are kept
between calls, one per ``(model, batch size)``:

- the KV cache (:class:`StaticKVCache`, in the model's dtype) is allocated once and reset at the
  start of every call; passes write at ``[length, length + l)`` and rollbacks move the length;
- at call start the labels are copied into a static buffer and a per-call *prologue* (one program: a
  graph where graphs are captured) computes the CFG-doubled class condition, the level/position
  embeddings and the fused pass's per-call constants into static buffers; every chunk input is copied
  into a static input buffer before its pass;
- every chunk shape a decoder uses (per-stage passes, the draft's catch-up chunks, the target's
  verify chunks, the hand-off prefills) is one key ``(position, length)``. On first use the pass
  is captured into a CUDA graph (after an eager warm-up on a side stream) and replayed on every
  later use; its float32 logits land in a static output buffer;
- the pass itself (:class:`sdvar_lib.fast.fused.FusedPass`) computes every block's AdaLN
  modulations once per call (they depend only on the class condition) in the prologue, and runs
  each block with 8 kernels (Triton kernels for the work around the GEMMs;
  PyTorch's, 18 per block, on the CPU or where Triton does not run); ``FastConfig(fused=False)``
  runs :meth:`sdvar_lib.models.var.VAR.forward_cached` instead;
- the stages a model decodes in a row run as one *stage program* (:meth:`FastRun.stage_program`, per
  ``(first stage c, stages its cache holds d, stages g)``): the catch-up chunk with stage ``c`` (when
  ``d < c``), then one pass per stage, each with its draw (the fused sampler kernel,
  :mod:`sdvar_lib.fast.sampling`, or the reference's :func:`~sdvar_lib.models.sampling.stage_probs`),
  its codebook lookup and its ``f_hat`` update
  (:meth:`~sdvar_lib.models.quant.MultiScaleQuantizer.f_hat_after`, its bicubic upsampling a Triton kernel
  where that matches PyTorch's bit for bit: :mod:`sdvar_lib.fast.upsample`), on static per-stage buffers
  (:class:`StageSlots`). :meth:`FastRun.decode_stage` (one stage, the stage step of
  :meth:`sdvar_lib.models.run.ModelRun.decode_stage`) and :meth:`FastRun.decode_stages` (every stage of
  the target alone, of a hand-off's part: one program per call and model) run them. A stage program
  draws its stages' ``Exp(1)`` noise itself, the draws ``torch.multinomial`` would make stage by stage,
  from the run's :attr:`FastRun.noise_rng`, which the call's generator stands in for while the program
  runs (:meth:`FastRun.run_drawing`: same random stream as the eager draws); the host copies the
  results out. :meth:`FastRun.sample_stage` fuses the draw of
  the other passes. SDVAR's rounds chain a draft stage program with the target's verify and the
  acceptance test (:mod:`sdvar_lib.fast.round`).

Graphs are captured by :func:`sdvar_lib.fast.graphs.capture_graph`; the graphed VQVAE decode is
:class:`sdvar_lib.fast.graphs.GraphedDecode`.

With ``FastConfig(use_cuda_graphs=False)`` the very same code path (static buffers, per-key
programs, length bookkeeping) runs eagerly instead of replaying graphs; that is what the CPU tests
compare with the library's eager runs. The eager runs of :func:`sdvar_lib.models.run.eager_run` stay the
default of :class:`~sdvar_lib.sdvar.decoder.SDVAR`.

Models are used in whatever dtype they have; for speed convert them with
``model.to(torch.bfloat16)`` (fp16 on GPUs without bf16; the VQVAE stays float32). The transformer
pass runs with autocast disabled; the logits are float32 (for bf16/fp16 models the head multiplies
the half-precision weights with float32 accumulation, ``FastConfig(head=...)``), and sampling and
probabilities stay float32.

The logits a :meth:`FastRun.forward` returns are a view of the run's static output buffer: they
are valid until the next pass of the same run (every decoder consumes them before that).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from sdvar_lib.fast.config import FastConfig, FastRunCounters, PassRecord
from sdvar_lib.fast.fused import (
    ChunkAttention,
    FusedPass,
    block_ops,
    block_warmups,
    check_block_ops,
    check_half_head,
    chunk_stage_ends,
    fused_stage_pays,
    per_stage_pays,
)
from sdvar_lib.fast.graphs import CapturedGraph, capture_graph
from sdvar_lib.fast.kernels import resolve_backend
from sdvar_lib.fast.sampling import FusedSampler, resolve_sampler
from sdvar_lib.fast.upsample import resolve_upsample
from sdvar_lib.models.kv_cache import KVCache
from sdvar_lib.models.quant import Upsample
from sdvar_lib.models.run import ModelRun, StagesDecoded
from sdvar_lib.models.sampling import SamplingConfig, StageSample, cfg_labels, guided_logits, stage_probs
from sdvar_lib.models.var import VAR
from sdvar_lib.util.checks import check_int

log = logging.getLogger(__name__)

__all__ = ["StaticKVCache", "StageSlots", "FastRun", "chunk_span", "resolve_head"]


@dataclass
class StageSlots:
    """Static per-stage buffers of the stage programs: stage ``s`` owns the rows ``[B * begin_s, B * end_s)``.

    ``noise``: the ``Exp(1)`` draws ``torch.multinomial`` would make for the stage's tokens (drawn by the
    stage program that decodes the stage, from the call's random stream); ``probs``: the distribution its tokens were
    drawn from (the draft's ``q`` in an SDVAR round); ``idx``: the tokens; ``h``: their codebook vectors;
    ``f_hat[s]``: ``f_hat`` after stage ``s``. A stage program reads ``f_hat`` of the stages before its
    first and writes every slot of the stages it decodes.
    """

    batch_size: int
    row_begins: tuple[int, ...]
    noise: torch.Tensor
    probs: torch.Tensor
    idx: torch.Tensor
    h: torch.Tensor
    f_hat: torch.Tensor
    """``(S, B, Cvae, P, P)``."""

    @classmethod
    def for_model(cls, model: VAR, batch_size: int) -> StageSlots:
        B, V, device = batch_size, model.V, model.device
        rows = [0]
        for pn in model.patch_nums:
            rows.append(rows[-1] + B * pn * pn)
        codebook = model.vae.quantize.embedding.weight
        P = model.patch_nums[-1]
        return cls(
            batch_size=B, row_begins=tuple(rows),
            noise=torch.ones(rows[-1], V, dtype=torch.float32, device=device),
            probs=torch.zeros(rows[-1], V, dtype=torch.float32, device=device),
            idx=torch.zeros(rows[-1], dtype=torch.long, device=device),
            h=torch.zeros(rows[-1], model.Cvae, dtype=codebook.dtype, device=device),
            f_hat=torch.zeros(len(model.patch_nums), B, model.Cvae, P, P, dtype=codebook.dtype, device=device),
        )

    def rows(self, si: int) -> slice:
        return slice(self.row_begins[si], self.row_begins[si + 1])

    def tokens(self, si: int) -> torch.Tensor:
        """Stage ``si``'s tokens ``(B, l)`` (a view)."""
        return self.idx[self.rows(si)].view(self.batch_size, -1)

    def f_hats(self) -> list[torch.Tensor]:
        """``f_hat`` after every stage, as views (what :meth:`ModelRun.stage_input` reads)."""
        return list(self.f_hat.unbind(0))


class StaticKVCache(KVCache):
    """A :class:`~sdvar_lib.models.kv_cache.KVCache` whose length can also be set after a graph replay.

    A replayed graph writes keys/values at ``[position, position + l)`` without running the Python
    bookkeeping of :meth:`KVCache.write`/:meth:`KVCache.advance`; :meth:`set_length` records it.
    """

    def set_length(self, length: int) -> None:
        check_int(length, "cache length", 0, self.max_length)
        self._length = length
        self._pending = 0


# ---- chunk helpers ------------------------------------------------------------------------------
def chunk_span(model: VAR, start_stage: int, num_stages: int) -> tuple[int, int]:
    """``(position, length)`` of the chunk of stage inputs ``start_stage .. start_stage + num_stages - 1``."""
    S = model.num_stages
    if not (0 <= start_stage < S and 1 <= num_stages <= S - start_stage):
        raise ValueError(f"chunk of {num_stages} stages from stage {start_stage} does not fit {S} stages")
    position = model.begin_ends[start_stage][0]
    end = model.begin_ends[start_stage + num_stages - 1][1]
    return position, end - position


@contextlib.contextmanager
def _autocast_off(device_type: str) -> Iterator[None]:
    with torch.autocast(device_type=device_type, enabled=False):
        yield


def _default_generator(device: torch.device) -> torch.Generator:
    """The generator draws without one use on ``device`` (PyTorch's global random state there)."""
    if device.type == "cuda":
        return torch.cuda.default_generators[device.index if device.index is not None else torch.cuda.current_device()]
    if device.type == "cpu":
        return torch.default_generator
    if device.type == "mps":
        return torch.mps._get_default_mps_generator()
    raise ValueError(f"the fast path does not know the global random generator of {device.type} devices; "
                     "give the call a g_seed (its own generator)")


def _fingerprint(model: VAR) -> tuple:
    """Identity of the storage a captured graph reads (``model.to(...)`` changes it)."""
    probes = (model.pos_1LC, model.head.weight, model.blocks[0].attn.mat_qkv.weight, model.blocks[-1].ffn.fc2.weight)
    return tuple((p.data_ptr(), p.dtype, p.device) for p in probes)


def resolve_head(model: VAR, choice: str) -> str:
    """The fused pass's head product for ``model``: ``"half"`` or ``"float32"`` (``FastConfig(head=...)``); half needs a
    half-precision model and a mixed-dtype matmul that checks out on its device."""
    dtype = model.pos_1LC.dtype
    if choice == "float32" or (choice == "auto" and (model.device.type != "cuda"
                                                     or dtype not in (torch.bfloat16, torch.float16))):
        return "float32"
    if dtype not in (torch.bfloat16, torch.float16):
        raise ValueError(f"head='half' needs a bf16 or fp16 model, this one is {dtype}")
    problem = check_half_head(dtype, model.device)
    if problem is None:
        return "half"
    if choice == "half":
        raise RuntimeError(f"head='half' failed its check: {problem}")
    log.warning("the head product stays float32: %s", problem)
    return "float32"


# ---- programs: one per chunk key ----------------------------------------------------------------
class _EagerProgram:
    graphed = False

    def __init__(self, step: Callable[[], None]) -> None:
        self._step = step

    def run(self) -> None:
        self._step()


_Program = _EagerProgram | CapturedGraph


# ---- the run ------------------------------------------------------------------------------------
class FastRun(ModelRun):
    """A reusable per-``(model, batch)`` run: static cache and buffers, one program per chunk key."""

    def __init__(self, model: VAR, batch_size: int, config: FastConfig | None = None) -> None:
        if not isinstance(model, VAR):
            raise TypeError(f"FastRun needs an sdvar_lib.models.VAR, got {type(model).__name__}")
        check_int(batch_size, "batch_size", 1)
        if model.training:
            raise ValueError("FastRun needs a model in eval mode (call model.eval()); training mode drops paths")
        config = config or FastConfig()
        device = model.device
        use_graphs = config.use_cuda_graphs if config.use_cuda_graphs is not None else device.type == "cuda"
        if use_graphs and device.type != "cuda":
            raise ValueError(f"use_cuda_graphs=True needs the model on a CUDA device, it is on {device}")
        dtype = model.pos_1LC.dtype
        rows = 2 * batch_size
        with torch.no_grad():
            lvl_pos_1LC = model.lvl_pos()
        cache = StaticKVCache(
            num_layers=model.depth, batch_size=rows, num_heads=model.num_heads, head_dim=model.C // model.num_heads,
            stage_ids_L=model.lvl_1L[0], dtype=dtype, device=device,
        )
        super().__init__(
            model=model, cond_2BD=torch.zeros(rows, model.D, dtype=dtype, device=device), lvl_pos_1LC=lvl_pos_1LC,
            cache=cache,
        )
        self.cache: StaticKVCache = cache
        self._labels_B = torch.zeros(batch_size, dtype=torch.long, device=device)
        """The call's labels (copied in by :meth:`begin`; the prologue reads them)."""
        self.noise_rng = torch.Generator(device=device)
        """What the programs that draw (stage programs, SDVAR's bonus stage) draw from; a call's generator stands in
        for it while such a program runs (:meth:`run_drawing`). Registered with every graph that draws."""
        self.batch_size = batch_size
        self.dtype = dtype
        self.config = config
        self.use_cuda_graphs = use_graphs
        self.fingerprint = _fingerprint(model)
        self.pass_log: list[PassRecord] = []
        self.counters = FastRunCounters()
        self._programs: dict[tuple[int, int], _Program] = {}
        self._stage_programs: dict[tuple, _Program] = {}
        self._slots: StageSlots | None = None
        self.buffers_version = 0
        """Grows when the static input/output buffers are reallocated (programs that read them are rebuilt)."""
        self._capacity = 0
        self._x_flat = torch.empty(0, dtype=dtype, device=device)
        self._out_flat = torch.empty(0, dtype=torch.float32, device=device)
        self._pool = None
        self._ensure_capacity(max(pn * pn for pn in model.patch_nums))
        self.fused = config.fused and FusedPass.supports(model)
        self._stage_of_position = [int(s) for s in model.lvl_1L[0].tolist()]
        self._attentions: dict[tuple[int, int], ChunkAttention] = {}
        self._prologue_program: _Program | None = None
        t0 = time.perf_counter()
        self.head = resolve_head(model, config.head) if self.fused else "float32"
        if self.fused:
            self._compile_ahead(config)
        self.kernels = self._resolve_kernels(config.kernels) if self.fused else "torch"
        self.upsample: Upsample = resolve_upsample(self.kernels, model)
        """The ``f_hat`` updates' upsampling of a token map (:mod:`sdvar_lib.fast.upsample`: Triton's where bit-exact)."""
        self.counters.setup_time_s += time.perf_counter() - t0
        self._fused = None
        if self.fused:
            self._fused = FusedPass(model, rows, dtype, device, block_ops(self.kernels), half_head=self.head == "half")
        self.sampler = resolve_sampler(config.sampler, device)
        self._sampler = FusedSampler(model, config.compile_threads) if self.sampler == "fused" else None

    __hash__ = object.__hash__
    __eq__ = object.__eq__

    def __repr__(self) -> str:
        return (
            f"FastRun(depth={self.model.depth}, batch={self.batch_size}, dtype={self.dtype}, "
            f"graphs={self.use_cuda_graphs}, kernels={self.kernels}, sampler={self.sampler}, head={self.head}, "
            f"programs={len(self._programs)}, cache length={self.cache.length})"
        )

    @staticmethod
    def kernel_warmups(model: VAR, config: FastConfig, head: str | None = None) -> list[Callable[[], object]]:
        """The warm-ups of the Triton block kernels a run of ``model`` with ``config`` will launch (none where they
        will not be Triton's compiled kernels; :func:`sdvar_lib.fast.fused.block_warmups`). ``head``: the run's
        resolved head product, where known (else :func:`resolve_head` checks it)."""
        device = model.device
        if device.type != "cuda" or not config.fused or not FusedPass.supports(model):
            return []
        try:
            if resolve_backend(config.kernels, device, "kernels") != "triton":
                return []
        except ValueError:  # kernels="triton" where it cannot run: _resolve_kernels says so
            return []
        half = (head or resolve_head(model, config.head)) == "half"
        from sdvar_lib.fast.kernels.bicubic import bicubic_warmup

        return (block_warmups(block_ops("triton"), model, model.pos_1LC.dtype, device, half,
                              stage_attention=config.stage_attention != "sdpa")
                + [bicubic_warmup(model.Cvae, model.patch_nums[-1], device)])

    def _compile_ahead(self, config: FastConfig) -> None:
        """Compile every block kernel specialisation the pass and its check launch, ``config.compile_threads`` at a
        time (:mod:`sdvar_lib.fast.kernels.precompile`); nothing where they are compiled already."""
        warmups = self.kernel_warmups(self.model, config, self.head) if config.compile_threads else []
        if warmups:
            from sdvar_lib.fast.kernels.precompile import compile_ahead

            self.counters.precompiled += compile_ahead(warmups, config.compile_threads).built

    def _resolve_kernels(self, choice: str) -> str:
        """The block kernels' backend; Triton on CUDA only after its check against PyTorch passes."""
        backend = resolve_backend(choice, self.model.device, "kernels")
        if backend == "triton" and self.model.device.type == "cuda":
            problem = check_block_ops(block_ops("triton"), self.model.C, self.model.num_heads, self.dtype,
                                      self.model.device)
            if problem is not None:
                if choice == "triton":
                    raise RuntimeError(f"kernels='triton' failed its check: {problem}")
                log.warning("fused block kernels fall back to PyTorch: %s", problem)
                return "torch"
        return backend

    # -- per call --
    @torch.no_grad()
    def begin(self, label_B: torch.Tensor) -> None:
        """Start a call: the labels into their static buffer, then the per-call prologue (one program: the CFG-doubled
        class condition, the level/position embeddings, the fused pass's constants), and an empty cache."""
        if label_B.ndim != 1 or label_B.numel() != self.batch_size:
            raise ValueError(f"this run holds batch {self.batch_size}; got labels of shape {tuple(label_B.shape)}")
        self._labels_B.copy_(label_B)
        self._run_prologue()
        self.cache.reset()
        self.pass_log.clear()
        self.epoch += 1  # a new call: states of earlier calls on this run are stale

    def is_current(self) -> bool:
        """False once the model's parameters were moved or converted (captured graphs would read stale memory)."""
        return _fingerprint(self.model) == self.fingerprint

    @property
    def programs(self) -> list[tuple[int, int]]:
        """Keys ``(position, length)`` with a program (graph or eager)."""
        return sorted(self._programs)

    @property
    def capacity(self) -> int:
        """Longest chunk (tokens) the static input/output buffers hold."""
        return self._capacity

    # -- inputs --
    def stage_input(self, si: int, f_hats: Sequence[torch.Tensor]) -> torch.Tensor:
        """CFG-doubled input of stage ``si`` in the model's dtype (the VQVAE features are float32)."""
        if si == 0:
            return self.model.start_input(self.cond_2BD, self.lvl_pos_1LC)
        next_BlCv = self.model.vae.quantize.next_input(si - 1, f_hats[si - 1])
        return self.model.stage_input(si, next_BlCv.to(self.dtype), self.lvl_pos_1LC).repeat(2, 1, 1)

    def sample_stage(self, logits_2BlV: torch.Tensor, si: int, sampling: SamplingConfig,
                     rng: torch.Generator | None) -> StageSample:
        """Stage ``si``'s sample from a pass's logits: the fused sampler where it applies, else the reference's kernels."""
        if self._use_fused_sampler(sampling):
            return self._sampler(logits_2BlV, si, sampling, rng)
        return super().sample_stage(logits_2BlV, si, sampling, rng)

    def _use_fused_sampler(self, sampling: SamplingConfig) -> bool:
        return self._sampler is not None and self._sampler.supports(sampling)

    @torch.no_grad()
    def decode_stage(self, si: int, f_hats: Sequence[torch.Tensor], sampling: SamplingConfig,
                     rng: torch.Generator | None, attn_mask: torch.Tensor | None = None) -> tuple[StageSample, torch.Tensor]:
        """One stage as one program (CUDA graph): input, fused pass, the draw, the codebook lookup and ``f_hat``.

        Per stage the host copies ``f_hat`` in, replays the program (which draws the ``Exp(1)`` noise
        ``torch.multinomial`` would draw, from the same random stream: :meth:`run_drawing`) and copies the
        results out — instead of launching some forty kernels. The draw is ``argmax(p / noise)``, which is
        what ``torch.multinomial`` computes for one sample per row; ``p`` comes from the fused sampler
        kernel where the run has it, else from :func:`~sdvar_lib.models.sampling.stage_probs`.
        A cache that holds fewer stages than ``si`` reads the missing inputs in the same program (the
        catch-up chunk). ``more_smooth``, an explicit ``attn_mask`` and the first (generic) fast path
        take the step-by-step way of :meth:`ModelRun.decode_stage`.
        """
        d = self._program_start(si, sampling, attn_mask)
        if d is None:
            return super().decode_stage(si, f_hats, sampling, rng, attn_mask)
        slots = self.slots
        self._load_f_hats(slots, f_hats, d, si)
        self._run_stages(si, d, 1, sampling, slots, rng)
        B, Cv, pn = self.batch_size, self.model.Cvae, self.model.patch_nums[si]
        rows = slots.rows(si)
        h_BlC = slots.h[rows].view(B, -1, Cv).clone()
        sample = StageSample(idx_Bl=slots.tokens(si).clone(), h_BChw=h_BlC.transpose(1, 2).reshape(B, Cv, pn, pn),
                             probs_BlV=slots.probs[rows].view(B, -1, self.model.V).clone())
        return sample, slots.f_hat[si].clone()

    @torch.no_grad()
    def decode_stages(self, tokens: Sequence[torch.Tensor], f_hats: Sequence[torch.Tensor], stop: int,
                      sampling: SamplingConfig, rng: torch.Generator | None,
                      first_mask: torch.Tensor | None = None) -> StagesDecoded:
        """Stages ``len(tokens) .. stop - 1`` as ONE program: the catch-up chunk, then one pass per stage, each
        stage's draw and ``f_hat`` — the stage steps of :meth:`decode_stage` chained without the host.

        The program draws every stage's ``Exp(1)`` noise first, in stage order (the draws the stage steps
        make one by one, from the same random stream); the host replays it once and copies the tokens and
        ``f_hat`` maps out. Where :meth:`decode_stage` would go step by step, so does this.
        """
        c = len(tokens)
        d = self._program_start(c, sampling, first_mask) if c < stop else None
        if d is None:
            return super().decode_stages(tokens, f_hats, stop, sampling, rng, first_mask)
        slots = self.slots
        self._load_f_hats(slots, f_hats, d, c)
        self._run_stages(c, d, stop - c, sampling, slots, rng)
        new_tokens = slots.idx[slots.row_begins[c]:slots.row_begins[stop]].clone()
        new_f_hats = slots.f_hat[c:stop].clone()
        out_tokens, offset = list(tokens), 0
        for si in range(c, stop):
            n = slots.row_begins[si + 1] - slots.row_begins[si]
            out_tokens.append(new_tokens[offset:offset + n].view(self.batch_size, -1))
            offset += n
        return StagesDecoded(tokens=tuple(out_tokens), f_hats=tuple(f_hats) + tuple(new_f_hats.unbind(0)),
                             passes=stop - c)

    # -- stage programs --
    @property
    def slots(self) -> StageSlots:
        """The run's own per-stage buffers (what :meth:`decode_stage` and :meth:`decode_stages` use)."""
        if self._slots is None:
            self._slots = StageSlots.for_model(self.model, self.batch_size)
        return self._slots

    def stage_programs_apply(self, sampling: SamplingConfig) -> bool:
        """Whether stages run as programs here (else step by step): the fused whole-stage path, no ``more_smooth``."""
        return self.fused and self.config.whole_stage and not sampling.more_smooth

    def _program_start(self, si: int, sampling: SamplingConfig, attn_mask: torch.Tensor | None) -> int | None:
        """The first stage ``d`` a program decoding from stage ``si`` reads (the stages the cache holds), or ``None``
        where the stage goes step by step."""
        if attn_mask is not None or not self.stage_programs_apply(sampling):
            return None
        d = self.cache.stages_held()
        if d > si or self.cache.length != self.model.begin_ends[d][0]:
            return None
        return d

    def _load_f_hats(self, slots: StageSlots, f_hats: Sequence[torch.Tensor], d: int, c: int) -> None:
        """Copy ``f_hat`` of stages ``d - 1 .. c - 1`` (what a program from ``d`` to ``c`` reads) into ``slots``."""
        for k in range(max(d - 1, 0), c):
            if f_hats[k].data_ptr() != slots.f_hat[k].data_ptr():
                slots.f_hat[k].copy_(f_hats[k])

    def stage_program(self, c: int, d: int, g: int, sampling: SamplingConfig, slots: StageSlots) -> _Program:
        """The program of stages ``c .. c + g - 1`` on a cache holding stages ``< d`` (``d <= c``), on ``slots``.

        It reads ``slots.f_hat`` of stages ``d - 1 .. c - 1``, draws the noise of stages ``c .. c + g - 1`` from
        :attr:`noise_rng` (run it with :meth:`run_drawing`), and writes their ``probs``, ``idx``, ``h`` and
        ``f_hat``; it writes the cache at the chunk's positions and leaves the cache's length to the caller.
        Built (captured) on first use.
        """
        S = self.model.num_stages
        if not (0 <= d <= c and 1 <= g <= S - c):
            raise ValueError(f"a stage program decodes 1 .. {S - c} stages from stage {c} on a cache of <= {c} stages; "
                             f"got d={d}, g={g}")
        use_kernel = self._use_fused_sampler(sampling)
        key = (c, d, g, sampling.cfg, sampling.top_k, sampling.top_p, use_kernel, id(slots))
        program = self._stage_programs.get(key)
        if program is None:
            self._ensure_capacity(max(chunk_span(self.model, d, c - d + 1)[1], *(self.model.patch_nums[s] ** 2
                                                                                  for s in range(c, c + g))))
            self._chunk_attention(*chunk_span(self.model, d, c - d + 1))  # built outside any graph: a constant it reads
            what = f"stage {c}" if g == 1 and d == c else f"stages {c}..{c + g - 1} (cache at stage {d})"
            program = self._build(self._stages_fn(c, d, g, sampling, use_kernel, slots), what, chunk_span(self.model, d, 1)[0],
                                  draws=True)
            self._stage_programs[key] = program
        return program

    def _run_stages(self, c: int, d: int, g: int, sampling: SamplingConfig, slots: StageSlots,
                    rng: torch.Generator | None) -> None:
        """Run :meth:`stage_program` drawing from ``rng`` and record what it did: the cache holds stages ``< c + g``,
        one pass per stage."""
        program = self.stage_program(c, d, g, sampling, slots)
        self.run_drawing(program, rng)
        self._count(program)
        self.record_stage_passes(c, d, g, program.graphed)

    def run_drawing(self, program: _Program, rng: torch.Generator | None) -> None:
        """Run a program that draws from :attr:`noise_rng` as if it drew from ``rng`` (``None``: the device's default
        generator): ``rng``'s state goes into :attr:`noise_rng` before, and back out after, so that ``rng`` moves on
        by what the program drew and its draws are the ones eager draws from ``rng`` would make (a replayed graph
        reads the registered generator's state at launch, :func:`~sdvar_lib.fast.graphs.capture_graph`)."""
        source = rng if rng is not None else _default_generator(self.model.device)
        self.noise_rng.set_state(source.get_state())
        program.run()
        source.set_state(self.noise_rng.get_state())

    def record_stage_passes(self, c: int, d: int, g: int, graphed: bool) -> None:
        """Book a stage program's passes (the catch-up chunk with stage ``c``, then one per stage) and cache length."""
        self.pass_log.append(PassRecord(*chunk_span(self.model, d, c - d + 1), graphed=graphed))
        for si in range(c + 1, c + g):
            self.pass_log.append(PassRecord(*chunk_span(self.model, si, 1), graphed=graphed))
        self.cache.set_length(self.model.begin_ends[c + g - 1][1])

    def sample_into(self, logits_2BlV: torch.Tensor, si: int, sampling: SamplingConfig, use_kernel: bool,
                    slots: StageSlots) -> None:
        """Stage ``si``'s draw from the chunk's last ``pn**2`` positions into ``slots`` (noise drawn beforehand)."""
        model, rows = self.model, slots.rows(si)
        noise, probs, idx, h = slots.noise[rows], slots.probs[rows], slots.idx[rows], slots.h[rows]
        if use_kernel:  # the fused equivalent of stage_probs, the draw and the lookup
            self._sampler.sample_into(logits_2BlV, si, sampling, noise, idx, probs, h)
        else:  # the reference's stage_probs, then the draw torch.multinomial makes for one sample
            l = model.patch_nums[si] ** 2
            guided = guided_logits(logits_2BlV[:, -l:], si, model.num_stages, sampling.cfg)
            probs.copy_(stage_probs(guided, sampling).view(-1, model.V))
            torch.argmax(probs / noise, dim=-1, out=idx)
            h.copy_(F.embedding(idx, model.vae.quantize.embedding.weight))

    def _stages_fn(self, c: int, d: int, g: int, sampling: SamplingConfig, use_kernel: bool,
                   slots: StageSlots) -> Callable[[], None]:
        """The work of a stage program on the static buffers (what it runs, captured or not)."""
        model, B = self.model, self.batch_size
        quant, Cv, f_hats = model.vae.quantize, model.Cvae, slots.f_hats()
        steps = []
        for i in range(g):
            si = c + i
            first = d if i == 0 else si
            steps.append((si, list(range(first, si + 1)), *chunk_span(model, first, si - first + 1)))

        noise, rng = [slots.noise[slots.rows(c + i)] for i in range(g)], self.noise_rng

        def stages() -> None:
            for stage_noise in noise:  # the draws the stage steps make one by one, in their order
                stage_noise.exponential_(generator=rng)
            for si, read, position, l in steps:
                self._x_view(l).copy_(self.chunk_input(read, f_hats))
                self._step(position, l)
                self.sample_into(self._out_view(l), si, sampling, use_kernel, slots)
                pn = model.patch_nums[si]
                h_BChw = slots.h[slots.rows(si)].view(B, pn * pn, Cv).transpose(1, 2).reshape(B, Cv, pn, pn)
                f_hats[si].copy_(quant.f_hat_after(si, f_hats[si - 1] if si > 0 else None, h_BChw, self.upsample))
            self.cache.set_length(steps[0][2])

        return stages

    # -- passes --
    @torch.no_grad()
    def forward(self, x_2BlC: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        """One pass over a chunk at ``[cache.length, + l)``; float32 logits ``(2B, l, V)``.

        Without ``attn_mask`` the chunk's program (CUDA graph) runs; an explicit experimental mask
        runs eagerly. The returned logits are valid until this run's next pass.
        """
        rows = 2 * self.batch_size
        if x_2BlC.ndim != 3 or x_2BlC.shape[0] != rows or x_2BlC.shape[2] != self.model.C:
            raise ValueError(f"chunk input must be ({rows}, l, {self.model.C}), got {tuple(x_2BlC.shape)}")
        position, l = self.cache.length, x_2BlC.shape[1]
        if l < 1 or position + l > self.cache.max_length:
            raise ValueError(f"chunk of {l} tokens at position {position} does not fit the cache of {self.cache.max_length}")
        if attn_mask is not None:
            with _autocast_off(x_2BlC.device.type):
                logits = self.model.forward_cached(x_2BlC.to(self.dtype), self.cond_2BD, self.cache, attn_mask=attn_mask)
            self.counters.eager_passes += 1
            self.pass_log.append(PassRecord(position, l, graphed=False))
            return logits
        program = self._program(position, l)
        self._x_view(l).copy_(x_2BlC)
        program.run()
        self._count(program)
        self.cache.set_length(position + l)
        self.pass_log.append(PassRecord(position, l, graphed=program.graphed))
        return self._out_view(l)

    @torch.no_grad()
    def precapture(self, chunks: Iterable[tuple[int, int]]) -> int:
        """Build the programs of ``(start stage, number of stages)`` chunks ahead of time; returns how many were new.

        Buffers are sized for the longest chunk first, so no program is dropped by a later growth.
        The cache is left empty.
        """
        spans = sorted({chunk_span(self.model, s, n) for s, n in chunks}, key=lambda pl: -pl[1])
        if spans:
            self._ensure_capacity(spans[0][1])
        new = 0
        for position, l in spans:
            if (position, l) not in self._programs:
                self._program(position, l)
                new += 1
        self.cache.reset()
        return new

    @torch.no_grad()
    def replay_passes(self, passes: Sequence[PassRecord]) -> None:
        """Run the programs of recorded passes back to back (timing of the transformer part alone).

        Leaves meaningless values in the cache and output buffer; the cache is reset afterwards.
        """
        for rec in passes:
            program = self._program(rec.position, rec.length)  # whole-stage programs hold their passes: build one
            self.cache.set_length(rec.position)
            program.run()
        self.cache.reset()

    # -- internals --
    def _x_view(self, l: int) -> torch.Tensor:
        rows = 2 * self.batch_size
        return self._x_flat[: rows * l * self.model.C].view(rows, l, self.model.C)

    def _out_view(self, l: int) -> torch.Tensor:
        rows = 2 * self.batch_size
        return self._out_flat[: rows * l * self.model.V].view(rows, l, self.model.V)

    def _ensure_capacity(self, l: int) -> None:
        """Grow the static input/output buffers to ``l`` tokens (dropping programs that read the old ones)."""
        if l <= self._capacity:
            return
        rows = 2 * self.batch_size
        if self._programs:
            log.info("fast run d%d batch %d: buffers grow to %d tokens, %d programs are rebuilt lazily",
                     self.model.depth, self.batch_size, l, len(self._programs))
        self._programs.clear()
        self._stage_programs.clear()
        self.buffers_version += 1
        self._pool = None
        self._x_flat = torch.zeros(rows * l * self.model.C, dtype=self.dtype, device=self.model.device)
        self._out_flat = torch.zeros(rows * l * self.model.V, dtype=torch.float32, device=self.model.device)
        self._capacity = l

    def _step(self, position: int, l: int) -> None:
        """The pass a program runs: static input and per-call constants in, float32 logits to the static output."""
        with _autocast_off(self._x_flat.device.type):
            if self._fused is not None:
                attention = self._chunk_attention(position, l)
                self._fused.step(self._x_view(l), self.cache, position, attention.mask, self._out_view(l),
                                 attention.stage_ends, attention.fused)
            else:
                self.cache.set_length(position)
                logits = self.model.forward_cached(self._x_view(l), self.cond_2BD, self.cache)
                self._out_view(l).copy_(logits)
        self.cache.set_length(position)

    def _prologue(self) -> None:
        """What a call's passes read and only its labels and the weights decide, into static buffers: the condition
        (the labels, then "no class" for the unconditional half), the level/position embeddings (recomputed every
        call: they follow in-place weight updates), and the fused pass's per-call constants."""
        with _autocast_off(self.cond_2BD.device.type):
            self.cond_2BD.copy_(self.model.class_condition(cfg_labels(self._labels_B, self.model.num_classes)))
            self.lvl_pos_1LC.copy_(self.model.lvl_pos())
            if self._fused is not None:
                self._fused.prologue(self.cond_2BD)

    def _run_prologue(self) -> None:
        if self._prologue_program is None:
            program: _Program = _EagerProgram(self._prologue)
            if self.use_cuda_graphs:
                try:
                    program = self._capture(self._prologue, pool=None)
                except Exception as exc:
                    self.counters.capture_failures += 1
                    if not self.config.fallback_to_eager:
                        raise
                    log.warning("CUDA graph capture of the per-call prologue failed (%s: %s); it runs eagerly",
                                type(exc).__name__, exc)
            self._prologue_program = program
        self._prologue_program.run()

    def _chunk_attention(self, position: int, l: int) -> ChunkAttention:
        """How the chunk ``(position, l)`` attends (:class:`ChunkAttention`), built once.

        A single stage: through the fused stage attention or the q/k norm kernel and SDPA
        (``FastConfig.stage_attention``, :func:`fused_stage_pays`; fused only with Triton's block kernels). A chunk of
        several stages: with ``FastConfig.chunk_attention`` ``"masked"`` (or ``"auto"`` where :func:`per_stage_pays`
        says no) an additive block-causal mask ``(l, position + l)``, its rows padded to a multiple of 16 elements so
        attention kernels take it without a copy; else the stages' ends within the chunk, one unmasked attention each.
        """
        key = (position, l)
        if key not in self._attentions:
            end = position + l
            rows_heads = 2 * self.batch_size * self.model.num_heads
            if self._stage_of_position[position] == self._stage_of_position[end - 1]:
                choice = self.config.stage_attention
                attention = ChunkAttention(fused=self.kernels == "triton" and (
                    choice == "fused" or (choice == "auto" and fused_stage_pays(rows_heads, position, l))))
            else:
                stage_ends = chunk_stage_ends(self._stage_of_position, position, l)
                choice = self.config.chunk_attention
                if choice == "per_stage" or (choice == "auto" and per_stage_pays(rows_heads, position, stage_ends)):
                    attention = ChunkAttention(stage_ends=stage_ends)
                else:
                    ids = self.cache.stage_ids_L
                    allowed = ids[:end].unsqueeze(0) <= ids[position:end].unsqueeze(1)
                    padded = torch.full((l, (end + 15) // 16 * 16), -torch.inf, dtype=self.dtype, device=ids.device)
                    padded[:, :end].masked_fill_(allowed, 0.0)
                    attention = ChunkAttention(mask=padded[:, :end])
            self._attentions[key] = attention
        return self._attentions[key]

    def _count(self, program: _Program) -> None:
        if program.graphed:
            self.counters.replays += 1
        else:
            self.counters.eager_passes += 1

    def _program(self, position: int, l: int) -> _Program:
        key = (position, l)
        program = self._programs.get(key)
        if program is not None:
            return program
        self._ensure_capacity(l)
        if self.fused:
            self._chunk_attention(position, l)  # built outside any graph: a constant the graph reads

        def step() -> None:
            self._step(position, l)

        program = self._build(step, f"chunk of {l} tokens", position)
        self._programs[key] = program
        return program

    def _build(self, fn: Callable[[], None], what: str, position: int, draws: bool = False) -> _Program:
        """``fn`` as a captured CUDA graph (graphs on) or as itself; a failed capture falls back to eager.
        ``draws``: ``fn`` draws from :attr:`noise_rng` (run the program with :meth:`run_drawing`)."""
        if not self.use_cuda_graphs:
            return _EagerProgram(fn)
        try:
            if self._pool is None:
                self._pool = torch.cuda.graph_pool_handle()
            program = self._capture(fn, pool=self._pool, generators=(self.noise_rng,) if draws else ())
            log.debug("captured VAR d%d batch %d: %s at %d", self.model.depth, self.batch_size, what, position)
            return program
        except Exception as exc:  # a capture that fails must not take the whole call down
            self.counters.capture_failures += 1
            self.cache.set_length(position)
            if not self.config.fallback_to_eager:
                raise
            log.warning("CUDA graph capture of the %s at %d of VAR d%d failed (%s: %s); it runs eagerly", what,
                        position, self.model.depth, type(exc).__name__, exc)
            return _EagerProgram(fn)

    def _capture(self, fn: Callable[[], None], pool, generators: Sequence[torch.Generator] = ()) -> CapturedGraph:
        captured = capture_graph(fn, self.model.device, self.config.capture_warmup, pool=pool, generators=generators)
        self.counters.captures += 1
        self.counters.capture_time_s += captured.capture_s
        return captured


