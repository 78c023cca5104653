#!/usr/bin/env python3
"""Issue 21: where the fast VQVAE decode spends its time, by batch size (the decode is ~14 % of a batch-32 call).

    python3 scripts/device_decode_probe.py --out $OUT [--batches 1,8,32] [--sweep]     # on a CUDA GPU with Triton

For the official VQVAE (random weights) at each batch size: the fast decode replayed as a CUDA graph
(:class:`sdvar_lib.fast.graphs.GraphedDecode`, median of CUDA-event timings), its whole bound at the GPU's measured
ceilings (:func:`sdvar_lib.bench.bounds.decode_cost`), how far its images are from the float32 reference decode
(relative L2), and the kernels of one eager run grouped by name (:func:`sdvar_lib.bench.profile.profile_decode`).
With ``--sweep``, ``--before DIR`` also times an earlier version in the same process (a paired A/B of a decode
change); make DIR on the CPU machine, where git is, and send it along with the run (the device's ``carry``)::

    mkdir before && for f in fast/decode.py fast/kernels/groupnorm.py; do git show REV:sdvar_lib/$f > before/${f##*/}; done

With ``--sweep``, first the graphed fast decode under a grid of GroupNorm/residual tilings
(:class:`sdvar_lib.fast.kernels.groupnorm.Tiling`; the library's default timed first and last, to see drift), each
checked against the first row's images; the rest of the probe then runs with the best tiling (the one whose slowest
batch size, against the default's time there, is fastest).
Writes ``decode_probe.json`` in ``--out`` (atomically). Without CUDA it says so and exits with status 2.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from dataclasses import asdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sdvar_lib.bench.bounds import bound_s, decode_cost  # noqa: E402
from sdvar_lib.bench.profile import profile_decode  # noqa: E402
from sdvar_lib.bench.timing import measure_ceilings  # noqa: E402
from sdvar_lib.fast.graphs import GraphedDecode  # noqa: E402
from sdvar_lib.models.presets import build_vae  # noqa: E402
from sdvar_lib.models.vqvae import VQVAE  # noqa: E402
from sdvar_lib.util.atomic import atomic_write_text  # noqa: E402
from sdvar_lib.util.timing import median_event_ms  # noqa: E402

REPLAYS = 20
SWEEP = {"values": (4096, 8192, 16384, 32768), "warps": (8, 16), "stat_programs": (256, 512, 1024)}


def _graphed_decode_ms(vae: VQVAE, f_hat: torch.Tensor, before=None) -> tuple[float, torch.Tensor]:
    """Median replay time of the graphed fast decode of ``f_hat`` (a fresh graph) and its images.

    ``before``: ``(decode module, groupnorm module)`` of an earlier version standing in for the library's (``--before``).
    """
    graphed = GraphedDecode(vae, fast=True)
    if before is not None:
        decode, kernels = before
        graphed._fast = decode.FastDecoder(vae)
        graphed._fast._k = kernels
    ms = median_event_ms(lambda: graphed(f_hat), REPLAYS)
    return ms, graphed(f_hat)


def _load_module(name: str, path: Path):
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _batches(text: str) -> list[int]:
    values = [int(x) for x in text.split(",") if x.strip()]
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"--batches needs positive integers separated by commas, got {text!r}")
    return values


@torch.no_grad()
def probe_batch(vae: VQVAE, batch: int, ceilings) -> dict:
    pn = vae.patch_nums[-1]
    gen = torch.Generator(device="cuda").manual_seed(batch)
    f_hat = torch.randn(batch, vae.Cvae, pn, pn, device="cuda", generator=gen)
    replay_ms, fast = _graphed_decode_ms(vae, f_hat)
    reference = VQVAE.fhat_to_img(vae, f_hat)
    torch.cuda.empty_cache()
    cost = decode_cost(vae, batch)
    prof = profile_decode(vae, batch, top=25)
    return {"batch": batch, "graph_replay_ms": round(replay_ms, 4),
            "bound_ms": round(bound_s(cost.flops, cost.bytes, ceilings) * 1e3, 4),
            "gflop": round(cost.flops / 1e9, 1), "gbytes": round(cost.bytes / 1e9, 3),
            "rel_l2_vs_float32": float((fast - reference).norm() / reference.norm()),
            "eager_kernels": prof.kernels, "eager_kernel_sum_ms": round(prof.kernel_sum_ms, 4),
            "top": [asdict(k) for k in prof.top]}


@torch.no_grad()
def sweep_tilings(vae: VQVAE, batches: list[int], before=None) -> dict:
    """Graphed fast-decode time of every tiling of :data:`SWEEP` (the default first and last) at every batch size.

    ``before``: another version of the kernel module, timed (with its own tiling) before the default and at the end.
    The best tiling is the one whose slowest batch size, against the default's mean time there, is fastest.
    """
    from sdvar_lib.fast.kernels import groupnorm
    from sdvar_lib.fast.kernels.groupnorm import Tiling

    default = groupnorm.DEFAULT_TILING
    grid = [Tiling(*combo) for combo in itertools.product(*SWEEP.values())]
    pn = vae.patch_nums[-1]
    inputs = {B: torch.randn(B, vae.Cvae, pn, pn, device="cuda", generator=torch.Generator(device="cuda").manual_seed(B))
              for B in batches}
    want, rows = {}, []
    cells = [(None, default), *[(None, t) for t in grid], (None, default)]
    if before is not None:
        cells = [(before, None), *cells, (before, None)]
    try:
        for old, tiling in cells:
            if tiling is not None:
                groupnorm.DEFAULT_TILING = tiling
            row = {"tiling": "before" if tiling is None else asdict(tiling), "ms": {}, "max_abs_diff_vs_first_row": {}}
            for B in batches:
                ms, images = _graphed_decode_ms(vae, inputs[B], old)
                row["ms"][B] = round(ms, 4)
                want.setdefault(B, images)
                row["max_abs_diff_vs_first_row"][B] = float((images - want[B]).abs().max())
            rows.append(row)
            print(row, flush=True)
    finally:
        groupnorm.DEFAULT_TILING = default
    return {"grid": SWEEP, "rows": rows, "best": choose_tiling(rows, asdict(default), batches)}


def choose_tiling(rows: list[dict], default: dict, batches: list[int]) -> dict:
    """The row (not ``before``) whose slowest batch size, against the mean time of the ``default`` rows there, is
    fastest; every row gets that ratio as ``worst_vs_default``."""
    defaults = [r for r in rows if r["tiling"] == default]
    if not defaults:
        raise ValueError("choose_tiling needs at least one row of the default tiling")
    base = {B: sum(r["ms"][B] for r in defaults) / len(defaults) for B in batches}
    for r in rows:
        r["worst_vs_default"] = round(max(r["ms"][B] / base[B] for B in batches), 4)
    return min((r for r in rows if r["tiling"] != "before"), key=lambda r: r["worst_vs_default"])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path, help="folder for decode_probe.json")
    parser.add_argument("--batches", type=_batches, default=[1, 8, 32], help="batch sizes (default 1,8,32)")
    parser.add_argument("--sweep", action="store_true", help="first time the decode under a grid of kernel tilings")
    parser.add_argument("--before", type=Path, default=None,
                        help="with --sweep: a folder with an earlier decode.py and groupnorm.py (from git show), timed "
                             "in the same run")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("device_decode_probe: needs a CUDA GPU (torch.cuda.is_available() is False)", file=sys.stderr)
        return 2
    import triton

    ceilings = measure_ceilings(torch.device("cuda"))
    torch.manual_seed(0)  # the same random weights in every run
    vae = build_vae("cuda").eval()
    result = {"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__, "triton": triton.__version__,
              "ceilings": asdict(ceilings), "batches": []}
    if args.sweep:
        from sdvar_lib.fast.kernels import groupnorm
        from sdvar_lib.fast.kernels.groupnorm import Tiling

        before = None
        if args.before is not None:
            before = tuple(_load_module(f"{name}_before", args.before / f"{name}.py") for name in ("decode", "groupnorm"))
        result["sweep"] = sweep_tilings(vae, args.batches, before)
        groupnorm.DEFAULT_TILING = Tiling(**result["sweep"]["best"]["tiling"])
        result["profiled_tiling"] = result["sweep"]["best"]["tiling"]
    for B in args.batches:
        row = probe_batch(vae, B, ceilings)
        result["batches"].append(row)
        print({k: v for k, v in row.items() if k != "top"}, flush=True)
        for k in row["top"][:12]:
            print(f"   {k['total_us']:9.1f} us  x{k['count']:<4d} {k['name']}", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out / "decode_probe.json", json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
