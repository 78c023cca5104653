"""Triton GroupNorm (+ SiLU) over channels-last feature maps, for the fast VQVAE decode.

PyTorch's CUDA GroupNorm takes NCHW tensors (a channels-last input is copied to NCHW first) and a
separate kernel applies SiLU. Here three kernels read a channels-last ``(B, C, H, W)`` map in
place: per-split partial sums of every group, their reduction to a mean and inverse deviation per
``(sample, group)``, and one pass that normalises, applies the affine weights and (optionally) SiLU,
writing a channels-last result in the input's dtype. Statistics are float32 (sum and sum of squares).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

__all__ = ["group_norm_nhwc"]


@triton.jit
def _gn_partial_kernel(
    X, PSUM, PSQ, HW, C, Cg, pixels_per_split, SPLIT,
    G: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):
    b = tl.program_id(0)
    s = tl.program_id(1)
    cols = tl.arange(0, BLOCK_C)
    cmask = cols < C
    acc = tl.zeros([BLOCK_C], dtype=tl.float32)
    acc2 = tl.zeros([BLOCK_C], dtype=tl.float32)
    start = s * pixels_per_split
    end = tl.minimum(start + pixels_per_split, HW)
    for p0 in range(start, end, BLOCK_P):
        pix = p0 + tl.arange(0, BLOCK_P)
        mask = (pix[:, None] < end) & cmask[None, :]
        x = tl.load(X + (b * HW + pix[:, None]) * C + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        acc += tl.sum(x, axis=0)
        acc2 += tl.sum(x * x, axis=0)
    groups = tl.arange(0, G)
    member = ((cols[:, None] // Cg) == groups[None, :]) & cmask[:, None]
    tl.store(PSUM + (b * SPLIT + s) * G + groups, tl.sum(tl.where(member, acc[:, None], 0.0), axis=0))
    tl.store(PSQ + (b * SPLIT + s) * G + groups, tl.sum(tl.where(member, acc2[:, None], 0.0), axis=0))


@triton.jit
def _gn_stats_kernel(PSUM, PSQ, MEAN, RSTD, SPLIT, count, eps, G: tl.constexpr, BLOCK_S: tl.constexpr):
    b = tl.program_id(0)
    splits = tl.arange(0, BLOCK_S)[:, None]
    groups = tl.arange(0, G)[None, :]
    mask = splits < SPLIT
    total = tl.sum(tl.load(PSUM + (b * SPLIT + splits) * G + groups, mask=mask, other=0.0), axis=0)
    total2 = tl.sum(tl.load(PSQ + (b * SPLIT + splits) * G + groups, mask=mask, other=0.0), axis=0)
    mean = total / count
    var = tl.maximum(total2 / count - mean * mean, 0.0)
    g = tl.arange(0, G)
    tl.store(MEAN + b * G + g, mean)
    tl.store(RSTD + b * G + g, 1.0 / tl.sqrt(var + eps))


@triton.jit
def _gn_apply_kernel(
    X, Y, W, BIAS, MEAN, RSTD, HW, C, Cg,
    G: tl.constexpr, SILU: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):
    b = tl.program_id(0)
    pix = tl.program_id(1) * BLOCK_P + tl.arange(0, BLOCK_P)
    cols = tl.arange(0, BLOCK_C)
    cmask = cols < C
    mask = (pix[:, None] < HW) & cmask[None, :]
    offs = (b * HW + pix[:, None]) * C + cols[None, :]
    x = tl.load(X + offs, mask=mask, other=0.0).to(tl.float32)
    group = cols // Cg
    mean = tl.load(MEAN + b * G + group, mask=cmask, other=0.0)
    rstd = tl.load(RSTD + b * G + group, mask=cmask, other=0.0)
    w = tl.load(W + cols, mask=cmask, other=0.0).to(tl.float32)
    bias = tl.load(BIAS + cols, mask=cmask, other=0.0).to(tl.float32)
    y = (x - mean[None, :]) * (rstd * w)[None, :] + bias[None, :]
    if SILU:
        y = y / (1.0 + tl.exp(-y))
    tl.store(Y + offs, y.to(Y.dtype.element_ty), mask=mask)


def group_norm_nhwc(
    x: torch.Tensor, num_groups: int, weight: torch.Tensor, bias: torch.Tensor, eps: float, silu: bool = False
) -> torch.Tensor:
    """``GroupNorm(num_groups)(x)`` (then SiLU) of a channels-last ``(B, C, H, W)`` map; channels-last output."""
    B, C, H, W = x.shape
    if not x.is_contiguous(memory_format=torch.channels_last):
        raise ValueError("group_norm_nhwc needs a channels-last input")
    if num_groups != 32 or C % num_groups != 0:
        raise ValueError(f"group_norm_nhwc supports 32 groups of equal size, got {num_groups} groups of {C} channels")
    HW, Cg = H * W, C // num_groups
    block_c = triton.next_power_of_2(C)
    block_p = max(1, min(triton.next_power_of_2(HW), 8192 // block_c))
    split = max(1, min(64, triton.cdiv(HW, 4 * block_p)))
    pixels_per_split = triton.cdiv(triton.cdiv(HW, split), block_p) * block_p
    split = triton.cdiv(HW, pixels_per_split)
    psum = torch.empty((B, split, num_groups), dtype=torch.float32, device=x.device)
    psq = torch.empty_like(psum)
    mean = torch.empty((B, num_groups), dtype=torch.float32, device=x.device)
    rstd = torch.empty_like(mean)
    warps = 8 if block_p * block_c >= 4096 else 4
    _gn_partial_kernel[(B, split)](x, psum, psq, HW, C, Cg, pixels_per_split, split, G=num_groups, BLOCK_P=block_p,
                                   BLOCK_C=block_c, num_warps=warps)
    _gn_stats_kernel[(B,)](psum, psq, mean, rstd, split, float(HW * Cg), eps, G=num_groups,
                           BLOCK_S=triton.next_power_of_2(split))
    y = torch.empty_like(x, memory_format=torch.channels_last)
    _gn_apply_kernel[(B, triton.cdiv(HW, block_p))](x, y, weight, bias, mean, rstd, HW, C, Cg, G=num_groups, SILU=silu,
                                                   BLOCK_P=block_p, BLOCK_C=block_c, num_warps=warps)
    return y
