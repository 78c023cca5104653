#!/usr/bin/env python3
"""Issue 21, item 2 (the draft at its bound): what would cut the d16 block's per-kernel cost at batch 1?

    python3 scripts/device_pdl_probe.py --out $OUT        # on a CUDA GPU with Triton (Hopper or newer for PDL)

An experiment, not part of the library: chains of 16 synthetic d16 blocks (C = 1024; per block the qkv,
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
  the previous kernel, so their load overlaps it) and every kernel is launched with PDL.

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

C, BLOCKS, REPLAYS = 1024, 16, 30
VARIANTS = ("cublas", "cublas_pdl", "gemv", "gemv_pdl")


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

    return triton, norm_kernel, gemv_kernel


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path, help="folder for pdl_probe.json")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("device_pdl_probe: needs a CUDA GPU (torch.cuda.is_available() is False)", file=sys.stderr)
        return 2
    triton, norm_kernel, gemv_kernel = _kernels()
    import triton.language as tl

    has_pdl = hasattr(tl.extra.cuda, "gdc_wait") and torch.cuda.get_device_capability()[0] >= 9
    dev = torch.device("cuda")
    gen = torch.Generator(device=dev).manual_seed(0)

    def rand(*shape, scale):
        return (torch.randn(*shape, device=dev, generator=gen) * scale).to(torch.bfloat16)

    weights = [{name: (rand(n, k, scale=k ** -0.5), rand(n, scale=0.02))
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

    def chain_of(rows: int, variant: str):
        x0 = torch.randn(rows, C, device=dev, generator=torch.Generator(device=dev).manual_seed(rows)).to(torch.bfloat16)
        bufs = {name: torch.empty(rows, width, device=dev, dtype=torch.bfloat16)
                for name, width in (("h", C), ("qkv", 3 * C), ("a", C), ("o", C), ("f", 4 * C), ("x", C))}
        pdl_norm, pdl_gemv = variant in ("cublas_pdl", "gemv_pdl"), variant == "gemv_pdl"

        def product(x, wb, out, gelu=False):
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
    for rows in (2, 8):
        reference = None
        for variant in VARIANTS:
            if variant.endswith("_pdl") and not has_pdl:
                continue
            us, out = replay_us(chain_of(rows, variant))
            if reference is None:
                reference = out
            error = float((out - reference).abs().max() / reference.abs().max())
            row = {"rows": rows, "variant": variant, "us_per_block": round(us, 2), "rel_err_vs_cublas": error}
            result["rows"].append(row)
            print(row, flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out / "pdl_probe.json", json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
