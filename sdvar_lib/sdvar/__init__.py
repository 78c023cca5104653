"""sdvar: speculative decoding for VAR and the related decoders.

Owns the SDVAR round API (``decoder.py``) and its data (``state.py``, ``stats.py``), acceptance
policies, gamma rules, the hand-off decoders and the target or draft alone (``handoff.py``), the
experimental prefill masks and the decoder registry (``registry.py``). The per-call model run is
the models layer's (:mod:`sdvar_lib.models.run`). May import: ``sdvar_lib.models``, ``sdvar_lib.util``.
"""

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
from sdvar_lib.sdvar.decoder import SDVAR, check_compatible
from sdvar_lib.sdvar.gamma import (
    AdaptiveGamma,
    CostModel,
    FixedGamma,
    GammaRule,
    GammaSchedule,
    ProgramCost,
    RoundContext,
    RoundHistory,
    RunCost,
    TableCost,
    UniformCost,
    make_gamma_rule,
)
from sdvar_lib.sdvar.handoff import baseline, code_handoff, draft_alone, generate_test3
from sdvar_lib.sdvar.masks import SD_MASK_MODES, prefill_mask
from sdvar_lib.sdvar.registry import (
    DECODERS,
    EVALUATION_METHODS,
    METHODS,
    DecoderKind,
    Method,
    get_method,
    method_names,
    methods_for,
    register,
)
from sdvar_lib.sdvar.state import (
    AcceptanceResult,
    CombinedQuery,
    DraftProposal,
    RoundRecord,
    SDVARInferenceState,
    VerifyResult,
)
from sdvar_lib.sdvar.stats import PooledStats, SDVAROutput, SDVARStats, pool_stats, pooled_stage_acceptance

__all__ = [
    # the decoder and its round
    "SDVAR", "check_compatible", "SDVARInferenceState", "DraftProposal", "CombinedQuery", "VerifyResult",
    "AcceptanceResult", "RoundRecord",
    # statistics
    "SDVARStats", "SDVAROutput", "PooledStats", "pool_stats", "pooled_stage_acceptance",
    # the other decoders
    "baseline", "draft_alone", "generate_test3", "code_handoff", "SD_MASK_MODES", "prefill_mask",
    # policies and gamma rules
    "AcceptancePolicy", "ExactPolicy", "Top1MatchPolicy", "RelaxedPolicy", "StageVerdict", "POLICY_NAMES",
    "make_policy", "residual_distribution", "GammaRule", "FixedGamma", "GammaSchedule", "AdaptiveGamma",
    "CostModel", "UniformCost", "TableCost", "ProgramCost", "RunCost", "RoundContext", "RoundHistory", "make_gamma_rule",
    # the registry
    "Method", "DecoderKind", "DECODERS", "METHODS", "EVALUATION_METHODS", "get_method", "method_names",
    "methods_for", "register",
]
