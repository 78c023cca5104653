"""The error policy every command shares: a user's mistake or an OS failure is one line and an exit code.

Each command's entry point (the ``main`` of its package's ``cli.py``) is wrapped by
:func:`command`; argparse already ends a usage mistake with exit code 2. Past argument parsing:

- an output the command may not write (:class:`~sdvar_lib.util.atomic.OutputRefusedError`: files
  the run did not write in its folder, an input as the output, an existing file without
  ``--replace``), found only when the output is written: exit code 2;
- an OS failure (``OSError``: disk full, permission denied, a path below a file, ...), named by
  :func:`describe_os_error`, and another run writing the same output
  (:class:`~sdvar_lib.util.atomic.OutputBusyError`): exit code 1.

The line is ``<prog>: error: <what happened, where, what to do>`` on stderr, with no traceback
(``SDVAR_TRACEBACK=1`` in the environment re-raises, for debugging). Anything else is a bug and keeps
its traceback. :func:`check_run_device` refuses devices no command can run on (``meta``).
"""

from __future__ import annotations

import errno
import functools
import os
import sys
from collections.abc import Callable

import torch

from sdvar_lib.util.atomic import OutputBusyError, OutputRefusedError

__all__ = ["USAGE", "RUNTIME", "command", "describe_os_error", "check_run_device"]

USAGE = 2
"""Exit code of a mistake in the command line (argparse's)."""
RUNTIME = 1
"""Exit code of a failure while running (the disk, the permissions, another run)."""

_REASONS = {
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EROFS: "read-only file system",
    errno.EISDIR: "is a folder, where a file is expected",
    errno.ENOTDIR: "a part of this path is a file, not a folder",
    errno.ENOENT: "no such file or folder",
    errno.EEXIST: "already exists",
    errno.ENAMETOOLONG: "name too long",
    errno.EMFILE: "too many open files",
    errno.EIO: "input/output error",
}
_HINTS = {
    errno.ENOSPC: "free some space (or write to another device) and rerun",
    errno.EDQUOT: "free some space (or write to another device) and rerun",
    errno.EACCES: "choose a path you may write, or change its permissions",
    errno.EPERM: "choose a path you may write, or change its permissions",
    errno.EROFS: "choose a path on a writable file system",
    errno.ENOTDIR: "choose a path whose folders are folders",
}


def describe_os_error(exc: OSError) -> str:
    """One line: the path(s), what went wrong in words, and what to do where there is something to do."""
    reason = _REASONS.get(exc.errno) if exc.errno is not None else None
    reason = reason or exc.strerror or str(exc) or type(exc).__name__
    where = ""
    if exc.filename is not None:
        where = repr(os.fspath(exc.filename))
        if getattr(exc, "filename2", None) is not None:
            where += f" -> {os.fspath(exc.filename2)!r}"
        where += ": "
    hint = _HINTS.get(exc.errno)
    return f"{where}{reason}" + (f"; {hint}" if hint else "")


def _fail(prog: str, message: str, code: int) -> int:
    lines = str(message).strip().splitlines() or ["(no message)"]
    print(f"{prog}: error: {lines[0]}", file=sys.stderr)
    return code


def command(prog: str) -> Callable[[Callable[..., int]], Callable[..., int]]:
    """Decorate a command's ``main(argv) -> int``: refused outputs and OS failures become one line and a code."""

    def decorate(main: Callable[..., int]) -> Callable[..., int]:
        @functools.wraps(main)
        def wrapped(*args, **kwargs) -> int:
            try:
                return main(*args, **kwargs)
            except (OutputRefusedError, OutputBusyError, OSError) as exc:
                if os.environ.get("SDVAR_TRACEBACK"):
                    raise
                if isinstance(exc, OutputRefusedError):
                    return _fail(prog, str(exc), USAGE)
                if isinstance(exc, OutputBusyError):
                    return _fail(prog, str(exc), RUNTIME)
                return _fail(prog, describe_os_error(exc), RUNTIME)

        return wrapped

    return decorate


def check_run_device(device: torch.device, name: str = "--device") -> torch.device:
    """``device`` unless no command can run on it (``meta`` holds no data): ``ValueError`` naming ``name``."""
    if device.type == "meta":
        raise ValueError(f"{name} 'meta' holds shapes but no data, so no command can run on it; use cpu or cuda")
    return device
