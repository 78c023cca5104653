"""Physical lower bounds of a call: its VAR passes, its sampling and its VQVAE decode, priced at measured ceilings.

The one formula: a piece of work that must move ``bytes`` and compute ``flops`` takes at least
``bytes / HBM bandwidth + flops / bf16 tensor throughput`` (:func:`bound_s`, no overlap assumed),
at ceilings measured on the GPU at the start of a run (:class:`Ceilings`).

- **Passes.** A pass over ``length`` tokens at ``position`` for ``rows`` sequences (CFG doubles the
  batch) must stream its weights once and read/write its KV cache (:func:`pass_bytes`), and do its
  matrix products and block-causal attention (:func:`pass_flops`); :func:`pass_bound_s` prices one,
  :func:`passes_bound_s` the passes a call made.
- **Sampling** (:func:`sampling_bytes`): every sampled stage's CFG-doubled float32 logits read once.
- **Decode** (:func:`decode_cost`): every convolution (``2 * Cin/groups * k*k * Cout * Hout * Wout``
  FLOPs per image) and the spatial attention (``4 * (H*W)**2 * C``); bytes: the weights once, every
  convolution's input read and output written (GroupNorm, SiLU, upsampling and residual adds count
  as fused into them), attention's q, k, v read and output written, the float32 ``f_hat`` read and
  image written. Traced on PyTorch's meta device: no memory, no GPU.
- **Whole call** (:func:`whole_call_bound`): passes + sampling + decode.

Pure arithmetic on :class:`VarSpec` sizes and meta tensors: it runs (and is tested) on the CPU.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from sdvar_lib.fast.config import PassRecord
from sdvar_lib.models.presets import OFFICIAL_PATCH_NUMS, official_var_kwargs
from sdvar_lib.models.var import VAR
from sdvar_lib.models.vqvae import VQVAE, AttnBlock
from sdvar_lib.util.checks import check_int, check_number

__all__ = [
    "VarSpec",
    "Ceilings",
    "pass_weight_params",
    "total_params",
    "attended_keys",
    "pass_flops",
    "pass_bytes",
    "bound_s",
    "pass_bound_s",
    "passes_bound_s",
    "sequential_passes",
    "DecodeCost",
    "decode_cost",
    "sampling_bytes",
    "WholeCallBound",
    "whole_call_bound",
]


@dataclass(frozen=True)
class VarSpec:
    """The sizes of a VAR that the bound needs (no weights)."""

    depth: int
    width: int
    heads: int
    vocab: int
    cond_dim: int
    mlp_hidden: int
    patch_nums: tuple[int, ...]
    cvae: int = 32
    num_classes: int = 1000
    attn_l2_norm: bool = True

    @classmethod
    def from_model(cls, model: VAR) -> VarSpec:
        if model.blocks[0].shared_aln:
            raise ValueError("VarSpec covers VARs with shared_aln=False (the official models)")
        return cls(
            depth=model.depth, width=model.C, heads=model.num_heads, vocab=model.V, cond_dim=model.D,
            mlp_hidden=model.blocks[0].ffn.fc1.out_features, patch_nums=tuple(model.patch_nums), cvae=model.Cvae,
            num_classes=model.num_classes, attn_l2_norm=model.blocks[0].attn.attn_l2_norm,
        )

    @classmethod
    def official(cls, depth: int) -> VarSpec:
        kw = official_var_kwargs(depth)
        C = kw["embed_dim"]
        return cls(
            depth=depth, width=C, heads=kw["num_heads"], vocab=4096, cond_dim=C, mlp_hidden=round(C * kw["mlp_ratio"]),
            patch_nums=tuple(OFFICIAL_PATCH_NUMS), cvae=32, num_classes=kw["num_classes"], attn_l2_norm=kw["attn_l2_norm"],
        )

    @property
    def L(self) -> int:
        return sum(pn * pn for pn in self.patch_nums)

    def stage_end_of_position(self) -> list[int]:
        """For every token position, the end of its stage (block-causal: the keys it attends to)."""
        ends: list[int] = []
        cur = 0
        for pn in self.patch_nums:
            cur += pn * pn
            ends.extend([cur] * (pn * pn))
        return ends


def _block_params(spec: VarSpec) -> int:
    C, D, hid = spec.width, spec.cond_dim, spec.mlp_hidden
    attn = 3 * C * C + 2 * C + (spec.heads if spec.attn_l2_norm else 0) + C * C + C  # qkv, q/v bias, scale_mul, proj
    ffn = C * hid + hid + hid * C + C
    ada = D * 6 * C + 6 * C
    return attn + ffn + ada


def pass_weight_params(spec: VarSpec) -> int:
    """Parameters every pass streams: the blocks, the head's AdaLN and the head."""
    C, D = spec.width, spec.cond_dim
    return spec.depth * _block_params(spec) + (D * 2 * C + 2 * C) + (C * spec.vocab + spec.vocab)


def total_params(spec: VarSpec) -> int:
    """All parameters of the VAR (embeddings included)."""
    C, S = spec.width, len(spec.patch_nums)
    embeds = (spec.cvae * C + C) + (spec.num_classes + 1) * C + spec.patch_nums[0] ** 2 * C + spec.L * C + S * C
    return pass_weight_params(spec) + embeds


def _check_chunk(spec: VarSpec, rows: int, position: int, length: int) -> None:
    if rows < 1 or length < 1 or position < 0 or position + length > spec.L:
        raise ValueError(f"a pass needs rows >= 1 and a chunk inside [0, {spec.L}); got rows={rows}, "
                         f"position={position}, length={length}")


def attended_keys(spec: VarSpec, position: int, length: int) -> int:
    """Sum over the chunk's queries of the keys they attend to under the block-causal mask."""
    _check_chunk(spec, 1, position, length)
    return sum(spec.stage_end_of_position()[position : position + length])


def pass_flops(spec: VarSpec, rows: int, position: int, length: int) -> float:
    """FLOPs of one pass over ``length`` tokens at ``position`` for ``rows`` sequences (CFG rows count).

    Matrix products of the blocks and the head per token, the AdaLN projections per row, and
    attention (QK^T and AV) over the keys each query may see.
    """
    _check_chunk(spec, rows, position, length)
    C, D, hid = spec.width, spec.cond_dim, spec.mlp_hidden
    per_token = 2 * (4 * C * C + 2 * C * hid)
    layer = rows * (length * per_token + 2 * D * 6 * C + 4 * C * attended_keys(spec, position, length))
    head = rows * (length * 2 * C * spec.vocab + 2 * D * 2 * C)
    return float(spec.depth * layer + head)


def pass_bytes(spec: VarSpec, rows: int, position: int, length: int, weight_bytes: int = 2, kv_bytes: int = 2) -> float:
    """Bytes a pass must move: its weights once, the cached keys/values it reads and the ones it writes."""
    _check_chunk(spec, rows, position, length)
    kv_per_token = spec.depth * 2 * spec.width * kv_bytes
    return float(pass_weight_params(spec) * weight_bytes + rows * (position + length) * kv_per_token
                 + rows * length * kv_per_token)


@dataclass(frozen=True)
class Ceilings:
    """Measured device ceilings: HBM bandwidth (bytes read + written per second) and bf16 matmul FLOP/s."""

    hbm_bytes_per_s: float
    bf16_flops_per_s: float

    def __post_init__(self) -> None:
        if not (self.hbm_bytes_per_s > 0 and self.bf16_flops_per_s > 0):
            raise ValueError(f"ceilings must be > 0, got {self}")


def bound_s(flops: float, nbytes: float, ceilings: Ceilings) -> float:
    """``bytes / bandwidth + FLOPs / throughput`` (no overlap assumed): the formula of every bound here."""
    return nbytes / ceilings.hbm_bytes_per_s + flops / ceilings.bf16_flops_per_s


def pass_bound_s(spec: VarSpec, rows: int, position: int, length: int, ceilings: Ceilings) -> float:
    """Lower bound of one pass (:func:`bound_s` of its FLOPs and bytes)."""
    return bound_s(pass_flops(spec, rows, position, length), pass_bytes(spec, rows, position, length), ceilings)


def passes_bound_s(spec: VarSpec, rows: int, passes: Sequence[PassRecord], ceilings: Ceilings) -> float:
    """Sum of :func:`pass_bound_s` over recorded passes (anything with ``position`` and ``length``)."""
    return sum(pass_bound_s(spec, rows, p.position, p.length, ceilings) for p in passes)


def sequential_passes(spec: VarSpec) -> list[PassRecord]:
    """The passes of target-only decoding: one per stage."""
    out, cur = [], 0
    for pn in spec.patch_nums:
        out.append(PassRecord(position=cur, length=pn * pn, graphed=False))
        cur += pn * pn
    return out


# ---- around the passes: sampling, the VQVAE decode, the whole call -------------------------------
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


@dataclass(frozen=True)
class WholeCallBound:
    """Lower bound of a timed call: its passes, its sampling and its VQVAE decode (seconds)."""

    passes_s: float
    sampling_s: float
    decode_s: float

    @property
    def total_s(self) -> float:
        return self.passes_s + self.sampling_s + self.decode_s


def whole_call_bound(passes_s: float, vae: VQVAE, vocab: int, batch: int, sampled_stage_lengths: Sequence[int],
                     ceilings: Ceilings, dtype_bytes: int = 2) -> WholeCallBound:
    """The whole-call bound from the passes' bound and the call's sampled stages (``pn**2`` each)."""
    check_number(passes_s, "passes_s", 0.0)
    cost = decode_cost(vae, batch, dtype_bytes)
    return WholeCallBound(
        passes_s=passes_s,
        sampling_s=bound_s(0.0, sampling_bytes(vocab, batch, sampled_stage_lengths), ceilings),
        decode_s=bound_s(cost.flops, cost.bytes, ceilings),
    )
