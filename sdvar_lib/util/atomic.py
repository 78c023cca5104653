"""Atomic outputs: a file or a whole folder appears complete or not at all.

Every command writes through these helpers: the content goes to a temporary sibling, which is then
renamed into place (``os.replace``, atomic on one file system). An interrupt leaves the previous
complete file or folder, or the new one, never a mix; leftover temporaries are named
``.<name>.tmp-*`` and are ignored (and cleaned up by the next successful write of the same folder).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import tempfile
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

__all__ = [
    "OUTPUT_MARKER",
    "atomic_write_text",
    "atomic_write_bytes",
    "atomic_write_with",
    "atomic_folder",
    "check_writable_dir",
    "check_output_folder",
]

OUTPUT_MARKER = ".sdvar-output"
"""A file inside every folder written by :func:`atomic_folder`: only such folders are ever replaced."""


def _tmp_sibling(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")


def atomic_write_with(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` to write a temporary sibling of ``path``, fsync it, then rename it to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_sibling(path)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    return atomic_write_with(path, lambda tmp: tmp.write_bytes(data))


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_with(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def _default_dir_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o777 & ~umask


@contextlib.contextmanager
def atomic_folder(
    path: str | os.PathLike,
    owner: str,
    *,
    marker: bool = True,
    keep: Sequence[str] = (),
    replace_unmarked: bool = False,
) -> Iterator[Path]:
    """Write a whole folder atomically: yields a temporary folder; on success it replaces ``path``.

    ``path`` must be new, empty, or a folder an earlier run wrote (it holds :data:`OUTPUT_MARKER`);
    a folder with other files is refused, so a user's files are never replaced (``replace_unmarked``
    lifts that for a caller that owns the folder, e.g. retraining the bundled models). ``marker``
    writes the marker into the new folder; ``keep`` names files of the old folder carried over
    unchanged. The new folder gets the old one's permissions (or the umask's). The old folder is
    renamed aside, the new one renamed into place (the old one is put back if that fails), then the
    old one is removed: an interrupt leaves the old complete folder or the new complete one at
    ``path`` (between the two renames, for an instant, the old one sits beside it as ``.<name>.old-*``).
    """
    path = Path(path) if replace_unmarked else check_output_folder(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f".{path.name}.tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        if marker:
            (tmp / OUTPUT_MARKER).write_text(f"written by {owner}\n")
        yield tmp
        for name in keep:
            if (path / name).is_file() and not (tmp / name).exists():
                shutil.copy2(path / name, tmp / name)
        tmp.chmod(stat.S_IMODE(path.stat().st_mode) if path.is_dir() else _default_dir_mode())
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if path.exists():
        old = path.with_name(f".{path.name}.old-{uuid.uuid4().hex[:8]}")
        os.replace(path, old)
    try:
        os.replace(tmp, path)
    except BaseException:
        if old is not None:
            os.replace(old, path)
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def check_writable_dir(path: str | os.PathLike, name: str = "--out") -> Path:
    """Raise ``ValueError`` unless ``path`` is (or can be created as) a writable folder; nothing is created."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{name} {str(path)!r} exists and is not a folder")
    probe = path
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
        raise ValueError(f"{name} {str(path)!r} cannot be written: {str(probe)!r} is not a writable folder")
    return path


def check_output_folder(path: str | os.PathLike, name: str = "--out") -> Path:
    """Raise ``ValueError`` unless ``path`` can become a folder written by :func:`atomic_folder`.

    It must be writable, and either not exist, be empty, or hold :data:`OUTPUT_MARKER` (an earlier
    output, which a new run replaces as a whole). Nothing is created.
    """
    path = check_writable_dir(path, name)
    if path.is_dir() and any(path.iterdir()) and not (path / OUTPUT_MARKER).is_file():
        raise ValueError(
            f"{name} {str(path)!r} already holds files that no workbench run wrote; a run replaces its output folder "
            "as a whole, so choose a new or empty folder"
        )
    return path
