"""Triton kernel of a stage's sampling: CFG, top-k, top-p, softmax, the draw and the codebook lookup.

One program per token (several in Triton's CPU interpreter): it reads the token's conditional and
unconditional logits, applies the guidance, filters (top-k by the k-th largest value, top-p over the values sorted in registers),
writes the sampling distribution, draws and gathers the token's codebook vector into the stage's
embedded map. The draw is the one ``torch.multinomial`` makes for one sample per row —
``argmax(p / e)`` with ``e ~ Exp(1)`` drawn beforehand by PyTorch from the call's generator
(:func:`sample_stage`) — so the random stream is the reference's. The guidance is computed with
the reference's float32 operations (no fused multiply-add), so it is bit-exact; softmax and the
top-p sum may round differently in the last bit, which can change a draw only where two
candidates tie to that precision. :func:`stage_probs_into` runs the same kernel without the draw
(only the distribution, of any stage of a chunk: a verify chunk's ``p``).

It is the fused equivalent of the one stage step's distribution,
:func:`~sdvar_lib.models.sampling.guided_logits` then :func:`~sdvar_lib.models.sampling.stage_probs`
(the draft's ``q`` and the target's ``p``), followed by the draw and the codebook lookup;
``tests/test_fast_kernels.py`` checks it against them.
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
its own: with its sort of the whole vocabulary this kernel takes 4.5-5 s to compile, the block kernels 0.2 s; H200
machine, 12-02)."""
UNALIGNED_SAMPLE = ["IDX"]
"""Pointers not specialised on 16-byte alignment: a stage's int64 token slots start at an odd row at odd batch sizes
(8-byte aligned), which would compile a version of its own."""


def _jit_options() -> dict:
    options = {"do_not_specialize": SIZES_SAMPLE}
    if "do_not_specialize_on_alignment" in inspect.signature(triton.jit).parameters:  # Triton 3.2 and newer
        options["do_not_specialize_on_alignment"] = UNALIGNED_SAMPLE
    return options


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
        ranks = tl.arange(0, BLOCK_V)[None, :]
        s = tl.sort(x, dim=1, descending=True)
        if HAS_TOP_K:
            kth = tl.max(tl.where(ranks == top_k - 1, s, float("-inf")), axis=1)[:, None]
            x = tl.where(x < kth, float("-inf"), x)
            s = tl.where(s < kth, float("-inf"), s)
        if HAS_TOP_P:
            e_sorted = tl.exp(s - tl.where(row_ok, tl.max(s, axis=1), 0.0)[:, None])
            p_sorted = e_sorted / tl.where(row_ok, tl.sum(e_sorted, axis=1), 1.0)[:, None]
            mass_up_to_here = tl.cumsum(p_sorted, axis=1, reverse=True)  # the reference's ascending cumsum
            keep = (mass_up_to_here > 1.0 - top_p) | (ranks == 0)
            lowest_kept = tl.min(tl.where(keep, s, float("inf")), axis=1)[:, None]
            x = tl.where(x < lowest_kept, float("-inf"), x)
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
