"""The fused transformer pass of the fast path: per-call AdaLN constants, fewer and fused kernels per block.

:class:`FusedPass` owns the constants that depend only on the class condition (every block's AdaLN
modulations with ``1 + scale`` folded in, the head's, the qkv biases, the q/k scales, float32 head
weights): :meth:`FusedPass.prologue` computes them once per call, :meth:`FusedPass.step` runs one
pass with them — per block two LayerNorms, four matrix products, one attention, the q/k
normalisation written straight into the cache and fused residuals.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from sdvar_lib.models.kv_cache import KVCache
from sdvar_lib.models.var import MAX_SCALE_MUL, VAR

__all__ = ["FusedPass"]


class FusedPass:
    """Per-call constants and the fused pass of one model at one CFG-doubled batch of ``rows``."""

    def __init__(self, model: VAR, rows: int, dtype: torch.dtype, device: torch.device) -> None:
        C, H, depth = model.C, model.num_heads, model.depth
        self.model, self.rows, self.dtype = model, rows, dtype
        self.ada_N2B6C = torch.zeros(depth, rows, 6, C, dtype=dtype, device=device)
        self.qkv_bias_N3C = torch.zeros(depth, 3 * C, dtype=dtype, device=device)
        self.qk_factor_N2H1 = torch.ones(depth, 2, H, 1, dtype=torch.float32, device=device)
        self.head_ss_2B2C = torch.zeros(rows, 2, C, dtype=torch.float32, device=device)
        self.head_w32 = torch.zeros(model.V, C, dtype=torch.float32, device=device)
        self.head_b32 = torch.zeros(model.V, dtype=torch.float32, device=device)

    @staticmethod
    def supports(model: VAR) -> bool:
        """The fused pass needs per-block AdaLN (``shared_aln=False``, as in the released models)."""
        return not model.blocks[0].shared_aln

    def prologue(self, cond_2BD: torch.Tensor) -> None:
        """Compute the per-call constants from the CFG-doubled class condition."""
        model, rows, C = self.model, self.rows, self.model.C
        act_2BD = F.silu(cond_2BD)
        for i, block in enumerate(model.blocks):
            lin = block.ada_lin[1]
            torch.addmm(lin.bias, act_2BD, lin.weight.t(), out=self.ada_N2B6C[i].view(rows, 6 * C))
        self.ada_N2B6C[:, :, 2:4].add_(1)
        head_lin = model.head_nm.ada_lin[1]
        torch.addmm(head_lin.bias.float(), F.silu(cond_2BD.float()), head_lin.weight.float().t(),
                    out=self.head_ss_2B2C.view(rows, 2 * C))
        self.head_ss_2B2C[:, 0].add_(1)
        self.head_w32.copy_(model.head.weight)
        self.head_b32.copy_(model.head.bias)
        self.qkv_bias_N3C[:, :C].copy_(torch.stack([b.attn.q_bias for b in model.blocks]))
        self.qkv_bias_N3C[:, 2 * C :].copy_(torch.stack([b.attn.v_bias for b in model.blocks]))
        if model.blocks[0].attn.attn_l2_norm:
            scale_mul = torch.stack([b.attn.scale_mul_1H11.reshape(-1) for b in model.blocks]).float()
            self.qk_factor_N2H1[:, 0, :, 0].copy_(scale_mul.clamp_max(MAX_SCALE_MUL).exp())

    def step(self, x: torch.Tensor, cache: KVCache, position: int, mask: torch.Tensor | None, out_2BlV: torch.Tensor) -> None:
        """One pass over the chunk ``x`` ``(rows, l, C)`` at ``position``; float32 logits into ``out_2BlV``."""
        model, rows = self.model, self.rows
        l, C, H = x.shape[1], model.C, model.num_heads
        c, end = C // H, position + l
        for i, block in enumerate(model.blocks):
            attn, ffn, eps = block.attn, block.ffn, block.ln_wo_grad.eps
            ada = self.ada_N2B6C[i]
            g1, g2, s1, s2, sh1, sh2 = (ada[:, k : k + 1] for k in range(6))
            h = torch.addcmul(sh1, F.layer_norm(x, (C,), eps=eps), s1)
            qkv = F.linear(h, attn.mat_qkv.weight, self.qkv_bias_N3C[i]).view(rows, l, 3, H, c)
            k_dst = cache.k_NBHLc[i, :, :, position:end].transpose(1, 2)
            v_dst = cache.v_NBHLc[i, :, :, position:end].transpose(1, 2)
            if attn.attn_l2_norm:
                norm = torch.linalg.vector_norm(qkv[:, :, :2], dim=-1, keepdim=True, dtype=torch.float32)
                inv = self.qk_factor_N2H1[i] / norm.clamp_min(1e-12)
                q = torch.empty((rows, l, H, c), dtype=self.dtype, device=x.device)
                torch.mul(qkv[:, :, 0], inv[:, :, 0], out=q)
                torch.mul(qkv[:, :, 1], inv[:, :, 1], out=k_dst)
            else:
                q = qkv[:, :, 0]
                k_dst.copy_(qkv[:, :, 1])
            v_dst.copy_(qkv[:, :, 2])
            o = F.scaled_dot_product_attention(
                q.transpose(1, 2), cache.k_NBHLc[i, :, :, :end], cache.v_NBHLc[i, :, :, :end], attn_mask=mask,
                scale=attn.scale,
            )
            o = F.linear(o.transpose(1, 2).reshape(rows, l, C), attn.proj.weight, attn.proj.bias)
            x = torch.addcmul(x, o, g1)
            h = torch.addcmul(sh2, F.layer_norm(x, (C,), eps=eps), s2)
            h = F.linear(F.gelu(F.linear(h, ffn.fc1.weight, ffn.fc1.bias), approximate="tanh"), ffn.fc2.weight, ffn.fc2.bias)
            x = torch.addcmul(x, h, g2)
        hs = self.head_ss_2B2C
        h = torch.addcmul(hs[:, 1:2], F.layer_norm(x.float(), (C,), eps=model.head_nm.ln_wo_grad.eps), hs[:, 0:1])
        torch.addmm(self.head_b32, h.view(rows * l, C), self.head_w32.t(), out=out_2BlV.view(rows * l, model.V))
