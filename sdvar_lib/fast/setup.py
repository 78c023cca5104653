"""How a draft/target pair runs: the one place that picks the eager float32 path or the fast path.

- :func:`fast_dtype`: the weight type of the fast path on a device: ``bfloat16`` on a GPU that has
  it natively (Ampere and newer), ``float16`` on older GPUs (Colab's T4 only *emulates* bf16),
  ``float32`` on a CPU.
- :func:`make_pair_sdvar`: an :class:`~sdvar_lib.sdvar.decoder.SDVAR` over a
  :class:`~sdvar_lib.models.presets.ModelPair`. ``fast=None`` (the default) takes the fast path on
  CUDA (both VARs converted to :func:`fast_dtype`, the VQVAE kept float32, static caches and CUDA
  graphs through :func:`sdvar_lib.fast.factory.make_fast_sdvar`) and the eager float32 path on a CPU;
  ``fast=False`` always takes the eager float32 path, which step-by-step diagnostics need (caches
  that are created per call and can be inspected, per-layer values, float32 comparisons).
- :func:`precapture`: capture every pass shape some methods use, before anything is timed.
- :func:`uses_fast_path` and :func:`describe_setup`: what the notebooks and the main job print with the models.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch

from sdvar_lib.fast.config import FastConfig
from sdvar_lib.fast.factory import FastRunFactory, make_fast_sdvar
from sdvar_lib.models.presets import ModelPair
from sdvar_lib.sdvar.decoder import SDVAR
from sdvar_lib.sdvar.registry import Method
from sdvar_lib.util.checks import check_bool

__all__ = ["FAST_DTYPES", "fast_dtype", "make_pair_sdvar", "precapture", "uses_fast_path", "describe_setup"]

FAST_DTYPES = (torch.bfloat16, torch.float16, torch.float32)
"""Weight types the fast path accepts for the VARs."""


def _native_bf16(device: torch.device) -> bool:
    # torch.cuda.is_bf16_supported() also says True where bf16 is only emulated (T4: slow), so ask
    # without emulation; ROCm devices all have it.
    if torch.version.hip:
        return True
    return torch.cuda.get_device_capability(device)[0] >= 8


def _as_device(device) -> torch.device:
    if not isinstance(device, (str, torch.device)):
        raise TypeError(f"device must be a string such as 'cpu' or 'cuda:0', or a torch.device, got {device!r}")
    return torch.device(device)


def fast_dtype(device: torch.device | str) -> torch.dtype:
    """The VARs' weight type on the fast path: bf16 where the GPU has it natively, else fp16; float32 on a CPU."""
    device = _as_device(device)
    if device.type != "cuda":
        return torch.float32
    return torch.bfloat16 if _native_bf16(device) else torch.float16


def _as_dtype(dtype: torch.dtype | str | None) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    names = {str(d).removeprefix("torch."): d for d in FAST_DTYPES}
    if isinstance(dtype, str) and dtype in names:
        return names[dtype]
    raise ValueError(f"dtype must be None, a torch.dtype or one of {sorted(names)}, got {dtype!r}")


def make_pair_sdvar(
    pair: ModelPair, fast: bool | None = None, dtype: torch.dtype | str | None = None, config: FastConfig | None = None
) -> SDVAR:
    """An SDVAR over ``pair``: the fast path on CUDA by default, the eager float32 path otherwise.

    ``fast=None``: fast on CUDA, eager on a CPU; ``True``: fast (on a CPU it runs the same static
    buffers without graphs, in float32); ``False``: eager float32. On the fast path both VARs are
    converted **in place** to ``dtype`` (a ``torch.dtype`` or its name, e.g. ``"float16"``; default
    :func:`fast_dtype` of their device); the shared VQVAE stays float32. ``dtype`` only matters where
    the fast path runs: on a CPU with ``fast=None`` the eager float32 path is taken whatever it says,
    so a notebook's set-up runs unchanged on both. ``config`` is passed to
    :class:`~sdvar_lib.fast.factory.FastRunFactory`.
    """
    if not isinstance(pair, ModelPair):
        raise TypeError(f"pair must be a ModelPair (from load_pair), got {type(pair).__name__}")
    if fast is not None:
        check_bool(fast, "fast")
    dtype = _as_dtype(dtype)
    if config is not None and not isinstance(config, FastConfig):
        raise TypeError(f"config must be a FastConfig or None, got {type(config).__name__}")
    device = pair.target.device
    use_fast = device.type == "cuda" if fast is None else fast
    if not use_fast:
        if fast is False and dtype is not None and dtype != torch.float32:
            raise ValueError(f"dtype {dtype} needs the fast path (fast=True or None on CUDA); the eager path is float32")
        if config is not None:
            raise ValueError("config (a FastConfig) only applies to the fast path; pass fast=True or None on CUDA")
        converted = [name for name, m in (("draft", pair.draft), ("target", pair.target)) if m.pos_1LC.dtype != torch.float32]
        if converted:
            raise ValueError(
                f"the eager path needs float32 models, but the {' and '.join(converted)} VAR(s) were converted to "
                f"{pair.target.pos_1LC.dtype} (by an earlier fast set-up); load the pair again (load_pair(...))"
            )
        return SDVAR(pair.draft, pair.target)
    dtype = fast_dtype(device) if dtype is None else dtype
    if dtype not in FAST_DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(str(d) for d in FAST_DTYPES)}, got {dtype!r}")
    if dtype == torch.bfloat16 and device.type == "cuda" and not _native_bf16(device):
        raise ValueError(f"{torch.cuda.get_device_name(device)} has no native bfloat16; use dtype=torch.float16")
    pair.draft.to(dtype)
    pair.target.to(dtype)
    return make_fast_sdvar(pair.draft, pair.target, config)


def uses_fast_path(sd: SDVAR) -> bool:
    """Whether ``sd`` runs on the fast path (its runs come from a :class:`FastRunFactory`)."""
    if not isinstance(sd, SDVAR):
        raise TypeError(f"sd must be an sdvar_lib.SDVAR, got {type(sd).__name__}")
    return isinstance(sd.run_factory, FastRunFactory)


def precapture(sd: SDVAR, methods: Sequence[Method], batch_sizes: Iterable[int]) -> int:
    """On the fast path, build the programs (CUDA graphs) of every pass shape ``methods`` use at ``batch_sizes``.

    Returns how many were new; does nothing (0) on the eager path. Call it before timing, so that
    no capture lands inside a measured call.
    """
    if not uses_fast_path(sd):
        return 0
    factory: FastRunFactory = sd.run_factory
    new = 0
    for batch in batch_sizes:
        target_chunks: set[tuple[int, int]] = set()
        draft_chunks: set[tuple[int, int]] = set()
        for m in methods:
            t, d = m.chunks(sd.num_stages)
            target_chunks.update(t)
            draft_chunks.update(d)
        # all shapes of a model at once: its buffers are sized for the longest first, so none is dropped later
        for model, chunks in ((sd.target_model, target_chunks), (sd.draft_model, draft_chunks)):
            if chunks:
                new += factory.run_for(model, batch).precapture(sorted(chunks))
    return new


def describe_setup(sd: SDVAR) -> str:
    """How ``sd`` runs, in one line: device, the VARs' weight type, and whether the fast path is on."""
    if not isinstance(sd, SDVAR):
        raise TypeError(f"sd must be an sdvar_lib.SDVAR, got {type(sd).__name__}")
    device = sd.target_model.device
    where = f"cuda ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else device.type
    dtype = str(sd.target_model.pos_1LC.dtype).removeprefix("torch.")
    if uses_fast_path(sd):
        factory: FastRunFactory = sd.run_factory
        graphs = factory.config.use_cuda_graphs
        graphs = device.type == "cuda" if graphs is None else graphs
        path = f"fast path on ({'CUDA graphs' if graphs else 'static buffers, no graphs'})"
    else:
        path = "fast path off (eager float32)"
    return f"device {where}, VAR weights {dtype}, {path}"
