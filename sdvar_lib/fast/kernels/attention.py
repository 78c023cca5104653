"""One Triton kernel for a single stage's attention: q/k norm, the KV cache write and the attention in one launch.

Import only where Triton can run (see :mod:`sdvar_lib.fast.kernels`). The fused pass's single-stage attention is
otherwise two launches and a memset: :func:`~sdvar_lib.fast.kernels.block.qk_norm_into_cache` (q to a new tensor,
k and v into the cache) and cuDNN's attention through ``F.scaled_dot_product_attention`` (which also clears a buffer
before every call). At batch 1 those are a few µs of work each and about as much launch latency between them: in a
d30 call's 300 layers' passes ~1.7 ms of kernels and ~850 launches (one H200, 12-03).

:func:`stage_attention` does the same in one launch, one program per (row, head, block of queries):

1. its queries from ``qkv``, L2-normalised and scaled by the head's factor in float32 and rounded to the model's
   dtype - the values ``qk_norm_into_cache`` stores, bit for bit;
2. online softmax (base 2, float32 statistics and accumulator) over the cache's prefix ``[0, position)``, then over
   the stage's own keys, normalised from ``qkv`` the same way (each query block's program normalises them again:
   a stage has at most a few hundred keys of 64 channels);
3. the first query block's program of each (row, head) writes the stage's normalised keys and its values into the
   cache at ``[position, position + l)``, for the later stages' passes (which are later launches).

Every query sees every key (a single stage: no mask). Scores and the softmax weights' products with ``v`` are in
the model's dtype with float32 accumulation, as flash attention computes them; the output differs from PyTorch's
kernels by rounding only (order of the sums). Heads of 16-128 channels (a power of two).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from sdvar_lib.fast.kernels.precompile import launch

__all__ = ["stage_attention", "stage_attention_supported", "query_block"]

SIZES = ["l", "pos"]  # change from stage to stage: unspecialised, one compiled version per model and query block
NUM_STAGES = 1
"""No software pipelining of the key loops. Pipelined (Triton's default, Triton 3.6 on one H200, 12-03) a d16 pass at
batch 2 gave other logits at stage 9 from one graph replay to the next (a race in the compiled kernel: a sampled token
differed; with 64-query blocks, the Hopper matrix instructions); unpipelined, every replay of 10 stages x 4 runs
gave the same bits."""
LOG2E = 1.4426950408889634  # 1 / ln 2: exp(x) = exp2(x * LOG2E)


@triton.jit
def _online_softmax_step(q, kT, v, n_ok, m_i, l_i, acc, scale_log2, PRECISION: tl.constexpr, P_DTYPE: tl.constexpr):
    """One block of keys ``kT`` ``(D, BLOCK_N)`` and values ``v`` (``n_ok``: which are real) into the running maximum
    ``m_i``, sum ``l_i`` and accumulator ``acc`` of the queries ``q`` (base-2 scores; the weights rounded to ``P_DTYPE``,
    the values' dtype on the GPU, before their product with ``v``)."""
    s = tl.dot(q, kT, input_precision=PRECISION) * scale_log2
    s = tl.where(n_ok[None, :], s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, axis=1))
    alpha = tl.exp2(m_i - m_new)
    p = tl.exp2(s - m_new[:, None])
    l_i = l_i * alpha + tl.sum(p, axis=1)
    acc = acc * alpha[:, None] + tl.dot(p.to(P_DTYPE).to(v.dtype), v, input_precision=PRECISION)
    return m_new, l_i, acc


@triton.jit(do_not_specialize=SIZES)
def _stage_attention_kernel(
    QKV, KC, VC, O, F,
    l, pos, H, stride_b, stride_h, stride_t, scale_log2, eps,
    NORM: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    D: tl.constexpr,
):
    bh = tl.program_id(0)
    r = bh // H
    h = bh % H
    pm = tl.program_id(1)
    C = H * D
    offs_m = pm * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, D)
    m_ok = offs_m < l
    base = QKV + r * l * 3 * C + h * D  # this row's and head's q; + C its k, + 2C its v
    q = tl.load(base + offs_m[:, None] * 3 * C + offs_d[None, :], mask=m_ok[:, None], other=0.0).to(tl.float32)
    if NORM:
        factor = tl.load(F + h).to(tl.float32)
        q = q * (factor / tl.maximum(tl.sqrt(tl.sum(q * q, axis=1)), eps))[:, None]
    q = q.to(KC.dtype.element_ty)
    if UPCAST:  # the CPU interpreter's half-precision tl.dot is wrong: the same rounded values in float32
        q = q.to(tl.float32)
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, D], tl.float32)
    kc = KC + r * stride_b + h * stride_h
    vc = VC + r * stride_b + h * stride_h
    for start in range(0, pos, BLOCK_N):  # the cached prefix: earlier stages' keys, normalised when written
        offs_n = start + tl.arange(0, BLOCK_N)
        n_ok = offs_n < pos
        kT = tl.load(kc + offs_n[None, :] * stride_t + offs_d[:, None], mask=n_ok[None, :], other=0.0)
        v = tl.load(vc + offs_n[:, None] * stride_t + offs_d[None, :], mask=n_ok[:, None], other=0.0)
        if UPCAST:
            kT = kT.to(tl.float32)
            v = v.to(tl.float32)
        m_i, l_i, acc = _online_softmax_step(q, kT, v, n_ok, m_i, l_i, acc, scale_log2, PRECISION,
                                             VC.dtype.element_ty)
    for start in range(0, l, BLOCK_N):  # the stage's own keys, from qkv
        offs_n = start + tl.arange(0, BLOCK_N)
        n_ok = offs_n < l
        src = base + offs_n[:, None] * 3 * C + offs_d[None, :]
        k = tl.load(src + C, mask=n_ok[:, None], other=0.0).to(tl.float32)
        if NORM:
            k = k * (1.0 / tl.maximum(tl.sqrt(tl.sum(k * k, axis=1)), eps))[:, None]
        k = k.to(KC.dtype.element_ty)
        v = tl.load(src + 2 * C, mask=n_ok[:, None], other=0.0).to(VC.dtype.element_ty)
        dst = (pos + offs_n)[:, None] * stride_t + offs_d[None, :]
        first = n_ok[:, None] & (pm == 0)
        tl.store(kc + dst, k, mask=first)
        tl.store(vc + dst, v, mask=first)
        if UPCAST:
            k = k.to(tl.float32)
            v = v.to(tl.float32)
        m_i, l_i, acc = _online_softmax_step(q, tl.trans(k), v, n_ok, m_i, l_i, acc, scale_log2, PRECISION,
                                             VC.dtype.element_ty)
    out = acc / l_i[:, None]
    tl.store(O + (r * l + offs_m)[:, None] * C + h * D + offs_d[None, :], out.to(O.dtype.element_ty),
             mask=m_ok[:, None])


def query_block(l: int) -> int:
    """Queries per program: 16 (the smallest ``tl.dot`` tile) up to 64, the stage's length rounded up."""
    return max(16, min(64, triton.next_power_of_2(l)))


def stage_attention_supported(head_dim: int) -> bool:
    """Whether :func:`stage_attention` takes heads of ``head_dim`` channels (a power of two, 16-128)."""
    return 16 <= head_dim <= 128 and head_dim & (head_dim - 1) == 0


def stage_attention(
    qkv: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    position: int,
    q_factor: torch.Tensor | None,
    scale: float,
    eps: float = 1e-12,
) -> torch.Tensor:
    """A single stage's attention output ``(rows, l, H * D)`` from its ``qkv`` ``(rows, l, 3C)``; k, v into the cache.

    The same contract as ``qk_norm_into_cache`` followed by an unmasked ``F.scaled_dot_product_attention`` of the
    queries against the cache up to ``position + l`` with ``scale``: ``k_cache``/``v_cache`` are one layer's
    ``(rows, H, max_length, D)`` tensors, the stage goes to ``[position, position + l)``; with ``q_factor``
    (``(H,)`` float32) q and k are L2-normalised and q multiplied by its head's factor.
    """
    rows, l, C3 = qkv.shape
    _, H, length, D = k_cache.shape
    if C3 != 3 * H * D or not qkv.is_contiguous() or k_cache.stride() != v_cache.stride() or k_cache.stride(3) != 1:
        raise ValueError("stage_attention needs a contiguous qkv of width 3 * H * D and caches of one layout")
    if not stage_attention_supported(D):
        raise ValueError(f"stage_attention takes heads of 16-128 channels, a power of two; got {D}")
    if position < 0 or position + l > length:
        raise ValueError(f"a stage of {l} tokens at {position} does not fit a cache of {length} positions")
    out = torch.empty((rows, l, H * D), dtype=qkv.dtype, device=qkv.device)
    norm = q_factor is not None
    block_m = query_block(l)
    sb, sh, st, _ = k_cache.stride()
    precision = "ieee" if qkv.dtype == torch.float32 else "tf32"  # float32 models: no TF32 rounding of the scores
    launch(
        _stage_attention_kernel, (rows * H, triton.cdiv(l, block_m)),
        qkv, k_cache, v_cache, out, q_factor if norm else qkv, l, position, H, sb, sh, st, scale * LOG2E, eps,
        NORM=norm, PRECISION=precision, UPCAST=qkv.device.type == "cpu", BLOCK_M=block_m, BLOCK_N=64, D=D, num_warps=4,
        num_stages=NUM_STAGES,
    )
    return out

