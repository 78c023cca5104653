"""The VAR transformer: AdaLN blocks with block-causal attention over a static KV cache.

Parameter and buffer names follow the released checkpoints ``var_d{16,20,24,30}.pth``.
The model computes passes and one stage's draw (:meth:`VAR.sample_stage`); the stage-by-stage
loop lives in :mod:`sdvar_lib.models.run`, and the reference sampler (:meth:`VAR.generate`, with
the reference's entry point :meth:`VAR.autoregressive_infer_cfg`) is that loop on a fresh run.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from sdvar_lib.models.kv_cache import KVCache, stage_ids_for
from sdvar_lib.models.run import decode_stages, eager_run, prepare_call
from sdvar_lib.models.sampling import (
    GenerationOutput,
    SamplingConfig,
    StageSample,
    check_batch_size,
    filter_top_k_top_p,
    gumbel_softmax_with_rng,
    sample_from_probs,
    smooth_temperature,
    stage_probs,
)
from sdvar_lib.models.vqvae import VQVAE
from sdvar_lib.util.memory import check_fits
from sdvar_lib.util.modes import eval_mode

__all__ = ["VAR", "AdaLNSelfAttn", "SelfAttention", "MAX_SCALE_MUL"]

MAX_SCALE_MUL = float(torch.log(torch.tensor(100)))
"""Upper bound of the per-head log scale of q with ``attn_l2_norm`` (``log 100``)."""


class DropPath(nn.Module):
    """Stochastic depth per sample (training only)."""

    def __init__(self, drop_prob: float) -> None:
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.drop_prob <= 0:
            return x
        keep = 1 - self.drop_prob
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask.div_(keep)


class FFN(nn.Module):
    def __init__(self, in_features: int, hidden_features: int, drop: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = nn.GELU(approximate="tanh")
        self.fc2 = nn.Linear(hidden_features, in_features)
        self.drop = nn.Dropout(drop) if drop > 0 else nn.Identity()

    def forward(self, x_BLC: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.act(self.fc1(x_BLC))))


class SelfAttention(nn.Module):
    """Multi-head attention with one qkv matrix, q/v biases (k bias zero) and optional q/k L2 norm."""

    def __init__(
        self, embed_dim: int, num_heads: int, attn_drop: float = 0.0, proj_drop: float = 0.0, attn_l2_norm: bool = False
    ) -> None:
        super().__init__()
        if embed_dim % num_heads != 0:
            raise ValueError(f"embed_dim {embed_dim} must be divisible by num_heads {num_heads}")
        self.num_heads, self.head_dim = num_heads, embed_dim // num_heads
        self.attn_l2_norm = attn_l2_norm
        if attn_l2_norm:
            self.scale = 1.0
            self.scale_mul_1H11 = nn.Parameter(torch.full((1, num_heads, 1, 1), 4.0).log())
        else:
            self.scale = 0.25 / math.sqrt(self.head_dim)
        self.mat_qkv = nn.Linear(embed_dim, embed_dim * 3, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(embed_dim))
        self.v_bias = nn.Parameter(torch.zeros(embed_dim))
        self.register_buffer("zero_k_bias", torch.zeros(embed_dim))
        self.proj = nn.Linear(embed_dim, embed_dim)
        self.proj_drop = nn.Dropout(proj_drop) if proj_drop > 0 else nn.Identity()
        self.attn_drop = attn_drop

    def forward(
        self,
        x_BLC: torch.Tensor,
        attn_mask: torch.Tensor | None,
        cache: KVCache | None = None,
        layer: int = 0,
    ) -> torch.Tensor:
        B, L, C = x_BLC.shape
        bias = torch.cat((self.q_bias, self.zero_k_bias, self.v_bias))
        qkv = F.linear(x_BLC, self.mat_qkv.weight, bias).view(B, L, 3, self.num_heads, self.head_dim)
        q_BHLc, k_BHLc, v_BHLc = qkv.permute(2, 0, 3, 1, 4).unbind(dim=0)
        if self.attn_l2_norm:
            scale_mul = self.scale_mul_1H11.clamp_max(MAX_SCALE_MUL).exp()
            q_BHLc = F.normalize(q_BHLc, dim=-1).mul(scale_mul)
            k_BHLc = F.normalize(k_BHLc, dim=-1)
        if cache is not None:
            k_BHLc, v_BHLc = cache.write(layer, k_BHLc, v_BHLc)
        if attn_mask is not None and attn_mask.dtype != torch.bool:
            attn_mask = attn_mask.to(q_BHLc.dtype)
        dropout_p = self.attn_drop if self.training else 0.0
        out_BHLc = F.scaled_dot_product_attention(
            q_BHLc, k_BHLc.to(q_BHLc.dtype), v_BHLc.to(q_BHLc.dtype),
            attn_mask=attn_mask, dropout_p=dropout_p, scale=self.scale,
        )
        return self.proj_drop(self.proj(out_BHLc.transpose(1, 2).reshape(B, L, C)))


class AdaLNSelfAttn(nn.Module):
    """``x += attn(ln(x)(1+scale1)+shift1) * gamma1; x += ffn(ln(x)(1+scale2)+shift2) * gamma2``."""

    def __init__(
        self,
        embed_dim: int,
        cond_dim: int,
        shared_aln: bool,
        num_heads: int,
        mlp_ratio: float = 4.0,
        drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float = 0.0,
        norm_eps: float = 1e-6,
        attn_l2_norm: bool = False,
    ) -> None:
        super().__init__()
        self.C = embed_dim
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.attn = SelfAttention(embed_dim, num_heads, attn_drop=attn_drop, proj_drop=drop, attn_l2_norm=attn_l2_norm)
        self.ffn = FFN(embed_dim, round(embed_dim * mlp_ratio), drop=drop)
        self.ln_wo_grad = nn.LayerNorm(embed_dim, eps=norm_eps, elementwise_affine=False)
        self.shared_aln = shared_aln
        if shared_aln:
            self.ada_gss = nn.Parameter(torch.randn(1, 1, 6, embed_dim) / embed_dim**0.5)
        else:
            self.ada_lin = nn.Sequential(nn.SiLU(), nn.Linear(cond_dim, 6 * embed_dim))

    def forward(
        self,
        x_BLC: torch.Tensor,
        cond_BD: torch.Tensor,
        attn_mask: torch.Tensor | None,
        cache: KVCache | None = None,
        layer: int = 0,
    ) -> torch.Tensor:
        if self.shared_aln:
            gamma1, gamma2, scale1, scale2, shift1, shift2 = (self.ada_gss + cond_BD).unbind(2)
        else:
            gamma1, gamma2, scale1, scale2, shift1, shift2 = self.ada_lin(cond_BD).view(-1, 1, 6, self.C).unbind(2)
        h = self.ln_wo_grad(x_BLC).mul(scale1.add(1)).add_(shift1)
        x_BLC = x_BLC + self.drop_path(self.attn(h, attn_mask, cache, layer).mul_(gamma1))
        h = self.ln_wo_grad(x_BLC).mul(scale2.add(1)).add_(shift2)
        return x_BLC + self.drop_path(self.ffn(h).mul(gamma2))


class AdaLNBeforeHead(nn.Module):
    def __init__(self, C: int, D: int, norm_eps: float) -> None:
        super().__init__()
        self.C = C
        self.ln_wo_grad = nn.LayerNorm(C, eps=norm_eps, elementwise_affine=False)
        self.ada_lin = nn.Sequential(nn.SiLU(), nn.Linear(D, 2 * C))

    def forward(self, x_BLC: torch.Tensor, cond_BD: torch.Tensor) -> torch.Tensor:
        scale, shift = self.ada_lin(cond_BD).view(-1, 1, 2, self.C).unbind(2)
        return self.ln_wo_grad(x_BLC).mul(scale.add(1)).add_(shift)


class _SharedAdaLin(nn.Linear):
    def forward(self, cond_BD: torch.Tensor) -> torch.Tensor:
        C = self.weight.shape[0] // 6
        return super().forward(cond_BD).view(-1, 1, 6, C)


class VAR(nn.Module):
    """Visual AutoRegressive transformer over the token pyramid of ``vae_local``.

    Keyword names are the reference's. ``flash_if_available``/``fused_if_available`` are accepted
    for compatibility and ignored: attention always goes through PyTorch SDPA.
    """

    def __init__(
        self,
        vae_local: VQVAE,
        num_classes: int = 1000,
        depth: int = 16,
        embed_dim: int = 1024,
        num_heads: int = 16,
        mlp_ratio: float = 4.0,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        norm_eps: float = 1e-6,
        shared_aln: bool = False,
        cond_drop_rate: float = 0.1,
        attn_l2_norm: bool = False,
        patch_nums: Sequence[int] = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16),
        flash_if_available: bool = True,
        fused_if_available: bool = True,
    ) -> None:
        super().__init__()
        patch_nums = tuple(int(pn) for pn in patch_nums)
        if patch_nums != tuple(vae_local.patch_nums):
            raise ValueError(
                f"patch_nums {patch_nums} do not match the VQVAE's v_patch_nums {tuple(vae_local.patch_nums)}; "
                "VAR must use the scales its VQVAE was built with"
            )
        if num_classes < 1 or depth < 1:
            raise ValueError(f"num_classes and depth must be >= 1, got {num_classes} and {depth}")
        if embed_dim % num_heads != 0:
            raise ValueError(f"embed_dim {embed_dim} must be divisible by num_heads {num_heads}")
        self.Cvae, self.V = vae_local.Cvae, vae_local.vocab_size
        self.depth, self.C, self.D, self.num_heads = depth, embed_dim, embed_dim, num_heads
        self.num_classes = num_classes
        self.cond_drop_rate = cond_drop_rate
        self.patch_nums = patch_nums
        self.L = sum(pn * pn for pn in patch_nums)
        self.first_l = patch_nums[0] ** 2
        self.begin_ends: list[tuple[int, int]] = []
        cur = 0
        for pn in patch_nums:
            self.begin_ends.append((cur, cur + pn * pn))
            cur += pn * pn
        self.num_stages_minus_1 = len(patch_nums) - 1
        # The VQVAE is shared between models and is not part of VAR's state dict.
        self.vae_proxy: tuple[VQVAE] = (vae_local,)

        init_std = math.sqrt(1 / self.C / 3)
        self.word_embed = nn.Linear(self.Cvae, self.C)
        self.class_emb = nn.Embedding(num_classes + 1, self.C)
        self.pos_start = nn.Parameter(torch.empty(1, self.first_l, self.C))
        self.pos_1LC = nn.Parameter(torch.empty(1, self.L, self.C))
        self.lvl_embed = nn.Embedding(len(patch_nums), self.C)
        for t in (self.class_emb.weight, self.pos_start, self.pos_1LC, self.lvl_embed.weight):
            nn.init.trunc_normal_(t.data, mean=0, std=init_std)

        if shared_aln:
            self.shared_ada_lin = nn.Sequential(nn.SiLU(), _SharedAdaLin(self.D, 6 * self.C))
        else:
            self.shared_ada_lin = nn.Identity()
        dpr = [drop_path_rate * i / (depth - 1) if depth > 1 else 0.0 for i in range(depth)]
        self.blocks = nn.ModuleList(
            AdaLNSelfAttn(
                embed_dim=self.C, cond_dim=self.D, shared_aln=shared_aln, num_heads=num_heads, mlp_ratio=mlp_ratio,
                drop=drop_rate, attn_drop=attn_drop_rate, drop_path=dpr[i], norm_eps=norm_eps,
                attn_l2_norm=attn_l2_norm,
            )
            for i in range(depth)
        )
        stage_ids = stage_ids_for(patch_nums)
        self.register_buffer("lvl_1L", stage_ids.view(1, self.L).clone())
        bias = torch.where(stage_ids.view(self.L, 1) >= stage_ids.view(1, self.L), 0.0, -torch.inf)
        self.register_buffer("attn_bias_for_masking", bias.reshape(1, 1, self.L, self.L).contiguous())
        self.head_nm = AdaLNBeforeHead(self.C, self.D, norm_eps=norm_eps)
        self.head = nn.Linear(self.C, self.V)

    # ---- properties -----------------------------------------------------------------------------
    @property
    def vae(self) -> VQVAE:
        return self.vae_proxy[0]

    @property
    def num_stages(self) -> int:
        return len(self.patch_nums)

    @property
    def device(self) -> torch.device:
        return self.pos_1LC.device

    # ---- embeddings -----------------------------------------------------------------------------
    def lvl_pos(self) -> torch.Tensor:
        """Level + absolute position embedding of every token, ``(1, L, C)``."""
        return self.lvl_embed(self.lvl_1L) + self.pos_1LC

    def class_condition(self, label_2B: torch.Tensor) -> torch.Tensor:
        """Class embedding ``cond_BD`` (labels ``num_classes`` mean "no class")."""
        return self.class_emb(label_2B)

    def start_input(self, cond_BD: torch.Tensor, lvl_pos_1LC: torch.Tensor | None = None) -> torch.Tensor:
        """Input of stage 0: class embedding + ``pos_start`` + level/position embedding."""
        if lvl_pos_1LC is None:
            lvl_pos_1LC = self.lvl_pos()
        B2 = cond_BD.shape[0]
        return (
            cond_BD.unsqueeze(1).expand(B2, self.first_l, -1)
            + self.pos_start.expand(B2, self.first_l, -1)
            + lvl_pos_1LC[:, : self.first_l]
        )

    def stage_input(self, si: int, next_BlCv: torch.Tensor, lvl_pos_1LC: torch.Tensor | None = None) -> torch.Tensor:
        """Input of stage ``si > 0`` from the area-downsampled ``f_hat`` ``(B, pn_si**2, Cvae)``."""
        if not 0 < si < self.num_stages:
            raise ValueError(f"stage_input needs 0 < si < {self.num_stages}, got {si}; stage 0 uses start_input")
        if lvl_pos_1LC is None:
            lvl_pos_1LC = self.lvl_pos()
        bg, ed = self.begin_ends[si]
        return self.word_embed(next_BlCv) + lvl_pos_1LC[:, bg:ed]

    # ---- transformer ----------------------------------------------------------------------------
    def get_logits(self, h_BLC: torch.Tensor, cond_BD: torch.Tensor) -> torch.Tensor:
        """Head logits in float32; with low-precision weights (e.g. bf16) the head math is float32 too."""
        if self.head.weight.dtype == torch.float32:
            return self.head(self.head_nm(h_BLC.float(), cond_BD).float()).float()
        ada, ln = self.head_nm.ada_lin[1], self.head_nm.ln_wo_grad
        scale_shift = F.linear(F.silu(cond_BD.float()), ada.weight.float(), ada.bias.float())
        scale, shift = scale_shift.view(-1, 1, 2, self.C).unbind(2)
        h = F.layer_norm(h_BLC.float(), (self.C,), eps=ln.eps).mul(scale.add(1)).add_(shift)
        return F.linear(h, self.head.weight.float(), self.head.bias.float()).float()

    def new_cache(self, batch_size: int, dtype: torch.dtype = torch.float32, device=None) -> KVCache:
        """An empty static cache for ``batch_size`` rows (CFG-doubled batches count twice)."""
        return KVCache(
            num_layers=self.depth, batch_size=batch_size, num_heads=self.num_heads, head_dim=self.C // self.num_heads,
            stage_ids_L=self.lvl_1L[0], dtype=dtype, device=device if device is not None else self.device,
        )

    def forward_cached(
        self,
        x_BlC: torch.Tensor,
        cond_BD: torch.Tensor,
        cache: KVCache,
        attn_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """One pass over a chunk of consecutive stage inputs placed at ``[cache.length, + l)``.

        Queries see the cached prefix and the chunk under the block-causal mask built from stage
        ids (or under ``attn_mask``, a boolean ``(l, cache.length + l)`` mask, for experiments);
        the chunk's keys and values are appended to ``cache``. Returns float32 logits ``(B, l, V)``.
        """
        l = x_BlC.shape[1]
        if attn_mask is None:
            attn_mask = cache.chunk_mask(l)
        elif tuple(attn_mask.shape) != (l, cache.length + l) or attn_mask.dtype != torch.bool:
            raise ValueError(f"attn_mask must be a bool tensor of shape {(l, cache.length + l)}, got "
                             f"{attn_mask.dtype} {tuple(attn_mask.shape)}")
        cond = self.shared_ada_lin(cond_BD)
        h = x_BlC
        for i, block in enumerate(self.blocks):
            h = block(h, cond, attn_mask, cache, i)
        cache.advance(l)
        return self.get_logits(h, cond_BD)

    def forward(self, label_B: torch.Tensor, x_BLCv_wo_first_l: torch.Tensor) -> torch.Tensor:
        """Teacher forcing over the whole pyramid with the block-causal mask: logits ``(B, L, V)``.

        In training mode labels are replaced by "no class" with probability ``cond_drop_rate``
        (the CFG training trick); in eval mode labels are used as given.
        """
        B = x_BLCv_wo_first_l.shape[0]
        ed = self.L
        if self.training and self.cond_drop_rate > 0:
            drop = torch.rand(B, device=label_B.device) < self.cond_drop_rate
            label_B = torch.where(drop, self.num_classes, label_B)
        cond_BD = self.class_condition(label_B)
        sos = cond_BD.unsqueeze(1).expand(B, self.first_l, -1) + self.pos_start.expand(B, self.first_l, -1)
        x_BLC = torch.cat((sos, self.word_embed(x_BLCv_wo_first_l.float())), dim=1)
        x_BLC = x_BLC + (self.lvl_embed(self.lvl_1L[:, :ed].expand(B, -1)) + self.pos_1LC[:, :ed])
        attn_bias = self.attn_bias_for_masking[:, :, :ed, :ed]
        cond = self.shared_ada_lin(cond_BD)
        for block in self.blocks:
            x_BLC = block(x_BLC, cond, attn_bias)
        return self.get_logits(x_BLC.float(), cond_BD)

    # ---- the reference sampler ------------------------------------------------------------------
    def cache_bytes(self, rows: int, dtype: torch.dtype = torch.float32) -> int:
        """Bytes of a KV cache for ``rows`` rows (CFG-doubled batches count twice)."""
        return 2 * self.depth * rows * self.L * self.C * torch.empty(0, dtype=dtype).element_size()

    def check_batch_fits(self, B: int, dtype: torch.dtype = torch.float32, caches: int = 1) -> None:
        """Raise ``ValueError`` before allocating when ``caches`` CFG-doubled caches for ``B`` do not fit the device."""
        check_fits(caches * self.cache_bytes(2 * B, dtype), self.device, f"B={B} ({caches} KV cache(s) of this model)")

    def sample_stage(
        self, logits_BlV: torch.Tensor, si: int, sampling: SamplingConfig, rng: torch.Generator | None
    ) -> StageSample:
        """Draw stage ``si``'s tokens from guided logits, in the reference's order of random draws.

        The distribution is :func:`~sdvar_lib.models.sampling.stage_probs` (the draft's ``q`` in SDVAR).
        """
        B, l, _ = logits_BlV.shape
        pn = self.patch_nums[si]
        probs = stage_probs(logits_BlV, sampling)
        idx_Bl = sample_from_probs(probs, rng)
        codebook = self.vae.quantize.embedding
        if not sampling.more_smooth:
            h_BlC = codebook(idx_Bl)
        else:  # a Gumbel-softmax mixture of the filtered logits instead of the drawn tokens' embeddings
            ratio = si / self.num_stages_minus_1
            filtered = filter_top_k_top_p(logits_BlV, sampling.top_k, sampling.top_p)
            weights_BlV = gumbel_softmax_with_rng(filtered.mul(1 + ratio), tau=smooth_temperature(ratio), rng=rng)
            h_BlC = weights_BlV @ codebook.weight.unsqueeze(0)
        h_BChw = h_BlC.transpose(1, 2).reshape(B, self.Cvae, pn, pn)
        return StageSample(idx_Bl=idx_Bl, h_BChw=h_BChw, probs_BlV=probs)

    def next_stage_input(self, si: int, f_hat_BChw: torch.Tensor, lvl_pos_1LC: torch.Tensor | None = None) -> torch.Tensor:
        """CFG-doubled input ``(2B, l, C)`` of stage ``si + 1`` from ``f_hat`` after stage ``si``."""
        next_BlCv = self.vae.quantize.next_input(si, f_hat_BChw).to(self.word_embed.weight.dtype)
        return self.stage_input(si + 1, next_BlCv, lvl_pos_1LC).repeat(2, 1, 1)

    def images_from_f_hat(self, f_hat_BChw: torch.Tensor) -> torch.Tensor:
        """Decode ``f_hat`` to images in ``[0, 1]``."""
        return self.vae.fhat_to_img(f_hat_BChw).add(1).mul(0.5)

    @torch.no_grad()
    def generate(
        self, B: int, label_B=None, g_seed: int | None = None, sampling: SamplingConfig | None = None,
        cache: KVCache | None = None,
    ) -> GenerationOutput:
        """The reference sampler: :func:`~sdvar_lib.models.run.decode_stages` on a fresh eager run, one pass per stage.

        ``sampling`` (default ``SamplingConfig()``: cfg 1.5, no top-k/top-p) holds CFG, top-k/top-p
        and the Gumbel smoothing. Returns the images with the tokens of every stage. A ``cache``
        may be passed to reuse preallocated memory; it is reset first and its contents are
        meaningless after the call.
        """
        sampling = SamplingConfig() if sampling is None else sampling
        check_batch_size(B)
        if cache is None:
            self.check_batch_fits(B)
        elif not isinstance(cache, KVCache):
            raise TypeError(f"cache must be a KVCache or None, got {type(cache).__name__}")
        elif cache.batch_size != 2 * B:
            raise ValueError(f"cache holds {cache.batch_size} rows but CFG with B={B} needs {2 * B}")
        labels, rng = prepare_call(self, B, label_B, g_seed, sampling)
        run = None
        try:
            with eval_mode(self, self.vae):
                run = eager_run(self, labels, cache)
                part = decode_stages(run, (), (), self.num_stages, sampling, rng)
                images = self.images_from_f_hat(part.f_hats[-1])
        finally:
            if run is not None:
                run.cache.reset()
        return GenerationOutput(images_B3HW=images, tokens_per_stage=list(part.tokens), label_B=labels,
                                f_hat_BChw=part.f_hats[-1])

    @torch.no_grad()
    def autoregressive_infer_cfg(self, B: int, label_B=None, g_seed: int | None = None, cfg: float = 1.5, top_k: int = 0,
                                 top_p: float = 0.0, more_smooth: bool = False) -> torch.Tensor:
        """The reference VAR's entry point (its arguments): images ``(B, 3, H, W)`` in ``[0, 1]``,
        token for token the reference's for a given ``g_seed``."""
        sampling = SamplingConfig(cfg=cfg, top_k=top_k, top_p=top_p, more_smooth=more_smooth)
        return self.generate(B, label_B, g_seed, sampling).images_B3HW
