"""The fast path's upsampling of a stage's token map in the ``f_hat`` update: Triton's where it matches bit for bit.

Every stage adds ``phi(bicubic(h))`` to ``f_hat`` (:meth:`sdvar_lib.models.quant.MultiScaleQuantizer.f_hat_after`).
PyTorch's CUDA bicubic kernel is slow at the sizes VAR meets (0.9 ms per stage at batch 32, one H200), and
:mod:`sdvar_lib.fast.kernels.bicubic` computes the same values in parallel. The rule here:

- :func:`resolve_upsample` gives the Triton kernel only when the run's kernels are Triton's, on a GPU, and
  :func:`check_upsample` finds it equal to ``F.interpolate`` **bit for bit** (values and strides) at every stage
  size of the model; otherwise :func:`~sdvar_lib.models.quant.bicubic` (PyTorch's), and a mismatch is logged.
  Equal bits keep every ``f_hat`` of the fast path the reference's, whichever of the two computed it (stage
  programs, SDVAR's acceptance and bonus programs, the host-side paths).
- On the CPU PyTorch's kernel does other arithmetic than its CUDA kernel (and the interpreter's products
  are not fused), so the check fails there and PyTorch's is used; the CPU tests run the kernel directly.
"""

from __future__ import annotations

import logging
from functools import cache

import torch

from sdvar_lib.models.quant import Upsample, bicubic
from sdvar_lib.models.var import VAR

log = logging.getLogger(__name__)

__all__ = ["check_upsample", "resolve_upsample"]


def check_upsample(upsample: Upsample, model: VAR, batch: int = 2) -> str | None:
    """``None`` when ``upsample`` equals :func:`bicubic` bit for bit (values, dtype, strides) for random float32
    token maps of every stage of ``model`` that is upsampled, laid out as the stage steps lay them out; else the
    first difference (or the error a kernel raised)."""
    return _check(upsample, model.device, model.Cvae, tuple(model.patch_nums), batch)


def _check(upsample: Upsample, device: torch.device, Cv: int, patch_nums: tuple[int, ...], batch: int) -> str | None:
    out = patch_nums[-1]
    gen = torch.Generator(device=device).manual_seed(0)
    try:
        for pn in patch_nums[:-1]:
            # (B, l, Cv) -> (B, Cv, pn, pn): the channels-last view idx_to_h and the stage programs make
            h = torch.randn(batch, pn * pn, Cv, generator=gen, device=device).transpose(1, 2).reshape(batch, Cv, pn, pn)
            got, want = upsample(h, (out, out)), bicubic(h, (out, out))
            if got.dtype != want.dtype or got.shape != want.shape or got.stride() != want.stride():
                return (f"stage of {pn}x{pn}: {tuple(got.shape)} {got.dtype} strides {got.stride()} instead of "
                        f"{tuple(want.shape)} {want.dtype} strides {want.stride()}")
            if not torch.equal(got, want):
                diff = (got - want).abs()
                return (f"stage of {pn}x{pn}: {int((diff > 0).sum())} of {diff.numel()} values differ "
                        f"(at most {float(diff.max()):.3g})")
    except Exception as exc:  # a kernel that cannot compile or run here
        return f"{type(exc).__name__}: {exc}"
    return None


@cache
def _triton_upsample(device: torch.device, Cv: int, patch_nums: tuple[int, ...]) -> Upsample:
    """The Triton kernel if it checks out bit for bit for these sizes on ``device``, else :func:`bicubic` (asked once
    per process: the verdict depends only on the GPU, the software and the sizes, and every run of a model shares it)."""
    from sdvar_lib.fast.kernels.bicubic import upsample_bicubic

    problem = _check(upsample_bicubic, device, Cv, patch_nums, batch=2)
    if problem is not None:
        log.warning("the f_hat update keeps PyTorch's bicubic upsampling: the Triton kernel is not bit-exact here (%s)",
                    problem)
        return bicubic
    return upsample_bicubic


def resolve_upsample(kernels: str, model: VAR) -> Upsample:
    """The upsampling a run's ``f_hat`` updates use: the Triton kernel where ``kernels == "triton"``, the model is
    on a GPU and :func:`check_upsample` passes (checked once per device and model sizes); PyTorch's :func:`bicubic`
    otherwise."""
    if kernels != "triton" or model.device.type != "cuda":
        return bicubic
    return _triton_upsample(model.device, model.Cvae, tuple(model.patch_nums))
