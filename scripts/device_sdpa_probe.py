#!/usr/bin/env python3
"""Issue 21 (the batch-8/32 target): which of PyTorch's attention kernels is fastest at the fast pass's shapes.

    python3 scripts/device_sdpa_probe.py --out $OUT        # on a CUDA GPU

The fused pass (:mod:`sdvar_lib.fast.fused`) calls ``F.scaled_dot_product_attention`` with the chunk's queries
(``(rows, l, H, c)`` transposed, as ``qk_norm_into_cache`` returns them) against the KV cache's prefix
(``(rows, H, L_max, c)`` sliced to the chunk's end), and leaves the choice of kernel to PyTorch. A kernel profile of
an earlier run found cuDNN's kernel at batch 8's last stage at about 5x its FLOP bound. This probe times every
backend PyTorch offers (``SDPBackend``: flash, memory-efficient, cuDNN; and PyTorch's own choice) at the single-stage
shapes of d16 and d30 (every stage) and at a gamma-4 call's verify chunks (stages 0-4 and 5-9, with the
block-causal mask), at batch 1, 8 and 32 (CFG doubles the rows), median of CUDA-event timings of 20 launches each
inside one CUDA graph; the largest difference of each backend's output from PyTorch's choice; and per model and batch
the sum over the ten single-stage passes (one layer's attention in a whole call). With ``--calls`` it also times
whole target-alone calls (d16 -> d30 random bf16 weights, top-k 900, top-p 0.96, cfg 1.5, graphed decode, as the
bench) with PyTorch's choice against cuDNN's kernel excluded (``sdpa_kernel([flash, memory-efficient])`` around
every call: a run's graphs keep the kernels of their capture), two factories, calls interleaved, median of
``--repeats`` each per batch. A backend that refuses a shape is reported so.
Writes ``sdpa_probe.json`` in ``--out`` (atomically). Without CUDA it says so and exits with status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sdvar_lib.fast.graphs import capture_graph  # noqa: E402
from sdvar_lib.models.kv_cache import block_causal_chunk_mask, stage_ids_for  # noqa: E402
from sdvar_lib.util.atomic import atomic_write_text  # noqa: E402
from sdvar_lib.util.timing import median_event_ms  # noqa: E402

PATCH_NUMS = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)
MODELS = {"d16": 16, "d30": 30}  # heads of 64 channels
HEAD_DIM, REPEATS, REPLAYS = 64, 20, 5
SINGLE_STAGES = tuple(range(len(PATCH_NUMS)))
CHUNKS = ((0, 4), (5, 9))  # the verify chunks of a gamma-4 call with every proposal accepted


def _inputs(rows: int, heads: int, first: int, last: int, device, dtype):
    ids = stage_ids_for(PATCH_NUMS, device)
    q_begin, end, length = int((ids < first).sum()), int((ids <= last).sum()), ids.numel()
    l = end - q_begin
    gen = torch.Generator(device=device).manual_seed(rows * 1000 + first)
    q = torch.randn(rows, l, heads, HEAD_DIM, generator=gen, device=device, dtype=dtype).transpose(1, 2)
    k = torch.randn(rows, heads, length, HEAD_DIM, generator=gen, device=device, dtype=dtype)[:, :, :end]
    v = torch.randn(rows, heads, length, HEAD_DIM, generator=gen, device=device, dtype=dtype)[:, :, :end]
    mask = block_causal_chunk_mask(ids, q_begin, l) if first != last else None
    return q, k, v, mask


def _time_graphed(fn) -> float:
    """Median ms of one launch: ``REPEATS`` launches captured in one CUDA graph, ``REPLAYS`` timed replays."""
    captured = capture_graph(lambda: [fn() for _ in range(REPEATS)], torch.device("cuda"), warmup=2)
    return median_event_ms(captured.graph.replay, REPLAYS, warmup=0) / REPEATS


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path, help="folder for sdpa_probe.json")
    parser.add_argument("--batches", default="1,8,32", help="comma-separated batch sizes")
    parser.add_argument("--calls", action="store_true", help="also time whole target-alone calls, with and without cuDNN")
    parser.add_argument("--repeats", type=int, default=8, help="paired calls per batch with --calls")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("device_sdpa_probe: needs a CUDA GPU (torch.cuda.is_available() is False)", file=sys.stderr)
        return 2
    from torch.nn.attention import SDPBackend, sdpa_kernel

    backends = {"pytorch_choice": None, "flash": SDPBackend.FLASH_ATTENTION,
                "efficient": SDPBackend.EFFICIENT_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION}
    dev, dtype = torch.device("cuda"), torch.bfloat16
    result = {"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__, "rows": []}
    cases = [(s, s) for s in SINGLE_STAGES] + list(CHUNKS)
    contexts = calls_setup() if args.calls else None
    for batch in [int(b) for b in args.batches.split(",")]:
        for name, heads in MODELS.items():
            total = {}
            for first, last in cases:
                q, k, v, mask = _inputs(2 * batch, heads, first, last, dev, dtype)
                ref = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
                row = {"batch": batch, "model": name, "stages": f"{first}" if first == last else f"{first}-{last}",
                       "masked": mask is not None, "ms": {}, "max_abs_diff": {}}
                for label, backend in backends.items():
                    def call(backend=backend, q=q, k=k, v=v, mask=mask):
                        if backend is None:
                            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
                        with sdpa_kernel([backend]):
                            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
                    try:
                        out = call()
                        row["max_abs_diff"][label] = float((out.float() - ref.float()).abs().max())
                        row["ms"][label] = round(_time_graphed(call), 4)
                    except RuntimeError as exc:  # the backend refuses the shape, the mask or the capture
                        row["ms"][label] = f"refused: {str(exc).splitlines()[0][:120]}"
                result["rows"].append(row)
                print(batch, name, row["stages"], row["ms"], flush=True)
                if first == last:  # one layer's attention over a whole call's single-stage passes, per backend
                    for label, ms in row["ms"].items():
                        total[label] = total.get(label, 0.0) + ms if isinstance(ms, float) else float("nan")
            summary = {"batch": batch, "model": name,
                       "ms_per_layer_all_stages": {k: round(v, 4) for k, v in total.items()}}
            result.setdefault("per_layer_sums", []).append(summary)
            print(summary, flush=True)
        if args.calls:
            result.setdefault("calls", []).append(time_calls(contexts, batch, args.repeats))
            print(result["calls"][-1], flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out / "sdpa_probe.json", json.dumps(result, indent=1) + "\n")
    return 0


def calls_setup():
    """The pair and two fast-path contexts (each with its own runs and graphs) for :func:`time_calls`."""
    from sdvar_lib.bench.methods import PairContext, build_pair_bf16
    from sdvar_lib.fast.config import FastConfig
    from sdvar_lib.fast.factory import FastRunFactory
    from sdvar_lib.fast.graphs import GraphedDecode

    pair = build_pair_bf16(16, 30, torch.device("cuda"))
    decoder = GraphedDecode(pair.vae, fast=True)
    contexts = {name: PairContext.for_pair(name, pair, FastRunFactory(FastConfig()))
                for name in ("pytorch_choice", "no_cudnn")}
    for ctx in contexts.values():
        ctx.decoder = decoder
    return contexts


def time_calls(contexts, batch: int, repeats: int) -> dict:
    """Target-alone calls at ``batch`` with PyTorch's attention choice and with cuDNN's kernel excluded, interleaved
    (:func:`sdvar_lib.bench.sweep.time_paired`: graphed decode, bf16 autocast; its warm-up calls capture the graphs)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from sdvar_lib import SamplingConfig
    from sdvar_lib.bench.sweep import time_paired
    from sdvar_lib.sdvar.registry import get_method

    sampling, method = SamplingConfig(cfg=1.5, top_k=900, top_p=0.96), get_method("target")
    chosen, no_cudnn = contexts["pytorch_choice"], contexts["no_cudnn"]

    def without_cudnn(seed: int):
        with sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION]):
            return method.run(no_cudnn.sd, batch, None, seed, sampling)

    timing = time_paired(chosen, without_cudnn, lambda seed: method.run(chosen.sd, batch, None, seed, sampling),
                         repeats, warmup=2)
    for ctx in contexts.values():
        ctx.factory.release()
    torch.cuda.empty_cache()
    return {"batch": batch, "ms": {"pytorch_choice": round(timing.target_median, 3),
                                   "no_cudnn": round(timing.method_median, 3)},
            "no_cudnn_speedup": round(timing.speedup, 3)}


if __name__ == "__main__":
    sys.exit(main())
