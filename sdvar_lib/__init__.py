"""SDVAR workbench library: VAR + VQVAE, samplers, speculative decoding, checkpoints and tools."""

from sdvar_lib.decoding import GenerationOutput, autoregressive_generate
from sdvar_lib.kv_cache import KVCache
from sdvar_lib.sampling import SamplingConfig
from sdvar_lib.var import VAR
from sdvar_lib.vqvae import VQVAE

__all__ = ["VAR", "VQVAE", "KVCache", "SamplingConfig", "GenerationOutput", "autoregressive_generate"]
__version__ = "0.1.0"
