"""Triton kernels of the fast VQVAE decode over channels-last feature maps: GroupNorm (+ SiLU) and friends.

PyTorch's CUDA GroupNorm takes NCHW tensors (a channels-last input is copied to NCHW first), SiLU is
a separate kernel, cuDNN convolutions add their bias in another pass, and its nearest upsampling of
channels-last maps is slow. Here, on channels-last ``(B, C, H, W)`` maps read in place:

- :func:`group_norm_nhwc`: per-split partial sums of every group, their reduction to a mean and
  inverse deviation per ``(sample, group)``, and one pass that normalises, applies the affine
  weights and (optionally) SiLU; an optional per-channel ``pre_bias`` is added to the input on the
  fly (the bias of the convolution before it, which then runs without one). Statistics are float32.
- :func:`add_bias_residual_nhwc`: ``shortcut + h + bias`` in one pass (a ResNet block's end, its
  last convolution run without bias).
- :func:`upsample2x_nhwc`: nearest-neighbour upsampling by two.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from sdvar_lib.util.checks import check_int

__all__ = ["Tiling", "DEFAULT_TILING", "group_norm_nhwc", "add_bias_residual_nhwc", "upsample2x_nhwc"]


@dataclass(frozen=True)
class Tiling:
    """How the kernels here cut a channels-last map into programs (on the CPU, Triton's interpreter).

    A program's tile is ``pixels x next_power_of_2(C)`` values, at most ``values`` of them, with at most
    ``warps`` warps; the GroupNorm statistics pass loops over its pixels with such tiles in about
    ``stat_programs`` programs. The defaults are measured, not guessed (:data:`DEFAULT_TILING`).
    """

    values: int = 8192
    warps: int = 8
    stat_programs: int = 512

    def __post_init__(self) -> None:
        for name in ("values", "warps", "stat_programs"):
            check_int(getattr(self, name), f"Tiling.{name}", 1)
        if self.values & (self.values - 1) or self.warps & (self.warps - 1):
            raise ValueError(f"Tiling.values and Tiling.warps must be powers of two, got {self.values}, {self.warps}")


DEFAULT_TILING = Tiling()
"""The tiling every GPU call here uses unless given one (module attribute, looked up at each call, so that
``scripts/device_decode_probe.py --sweep`` can time others).

Chosen by that sweep (one H200, 2026-12-03): the graphed official decode took 2.47 / 9.94 / 35.84 ms at batch
1 / 8 / 32 with it, 2.60-2.76 / 10.69 / 37.50-38.04 ms with 4096 values per tile (the earlier fixed size),
2.50 / 10.33 / 37.54 ms with 16384; larger tiles, 16 warps, more or fewer statistics programs, or tiles halved
until the grid had 528 programs were no faster at any batch size."""

INTERPRETER_TILING = Tiling(values=1 << 16)
"""The CPU interpreter's default: its time is per program, so as few programs as fit 2**16 values."""


def _tiling(tiling: Tiling | None, device: torch.device) -> Tiling:
    if tiling is not None:
        if not isinstance(tiling, Tiling):
            raise TypeError(f"tiling must be a groupnorm.Tiling or None, got {type(tiling).__name__}")
        return tiling
    return INTERPRETER_TILING if device.type == "cpu" else DEFAULT_TILING


def _tile_rows(rows: int, width: int, tiling: Tiling) -> int:
    """Pixels per program for ``rows`` pixels of ``width`` (padded) channels: at most ``tiling.values`` values."""
    return max(1, min(triton.next_power_of_2(rows), tiling.values // width))


def _warps(pixels: int, width: int, tiling: Tiling) -> int:
    """Warps of a program with a ``pixels x width`` tile: one per 512 values, at least 4, at most ``tiling.warps``."""
    return min(tiling.warps, max(4, pixels * width // 512))


@triton.jit
def _gn_partial_kernel(
    X, PRE, PSUM, PSQ, HW, C, Cg, pixels_per_split, SPLIT,
    HAS_PRE: tl.constexpr, G: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):
    b = tl.program_id(0)
    s = tl.program_id(1)
    cols = tl.arange(0, BLOCK_C)
    cmask = cols < C
    if HAS_PRE:
        pre = tl.load(PRE + cols, mask=cmask, other=0.0).to(tl.float32)
    acc = tl.zeros([BLOCK_P, BLOCK_C], dtype=tl.float32)
    acc2 = tl.zeros([BLOCK_P, BLOCK_C], dtype=tl.float32)
    start = s * pixels_per_split
    end = tl.minimum(start + pixels_per_split, HW)
    for p0 in range(start, end, BLOCK_P):
        pix = p0 + tl.arange(0, BLOCK_P)
        mask = (pix[:, None] < end) & cmask[None, :]
        x = tl.load(X + (b * HW + pix[:, None]).to(tl.int64) * C + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        if HAS_PRE:
            x = tl.where(mask, x + pre[None, :], 0.0)
        acc += x  # elementwise: one reduction at the end, not one per tile (per-tile sums were 2x slower, H200)
        acc2 += x * x
    chan = tl.sum(acc, axis=0)
    chan2 = tl.sum(acc2, axis=0)
    groups = tl.arange(0, G)
    member = ((cols[:, None] // Cg) == groups[None, :]) & cmask[:, None]
    tl.store(PSUM + (b * SPLIT + s) * G + groups, tl.sum(tl.where(member, chan[:, None], 0.0), axis=0))
    tl.store(PSQ + (b * SPLIT + s) * G + groups, tl.sum(tl.where(member, chan2[:, None], 0.0), axis=0))


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
    X, PRE, Y, W, BIAS, MEAN, RSTD, HW, C, Cg,
    HAS_PRE: tl.constexpr, G: tl.constexpr, SILU: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):
    b = tl.program_id(0)
    pix = tl.program_id(1) * BLOCK_P + tl.arange(0, BLOCK_P)
    cols = tl.arange(0, BLOCK_C)
    cmask = cols < C
    mask = (pix[:, None] < HW) & cmask[None, :]
    offs = (b * HW + pix[:, None]).to(tl.int64) * C + cols[None, :]  # int64: large batches of 256x256 maps
    x = tl.load(X + offs, mask=mask, other=0.0).to(tl.float32)
    if HAS_PRE:
        x = x + tl.load(PRE + cols, mask=cmask, other=0.0).to(tl.float32)[None, :]
    group = cols // Cg
    mean = tl.load(MEAN + b * G + group, mask=cmask, other=0.0)
    rstd = tl.load(RSTD + b * G + group, mask=cmask, other=0.0)
    w = tl.load(W + cols, mask=cmask, other=0.0).to(tl.float32)
    bias = tl.load(BIAS + cols, mask=cmask, other=0.0).to(tl.float32)
    y = (x - mean[None, :]) * (rstd * w)[None, :] + bias[None, :]
    if SILU:  # the approximate division (2 ulp in float32): fewer instructions, and the output is 16-bit
        y = tl.fdiv(y, 1.0 + tl.exp(-y), ieee_rounding=False)
    tl.store(Y + offs, y.to(Y.dtype.element_ty), mask=mask)


def _check_nhwc(x: torch.Tensor, what: str) -> None:
    if x.ndim != 4 or not x.is_contiguous(memory_format=torch.channels_last):
        raise ValueError(f"{what} needs a channels-last (B, C, H, W) map")


def group_norm_nhwc(
    x: torch.Tensor, num_groups: int, weight: torch.Tensor, bias: torch.Tensor, eps: float, silu: bool = False,
    pre_bias: torch.Tensor | None = None, tiling: Tiling | None = None,
) -> torch.Tensor:
    """``GroupNorm(num_groups)(x + pre_bias)`` (then SiLU) of a channels-last ``(B, C, H, W)`` map; channels-last output.

    ``tiling`` (default :data:`DEFAULT_TILING` on a GPU, :data:`INTERPRETER_TILING` on the CPU) only changes
    how the work is cut, not the result beyond float32 summation order.
    """
    _check_nhwc(x, "group_norm_nhwc")
    B, C, H, W = x.shape
    if num_groups != 32 or C % num_groups != 0:
        raise ValueError(f"group_norm_nhwc supports 32 groups of equal size, got {num_groups} groups of {C} channels")
    HW, Cg = H * W, C // num_groups
    block_c = triton.next_power_of_2(C)
    tiling = _tiling(tiling, x.device)
    block_p = _tile_rows(HW, block_c, tiling)
    # enough programs to fill the GPU whatever the batch
    split = max(1, min(triton.cdiv(HW, block_p), triton.cdiv(tiling.stat_programs, B)))
    pixels_per_split = triton.cdiv(triton.cdiv(HW, split), block_p) * block_p
    split = triton.cdiv(HW, pixels_per_split)
    psum = torch.empty((B, split, num_groups), dtype=torch.float32, device=x.device)
    psq = torch.empty_like(psum)
    mean = torch.empty((B, num_groups), dtype=torch.float32, device=x.device)
    rstd = torch.empty_like(mean)
    has_pre = pre_bias is not None
    pre = pre_bias if has_pre else weight
    warps = _warps(block_p, block_c, tiling)
    _gn_partial_kernel[(B, split)](x, pre, psum, psq, HW, C, Cg, pixels_per_split, split, HAS_PRE=has_pre, G=num_groups,
                                   BLOCK_P=block_p, BLOCK_C=block_c, num_warps=warps)
    _gn_stats_kernel[(B,)](psum, psq, mean, rstd, split, float(HW * Cg), eps, G=num_groups,
                           BLOCK_S=triton.next_power_of_2(split))
    y = torch.empty_like(x, memory_format=torch.channels_last)
    _gn_apply_kernel[(B, triton.cdiv(HW, block_p))](x, pre, y, weight, bias, mean, rstd, HW, C, Cg, HAS_PRE=has_pre,
                                                   G=num_groups, SILU=silu, BLOCK_P=block_p, BLOCK_C=block_c,
                                                   num_warps=warps)
    return y


@triton.jit
def _add_bias_residual_kernel(A, H, BIAS, Y, P, C, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    pix = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    cols = tl.arange(0, BLOCK_C)
    cmask = cols < C
    mask = (pix[:, None] < P) & cmask[None, :]
    offs = pix[:, None].to(tl.int64) * C + cols[None, :]
    a = tl.load(A + offs, mask=mask, other=0.0).to(tl.float32)
    h = tl.load(H + offs, mask=mask, other=0.0).to(tl.float32)
    bias = tl.load(BIAS + cols, mask=cmask, other=0.0).to(tl.float32)
    tl.store(Y + offs, (a + (h + bias[None, :])).to(Y.dtype.element_ty), mask=mask)


def add_bias_residual_nhwc(shortcut: torch.Tensor, h: torch.Tensor, bias: torch.Tensor,
                           tiling: Tiling | None = None) -> torch.Tensor:
    """``shortcut + (h + bias)`` for channels-last maps of one shape (``bias`` per channel); channels-last output."""
    _check_nhwc(shortcut, "add_bias_residual_nhwc")
    _check_nhwc(h, "add_bias_residual_nhwc")
    if shortcut.shape != h.shape:
        raise ValueError(f"shapes differ: {tuple(shortcut.shape)} and {tuple(h.shape)}")
    B, C, H, W = h.shape
    P = B * H * W
    block_c = triton.next_power_of_2(C)
    tiling = _tiling(tiling, h.device)
    block_p = _tile_rows(P, block_c, tiling)
    y = torch.empty_like(h, memory_format=torch.channels_last)
    _add_bias_residual_kernel[(triton.cdiv(P, block_p),)](shortcut, h, bias, y, P, C, BLOCK_P=block_p, BLOCK_C=block_c,
                                                         num_warps=_warps(block_p, block_c, tiling))
    return y


@triton.jit
def _upsample2x_kernel(X, Y, H, W, C, P_out, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    pix = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)  # output pixels, b * (2H * 2W) + y * 2W + x
    cols = tl.arange(0, BLOCK_C)
    cmask = cols < C
    W2 = 2 * W
    x = pix % W2
    t = pix // W2
    y = t % (2 * H)
    b = t // (2 * H)
    src = (b * H + y // 2) * W + x // 2
    mask = (pix[:, None] < P_out) & cmask[None, :]
    v = tl.load(X + src[:, None].to(tl.int64) * C + cols[None, :], mask=mask, other=0.0)
    tl.store(Y + pix[:, None].to(tl.int64) * C + cols[None, :], v, mask=mask)


def upsample2x_nhwc(x: torch.Tensor, tiling: Tiling | None = None) -> torch.Tensor:
    """Nearest-neighbour upsampling by two of a channels-last ``(B, C, H, W)`` map; channels-last output."""
    _check_nhwc(x, "upsample2x_nhwc")
    B, C, H, W = x.shape
    y = torch.empty((B, C, 2 * H, 2 * W), dtype=x.dtype, device=x.device, memory_format=torch.channels_last)
    P_out = B * 4 * H * W
    block_c = triton.next_power_of_2(C)
    tiling = _tiling(tiling, x.device)
    block_p = _tile_rows(P_out, block_c, tiling)
    _upsample2x_kernel[(triton.cdiv(P_out, block_p),)](x, y, H, W, C, P_out, BLOCK_P=block_p, BLOCK_C=block_c,
                                                       num_warps=_warps(block_p, block_c, tiling))
    return y
