"""bench: the GPU benchmark — physical bounds, acceptance scenarios, timing, gamma calibration, profiling, CLI.

May import: ``sdvar_lib.viz`` and everything below it (not ``sdvar_lib.tiny`` or ``sdvar_lib.demo``).

Modules, each importing only the ones before it:

- :mod:`~sdvar_lib.bench.bounds`: the physical lower bounds: what a pass, sampling and the VQVAE decode must
  move and compute (:class:`VarSpec`, :class:`Ceilings`, :func:`whole_call_bound`);
- :mod:`~sdvar_lib.bench.scenarios`: fixed-acceptance scenarios and per-stage acceptance profiles;
- :mod:`~sdvar_lib.bench.timing`: the one CUDA-event timer, percentiles, device ceilings, decode time;
- :mod:`~sdvar_lib.bench.methods`: the rows (registry methods plus ``eager_target``, ``target_v1`` and
  ``exact_calibrated``) and how one call of each runs on a pair;
- :mod:`~sdvar_lib.bench.components`: pieces of a call timed alone (decode, sampling, host time);
- :mod:`~sdvar_lib.bench.config`: :class:`BenchConfig`, checked when built;
- :mod:`~sdvar_lib.bench.calibration`: the calibrated adaptive gamma rule;
- :mod:`~sdvar_lib.bench.sweep`: comparisons with the target alone timed paired: when SDVAR pays (acceptance
  profiles x gamma, measured against the bounds' speed-up) and the decision rules per scenario;
- :mod:`~sdvar_lib.bench.oneoff`: the first calls of a fresh process (cold or warm kernel cache) and the stage
  programs' draft/target ratio;
- :mod:`~sdvar_lib.bench.report`: rows, report, markdown / JSON, atomic writes;
- :mod:`~sdvar_lib.bench.profile`: kernel breakdown of single passes and of the fast decode;
- :mod:`~sdvar_lib.bench.core`: timing a row and a whole run;
- :mod:`~sdvar_lib.bench.cli`: ``python -m sdvar_lib.bench`` and ``python -m sdvar_lib.bench_plot``.
"""

from sdvar_lib.bench.bounds import (
    Ceilings,
    DecodeCost,
    VarSpec,
    WholeCallBound,
    attended_keys,
    bound_s,
    decode_cost,
    pass_bound_s,
    pass_bytes,
    pass_flops,
    pass_weight_params,
    passes_bound_s,
    sampling_bytes,
    sequential_passes,
    total_params,
    whole_call_bound,
)
from sdvar_lib.bench.calibration import (
    CALIBRATION_RULES,
    AdaptiveCalibration,
    BatchCalibration,
    CallSample,
    OverheadEstimate,
    PassRatio,
    calibrate_batch,
    calibrate_scenario,
    calibrated_costs,
    chunk_of_pass,
    declining,
    estimate_overheads,
    measure_pass_ratio,
    measure_pass_times,
    pass_time_ratio,
)
from sdvar_lib.bench.cli import build_parser, config_from_args, main, plot_main
from sdvar_lib.bench.components import (
    COMPONENTS,
    BatchComponents,
    CallTimeline,
    DecodeComparison,
    HostOp,
    SamplingTiming,
    call_timeline,
    compare_decodes,
    host_profile,
    measure_components,
    time_sampling,
    timeline_from_intervals,
)
from sdvar_lib.bench.config import BenchConfig
from sdvar_lib.bench.core import bench_method, beyond_passes_bound, one_off_s, run_bench
from sdvar_lib.bench.methods import (
    BENCH_ONLY_ROWS,
    CALIBRATED,
    DEFAULT_METHODS,
    EAGER_TARGET,
    TARGET_V1,
    BenchMethod,
    PairContext,
    bench_row,
    build_pair_bf16,
    call_passes,
    in_call_context,
    method_call,
    prepare_pricing,
    prepare_rounds,
    prepare_runs,
    run_order,
)
from sdvar_lib.bench.oneoff import FirstCall, ProgramRatio, compiled_kernels, measure_program_ratio, time_first_calls
from sdvar_lib.bench.profile import (
    DecodeProfile,
    KernelTime,
    PassProfile,
    format_profiles,
    profile_decode,
    profile_decodes,
    profile_pass,
    profile_targets,
    write_profiles,
)
from sdvar_lib.bench.report import (
    BenchReport,
    BenchRow,
    add_speedups,
    format_calibrations,
    format_components,
    format_list,
    format_markdown,
    format_pass_ratios,
    report_to_json,
    write_report,
)
from sdvar_lib.bench.scenarios import (
    SCENARIOS,
    Scenario,
    ScenarioPolicy,
    fill_missing_stages,
    make_scenarios,
    map_profile_to_stages,
    scenario_stage_acceptance,
)
from sdvar_lib.bench.sweep import (
    ISSUE_PROFILE,
    AcceptanceProfile,
    DecisionRow,
    PairedTiming,
    SweepCell,
    format_decisions,
    format_sweep,
    measure_stage_acceptance,
    sweep_profiles,
    sweep_when_sdvar_pays,
    time_decision_rules,
    time_paired,
    whole_bound_ms,
)
from sdvar_lib.bench.timing import (
    CallTimer,
    DecodeTiming,
    ReplayTimer,
    cuda_event_ms,
    host_call_ms,
    measure_ceilings,
    measure_decode,
    median_event_ms,
    median_host_ms,
    percentile,
)
from sdvar_lib.bench.trace import TRACED, TraceMark, format_host_trace, host_trace

__all__ = [
    # bounds
    "VarSpec", "Ceilings", "pass_weight_params", "total_params", "attended_keys", "pass_flops", "pass_bytes",
    "bound_s", "pass_bound_s", "passes_bound_s", "sequential_passes", "DecodeCost", "decode_cost", "sampling_bytes",
    "WholeCallBound", "whole_call_bound",
    # scenarios and acceptance profiles
    "SCENARIOS", "ScenarioPolicy", "Scenario", "make_scenarios", "fill_missing_stages", "scenario_stage_acceptance",
    "map_profile_to_stages",
    # timing
    "ReplayTimer", "CallTimer", "cuda_event_ms", "median_event_ms", "host_call_ms",
    "median_host_ms", "percentile", "measure_ceilings", "DecodeTiming",
    "measure_decode",
    # rows
    "EAGER_TARGET", "TARGET_V1", "CALIBRATED", "BenchMethod", "BENCH_ONLY_ROWS", "DEFAULT_METHODS", "bench_row", "run_order",
    "PairContext", "build_pair_bf16", "method_call", "in_call_context", "prepare_runs", "prepare_rounds", "prepare_pricing",
    "call_passes",
    # configuration
    "BenchConfig",
    # calibration
    "CallSample", "OverheadEstimate", "AdaptiveCalibration", "BatchCalibration", "CALIBRATION_RULES", "chunk_of_pass",
    "measure_pass_times", "pass_time_ratio", "PassRatio", "measure_pass_ratio",
    "estimate_overheads", "calibrated_costs", "calibrate_batch", "calibrate_scenario", "declining",
    # components
    "COMPONENTS", "DecodeComparison", "SamplingTiming", "HostOp", "BatchComponents", "compare_decodes", "time_sampling",
    "host_profile", "CallTimeline", "call_timeline", "timeline_from_intervals", "measure_components",
    # host trace
    "TRACED", "TraceMark", "host_trace", "format_host_trace",
    # report
    "BenchRow", "BenchReport", "add_speedups", "format_markdown", "format_calibrations", "format_components", "format_list",
    "format_pass_ratios", "report_to_json", "write_report",
    # profiling
    "KernelTime", "PassProfile", "DecodeProfile", "profile_pass", "profile_targets", "profile_decode", "profile_decodes",
    "format_profiles", "write_profiles",
    # when SDVAR pays, decision rules, first calls
    "ISSUE_PROFILE", "AcceptanceProfile", "sweep_profiles", "PairedTiming", "time_paired", "whole_bound_ms", "SweepCell",
    "sweep_when_sdvar_pays", "DecisionRow", "time_decision_rules", "measure_stage_acceptance", "format_sweep",
    "format_decisions", "FirstCall", "time_first_calls",
    "compiled_kernels", "ProgramRatio", "measure_program_ratio",
    # running
    "bench_method", "run_bench", "one_off_s", "beyond_passes_bound", "build_parser", "config_from_args", "main", "plot_main",
]
