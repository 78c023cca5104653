#!/usr/bin/env python3
"""Issue 21, item 2 (the draft at its bound): what would cut the d16 block's per-kernel cost at batch 1?

    python3 scripts/device_pdl_probe.py --out $OUT        # on a CUDA GPU with Triton (Hopper or newer for PDL)

An experiment, not part of the library: chains of 16 synthetic blocks (C = 1024 as d16, 1920 as d30; per block the qkv,
projection, fc1 + GELU and fc2 products and three LayerNorm-like Triton kernels, no attention) captured in
one CUDA graph and replayed; microseconds per block, median of 30 replays, at ``rows`` = 2 and 8 (the
CFG-doubled rows of stages 0 and 1 at batch 1). Four ways of running the same chain:

- ``cublas``: the products by cuBLAS (``F.linear``, ``torch._addmm_activation`` for the GELU), as the fast
  path runs them, the Triton kernels launched plainly;
- ``cublas_pdl``: the same with the Triton kernels launched with programmatic dependent launch (PDL: a
  kernel may start while the previous one finishes; it waits with ``gdc_wait`` before reading its input);
- ``gemv``: the products by a Triton matrix-vector kernel (each program loads a tile of weight rows,
  then the activations), plain launches;
- ``gemv_pdl``: that kernel loads its weight tile *before* ``gdc_wait`` (the weights do not depend on
  the previous kernel, so their load overlaps it) and every kernel is launched with PDL;
- ``skinny`` / ``skinny_pdl``: a few-row product with ``tl.dot`` tiles (:func:`skinny_linear`, its first weight
  chunk loaded before the wait) with plain launches / with PDL everywhere; ``--sweep`` times it with PDL at
  several tile sizes against cuBLAS instead (``pdl_sweep.json``).

The matrix-vector kernel runs at the d16 width and 2 or 8 rows only (it is slow beyond); the rest at d16 and
d30 widths and 2-64 rows.

Every variant's output is compared with the ``cublas`` chain's (relative max error, bf16 rounding).
Writes ``pdl_probe.json`` in ``--out`` (atomically). Without CUDA it says so and exits with status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sdvar_lib.util.atomic import atomic_write_text  # noqa: E402

BLOCKS, REPLAYS = 16, 30
WIDTHS = (1024, 1920)  # d16, d30
ROWS = (2, 8, 18, 32, 64)  # CFG-doubled token rows of stages 0-3 at batch 1, and the skinny products' limit
VARIANTS = ("cublas", "cublas_pdl", "gemv", "gemv_pdl", "skinny", "skinny_pdl")
SWEEP_ROWS = (2, 8, 32, 64)
SWEEP_TILES = ((16, 128, 4, 4), (32, 128, 4, 4), (64, 128, 4, 4), (32, 64, 4, 4), (32, 256, 3, 4), (64, 64, 6, 4),
               (16, 256, 3, 4), (32, 128, 4, 8))
"""``--sweep``: (block_n, block_k, stages, warps) of the few-row product, each with PDL, against cuBLAS."""


def _kernels():
    """The probe's Triton kernels (defined only where Triton is imported)."""
    import triton
    import triton.language as tl

    @triton.jit
    def norm_kernel(X, Y, M, N, SX, USE_GDC: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
        if USE_GDC:
            tl.extra.cuda.gdc_wait()
            tl.extra.cuda.gdc_launch_dependents()
        rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
        cols = tl.arange(0, BLOCK_N)
        mask = (rows < M)[:, None] & (cols < N)[None, :]
        x = tl.load(X + rows[:, None] * SX + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        d = tl.where(mask, x - (tl.sum(x, axis=1) / N)[:, None], 0.0)
        y = d / tl.sqrt(tl.sum(d * d, axis=1) / N + 1e-6)[:, None]
        tl.store(Y + rows[:, None] * N + cols[None, :], y.to(Y.dtype.element_ty), mask=mask)

    @triton.jit
    def gemv_kernel(X, W, B, Y, M, N, K: tl.constexpr, GELU: tl.constexpr, USE_GDC: tl.constexpr,
                    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
        n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
        k = tl.arange(0, K)
        w = tl.load(W + n[:, None] * K + k[None, :], mask=(n < N)[:, None], other=0.0)  # no dependency: first
        b = tl.load(B + n, mask=n < N, other=0.0).to(tl.float32)
        if USE_GDC:
            tl.extra.cuda.gdc_wait()
            tl.extra.cuda.gdc_launch_dependents()
        wf = w.to(tl.float32)
        for m in tl.static_range(BLOCK_M):
            if m < M:
                acc = tl.sum(wf * tl.load(X + m * K + k).to(tl.float32)[None, :], axis=1) + b
                if GELU:
                    u = 0.7978845608028654 * (acc + 0.044715 * acc * acc * acc)
                    acc = acc * tl.sigmoid(2.0 * u)  # the tanh GELU: 0.5 (1 + tanh u) = sigmoid(2u)
                tl.store(Y + m * N + n, acc.to(Y.dtype.element_ty), mask=n < N)

    # K and the row stride stay specialised (multiples of 16: whole-vector loads along K); left unspecialised,
    # every load was split into single elements and the chain took 2-10x cuBLAS's time (H200, 12-02)
    @triton.jit(do_not_specialize=["M", "N"])
    def skinny_kernel(X, W, BIAS, Y, M, N, K, stride_x, GELU: tl.constexpr, USE_GDC: tl.constexpr,
                      BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, STAGES: tl.constexpr,
                      EVEN_K: tl.constexpr):
        n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
        m = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
        kk = tl.arange(0, BLOCK_K)
        n_ok, m_ok = n < N, m < M
        w = tl.load(W + n[:, None] * K + kk[None, :], mask=n_ok[:, None] & ((kk < K)[None, :] | EVEN_K), other=0.0)
        b = tl.load(BIAS + n, mask=n_ok, other=0.0).to(tl.float32)  # weights and bias in flight before the wait
        if USE_GDC:
            tl.extra.cuda.gdc_wait()
            tl.extra.cuda.gdc_launch_dependents()
        x = tl.load(X + m[:, None] * stride_x + kk[None, :], mask=m_ok[:, None] & ((kk < K)[None, :] | EVEN_K),
                    other=0.0)
        acc = tl.dot(x, tl.trans(w), out_dtype=tl.float32)
        for k0 in tl.range(BLOCK_K, K, BLOCK_K, num_stages=STAGES):
            k = k0 + kk
            w = tl.load(W + n[:, None] * K + k[None, :], mask=n_ok[:, None] & ((k < K)[None, :] | EVEN_K), other=0.0)
            x = tl.load(X + m[:, None] * stride_x + k[None, :], mask=m_ok[:, None] & ((k < K)[None, :] | EVEN_K),
                        other=0.0)
            acc = tl.dot(x, tl.trans(w), acc, out_dtype=tl.float32)
        acc += b[None, :]
        if GELU:
            u = 0.7978845608028654 * (acc + 0.044715 * acc * acc * acc)
            acc = acc * tl.sigmoid(2.0 * u)
        tl.store(Y + m[:, None] * N + n[None, :], acc.to(Y.dtype.element_ty), mask=m_ok[:, None] & n_ok[None, :])

    return triton, norm_kernel, gemv_kernel, skinny_kernel


def skinny_linear(skinny_kernel, x, weight, bias, gelu=False, pdl=False, tiles=(32, 256, 3, 4)):
    """``x @ weight.T + bias`` (tanh GELU with ``gelu``) by the few-row ``tl.dot`` kernel; ``tiles`` = (block_n,
    block_k, stages, warps); one tile of max(16, next power of two of the rows) rows."""
    import triton

    M, K = x.shape
    N = weight.shape[0]
    bn, bk, stages, warps = tiles
    bm = max(16, triton.next_power_of_2(M))
    y = torch.empty((M, N), dtype=x.dtype, device=x.device)
    skinny_kernel[(triton.cdiv(N, bn), triton.cdiv(M, bm))](
        x, weight, bias, y, M, N, K, x.stride(0), GELU=gelu, USE_GDC=pdl, BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk,
        STAGES=stages, EVEN_K=K % bk == 0, num_warps=warps, **({"launch_pdl": True} if pdl else {}))
    return y


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path, help="folder for pdl_probe.json")
    parser.add_argument("--sweep", action="store_true", help="sweep the few-row product's tiles instead (pdl_sweep.json)")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("device_pdl_probe: needs a CUDA GPU (torch.cuda.is_available() is False)", file=sys.stderr)
        return 2
    triton, norm_kernel, gemv_kernel, skinny_kernel = _kernels()
    import triton.language as tl

    has_pdl = hasattr(tl.extra.cuda, "gdc_wait") and torch.cuda.get_device_capability()[0] >= 9
    dev = torch.device("cuda")
    gen = torch.Generator(device=dev).manual_seed(0)

    def rand(*shape, scale):
        return (torch.randn(*shape, device=dev, generator=gen) * scale).to(torch.bfloat16)

    def weights_of(C):
        return [{name: (rand(n, k, scale=k ** -0.5), rand(n, scale=0.02))
                 for name, n, k in (("qkv", 3 * C, C), ("proj", C, C), ("fc1", 4 * C, C), ("fc2", C, 4 * C))}
                for _ in range(BLOCKS)]

    def norm(x, y, pdl):
        rows, width = x.shape
        block_m = max(1, min(triton.next_power_of_2(rows), 2048 // width))
        norm_kernel[(triton.cdiv(rows, block_m),)](x, y, rows, width, x.stride(0), USE_GDC=pdl, BLOCK_M=block_m,
                                                   BLOCK_N=triton.next_power_of_2(width), num_warps=4,
                                                   **({"launch_pdl": True} if pdl else {}))
        return y

    def gemv(x, wb, y, gelu, pdl):
        rows, k = x.shape
        n = wb[0].shape[0]
        block_n = min(64, (16384 if k <= 1024 else 32768) // k)
        gemv_kernel[(triton.cdiv(n, block_n),)](x, wb[0], wb[1], y, rows, n, K=k, GELU=gelu, USE_GDC=pdl,
                                                BLOCK_M=triton.next_power_of_2(rows), BLOCK_N=block_n,
                                                num_warps=8 if k > 1024 else 4, **({"launch_pdl": True} if pdl else {}))
        return y

    def chain_of(C: int, weights, rows: int, variant: str, tiles=None):
        x0 = torch.randn(rows, C, device=dev, generator=torch.Generator(device=dev).manual_seed(rows)).to(torch.bfloat16)
        bufs = {name: torch.empty(rows, width, device=dev, dtype=torch.bfloat16)
                for name, width in (("h", C), ("qkv", 3 * C), ("a", C), ("o", C), ("f", 4 * C), ("x", C))}
        pdl_norm = variant in ("cublas_pdl", "gemv_pdl", "skinny_pdl")
        pdl_gemv = variant == "gemv_pdl"

        def product(x, wb, out, gelu=False):
            if variant.startswith("skinny"):
                return skinny_linear(skinny_kernel, x, wb[0], wb[1], gelu=gelu, pdl=variant == "skinny_pdl",
                                     **({"tiles": tiles} if tiles else {}))
            if variant.startswith("gemv"):
                return gemv(x, wb, bufs[out], gelu, pdl_gemv)
            return torch._addmm_activation(wb[1], x, wb[0].t(), use_gelu=True) if gelu else F.linear(x, *wb)

        def chain():
            x = x0
            for w in weights:
                qkv = product(norm(x, bufs["h"], pdl_norm), w["qkv"], "qkv")
                o = product(norm(qkv[:, :C], bufs["a"], pdl_norm), w["proj"], "o")
                f = product(norm(o, bufs["h"], pdl_norm), w["fc1"], "f", gelu=True)
                x = product(f, w["fc2"], "x")
            return x

        return chain

    def replay_us(chain) -> tuple[float, torch.Tensor]:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):
                chain()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = chain()
        times = []
        for _ in range(REPLAYS):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            graph.replay()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end) * 1000 / BLOCKS)
        return sorted(times)[len(times) // 2], out.float().clone()

    result = {"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__, "triton": triton.__version__,
              "pdl": has_pdl, "rows": []}
    if args.sweep:
        result["sweep"] = []
        for C in WIDTHS:
            weights = weights_of(C)
            for rows in SWEEP_ROWS:
                base, reference = replay_us(chain_of(C, weights, rows, "cublas"))
                for tiles in SWEEP_TILES:
                    us, out = replay_us(chain_of(C, weights, rows, "skinny_pdl" if has_pdl else "skinny", tiles))
                    row = {"width": C, "rows": rows, "tiles": list(tiles), "us_per_block": round(us, 2),
                           "cublas_us_per_block": round(base, 2),
                           "rel_err_vs_cublas": float((out - reference).abs().max() / reference.abs().max())}
                    result["sweep"].append(row)
                    print(row, flush=True)
            del weights
            torch.cuda.empty_cache()
        args.out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(args.out / "pdl_sweep.json", json.dumps(result, indent=1) + "\n")
        return 0
    for C in WIDTHS:
        weights = weights_of(C)
        for rows in ROWS:
            reference = None
            for variant in VARIANTS:
                if (variant.endswith("_pdl") and not has_pdl) or (variant.startswith("gemv") and (C, rows) not in (
                        (1024, 2), (1024, 8))):
                    continue
                us, out = replay_us(chain_of(C, weights, rows, variant))
                if reference is None:
                    reference = out
                error = float((out - reference).abs().max() / reference.abs().max())
                row = {"width": C, "rows": rows, "variant": variant, "us_per_block": round(us, 2),
                       "rel_err_vs_cublas": error}
                result["rows"].append(row)
                print(row, flush=True)
            del reference
        del weights
        torch.cuda.empty_cache()
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out / "pdl_probe.json", json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
