"""Atomic outputs that a command owns: written whole or not at all, never over a file the user did not give up.

Every command writes through these helpers, and they keep four promises:

- **Whole or nothing.** A file (:func:`atomic_write_with`) or a folder (:func:`atomic_folder`) is
  written into a temporary sibling and renamed into place (``os.replace``, atomic on one file
  system): an interrupt leaves the previous complete output or the new one, never a mix.
- **Only what it owns.** A folder output is replaced only if a workbench run wrote it and nothing
  else is in it: each written folder holds a manifest, :data:`OUTPUT_MANIFEST`, that lists every
  file the run wrote with its size and SHA-256 (and the command that wrote it);
  :func:`check_output_folder` refuses a folder with any file the manifest does not list, a listed
  file that changed since, or a manifest of another command. A file output
  (:func:`check_new_output`; :func:`check_new_outputs` for a command's several, never two the same
  file) never replaces an input of the same command, nor any existing file unless the user asked
  for it (a ``--replace`` flag).
- **One run at a time.** :func:`output_lock` takes a lock file next to the output,
  ``.<name>.lock``, held with ``flock`` and recording the process; a second run on the same output
  is refused with :class:`OutputBusyError`, and a lock left by a process that died is taken over
  with a log line.
- **No leftovers.** Temporaries are named ``.<name>.tmp-<host>-<pid>-<random>`` and a folder set
  aside during a replace ``.<name>.old-<host>-<pid>-<random>``; the next run on the same output
  (:func:`clean_leftovers`) removes those whose process is no longer running on this host (the
  name proves they are its own), and puts an old folder back if a run was killed between its two
  renames.

Refusals are :class:`OutputRefusedError` (a ``ValueError`` naming the path, what is there and how
to proceed); OS failures are ``OSError`` with the path named (:func:`named_os_error`).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import re
import shutil
import socket
import stat
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path

try:  # POSIX; elsewhere the lock falls back to an O_EXCL file with the pid recorded
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

log = logging.getLogger(__name__)

__all__ = [
    "OUTPUT_MANIFEST",
    "OUTPUT_MARKER",
    "OutputRefusedError",
    "OutputBusyError",
    "atomic_write_text",
    "atomic_write_bytes",
    "atomic_write_with",
    "atomic_folder",
    "check_writable_dir",
    "check_output_folder",
    "check_new_output",
    "check_new_outputs",
    "output_lock",
    "clean_leftovers",
    "record_output_files",
    "named_os_error",
    "file_size_and_sha256",
]

OUTPUT_MANIFEST = ".sdvar-output.json"
"""The manifest inside every folder written by :func:`atomic_folder`: the files its run wrote (size, SHA-256)."""
OUTPUT_MARKER = OUTPUT_MANIFEST
"""The manifest's older name (it used to be a bare marker file)."""
MANIFEST_FORMAT = "sdvar-output/1"
LEGACY_MARKER = ".sdvar-output"
"""The bare marker of earlier versions: it listed no files, so it proves nothing and is never trusted."""

_HOST = hashlib.sha1(socket.gethostname().encode()).hexdigest()[:8]
_LEFTOVER = re.compile(r"\.(?P<name>.+)\.(?P<kind>tmp|old)-(?P<host>[0-9a-f]{8})-(?P<pid>[0-9]+)-[0-9a-f]{8}")


class OutputRefusedError(ValueError):
    """An output that would replace something the command does not own (or cannot be written there)."""


class OutputBusyError(RuntimeError):
    """Another run is writing the same output right now."""


# ---- names, leftovers ---------------------------------------------------------------------------
def _sibling(path: Path, kind: str) -> Path:
    """``.<name>.<kind>-<host>-<pid>-<random>`` beside ``path``: the name says which process made it."""
    return path.with_name(f".{path.name}.{kind}-{_HOST}-{os.getpid()}-{uuid.uuid4().hex[:8]}")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: another user's process; anything else: assume it runs
        return True
    return True


def _few(names: Sequence[str], limit: int = 3) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def clean_leftovers(path: str | os.PathLike) -> list[Path]:
    """Remove the temporaries (and set-aside old folders) that killed runs left beside ``path``; returns those removed.

    Only siblings named ``.<name>.tmp-*`` / ``.<name>.old-*`` by this module, by a process of this
    host that no longer runs, are touched. If ``path`` is missing and such an old folder exists (a
    run was killed between moving the old output aside and moving the new one in), the newest one
    is put back at ``path`` instead.
    """
    path = Path(path)
    parent = path.parent
    if not parent.is_dir():
        return []
    mine = []
    for p in parent.iterdir():
        m = _LEFTOVER.fullmatch(p.name)
        if (m and m["name"] == path.name and m["host"] == _HOST and int(m["pid"]) != os.getpid()
                and not _pid_alive(int(m["pid"]))):
            mine.append((p, m["kind"], int(m["pid"])))
    if not mine:
        return []
    if not path.exists() and not path.is_symlink():
        olds = sorted((p for p, kind, _ in mine if kind == "old" and p.is_dir()), key=lambda p: p.stat().st_mtime)
        if olds:
            os.replace(olds[-1], path)
            log.warning("put back %s from %s: a run was killed while it replaced it", path, olds[-1].name)
            mine = [t for t in mine if t[0] != olds[-1]]
    removed = []
    for p, kind, pid in mine:
        try:
            _remove(p)
        except OSError as exc:
            log.warning("could not remove %s, left by process %d: %s", p, pid, exc)
            continue
        log.warning("removed %s, the %s of an interrupted run (process %d)", p.name,
                    "temporary" if kind == "tmp" else "set-aside old output", pid)
        removed.append(p)
    return removed


def named_os_error(exc: OSError, path: str | os.PathLike, tmp: str | os.PathLike | None = None) -> OSError:
    """``exc`` if it names a path the user knows, else the same kind of ``OSError`` (same errno) naming ``path``.

    A name inside the temporary ``tmp`` (the sibling an atomic write renames into place) becomes the
    same name inside ``path``.
    """
    filename = exc.filename
    if exc.errno is None:
        return exc
    if filename is not None and tmp is not None:
        name, hidden = os.fspath(filename), os.fspath(tmp)
        if name == hidden or name.startswith(hidden + os.sep):
            filename = os.fspath(path) + name[len(hidden):]
        else:
            return exc
    elif filename is not None:
        return exc
    else:
        filename = os.fspath(path)
    try:
        return type(exc)(exc.errno, exc.strerror or os.strerror(exc.errno), filename)
    except TypeError:
        return OSError(exc.errno, exc.strerror or os.strerror(exc.errno), filename)


def _raise_named(exc: OSError, path: str | os.PathLike, tmp: str | os.PathLike | None = None):
    named = named_os_error(exc, path, tmp)
    if named is exc:
        raise exc
    raise named from exc


# ---- files --------------------------------------------------------------------------------------
def atomic_write_with(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` to write a temporary sibling of ``path``, fsync it, then rename it to ``path``.

    Leftover temporaries of killed writes of ``path`` are removed first (:func:`clean_leftovers`).
    An ``OSError`` (disk full, permissions) leaves ``path`` as it was and names it.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        _raise_named(exc, path.parent)
    clean_leftovers(path)
    tmp = _sibling(path, "tmp")
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if isinstance(exc, OSError):
            _raise_named(exc, path, tmp)
        raise
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    return atomic_write_with(path, lambda tmp: tmp.write_bytes(data))


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_with(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def _same_file(a: Path, b: Path) -> bool:
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
    except OSError:
        pass
    return a.resolve() == b.resolve()


def check_new_output(
    path: str | os.PathLike,
    name: str = "--out",
    *,
    inputs: Iterable[str | os.PathLike] = (),
    replace: bool = False,
    replace_flag: str = "--replace",
) -> Path:
    """``path`` if a command may write the file there; else :class:`OutputRefusedError`. Creates nothing.

    Refused: a folder (``.`` included) where a file is expected, a path below a file or in a folder
    that cannot be written, the same file as one of ``inputs`` (also with ``replace``), and an
    existing file unless ``replace`` (the message names ``replace_flag``).
    """
    path = Path(path)
    if path.name in ("", ".", "..") or path.is_dir():
        raise OutputRefusedError(f"{name} {str(path)!r} is a folder; name a file")
    check_writable_dir(path.parent, f"{name} {str(path)!r}: its folder")
    for source in inputs:
        if _same_file(path, Path(source)):
            raise OutputRefusedError(f"{name} {str(path)!r} is an input of this command (the same file as the input "
                                     f"{str(source)!r}), which it would replace; write the output to another file")
    if (path.exists() or path.is_symlink()) and not replace:
        raise OutputRefusedError(f"{name} {str(path)!r} already exists; pass {replace_flag} to overwrite it, or choose "
                                 "another name")
    return path


def check_new_outputs(
    outputs: Mapping[str, str | os.PathLike | None],
    *,
    inputs: Iterable[str | os.PathLike] = (),
    replace: bool = False,
    replace_flag: str = "--replace",
) -> dict[str, Path]:
    """The file outputs of one command (``{argument name: path}``, ``None`` where not asked for), each checked by
    :func:`check_new_output`, and no two of them the same file; else :class:`OutputRefusedError`. Creates nothing."""
    inputs = list(inputs)
    checked = {name: check_new_output(path, name, inputs=inputs, replace=replace, replace_flag=replace_flag)
               for name, path in outputs.items() if path is not None}
    names = list(checked)
    for i, first in enumerate(names):
        for second in names[i + 1:]:
            if _same_file(checked[first], checked[second]):
                raise OutputRefusedError(f"{first} and {second} name the same file {str(checked[first])!r}; give each "
                                         "its own file")
    return checked


# ---- folders: the manifest ----------------------------------------------------------------------
def file_size_and_sha256(path: str | os.PathLike, chunk: int = 1 << 24) -> tuple[int, str]:
    """``(bytes, SHA-256 hex digest)`` of the file at ``path``, read once in chunks (16 MiB: a file may be larger than
    memory). The manifests of output folders and of sample sets record both."""
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
            size += len(block)
    return size, h.hexdigest()


def _sha256(path: Path) -> str:
    return file_size_and_sha256(path)[1]


def _file_entry(path: Path) -> dict:
    """A file as a manifest lists it."""
    size, sha256 = file_size_and_sha256(path)
    return dict(size=size, sha256=sha256)


def _walk(folder: Path) -> tuple[dict[str, Path], set[str], list[str]]:
    """Files (relative POSIX name -> path), folders and anything else (links, devices) below ``folder``."""
    files: dict[str, Path] = {}
    dirs: set[str] = set()
    other: list[str] = []
    for root, dirnames, filenames in os.walk(folder):
        base = Path(root)
        for d in list(dirnames):
            p = base / d
            if p.is_symlink():
                other.append(p.relative_to(folder).as_posix())
                dirnames.remove(d)
            else:
                dirs.add(p.relative_to(folder).as_posix())
        for f in filenames:
            p = base / f
            rel = p.relative_to(folder).as_posix()
            if p.is_symlink() or not p.is_file():
                other.append(rel)
            else:
                files[rel] = p
    return files, dirs, sorted(other)


def _write_manifest(folder: Path, owner: str) -> None:
    files, dirs, other = _walk(folder)
    files.pop(OUTPUT_MANIFEST, None)
    if other:
        raise ValueError(f"an output folder may hold only files and folders, {folder} holds {_few(other)}")
    manifest = dict(format=MANIFEST_FORMAT, owner=owner, written=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                    files={rel: _file_entry(p) for rel, p in sorted(files.items())},
                    dirs=sorted(dirs))
    (folder / OUTPUT_MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")


def record_output_files(folder: str | os.PathLike, names: Iterable[str], owner: str) -> bool:
    """After ``owner`` rewrote ``names`` in its own output ``folder``: record their new sizes and hashes.

    Returns ``False`` (and changes nothing) if ``folder`` holds no manifest of ``owner``.
    """
    folder = Path(folder)
    manifest = _read_manifest(folder)
    if not isinstance(manifest, dict) or manifest.get("owner") != owner:
        return False
    for rel in names:
        manifest["files"][rel] = _file_entry(folder / rel)
    atomic_write_text(folder / OUTPUT_MANIFEST, json.dumps(manifest, indent=1) + "\n")
    return True


def _read_manifest(folder: Path) -> dict | str | None:
    """The manifest (a dict), a reason it is not a valid one (a str), or ``None`` if there is none."""
    path = folder / OUTPUT_MANIFEST
    if not path.is_file() or path.is_symlink():
        return None
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        return f"its {OUTPUT_MANIFEST} is unreadable ({type(exc).__name__})"
    ok = (isinstance(manifest, dict) and manifest.get("format") == MANIFEST_FORMAT
          and isinstance(manifest.get("owner"), str) and isinstance(manifest.get("files"), dict)
          and isinstance(manifest.get("dirs", []), list)
          and all(isinstance(v, dict) and isinstance(v.get("size"), int) and isinstance(v.get("sha256"), str)
                  for v in manifest["files"].values()))
    return manifest if ok else f"its {OUTPUT_MANIFEST} is not a manifest of {MANIFEST_FORMAT}"


def _ownership_problem(folder: Path, name: str, owner: str | None) -> str | None:
    """Why a run of ``owner`` may not replace the existing folder ``folder`` (``None``: it may)."""
    files, dirs, other = _walk(folder)
    if not files and not dirs and not other:
        return None
    shown = f"{name} {str(folder)!r}"
    manifest = _read_manifest(folder)
    if not isinstance(manifest, dict):
        names = sorted(set(files) | {d for d in dirs if "/" not in d} | set(other))
        names = [n for n in names if "/" not in n] or names
        if manifest is None and LEGACY_MARKER in files:
            return (f"{shown} was written by an older version of the workbench, which kept no list of the files it "
                    f"wrote, so a run cannot tell them from yours ({_few(names)}); move what you want to keep and delete "
                    "the folder, or choose a new one")
        why = "" if manifest is None else f" ({manifest})"
        return (f"{shown} holds files that no workbench run wrote{why}: {_few(names)}; a run replaces its output folder "
                "as a whole, so choose a new or empty folder, or move those files out")
    if owner is not None and manifest["owner"] != owner:
        return (f"{shown} holds the output of {manifest['owner']}, not of {owner}; choose another folder, or delete "
                "that one if you no longer need it")
    listed = manifest["files"]
    foreign = sorted(rel for rel in files if rel != OUTPUT_MANIFEST and rel not in listed)
    foreign += sorted(d + "/" for d in dirs if d not in manifest.get("dirs", []) and not any(
        rel.startswith(d + "/") for rel in listed))
    foreign += other
    if foreign:
        return (f"{shown} holds files its run did not write: {_few(foreign)}; a run replaces the folder as a whole, so "
                "move them out (or choose another folder)")
    changed = sorted(rel for rel, p in files.items() if rel in listed and (
        p.stat().st_size != listed[rel]["size"] or _sha256(p) != listed[rel]["sha256"]))
    if changed:
        return (f"{shown}: {_few(changed)} changed since {manifest['owner']} wrote {'it' if len(changed) == 1 else 'them'}; "
                "a run replaces the folder as a whole, so copy what you want to keep elsewhere (or delete it), or "
                "choose another folder")
    return None


def check_writable_dir(path: str | os.PathLike, name: str = "--out") -> Path:
    """Raise :class:`OutputRefusedError` unless ``path`` is (or can be created as) a writable folder; creates nothing."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputRefusedError(f"{name} {str(path)!r} exists and is not a folder")
    probe = path
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
        raise OutputRefusedError(f"{name} {str(path)!r} cannot be written: {str(probe)!r} is not a writable folder")
    return path


def check_output_folder(
    path: str | os.PathLike,
    name: str = "--out",
    *,
    owner: str | None = None,
    inputs: Iterable[str | os.PathLike] = (),
) -> Path:
    """``path`` if :func:`atomic_folder` may write it, else :class:`OutputRefusedError` saying what is there.

    It must be writable, not a link, neither the current folder nor one holding it, hold none of ``inputs``, and
    either not exist, be empty, or be an earlier run's output: its manifest (of ``owner``, when given)
    lists every file in it, unchanged. Nothing is created.
    """
    path = check_writable_dir(path, name)
    if path.is_symlink():
        raise OutputRefusedError(f"{name} {str(path)!r} is a link; a run replaces its output folder as a whole, so "
                                 f"name the folder itself ({str(path.resolve())!r}) or a new one")
    resolved = path.resolve()
    try:
        cwd = Path.cwd().resolve()
    except OSError:  # the current folder was deleted
        cwd = None
    if resolved == resolved.parent or (cwd is not None and cwd.is_relative_to(resolved)):
        raise OutputRefusedError(f"{name} {str(path)!r} is the current folder or holds it; a run replaces its output "
                                 "folder as a whole, so name a new sub-folder, e.g. outputs/run1")
    for source in inputs:
        if Path(source).resolve().is_relative_to(resolved):
            raise OutputRefusedError(f"{name} {str(path)!r} holds {str(source)!r}, an input of this command; a run "
                                     "replaces its output folder as a whole, so choose another folder")
    if path.is_dir():
        problem = _ownership_problem(path, name, owner)
        if problem:
            raise OutputRefusedError(problem)
    return path


# ---- the lock -----------------------------------------------------------------------------------
_HELD: dict[tuple[Path, int], int] = {}
_HELD_GUARD = threading.Lock()


def _lock_path(path: Path) -> Path:
    path = Path(os.path.abspath(path))
    return path.parent.resolve() / f".{path.name}.lock"


def _describe_holder(text: str) -> str:
    try:
        rec = json.loads(text)
        return f"process {rec['pid']} on {rec['host']} ({rec['owner']}, since {rec['since']})"
    except (ValueError, KeyError, TypeError):
        return "another process"


def _record(owner: str) -> bytes:
    return json.dumps(dict(pid=os.getpid(), host=socket.gethostname(), host_id=_HOST, owner=owner,
                           since=time.strftime("%Y-%m-%d %H:%M:%S"))).encode()


def _busy(path: Path, holder: str) -> OutputBusyError:
    return OutputBusyError(f"{str(path)!r} is being written by another run: {holder}; wait for it to finish, or "
                           "choose another output")


def _read_fd(fd: int) -> str:
    os.lseek(fd, 0, os.SEEK_SET)
    return os.read(fd, 4096).decode(errors="replace")


def _acquire_flock(lock: Path, path: Path, owner: str) -> int | None:
    """The locked descriptor; ``None`` where the file system has no ``flock`` (then the pid file is used)."""
    for _ in range(10):
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = _read_fd(fd) if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES) else None
            os.close(fd)
            if holder is not None:
                raise _busy(path, _describe_holder(holder)) from None
            if exc.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                return None
            _raise_named(exc, lock)
        try:  # the file may have been released (unlinked) between our open and our flock: retry on the new one
            same = os.path.samestat(os.fstat(fd), os.stat(lock))
        except FileNotFoundError:
            same = False
        if not same:
            os.close(fd)
            continue
        stale = _read_fd(fd)
        if stale.strip():
            log.warning("took over the lock %s of %s, which is no longer running", lock, _describe_holder(stale))
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, _record(owner))
        return fd
    raise _busy(path, "a run that keeps taking the lock")


def _acquire_pidfile(lock: Path, path: Path, owner: str) -> int:
    for _ in range(10):
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            try:
                text = lock.read_text(errors="replace")
                rec = json.loads(text)
                dead = rec.get("host_id") == _HOST and not _pid_alive(int(rec["pid"]))
            except FileNotFoundError:
                continue
            except (ValueError, KeyError, TypeError, OSError):
                text, dead = "", False
            if not dead:
                raise _busy(path, _describe_holder(text)) from None
            log.warning("took over the lock %s of %s, which is no longer running", lock, _describe_holder(text))
            lock.unlink(missing_ok=True)
            continue
        os.write(fd, _record(owner))
        return fd
    raise _busy(path, "a run that keeps taking the lock")


@contextlib.contextmanager
def output_lock(path: str | os.PathLike, owner: str = "a workbench run") -> Iterator[Path]:
    """Hold ``.<name>.lock`` beside ``path`` while the block runs; :class:`OutputBusyError` if another run holds it.

    The lock is a file held with ``flock`` (released by the system if the process dies) that records
    the process; a lock file left by a dead process is taken over with a log line. Re-entrant within
    a thread (:func:`atomic_folder` takes it too); another thread or process is refused. The parent
    folder of ``path`` is created if needed. Yields the lock file's path.
    """
    path = Path(path)
    try:
        lock = _lock_path(path)
        lock.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        _raise_named(exc, path.parent)
    key = (lock, threading.get_ident())
    with _HELD_GUARD:
        if key in _HELD:
            _HELD[key] += 1
            reentered = True
        else:
            reentered = False
    if reentered:
        try:
            yield lock
        finally:
            with _HELD_GUARD:
                _HELD[key] -= 1
        return
    try:
        fd = _acquire_flock(lock, path, owner) if fcntl is not None else None
        if fd is None:
            fd = _acquire_pidfile(lock, path, owner)
    except OSError as exc:
        _raise_named(exc, lock)
    with _HELD_GUARD:
        _HELD[key] = 1
    try:
        yield lock
    finally:
        with _HELD_GUARD:
            del _HELD[key]
        with contextlib.suppress(FileNotFoundError):
            lock.unlink()
        os.close(fd)


# ---- folders: writing ---------------------------------------------------------------------------
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
    inputs: Iterable[str | os.PathLike] = (),
) -> Iterator[Path]:
    """Write a whole folder atomically: yields a temporary folder; on success it replaces ``path``.

    ``path`` must pass :func:`check_output_folder` for ``owner`` (new, empty, or an earlier output
    of ``owner`` holding exactly the files its manifest lists), checked once before the block and
    again just before the swap (a file added meanwhile stops the swap); ``replace_unmarked`` lifts
    that for a caller that owns the folder by other means (retraining the bundled models).
    ``marker`` writes the manifest (:data:`OUTPUT_MANIFEST`) of every file of the new folder;
    ``keep`` names files of the old folder carried over unchanged. The new folder gets the old one's
    permissions (or the umask's). The whole write holds :func:`output_lock` and first removes the
    leftovers of killed runs (:func:`clean_leftovers`). The old folder is renamed aside, the new one
    renamed into place (the old one is put back if that fails), then the old one is removed.
    """
    path = Path(path)
    inputs = list(inputs)
    check_writable_dir(path)
    with output_lock(path, owner):
        clean_leftovers(path)
        if not replace_unmarked:
            check_output_folder(path, owner=owner, inputs=inputs)
        tmp = _sibling(path, "tmp")
        try:
            tmp.mkdir()
            yield tmp
            for name in keep:
                if (path / name).is_file() and not (tmp / name).exists():
                    shutil.copy2(path / name, tmp / name)
            if marker:
                _write_manifest(tmp, owner)
            tmp.chmod(stat.S_IMODE(path.stat().st_mode) if path.is_dir() else _default_dir_mode())
            if not replace_unmarked:  # the user may have put files there while the run worked
                check_output_folder(path, owner=owner, inputs=inputs)
        except BaseException as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            if isinstance(exc, OSError):
                _raise_named(exc, path, tmp)
            raise
        old = None
        try:
            if path.exists():
                old = _sibling(path, "old")
                os.replace(path, old)
            try:
                os.replace(tmp, path)
            except BaseException:
                if old is not None:
                    os.replace(old, path)
                    old = None
                raise
        except BaseException as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            if isinstance(exc, OSError):
                _raise_named(exc, path)
            raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
