"""Physical lower bounds of VAR passes: what a pass must move and compute, priced at measured ceilings.

A pass over ``length`` tokens at ``position`` for ``rows`` sequences (CFG doubles the batch) must
stream its weights once and read/write its KV cache (:func:`pass_bytes`), and do its matrix products
and block-causal attention (:func:`pass_flops`). Its bound is bytes / HBM bandwidth + FLOPs / bf16
tensor throughput (:func:`pass_bound_s`, no overlap assumed); a call's bound is the sum over the
passes it made. Pure arithmetic on :class:`VarSpec` sizes: it runs (and is tested) on the CPU.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sdvar_lib.fast.config import PassRecord
from sdvar_lib.models.presets import OFFICIAL_PATCH_NUMS, official_var_kwargs
from sdvar_lib.models.var import VAR

__all__ = [
    "VarSpec",
    "Ceilings",
    "pass_weight_params",
    "total_params",
    "attended_keys",
    "pass_flops",
    "pass_bytes",
    "pass_bound_s",
    "passes_bound_s",
    "sequential_passes",
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


def pass_bound_s(spec: VarSpec, rows: int, position: int, length: int, ceilings: Ceilings) -> float:
    """Lower bound of one pass: bytes / bandwidth + FLOPs / tensor throughput (no overlap assumed)."""
    return (pass_bytes(spec, rows, position, length) / ceilings.hbm_bytes_per_s
            + pass_flops(spec, rows, position, length) / ceilings.bf16_flops_per_s)


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
