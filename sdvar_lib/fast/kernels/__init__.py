"""Triton kernels of the fast path; every kernel has a PyTorch equivalent that the tests compare it with.

- :mod:`~sdvar_lib.fast.kernels.block`: the elementwise and reduction work of a transformer block
  (residual + AdaLN-modulated LayerNorm, q/k L2 norm written straight into the KV cache);
- :mod:`~sdvar_lib.fast.kernels.attention`: a single stage's attention in one launch (q/k norm, the KV cache write
  and the attention);
- :mod:`~sdvar_lib.fast.kernels.groupnorm`: GroupNorm (+ SiLU) over channels-last feature maps (VQVAE decode);
- :mod:`~sdvar_lib.fast.kernels.sampling`: CFG, top-k/top-p, the draw and the codebook lookup of a stage.

Triton is optional (it is not a dependency of the package). Its modules are imported only when a
kernel backend resolves to ``"triton"``. On CUDA the kernels are compiled; on CPU tensors they run
in Triton's interpreter, which must be switched on (``TRITON_INTERPRET=1``) *before* Triton is
first imported — that is how the CPU tests check every kernel against its PyTorch equivalent.
:func:`resolve_backend` picks ``"triton"`` or ``"torch"`` for a device.
"""

from __future__ import annotations

import importlib.util
import os

import torch

from sdvar_lib.util.checks import check_choice

__all__ = ["BACKENDS", "triton_status", "resolve_backend", "interpreter_active", "MIN_CUDA_CAPABILITY"]

BACKENDS = ("auto", "triton", "torch")
MIN_CUDA_CAPABILITY = (7, 5)
"""Oldest GPU the kernels are built for (Turing, e.g. the T4 of Colab)."""


def interpreter_active() -> bool:
    """True when Triton runs in its CPU interpreter (``TRITON_INTERPRET=1`` was set before it was imported)."""
    if os.environ.get("TRITON_INTERPRET", "0") != "1" or importlib.util.find_spec("triton") is None:
        return False
    import triton.language as tl

    return type(tl.standard.sort).__name__ == "InterpretedFunction"


def triton_status(device: torch.device | str) -> tuple[bool, str]:
    """Whether Triton kernels can run on ``device``, and why not."""
    device = torch.device(device)
    if importlib.util.find_spec("triton") is None:
        return False, "Triton is not installed"
    if device.type == "cuda":
        if os.environ.get("TRITON_INTERPRET", "0") == "1":
            return False, "TRITON_INTERPRET=1 runs Triton on the CPU; CUDA tensors need compiled kernels"
        capability = torch.cuda.get_device_capability(device)
        if capability < MIN_CUDA_CAPABILITY:
            return False, f"compute capability {capability} is older than {MIN_CUDA_CAPABILITY}"
        return True, ""
    if device.type == "cpu":
        if interpreter_active():
            return True, ""
        return False, "on the CPU Triton kernels run only in its interpreter (TRITON_INTERPRET=1 before Triton is imported)"
    return False, f"no Triton kernels for {device.type} tensors"


def resolve_backend(choice: str, device: torch.device | str, what: str = "kernels") -> str:
    """``"triton"`` or ``"torch"`` for ``choice`` (``"auto"``: Triton on a supported GPU, else PyTorch).

    ``"triton"`` where Triton cannot run raises ``ValueError`` saying why.
    """
    check_choice(choice, what, BACKENDS)
    if choice == "torch":
        return "torch"
    device = torch.device(device)
    ok, why = triton_status(device)
    if choice == "triton":
        if not ok:
            raise ValueError(f"{what}='triton' cannot run on {device}: {why}; use 'auto' or 'torch'")
        return "triton"
    return "triton" if ok and device.type == "cuda" else "torch"
