"""sdvar: speculative decoding for VAR and the related decoders.

Owns the per-call model run (run factory hook), the SDVAR round API and its data (state, proposal,
query, verdicts, statistics), acceptance policies, gamma rules, hand-off decoders, masks and the
decoder registry (:mod:`sdvar_lib.sdvar.registry`).
May import: ``sdvar_lib.models``, ``sdvar_lib.util``.
"""
