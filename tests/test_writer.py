"""Atomic writes: names, modes, restore, and failures that leave the old file intact."""

from __future__ import annotations

import fnmatch
import os
import stat
from pathlib import Path

import pytest

from lbsync.writer import WriteError, read_current, restore, temp_name, write_atomic


def test_new_file_gets_0644(tmp_path: Path) -> None:
    out = tmp_path / "lbsync.conf"
    old_umask = os.umask(0o077)
    try:
        write_atomic(out, b"one\n")
    finally:
        os.umask(old_umask)
    assert out.read_bytes() == b"one\n"
    assert stat.S_IMODE(out.stat().st_mode) == 0o644


def test_replacement_keeps_the_old_mode_and_changes_inode(tmp_path: Path) -> None:
    out = tmp_path / "lbsync.conf"
    out.write_bytes(b"old\n")
    out.chmod(0o640)
    inode = out.stat().st_ino
    write_atomic(out, b"new\n")
    assert out.read_bytes() == b"new\n"
    assert stat.S_IMODE(out.stat().st_mode) == 0o640
    assert out.stat().st_ino != inode  # a rename, never an in-place rewrite


@pytest.mark.parametrize("name", ["lbsync.conf", "haproxy.cfg", "x.conf"])
def test_temp_name_never_matches_proxy_globs(name: str) -> None:
    tmp = temp_name(Path("/etc/nginx/conf.d") / name)
    assert tmp.parent == Path("/etc/nginx/conf.d")
    for pattern in ("*.conf", "*.cfg"):
        assert not fnmatch.fnmatch(tmp.name, pattern)


def test_no_temp_file_left_behind(tmp_path: Path) -> None:
    write_atomic(tmp_path / "a.conf", b"x")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.conf"]


def test_missing_directory_is_a_write_error(tmp_path: Path) -> None:
    with pytest.raises(WriteError, match=r"cannot write .*missing"):
        write_atomic(tmp_path / "missing" / "a.conf", b"x")


def test_restore_puts_back_bytes_or_absence(tmp_path: Path) -> None:
    out = tmp_path / "a.conf"
    write_atomic(out, b"bad")
    restore(out, b"good")
    assert out.read_bytes() == b"good"
    restore(out, None)
    assert not out.exists()
    restore(out, None)  # idempotent


def test_read_current(tmp_path: Path) -> None:
    assert read_current(tmp_path / "none.conf") is None
    (tmp_path / "a.conf").write_bytes(b"abc")
    assert read_current(tmp_path / "a.conf") == b"abc"
    with pytest.raises(WriteError, match="cannot read"):
        read_current(tmp_path)  # a directory
