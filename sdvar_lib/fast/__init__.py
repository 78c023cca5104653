"""fast: the GPU fast path — reusable runs with static caches, fused passes and CUDA graphs.

Plugs into SDVAR through its run factory (``SDVAR(draft, target, run_factory=FastRunFactory())``).
May import: ``sdvar_lib.sdvar``, ``sdvar_lib.models``, ``sdvar_lib.util``.
"""
