"""data: the datasets of the bundled models (scikit-learn's handwritten digits at 16x16).

May import: ``sdvar_lib.util``.
"""
