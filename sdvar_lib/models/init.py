"""Weight initialisation of VAR: the reference scheme for training, and sharpened random weights for tests."""

from __future__ import annotations

import math

import torch
from torch import nn

from sdvar_lib.models.var import VAR

__all__ = ["init_var_weights_", "sharpen_random_weights_"]


@torch.no_grad()
def init_var_weights_(
    var: VAR, init_adaln: float = 0.5, init_adaln_gamma: float = 1e-5, init_head: float = 0.02
) -> None:
    """The reference VAR initialisation (``init_std = sqrt(1 / (3 C))``).

    Linear/embedding weights ~ truncated normal, biases 0; head weights x ``init_head``; attention and
    MLP output projections / ``sqrt(2 * depth)``; AdaLN scale/shift rows x ``init_adaln`` and gamma
    rows x ``init_adaln_gamma`` (blocks start close to the identity).
    """
    std = math.sqrt(1 / var.C / 3)
    for m in var.modules():
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=std)
            if m.bias is not None:
                m.bias.zero_()
        elif isinstance(m, nn.Embedding):
            nn.init.trunc_normal_(m.weight, std=std)
    var.head.weight.mul_(init_head)
    var.head.bias.zero_()
    var.head_nm.ada_lin[-1].weight.mul_(init_adaln)
    var.head_nm.ada_lin[-1].bias.zero_()
    for block in var.blocks:
        block.attn.proj.weight.div_(math.sqrt(2 * var.depth))
        block.ffn.fc2.weight.div_(math.sqrt(2 * var.depth))
        if not block.shared_aln:
            lin = block.ada_lin[-1]
            lin.weight[2 * var.C :].mul_(init_adaln)
            lin.weight[: 2 * var.C].mul_(init_adaln_gamma)
            lin.bias.zero_()


@torch.no_grad()
def sharpen_random_weights_(var: VAR, seed: int, logit_scale: float) -> None:
    """Draw random weights that give far-from-uniform logits (as the reference fixture does)."""
    gen = torch.Generator().manual_seed(seed)
    for name, p in var.named_parameters():
        if name.endswith("scale_mul_1H11"):
            continue
        p.copy_(torch.randn(p.shape, generator=gen) * (0.02 if p.ndim > 1 else 0.01))
    for t in (var.class_emb.weight, var.pos_start, var.pos_1LC, var.lvl_embed.weight):
        t.copy_(torch.randn(t.shape, generator=gen) * 0.5)
    var.head.weight.mul_(logit_scale / 0.02 / var.C**0.5)
    for block in var.blocks:
        block.ada_lin[1].weight.mul_(5.0)
