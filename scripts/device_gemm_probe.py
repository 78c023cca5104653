#!/usr/bin/env python3
"""Issue 21 (item 2): can one Triton kernel make a few-row product faster than cuBLAS at the fused pass's shapes?

    python3 scripts/device_gemm_probe.py --out $OUT [--depths 16,30] [--rows 2,8,18,32,50,72,128,200,338,512]

At batch 1 the d16 draft's pass is 147-163 kernels and its 64 products take 0.35-0.57 ms of a pass whose bytes need
0.15 ms: cuBLAS streams the 2-8 MB weight matrices at about 1.6 TB/s, and often splits K and adds a reducing kernel.
For every product of a block (``qkv``, ``proj``, ``fc1`` with its tanh GELU, ``fc2``) of the official d16 and d30
widths, at the row counts of batch 1's stages (CFG doubles the rows: 2 x tokens), this probe times PyTorch's product as
the fused pass calls it (``F.linear``; ``fc1`` through cuBLASLt's GELU epilogue, ``torch._addmm_activation``) against
:func:`few_rows_linear` - one Triton kernel, no split: each program a block of output columns over all of K, its rows
padded to 16 for ``tl.dot`` - under each tile shape of :data:`TILES` that divides the product. Each is timed as one
CUDA graph of 16 launches over 16 different weight matrices (more bytes than the GPU's L2 holds, as in a pass), median
of 20 replays per launch; the largest difference from the float32 product is kept beside it. Per shape: PyTorch's time,
the best tile's and their ratio. Writes ``gemm_probe.json`` and ``gemm_probe.md`` in ``--out`` (atomically). Without
CUDA it exits with status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sdvar_lib.util.atomic import atomic_write_text  # noqa: E402

WIDTHS = {16: 1024, 30: 1920}
"""Width ``C`` of the official VARs by depth (MLP hidden 4C)."""

TILES = ((16, 32, 128, 4), (16, 64, 128, 4), (16, 16, 256, 4), (16, 32, 256, 4), (16, 64, 64, 4), (16, 128, 64, 8),
         (32, 64, 128, 4))
"""``(BLOCK_M, BLOCK_N, BLOCK_K, num_warps)`` tried for every product."""

COPIES = 16
"""Distinct weight matrices per timed graph (16 x 2-29 MB: more than an H200's 50 MB L2)."""


def products(C: int) -> dict[str, tuple[int, int, bool]]:
    """A block's products: name -> ``(N, K, gelu)`` (the weight is ``(N, K)``, as ``nn.Linear`` stores it)."""
    return {"qkv": (3 * C, C, False), "proj": (C, C, False), "fc1": (4 * C, C, True), "fc2": (C, 4 * C, False)}


@triton.jit
def _few_rows_kernel(x_ptr, w_ptr, b_ptr, out_ptr, M, N, K, GELU: tl.constexpr, BLOCK_M: tl.constexpr,
                     BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    pid_n = tl.program_id(0)
    pid_m = tl.program_id(1)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        x = tl.load(x_ptr + rm[:, None] * K + (k0 + rk)[None, :], mask=rm[:, None] < M, other=0.0)
        w = tl.load(w_ptr + rn[:, None] * K + (k0 + rk)[None, :], mask=rn[:, None] < N, other=0.0)
        acc = tl.dot(x, tl.trans(w), acc)
    acc += tl.load(b_ptr + rn, mask=rn < N, other=0.0).to(tl.float32)[None, :]
    if GELU:  # VAR's tanh GELU; tanh(y) = 2 sigmoid(2y) - 1
        y = 0.7978845608028654 * (acc + 0.044715 * acc * acc * acc)
        acc = acc * tl.sigmoid(2.0 * y)  # 0.5 x (1 + tanh(y)) = x sigmoid(2y)
    tl.store(out_ptr + rm[:, None] * N + rn[None, :], acc.to(out_ptr.dtype.element_ty),
             mask=(rm[:, None] < M) & (rn[None, :] < N))


def few_rows_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, gelu: bool = False,
                    tile: tuple[int, int, int, int] = TILES[0], out: torch.Tensor | None = None) -> torch.Tensor:
    """``x @ weight.T + bias`` (then the tanh GELU) in one Triton kernel; ``x`` ``(M, K)``, ``weight`` ``(N, K)``."""
    block_m, block_n, block_k, warps = tile
    (M, K), N = x.shape, weight.shape[0]
    if weight.shape[1] != K or K % block_k or not (x.is_contiguous() and weight.is_contiguous()):
        raise ValueError(f"few_rows_linear needs contiguous x (M, K), weight (N, K) with K divisible by {block_k}; "
                         f"got x {tuple(x.shape)}, weight {tuple(weight.shape)}")
    out = torch.empty(M, N, dtype=x.dtype, device=x.device) if out is None else out
    grid = (triton.cdiv(N, block_n), triton.cdiv(M, block_m))
    _few_rows_kernel[grid](x, weight, bias, out, M, N, K, GELU=gelu, BLOCK_M=block_m, BLOCK_N=block_n,
                           BLOCK_K=block_k, num_warps=warps)
    return out


def torch_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, gelu: bool) -> torch.Tensor:
    """The product as the fused pass calls it on a GPU (``TritonBlockOps.fc1_gelu`` for the GELU one)."""
    if gelu:
        return torch._addmm_activation(bias, x, weight.t(), use_gelu=True)
    return F.linear(x, weight, bias)


def _graph_ms(fn, copies: int, replays: int = 20) -> float:
    """Median ms per launch of a CUDA graph of ``copies`` launches ``fn(i)``."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for i in range(copies):
            fn(i)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for i in range(copies):
            fn(i)
    times = []
    for _ in range(replays):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / copies)
    return sorted(times)[len(times) // 2]


@torch.no_grad()
def probe_product(C: int, name: str, M: int, dtype: torch.dtype = torch.bfloat16) -> dict:
    """PyTorch's product and :func:`few_rows_linear` under every tile at ``(M, N, K)``: times and differences."""
    N, K, gelu = products(C)[name]
    gen = torch.Generator(device="cuda").manual_seed(M * 7 + N)
    weights = [torch.randn(N, K, generator=gen, device="cuda", dtype=dtype) * K ** -0.5 for _ in range(COPIES)]
    biases = [torch.randn(N, generator=gen, device="cuda", dtype=dtype) * 0.1 for _ in range(COPIES)]
    x = torch.randn(M, K, generator=gen, device="cuda", dtype=dtype)
    ref = x.float() @ weights[0].float().t() + biases[0].float()
    ref = F.gelu(ref, approximate="tanh") if gelu else ref
    outs = [torch.empty(M, N, device="cuda", dtype=dtype) for _ in range(COPIES)]
    row = dict(C=C, product=name, M=M, N=N, K=K, megabytes=N * K * x.element_size() / 1e6)
    row["torch_ms"] = _graph_ms(lambda i: torch_linear(x, weights[i], biases[i], gelu), COPIES)
    row["torch_max_diff"] = float((torch_linear(x, weights[0], biases[0], gelu).float() - ref).abs().max())
    row["tiles"] = []
    for tile in TILES:
        if K % tile[2]:
            continue
        ms = _graph_ms(lambda i, tile=tile: few_rows_linear(x, weights[i], biases[i], gelu, tile, outs[i]), COPIES)
        diff = float((few_rows_linear(x, weights[0], biases[0], gelu, tile).float() - ref).abs().max())
        row["tiles"].append(dict(tile=list(tile), ms=ms, max_diff=diff))
    best = min(row["tiles"], key=lambda t: t["ms"])
    row["best"] = best
    row["speedup"] = row["torch_ms"] / best["ms"]
    return row


@torch.no_grad()
def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    p.add_argument("--depths", type=lambda t: [int(x) for x in t.split(",") if x], default=[16, 30])
    p.add_argument("--rows", type=lambda t: [int(x) for x in t.split(",") if x],
                   default=[2, 8, 18, 32, 50, 72, 128, 200, 338, 512])
    args = p.parse_args(argv)
    for depth in args.depths:
        if depth not in WIDTHS:
            p.error(f"--depths: {depth} is not one of {sorted(WIDTHS)}")
    if not torch.cuda.is_available():
        print("device_gemm_probe: needs a CUDA GPU", file=sys.stderr)
        return 2
    out = Path(args.out)
    data = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__, "rows": []}
    lines = [f"{data['gpu']}, torch {torch.__version__}, Triton {triton.__version__}; ms per launch, graphs of {COPIES} "
             "launches over different weights", "",
             "| d | product | M | N x K (MB) | PyTorch ms (GB/s) | best Triton ms (GB/s) | tile | PyTorch / Triton | "
             "max diff PyTorch / Triton |", "|---|---|---|---|---|---|---|---|---|"]
    for depth in args.depths:
        C = WIDTHS[depth]
        for M in args.rows:
            for name in products(C):
                row = probe_product(C, name, M)
                row["depth"] = depth
                data["rows"].append(row)
                best = row["best"]
                lines.append(f"| {depth} | {name} | {M} | {row['N']}x{row['K']} ({row['megabytes']:.1f}) | "
                             f"{row['torch_ms']:.4f} ({row['megabytes'] / row['torch_ms']:.0f}) | {best['ms']:.4f} "
                             f"({row['megabytes'] / best['ms']:.0f}) | {best['tile']} | {row['speedup']:.2f} | "
                             f"{row['torch_max_diff']:.1e} / {best['max_diff']:.1e} |")
                print(lines[-1], flush=True)
            atomic_write_text(out / "gemm_probe.json", json.dumps(data, indent=1))
            atomic_write_text(out / "gemm_probe.md", "\n".join(lines) + "\n")
    for depth in args.depths:
        mine = [r for r in data["rows"] if r["depth"] == depth]
        for M in args.rows:
            cells = [r for r in mine if r["M"] == M]
            torch_ms, best_ms = sum(r["torch_ms"] for r in cells), sum(r["best"]["ms"] for r in cells)
            lines.append(f"- d{depth}, {M} rows: a block's four products {torch_ms * 1e3:.1f} us with PyTorch, "
                         f"{best_ms * 1e3:.1f} us with the best tiles (x{torch_ms / best_ms:.2f}); over {depth} blocks "
                         f"{(torch_ms - best_ms) * depth:.3f} ms per pass")
    atomic_write_text(out / "gemm_probe.json", json.dumps(data, indent=1))
    atomic_write_text(out / "gemm_probe.md", "\n".join(lines) + "\n")
    print("\n".join(lines[-len(args.rows) * len(args.depths):]), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
