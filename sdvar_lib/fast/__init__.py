"""fast: the GPU fast path — reusable runs with static caches, fused passes and CUDA graphs.

Modules: ``run`` (FastRun, FastRunFactory, FastConfig), ``fused`` (the fused pass), ``sampling``
(the fused stage sampler), ``decode`` (the fast VQVAE decode), ``graphs`` (capture helper, graphed
decode), ``kernels`` (the Triton kernels, optional).

Plugs into SDVAR through its run factory (``SDVAR(draft, target, run_factory=FastRunFactory())``).
May import: ``sdvar_lib.sdvar``, ``sdvar_lib.models``, ``sdvar_lib.util``.
"""
