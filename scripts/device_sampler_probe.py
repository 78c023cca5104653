#!/usr/bin/env python3
"""Issue 21 (preparation and the batch-8/32 target): a stage sampler that finds its top-k/top-p cut-offs without a sort.

    python3 scripts/device_sampler_probe.py --out $OUT        # on a CUDA GPU with Triton

An experiment, not part of the library. The fused sampler kernel (:mod:`sdvar_lib.fast.kernels.sampling`) sorts every
token's 4096 guided logits in registers to find the top-k and top-p cut-offs: it takes 4.5-5 s to compile (the block
kernels 0.2 s; one H200 machine, 12-02), and past 2048 token rows the fast path samples with PyTorch's kernels instead
(``FUSED_SAMPLER_MAX_ROWS``). This probe's kernel finds the same cut-offs by bisection, bit by bit over an
order-preserving integer image of the float32 values (32 counting rounds for the k-th largest value, 32 summing rounds
for the top-p boundary), then does what the library kernel does (softmax, the ``argmax(p / Exp(1))`` draw, the codebook
row). The cut-off values are the library kernel's: the k-th largest value exactly; the smallest value whose mass of
values at or below it exceeds ``1 - top_p`` (summed in another order than the library's cumulative sum, so a token can
change only where that mass ties ``1 - top_p`` to float32 rounding).

On the GPU it reports, against the library kernel: the first launch in a fresh process (compile), the replay time at
1 x 1, 8 x 256 and 32 x 256 token rows (median of CUDA-event timings), and how many tokens differ. Writes
``sampler_probe.json`` in ``--out`` (atomically). Without CUDA it says so and exits with status 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sdvar_lib.util.atomic import atomic_write_text  # noqa: E402

V, CV, ROWS, REPLAYS = 4096, 32, (1, 2048, 8192), 20


def _kernels():
    """The probe's Triton kernel (defined only where Triton is imported)."""
    import triton
    import triton.language as tl

    @triton.jit(do_not_specialize=["B", "l", "chunk_l", "offset", "top_k", "draw"])
    def search_sample_kernel(
        LOGITS, NOISE, IDX, PROBS, H, CODEBOOK,
        B, l, chunk_l, offset, V, Cv, cfg_cond, cfg_uncond, top_k, top_p, draw,
        HAS_TOP_K: tl.constexpr, HAS_TOP_P: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_V: tl.constexpr,
        BLOCK_CV: tl.constexpr,
    ):
        n = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
        row_ok = n < B * l
        b = n // l
        j = n % l
        cols = tl.arange(0, BLOCK_V)
        valid = row_ok[:, None] & (cols < V)[None, :]
        cond = tl.load(LOGITS + ((b * chunk_l + offset + j) * V)[:, None] + cols[None, :], mask=valid, other=0.0)
        uncond = tl.load(LOGITS + (((B + b) * chunk_l + offset + j) * V)[:, None] + cols[None, :], mask=valid,
                         other=0.0)
        x = cond * cfg_cond - uncond * cfg_uncond
        x = tl.where(valid, x, float("-inf"))
        if HAS_TOP_K or HAS_TOP_P:
            # an order-preserving unsigned image of the float32 values: flip every bit of negatives, the sign of the rest
            bits = x.to(tl.uint32, bitcast=True)
            all_ones = tl.full((BLOCK_M, BLOCK_V), 0xFFFFFFFF, tl.uint32)
            sign = tl.full((BLOCK_M, BLOCK_V), 0x80000000, tl.uint32)
            keys = tl.where((bits & sign) != 0, bits ^ all_ones, bits | sign)
            xmax = tl.max(x, axis=1)
            if HAS_TOP_K:  # the largest key T with at least k keys >= T: the k-th largest value's key
                t = tl.zeros((BLOCK_M,), dtype=tl.uint32)
                for i in range(32):
                    cand = t | (tl.full((BLOCK_M,), 1, tl.uint32) << (31 - i))
                    count = tl.sum((keys >= cand[:, None]).to(tl.int32), axis=1)
                    t = tl.where(count >= top_k, cand, t)
                kth = tl.min(tl.where(keys >= t[:, None], x, float("inf")), axis=1)[:, None]
                x = tl.where(x < kth, float("-inf"), x)
            if HAS_TOP_P:  # the smallest value whose mass of values at or below it exceeds 1 - top_p
                e = tl.exp(x - tl.where(row_ok, xmax, 0.0)[:, None])
                p = e / tl.where(row_ok, tl.sum(e, axis=1), 1.0)[:, None]
                t = tl.zeros((BLOCK_M,), dtype=tl.uint32)  # the largest key with mass(keys <= it) <= 1 - top_p
                for i in range(32):
                    cand = t | (tl.full((BLOCK_M,), 1, tl.uint32) << (31 - i))
                    mass = tl.sum(tl.where(keys <= cand[:, None], p, 0.0), axis=1)
                    t = tl.where(mass <= 1.0 - top_p, cand, t)
                lowest_kept = tl.min(tl.where(keys > t[:, None], x, float("inf")), axis=1)
                lowest_kept = tl.minimum(lowest_kept, xmax)[:, None]  # the largest value is always kept
                x = tl.where(x < lowest_kept, float("-inf"), x)
        e = tl.exp(x - tl.where(row_ok, tl.max(x, axis=1), 0.0)[:, None])
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

    return triton, search_sample_kernel


def search_sample_into(kernel, logits_2BLV, l, cfg_t, top_k, top_p, codebook_VC, noise, idx, probs, h) -> None:
    """The probe kernel on a stage's buffers, as :func:`sdvar_lib.fast.kernels.sampling.sample_stage_into` takes them."""
    import triton

    from sdvar_lib.fast.kernels.block import rows_per_program

    rows, chunk_l, V_ = logits_2BLV.shape
    B = rows // 2
    block_v = triton.next_power_of_2(V_)
    block_m = rows_per_program(B * l, block_v, logits_2BLV.device) if logits_2BLV.device.type == "cpu" else 1
    Cv = codebook_VC.shape[1]
    kernel[(triton.cdiv(B * l, block_m),)](
        logits_2BLV, noise, idx, probs, h, codebook_VC, B, l, chunk_l, chunk_l - l, V_, Cv, 1 + cfg_t, cfg_t, top_k,
        top_p, 1, HAS_TOP_K=top_k > 0, HAS_TOP_P=top_p > 0, BLOCK_M=block_m, BLOCK_V=block_v,
        BLOCK_CV=triton.next_power_of_2(Cv), num_warps=8 if block_v >= 2048 else 4, enable_fp_fusion=False)


def _buffers(tokens: int, device, seed: int):
    gen = torch.Generator(device=device).manual_seed(seed)
    logits = torch.randn(2, tokens, V, generator=gen, device=device) * 3  # B = 1, a chunk of `tokens` positions
    codebook = torch.randn(V, CV, generator=gen, device=device)
    noise = torch.empty(tokens, V, device=device).exponential_(generator=gen)
    return logits, codebook, noise


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path, help="folder for sampler_probe.json")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("device_sampler_probe: needs a CUDA GPU (torch.cuda.is_available() is False)", file=sys.stderr)
        return 2
    os.environ["TRITON_CACHE_DIR"] = tempfile.mkdtemp(prefix="sampler_probe_")  # compiles are timed cold
    from sdvar_lib.fast.kernels.sampling import sample_stage_into

    triton, kernel = _kernels()
    dev, top_k, top_p, cfg_t = torch.device("cuda"), 900, 0.96, 1.5
    result = {"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__, "triton": triton.__version__,
              "top_k": top_k, "top_p": top_p, "first_launch_s": {}, "rows": []}
    impls = {"library_sort": lambda *a: sample_stage_into(*a),
             "search": lambda *a: search_sample_into(kernel, *a)}
    for name, fn in impls.items():  # the first launch of each compiles it
        logits, codebook, noise = _buffers(1, dev, 0)
        out = (torch.empty(1, dtype=torch.long, device=dev), torch.empty(1, V, device=dev),
               torch.empty(1, CV, device=dev))
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn(logits, 1, cfg_t, top_k, top_p, codebook, noise, *out)
        torch.cuda.synchronize()
        result["first_launch_s"][name] = round(time.perf_counter() - t0, 3)
    for tokens in ROWS:
        logits, codebook, noise = _buffers(tokens, dev, tokens)
        outs, times = {}, {}
        for name, fn in impls.items():
            idx, probs = torch.empty(tokens, dtype=torch.long, device=dev), torch.empty(tokens, V, device=dev)
            h = torch.empty(tokens, CV, device=dev)
            fn(logits, tokens, cfg_t, top_k, top_p, codebook, noise, idx, probs, h)
            samples = []
            for _ in range(REPLAYS):
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fn(logits, tokens, cfg_t, top_k, top_p, codebook, noise, idx, probs, h)
                end.record()
                torch.cuda.synchronize()
                samples.append(start.elapsed_time(end))
            times[name] = sorted(samples)[REPLAYS // 2]
            outs[name] = (idx.clone(), probs.clone())
        (i_ref, p_ref), (i_new, p_new) = outs["library_sort"], outs["search"]
        row = {"token_rows": tokens, "ms": {k: round(v, 4) for k, v in times.items()},
               "tokens_differing": int((i_ref != i_new).sum()),
               "probs_max_abs_diff": float((p_ref - p_new).abs().max())}
        result["rows"].append(row)
        print(row, flush=True)
    print({"first_launch_s": result["first_launch_s"]}, flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out / "sampler_probe.json", json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
