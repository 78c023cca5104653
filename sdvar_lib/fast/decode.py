"""The fast VQVAE decode: half-precision weights, channels-last convolutions, fused GroupNorm + SiLU.

:class:`FastDecoder` computes what :meth:`sdvar_lib.models.vqvae.VQVAE.fhat_to_img` computes
(``decoder(post_quant_conv(f_hat)).clamp(-1, 1)``) on a copy of the decoder's weights in bf16
(fp16 on GPUs without bf16, e.g. the T4: :func:`decode_dtype`), with every activation
channels-last so that cuDNN runs its NHWC tensor-core convolutions without layout changes:

- GroupNorm and the SiLU after it are one Triton pass over the channels-last map, which also adds
  the bias of the convolution before it; a ResNet block ends with one pass for its residual and its
  last convolution's bias; nearest upsampling is a Triton kernel too
  (:mod:`sdvar_lib.fast.kernels.groupnorm`); PyTorch's kernels where Triton does not run;
- no convolution before a ResNet block adds its bias in a pass of its own (PyTorch's bias add after
  cuDNN is a slow strided pass over channels-last maps): the block's first GroupNorm adds it on the
  fly, and its residual pass adds it too, folded into one bias vector with the block's own (through
  the 1x1 shortcut convolution where there is one: ``nin(x + b) = nin(x) + W b``);
- the mid-level self-attention is PyTorch's SDPA over the channels-last ``qkv`` without copies.

It runs eagerly anywhere (the CPU tests compare it with the float32 decode);
:class:`sdvar_lib.fast.graphs.GraphedDecode` (``fast=True``) replays it as a CUDA graph.
The weights are copied when it is built: call :meth:`FastDecoder.refresh` after loading new ones.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from sdvar_lib.fast.kernels import resolve_backend
from sdvar_lib.models.vqvae import VQVAE, AttnBlock, Decoder, ResnetBlock

__all__ = ["decode_dtype", "FastDecoder", "cudnn_benchmark"]


def decode_dtype(device: torch.device | str) -> torch.dtype:
    """The fast decode's dtype on ``device``: bf16 on GPUs with native bf16 (compute capability 8.0+),
    fp16 on older GPUs (the T4), float32 on the CPU."""
    device = torch.device(device)
    if device.type != "cuda":
        return torch.float32
    return torch.bfloat16 if torch.cuda.get_device_capability(device)[0] >= 8 else torch.float16


@contextlib.contextmanager
def cudnn_benchmark() -> Iterator[None]:
    """cuDNN picks convolution algorithms by timing them (on first use of a shape) inside the block."""
    saved = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = True
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = saved


class FastDecoder:
    """``f_hat`` ``(B, Cvae, h, w)`` -> images in ``[-1, 1]`` (float32, NCHW), like ``vae.fhat_to_img``."""

    def __init__(self, vae: VQVAE, dtype: torch.dtype | None = None, kernels: str = "auto") -> None:
        if not isinstance(vae, VQVAE):
            raise TypeError(f"FastDecoder needs an sdvar_lib.models.VQVAE, got {type(vae).__name__}")
        device = vae.post_quant_conv.weight.device
        if dtype is None:
            dtype = decode_dtype(device)
        if dtype not in (torch.float32, torch.bfloat16, torch.float16):
            raise ValueError(f"dtype must be torch.float32, torch.bfloat16 or torch.float16, got {dtype}")
        self.vae, self.dtype = vae, dtype
        self.backend = resolve_backend(kernels, device, "kernels")
        self._k = None
        if self.backend == "triton":
            from sdvar_lib.fast.kernels import groupnorm

            self._k = groupnorm
        self.refresh()

    def refresh(self) -> None:
        """Copy the VQVAE's decoder weights again (after they were changed or loaded)."""
        parts = nn.ModuleDict({"post_quant_conv": self.vae.post_quant_conv, "decoder": self.vae.decoder})
        self._parts = copy.deepcopy(parts).to(dtype=self.dtype).to(memory_format=torch.channels_last).eval()
        dec = self.decoder
        entries = {id(dec.mid.block_1): dec.conv_in}
        entries.update({id(dec.up[i - 1].block[0]): dec.up[i].upsample.conv for i in range(1, dec.num_resolutions)})
        self._residual_bias = {id(block): self._fold_residual_bias(block, entries.get(id(block)))
                               for block in dec.modules() if isinstance(block, ResnetBlock)}

    def _fold_residual_bias(self, block: ResnetBlock, entry: nn.Conv2d | None) -> torch.Tensor:
        """The one bias vector a block's residual pass adds: ``conv2``'s, the shortcut convolution's, and the
        bias of the convolution ``entry`` that made the block's input when it runs without it."""
        bias = block.conv2.bias.float()
        entry_bias = None if entry is None else entry.bias.float()
        nin = block.nin_shortcut
        if isinstance(nin, nn.Conv2d):
            if nin.kernel_size != (1, 1) or nin.padding != (0, 0):
                raise ValueError(f"FastDecoder folds biases through 1x1 shortcut convolutions only, got {nin}")
            bias = bias + nin.bias.float()
            if entry_bias is not None:
                entry_bias = nin.weight.float()[:, :, 0, 0] @ entry_bias
        if entry_bias is not None:
            bias = bias + entry_bias
        return bias.to(self.dtype)

    @property
    def decoder(self) -> Decoder:
        return self._parts["decoder"]

    def _norm(self, norm: nn.GroupNorm, x: torch.Tensor, silu: bool, pre_bias: torch.Tensor | None = None) -> torch.Tensor:
        if self._k is not None and norm.num_groups == 32:
            return self._k.group_norm_nhwc(x, 32, norm.weight, norm.bias, norm.eps, silu=silu, pre_bias=pre_bias)
        if pre_bias is not None:
            x = x + pre_bias.view(1, -1, 1, 1)
        y = F.group_norm(x, norm.num_groups, norm.weight, norm.bias, norm.eps)
        return (F.silu(y) if silu else y).contiguous(memory_format=torch.channels_last)

    @staticmethod
    def _conv_no_bias(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, conv.weight, None, conv.stride, conv.padding, conv.dilation, conv.groups)

    def _resnet(self, block: ResnetBlock, x: torch.Tensor, x_bias: torch.Tensor | None = None) -> torch.Tensor:
        """A ResNet block on ``x + x_bias`` (``x_bias``: the bias of the convolution that made ``x``, run without it)."""
        if self._k is None or block.norm1.num_groups != 32 or block.norm2.num_groups != 32:
            if x_bias is not None:
                x = x + x_bias.view(1, -1, 1, 1)
            h = block.conv1(self._norm(block.norm1, x, silu=True))
            h = block.conv2(self._norm(block.norm2, h, silu=True))
            return block.nin_shortcut(x) + h
        # the convolutions' biases ride along: x's and conv1's in the GroupNorms after them, x's (through the
        # shortcut), the shortcut's and conv2's in the residual add (one folded vector)
        h = self._conv_no_bias(block.conv1, self._norm(block.norm1, x, silu=True, pre_bias=x_bias))
        h = self._conv_no_bias(block.conv2, self._norm(block.norm2, h, silu=True, pre_bias=block.conv1.bias))
        nin = block.nin_shortcut
        shortcut = self._conv_no_bias(nin, x) if isinstance(nin, nn.Conv2d) else x
        return self._k.add_bias_residual_nhwc(shortcut, h, self._residual_bias[id(block)])

    def _entry_conv(self, conv: nn.Conv2d, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """A convolution whose output starts a ResNet block: ``(output, its bias)`` without the bias on the
        kernels (the block adds it), ``(output, None)`` with it otherwise."""
        if self._k is None:
            return conv(x), None
        return self._conv_no_bias(conv, x), conv.bias

    def _upsample(self, x: torch.Tensor) -> torch.Tensor:
        if self._k is not None:
            return self._k.upsample2x_nhwc(x)
        return F.interpolate(x, scale_factor=2, mode="nearest")

    def _attention(self, block: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(block, AttnBlock):
            return x
        B, C, H, W = x.shape
        qkv = block.qkv(self._norm(block.norm, x, silu=False))  # channels-last: memory (B, H, W, 3C)
        q, k, v = qkv.permute(0, 2, 3, 1).reshape(B, 1, H * W, 3, C).unbind(3)
        o = F.scaled_dot_product_attention(q, k, v, scale=block.w_ratio)  # one head of width C
        return x + block.proj_out(o.reshape(B, H, W, C).permute(0, 3, 1, 2))

    @torch.no_grad()
    def __call__(self, f_hat_BChw: torch.Tensor) -> torch.Tensor:
        dec = self.decoder
        with torch.autocast(f_hat_BChw.device.type, enabled=False):
            z = f_hat_BChw.to(self.dtype).contiguous(memory_format=torch.channels_last)
            h, h_bias = self._entry_conv(dec.conv_in, self._parts["post_quant_conv"](z))
            h = self._resnet(dec.mid.block_2, self._attention(dec.mid.attn_1, self._resnet(dec.mid.block_1, h, h_bias)))
            h_bias = None
            for i_level in reversed(range(dec.num_resolutions)):
                level = dec.up[i_level]
                for i_block in range(dec.num_res_blocks + 1):
                    h = self._resnet(level.block[i_block], h, h_bias if i_block == 0 else None)
                    if len(level.attn) > 0:
                        h = self._attention(level.attn[i_block], h)
                if i_level != 0:
                    h, h_bias = self._entry_conv(level.upsample.conv, self._upsample(h))
            h = dec.conv_out(self._norm(dec.norm_out, h, silu=True))
            return h.clamp(-1, 1).to(torch.float32, memory_format=torch.contiguous_format)
