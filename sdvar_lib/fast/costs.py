"""Lower bounds of the work around the transformer passes: sampling and the VQVAE decode, and the whole call.

The benchmark's pass bound (weights and KV cache over HBM bandwidth + FLOPs over tensor
throughput, summed over the passes made) covers the transformer only. A timed call also samples
every stage and decodes the images, so its *whole-call bound* is::

    passes bound + sampling bound (:func:`sampling_bytes`) + decode bound (:func:`decode_cost`)

priced with the same measured ceilings (:func:`bound_s`). Pure arithmetic (the decode is traced
on PyTorch's meta device: no memory, no GPU), so it runs and is tested on the CPU.

- Decode FLOPs: every convolution (``2 * Cin/groups * k*k * Cout * Hout * Wout`` per image) and
  the spatial attention (``4 * (H*W)**2 * C``: scores and weighted sum).
- Decode bytes: the weights once, and for every convolution its input read and output written
  (activations cross HBM once between convolutions: GroupNorm, SiLU, upsampling and residual
  adds are counted as fused into them), attention's q, k, v read and output written, the float32
  ``f_hat`` read and image written.
- Sampling bytes: every stage's CFG-doubled float32 logits read once (what a draw needs at least).

Plus two small helpers the benchmark's table uses: :func:`pass_time_ratio` (draft over target
single-stage passes) and :func:`one_off_seconds` (capture and kernel-compile time of a factory's
runs and graphed decodes).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from sdvar_lib.models.vqvae import VQVAE, AttnBlock
from sdvar_lib.util.checks import check_int, check_number

__all__ = [
    "DecodeCost",
    "decode_cost",
    "sampling_bytes",
    "bound_s",
    "WholeCallBound",
    "whole_call_bound",
    "pass_time_ratio",
    "one_off_seconds",
]


@dataclass(frozen=True)
class DecodeCost:
    """FLOPs and minimal HBM bytes of one VQVAE decode of ``batch`` images."""

    batch: int
    flops: float
    bytes: float


def _params_on_meta(module: nn.Module) -> dict[str, torch.Tensor]:
    return {name: torch.empty_like(t, device="meta")
            for name, t in [*module.named_parameters(), *module.named_buffers()]}


def decode_cost(vae: VQVAE, batch: int, dtype_bytes: int = 2) -> DecodeCost:
    """FLOPs and bytes of ``vae.fhat_to_img`` on ``batch`` images with weights/activations of ``dtype_bytes``.

    The decode is run on the meta device (shapes only) with hooks on its convolutions and
    attention blocks, so every VQVAE configuration is counted as it is built.
    """
    if not isinstance(vae, VQVAE):
        raise TypeError(f"decode_cost needs an sdvar_lib.VQVAE, got {type(vae).__name__}")
    check_int(batch, "batch", 1)
    check_int(dtype_bytes, "dtype_bytes", 1, 8)
    parts = (vae.post_quant_conv, vae.decoder)
    totals = {"flops": 0.0, "bytes": 0.0}

    def conv_hook(module: nn.Conv2d, inputs, output) -> None:
        (x,) = inputs
        kh, kw = module.kernel_size
        totals["flops"] += 2.0 * output.numel() * (module.in_channels // module.groups) * kh * kw
        totals["bytes"] += (x.numel() + output.numel()) * dtype_bytes

    def attn_hook(module: AttnBlock, inputs, output) -> None:
        (x,) = inputs
        B, C, H, W = x.shape
        totals["flops"] += 4.0 * B * (H * W) ** 2 * C
        totals["bytes"] += 4 * B * H * W * C * dtype_bytes

    hooks = []
    for part in parts:
        for m in part.modules():
            if isinstance(m, nn.Conv2d):
                hooks.append(m.register_forward_hook(conv_hook))
            elif isinstance(m, AttnBlock):
                hooks.append(m.register_forward_hook(attn_hook))
    pn = vae.patch_nums[-1]
    try:
        with torch.no_grad():
            z = torch.func.functional_call(parts[0], _params_on_meta(parts[0]),
                                           (torch.empty(batch, vae.Cvae, pn, pn, device="meta"),))
            img = torch.func.functional_call(parts[1], _params_on_meta(parts[1]), (z,))
    finally:
        for h in hooks:
            h.remove()
    weights = sum(p.numel() for part in parts for p in part.parameters()) * dtype_bytes
    ends = (batch * vae.Cvae * pn * pn + img.numel()) * 4  # float32 f_hat in, float32 images out
    return DecodeCost(batch=batch, flops=totals["flops"], bytes=float(totals["bytes"] + weights + ends))


def sampling_bytes(vocab: int, batch: int, stage_lengths: Sequence[int]) -> float:
    """Bytes sampling must read: the CFG-doubled float32 logits of every sampled stage (``pn**2`` tokens each)."""
    check_int(vocab, "vocab", 1)
    check_int(batch, "batch", 1)
    return float(sum(2 * batch * l * vocab * 4 for l in stage_lengths))


def bound_s(flops: float, nbytes: float, bytes_per_s: float, flops_per_s: float) -> float:
    """``bytes / bandwidth + FLOPs / throughput`` (no overlap assumed, as the pass bound)."""
    check_number(bytes_per_s, "bytes_per_s", 0.0, min_inclusive=False)
    check_number(flops_per_s, "flops_per_s", 0.0, min_inclusive=False)
    return nbytes / bytes_per_s + flops / flops_per_s


@dataclass(frozen=True)
class WholeCallBound:
    """Lower bound of a timed call: its passes, its sampling and its VQVAE decode (seconds)."""

    passes_s: float
    sampling_s: float
    decode_s: float

    @property
    def total_s(self) -> float:
        return self.passes_s + self.sampling_s + self.decode_s


def whole_call_bound(
    passes_s: float, vae: VQVAE, vocab: int, batch: int, sampled_stage_lengths: Sequence[int],
    bytes_per_s: float, flops_per_s: float, dtype_bytes: int = 2,
) -> WholeCallBound:
    """The whole-call bound from the passes' bound and the call's sampled stages (``pn**2`` each)."""
    check_number(passes_s, "passes_s", 0.0)
    cost = decode_cost(vae, batch, dtype_bytes)
    return WholeCallBound(
        passes_s=passes_s,
        sampling_s=bound_s(0.0, sampling_bytes(vocab, batch, sampled_stage_lengths), bytes_per_s, flops_per_s),
        decode_s=bound_s(cost.flops, cost.bytes, bytes_per_s, flops_per_s),
    )


def pass_time_ratio(draft_ms: Mapping[tuple[int, int], float], target_ms: Mapping[tuple[int, int], float]) -> float:
    """Draft over target time of the single-stage passes both have: ``sum(draft) / sum(target)``.

    Keys are chunks ``(start stage, number of stages)``; only ``(s, 1)`` keys present in both count.
    """
    keys = sorted(k for k in draft_ms if k[1] == 1 and k in target_ms)
    if not keys:
        raise ValueError("pass_time_ratio needs single-stage passes (keys (s, 1)) timed for both models")
    return sum(draft_ms[k] for k in keys) / sum(target_ms[k] for k in keys)


def one_off_seconds(runs: Iterable, decodes: Iterable = ()) -> float:
    """One-off seconds of fast runs (kernel checks and compiles, graph captures) and graphed decodes (captures)."""
    total = 0.0
    for run in runs:
        total += run.counters.capture_time_s + run.counters.setup_time_s
    for decode in decodes:
        total += decode.capture_time_s
    return total
