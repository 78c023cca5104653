"""viz: figures (headless matplotlib) and the notebook widgets.

May import: ``sdvar_lib.eval`` and everything below it. Importing this face imports matplotlib.
"""

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
    DECODING_OPTIONS,
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
    "image_grid", "comparison_figure", "stage_reconstruction_grid", "decode_partial_reconstructions",
    "attention_mask_figure", "stage_value_maps", "acceptance_heatmaps", "cache_lengths_figure", "per_layer_figure",
    "quality_vs_passes_figure", "make_interactive", "run_and_describe", "describe_stats", "RunDescription",
    "POLICY_OPTIONS", "DECODING_OPTIONS", "LivePanel", "run_comparison", "ComparisonDescription",
    "make_comparison_interactive",
]
