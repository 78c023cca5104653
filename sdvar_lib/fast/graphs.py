"""CUDA graphs: one capture helper for every graphed program, and the graphed VQVAE decode.

:func:`capture_graph` warms a function up on a side stream (lazy CUDA/cuBLAS initialisation stays
out of the graph), then captures it; replaying the graph re-runs the captured kernels on the same
memory. :class:`GraphedDecode` replays the VQVAE decode of each input shape as one graph — the
reference decode, or with ``fast=True`` the half-precision channels-last one of
:class:`sdvar_lib.fast.decode.FastDecoder`.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch

from sdvar_lib.fast.decode import FastDecoder, cudnn_benchmark
from sdvar_lib.models.vqvae import VQVAE
from sdvar_lib.util.checks import check_bool, check_int

log = logging.getLogger(__name__)

__all__ = ["CapturedGraph", "capture_graph", "GraphedDecode"]


@dataclass(frozen=True)
class CapturedGraph:
    """A captured program: ``run()`` replays it; ``capture_s`` is what the warm-up and capture took."""

    graph: torch.cuda.CUDAGraph
    capture_s: float
    graphed: bool = True

    def run(self) -> None:
        self.graph.replay()


def capture_graph(fn: Callable[[], object], device: torch.device, warmup: int = 1, pool=None,
                  generators: Sequence[torch.Generator] = ()) -> CapturedGraph:
    """Warm ``fn`` up ``warmup`` times on a side stream, then capture it (the capture does not compute).

    ``fn`` may draw random numbers from ``generators`` (CUDA generators): they are registered with the graph,
    so that every replay draws from each generator's state at that moment and moves it on by what the
    captured draws used, as eager draws would (PyTorch's graph-safe random states).
    """
    check_int(warmup, "warmup", 0)
    t0 = time.perf_counter()
    current = torch.cuda.current_stream(device)
    side = torch.cuda.Stream(device=device)
    side.wait_stream(current)
    with torch.cuda.stream(side):
        for _ in range(warmup):
            fn()
    current.wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    for generator in generators:
        graph.register_generator_state(generator)
    with torch.cuda.graph(graph, pool=pool):
        fn()
    return CapturedGraph(graph=graph, capture_s=time.perf_counter() - t0)


@dataclass
class _DecodeGraph:
    captured: CapturedGraph
    f_hat_BChw: torch.Tensor
    img_B3HW: torch.Tensor


class GraphedDecode:
    """The VQVAE decode (``fhat_to_img``) replayed as one CUDA graph per input shape and autocast state.

    The decode is hundreds of small kernels; at batch 1 launching them costs more than running
    them. ``with GraphedDecode(vae).installed():`` routes ``vae.fhat_to_img`` (what every decoder
    calls last) through the graphs and restores the method on exit; CPU tensors go the eager way.
    Images are returned as fresh tensors (the graph's output buffer is reused).

    ``fast=True`` graphs :class:`~sdvar_lib.fast.decode.FastDecoder` (bf16/fp16 weights, channels-last
    convolutions chosen by cuDNN's timing, fused GroupNorm + SiLU; ``dtype`` and ``kernels`` are its
    options) instead of the reference decode. ``capture_time_s`` sums the warm-ups and captures.
    """

    def __init__(self, vae: VQVAE, capture_warmup: int = 1, fast: bool = False, dtype: torch.dtype | None = None,
                 kernels: str = "auto") -> None:
        if not isinstance(vae, VQVAE):
            raise TypeError(f"GraphedDecode needs an sdvar_lib.models.VQVAE, got {type(vae).__name__}")
        self.vae = vae
        self.capture_warmup = check_int(capture_warmup, "capture_warmup", 0)
        self.fast = check_bool(fast, "fast")
        self.capture_time_s = 0.0
        on_cuda = vae.post_quant_conv.weight.is_cuda
        self._fast = FastDecoder(vae, dtype, kernels) if fast and on_cuda else None
        self._graphs: dict[tuple, _DecodeGraph] = {}

    def _eager(self, f_hat_BChw: torch.Tensor) -> torch.Tensor:
        if self._fast is not None and f_hat_BChw.is_cuda:
            return self._fast(f_hat_BChw)
        return VQVAE.fhat_to_img(self.vae, f_hat_BChw)

    @torch.no_grad()
    def __call__(self, f_hat_BChw: torch.Tensor) -> torch.Tensor:
        if not f_hat_BChw.is_cuda:
            return self._eager(f_hat_BChw)
        autocast = torch.is_autocast_enabled("cuda")
        key = (tuple(f_hat_BChw.shape), f_hat_BChw.dtype, f_hat_BChw.device, autocast,
               torch.get_autocast_dtype("cuda") if autocast else None)
        entry = self._graphs.get(key)
        if entry is None:
            static_in = f_hat_BChw.clone()
            out: dict[str, torch.Tensor] = {}

            def decode() -> None:
                out["img"] = self._eager(static_in)

            with cudnn_benchmark() if self._fast is not None else contextlib.nullcontext():
                captured = capture_graph(decode, f_hat_BChw.device, max(self.capture_warmup, self._fast is not None))
            self.capture_time_s += captured.capture_s
            entry = _DecodeGraph(captured=captured, f_hat_BChw=static_in, img_B3HW=out["img"])
            self._graphs[key] = entry
            log.debug("captured the VQVAE decode for input %s", tuple(f_hat_BChw.shape))
        entry.f_hat_BChw.copy_(f_hat_BChw)
        entry.captured.run()
        return entry.img_B3HW.clone()

    @contextlib.contextmanager
    def installed(self) -> Iterator[GraphedDecode]:
        """Route ``vae.fhat_to_img`` through the graphs inside the ``with`` block."""
        if "fhat_to_img" in vars(self.vae):
            raise RuntimeError("vae.fhat_to_img is already overridden (nested GraphedDecode.installed()?)")
        self.vae.fhat_to_img = self
        try:
            yield self
        finally:
            del self.vae.fhat_to_img
