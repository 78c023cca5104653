"""Numerical tolerances of the harness, chosen from the models' dtype and device.

Every comparison allows ``abs + rel * max|reference|``: chunked and sequential passes run the same
math through kernels of different shapes, so they agree to rounding, and rounding grows with the
precision of the weights (float32 vs bfloat16/float16) and with TF32 on CUDA.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

__all__ = ["Bound", "Tolerances"]


@dataclass(frozen=True)
class Bound:
    """``|got - reference| <= abs + rel * max|reference|``."""

    abs: float
    rel: float = 0.0

    def __post_init__(self) -> None:
        if not (self.abs >= 0 and self.rel >= 0):
            raise ValueError(f"tolerance bounds must be >= 0, got abs={self.abs}, rel={self.rel}")

    def allowed(self, reference: torch.Tensor) -> float:
        """The largest allowed absolute difference against ``reference``."""
        if self.rel == 0 or reference.numel() == 0:
            return self.abs
        scale = float(reference.detach().abs().amax().float())
        return self.abs + self.rel * scale


@dataclass(frozen=True)
class Tolerances:
    """Tolerances of every comparison the harness makes.

    - ``logits``: chunked vs sequential target/draft logits (also the "near tie" width of greedy checks);
    - ``probs``: sampling distributions ``q``/``p`` vs their sequential recomputation;
    - ``embeddings``: the verify chunk's inputs vs independently recomputed embeddings;
    - ``cache``: cached keys/values vs a sequential recomputation;
    - ``f_hat``: accumulated VQVAE features vs the ones rebuilt from tokens (float32 in every setting);
    - ``images``: decoded images in ``[0, 1]``;
    - ``prob_sum``: ``|sum(q) - 1|`` per row.
    """

    logits: Bound
    probs: Bound
    embeddings: Bound
    cache: Bound
    f_hat: Bound
    images: Bound
    prob_sum: float = 1e-4
    description: str = ""

    @classmethod
    def for_dtype(cls, dtype: torch.dtype, device_type: str = "cpu") -> Tolerances:
        """Defaults for transformer weights of ``dtype`` on ``device_type`` (``"cpu"``, ``"cuda"``, ...)."""
        if not isinstance(dtype, torch.dtype):
            raise TypeError(f"dtype must be a torch.dtype, got {type(dtype).__name__}")
        if dtype in (torch.bfloat16, torch.float16):
            return cls(
                logits=Bound(0.15, 0.03), probs=Bound(2e-2), embeddings=Bound(1e-2, 1e-2), cache=Bound(5e-2, 2e-2),
                f_hat=Bound(1e-4, 1e-5), images=Bound(1e-3), prob_sum=1e-3,
                description=f"{str(dtype).replace('torch.', '')} on {device_type}",
            )
        if dtype != torch.float32 and dtype != torch.float64:
            raise ValueError(f"no default tolerances for dtype {dtype}; pass Tolerances(...) explicitly")
        if device_type == "cuda":
            tf32 = bool(torch.backends.cuda.matmul.allow_tf32)
            rel = 5e-3 if tf32 else 1e-4
            return cls(
                logits=Bound(1e-4, rel), probs=Bound(1e-4), embeddings=Bound(1e-5, 1e-5), cache=Bound(1e-4, rel),
                f_hat=Bound(1e-5, 1e-5), images=Bound(1e-3), prob_sum=1e-4,
                description=f"float32 on cuda{' (TF32 matmuls)' if tf32 else ''}",
            )
        return cls(
            logits=Bound(1e-4), probs=Bound(1e-5), embeddings=Bound(1e-5, 1e-6), cache=Bound(1e-5, 1e-6),
            f_hat=Bound(1e-5, 1e-6), images=Bound(1e-4), prob_sum=1e-4, description=f"float32 on {device_type}",
        )

    @classmethod
    def for_model(cls, model: torch.nn.Module) -> Tolerances:
        """Defaults for a VAR model: its parameter dtype and device decide."""
        param = next(model.parameters())
        return cls.for_dtype(param.dtype, param.device.type)

    def with_logits(self, abs_tol: float, rel_tol: float = 0.0) -> Tolerances:
        """A copy with another logits bound."""
        return replace(self, logits=Bound(abs_tol, rel_tol))
