"""util: the bottom layer — argument checks, atomic outputs, memory checks, eval mode, machine information,
the progress messages of one-off work (:mod:`sdvar_lib.util.progress`), timing one piece of work
(:mod:`sdvar_lib.util.timing`: CUDA events or the host clock).

Owns nothing specific to VAR. May import: the standard library and torch only (no other sdvar_lib module).
"""

from sdvar_lib.util.atomic import atomic_folder, atomic_write_bytes, atomic_write_text
from sdvar_lib.util.checks import (
    INT64_MAX,
    INT64_MIN,
    SEED_LIMIT,
    check_bool,
    check_choice,
    check_instance,
    check_int,
    check_int_sequence,
    check_mapping,
    check_number,
    check_path,
    check_probability,
    check_seed,
    check_sequence,
    check_str,
)
from sdvar_lib.util.machine import MachineInfo
from sdvar_lib.util.memory import InsufficientMemoryError, available_now_bytes, check_fits
from sdvar_lib.util.modes import eval_mode
from sdvar_lib.util.progress import PROGRESS_LOGGER, progress_log, show_progress
from sdvar_lib.util.timing import cuda_event_ms, host_call_ms, median_event_ms, median_host_ms, median_ms

__all__ = [
    "SEED_LIMIT", "INT64_MIN", "INT64_MAX", "check_int", "check_number", "check_probability", "check_bool", "check_seed",
    "check_choice", "check_instance", "check_str", "check_sequence", "check_int_sequence", "check_mapping", "check_path",
    "atomic_write_text", "atomic_write_bytes", "atomic_folder", "check_fits", "available_now_bytes",
    "InsufficientMemoryError", "eval_mode",
    "MachineInfo", "PROGRESS_LOGGER", "progress_log", "show_progress",
    "cuda_event_ms", "median_event_ms", "host_call_ms", "median_host_ms", "median_ms",
]
