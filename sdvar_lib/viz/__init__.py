"""viz: figures (headless matplotlib) and the notebook widgets.

May import: ``sdvar_lib.eval`` and everything below it.
"""
