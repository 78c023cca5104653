"""Multi-scale residual vector quantizer of VAR (the ``quantize`` submodule of the VQVAE).

At stage ``s`` the residual is area-downsampled to ``pn_s`` (the last stage uses it as is), every
vector takes its nearest codebook entry, the embedded map is bicubic-upsampled back, passed through
the shared residual conv ``phi`` and subtracted from the residual / added to ``f_hat``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["Phi", "MultiScaleQuantizer", "phi_index", "Upsample", "bicubic"]

Upsample = Callable[[torch.Tensor, tuple[int, int]], torch.Tensor]
"""``(h_BChw, (H, W)) -> h`` at ``(H, W)``: how a stage's token map is brought to the last scale."""


def bicubic(h_BChw: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """The reference's upsampling of a token map: ``F.interpolate(mode="bicubic")``."""
    return F.interpolate(h_BChw, size=size, mode="bicubic")


class Phi(nn.Conv2d):
    """``phi(h) = (1 - r) * h + r * conv3x3(h)``."""

    def __init__(self, channels: int, quant_resi: float) -> None:
        super().__init__(channels, channels, kernel_size=3, stride=1, padding=1)
        self.resi_ratio = abs(quant_resi)

    def forward(self, h_BChw: torch.Tensor) -> torch.Tensor:
        return h_BChw.mul(1 - self.resi_ratio) + super().forward(h_BChw).mul_(self.resi_ratio)


def _linspace(start: float, stop: float, num: int) -> list[float]:
    if num == 1:
        return [start]
    step = (stop - start) / (num - 1)
    return [start + i * step for i in range(num - 1)] + [stop]


def phi_ticks(K: int) -> list[float]:
    """Positions in ``[0, 1]`` of ``K`` shared ``phi`` convs (the reference's tick rule)."""
    if K == 4:
        return _linspace(1 / 3 / K, 1 - 1 / 3 / K, K)
    return _linspace(1 / 2 / K, 1 - 1 / 2 / K, K)


def phi_index(ticks: Sequence[float], at_from_0_to_1: float) -> int:
    """Index of the tick nearest to ``at_from_0_to_1`` (first one on ties)."""
    dists = [abs(t - at_from_0_to_1) for t in ticks]
    return dists.index(min(dists))


class _PhiShared(nn.Module):
    """One ``phi`` for every stage (``share_quant_resi == 1``)."""

    def __init__(self, qresi: nn.Module) -> None:
        super().__init__()
        self.qresi = qresi

    def __getitem__(self, _at_from_0_to_1: float) -> nn.Module:
        return self.qresi


class _PhiPartiallyShared(nn.Module):
    """``K >= 2`` convs shared by nearest tick (``share_quant_resi == K``)."""

    def __init__(self, qresi_ls: nn.ModuleList) -> None:
        super().__init__()
        self.qresi_ls = qresi_ls
        self.ticks = phi_ticks(len(qresi_ls))

    def __getitem__(self, at_from_0_to_1: float) -> nn.Module:
        return self.qresi_ls[phi_index(self.ticks, at_from_0_to_1)]


class _PhiNonShared(nn.ModuleList):
    """One conv per stage (``share_quant_resi == 0``), still addressed by tick."""

    def __init__(self, qresi: list[nn.Module]) -> None:
        super().__init__(qresi)
        self.ticks = phi_ticks(len(qresi))

    def __getitem__(self, at_from_0_to_1: float) -> nn.Module:
        return super().__getitem__(phi_index(self.ticks, at_from_0_to_1))


class MultiScaleQuantizer(nn.Module):
    def __init__(
        self,
        vocab_size: int,
        Cvae: int,
        using_znorm: bool,
        beta: float = 0.25,
        default_qresi_counts: int = 0,
        v_patch_nums: Sequence[int] = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16),
        quant_resi: float = 0.5,
        share_quant_resi: int = 4,
    ) -> None:
        super().__init__()
        patch_nums = tuple(int(pn) for pn in v_patch_nums)
        if len(patch_nums) < 2 or any(pn < 1 for pn in patch_nums) or list(patch_nums) != sorted(set(patch_nums)):
            raise ValueError(f"v_patch_nums must be >= 2 strictly increasing positive ints, got {tuple(v_patch_nums)}")
        if share_quant_resi < 0:
            raise ValueError(f"share_quant_resi must be >= 0, got {share_quant_resi}")
        self.vocab_size = vocab_size
        self.Cvae = Cvae
        self.using_znorm = using_znorm
        self.v_patch_nums = patch_nums
        self.beta = beta
        self.quant_resi_ratio = quant_resi

        def make_phi() -> nn.Module:
            return Phi(Cvae, quant_resi) if abs(quant_resi) > 1e-6 else nn.Identity()

        if share_quant_resi == 0:
            self.quant_resi = _PhiNonShared([make_phi() for _ in range(default_qresi_counts or len(patch_nums))])
        elif share_quant_resi == 1:
            self.quant_resi = _PhiShared(make_phi())
        else:
            self.quant_resi = _PhiPartiallyShared(nn.ModuleList([make_phi() for _ in range(share_quant_resi)]))
        self.register_buffer("ema_vocab_hit_SV", torch.zeros(len(patch_nums), vocab_size))
        self.embedding = nn.Embedding(vocab_size, Cvae)

    @property
    def num_stages(self) -> int:
        return len(self.v_patch_nums)

    def phi(self, si: int) -> nn.Module:
        """The residual conv used at stage ``si``."""
        return self.quant_resi[si / (self.num_stages - 1)]

    # ---- nearest codebook entry ---------------------------------------------------------------
    def nearest_index(self, z_NC: torch.Tensor) -> torch.Tensor:
        codebook_VC = self.embedding.weight.detach()
        if self.using_znorm:
            return torch.argmax(F.normalize(z_NC, dim=-1) @ F.normalize(codebook_VC.T, dim=0), dim=1)
        d_NV = torch.sum(z_NC.square(), dim=1, keepdim=True) + torch.sum(codebook_VC.square(), dim=1, keepdim=False)
        d_NV.addmm_(z_NC, codebook_VC.T, alpha=-2, beta=1)
        return torch.argmin(d_NV, dim=1)

    def _residual_at(self, f_rest_BChw: torch.Tensor, si: int) -> torch.Tensor:
        pn = self.v_patch_nums[si]
        C = f_rest_BChw.shape[1]
        if si != self.num_stages - 1:
            f_rest_BChw = F.interpolate(f_rest_BChw, size=(pn, pn), mode="area")
        return f_rest_BChw.permute(0, 2, 3, 1).reshape(-1, C)

    def stage_contribution(self, si: int, h_BChw: torch.Tensor, upsample: Upsample = bicubic) -> torch.Tensor:
        """``phi(upsample(h))``: what stage ``si``'s embedded token map adds to ``f_hat``.

        ``upsample``: :func:`bicubic`, or a function that computes the same values (the fast path's kernel,
        used where it was checked to match bit for bit: :func:`sdvar_lib.fast.upsample.resolve_upsample`).
        """
        HW = self.v_patch_nums[-1]
        if si != self.num_stages - 1:
            h_BChw = upsample(h_BChw, (HW, HW))
        # A token map made by transposing (B, l, C) is channels-last; keep f_hat in the default
        # layout whatever the input was, so decoding takes the same kernels on every path.
        return self.phi(si)(h_BChw).contiguous()

    def f_hat_after(self, si: int, f_hat_BChw: torch.Tensor | None, h_BChw: torch.Tensor,
                    upsample: Upsample = bicubic) -> torch.Tensor:
        """``f_hat`` after stage ``si``: ``f_hat`` before it (``None`` before stage 0) plus the stage's contribution.

        The one ``f_hat`` update of every decoder (the reference sampler, SDVAR's rounds, the hand-offs
        and the fast path's whole-stage programs); ``h_BChw`` is the stage's embedded token map,
        ``upsample`` as in :meth:`stage_contribution`.
        """
        contrib = self.stage_contribution(si, h_BChw, upsample)
        return contrib if f_hat_BChw is None else f_hat_BChw + contrib

    # ---- training -----------------------------------------------------------------------------
    def forward(self, f_BChw: torch.Tensor, ret_usages: bool = False):
        """Quantize with a straight-through estimator: ``(f_hat, usages or None, vq_loss)``.

        ``usages`` is, per stage, the percentage of codebook entries hit in this batch.
        """
        f_BChw = f_BChw.float()
        B, C, H, W = f_BChw.shape
        f_no_grad = f_BChw.detach()
        f_rest = f_no_grad.clone()
        f_hat = torch.zeros_like(f_rest)
        vq_loss = f_BChw.new_zeros(())
        hits_SV = []
        SN = self.num_stages
        for si, pn in enumerate(self.v_patch_nums):
            idx_N = self.nearest_index(self._residual_at(f_rest, si))
            hits_SV.append(idx_N.bincount(minlength=self.vocab_size).float())
            h_BChw = self.embedding(idx_N.view(B, pn, pn)).permute(0, 3, 1, 2)
            h_BChw = self.stage_contribution(si, h_BChw)
            f_hat = f_hat + h_BChw
            f_rest = f_rest - h_BChw.detach()
            vq_loss = vq_loss + F.mse_loss(f_hat.detach(), f_BChw).mul(self.beta) + F.mse_loss(f_hat, f_no_grad)
        vq_loss = vq_loss / SN
        if self.training:
            with torch.no_grad():
                self.ema_vocab_hit_SV.mul_(0.9).add_(torch.stack(hits_SV).mul(0.1))
        f_hat = (f_hat.detach() - f_no_grad) + f_BChw
        usages = [float((h > 0).float().mean()) * 100 for h in hits_SV] if ret_usages else None
        return f_hat, usages, vq_loss

    # ---- inference ----------------------------------------------------------------------------
    def f_to_idxBl_or_fhat(self, f_BChw: torch.Tensor, to_fhat: bool) -> list[torch.Tensor]:
        """Tokens per stage ``(B, pn*pn)`` or the ``f_hat`` after each stage."""
        B, C, H, W = f_BChw.shape
        if (H, W) != (self.v_patch_nums[-1],) * 2:
            raise ValueError(f"feature map is {H}x{W}, the last patch number needs {self.v_patch_nums[-1]}")
        f_rest = f_BChw.detach().clone()
        f_hat = torch.zeros_like(f_rest)
        out: list[torch.Tensor] = []
        for si, pn in enumerate(self.v_patch_nums):
            idx_N = self.nearest_index(self._residual_at(f_rest, si))
            h_BChw = self.embedding(idx_N.view(B, pn, pn)).permute(0, 3, 1, 2).contiguous()
            h_BChw = self.stage_contribution(si, h_BChw)
            f_hat.add_(h_BChw)
            f_rest.sub_(h_BChw)
            out.append(f_hat.clone() if to_fhat else idx_N.reshape(B, pn * pn))
        return out

    def idx_to_h(self, si: int, idx_Bl: torch.Tensor) -> torch.Tensor:
        """Embedded token map ``(B, Cvae, pn, pn)`` of stage ``si``."""
        pn = self.v_patch_nums[si]
        return self.embedding(idx_Bl).transpose(1, 2).reshape(idx_Bl.shape[0], self.Cvae, pn, pn)

    def idxBl_to_h(self, ms_idx_Bl: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        return [self.idx_to_h(si, idx_Bl) for si, idx_Bl in enumerate(ms_idx_Bl)]

    def embed_to_fhat(self, ms_h_BChw: Sequence[torch.Tensor], all_to_max_scale: bool = True, last_one: bool = False):
        """``f_hat`` after each given stage (or only the last) from embedded token maps."""
        B = ms_h_BChw[0].shape[0]
        out: list[torch.Tensor] = []
        if all_to_max_scale:
            f_hat = None
            for si, h_BChw in enumerate(ms_h_BChw):
                f_hat = self.f_hat_after(si, f_hat, h_BChw)
                out.append(f_hat)
        else:  # experimental: grow f_hat scale by scale instead of working at the last scale
            pn0 = self.v_patch_nums[0]
            f_hat = ms_h_BChw[0].new_zeros(B, self.Cvae, pn0, pn0, dtype=torch.float32)
            for si, h_BChw in enumerate(ms_h_BChw):
                pn = self.v_patch_nums[si]
                f_hat = F.interpolate(f_hat, size=(pn, pn), mode="bicubic") + self.phi(si)(h_BChw)
                out.append(f_hat)
        return out[-1] if last_one else out

    def next_input(self, si: int, f_hat_BChw: torch.Tensor) -> torch.Tensor:
        """Area-downsample ``f_hat`` after stage ``si`` to the size of stage ``si + 1``: ``(B, l, Cvae)``."""
        pn = self.v_patch_nums[si + 1]
        B, C = f_hat_BChw.shape[:2]
        return F.interpolate(f_hat_BChw, size=(pn, pn), mode="area").reshape(B, C, -1).transpose(1, 2)

    def idxBl_to_var_input(self, gt_ms_idx_Bl: Sequence[torch.Tensor]) -> torch.Tensor:
        """Teacher-forcing input ``(B, L - first_l, Cvae)`` built from ground-truth tokens."""
        f_hat = None
        inputs: list[torch.Tensor] = []
        for si in range(self.num_stages - 1):
            f_hat = self.f_hat_after(si, f_hat, self.idx_to_h(si, gt_ms_idx_Bl[si]))
            inputs.append(self.next_input(si, f_hat))
        return torch.cat(inputs, dim=1)
