#!/usr/bin/env python3
"""Issue 21: the fused stage sampler against PyTorch's kernels, by stage size (why ``sampler="auto"`` has no size limit).

    python3 scripts/device_sampler_probe.py --out $OUT        # on a CUDA GPU with Triton

While the fused kernel sorted the vocabulary in registers, ``sampler="auto"`` drew a stage of more than 2048 tokens
(batch * pn**2) with PyTorch's kernels, the fast run's PyTorch branch (guidance, the reference's ``stage_probs``, the
draw ``argmax(p / noise)``, the codebook lookup). Its cut-offs are now found by bisection
(:mod:`sdvar_lib.fast.kernels.sampling`), and the limit is gone (4-6x faster at every size, one H200, 12-02).
This probe times both ways on the same stage buffers at the stage sizes of batch 1, 8 and 32 (median of CUDA-event
timings, each way launched alone), the fused kernel's first launch in a fresh Triton cache (its compile), and counts
the tokens on which the two ways differ (only where two candidates tie to float32 rounding). Writes ``sampler_probe.json`` in
``--out`` (atomically). Without CUDA it says so and exits with status 2.
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
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sdvar_lib.models.sampling import SamplingConfig, cfg_strength, guided_logits, stage_probs  # noqa: E402
from sdvar_lib.util.atomic import atomic_write_text  # noqa: E402
from sdvar_lib.util.timing import median_event_ms  # noqa: E402

V, CV, REPLAYS = 4096, 32, 20
STAGES = ((1, 1), (1, 256), (8, 169), (8, 256), (32, 169), (32, 256))
"""(batch, tokens per image) of the stages timed: the first stage, and the last two stages at batch 8 and 32."""
SI, NUM_STAGES = 9, 10  # the guidance ramp of the last stage (the same arithmetic at every stage)


def torch_way(logits_2BLV, l, si, sampling, codebook_VC, noise, idx, probs, h) -> None:
    """What a fast run does without the fused kernel (``FastRun.sample_into``'s PyTorch branch)."""
    guided = guided_logits(logits_2BLV[:, -l:], si, NUM_STAGES, sampling.cfg)
    probs.copy_(stage_probs(guided, sampling).view(-1, logits_2BLV.shape[-1]))
    torch.argmax(probs / noise, dim=-1, out=idx)
    h.copy_(F.embedding(idx, codebook_VC))


def fused_way(logits_2BLV, l, si, sampling, codebook_VC, noise, idx, probs, h) -> None:
    from sdvar_lib.fast.kernels.sampling import sample_stage_into

    t = cfg_strength(sampling.cfg, si, NUM_STAGES)
    sample_stage_into(logits_2BLV, l, t, sampling.top_k, sampling.top_p, codebook_VC, noise, idx, probs, h)


def _buffers(B: int, l: int, device, seed: int):
    gen = torch.Generator(device=device).manual_seed(seed)
    logits = torch.randn(2 * B, l, V, generator=gen, device=device) * 3
    codebook = torch.randn(V, CV, generator=gen, device=device)
    noise = torch.empty(B * l, V, device=device).exponential_(generator=gen)
    return logits, codebook, noise


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path, help="folder for sampler_probe.json")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("device_sampler_probe: needs a CUDA GPU (torch.cuda.is_available() is False)", file=sys.stderr)
        return 2
    os.environ["TRITON_CACHE_DIR"] = tempfile.mkdtemp(prefix="sampler_probe_")  # the first launch is timed cold
    import triton

    dev = torch.device("cuda")
    sampling = SamplingConfig(cfg=1.5, top_k=900, top_p=0.96)
    result = {"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__, "triton": triton.__version__,
              "top_k": sampling.top_k, "top_p": sampling.top_p,
              "stages": []}
    logits, codebook, noise = _buffers(1, 1, dev, 0)
    outs = (torch.empty(1, dtype=torch.long, device=dev), torch.empty(1, V, device=dev), torch.empty(1, CV, device=dev))
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    fused_way(logits, 1, SI, sampling, codebook, noise, *outs)
    torch.cuda.synchronize()
    result["fused_first_launch_s"] = round(time.perf_counter() - t0, 3)
    print({"fused_first_launch_s": result["fused_first_launch_s"]}, flush=True)
    for B, l in STAGES:
        logits, codebook, noise = _buffers(B, l, dev, B * l)
        times, got = {}, {}
        for name, way in (("torch", torch_way), ("fused", fused_way)):
            outs = (torch.empty(B * l, dtype=torch.long, device=dev), torch.empty(B * l, V, device=dev),
                    torch.empty(B * l, CV, device=dev))
            args_ = (logits, l, SI, sampling, codebook, noise, *outs)
            times[name] = median_event_ms(lambda way=way, args_=args_: way(*args_), REPLAYS, warmup=1)
            got[name] = outs
        row = {"batch": B, "tokens_per_image": l, "token_rows": B * l, "ms": {k: round(v, 4) for k, v in times.items()},
               "fused_speedup": round(times["torch"] / times["fused"], 2),
               "tokens_differing": int((got["torch"][0] != got["fused"][0]).sum()),
               "probs_max_abs_diff": float((got["torch"][1] - got["fused"][1]).abs().max())}
        result["stages"].append(row)
        print(row, flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out / "sampler_probe.json", json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
