"""Atomic outputs: a file or a folder is the old complete one or the new complete one, never a mix."""

from __future__ import annotations

import os
import stat

import pytest

from sdvar_lib.util.atomic import (
    OUTPUT_MARKER,
    atomic_folder,
    atomic_write_text,
    check_output_folder,
    check_writable_dir,
)


class Interrupt(BaseException):
    """Stands in for KeyboardInterrupt (a BaseException, like SIGINT's)."""


def test_a_file_is_replaced_whole_or_not_at_all(tmp_path):
    path = tmp_path / "stats.json"
    atomic_write_text(path, "old")

    def failing(tmp):
        tmp.write_text("half")
        raise Interrupt

    from sdvar_lib.util.atomic import atomic_write_with

    with pytest.raises(Interrupt):
        atomic_write_with(path, failing)
    assert path.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["stats.json"]
    atomic_write_text(path, "new")
    assert path.read_text() == "new"


def test_a_folder_is_replaced_as_one_set(tmp_path):
    out = tmp_path / "out"
    with atomic_folder(out, "test") as tmp:
        (tmp / "a.txt").write_text("1")
        (tmp / "b.txt").write_text("1")
    assert (out / OUTPUT_MARKER).read_text() == "written by test\n"
    with pytest.raises(Interrupt), atomic_folder(out, "test") as tmp:
        (tmp / "a.txt").write_text("2")
        raise Interrupt  # interrupted half way: the old set stays
    assert (out / "a.txt").read_text() == "1" and (out / "b.txt").read_text() == "1"
    with atomic_folder(out, "test") as tmp:
        (tmp / "a.txt").write_text("3")
    assert (out / "a.txt").read_text() == "3" and not (out / "b.txt").exists()  # the new set, nothing of the old
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temporaries left beside it


def test_a_folder_with_foreign_files_is_never_replaced(tmp_path):
    (tmp_path / "mine.txt").write_text("keep me")
    with pytest.raises(ValueError, match="holds files that no workbench run wrote"):
        check_output_folder(tmp_path)
    with pytest.raises(ValueError), atomic_folder(tmp_path, "test"):
        pass
    assert (tmp_path / "mine.txt").read_text() == "keep me"


def test_replacing_an_owned_folder_keeps_named_files_and_permissions(tmp_path):
    folder = tmp_path / "bundle"
    folder.mkdir()
    (folder / "weights.pth").write_text("old")
    (folder / "evaluation.json").write_text("kept")
    folder.chmod(0o755)
    with atomic_folder(folder, "train", marker=False, keep=("evaluation.json",), replace_unmarked=True) as tmp:
        (tmp / "weights.pth").write_text("new")
    assert (folder / "weights.pth").read_text() == "new" and (folder / "evaluation.json").read_text() == "kept"
    assert not (folder / OUTPUT_MARKER).exists() and stat.S_IMODE(folder.stat().st_mode) == 0o755


def test_a_failed_swap_puts_the_old_folder_back(tmp_path, monkeypatch):
    out = tmp_path / "out"
    with atomic_folder(out, "test") as tmp:
        (tmp / "a.txt").write_text("old")
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
    assert (out / "a.txt").read_text() == "old"


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
