"""models: the networks, their weights and their reference sampler.

Owns the VQVAE and its multi-scale quantizer, the VAR transformer with its static KV cache, the
per-call model run with the stage step and the stage-by-stage loop (``run.py``), the reference
sampler (``VAR.generate`` / ``VAR.autoregressive_infer_cfg``, DESIGN §3-4) built on that loop, the
sampling contract's tensor functions (``sampling.py``), weight initialisation, the presets and
checkpoint loading. May import: ``sdvar_lib.util``.
"""

from sdvar_lib.models.checkpoints import (
    MODEL_CHOICES,
    CheckpointError,
    load_bundled,
    load_checkpoint_file,
    load_official,
    load_pair,
    load_state_dict_checked,
    pick_device,
)
from sdvar_lib.models.footprint import PairFootprint, check_official_pair_fits, official_pair_footprint
from sdvar_lib.models.kv_cache import KVCache
from sdvar_lib.models.presets import (
    OFFICIAL_DEPTHS,
    OFFICIAL_PATCH_NUMS,
    ModelPair,
    build_official_pair,
    build_tiny,
    build_vae,
    build_var,
)
from sdvar_lib.models.run import ModelRun, RunFactory, StagesDecoded, decode_stages, eager_run, prepare_call
from sdvar_lib.models.sampling import (
    CFG_LIMIT,
    GenerationOutput,
    NonFiniteDistributionError,
    SamplingConfig,
    StageSample,
    check_cfg,
    check_labels,
    stage_probs,
)
from sdvar_lib.models.var import VAR
from sdvar_lib.models.vqvae import VQVAE

__all__ = [
    "VAR", "VQVAE", "KVCache",
    "ModelRun", "RunFactory", "eager_run", "decode_stages", "StagesDecoded", "prepare_call",
    "SamplingConfig", "StageSample", "GenerationOutput", "NonFiniteDistributionError", "stage_probs", "CFG_LIMIT",
    "check_cfg", "check_labels",
    "ModelPair", "build_vae", "build_var", "build_official_pair", "build_tiny", "OFFICIAL_DEPTHS", "OFFICIAL_PATCH_NUMS",
    "MODEL_CHOICES", "CheckpointError", "load_pair", "load_bundled", "load_official", "load_checkpoint_file",
    "load_state_dict_checked", "pick_device", "PairFootprint", "official_pair_footprint", "check_official_pair_fits",
]
