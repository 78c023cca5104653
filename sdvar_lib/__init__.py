"""SDVAR workbench: speculative decoding for Visual AutoRegressive models.

Everything a notebook or user script needs is importable from here (``from sdvar_lib import SDVAR,
load_pair, ...``); the sub-packages are the layers behind it (see ``docs/ARCHITECTURE.md``):

``util`` < ``models``, ``data`` < ``sdvar`` < ``fast`` < ``eval`` < ``viz`` < ``bench``, ``tiny``

and the commands ``python -m sdvar_lib`` (main job), ``sdvar_lib.evaluate``, ``sdvar_lib.train_tiny``,
``sdvar_lib.bench``, ``sdvar_lib.bench_plot``, ``sdvar_lib.sample``, ``sdvar_lib.fid`` on top.
"""

from sdvar_lib.eval.evaluation import (
    EvaluationReport,
    MethodResult,
    default_methods,
    evaluate_methods,
    load_bundled_report,
    load_report,
)
from sdvar_lib.eval.fid import Reference, load_extractor, score_samples
from sdvar_lib.eval.metrics import (
    DigitClassifier,
    SeedSummary,
    class_consistency,
    compare_images,
    feature_frechet_distance,
    frechet_distance,
    gaussian_stats,
    load_bundled_classifier,
    summarize_over_seeds,
)
from sdvar_lib.eval.sampler import SampleJob, SamplePlan, run_job
from sdvar_lib.fast.config import FastConfig
from sdvar_lib.fast.factory import FastRunFactory, make_fast_sdvar
from sdvar_lib.fast.graphs import GraphedDecode
from sdvar_lib.fast.run import FastRun
from sdvar_lib.fast.setup import describe_setup, fast_dtype, make_pair_sdvar, precapture, uses_fast_path
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
from sdvar_lib.models.sampling import GenerationOutput, NonFiniteDistributionError, SamplingConfig
from sdvar_lib.models.var import VAR
from sdvar_lib.models.vqvae import VQVAE
from sdvar_lib.sdvar.acceptance import (
    POLICY_NAMES,
    AcceptancePolicy,
    ExactPolicy,
    RelaxedPolicy,
    StageVerdict,
    Top1MatchPolicy,
    make_policy,
    residual_distribution,
)
from sdvar_lib.sdvar.decoder import SDVAR
from sdvar_lib.sdvar.gamma import (
    AdaptiveGamma,
    FixedGamma,
    GammaRule,
    GammaSchedule,
    RoundContext,
    RoundHistory,
    TableCost,
    UniformCost,
    make_gamma_rule,
)
from sdvar_lib.sdvar.masks import SD_MASK_MODES, prefill_mask
from sdvar_lib.sdvar.registry import DECODERS, METHODS, DecoderKind, Method, get_method, methods_for, register
from sdvar_lib.sdvar.run import ModelRun, RunFactory, eager_run
from sdvar_lib.sdvar.state import (
    AcceptanceResult,
    CombinedQuery,
    DraftProposal,
    RoundRecord,
    SDVARInferenceState,
    VerifyResult,
)
from sdvar_lib.sdvar.stats import PooledStats, SDVAROutput, SDVARStats, pool_stats, pooled_stage_acceptance
from sdvar_lib.viz.plotting import (
    acceptance_heatmaps,
    attention_mask_figure,
    cache_lengths_figure,
    comparison_figure,
    decode_partial_reconstructions,
    image_grid,
    per_layer_figure,
    quality_vs_passes_figure,
    stage_reconstruction_grid,
    stage_value_maps,
)
from sdvar_lib.viz.widgets import (
    POLICY_OPTIONS,
    ComparisonDescription,
    LivePanel,
    RunDescription,
    describe_stats,
    make_comparison_interactive,
    make_interactive,
    run_and_describe,
    run_comparison,
)

__all__ = [
    # models and checkpoints
    "VAR", "VQVAE", "KVCache", "ModelPair", "build_vae", "build_var", "build_official_pair", "build_tiny",
    "OFFICIAL_DEPTHS", "OFFICIAL_PATCH_NUMS", "MODEL_CHOICES", "CheckpointError", "load_pair", "load_bundled",
    "load_official", "load_checkpoint_file", "load_state_dict_checked", "pick_device",
    "SamplingConfig", "GenerationOutput", "NonFiniteDistributionError",
    # SDVAR and its round API
    "SDVAR", "SDVARInferenceState", "DraftProposal", "CombinedQuery", "VerifyResult", "AcceptanceResult",
    "RoundRecord", "SDVARStats", "SDVAROutput", "PooledStats", "pool_stats", "pooled_stage_acceptance",
    "ModelRun", "RunFactory", "eager_run", "SD_MASK_MODES",
    "prefill_mask",
    # policies and gamma rules
    "AcceptancePolicy", "ExactPolicy", "Top1MatchPolicy", "RelaxedPolicy", "StageVerdict", "POLICY_NAMES",
    "make_policy", "residual_distribution", "GammaRule", "FixedGamma", "GammaSchedule", "AdaptiveGamma",
    "UniformCost", "TableCost", "RoundContext", "RoundHistory", "make_gamma_rule",
    # the decoder registry
    "Method", "DecoderKind", "DECODERS", "METHODS", "get_method", "methods_for", "register",
    # the fast path
    "FastConfig", "FastRun", "FastRunFactory", "make_fast_sdvar", "GraphedDecode",
    "fast_dtype", "make_pair_sdvar", "precapture", "uses_fast_path", "describe_setup",
    # quality
    "compare_images", "class_consistency", "feature_frechet_distance", "frechet_distance", "gaussian_stats",
    "DigitClassifier", "load_bundled_classifier", "SeedSummary", "summarize_over_seeds",
    "EvaluationReport", "MethodResult", "default_methods", "evaluate_methods", "load_report", "load_bundled_report",
    # quality at scale: sample sets and FID/IS/precision-recall
    "SamplePlan", "SampleJob", "run_job", "Reference", "load_extractor", "score_samples",
    # figures and widgets
    "image_grid", "comparison_figure", "stage_reconstruction_grid", "decode_partial_reconstructions",
    "attention_mask_figure", "stage_value_maps", "acceptance_heatmaps", "cache_lengths_figure", "per_layer_figure",
    "quality_vs_passes_figure", "make_interactive", "run_and_describe", "describe_stats", "RunDescription",
    "POLICY_OPTIONS", "LivePanel", "make_comparison_interactive", "run_comparison", "ComparisonDescription",
]
__version__ = "0.2.0"
