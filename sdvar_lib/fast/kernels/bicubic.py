"""Bicubic upsampling of a stage's token map, PyTorch's CUDA arithmetic in parallel (import only where Triton runs).

Every stage adds ``phi(upsample(h))`` to ``f_hat``, with ``h`` the stage's ``(B, Cvae, pn, pn)`` map upsampled to the
last scale by ``F.interpolate(mode="bicubic")`` (:meth:`sdvar_lib.models.quant.MultiScaleQuantizer.stage_contribution`).
PyTorch's CUDA kernel for it runs one thread per *output pixel* and loops over every sample and channel inside it:
16 x 16 = 256 threads for the whole batch, 0.9 ms per stage at batch 32 (7.9 ms of a 277 ms call; one H200,
2026-12-03). :func:`upsample_bicubic` computes the same values with one program per sample and block of pixels,
each over all channels.

Same values means bit for bit on a GPU: the kernel does PyTorch's arithmetic in PyTorch's order (source coordinate
``scale * (dst + 0.5) - 0.5`` with ``scale = in / out`` in float32, the cubic convolution coefficients with
``A = -0.75``, four row interpolations over clamped columns, then one over the rows, all in float32), and the output
has the memory format ``F.interpolate`` gives it (which decides the layout, and so the kernels, of the convolution
after it). Whether the compiled kernel matches bit for bit is checked where it is used
(:func:`sdvar_lib.fast.upsample.resolve_upsample`), not assumed. Triton's CPU interpreter (numpy) and PyTorch's CPU
kernel round differently from the GPU and from each other: the CPU tests compare within float32 rounding.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from sdvar_lib.fast.kernels.precompile import launch

__all__ = ["upsample_bicubic", "bicubic_warmup", "FMA_ORDER", "FMA_ORDERS"]

FMA_ORDERS = (0, 1, 2, 3)
"""How a four-term sum ``x0 c0 + x1 c1 + x2 c2 + x3 c3`` rounds: 0 the compiler's contraction of the plain expression,
1 ``fma(x3, c3, fma(x2, c2, fma(x1, c1, x0 c0)))``, 2 the same with the first two terms swapped
(``fma(x0, c0, x1 c1)``), 3 no fused multiply-add (every product and sum rounded)."""
FMA_ORDER = 2
"""The order of PyTorch's compiled CUDA kernel (module attribute, looked up at each call, so that
``scripts/device_bicubic_probe.py`` can try the others; each is checked where it is used)."""

# every integer argument unspecialised: sizes change from stage to stage (pn = 1 would compile a version of its own)
_INTS = ["B", "C", "h", "w", "H", "W", "sxn", "sxc", "sxh", "sxw", "syn", "syc", "syh", "syw"]


@triton.jit
def _cubic_near(x):  # PyTorch's cubic_convolution1: |x| <= 1
    A: tl.constexpr = -0.75
    return ((A + 2) * x - (A + 3)) * x * x + 1


@triton.jit
def _cubic_far(x):  # cubic_convolution2: 1 < |x| < 2
    A: tl.constexpr = -0.75
    return ((A * x - 5 * A) * x + 8 * A) * x - 4 * A


@triton.jit
def _interp(x0, x1, x2, x3, t, ORDER: tl.constexpr):
    """cubic_interp1d: the coefficients of ``t`` (exact in float32 for VAR's sizes), then ``x0 * c0 + x1 * c1 + x2 * c2
    + x3 * c3`` with the fused multiply-adds of :data:`FMA_ORDER`."""
    c0 = _cubic_far(t + 1.0)
    c1 = _cubic_near(t)
    c2 = _cubic_near(1.0 - t)
    c3 = _cubic_far(1.0 - t + 1.0)
    if ORDER == 1:
        out = tl.fma(x3, c3, tl.fma(x2, c2, tl.fma(x1, c1, x0 * c0)))
    elif ORDER == 2:
        out = tl.fma(x3, c3, tl.fma(x2, c2, tl.fma(x0, c0, x1 * c1)))
    else:  # 0: the compiler's contraction of the plain sum (3: the same, compiled without fused multiply-adds)
        out = x0 * c0 + x1 * c1 + x2 * c2 + x3 * c3
    return out


@triton.jit
def _tap(X, base, yy, in_x, j: tl.constexpr, w, sxh, sxw, mask):  # upsample_get_value_bounded: clamped to the map
    xx = tl.minimum(tl.maximum(in_x - 1 + j, 0), w - 1)
    return tl.load(X + base + (yy * sxh + xx * sxw)[:, None], mask=mask, other=0.0).to(tl.float32)


@triton.jit
def _row(X, base, in_y, k: tl.constexpr, in_x, t_x, h, w, sxh, sxw, mask, ORDER: tl.constexpr):  # along row in_y-1+k
    yy = tl.minimum(tl.maximum(in_y - 1 + k, 0), h - 1)
    return _interp(_tap(X, base, yy, in_x, 0, w, sxh, sxw, mask), _tap(X, base, yy, in_x, 1, w, sxh, sxw, mask),
                   _tap(X, base, yy, in_x, 2, w, sxh, sxw, mask), _tap(X, base, yy, in_x, 3, w, sxh, sxw, mask),
                   t_x[:, None], ORDER)


@triton.jit(do_not_specialize=_INTS)
def _bicubic_kernel(
    X, Y, B, C, h, w, H, W, scale_h, scale_w,
    sxn, sxc, sxh, sxw, syn, syc, syh, syw,
    BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr, ORDER: tl.constexpr,
):
    n = tl.program_id(0)
    pix = tl.program_id(1) * BLOCK_P + tl.arange(0, BLOCK_P)
    cols = tl.arange(0, BLOCK_C)
    mask = (pix < H * W)[:, None] & (cols < C)[None, :]
    oy = pix // W
    ox = pix % W
    real_y = scale_h * (oy.to(tl.float32) + 0.5) - 0.5  # area_pixel_compute_source_index(cubic=True): no clamp
    real_x = scale_w * (ox.to(tl.float32) + 0.5) - 0.5
    in_y = tl.floor(real_y).to(tl.int32)
    in_x = tl.floor(real_x).to(tl.int32)
    t_y = real_y - in_y.to(tl.float32)
    t_x = real_x - in_x.to(tl.float32)
    base = n.to(tl.int64) * sxn + cols[None, :] * sxc
    row0 = _row(X, base, in_y, 0, in_x, t_x, h, w, sxh, sxw, mask, ORDER)
    row1 = _row(X, base, in_y, 1, in_x, t_x, h, w, sxh, sxw, mask, ORDER)
    row2 = _row(X, base, in_y, 2, in_x, t_x, h, w, sxh, sxw, mask, ORDER)
    row3 = _row(X, base, in_y, 3, in_x, t_x, h, w, sxh, sxw, mask, ORDER)
    out = _interp(row0, row1, row2, row3, t_y[:, None], ORDER)
    dst = n.to(tl.int64) * syn + cols[None, :] * syc + (oy * syh + ox * syw)[:, None]
    tl.store(Y + dst, out.to(Y.dtype.element_ty), mask=mask)


@lru_cache(maxsize=256)
def _output_strides(shape: tuple[int, ...], stride: tuple[int, ...], size: tuple[int, int]) -> tuple[int, ...]:
    """The strides ``F.interpolate(mode="bicubic")`` gives its output for an input of this layout: asked of PyTorch's
    CPU kernel on a zero CPU tensor of that layout (the memory format rule is the one of every device; a meta tensor
    would be free to compute, but its first use imports PyTorch's Python meta registrations: 2.7 s)."""
    probe = torch.empty_strided(shape, stride).zero_()  # zeros: no NaN or subnormal garbage to slow the CPU kernel
    return F.interpolate(probe, size=size, mode="bicubic").stride()


def _scale(src: int, dst: int) -> float:
    """``float(src) / dst`` rounded once to float32, as PyTorch's ``area_pixel_compute_scale`` computes it."""
    return float(np.float32(src) / np.float32(dst))


def upsample_bicubic(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``F.interpolate(x, size=size, mode="bicubic")`` of a ``(B, C, h, w)`` map (any strides); same dtype and layout."""
    if x.ndim != 4 or x.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise ValueError(f"upsample_bicubic needs a (B, C, h, w) float tensor, got {tuple(x.shape)} {x.dtype}")
    H, W = (int(s) for s in size)
    B, C, h, w = x.shape
    if H < 1 or W < 1:
        raise ValueError(f"size must be two positive integers, got {size}")
    y = torch.empty_strided((B, C, H, W), _output_strides(tuple(x.shape), x.stride(), (H, W)), dtype=x.dtype,
                            device=x.device)
    block_c = triton.next_power_of_2(C)
    block_p = max(1, min(triton.next_power_of_2(H * W), 2048 // block_c))
    order = FMA_ORDER
    options = {"enable_fp_fusion": False} if order == 3 else {}
    launch(_bicubic_kernel, (B, triton.cdiv(H * W, block_p)), x, y, B, C, h, w, H, W, _scale(h, H), _scale(w, W),
           *x.stride(), *y.stride(), BLOCK_P=block_p, BLOCK_C=block_c, ORDER=order, num_warps=4, **options)
    return y


def bicubic_warmup(C: int, size: int, device: torch.device, dtype: torch.dtype = torch.float32):
    """A launch with the one specialisation every stage's upsampling uses (for ahead-of-time compiles)."""
    x = torch.zeros(2, 4, C, dtype=dtype, device=device).transpose(1, 2).reshape(2, C, 2, 2)
    return lambda: upsample_bicubic(x, (size, size))
