#!/usr/bin/env python
"""Run SDVARParallelV1Tester on the official-size random-weight pair on CUDA, in float32 and bf16.

    python scripts/gpu_harness_check.py                       # d16 -> d30, float32 then bfloat16, B=2, gamma=2
    python scripts/gpu_harness_check.py --dtypes float32      # float32 only
    python scripts/gpu_harness_check.py --tiny --device cpu   # smoke test of this script on the tiny random pair

float32 runs the default eager SDVAR with TF32 disabled (strict tolerances: 1e-4 on logits).
bfloat16 converts both VARs to bf16 (the VQVAE stays float32) and runs on the fast path
(``sdvar_lib.fast.run.FastRunFactory``; CUDA graphs only with ``--cuda-graphs``), because the default
eager runs feed float32 VQVAE features into bf16 layers (see the report of issue 4). Its
tolerances are looser (bf16 defaults of ``test_framework.Tolerances``; ``--bf16-logits-tol`` overrides).

Prints the harness summary with every measured number and exits 1 if any test fails, 2 if the
models cannot be built. Needs about 10 GB of GPU memory for d30 in float32 with B=2.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from sdvar_lib.models.checkpoints import load_pair  # noqa: E402
from sdvar_lib.models.presets import build_official_pair  # noqa: E402
from sdvar_lib.sdvar.decoder import SDVAR  # noqa: E402
from test_framework import SDVARParallelV1Tester, Tolerances, print_summary  # noqa: E402

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dtypes", nargs="+", choices=sorted(DTYPES), default=["float32", "bfloat16"])
    p.add_argument("--B", type=int, default=2)
    p.add_argument("--gamma", type=int, default=2)
    p.add_argument("--draft-depth", type=int, default=16)
    p.add_argument("--target-depth", type=int, default=30)
    p.add_argument("--device", default="cuda")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cuda-graphs", action="store_true", help="bf16 fast path with CUDA graphs (default: eager programs)")
    p.add_argument("--bf16-logits-tol", type=float, default=None,
                   help="absolute logits tolerance for bf16 (default: dtype default)")
    p.add_argument("--tiny", action="store_true", help="use the tiny random pair instead (smoke test of the script)")
    return p.parse_args(argv)


def build_pair(args: argparse.Namespace):
    torch.manual_seed(args.seed)
    if args.tiny:
        return load_pair("tiny-random", device=args.device)
    return build_official_pair(args.draft_depth, args.target_depth, device=args.device)


def make_sdvar(pair, dtype: torch.dtype, args: argparse.Namespace) -> SDVAR:
    if dtype == torch.float32:
        return SDVAR(pair.draft, pair.target)
    from sdvar_lib.fast.config import FastConfig
    from sdvar_lib.fast.factory import FastRunFactory

    pair.draft.to(dtype)
    pair.target.to(dtype)
    use_graphs = bool(args.cuda_graphs and torch.device(args.device).type == "cuda")
    return SDVAR(pair.draft, pair.target, run_factory=FastRunFactory(FastConfig(use_cuda_graphs=use_graphs)))


def run_one(pair, dtype_name: str, args: argparse.Namespace) -> bool:
    dtype = DTYPES[dtype_name]
    sd = make_sdvar(pair, dtype, args)
    tol = Tolerances.for_model(sd.target_model)
    if dtype != torch.float32 and args.bf16_logits_tol is not None:
        tol = tol.with_logits(args.bf16_logits_tol)
    path = "eager" if dtype == torch.float32 else f"fast path ({'CUDA graphs' if args.cuda_graphs else 'eager programs'})"
    print(f"\n=== {dtype_name}: {pair.description}, {path}, tolerances: {tol.description} "
          f"(logits {tol.logits.abs:g} + {tol.logits.rel:g} * max|logit|) ===")
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    results = SDVARParallelV1Tester(sd, tolerances=tol, seed=args.seed).run_all_tests(B=args.B, gamma=args.gamma,
                                                                                      print_results=False)
    summary = print_summary(results, show_times=True, show_details=True, title=f"SDVARParallelV1Tester [{dtype_name}]")
    extra = f", peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB" if torch.cuda.is_available() else ""
    print(f"{dtype_name}: {time.perf_counter() - t0:.1f} s{extra}")
    return summary.all_passed


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if torch.device(args.device).type == "cuda" and not torch.cuda.is_available():
        print("CUDA is not available; run this on a GPU machine (or pass --device cpu --tiny for a smoke test)")
        return 2
    if torch.device(args.device).type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False  # strict float32 (the tolerances assume it)
        torch.backends.cudnn.allow_tf32 = False
        print(f"device {torch.cuda.get_device_name()}, torch {torch.__version__}, TF32 off")
    try:
        pair = build_pair(args)
    except Exception as exc:  # report and exit with a distinct status
        print(f"could not build the models: {type(exc).__name__}: {exc}")
        return 2
    ok = True
    for name in sorted(args.dtypes, key=lambda n: n != "float32"):  # float32 first: bf16 converts the models
        ok = run_one(pair, name, args) and ok
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    print("\nALL PASSED" if ok else "\nFAILURES (see above)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
