#!/usr/bin/env python3
"""Issue 21: which fused multiply-add order makes the f_hat update's Triton upsampling PyTorch's CUDA kernel, bit for bit.

    python3 scripts/device_bicubic_probe.py --out $OUT      # on a CUDA GPU with Triton

For every order of :data:`sdvar_lib.fast.kernels.bicubic.FMA_ORDERS`, every upsampled stage of the official VAR
(Cvae 32, 1x1 ... 13x13 to 16x16), batch 1 and 32, channels-last token maps (as the stage steps make them) and
contiguous ones: how many values differ from ``F.interpolate(mode="bicubic")`` and by how much; then the time of
one upsampling at batch 32 (13x13, median of CUDA-event timings) for the Triton kernel and for PyTorch's.
Writes ``bicubic_probe.json`` in ``--out`` (atomically). Without CUDA it says so and exits with status 2.
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
from sdvar_lib.util.timing import median_event_ms  # noqa: E402

PATCH_NUMS = (1, 2, 3, 4, 5, 6, 8, 10, 13)
CVAE, OUT = 32, 16


def _maps(batch: int, pn: int, layout: str, gen: torch.Generator) -> torch.Tensor:
    if layout == "channels_last":
        return torch.randn(batch, pn * pn, CVAE, generator=gen, device="cuda").transpose(1, 2).reshape(batch, CVAE, pn, pn)
    return torch.randn(batch, CVAE, pn, pn, generator=gen, device="cuda")


@torch.no_grad()
def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("device_bicubic_probe: needs a CUDA GPU", file=sys.stderr)
        return 2
    from sdvar_lib.fast.kernels import bicubic

    data = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "orders": {}}
    for order in bicubic.FMA_ORDERS:
        bicubic.FMA_ORDER = order
        cells = []
        for batch in (1, 32):
            for layout in ("channels_last", "contiguous"):
                gen = torch.Generator(device="cuda").manual_seed(batch)
                for pn in PATCH_NUMS:
                    x = _maps(batch, pn, layout, gen)
                    got, want = bicubic.upsample_bicubic(x, (OUT, OUT)), F.interpolate(x, size=(OUT, OUT), mode="bicubic")
                    diff = (got - want).abs()
                    cells.append(dict(batch=batch, layout=layout, pn=pn, differ=int((diff > 0).sum()),
                                      max_diff=float(diff.max()), strides_equal=got.stride() == want.stride()))
        exact = all(c["differ"] == 0 and c["strides_equal"] for c in cells)
        data["orders"][str(order)] = {"exact": exact, "cells": cells}
        worst = max(cells, key=lambda c: c["differ"])
        print(f"order {order}: bit-exact everywhere: {exact}; worst cell {worst}", flush=True)
        atomic_write_text(Path(args.out) / "bicubic_probe.json", json.dumps(data, indent=1))
    x = _maps(32, 13, "channels_last", torch.Generator(device="cuda").manual_seed(0))
    bicubic.FMA_ORDER = 0
    data["time_ms"] = {"triton": median_event_ms(lambda: bicubic.upsample_bicubic(x, (OUT, OUT)), 50),
                       "torch": median_event_ms(lambda: F.interpolate(x, size=(OUT, OUT), mode="bicubic"), 50)}
    print(f"batch 32, 13x13 -> 16x16: Triton {data['time_ms']['triton'] * 1e3:.1f} us, PyTorch "
          f"{data['time_ms']['torch'] * 1e3:.1f} us", flush=True)
    atomic_write_text(Path(args.out) / "bicubic_probe.json", json.dumps(data, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
