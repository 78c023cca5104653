"""The fused transformer pass of the fast path: per-call AdaLN constants, fused kernels around the GEMMs.

:class:`FusedPass` owns the constants that depend only on the class condition (every block's AdaLN
modulations with ``1 + scale`` folded in, the head's, the qkv biases, the q/k scales, float32 head
weights): :meth:`FusedPass.prologue` computes them once per call, :meth:`FusedPass.step` runs one
pass with them. A block is its four matrix products, one attention and three fused steps:

1. ``q, k, v`` from the qkv product: q/k L2 norm and q's head scale, k and v written straight into
   the KV cache (:meth:`BlockOps.qk_norm_into_cache`);
2. after the attention's projection: the residual ``x += o * gamma1`` and the MLP's AdaLN
   ``h = LayerNorm(x) * (1 + scale2) + shift2`` (:meth:`BlockOps.add_ln_modulate`);
3. after the MLP: the residual ``x += f * gamma2`` and the *next* block's AdaLN (after the last
   block, the head's);

and the MLP's GELU in the first MLP product's epilogue. The first stage's pass (one token at position 0, attending to
itself only) launches no attention: a softmax over one score is exactly 1, so the attention's output is the token's
``v`` bit for bit, copied from the ``qkv`` product (a copy of a few µs instead of an attention kernel of 6-7 µs per
layer, in a d16 pass 16 of them, in a d30 one 30; contiguous like attention's output, so that the projection runs the
same kernel and gives the same bits). The head reads the AdaLN output in float32
and multiplies by float32 copies of its weights, or (``half_head``, the default for bf16/fp16
models on a GPU) by its half-precision weights as they are with float32 accumulation and output —
cuBLAS's float32 product runs on CUDA cores, about ten times slower than the tensor cores.

The steps come in two implementations of :class:`BlockOps`: :class:`TritonBlockOps` (one Triton
kernel per step, cuBLASLt's GELU epilogue; 8 kernels per block, 7 with the fused stage attention) and
:class:`TorchBlockOps` (PyTorch kernels; 18 per block; the CPU path and the fallback). A single stage attends
either through step 1 and PyTorch's SDPA (cuDNN's kernel, which clears a buffer first) or, with Triton's kernels where
:func:`fused_stage_pays` (``FastConfig.stage_attention``), through one kernel that does step 1 and the attention
(:meth:`BlockOps.stage_attention`, :mod:`sdvar_lib.fast.kernels.attention`): 5-10 % less time per pass at batch 1,
slower at the large last stages of batch 8 and 32. For a chunk of several stages (SDVAR's verify chunk) either
cuDNN's masked kernel (block-causal mask over the cached prefix) or one unmasked attention per stage, each stage's
queries against the cache up to its end (:class:`ChunkAttention`, ``FastConfig.chunk_attention``). Both give the
same values - a masked key's softmax weight is exactly 0 - and on one H200 the same bits; the masked
kernel also computes the scores it drops (625 x 680 for gamma 4's chunk of stages 5-9 where 284k of the
425k count), the per-stage one adds a launch per stage and a copy: :func:`per_stage_pays` picks.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from sdvar_lib.models.kv_cache import KVCache
from sdvar_lib.models.var import MAX_SCALE_MUL, VAR

log = logging.getLogger(__name__)

__all__ = ["BlockOps", "TorchBlockOps", "TritonBlockOps", "block_ops", "check_block_ops", "block_warmups", "HEADS",
           "half_head_matmul", "check_half_head", "FusedPass", "chunk_stage_ends",
           "CHUNK_ATTENTIONS", "ChunkAttention", "dropped_scores", "per_stage_pays", "PER_STAGE_MIN_SAVED",
           "STAGE_ATTENTIONS", "fused_stage_pays", "FUSED_STAGE_MAX_SCORES"]


class BlockOps:
    """The fused steps of a block; see the module docstring. Subclasses give one implementation."""

    name = "ops"

    def add_ln_modulate(
        self, x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor, eps: float,
        o: torch.Tensor | None = None, gate: torch.Tensor | None = None, h_dtype: torch.dtype | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x + o * gate, LayerNorm(x + o * gate) * scale + shift)``; ``x``/``o`` ``(rows, l, C)``, vectors ``(rows, C)``."""
        raise NotImplementedError

    def qk_norm_into_cache(
        self, qkv: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, position: int,
        qk_factor_2H1: torch.Tensor | None,
    ) -> torch.Tensor:
        """``q`` ``(rows, l, H, D)`` from ``qkv`` ``(rows, l, 3C)``; k, v into one layer's caches at ``position``."""
        raise NotImplementedError

    def fc1_gelu(self, h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """``gelu_tanh(h @ weight.T + bias)``."""
        raise NotImplementedError

    def stage_attention(
        self, qkv: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, position: int,
        qk_factor_2H1: torch.Tensor | None, scale: float,
    ) -> torch.Tensor:
        """A single stage's attention output ``(rows, l, C)`` from its ``qkv`` ``(rows, l, 3C)``: q/k norm, k and v into
        one layer's caches at ``position``, every query against the cache up to ``position + l``. Here
        :meth:`qk_norm_into_cache` and PyTorch's SDPA (two launches); :class:`TritonBlockOps` has one kernel."""
        q = self.qk_norm_into_cache(qkv, k_cache, v_cache, position, qk_factor_2H1)
        return _cached_attention(q, k_cache, v_cache, position + qkv.shape[1], scale)


class TorchBlockOps(BlockOps):
    """The fused steps as PyTorch kernels (the fast path's first version; CPU and fallback)."""

    name = "torch"

    def add_ln_modulate(self, x, scale, shift, eps, o=None, gate=None, h_dtype=None):
        if o is not None:
            x = torch.addcmul(x, o, gate.unsqueeze(1))
        src = x if h_dtype is None or h_dtype == x.dtype else x.to(h_dtype)
        h = torch.addcmul(shift.unsqueeze(1), F.layer_norm(src, (x.shape[-1],), eps=eps), scale.unsqueeze(1))
        return x, h if h_dtype is None else h.to(h_dtype)

    def qk_norm_into_cache(self, qkv, k_cache, v_cache, position, qk_factor_2H1):
        rows, l, _ = qkv.shape
        H, D = k_cache.shape[1], k_cache.shape[3]
        qkv = qkv.view(rows, l, 3, H, D)
        k_dst = k_cache[:, :, position : position + l].transpose(1, 2)
        v_dst = v_cache[:, :, position : position + l].transpose(1, 2)
        if qk_factor_2H1 is not None:
            norm = torch.linalg.vector_norm(qkv[:, :, :2], dim=-1, keepdim=True, dtype=torch.float32)
            inv = qk_factor_2H1 / norm.clamp_min(1e-12)
            q = torch.empty((rows, l, H, D), dtype=qkv.dtype, device=qkv.device)
            torch.mul(qkv[:, :, 0], inv[:, :, 0], out=q)
            torch.mul(qkv[:, :, 1], inv[:, :, 1], out=k_dst)
        else:
            q = qkv[:, :, 0]
            k_dst.copy_(qkv[:, :, 1])
        v_dst.copy_(qkv[:, :, 2])
        return q

    def fc1_gelu(self, h, weight, bias):
        return F.gelu(F.linear(h, weight, bias), approximate="tanh")


class TritonBlockOps(BlockOps):
    """The fused steps as Triton kernels (:mod:`sdvar_lib.fast.kernels.block`) and cuBLASLt's GELU epilogue."""

    name = "triton"

    def __init__(self) -> None:
        from sdvar_lib.fast.kernels import attention, block

        self._k = block
        self._attention = attention

    def add_ln_modulate(self, x, scale, shift, eps, o=None, gate=None, h_dtype=None):
        return self._k.add_ln_modulate(x, scale, shift, eps, o=o, gate=gate, h_dtype=h_dtype)

    def qk_norm_into_cache(self, qkv, k_cache, v_cache, position, qk_factor_2H1):
        factor = None if qk_factor_2H1 is None else qk_factor_2H1[0, :, 0]
        return self._k.qk_norm_into_cache(qkv, k_cache, v_cache, position, factor)

    def fc1_gelu(self, h, weight, bias):
        if not h.is_cuda:  # on the CPU _addmm_activation's GELU is the erf one, not VAR's tanh approximation
            return F.gelu(F.linear(h, weight, bias), approximate="tanh")
        rows, l, C = h.shape
        # cuBLASLt applies the tanh GELU to the float32 accumulator (PyTorch falls back to addmm + tanh gelu)
        return torch._addmm_activation(bias, h.view(rows * l, C), weight.t(), use_gelu=True).view(rows, l, -1)

    def stage_attention_supported(self, head_dim: int) -> bool:
        """Whether :meth:`stage_attention` is one kernel for heads of ``head_dim`` channels."""
        return self._attention.stage_attention_supported(head_dim)

    def query_block(self, l: int) -> int:
        """Queries per program of the stage attention kernel for a stage of ``l`` tokens (a compiled version each)."""
        return self._attention.query_block(l)

    def stage_attention(self, qkv, k_cache, v_cache, position, qk_factor_2H1, scale):
        if not self.stage_attention_supported(k_cache.shape[3]):
            return super().stage_attention(qkv, k_cache, v_cache, position, qk_factor_2H1, scale)
        factor = None if qk_factor_2H1 is None else qk_factor_2H1[0, :, 0]
        return self._attention.stage_attention(qkv, k_cache, v_cache, position, factor, scale)


def check_block_ops(ops: BlockOps, C: int, H: int, dtype: torch.dtype, device: torch.device) -> str | None:
    """Run ``ops`` once on random inputs of a model's sizes against :class:`TorchBlockOps`; the problem, or ``None``.

    Compiles the kernels a run will use (outside any CUDA graph) and catches a GPU or Triton
    version that cannot build or run them, so that the fast path can fall back to PyTorch.
    """
    ref, rows, l, D = TorchBlockOps(), 2, 3, C // H
    gen = torch.Generator(device=device).manual_seed(0)

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(shape, generator=gen, device=device).to(dtype)

    x, o, mods = rand(rows, l, C), rand(rows, l, C), rand(rows, 6, C)
    head_ss = torch.randn(rows, 2, C, generator=gen, device=device)  # the head's float32 modulations
    qkv, factor = rand(rows, l, 3 * C), torch.rand(2, H, 1, generator=gen, device=device) + 0.5
    factor[1] = 1
    w, b = rand(2 * C, C), rand(2 * C)
    prefix = rand(2, rows, H, l + 2, D)  # a cached prefix for the stage attention to attend to
    tol = 1e-4 if dtype == torch.float32 else 3e-2
    try:
        pairs = []
        for impl in (ops, ref):  # the forms the pass launches: first block, residual + AdaLN, (half) head
            out = [impl.add_ln_modulate(x, mods[:, 2], mods[:, 4], 1e-6)[1],
                   *impl.add_ln_modulate(x, mods[:, 3], mods[:, 5], 1e-6, o=o, gate=mods[:, 0]),
                   impl.add_ln_modulate(x, head_ss[:, 0], head_ss[:, 1], 1e-6, o=o, gate=mods[:, 1])[1]]
            caches = [torch.zeros(rows, H, l + 2, D, dtype=dtype, device=device) for _ in range(2)]
            out.append(impl.qk_norm_into_cache(qkv, caches[0], caches[1], 1, factor))
            out += [*caches, impl.fc1_gelu(x, w, b)]
            caches = list(prefix.clone())
            out += [impl.stage_attention(qkv, caches[0], caches[1], 2, factor, D**-0.5), *caches]
            pairs.append(out)
        names = ("first", "residual", "modulated", "head", "q", "k", "v", "gelu", "stage attention",
                 "attention's k", "attention's v")
        for name, got, want in zip(names, *pairs):
            err = float((got.float() - want.float()).norm() / want.float().norm().clamp_min(1e-30))
            if not err <= tol:
                return f"{ops.name} {name} differs from PyTorch by {err:.2e} (relative)"
    except Exception as exc:  # a kernel that cannot compile or run on this GPU
        return f"{ops.name} kernels failed: {type(exc).__name__}: {exc}"
    return None


def block_warmups(ops: BlockOps, model: VAR, dtype: torch.dtype, device: torch.device,
                  half_head: bool, stage_attention: bool = True) -> list[Callable[[], object]]:
    """The launches :meth:`FusedPass.step` and :func:`check_block_ops` make of ``ops``' kernels for ``model``, on
    tensors of two rows and one token: the warm-ups of :mod:`sdvar_lib.fast.kernels.precompile` (rule 2).

    Same kernels, dtypes, flags and sizes (so the same divisibility) as the pass: its first block's AdaLN, the
    residual + AdaLN of every block, the head's (float32 modulations, its ``h`` dtype), the q/k norm (with or
    without the model's L2 norm), and the check's forms of the head (half) and q/k (normed) where they differ;
    with ``stage_attention`` the single-stage attention (:meth:`BlockOps.stage_attention`) at every query block its
    stages after the first use.
    """
    C, H = model.C, model.num_heads
    D, eps = C // H, model.blocks[0].ln_wo_grad.eps

    def zeros(*shape: int, dt: torch.dtype = dtype) -> torch.Tensor:
        return torch.zeros(shape, dtype=dt, device=device)

    x, ada, qkv, cache = zeros(2, 1, C), zeros(2, 6, C), zeros(2, 1, 3 * C), zeros(2, H, 2, D)
    head_ss = zeros(2, 2, C, dt=torch.float32)
    factor = torch.ones(2, H, 1, dtype=torch.float32, device=device)
    head_h = dtype if half_head else torch.float32
    l2 = model.blocks[0].attn.attn_l2_norm
    attention = []
    if stage_attention and isinstance(ops, TritonBlockOps) and ops.stage_attention_supported(D):
        # one stage per query block, with the pass's q/k norm; then the check's form (3 tokens, normed)
        forms = [*{ops.query_block(pn * pn): (pn * pn, factor if l2 else None) for pn in model.patch_nums[1:]}.values(),
                 (3, factor)]
        attention = [lambda l=l, f=f: ops.stage_attention(zeros(2, l, 3 * C), zeros(2, H, l, D), zeros(2, H, l, D), 0,
                                                          f, 1.0) for l, f in forms]
    return attention + [
        lambda: ops.add_ln_modulate(x, ada[:, 2], ada[:, 4], eps),
        lambda: ops.add_ln_modulate(x, ada[:, 3], ada[:, 5], eps, o=x, gate=ada[:, 0]),
        lambda: ops.add_ln_modulate(x, head_ss[:, 0], head_ss[:, 1], eps, o=x, gate=ada[:, 1], h_dtype=head_h),
        lambda: ops.add_ln_modulate(x, head_ss[:, 0], head_ss[:, 1], eps, o=x, gate=ada[:, 1]),
        lambda: ops.qk_norm_into_cache(qkv, cache, cache, 0, factor),
        lambda: ops.qk_norm_into_cache(qkv, cache, cache, 0, factor if l2 else None),
    ]


HEADS = ("auto", "float32", "half")
STAGE_ATTENTIONS = ("auto", "sdpa", "fused")
"""How the fused pass of a single stage attends (``FastConfig.stage_attention``): the q/k norm kernel and PyTorch's
SDPA, one Triton kernel for both (:meth:`BlockOps.stage_attention`), or the one measured faster
(:func:`fused_stage_pays`)."""
CHUNK_ATTENTIONS = ("auto", "masked", "per_stage")
"""How a chunk of several stages attends (``FastConfig.chunk_attention``): one attention with the block-causal mask,
one unmasked attention per stage, or the one measured faster for the chunk's size (:func:`per_stage_pays`)."""


def half_head_matmul(h: torch.Tensor, weight: torch.Tensor, bias32: torch.Tensor, out: torch.Tensor) -> None:
    """``out = h @ weight.T + bias32`` with half-precision operands, float32 accumulation and float32 output."""
    torch.mm(h, weight.t(), out_dtype=torch.float32, out=out)
    out.add_(bias32)


def check_half_head(dtype: torch.dtype, device: torch.device) -> str | None:
    """``None`` when :func:`half_head_matmul` runs here and matches a float32 product; else the problem."""
    gen = torch.Generator(device=device).manual_seed(0)
    h, w = (torch.randn(shape, generator=gen, device=device) for shape in ((6, 64), (48, 64)))
    b = torch.randn(48, generator=gen, device=device)
    try:
        out = torch.empty(6, 48, device=device)
        half_head_matmul(h.to(dtype), w.to(dtype), b, out)
    except Exception as exc:  # no mixed-dtype matmul for this device or PyTorch
        return f"{type(exc).__name__}: {exc}"
    want = torch.addmm(b, h.to(dtype).float(), w.to(dtype).float().t())
    err = float((out - want).norm() / want.norm())
    return None if err < 1e-3 else f"half head differs from float32 by {err:.1e}"


def block_ops(backend: str) -> BlockOps:
    """The :class:`BlockOps` of a resolved backend (``"triton"`` or ``"torch"``)."""
    if backend == "triton":
        return TritonBlockOps()
    if backend == "torch":
        return TorchBlockOps()
    raise ValueError(f"block ops backend must be 'triton' or 'torch', got {backend!r}")


@dataclass(frozen=True)
class ChunkAttention:
    """How a pass's queries attend to the cache: ``mask`` (additive, block-causal) for one masked attention over a
    chunk of several stages, ``stage_ends`` for one unmasked attention per stage, neither for a single stage - then
    ``fused``: through :meth:`BlockOps.stage_attention` (one Triton kernel with the q/k norm and the cache write)
    instead of the q/k norm kernel and PyTorch's SDPA."""

    mask: torch.Tensor | None = None
    stage_ends: tuple[int, ...] | None = None
    fused: bool = False


PER_STAGE_MIN_SAVED = 9 << 19
"""Scores (query-key pairs times rows times heads, per layer) that a chunk's per-stage attention must save over the
masked one for each launch it adds before ``chunk_attention="auto"`` takes it (:func:`per_stage_pays`): 4.5 x 2^20,
from graph replays of d16 and d30 verify chunks at batch 1-32 (one H200, 12-03, ``scripts/device_pass_profile.py
--chunks``): below about 4 x 2^20 per added launch the masked pass was as fast or faster (the launches and the copy
cost more than the dropped scores), above about 5 x 2^20 the per-stage pass was faster, by up to 1.11x."""


def dropped_scores(position: int, stage_ends: tuple[int, ...]) -> int:
    """Query-key pairs that a chunk's masked attention computes and its mask drops (per row and head): the chunk's
    rectangle ``l x (position + l)`` less each stage's queries times the keys up to its end."""
    l = stage_ends[-1]
    kept, begin = 0, 0
    for end in stage_ends:
        kept += (end - begin) * (position + end)
        begin = end
    return l * (position + l) - kept


def per_stage_pays(rows_heads: int, position: int, stage_ends: tuple[int, ...]) -> bool:
    """Whether one attention per stage beats one masked attention for a chunk at ``position`` whose stages end at
    ``stage_ends``, with ``rows_heads`` (CFG-doubled rows times heads) attention problems per layer: the scores the
    mask drops must make up for the launches added (one per stage but the first) and the copy of the outputs, at
    least :data:`PER_STAGE_MIN_SAVED` per added launch."""
    return rows_heads * dropped_scores(position, stage_ends) >= PER_STAGE_MIN_SAVED * (len(stage_ends) - 1)


FUSED_STAGE_MAX_SCORES = 5 << 20
"""Most scores (queries times keys times rows times heads, per layer) of a single stage that
``stage_attention="auto"`` sends through the fused kernel (:func:`fused_stage_pays`): 5 x 2^20, from graph replays of
every single-stage pass (1-9) of d16 and d30 at batch 1, 8 and 32 (one H200, 12-03, ``scripts/device_pass_profile.py
--stages``): every pass up to 4.5 x 2^20 scores was faster fused (x1.006-1.16: two launches and cuDNN's memset
less), every pass from 6.2 x 2^20 on with more than one row pair slower (x0.91-0.98 at the last stages of batch 8 and
32, where cuDNN's attention is the better matrix kernel); the four passes above the cut that were faster fused (d16
and d30 stage 6 and d30 stage 5 at batch 32, d16 stage 9 at batch 1) would gain under 0.6 ms per model and call.
Measured with the kernel pipelined; unpipelined (as it ships) the d30 passes at batch 1 and 8 kept every choice (batch
1 stage 8 x1.001, stage 9 x0.970 left to cuDNN)."""


def fused_stage_pays(rows_heads: int, position: int, l: int) -> bool:
    """Whether a single stage of ``l`` queries at ``position`` attends faster through the one fused kernel than
    through the q/k norm kernel and PyTorch's SDPA, with ``rows_heads`` (CFG-doubled rows times heads) attention
    problems per layer: its scores ``rows_heads * l * (position + l)`` at most :data:`FUSED_STAGE_MAX_SCORES`."""
    return rows_heads * l * (position + l) <= FUSED_STAGE_MAX_SCORES


def chunk_stage_ends(stage_of_position: Sequence[int], position: int, length: int) -> tuple[int, ...]:
    """Where each stage of the chunk ``position .. position + length - 1`` ends, counted from the chunk's start.

    ``stage_of_position[p]``: the stage of cache position ``p`` (non-decreasing). A block-causal mask lets a query
    see every key of its own and earlier stages that the chunk has written, so a stage's queries see the cache up
    to ``position + end``.
    """
    if length < 1 or position < 0 or position + length > len(stage_of_position):
        raise ValueError(f"chunk of {length} tokens at {position} does not fit {len(stage_of_position)} positions")
    ends = [p - position for p in range(position + 1, position + length)
            if stage_of_position[p] != stage_of_position[p - 1]]
    return (*ends, length)


def _cached_attention(q_BlHc: torch.Tensor, k_BHLc: torch.Tensor, v_BHLc: torch.Tensor, end: int, scale: float,
                      mask: torch.Tensor | None = None) -> torch.Tensor:
    """PyTorch's SDPA of the queries ``(rows, l, H, c)`` against the cache up to ``end`` (with an additive ``mask``, if
    given), laid out as the projection reads it: ``(rows, l, H * c)``, contiguous."""
    rows, l, H, c = q_BlHc.shape
    return F.scaled_dot_product_attention(q_BlHc.transpose(1, 2), k_BHLc[:, :, :end], v_BHLc[:, :, :end],
                                          attn_mask=mask, scale=scale).transpose(1, 2).reshape(rows, l, H * c)


def _attention_per_stage(q_BlHc: torch.Tensor, k_BHLc: torch.Tensor, v_BHLc: torch.Tensor, position: int,
                         stage_ends: tuple[int, ...], scale: float) -> torch.Tensor:
    """A chunk's block-causal attention as one unmasked attention per stage: ``(rows, l, H, c)``.

    The same result as the masked attention (a masked key's weight is exactly 0) without the work on the masked
    keys: a verify chunk of stages 5-9 computes 625 x 680 scores masked and 284k of those 425k per stage.
    """
    q_BHlc, parts, begin = q_BlHc.transpose(1, 2), [], 0
    for end in stage_ends:
        kv_end = position + end
        parts.append(F.scaled_dot_product_attention(
            q_BHlc[:, :, begin:end], k_BHLc[:, :, :kv_end], v_BHLc[:, :, :kv_end], scale=scale).transpose(1, 2))
        begin = end
    return torch.cat(parts, dim=1)


class FusedPass:
    """Per-call constants and the fused pass of one model at one CFG-doubled batch of ``rows``."""

    def __init__(self, model: VAR, rows: int, dtype: torch.dtype, device: torch.device, ops: BlockOps | None = None,
                 half_head: bool = False) -> None:
        C, H, depth = model.C, model.num_heads, model.depth
        self.model, self.rows, self.dtype = model, rows, dtype
        self.ops = ops or TorchBlockOps()
        self.half_head = half_head
        self.ada_N2B6C = torch.zeros(depth, rows, 6, C, dtype=dtype, device=device)
        self.qkv_bias_N3C = torch.zeros(depth, 3 * C, dtype=dtype, device=device)
        self.qk_factor_N2H1 = torch.ones(depth, 2, H, 1, dtype=torch.float32, device=device)
        self.head_ss_2B2C = torch.zeros(rows, 2, C, dtype=torch.float32, device=device)
        self.head_w32 = torch.zeros(0 if half_head else model.V, C, dtype=torch.float32, device=device)
        self.head_b32 = torch.zeros(model.V, dtype=torch.float32, device=device)

    @staticmethod
    def supports(model: VAR) -> bool:
        """The fused pass needs per-block AdaLN (``shared_aln=False``, as in the released models)."""
        return not model.blocks[0].shared_aln

    def prologue(self, cond_2BD: torch.Tensor) -> None:
        """Compute the per-call constants from the CFG-doubled class condition."""
        model, rows, C = self.model, self.rows, self.model.C
        act_2BD = F.silu(cond_2BD)
        for i, block in enumerate(model.blocks):
            lin = block.ada_lin[1]
            torch.addmm(lin.bias, act_2BD, lin.weight.t(), out=self.ada_N2B6C[i].view(rows, 6 * C))
        self.ada_N2B6C[:, :, 2:4].add_(1)
        head_lin = model.head_nm.ada_lin[1]
        torch.addmm(head_lin.bias.float(), F.silu(cond_2BD.float()), head_lin.weight.float().t(),
                    out=self.head_ss_2B2C.view(rows, 2 * C))
        self.head_ss_2B2C[:, 0].add_(1)
        if not self.half_head:
            self.head_w32.copy_(model.head.weight)
        self.head_b32.copy_(model.head.bias)
        self.qkv_bias_N3C[:, :C].copy_(torch.stack([b.attn.q_bias for b in model.blocks]))
        self.qkv_bias_N3C[:, 2 * C :].copy_(torch.stack([b.attn.v_bias for b in model.blocks]))
        if model.blocks[0].attn.attn_l2_norm:
            scale_mul = torch.stack([b.attn.scale_mul_1H11.reshape(-1) for b in model.blocks]).float()
            self.qk_factor_N2H1[:, 0, :, 0].copy_(scale_mul.clamp_max(MAX_SCALE_MUL).exp())

    def step(self, x: torch.Tensor, cache: KVCache, position: int, mask: torch.Tensor | None, out_2BlV: torch.Tensor,
             stage_ends: tuple[int, ...] | None = None, fused_stage: bool = False) -> None:
        """One pass over the chunk ``x`` ``(rows, l, C)`` at ``position``; float32 logits into ``out_2BlV``.

        A chunk of several stages attends with the additive block-causal ``mask``, or, given ``stage_ends`` (each
        stage's end within the chunk, the last one ``l``), with one unmasked attention per stage, its queries
        against the cache up to its end (:func:`chunk_stage_ends`). A single stage (neither) attends through
        :meth:`BlockOps.stage_attention` with ``fused_stage``, else through the q/k norm kernel and PyTorch's SDPA.
        """
        model, rows, ops = self.model, self.rows, self.ops
        l, C, depth = x.shape[1], model.C, model.depth
        end = position + l
        alone = end == 1 and mask is None  # the first token attends to itself only (the first stage's pass)
        ada = self.ada_N2B6C  # per block (rows, 6, C): gamma1, gamma2, 1 + scale1, 1 + scale2, shift1, shift2
        eps0 = model.blocks[0].ln_wo_grad.eps
        x, h = ops.add_ln_modulate(x, ada[0, :, 2], ada[0, :, 4], eps0)
        for i, block in enumerate(model.blocks):
            attn, ffn, eps = block.attn, block.ffn, block.ln_wo_grad.eps
            qkv = F.linear(h, attn.mat_qkv.weight, self.qkv_bias_N3C[i])
            factor = self.qk_factor_N2H1[i] if attn.attn_l2_norm else None
            k_cache, v_cache = cache.k_NBHLc[i], cache.v_NBHLc[i]
            if alone:  # one query, one key: its softmax weight is exactly 1, so attention returns v bit for bit
                ops.qk_norm_into_cache(qkv, k_cache, v_cache, position, factor)
                o = qkv[:, :, 2 * C :].contiguous()  # laid out as attention's output: the same projection kernel
            elif fused_stage:
                o = ops.stage_attention(qkv, k_cache, v_cache, position, factor, attn.scale)
            else:
                q = ops.qk_norm_into_cache(qkv, k_cache, v_cache, position, factor)
                if stage_ends is not None:
                    o = _attention_per_stage(q, k_cache, v_cache, position, stage_ends, attn.scale).reshape(rows, l, C)
                else:
                    o = _cached_attention(q, k_cache, v_cache, end, attn.scale, mask)
            o = F.linear(o, attn.proj.weight, attn.proj.bias)
            x, h = ops.add_ln_modulate(x, ada[i, :, 3], ada[i, :, 5], eps, o=o, gate=ada[i, :, 0])
            f = F.linear(ops.fc1_gelu(h, ffn.fc1.weight, ffn.fc1.bias), ffn.fc2.weight, ffn.fc2.bias)
            if i + 1 < depth:
                nxt = ada[i + 1]
                x, h = ops.add_ln_modulate(x, nxt[:, 2], nxt[:, 4], model.blocks[i + 1].ln_wo_grad.eps, o=f,
                                           gate=ada[i, :, 1])
            else:
                hs = self.head_ss_2B2C
                x, h = ops.add_ln_modulate(x, hs[:, 0], hs[:, 1], model.head_nm.ln_wo_grad.eps, o=f, gate=ada[i, :, 1],
                                           h_dtype=self.dtype if self.half_head else torch.float32)
        out = out_2BlV.view(rows * l, model.V)
        if self.half_head:  # the head's weights as they are (half precision), float32 accumulation and logits
            half_head_matmul(h.view(rows * l, C), model.head.weight, self.head_b32, out)
        else:
            torch.addmm(self.head_b32, h.view(rows * l, C), self.head_w32.t(), out=out)
