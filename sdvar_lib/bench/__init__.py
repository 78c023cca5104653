"""bench: the GPU benchmark — physical bounds, acceptance scenarios, timing, gamma calibration, profiling, CLI.

May import: ``sdvar_lib.viz`` and everything below it (not ``sdvar_lib.tiny``).
"""
