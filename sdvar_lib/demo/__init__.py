"""demo: the workbench's main job (``python -m sdvar_lib``): every decoder that matters on one pair, and what each trades.

May import: ``sdvar_lib.viz`` and everything below it (not ``sdvar_lib.bench`` or ``sdvar_lib.tiny``).

It runs decoders through the registry on a pair, reads the stored evaluation for quality and draws
the comparison figure: a consumer of ``sdvar``, ``fast``, ``eval`` and ``viz``, so it sits at the top
beside ``bench`` and ``tiny``. Modules: :mod:`~sdvar_lib.demo.job` (the rows, the runs, the stored
quality, the table and the figure), :mod:`~sdvar_lib.demo.cli` (the command).
"""

from sdvar_lib.demo.job import (
    DEFAULT_METHODS,
    MethodRow,
    Quality,
    demo_figure,
    format_table,
    resolve_methods,
    run_methods,
    stored_quality,
)

__all__ = ["DEFAULT_METHODS", "Quality", "MethodRow", "resolve_methods", "run_methods", "stored_quality", "format_table",
           "demo_figure"]
