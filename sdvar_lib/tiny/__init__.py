"""tiny: the bundled digits pair — training configs, trainers, the model card and the retraining CLI.

May import: ``sdvar_lib.viz`` and everything below it (not ``sdvar_lib.bench``).
"""
