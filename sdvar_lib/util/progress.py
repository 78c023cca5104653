"""What takes time once, said on screen: the ``sdvar_lib.progress`` logger and :func:`show_progress`.

Some work happens once per process and shape and then never again: compiling the fast path's Triton
kernels and capturing its CUDA graphs on the first call at a batch size (about 5 s on a fresh
machine with an H200 and 16 cores, a few seconds when Triton's on-disk kernel cache already holds the kernels). The library
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
    """Writes each message to ``stream``, or to the ``sys.stdout`` (``sys.stderr`` with ``err``) of the moment:
    Jupyter replaces them per cell, and a command's streams may be swapped while it runs."""

    def __init__(self, stream: TextIO | None, err: bool = False) -> None:
        super().__init__()
        self._stream, self._err = stream, err

    def emit(self, record: logging.LogRecord) -> None:
        try:
            stream = self._stream if self._stream is not None else (sys.stderr if self._err else sys.stdout)
            stream.write(self.format(record) + "\n")
            stream.flush()
        except Exception:  # a broken stream must not break the computation that logged
            self.handleError(record)


def show_progress(stream: TextIO | None = None, err: bool = False) -> logging.Handler:
    """Print the ``sdvar_lib.progress`` messages (one-off preparation and how long it took) to ``stream``.

    ``stream`` defaults to ``sys.stdout`` (``sys.stderr`` with ``err=True``, what a command uses) at the
    time of each message, so a notebook cell shows them in its output. Calling it again replaces the
    earlier handler instead of printing twice.
    """
    if stream is not None and not callable(getattr(stream, "write", None)):
        raise TypeError(f"stream must be a text stream with a write method or None, got {type(stream).__name__}")
    if not isinstance(err, bool):
        raise TypeError(f"err must be True or False, got {err!r}")
    for old in [h for h in progress_log.handlers if isinstance(h, _ProgressHandler)]:
        progress_log.removeHandler(old)
    handler = _ProgressHandler(stream, err)
    handler.setFormatter(logging.Formatter("%(message)s"))
    progress_log.addHandler(handler)
    progress_log.setLevel(logging.INFO)
    return handler
