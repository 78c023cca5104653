"""What takes time once, said on screen: the ``sdvar_lib.progress`` logger and :func:`show_progress`.

Some work happens once per process and shape and then never again: compiling the fast path's Triton
kernels and capturing its CUDA graphs on the first call at a batch size (about 30 s on a fresh
machine, a few seconds when Triton's on-disk kernel cache already holds the kernels). The library
says so through one logger, :data:`PROGRESS_LOGGER` (``"sdvar_lib.progress"``), at ``INFO``: when it
starts such work and, after the call, how long it took. Library code only logs; a notebook or a
command that wants the messages on screen calls :func:`show_progress` once.
"""

from __future__ import annotations

import logging
import sys
from typing import TextIO

__all__ = ["PROGRESS_LOGGER", "progress_log", "show_progress"]

PROGRESS_LOGGER = "sdvar_lib.progress"
progress_log = logging.getLogger(PROGRESS_LOGGER)


class _ProgressHandler(logging.Handler):
    """Writes each message to ``stream``, or to the ``sys.stdout`` of the moment (Jupyter replaces it per cell)."""

    def __init__(self, stream: TextIO | None) -> None:
        super().__init__()
        self._stream = stream

    def emit(self, record: logging.LogRecord) -> None:
        try:
            stream = self._stream if self._stream is not None else sys.stdout
            stream.write(self.format(record) + "\n")
            stream.flush()
        except Exception:  # a broken stream must not break the computation that logged
            self.handleError(record)


def show_progress(stream: TextIO | None = None) -> logging.Handler:
    """Print the ``sdvar_lib.progress`` messages (one-off preparation and how long it took) to ``stream``.

    ``stream`` defaults to ``sys.stdout`` at the time of each message (so a notebook cell shows them in
    its output). Calling it again replaces the earlier handler instead of printing twice.
    """
    if stream is not None and not callable(getattr(stream, "write", None)):
        raise TypeError(f"stream must be a text stream with a write method or None, got {type(stream).__name__}")
    for old in [h for h in progress_log.handlers if isinstance(h, _ProgressHandler)]:
        progress_log.removeHandler(old)
    handler = _ProgressHandler(stream)
    handler.setFormatter(logging.Formatter("%(message)s"))
    progress_log.addHandler(handler)
    progress_log.setLevel(logging.INFO)
    return handler
