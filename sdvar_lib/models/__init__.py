"""models: the networks, their weights and their reference sampler.

Owns the VQVAE and its multi-scale quantizer, the VAR transformer with its static KV cache and the
reference sampler (``VAR.generate`` / ``VAR.autoregressive_infer_cfg``, DESIGN §3-4), the sampling
contract's tensor functions, weight initialisation, the presets and checkpoint loading.
May import: ``sdvar_lib.util``.
"""
