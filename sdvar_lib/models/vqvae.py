"""Multi-scale VQVAE of VAR: the VQ-f16 encoder/decoder of latent diffusion plus a residual quantizer.

Parameter and buffer names follow the released checkpoint ``vae_ch160v4096z32.pth`` so that
``load_state_dict(strict=True)`` accepts it unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from sdvar_lib.models.quant import MultiScaleQuantizer

__all__ = ["CoderShape", "Encoder", "Decoder", "VQVAE"]

OFFICIAL_CH_MULT = (1, 1, 2, 2, 4)


def _group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(num_groups=32, num_channels=channels, eps=1e-6, affine=True)


class Upsample2x(nn.Module):
    """Nearest-neighbour x2 followed by a 3x3 conv."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, kernel_size=3, stride=1, padding=1)

    def forward(self, x_BChw: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x_BChw, scale_factor=2, mode="nearest"))


class Downsample2x(nn.Module):
    """Zero-pad right/bottom by one, then a stride-2 3x3 conv."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, kernel_size=3, stride=2, padding=0)

    def forward(self, x_BChw: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x_BChw, pad=(0, 1, 0, 1), mode="constant", value=0))


class ResnetBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, dropout: float) -> None:
        super().__init__()
        self.norm1 = _group_norm(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=1, padding=1)
        self.norm2 = _group_norm(out_channels)
        self.dropout = nn.Dropout(dropout) if dropout > 1e-6 else nn.Identity()
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size=3, stride=1, padding=1)
        if in_channels != out_channels:
            self.nin_shortcut = nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=1, padding=0)
        else:
            self.nin_shortcut = nn.Identity()

    def forward(self, x_BChw: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x_BChw)))
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.nin_shortcut(x_BChw) + h


class AttnBlock(nn.Module):
    """Single-head spatial self-attention with a fused 1x1 qkv conv."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.C = channels
        self.norm = _group_norm(channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, kernel_size=1, stride=1, padding=0)
        self.w_ratio = int(channels) ** (-0.5)
        self.proj_out = nn.Conv2d(channels, channels, kernel_size=1, stride=1, padding=0)

    def forward(self, x_BChw: torch.Tensor) -> torch.Tensor:
        qkv = self.qkv(self.norm(x_BChw))
        B, _, H, W = qkv.shape
        C = self.C
        q, k, v = qkv.reshape(B, 3, C, H, W).unbind(1)
        q_BNC = q.reshape(B, C, H * W).permute(0, 2, 1).contiguous()
        k_BCN = k.reshape(B, C, H * W).contiguous()
        w_BNN = torch.bmm(q_BNC, k_BCN).mul_(self.w_ratio).softmax(dim=2)
        v_BCN = v.reshape(B, C, H * W).contiguous()
        h_BCN = torch.bmm(v_BCN, w_BNN.permute(0, 2, 1).contiguous())
        return x_BChw + self.proj_out(h_BCN.view(B, C, H, W))


def _attn_or_identity(channels: int, enabled: bool) -> nn.Module:
    return AttnBlock(channels) if enabled else nn.Identity()


class _Level(nn.Module):
    """One resolution level: ResNet blocks, optional attention, optional resampling."""

    def __init__(self) -> None:
        super().__init__()
        self.block = nn.ModuleList()
        self.attn = nn.ModuleList()


@dataclass(frozen=True)
class CoderShape:
    """Sizes shared by the encoder and the decoder."""

    z_channels: int
    ch: int = 128
    ch_mult: tuple[int, ...] = OFFICIAL_CH_MULT
    num_res_blocks: int = 2
    dropout: float = 0.0
    in_channels: int = 3
    using_sa: bool = True
    using_mid_sa: bool = True


class _Mid(nn.Module):
    """The middle of the encoder/decoder: ResNet block, self-attention, ResNet block."""

    def __init__(self, channels: int, dropout: float, using_sa: bool) -> None:
        super().__init__()
        self.block_1 = ResnetBlock(channels, channels, dropout)
        self.attn_1 = _attn_or_identity(channels, using_sa)
        self.block_2 = ResnetBlock(channels, channels, dropout)

    def forward(self, x_BChw: torch.Tensor) -> torch.Tensor:
        return self.block_2(self.attn_1(self.block_1(x_BChw)))


class Encoder(nn.Module):
    def __init__(self, shape: CoderShape) -> None:
        super().__init__()
        self.num_resolutions = len(shape.ch_mult)
        self.num_res_blocks = shape.num_res_blocks
        self.conv_in = nn.Conv2d(shape.in_channels, shape.ch, kernel_size=3, stride=1, padding=1)
        in_ch_mult = (1, *shape.ch_mult)
        self.down = nn.ModuleList()
        block_in = shape.ch
        for i_level in range(self.num_resolutions):
            level = _Level()
            block_in = shape.ch * in_ch_mult[i_level]
            block_out = shape.ch * shape.ch_mult[i_level]
            for _ in range(shape.num_res_blocks):
                level.block.append(ResnetBlock(block_in, block_out, shape.dropout))
                block_in = block_out
                if i_level == self.num_resolutions - 1 and shape.using_sa:
                    level.attn.append(AttnBlock(block_in))
            if i_level != self.num_resolutions - 1:
                level.downsample = Downsample2x(block_in)
            self.down.append(level)
        self.mid = _Mid(block_in, shape.dropout, shape.using_mid_sa)
        self.norm_out = _group_norm(block_in)
        self.conv_out = nn.Conv2d(block_in, shape.z_channels, kernel_size=3, stride=1, padding=1)

    def forward(self, img_B3HW: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(img_B3HW)
        for i_level, level in enumerate(self.down):
            for i_block in range(self.num_res_blocks):
                h = level.block[i_block](h)
                if len(level.attn) > 0:
                    h = level.attn[i_block](h)
            if i_level != self.num_resolutions - 1:
                h = level.downsample(h)
        return self.conv_out(F.silu(self.norm_out(self.mid(h))))


class Decoder(nn.Module):
    def __init__(self, shape: CoderShape) -> None:
        super().__init__()
        self.num_resolutions = len(shape.ch_mult)
        self.num_res_blocks = shape.num_res_blocks
        block_in = shape.ch * shape.ch_mult[-1]
        self.conv_in = nn.Conv2d(shape.z_channels, block_in, kernel_size=3, stride=1, padding=1)
        self.mid = _Mid(block_in, shape.dropout, shape.using_mid_sa)
        levels: list[_Level] = []
        for i_level in reversed(range(self.num_resolutions)):
            level = _Level()
            block_out = shape.ch * shape.ch_mult[i_level]
            for _ in range(shape.num_res_blocks + 1):
                level.block.append(ResnetBlock(block_in, block_out, shape.dropout))
                block_in = block_out
                if i_level == self.num_resolutions - 1 and shape.using_sa:
                    level.attn.append(AttnBlock(block_in))
            if i_level != 0:
                level.upsample = Upsample2x(block_in)
            levels.insert(0, level)
        self.up = nn.ModuleList(levels)
        self.norm_out = _group_norm(block_in)
        self.conv_out = nn.Conv2d(block_in, shape.in_channels, kernel_size=3, stride=1, padding=1)

    def forward(self, z_BChw: torch.Tensor) -> torch.Tensor:
        h = self.mid(self.conv_in(z_BChw))
        for i_level in reversed(range(self.num_resolutions)):
            level = self.up[i_level]
            for i_block in range(self.num_res_blocks + 1):
                h = level.block[i_block](h)
                if len(level.attn) > 0:
                    h = level.attn[i_block](h)
            if i_level != 0:
                h = level.upsample(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class VQVAE(nn.Module):
    """Encoder + multi-scale residual quantizer + decoder (keyword names of the reference release).

    ``ch_mult`` is an addition to the reference signature so that small models can be built;
    its default is the official ``(1, 1, 2, 2, 4)`` (downsampling by 16).
    """

    def __init__(
        self,
        vocab_size: int = 4096,
        z_channels: int = 32,
        ch: int = 128,
        dropout: float = 0.0,
        beta: float = 0.25,
        using_znorm: bool = False,
        quant_conv_ks: int = 3,
        quant_resi: float = 0.5,
        share_quant_resi: int = 4,
        default_qresi_counts: int = 0,
        v_patch_nums: Sequence[int] = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16),
        test_mode: bool = True,
        ch_mult: Sequence[int] = OFFICIAL_CH_MULT,
        num_res_blocks: int = 2,
    ) -> None:
        super().__init__()
        if vocab_size < 1 or z_channels < 1:
            raise ValueError(f"vocab_size and z_channels must be >= 1, got {vocab_size} and {z_channels}")
        if ch % 32 != 0 or any(ch * m % 32 != 0 for m in ch_mult):
            raise ValueError(f"ch * ch_mult must be multiples of 32 (GroupNorm(32)); got ch={ch}, ch_mult={tuple(ch_mult)}")
        self.test_mode = test_mode
        self.V = self.vocab_size = vocab_size
        self.Cvae = z_channels
        self.ch_mult = tuple(ch_mult)
        self.downsample = 2 ** (len(self.ch_mult) - 1)
        shape = CoderShape(z_channels=z_channels, ch=ch, ch_mult=self.ch_mult, num_res_blocks=num_res_blocks, dropout=dropout)
        self.encoder = Encoder(shape)
        self.decoder = Decoder(shape)
        self.quantize = MultiScaleQuantizer(
            vocab_size=vocab_size,
            Cvae=z_channels,
            using_znorm=using_znorm,
            beta=beta,
            default_qresi_counts=default_qresi_counts,
            v_patch_nums=tuple(v_patch_nums),
            quant_resi=quant_resi,
            share_quant_resi=share_quant_resi,
        )
        pad = quant_conv_ks // 2
        self.quant_conv = nn.Conv2d(z_channels, z_channels, quant_conv_ks, stride=1, padding=pad)
        self.post_quant_conv = nn.Conv2d(z_channels, z_channels, quant_conv_ks, stride=1, padding=pad)
        if test_mode:
            self.eval()
            for p in self.parameters():
                p.requires_grad_(False)

    @property
    def patch_nums(self) -> tuple[int, ...]:
        return self.quantize.v_patch_nums

    @property
    def image_size(self) -> int:
        return self.patch_nums[-1] * self.downsample

    # ---- training ----------------------------------------------------------------------------
    def forward(self, img_B3HW: torch.Tensor, ret_usages: bool = False):
        """Training forward: ``(reconstruction, codebook usage per stage or None, vq loss)``."""
        f_hat, usages, vq_loss = self.quantize(self.quant_conv(self.encoder(img_B3HW)), ret_usages=ret_usages)
        return self.decoder(self.post_quant_conv(f_hat)), usages, vq_loss

    # ---- inference ---------------------------------------------------------------------------
    def fhat_to_img(self, f_hat_BChw: torch.Tensor) -> torch.Tensor:
        """Decode an accumulated feature map to an image in ``[-1, 1]``."""
        return self.decoder(self.post_quant_conv(f_hat_BChw)).clamp(-1, 1)

    def img_to_idxBl(self, img_B3HW: torch.Tensor) -> list[torch.Tensor]:
        f_BChw = self.quant_conv(self.encoder(img_B3HW))
        return self.quantize.f_to_idxBl_or_fhat(f_BChw, to_fhat=False)

    def idxBl_to_img(self, ms_idx_Bl: Sequence[torch.Tensor], same_shape: bool = True, last_one: bool = False):
        ms_h_BChw = self.quantize.idxBl_to_h(ms_idx_Bl)
        f_hats = self.quantize.embed_to_fhat(ms_h_BChw, all_to_max_scale=same_shape, last_one=last_one)
        if last_one:
            return self.fhat_to_img(f_hats)
        return [self.fhat_to_img(f) for f in f_hats]

    def img_to_reconstructed_img(self, img_B3HW: torch.Tensor, last_one: bool = False):
        f_BChw = self.quant_conv(self.encoder(img_B3HW))
        f_hats = self.quantize.f_to_idxBl_or_fhat(f_BChw, to_fhat=True)
        if last_one:
            return self.fhat_to_img(f_hats[-1])
        return [self.fhat_to_img(f) for f in f_hats]
