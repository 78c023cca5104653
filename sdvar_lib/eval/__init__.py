"""eval: measuring quality — metrics (classifier, Fréchet distance, confidence intervals) and the
quality-against-passes evaluation of every registered decoder.

May import: ``sdvar_lib.fast``, ``sdvar_lib.sdvar``, ``sdvar_lib.models``, ``sdvar_lib.data``, ``sdvar_lib.util``.
"""
