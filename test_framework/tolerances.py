"""Numerical tolerances of the harness, chosen from the models' dtype and device.

Every comparison allows ``abs + rel * max|reference|``: chunked and sequential passes run the same
math through kernels of different shapes, so they agree to rounding, and rounding grows with the
precision of the weights (float32 vs bfloat16/float16) and with TF32 on CUDA.

Where rounding is not small against what a bug changes, the bound is **derived from the arithmetic
actually done** instead of fixed (:func:`derived_allowed`):

- *KV caches in half precision* (bf16/fp16 weights, the fast path's caches): every stored key or
  value is a half-precision number, so two correct computations of it may round to neighbouring
  representable numbers (one unit in the last place, :func:`ulp`, of the largest magnitude
  compared); and layer by layer the rounding of the hidden states they read drifts away from the
  exact values. That drift is *measured* on the same tokens: the harness fills its sequential
  reference cache in the model's precision (one pass per stage,
  :func:`~test_framework.reference.sequential_cache`) and the exact cache of the same inputs in
  strict float32 from the stored weights (:func:`~test_framework.reference.exact_cache`), and takes
  their largest difference per layer (keys and values apart) as an envelope over the layers up to
  the one compared (drift only accumulates with depth;
  :func:`~test_framework.reference.cache_drift`). The code under test is another half-precision
  computation of the same exact values, so it may be that far from them too, and differ from the
  reference by twice the drift: ``allowed = ulp + 2 * envelope`` (triangle inequality).
- *Images*: the VQVAE decodes in float32, but on CUDA cuDNN runs its convolutions in TF32 (10-bit
  mantissa) unless ``torch.backends.cudnn.allow_tf32`` is off, and which algorithm runs depends on
  the input's memory layout. The harness decodes the reference ``f_hat`` twice, as configured and
  in strict float32, and allows twice that difference on top of ``images`` (on a CPU, or with TF32
  off, the difference is zero and the fixed bound alone applies).

Neither bound uses the code under test: both references are the harness's own computations
(:mod:`test_framework.reference`), so a bug cannot widen its own tolerance. Measured on one H200
(official-size random weights, d16 -> d30): two half-precision computations of the target's cache
(one pass per stage against one block-causal pass over all stages) disagreed by at most 0.0062 in
keys and 0.024 in values in bf16 (fp16: 0.0007, 0.0034), and the fast path's SDVAR rounds against
the sequential reference by 0.0085 and 0.039 in bf16, within the derived bounds; with those bounds
``tests/test_gpu_harness.py`` passes in fp16 and bf16 and still reports each planted bug, among them
a cache whose values are 16 units of rounding too large (2026-12-02).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch

__all__ = ["Bound", "Tolerances", "MANTISSA_BITS", "ulp", "derived_allowed", "DRIFT_FACTOR", "ProbsBound", "filtered_probs_bound"]

MANTISSA_BITS = {torch.float64: 53, torch.float32: 24, torch.bfloat16: 8, torch.float16: 11}
"""Significand precision ``p`` (bits, the implicit one included) of the floating-point types."""

DRIFT_FACTOR = 2.0
"""How many times the references' own disagreement the code under test may add: the reference and
the code under test each sit within one such disagreement of the exact values (triangle inequality)."""


def ulp(magnitude: float, mantissa_bits: int) -> float:
    """One unit in the last place of a number of ``magnitude`` with a ``mantissa_bits``-bit significand."""
    if not magnitude > 0 or not math.isfinite(magnitude):
        return 0.0
    return 2.0 ** (math.floor(math.log2(magnitude)) - (mantissa_bits - 1))


def derived_allowed(magnitude: float, drift: float, mantissa_bits: int) -> float:
    """The derived bound: one ulp of ``magnitude`` plus :data:`DRIFT_FACTOR` times the measured ``drift``."""
    return ulp(magnitude, mantissa_bits) + DRIFT_FACTOR * drift


@dataclass(frozen=True)
class ProbsBound:
    """How far a filtered distribution may be from its reference, given the logits difference measured for it.

    ``allowed = abs + expm1(2 * logits_diff) + flipped_mass``: a softmax whose logits all move by at
    most ``d`` changes every probability by a factor within ``exp(+-2d)``; and a token whose logit
    lies within ``2d`` of its row's top-k/top-p cut may enter or leave the kept set, which moves the
    row by at most the mass that entered or left (``flipped_mass``: the larger of the two, largest row). A token that enters or
    leaves the kept set farther from the cut (``far_flips``) cannot be rounding: the filter differs.
    """

    allowed: float
    far_flips: int
    flipped_mass: float


def filtered_probs_bound(got_p: torch.Tensor, want_p: torch.Tensor, want_logits: torch.Tensor, logits_diff: float,
                         abs_tol: float) -> ProbsBound:
    """:class:`ProbsBound` of ``got_p`` against the reference ``want_p`` (filtered from ``want_logits``)."""
    got_kept, want_kept = got_p > 0, want_p > 0
    flipped = got_kept ^ want_kept
    width = 2.0 * logits_diff + 1e-6
    logits = want_logits.float()
    cut = logits.masked_fill(~want_kept, float("inf")).amin(dim=-1, keepdim=True)
    near = (logits - cut).abs() <= width
    far_flips = int((flipped & ~near).sum())
    zero = torch.zeros((), device=got_p.device)
    added = torch.where(got_kept & ~want_kept, got_p.float(), zero).sum(dim=-1)  # mass the reference drops
    dropped = torch.where(want_kept & ~got_kept, want_p.float(), zero).sum(dim=-1)  # mass the reference keeps
    flipped_mass = float(torch.maximum(added, dropped).amax()) if added.numel() else 0.0
    return ProbsBound(allowed=abs_tol + math.expm1(2.0 * logits_diff) + flipped_mass, far_flips=far_flips,
                      flipped_mass=flipped_mass)


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

    ``derived_cache``: the cache bound is :func:`derived_allowed` from the references' measured drift
    (half-precision weights) on top of ``cache``; ``mantissa_bits``: the precision of the cached
    keys and values. Images always add the measured TF32-vs-float32 difference of the reference
    decode (zero on a CPU).
    """

    logits: Bound
    probs: Bound
    embeddings: Bound
    cache: Bound
    f_hat: Bound
    images: Bound
    prob_sum: float = 1e-4
    description: str = ""
    derived_cache: bool = False
    mantissa_bits: int = 24

    def __post_init__(self) -> None:
        if not isinstance(self.derived_cache, bool):
            raise TypeError(f"derived_cache must be a bool, got {self.derived_cache!r}")
        if isinstance(self.mantissa_bits, bool) or not isinstance(self.mantissa_bits, int) or not 2 <= self.mantissa_bits <= 64:
            raise ValueError(f"mantissa_bits must be an int in [2, 64] (bfloat16: 8, float16: 11, float32: 24), "
                             f"got {self.mantissa_bits!r}")

    @classmethod
    def for_dtype(cls, dtype: torch.dtype, device_type: str = "cpu") -> Tolerances:
        """Defaults for transformer weights of ``dtype`` on ``device_type`` (``"cpu"``, ``"cuda"``, ...)."""
        if not isinstance(dtype, torch.dtype):
            raise TypeError(f"dtype must be a torch.dtype, got {type(dtype).__name__}")
        if dtype in (torch.bfloat16, torch.float16):
            return cls(
                logits=Bound(0.15, 0.03), probs=Bound(2e-2), embeddings=Bound(1e-2, 1e-2), cache=Bound(0.0),
                f_hat=Bound(1e-4, 1e-5), images=Bound(1e-3), prob_sum=1e-3, derived_cache=True,
                mantissa_bits=MANTISSA_BITS[dtype],
                description=f"{str(dtype).replace('torch.', '')} on {device_type} (cache bounds derived from the "
                            "references' drift)",
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

    def images_allowed(self, reference: torch.Tensor, decode_drift: float = 0.0) -> tuple[float, str]:
        """The image bound and how it was made: ``images`` plus :data:`DRIFT_FACTOR` times the reference decode's
        own TF32-vs-float32 drift (:func:`test_framework.reference.decode_drift`; 0 on a CPU)."""
        base = self.images.allowed(reference)
        allowed = base + DRIFT_FACTOR * decode_drift
        why = f" = {base:.4f} + {DRIFT_FACTOR:g} x TF32 drift {decode_drift:.4f} of the reference decode" if decode_drift else ""
        return allowed, why

    def with_logits(self, abs_tol: float, rel_tol: float = 0.0) -> Tolerances:
        """A copy with another logits bound."""
        return replace(self, logits=Bound(abs_tol, rel_tol))
