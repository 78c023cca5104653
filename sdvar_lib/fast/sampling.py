"""Fused stage sampling of the fast path: CFG, top-k/top-p, the draw and the codebook lookup in one kernel.

:class:`FusedSampler` replaces the thirty-odd PyTorch kernels of ``guided_logits`` +
:meth:`sdvar_lib.models.var.VAR.sample_stage` (whose distribution is
:func:`~sdvar_lib.models.sampling.stage_probs`) by two: PyTorch draws the ``Exp(1)`` noise that
``torch.multinomial`` draws for one sample per row (same generator, same shape, so the random
stream is the reference's), and one Triton kernel (:mod:`sdvar_lib.fast.kernels.sampling`) does
the rest without a host synchronisation. ``more_smooth`` (a Gumbel-softmax mixture instead of a
draw) goes the PyTorch way.

Choice (``FastConfig(sampler=...)``): ``"auto"`` — fused on a GPU where Triton runs, PyTorch
otherwise; ``"fused"`` requires Triton; ``"torch"`` is the reference's kernels. The fused draw
uses the same random numbers and a bit-exact guidance; its softmax may round differently in the
last bit, so a token can differ from the PyTorch path's only where two candidates tie to float32
precision (the GPU tests count agreement on real passes).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from sdvar_lib.fast.kernels import resolve_backend
from sdvar_lib.models.sampling import SamplingConfig, StageSample, cfg_strength
from sdvar_lib.models.var import VAR

__all__ = ["SAMPLERS", "resolve_sampler", "FusedSampler"]

SAMPLERS = ("auto", "fused", "torch")


def resolve_sampler(choice: str, device) -> str:
    """``"fused"`` or ``"torch"`` for a :data:`SAMPLERS` choice on ``device``."""
    mapped = {"auto": "auto", "fused": "triton", "torch": "torch"}
    if choice not in mapped:
        raise ValueError(f"sampler must be one of {', '.join(repr(s) for s in SAMPLERS)}, got {choice!r}")
    return "fused" if resolve_backend(mapped[choice], device, "sampler") == "triton" else "torch"


class FusedSampler:
    """Stage sampling of one model through the fused kernel (see the module docstring).

    The kernel is compiled once per top-k/top-p on/off combination (drawing or not is decided at run time): the first
    use of a combination compiles it (:meth:`prepare`, in a thread while the caller waits; ``compile_workers=0``:
    at its first launch).
    """

    def __init__(self, model: VAR, compile_workers: int = 0) -> None:
        from sdvar_lib.fast.kernels import precompile
        from sdvar_lib.fast.kernels import sampling as kernel

        self.model = model
        self.compile_workers = compile_workers
        self._kernel = kernel
        self._precompile = precompile
        self._prepared: set[tuple[bool, bool]] = set()

    def supports(self, sampling: SamplingConfig) -> bool:
        return not sampling.more_smooth

    def warmups(self, sampling: SamplingConfig) -> list[Callable[[], object]]:
        """The kernel's launch for ``sampling``'s filters on one token's tensors (the warm-ups of
        :mod:`sdvar_lib.fast.kernels.precompile`): one compiled version serves every launch with these filters."""
        model = self.model
        codebook = model.vae.quantize.embedding.weight.detach()
        V, device = model.V, codebook.device
        logits = torch.zeros(2, 1, V, dtype=torch.float32, device=device)
        noise, probs = torch.ones(1, V, device=device), torch.zeros(1, V, device=device)
        idx = torch.zeros(1, dtype=torch.long, device=device)
        h = torch.zeros(1, codebook.shape[1], dtype=codebook.dtype, device=device)
        k, p, t = sampling.top_k, sampling.top_p, 0.5
        # one compiled version draws and computes p alone, whatever the alignment of the token slots
        return [lambda: self._kernel.sample_stage_into(logits, 1, t, k, p, codebook, noise, idx, probs, h)]

    def prepare(self, sampling: SamplingConfig) -> None:
        """Compile the kernel for ``sampling``'s filters (in a thread, waited for), the first time they are met."""
        flags = (sampling.top_k > 0, sampling.top_p > 0)
        if flags not in self._prepared:
            self._prepared.add(flags)
            if (self.compile_workers and self.model.device.type == "cuda"
                    and not torch.cuda.is_current_stream_capturing()):  # warm-ups allocate: not inside a capture
                self._precompile.compile_ahead(self.warmups(sampling), self.compile_workers)

    def __call__(self, logits_2BlV, si: int, sampling: SamplingConfig, rng) -> StageSample:
        """Stage ``si``'s sample from the last ``pn**2`` positions of a pass's CFG-doubled float32 logits."""
        self.prepare(sampling)
        model = self.model
        pn = model.patch_nums[si]
        codebook = model.vae.quantize.embedding.weight
        idx_Bl, probs_BlV, h_BlC = self._kernel.sample_stage(
            logits_2BlV, pn * pn, cfg_strength(sampling.cfg, si, model.num_stages), sampling.top_k, sampling.top_p,
            codebook.detach(), rng,
        )
        # the reference's layout of the embedded map (a view for one image, a copy for more)
        h_BChw = h_BlC.transpose(1, 2).reshape(h_BlC.shape[0], model.Cvae, pn, pn)
        return StageSample(idx_Bl=idx_Bl, h_BChw=h_BChw, probs_BlV=probs_BlV)

    def sample_into(self, logits_2BlV, si: int, sampling: SamplingConfig, noise, idx, probs, h) -> None:
        """The kernel on given buffers (``noise`` drawn beforehand): what a whole-stage CUDA graph holds."""
        self.prepare(sampling)
        model = self.model
        self._kernel.sample_stage_into(
            logits_2BlV, model.patch_nums[si] ** 2, cfg_strength(sampling.cfg, si, model.num_stages), sampling.top_k,
            sampling.top_p, model.vae.quantize.embedding.weight.detach(), noise, idx, probs, h,
        )

    def probs_into(self, logits_2BlV, si: int, sampling: SamplingConfig, offset: int, probs) -> None:
        """Only stage ``si``'s distribution ``p`` (``(B*l, V)``) from the ``l`` positions at ``offset`` of a chunk's
        logits (a verify chunk): the kernel without its draw."""
        self.prepare(sampling)
        model = self.model
        self._kernel.stage_probs_into(logits_2BlV, offset, model.patch_nums[si] ** 2,
                                      cfg_strength(sampling.cfg, si, model.num_stages), sampling.top_k, sampling.top_p,
                                      probs, model.vae.quantize.embedding.weight.detach())
