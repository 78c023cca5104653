"""util: the bottom layer — argument checks, atomic outputs, memory checks, eval mode, machine information.

Owns nothing specific to VAR. May import: the standard library and torch only (no other sdvar_lib module).
"""
