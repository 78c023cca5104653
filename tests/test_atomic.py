"""Atomic outputs a command owns: whole or nothing, never over a user's file, one run at a time, no leftovers.

The commands' side of the same promises (one line and an exit code per refusal, no file changed) is
in ``tests/test_cli_bad_input.py``; killed runs' leftovers end to end in ``tests/test_interrupt.py``.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import socket
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from sdvar_lib.util import atomic
from sdvar_lib.util.atomic import (
    OUTPUT_MANIFEST,
    OutputBusyError,
    OutputRefusedError,
    atomic_folder,
    atomic_write_text,
    atomic_write_with,
    check_new_output,
    check_output_folder,
    check_writable_dir,
    clean_leftovers,
    output_lock,
    record_output_files,
)

REPO = Path(__file__).resolve().parents[1]
HOST = hashlib.sha1(socket.gethostname().encode()).hexdigest()[:8]


class Interrupt(BaseException):
    """Stands in for KeyboardInterrupt (a BaseException, like SIGINT's)."""


def tree(root: Path) -> dict[str, bytes | None]:
    """Every file (with its bytes) and folder below ``root``, by relative name."""
    return {p.relative_to(root).as_posix(): (p.read_bytes() if p.is_file() else None) for p in sorted(root.rglob("*"))}


def owned(path: Path, owner: str = "test", **files: str) -> Path:
    with atomic_folder(path, owner) as tmp:
        for name, text in (files or {"a.txt": "1"}).items():
            (tmp / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp / name).write_text(text)
    return path


def dead_pid() -> int:
    """The pid of a process that has exited (and was reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


# ---- whole or nothing ---------------------------------------------------------------------------
def test_a_file_is_replaced_whole_or_not_at_all(tmp_path):
    path = tmp_path / "stats.json"
    atomic_write_text(path, "old")

    def failing(tmp):
        tmp.write_text("half")
        raise Interrupt

    with pytest.raises(Interrupt):
        atomic_write_with(path, failing)
    assert path.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["stats.json"]
    atomic_write_text(path, "new")
    assert path.read_text() == "new"


def test_a_folder_is_replaced_as_one_set_with_a_manifest_of_its_files(tmp_path):
    out = owned(tmp_path / "out", **{"a.txt": "1", "b.txt": "1", "sub/c.txt": "22"})
    manifest = json.loads((out / OUTPUT_MANIFEST).read_text())
    assert manifest["owner"] == "test" and manifest["dirs"] == ["sub"]
    assert manifest["files"]["sub/c.txt"] == {"size": 2, "sha256": hashlib.sha256(b"22").hexdigest()}
    assert sorted(manifest["files"]) == ["a.txt", "b.txt", "sub/c.txt"]
    with pytest.raises(Interrupt), atomic_folder(out, "test") as tmp:
        (tmp / "a.txt").write_text("2")
        raise Interrupt  # interrupted half way: the old set stays
    assert (out / "a.txt").read_text() == "1" and (out / "b.txt").read_text() == "1"
    with atomic_folder(out, "test") as tmp:
        (tmp / "a.txt").write_text("3")
    assert (out / "a.txt").read_text() == "3" and not (out / "b.txt").exists()  # the new set, nothing of the old
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temporaries, no lock left beside it


# ---- only what it owns --------------------------------------------------------------------------
def _user_folder(p: Path) -> None:
    p.mkdir()
    (p / "mine.txt").write_text("keep me")


def _owned_plus_note(p: Path) -> None:
    owned(p)
    (p / "notes.txt").write_text("added by the user since")


def _owned_plus_subfolder(p: Path) -> None:
    owned(p)
    (p / "analysis").mkdir()
    (p / "analysis" / "nb.ipynb").write_text("{}")


def _owned_plus_empty_subfolder(p: Path) -> None:
    owned(p)
    (p / "drafts").mkdir()


def _owned_file_edited(p: Path) -> None:
    owned(p, **{"a.txt": "1", "b.txt": "1"})
    (p / "b.txt").write_text("2")  # same size, other content: only the hash tells


def _stray_legacy_marker(p: Path) -> None:
    _user_folder(p)
    (p / ".sdvar-output").write_text("written by python -m sdvar_lib\n")


def _manifest_copied_in(p: Path) -> None:
    """A user's folder with a manifest copied from a real output (the files it lists are not there)."""
    source = owned(p.parent / "elsewhere")
    _user_folder(p)
    (p / OUTPUT_MANIFEST).write_bytes((source / OUTPUT_MANIFEST).read_bytes())


def _output_copied_in(p: Path) -> None:
    """A whole output copied into a user's folder: its files match, the user's do not."""
    source = owned(p.parent / "elsewhere")
    _user_folder(p)
    for f in source.iterdir():
        (p / f.name).write_bytes(f.read_bytes())


def _broken_manifest(p: Path) -> None:
    owned(p)
    (p / OUTPUT_MANIFEST).write_text("{ not json")


def _other_owner(p: Path) -> None:
    owned(p, owner="python -m sdvar_lib.evaluate")


def _a_link_added(p: Path) -> None:
    owned(p)
    (p / "link").symlink_to(p.parent)


REFUSALS = {
    "user-folder": (_user_folder, "holds files that no workbench run wrote: mine.txt"),
    "note-added": (_owned_plus_note, "holds files its run did not write: notes.txt"),
    "subfolder-added": (_owned_plus_subfolder, "holds files its run did not write: analysis/nb.ipynb"),
    "empty-subfolder-added": (_owned_plus_empty_subfolder, "did not write: drafts/"),
    "file-edited": (_owned_file_edited, "b.txt changed since test wrote it"),
    "stray-legacy-marker": (_stray_legacy_marker, "older version of the workbench"),
    "manifest-copied-in": (_manifest_copied_in, "did not write: mine.txt"),
    "output-copied-in": (_output_copied_in, "did not write: mine.txt"),
    "broken-manifest": (_broken_manifest, "unreadable"),
    "other-command": (_other_owner, "holds the output of python -m sdvar_lib.evaluate, not of test"),
    "link-added": (_a_link_added, "did not write: link"),
}


@pytest.mark.parametrize("make, message", REFUSALS.values(), ids=REFUSALS.keys())
def test_a_folder_with_anything_its_run_did_not_write_is_never_replaced(tmp_path, make, message):
    out = tmp_path / "out"
    make(out)
    before = tree(tmp_path)
    with pytest.raises(OutputRefusedError, match="--out") as info:
        check_output_folder(out, owner="test")
    assert message in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(OutputRefusedError), atomic_folder(out, "test") as tmp:
        (tmp / "a.txt").write_text("new")
    assert tree(tmp_path) == before  # nothing changed, nothing left beside it


def test_a_deleted_output_file_loses_nothing_so_the_folder_may_be_replaced(tmp_path):
    out = owned(tmp_path / "out", **{"a.txt": "1", "b.txt": "1"})
    (out / "b.txt").unlink()
    assert check_output_folder(out, owner="test") == out
    owned(out, **{"c.txt": "3"})
    assert sorted(p.name for p in out.iterdir()) == [OUTPUT_MANIFEST, "c.txt"]


def test_a_file_added_while_the_run_works_stops_the_swap(tmp_path):
    out = owned(tmp_path / "out")
    with pytest.raises(OutputRefusedError, match="notes.txt"), atomic_folder(out, "test") as tmp:
        (tmp / "a.txt").write_text("new")
        (out / "notes.txt").write_text("written while the run worked")
    assert (out / "a.txt").read_text() == "1" and (out / "notes.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_the_current_folder_and_a_folder_holding_an_input_are_refused(tmp_path, monkeypatch):
    inner = tmp_path / "work" / "inner"
    inner.mkdir(parents=True)
    monkeypatch.chdir(inner)
    for path in (".", "..", str(tmp_path)):
        with pytest.raises(OutputRefusedError, match="is the current folder or holds it"):
            check_output_folder(path)
    with pytest.raises(OutputRefusedError, match="holds .*bundle.*an input of this command"):
        check_output_folder(tmp_path / "new", inputs=[tmp_path / "new" / "bundle"])
    out = owned(tmp_path / "out")
    (tmp_path / "link").symlink_to(out)
    with pytest.raises(OutputRefusedError, match="is a link"):
        check_output_folder(tmp_path / "link")


def test_record_output_files_keeps_a_rewritten_file_owned(tmp_path):
    out = owned(tmp_path / "out", **{"card.md": "old"})
    (out / "card.md").write_text("re-rendered")
    with pytest.raises(OutputRefusedError, match="changed"):
        check_output_folder(out, owner="test")
    assert record_output_files(out, ["card.md"], "test")
    assert check_output_folder(out, owner="test") == out
    assert not record_output_files(tmp_path, ["x"], "test")  # not an output: nothing recorded


def test_replacing_an_owned_folder_keeps_named_files_and_permissions(tmp_path):
    folder = tmp_path / "bundle"
    folder.mkdir()
    (folder / "weights.pth").write_text("old")
    (folder / "evaluation.json").write_text("kept")
    folder.chmod(0o755)
    with atomic_folder(folder, "train", marker=False, keep=("evaluation.json",), replace_unmarked=True) as tmp:
        (tmp / "weights.pth").write_text("new")
    assert (folder / "weights.pth").read_text() == "new" and (folder / "evaluation.json").read_text() == "kept"
    assert not (folder / OUTPUT_MANIFEST).exists() and stat.S_IMODE(folder.stat().st_mode) == 0o755


def test_a_failed_swap_puts_the_old_folder_back(tmp_path, monkeypatch):
    out = owned(tmp_path / "out", **{"a.txt": "old"})
    real = os.replace
    calls = {"n": 0}

    def flaky(src, dst):
        calls["n"] += 1
        if calls["n"] == 2:  # the rename of the new folder into place
            raise Interrupt
        return real(src, dst)

    monkeypatch.setattr(os, "replace", flaky)
    with pytest.raises(Interrupt), atomic_folder(out, "test") as tmp:
        (tmp / "a.txt").write_text("new")
    monkeypatch.setattr(os, "replace", real)
    assert (out / "a.txt").read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_writability_is_checked_without_creating_anything(tmp_path):
    target = tmp_path / "a" / "b"
    assert check_writable_dir(target) == target and not (tmp_path / "a").exists()
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="exists and is not a folder"):
        check_writable_dir(tmp_path / "file")
    with pytest.raises(ValueError, match="--out .* cannot be written: .* is not a writable folder"):
        check_writable_dir(tmp_path / "file" / "out", "--out")  # below a file: no folder can be made there
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if not os.access(locked, os.W_OK):  # (root may write anywhere: then only the case above applies)
            with pytest.raises(ValueError, match="cannot be written"):
                check_writable_dir(locked / "out", "--out")
    finally:
        locked.chmod(0o700)


# ---- files: never over an input or an existing file unasked -------------------------------------
def test_check_new_output(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    report = tmp_path / "bench.json"
    report.write_text("{}")
    (tmp_path / "old.png").write_bytes(b"png")
    (tmp_path / "link.png").symlink_to(report)
    os.link(report, tmp_path / "hard.json")
    (tmp_path / "sub").mkdir()
    assert check_new_output(tmp_path / "new.png", inputs=[report]) == tmp_path / "new.png"
    assert check_new_output("old.png", replace=True) == Path("old.png")
    refused = {
        ".": "is a folder",
        "": "is a folder",
        "sub": "is a folder",
        "bench.json/x.png": "exists and is not a folder",
        "old.png": "already exists; pass --replace",
    }
    for path, message in refused.items():
        with pytest.raises(OutputRefusedError, match=message):
            check_new_output(path, inputs=[report])
    for path in ("bench.json", "./sub/../bench.json", str(report), "link.png", "hard.json"):  # also with replace
        with pytest.raises(OutputRefusedError, match="same file as the input"):
            check_new_output(path, inputs=["bench.json"], replace=True)
    with pytest.raises(OutputRefusedError, match="pass --force"):
        check_new_output("old.png", replace_flag="--force")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bench.json", "hard.json", "link.png", "old.png", "sub"]


# ---- one run at a time --------------------------------------------------------------------------
@contextlib.contextmanager
def held_by_another_thread(path: Path, owner: str = "the other run") -> Iterator[None]:
    """``output_lock(path, owner)`` held by another thread (another run) while the block runs."""
    held, release = threading.Event(), threading.Event()

    def hold():
        with output_lock(path, owner):
            held.set()
            release.wait(60)

    thread = threading.Thread(target=hold)
    thread.start()
    try:
        assert held.wait(30)
        yield
    finally:
        release.set()
        thread.join()


def test_a_second_run_on_one_output_is_refused_until_the_first_ends(tmp_path):
    out = tmp_path / "out"
    with held_by_another_thread(out):
        with pytest.raises(OutputBusyError, match=rf"being written by another run: process {os.getpid()} .*the other run"):
            with output_lock(out, "me"):
                pass
        with pytest.raises(OutputBusyError), atomic_folder(out, "test") as tmp:
            (tmp / "a.txt").write_text("x")
        assert not out.exists()
    owned(out)  # free again
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # the lock file went with its run


def test_the_lock_is_reentrant_in_one_thread(tmp_path):
    out = tmp_path / "out"
    with output_lock(out, "cli") as lock:
        assert lock.name == ".out.lock" and json.loads(lock.read_text())["pid"] == os.getpid()
        owned(out)  # atomic_folder takes the same lock inside the command's
        assert lock.exists()
    assert not lock.exists()


def test_another_process_is_refused(tmp_path):
    out = tmp_path / "out"
    code = ("import sys, time; from sdvar_lib.util.atomic import output_lock\n"
            f"with output_lock({str(out)!r}, 'holder'):\n    print('held', flush=True); time.sleep(60)\n")
    holder = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE, text=True,
                              env=dict(os.environ, PYTHONPATH=str(REPO)))
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(OutputBusyError, match=rf"process {holder.pid} .*holder"):
            with output_lock(out, "me"):
                pass
    finally:
        holder.kill()
        holder.wait()
    with output_lock(out, "me"):  # the system released the killed holder's lock; its file is taken over
        pass


def test_a_lock_left_by_a_dead_process_is_taken_over_with_a_log_line(tmp_path, caplog):
    out = tmp_path / "out"
    pid = dead_pid()
    (tmp_path / ".out.lock").write_text(json.dumps(dict(pid=pid, host=socket.gethostname(), host_id=HOST,
                                                        owner="a killed run", since="earlier")))
    with caplog.at_level(logging.WARNING, logger="sdvar_lib.util.atomic"), output_lock(out, "me"):
        pass
    assert any("took over the lock" in r.message and f"process {pid}" in r.message for r in caplog.records)
    assert not (tmp_path / ".out.lock").exists()


def test_the_pid_file_lock_where_flock_is_missing(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(atomic, "fcntl", None)
    out = tmp_path / "out"
    with held_by_another_thread(out), pytest.raises(OutputBusyError, match="the other run"):
        with output_lock(out, "me"):
            pass
    (tmp_path / ".out.lock").write_text(json.dumps(dict(pid=dead_pid(), host="h", host_id=HOST, owner="killed",
                                                        since="earlier")))
    with caplog.at_level(logging.WARNING, logger="sdvar_lib.util.atomic"), output_lock(out, "me"):
        pass
    assert any("took over the lock" in r.message for r in caplog.records)


# ---- leftovers of killed runs -------------------------------------------------------------------
def test_leftovers_of_dead_runs_are_removed_and_nothing_else(tmp_path):
    out = owned(tmp_path / "out")
    dead, alive = dead_pid(), os.getppid()
    theirs = [f".out.tmp-{HOST}-{dead}-0123abcd", f".out.old-{HOST}-{dead}-89abcdef"]
    kept = [
        f".out.tmp-{HOST}-{alive}-0123abcd",  # a process that still runs (it may be writing)
        f".out.tmp-{'f' * 8 if HOST != 'f' * 8 else 'e' * 8}-{dead}-0123abcd",  # another host's
        ".out.tmp-notes",  # a user's names
        f".out.tmp-{HOST}-{dead}-0123abcd.bak",
        f".other.tmp-{HOST}-{dead}-0123abcd",  # another output's
    ]
    for i, name in enumerate(theirs + kept):
        p = tmp_path / name
        if i % 2:
            p.mkdir()
            (p / "half.png").write_text("half")
        else:
            p.write_text("half")
    before = tree(tmp_path)
    owned(out, **{"a.txt": "2"})
    after = tree(tmp_path)
    assert not [n for n in theirs if n in after]
    assert all(before[k] == after[k] for k in before if k.split("/")[0] in kept)
    assert (out / "a.txt").read_text() == "2"


def test_an_output_set_aside_by_a_killed_run_is_put_back(tmp_path, caplog):
    out = owned(tmp_path / "out", **{"a.txt": "old"})
    aside = tmp_path / f".out.old-{HOST}-{dead_pid()}-0123abcd"
    os.replace(out, aside)  # killed between its two renames: the old set is aside, nothing at out
    with caplog.at_level(logging.WARNING, logger="sdvar_lib.util.atomic"):
        assert clean_leftovers(out) == []
    assert (out / "a.txt").read_text() == "old" and not aside.exists()
    assert any("put back" in r.message for r in caplog.records)
    assert check_output_folder(out, owner="test") == out


def test_a_file_write_removes_its_own_dead_temporaries(tmp_path):
    stale = tmp_path / f".stats.json.tmp-{HOST}-{dead_pid()}-0123abcd"
    stale.write_text("half")
    foreign = tmp_path / ".stats.json.tmp-mine"
    foreign.write_text("a user's")
    atomic_write_text(tmp_path / "stats.json", "new")
    assert not stale.exists() and foreign.read_text() == "a user's"


# ---- OS failures name the path ------------------------------------------------------------------
@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EACCES])
def test_a_failed_file_write_names_the_output_and_keeps_the_old_file(tmp_path, monkeypatch, code):
    path = tmp_path / "stats.json"
    atomic_write_text(path, "old")

    def fsync(fd):
        raise OSError(code, os.strerror(code))  # as the kernel reports it: no path

    monkeypatch.setattr(os, "fsync", fsync)
    with pytest.raises(OSError) as info:
        atomic_write_text(path, "new")
    assert info.value.errno == code and info.value.filename == str(path)
    assert path.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["stats.json"]


def test_a_failed_folder_write_names_the_output_and_keeps_the_old_folder(tmp_path):
    out = owned(tmp_path / "out")
    before = tree(tmp_path)
    with pytest.raises(OSError) as info, atomic_folder(out, "test") as tmp:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp / "figure.png"))
    assert info.value.errno == errno.ENOSPC and info.value.filename == str(out / "figure.png")
    assert tree(tmp_path) == before
