"""SDVAR workbench library: VAR + VQVAE, samplers, speculative decoding, checkpoints and tools."""

from sdvar_lib.decoding.reference import GenerationOutput, autoregressive_generate
from sdvar_lib.decoding.sampling import SamplingConfig
from sdvar_lib.models.kv_cache import KVCache
from sdvar_lib.models.var import VAR
from sdvar_lib.models.vqvae import VQVAE

__all__ = ["VAR", "VQVAE", "KVCache", "SamplingConfig", "GenerationOutput", "autoregressive_generate"]
__version__ = "0.1.0"
