"""fast: the GPU fast path — reusable runs with static caches, fused passes and CUDA graphs.

Modules: ``config`` (:class:`FastConfig`, counters), ``run`` (:class:`FastRun`: static cache and
buffers, one program per chunk shape, the stage programs), ``round`` (SDVAR rounds as device programs,
:class:`~sdvar_lib.fast.round.DeviceRound`), ``acceptance`` (the policies' acceptance tests as device
code), ``factory``
(:class:`FastRunFactory`, the run factory handing out reusable runs; :func:`make_fast_sdvar`),
``fused`` (the fused pass), ``sampling`` (the fused stage sampler), ``decode`` (the fast VQVAE
decode), ``graphs`` (the capture helper, the graphed decode), ``setup`` (the one place that picks the
eager float32 path or the fast path for a pair: :func:`make_pair_sdvar`, :func:`describe_setup`),
``kernels`` (the Triton kernels, optional).

Plugs into SDVAR through its run factory (``SDVAR(draft, target, run_factory=FastRunFactory())``).
May import: ``sdvar_lib.sdvar``, ``sdvar_lib.models``, ``sdvar_lib.util``.
"""

from sdvar_lib.fast.config import FastConfig
from sdvar_lib.fast.factory import FastRunFactory, make_fast_sdvar
from sdvar_lib.fast.graphs import GraphedDecode
from sdvar_lib.fast.run import FastRun
from sdvar_lib.fast.setup import FAST_DTYPES, describe_setup, fast_dtype, make_pair_sdvar, precapture, uses_fast_path

__all__ = [
    "FastConfig", "FastRun", "FastRunFactory", "make_fast_sdvar", "GraphedDecode",
    "FAST_DTYPES", "fast_dtype", "make_pair_sdvar", "precapture", "uses_fast_path", "describe_setup",
]
