"""Triton kernel of a stage's sampling: CFG, top-k, top-p, softmax, the draw and the codebook lookup.

One program per token (several in Triton's CPU interpreter): it reads the token's conditional and
unconditional logits, applies the guidance, filters (top-k and top-p, see below), writes the sampling distribution,
draws and gathers the token's codebook vector into the stage's embedded map. The draw is the one
``torch.multinomial`` makes for one sample per row — ``argmax(p / e)`` with ``e ~ Exp(1)`` drawn beforehand by
PyTorch from the call's generator (:func:`sample_stage`) — so the random stream is the reference's. The guidance is computed with
the reference's float32 operations (no fused multiply-add), so it is bit-exact; softmax and the
top-p sum may round differently in the last bit, which can change a draw only where two
candidates tie to that precision. :func:`stage_probs_into` runs the same kernel without the draw
(only the distribution, of any stage of a chunk: a verify chunk's ``p``).

It is the fused equivalent of the one stage step's distribution,
:func:`~sdvar_lib.models.sampling.guided_logits` then :func:`~sdvar_lib.models.sampling.stage_probs`
(the draft's ``q`` and the target's ``p``), followed by the draw and the codebook lookup;
``tests/test_fast_kernels.py`` checks it against them.

The filters find their cut-off values without sorting the vocabulary: bit by bit over an order-preserving integer
image of the values (:func:`_ordered_keys`), 32 counting rounds for the k-th largest value and 32 summing rounds for
the top-p boundary (the smallest value whose mass of values at or below it exceeds ``1 - top_p``). A tie at a cut-off
keeps every tied token, as the reference's top-k does; the reference's top-p may keep only some of tokens that tie
exactly at its boundary (it cuts its ascending sort at a position). Against the sort in registers it replaced, on one
H200 machine (12-02, ``scripts/device_sampler_probe.py``): the first launch 0.46 s instead of 5.4 s (the compile, on
the cold start's critical path), 0.08 / 0.20 / 0.63 ms instead of 0.14 / 1.10 / 3.90 ms at 1 / 2048 / 8192 token
rows, the same tokens.
"""

from __future__ import annotations

import inspect

import torch
import triton
import triton.language as tl

from sdvar_lib.fast.kernels.block import rows_per_program
from sdvar_lib.fast.kernels.precompile import launch

__all__ = ["sample_stage", "sample_stage_into", "stage_probs_into"]

SIZES_SAMPLE = ["B", "l", "chunk_l", "offset", "top_k", "draw"]
"""Runtime arguments the sampler kernel is not specialised on: the sizes (10 versions in a cold d16 -> d30 process
otherwise; see ``sdvar_lib.fast.kernels.block``) and whether it draws (a branch at run time instead of a version of
its own: each version took 4.5-5 s to compile while the kernel sorted the vocabulary, about 0.5 s since; H200
machine, 12-02)."""
UNALIGNED_SAMPLE = ["IDX"]
"""Pointers not specialised on 16-byte alignment: a stage's int64 token slots start at an odd row at odd batch sizes
(8-byte aligned), which would compile a version of its own."""


def _jit_options() -> dict:
    options = {"do_not_specialize": SIZES_SAMPLE}
    if "do_not_specialize_on_alignment" in inspect.signature(triton.jit).parameters:  # Triton 3.2 and newer
        options["do_not_specialize_on_alignment"] = UNALIGNED_SAMPLE
    return options


@triton.jit
def _ordered_keys(x, BLOCK_M: tl.constexpr, BLOCK_V: tl.constexpr):
    """An order-preserving unsigned image of float32 values: ``a < b`` exactly when ``key(a) < key(b)`` (-0.0 just
    below +0.0; -inf lowest). Negative values have every bit flipped, the others only the sign bit."""
    bits = x.to(tl.uint32, bitcast=True)
    sign = tl.full((BLOCK_M, BLOCK_V), 0x80000000, tl.uint32)
    return tl.where((bits & sign) != 0, bits ^ tl.full((BLOCK_M, BLOCK_V), 0xFFFFFFFF, tl.uint32), bits | sign)


@triton.jit
def _kth_largest_key(keys, k, BLOCK_M: tl.constexpr):
    """Per row, the largest key ``t`` with at least ``k`` keys ``>= t``: the k-th largest key. Found bit by bit from
    the top (32 counting rounds) instead of sorting the row."""
    t = tl.zeros((BLOCK_M,), dtype=tl.uint32)
    for i in range(32):
        cand = t | (tl.full((BLOCK_M,), 1, tl.uint32) << (31 - i))
        count = tl.sum((keys >= cand[:, None]).to(tl.int32), axis=1)
        t = tl.where(count >= k, cand, t)
    return t


@triton.jit
def _mass_floor_key(keys, p, limit, BLOCK_M: tl.constexpr):
    """Per row, the largest key ``t`` whose mass ``sum(p[keys <= t])`` is at most ``limit``, bit by bit (32 summing
    rounds): every value above it is kept by top-p, every value at or below it dropped."""
    t = tl.zeros((BLOCK_M,), dtype=tl.uint32)
    for i in range(32):
        cand = t | (tl.full((BLOCK_M,), 1, tl.uint32) << (31 - i))
        mass = tl.sum(tl.where(keys <= cand[:, None], p, 0.0), axis=1)
        t = tl.where(mass <= limit, cand, t)
    return t


@triton.jit(**_jit_options())
def _sample_kernel(
    LOGITS, NOISE, IDX, PROBS, H, CODEBOOK,
    B, l, chunk_l, offset, V, Cv, cfg_cond, cfg_uncond, top_k, top_p, draw,
    HAS_TOP_K: tl.constexpr, HAS_TOP_P: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_V: tl.constexpr,
    BLOCK_CV: tl.constexpr,
):
    n = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)  # token rows of the stage, b * l + j
    row_ok = n < B * l
    b = n // l
    j = n % l
    cols = tl.arange(0, BLOCK_V)
    valid = row_ok[:, None] & (cols < V)[None, :]
    cond = tl.load(LOGITS + ((b * chunk_l + offset + j) * V)[:, None] + cols[None, :], mask=valid, other=0.0)
    uncond = tl.load(LOGITS + (((B + b) * chunk_l + offset + j) * V)[:, None] + cols[None, :], mask=valid, other=0.0)
    x = cond * cfg_cond - uncond * cfg_uncond
    x = tl.where(valid, x, float("-inf"))
    if HAS_TOP_K or HAS_TOP_P:
        keys = _ordered_keys(x, BLOCK_M, BLOCK_V)
        if HAS_TOP_K:  # the k-th largest value, ties kept (the reference drops only values below it)
            kth_key = _kth_largest_key(keys, top_k, BLOCK_M)[:, None]
            kth = tl.min(tl.where(keys >= kth_key, x, float("inf")), axis=1)[:, None]
            x = tl.where(x < kth, float("-inf"), x)
        if HAS_TOP_P:  # the smallest value whose mass of values at or below it exceeds 1 - top_p; the largest is kept
            xmax = tl.max(x, axis=1)
            e_p = tl.exp(x - tl.where(row_ok, xmax, 0.0)[:, None])
            p_top = e_p / tl.where(row_ok, tl.sum(e_p, axis=1), 1.0)[:, None]
            dropped = _mass_floor_key(keys, p_top, 1.0 - top_p, BLOCK_M)
            lowest_kept = tl.minimum(tl.min(tl.where(keys > dropped[:, None], x, float("inf")), axis=1), xmax)
            x = tl.where(x < lowest_kept[:, None], float("-inf"), x)
    e = tl.exp(x - tl.where(row_ok, tl.max(x, axis=1), 0.0)[:, None])  # rows past the end: all -inf, no NaN
    p = e / tl.where(row_ok, tl.sum(e, axis=1), 1.0)[:, None]
    row_offs = (n * V)[:, None] + cols[None, :]
    tl.store(PROBS + row_offs, p, mask=valid)
    if draw:
        noise = tl.load(NOISE + row_offs, mask=valid, other=1.0)
        ratio = tl.where(valid, tl.math.div_rn(p, noise), -1.0)
        idx = tl.argmax(ratio, axis=1)
        tl.store(IDX + n, idx.to(tl.int64), mask=row_ok)
        ch = tl.arange(0, BLOCK_CV)[None, :]
        ch_ok = row_ok[:, None] & (ch < Cv)
        vec = tl.load(CODEBOOK + idx[:, None] * Cv + ch, mask=ch_ok, other=0.0)
        tl.store(H + n[:, None] * Cv + ch, vec, mask=ch_ok)


def _check_logits(logits_2BLV: torch.Tensor, offset: int, l: int) -> None:
    chunk_l = logits_2BLV.shape[1]
    if not logits_2BLV.is_contiguous() or logits_2BLV.dtype != torch.float32 or not (l >= 1 and 0 <= offset <= chunk_l - l):
        raise ValueError("the sampling kernel needs a pass's contiguous float32 logits covering the stage")


def _check_buffers(*checks: tuple[str, torch.Tensor, tuple[int, ...]]) -> None:
    for name, t, shape in checks:
        if tuple(t.shape) != shape or not t.is_contiguous():
            raise ValueError(f"{name} must be a contiguous {shape} tensor, got {tuple(t.shape)}")


def _launch(logits_2BLV, offset, l, cfg_t, top_k, top_p, codebook_VC, noise, idx, probs, h, draw: bool) -> None:
    rows, chunk_l, V = logits_2BLV.shape
    B = rows // 2
    block_v = triton.next_power_of_2(V)
    block_m = rows_per_program(B * l, block_v, logits_2BLV.device) if logits_2BLV.device.type == "cpu" else 1
    Cv = codebook_VC.shape[1]
    launch(
        _sample_kernel, (triton.cdiv(B * l, block_m),),
        logits_2BLV, noise, idx, probs, h, codebook_VC,
        B, l, chunk_l, offset, V, Cv, 1 + cfg_t, cfg_t, top_k, top_p, int(draw),
        HAS_TOP_K=top_k > 0, HAS_TOP_P=top_p > 0, BLOCK_M=block_m, BLOCK_V=block_v,
        BLOCK_CV=triton.next_power_of_2(Cv), num_warps=8 if block_v >= 2048 else 4, enable_fp_fusion=False,
    )


def sample_stage_into(logits_2BLV: torch.Tensor, l: int, cfg_t: float, top_k: int, top_p: float, codebook_VC: torch.Tensor,
                      noise: torch.Tensor, idx: torch.Tensor, probs: torch.Tensor, h: torch.Tensor) -> None:
    """The kernel on given buffers: ``noise`` ``(B*l, V)`` (``Exp(1)``) in; ``idx`` ``(B*l,)`` int64, ``probs``
    ``(B*l, V)`` and ``h`` ``(B*l, Cv)`` out. No allocation and no random draw: a CUDA graph can hold it."""
    rows, chunk_l, V = logits_2BLV.shape
    B = rows // 2
    _check_logits(logits_2BLV, chunk_l - l, l)
    Cv = codebook_VC.shape[1]
    _check_buffers(("noise", noise, (B * l, V)), ("idx", idx, (B * l,)), ("probs", probs, (B * l, V)),
                   ("h", h, (B * l, Cv)))
    _launch(logits_2BLV, chunk_l - l, l, cfg_t, top_k, top_p, codebook_VC, noise, idx, probs, h, draw=True)


def stage_probs_into(logits_2BLV: torch.Tensor, offset: int, l: int, cfg_t: float, top_k: int, top_p: float,
                     probs: torch.Tensor, codebook_VC: torch.Tensor) -> None:
    """Only the sampling distribution ``(B*l, V)`` of the ``l`` positions at ``offset`` of a chunk (no draw): what a
    verify chunk needs of each of its stages (``p``). One small allocation: a CUDA graph can hold it."""
    rows, _, V = logits_2BLV.shape
    _check_logits(logits_2BLV, offset, l)
    _check_buffers(("probs", probs, (rows // 2 * l, V)))
    # without a draw the noise, token and embedding pointers are never read; they stand in with the dtypes (and the
    # codebook its width) of a draw, so that both launches share one compiled version
    idx = torch.empty(1, dtype=torch.int64, device=probs.device)
    _launch(logits_2BLV, offset, l, cfg_t, top_k, top_p, codebook_VC, probs, idx, probs, codebook_VC, draw=False)


def sample_stage(logits_2BLV: torch.Tensor, l: int, cfg_t: float, top_k: int, top_p: float, codebook_VC: torch.Tensor,
                 rng: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Tokens ``(B, l)``, distribution ``(B, l, V)`` and codebook vectors ``(B, l, Cv)`` of the chunk's last ``l`` positions.

    ``logits_2BLV`` is a pass's contiguous CFG-doubled float32 output (conditional half first);
    ``cfg_t`` the guidance strength of the stage; ``top_k``/``top_p`` ``0`` disable the filter.
    The ``Exp(1)`` noise is drawn here from ``rng`` (the draws ``torch.multinomial`` would make).
    """
    rows, _, V = logits_2BLV.shape
    B, device = rows // 2, logits_2BLV.device
    noise = torch.empty((B * l, V), dtype=torch.float32, device=device).exponential_(generator=rng)
    idx = torch.empty(B * l, dtype=torch.int64, device=device)
    probs = torch.empty((B * l, V), dtype=torch.float32, device=device)
    h = torch.empty((B * l, codebook_VC.shape[1]), dtype=codebook_VC.dtype, device=device)
    sample_stage_into(logits_2BLV, l, cfg_t, top_k, top_p, codebook_VC.contiguous(), noise, idx, probs, h)
    return idx.view(B, l), probs.view(B, l, V), h.view(B, l, -1)
