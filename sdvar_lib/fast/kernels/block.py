"""Triton kernels of the fused VAR block (import only where Triton can run: see :mod:`sdvar_lib.fast.kernels`).

Two kernels replace the elementwise and reduction kernels around a block's matrix products:

- :func:`add_ln_modulate`: ``x += o * gate`` (optional), then ``h = LayerNorm(x) * scale + shift``
  with the AdaLN vectors of the row's sample — one read of ``x`` and ``o``, one write of ``x`` and
  ``h``, instead of addcmul + layer_norm + addcmul. With a float32 ``h`` it is the head's AdaLN.
- :func:`qk_norm_into_cache`: from the ``qkv`` product, ``q / |q| * factor`` to a new tensor and
  ``k / |k|``, ``v`` straight into the KV cache at their positions (one kernel instead of norm,
  clamp, divide, two multiplications and a copy).

Every value is computed in float32 and rounded once to the output's dtype. PyTorch equivalents
live in :mod:`sdvar_lib.fast.fused` (``TorchBlockOps``).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from sdvar_lib.fast.kernels.precompile import launch

__all__ = ["add_ln_modulate", "qk_norm_into_cache"]

# Sizes that change from chunk to chunk (rows, tokens, cache position) are plain runtime arguments: left to Triton,
# each value that is 1 or a multiple of 16 would compile a kernel of its own. A cold process compiled 26 versions
# of the first kernel and 13 of the second for one d16 -> d30 call (H200, 2026-12-02; 8 and 2 with these sizes
# unspecialised). Strides stay specialised: they are fixed per model (multiples of the width, always divisible by
# 16), so they add no version and let Triton vectorise the loads of the modulation rows and the cache writes.
SIZES_ADD_LN = ["M", "l"]
SIZES_QK_NORM = ["M", "l", "pos"]


@triton.jit(do_not_specialize=SIZES_ADD_LN)
def _add_ln_modulate_kernel(
    X, O, G, S, SH, XOUT, HOUT,
    M, l, C, stride_mod, stride_gate, eps,
    HAS_RES: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)  # token rows of the (rows * l, C) activations
    r = rows // l  # their sample rows (AdaLN vectors are per sample)
    cols = tl.arange(0, BLOCK_C)
    mask = (rows < M)[:, None] & (cols < C)[None, :]
    offs = rows[:, None] * C + cols[None, :]
    x = tl.load(X + offs, mask=mask, other=0.0).to(tl.float32)
    if HAS_RES:
        o = tl.load(O + offs, mask=mask, other=0.0).to(tl.float32)
        g = tl.load(G + r[:, None] * stride_gate + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        x_new = (x + o * g).to(XOUT.dtype.element_ty)
        tl.store(XOUT + offs, x_new, mask=mask)
        x = x_new.to(tl.float32)  # the norm reads the residual as stored, as the eager block does
    mean = tl.sum(x, axis=1) / C
    d = tl.where(mask, x - mean[:, None], 0.0)
    var = tl.sum(d * d, axis=1) / C
    rstd = 1.0 / tl.sqrt(var + eps)
    s = tl.load(S + r[:, None] * stride_mod + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    sh = tl.load(SH + r[:, None] * stride_mod + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    tl.store(HOUT + offs, (d * rstd[:, None] * s + sh).to(HOUT.dtype.element_ty), mask=mask)


def rows_per_program(rows: int, width: int, device: torch.device) -> int:
    """Rows a program handles: on a GPU about 2048 values per program; in the CPU interpreter as many
    as fit 2**16 values (each program is a Python loop there, so fewer programs run much faster)."""
    budget = 1 << 16 if device.type == "cpu" else 2048
    return max(1, min(triton.next_power_of_2(rows), budget // width))


def _warps(n: int) -> int:
    return 4 if n <= 1024 else 8


def add_ln_modulate(
    x: torch.Tensor,
    scale: torch.Tensor,
    shift: torch.Tensor,
    eps: float,
    o: torch.Tensor | None = None,
    gate: torch.Tensor | None = None,
    h_dtype: torch.dtype | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x + o * gate, LayerNorm(x + o * gate) * scale + shift)`` for ``x``, ``o`` ``(rows, l, C)``.

    ``scale``/``shift`` (one common row stride) and ``gate`` are ``(rows, C)`` views with unit stride
    along ``C`` (e.g. slices of the per-call AdaLN tables); ``scale`` already holds ``1 + scale``.
    Without ``o`` the first output is ``x`` itself. ``h`` has dtype ``h_dtype`` (default ``x``'s).
    """
    rows, l, C = x.shape
    mods = [t for t in (scale, shift, gate) if t is not None]
    stride = scale.stride(0)
    if (not x.is_contiguous() or shift.stride(0) != stride
            or any(t.stride(1) != 1 or tuple(t.shape) != (rows, C) for t in mods)):
        raise ValueError("add_ln_modulate needs contiguous activations, (rows, C) modulations with unit column "
                         "stride and one row stride for scale and shift")
    h = torch.empty(x.shape, dtype=h_dtype or x.dtype, device=x.device)
    has_res = o is not None
    if has_res:
        if gate is None or o.shape != x.shape or not o.is_contiguous():
            raise ValueError("the residual form needs a contiguous o shaped like x and a gate")
        x_out = torch.empty_like(x)
    else:
        o, gate, x_out = x, scale, x  # unused by the kernel
    block = triton.next_power_of_2(C)
    M = rows * l
    block_m = rows_per_program(M, block, x.device)
    launch(
        _add_ln_modulate_kernel, (triton.cdiv(M, block_m),),
        x, o, gate, scale, shift, x_out, h, M, l, C, stride, gate.stride(0), eps, HAS_RES=has_res, BLOCK_M=block_m,
        BLOCK_C=block, num_warps=_warps(block_m * block),
    )
    return x_out, h


@triton.jit(do_not_specialize=SIZES_QK_NORM)
def _qk_norm_cache_kernel(
    QKV, Q, K, V, F,
    M, l, pos, H, D, stride_b, stride_h, stride_t, eps,
    NORM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_D: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)  # token rows of qkv (rows * l, 3 * H * D)
    mm = rows[:, None, None]
    r = mm // l
    t = mm % l
    heads = tl.arange(0, BLOCK_H)
    hh = heads[None, :, None]
    dd = tl.arange(0, BLOCK_D)[None, None, :]
    mask = (mm < M) & (hh < H) & (dd < D)
    C = H * D
    src = QKV + mm * 3 * C + hh * D + dd
    q = tl.load(src, mask=mask, other=0.0).to(tl.float32)
    k = tl.load(src + C, mask=mask, other=0.0).to(tl.float32)
    v = tl.load(src + 2 * C, mask=mask, other=0.0)
    if NORM:
        factor = tl.load(F + heads, mask=heads < H, other=1.0).to(tl.float32)
        q_norm = tl.sqrt(tl.sum(q * q, axis=2))
        k_norm = tl.sqrt(tl.sum(k * k, axis=2))
        q = q * (factor[None, :] / tl.maximum(q_norm, eps))[:, :, None]
        k = k * (1.0 / tl.maximum(k_norm, eps))[:, :, None]
    tl.store(Q + mm * C + hh * D + dd, q.to(Q.dtype.element_ty), mask=mask)
    dst = r * stride_b + hh * stride_h + (pos + t) * stride_t + dd
    tl.store(K + dst, k.to(K.dtype.element_ty), mask=mask)
    tl.store(V + dst, v.to(V.dtype.element_ty), mask=mask)


def qk_norm_into_cache(
    qkv: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    position: int,
    q_factor: torch.Tensor | None,
    eps: float = 1e-12,
) -> torch.Tensor:
    """Split ``qkv`` ``(rows, l, 3C)``: returns ``q`` ``(rows, l, H, D)``; writes ``k``, ``v`` into the caches.

    ``k_cache``/``v_cache`` are one layer's ``(rows, H, max_length, D)`` tensors; the chunk goes to
    ``[position, position + l)``. With ``q_factor`` (``(H,)`` float32) q and k are L2-normalised and
    q is multiplied by the factor of its head; without it they are copied as they are.
    """
    rows, l, C3 = qkv.shape
    _, H, _, D = k_cache.shape
    if C3 != 3 * H * D or not qkv.is_contiguous() or k_cache.stride() != v_cache.stride() or k_cache.stride(3) != 1:
        raise ValueError("qk_norm_into_cache needs a contiguous qkv of width 3 * H * D and caches of one layout")
    q = torch.empty((rows, l, H, D), dtype=qkv.dtype, device=qkv.device)
    norm = q_factor is not None
    factor = q_factor if norm else qkv
    block_h, block_d = triton.next_power_of_2(H), triton.next_power_of_2(D)
    sb, sh, st, _ = k_cache.stride()
    M = rows * l
    block_m = rows_per_program(M, block_h * block_d, qkv.device)
    launch(
        _qk_norm_cache_kernel, (triton.cdiv(M, block_m),),
        qkv, q, k_cache, v_cache, factor, M, l, position, H, D, sb, sh, st, eps,
        NORM=norm, BLOCK_M=block_m, BLOCK_H=block_h, BLOCK_D=block_d, num_warps=_warps(block_m * block_h * block_d),
    )
    return q
