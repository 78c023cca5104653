"""What an official-size pair will cost before it is built: memory, and a rough time per image on this CPU.

The official pair (``var_d16`` draft, ``var_d30`` target, the ``vae_ch160v4096z32`` VQVAE) holds about
2.4 billion float32 parameters (~9.7 GB) and needs minutes per image on a CPU. :func:`load_pair
<sdvar_lib.models.checkpoints.load_pair>` asks :func:`check_official_pair_fits` before it builds or
loads one on the CPU: the cost is logged at WARNING (the commands show warnings) and a pair that cannot
fit in the memory free now raises :class:`~sdvar_lib.util.memory.InsufficientMemoryError` instead of
growing until the machine swaps or the process is killed.

The numbers come from the architectures themselves, built on the meta device (no memory, no
compute): parameters and buffers counted, KV cache sizes from :meth:`VAR.cache_bytes
<sdvar_lib.models.var.VAR.cache_bytes>`, and FLOPs of one image (one CFG-doubled pass over every
token, one VQVAE decode) counted by ``torch.utils.flop_counter.FlopCounterMode``. The time is those
FLOPs over the float32 matrix-product rate measured here: a rough lower bound (small early stages and
attention run below that rate).
"""

from __future__ import annotations

import functools
import logging
import math
import time
from dataclasses import dataclass, replace

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from sdvar_lib.models import presets
from sdvar_lib.models.presets import check_official_depth
from sdvar_lib.models.var import VAR
from sdvar_lib.models.vqvae import VQVAE
from sdvar_lib.util.memory import InsufficientMemoryError, available_now_bytes

log = logging.getLogger(__name__)

__all__ = ["PairFootprint", "official_pair_footprint", "measure_matmul_flops", "check_official_pair_fits"]

GIB = 2**30


@dataclass(frozen=True)
class PairFootprint:
    """Memory and compute of one draft/target pair in float32 (counts, bytes, FLOPs per image)."""

    description: str
    vae_parameters: int
    draft_parameters: int
    target_parameters: int
    weight_bytes: int
    """Parameters and buffers of the VQVAE and both VARs."""
    loading_bytes: int
    """Extra memory while loading checkpoint files (the largest float32 state dict beside its model; 0 for random
    weights)."""
    cache_bytes_per_image: int
    """KV caches of both models for one image (CFG-doubled rows)."""
    target_flops_per_image: float
    draft_flops_per_image: float
    decode_flops_per_image: float

    def peak_bytes(self, batch: int = 1) -> int:
        """Memory to build or load the pair and decode ``batch`` images (caches of both models)."""
        return self.weight_bytes + self.loading_bytes + batch * self.cache_bytes_per_image

    def seconds_per_image(self, flops_per_second: float) -> tuple[float, float]:
        """``(target alone, what the draft adds)`` at ``flops_per_second``: the target's passes and the decode,
        then the draft's passes."""
        return ((self.target_flops_per_image + self.decode_flops_per_image) / flops_per_second,
                self.draft_flops_per_image / flops_per_second)


def _bytes(module: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in (*module.parameters(), *module.buffers()))


def _count_flops(fn) -> float:
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        fn()
    return float(counter.get_total_flops())


def _var_flops_per_image(var) -> float:
    """One CFG-doubled pass over every token (teacher forcing): the work of decoding one image stage by stage."""
    label_2 = torch.zeros(2, dtype=torch.long, device="meta")
    x = torch.zeros(2, var.L - var.first_l, var.Cvae, device="meta")
    return _count_flops(lambda: var.forward(label_2, x))


def official_pair_footprint(draft_depth: int = 16, target_depth: int = 30, reading_files: bool = False) -> PairFootprint:
    """The footprint of the official ``var_d{draft_depth}`` / ``var_d{target_depth}`` pair (meta device: nothing allocated).

    ``reading_files``: the pair is loaded from checkpoint files (the largest state dict is read beside its model).
    """
    check_official_depth(draft_depth, "draft_depth")
    check_official_depth(target_depth, "target_depth")
    fp = _architecture_footprint(_frozen(presets.official_vae_kwargs()), _frozen(presets.official_var_kwargs(draft_depth)),
                                 _frozen(presets.official_var_kwargs(target_depth)))
    fp = replace(fp, description=f"official-size pair d{draft_depth} -> d{target_depth}")
    if not reading_files:
        return fp
    return replace(fp, loading_bytes=max(fp.draft_parameters, fp.target_parameters) * 4)


def _frozen(kwargs: dict) -> tuple:
    return tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in kwargs.items()))


@functools.lru_cache(maxsize=8)
def _architecture_footprint(vae_kwargs: tuple, draft_kwargs: tuple, target_kwargs: tuple) -> PairFootprint:
    """The footprint of the architectures these constructor arguments describe (cached by them)."""
    with torch.random.fork_rng(devices=[]), torch.device("meta"):  # nothing allocated; the caller's RNG untouched
        vae = VQVAE(**dict(vae_kwargs))
        draft, target = VAR(vae, **dict(draft_kwargs)).eval(), VAR(vae, **dict(target_kwargs)).eval()
    pn_last = target.patch_nums[-1]
    f_hat = torch.zeros(1, target.Cvae, pn_last, pn_last, device="meta")
    return PairFootprint(  # a VAR holds its VQVAE by proxy: its parameters are its own
        description="",
        vae_parameters=sum(p.numel() for p in vae.parameters()),
        draft_parameters=sum(p.numel() for p in draft.parameters()),
        target_parameters=sum(p.numel() for p in target.parameters()),
        weight_bytes=_bytes(vae) + _bytes(draft) + _bytes(target),
        loading_bytes=0,
        cache_bytes_per_image=draft.cache_bytes(2) + target.cache_bytes(2),
        target_flops_per_image=_var_flops_per_image(target),
        draft_flops_per_image=_var_flops_per_image(draft),
        decode_flops_per_image=_count_flops(lambda: vae.fhat_to_img(f_hat)),
    )


def measure_matmul_flops(n: int = 512, repeats: int = 5) -> float:
    """The float32 matrix-product rate of this CPU with torch's threads (FLOP/s: the best of ``repeats`` products
    of ``n x n`` matrices after one warm-up, ~0.3 GFLOP each). Draws from its own generator, not the caller's."""
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(n, n, generator=gen), torch.randn(n, n, generator=gen)
    a @ b  # warm-up (thread pool, kernels)
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / max(best, 1e-9)


def check_official_pair_fits(draft_depth: int, target_depth: int, device: torch.device | str,
                             reading_files: bool = False) -> PairFootprint | None:
    """Before an official-size pair is built or loaded on the CPU: log what it will cost (memory, rough time per
    image) at WARNING, and raise :class:`~sdvar_lib.util.memory.InsufficientMemoryError` when the memory free now
    cannot hold it with the KV caches of one image. Other devices: nothing (``None``)."""
    device = torch.device(device)
    if device.type != "cpu":
        return None
    fp = official_pair_footprint(draft_depth, target_depth, reading_files)
    need, free = fp.peak_bytes(1), available_now_bytes(device)
    parts = (f"{fp.weight_bytes / GIB:.1f} GiB of float32 weights ({fp.draft_parameters / 1e6:.0f}M + "
             f"{fp.target_parameters / 1e6:.0f}M + VQVAE {fp.vae_parameters / 1e6:.0f}M parameters)"
             + (f", {fp.loading_bytes / GIB:.1f} GiB more while a checkpoint file is read" if fp.loading_bytes else "")
             + f" and {fp.cache_bytes_per_image / GIB:.2f} GiB of KV caches per image")
    if free is not None and need > free:
        raise InsufficientMemoryError(
            f"the {fp.description} needs about {need / GIB:.1f} GiB on the CPU ({parts}), but only {free / GIB:.1f} GiB "
            "of memory is available now; use a GPU (device='cuda'), smaller depths (draft_depth/target_depth 16 or 20), "
            "or the bundled pair (models 'bundled')"
        )
    rate = measure_matmul_flops()
    target_s, draft_s = fp.seconds_per_image(rate)
    log.warning(
        "the %s on the CPU: about %.1f GiB of memory (%s)%s; roughly %.0f s per image for the target alone and %.0f s "
        "more with the draft, at the %.0f GFLOP/s float32 matrix rate measured here (a rough lower bound; use a GPU for "
        "more than a few images)", fp.description, need / GIB, parts,
        f" of the {free / GIB:.1f} GiB available" if free is not None else "", target_s, draft_s, rate / 1e9,
    )
    return fp
