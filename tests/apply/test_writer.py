"""Atomic writes: names, modes, restore, and failures that leave the old file intact."""

from __future__ import annotations

import errno
import fnmatch
import os
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from lbsync.apply.writer import WriteError, create_temp, read_current, restore, write_atomic


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


@pytest.mark.parametrize("name", ["lbsync.conf", "haproxy.cfg", "x.conf", "a.cfg.conf", "conf"])
def test_temp_names_are_random_hidden_and_match_no_proxy_glob(tmp_path: Path, name: str) -> None:
    names = set()
    for _ in range(20):
        fd, tmp = create_temp(tmp_path / name)
        os.close(fd)
        assert tmp.parent == tmp_path
        assert tmp.name.startswith(f".{name}.") and tmp.name.endswith(".lbsync-tmp")
        for pattern in ("*.conf", "*.cfg", "*.conf.j2"):
            assert not fnmatch.fnmatch(tmp.name, pattern), (tmp.name, pattern)
        assert stat.S_IMODE(tmp.lstat().st_mode) == 0o600  # nobody reads it half-written
        names.add(tmp.name)
    assert len(names) == 20  # unpredictable: a new name every time


def plant_symlinks(directory: Path, output: str, victim: Path) -> list[Path]:
    """Symlinks to `victim` at every name an attacker could predict for `output`'s temp file."""
    planted = [
        directory / f".{output}.lbsync-tmp",  # the fixed name lbsync used before
        directory / f".{output}.tmp",
        directory / f"{output}.tmp",
        directory / f".{output}.planted.lbsync-tmp",  # fed to mkstemp below
    ]
    for link in planted:
        link.symlink_to(victim)
    return planted


@pytest.fixture
def guessed_names(monkeypatch: pytest.MonkeyPatch) -> None:
    """mkstemp's random names, as if an attacker had guessed the first one ("planted")."""

    def names() -> Iterator[str]:
        yield "planted"
        yield "fresh"

    monkeypatch.setattr(tempfile, "_get_candidate_names", names)


@pytest.mark.parametrize("existing_output", [False, True])
def test_a_planted_symlink_to_a_file_is_never_followed(
    tmp_path: Path, guessed_names: None, existing_output: bool
) -> None:
    victim = tmp_path / "victim" / "shadow"
    victim.parent.mkdir()
    victim.write_bytes(b"root:secret\n")
    victim.chmod(0o600)
    out_dir = tmp_path / "conf.d"
    out_dir.mkdir()
    out = out_dir / "lbsync.conf"
    if existing_output:
        out.write_bytes(b"old\n")
        out.chmod(0o640)
    planted = plant_symlinks(out_dir, out.name, victim)

    write_atomic(out, b"new\n")

    assert victim.read_bytes() == b"root:secret\n"
    assert stat.S_IMODE(victim.stat().st_mode) == 0o600
    assert out.read_bytes() == b"new\n"
    assert not out.is_symlink()
    assert stat.S_IMODE(out.stat().st_mode) == (0o640 if existing_output else 0o644)
    assert all(link.is_symlink() and link.resolve() == victim for link in planted)
    names = sorted(p.name for p in out_dir.iterdir())
    assert names == sorted([out.name, *(link.name for link in planted)])


def test_a_planted_dangling_symlink_creates_nothing(tmp_path: Path, guessed_names: None) -> None:
    wanted = tmp_path / "cron.d" / "evil"  # a file the attacker wants created
    wanted.parent.mkdir()
    out_dir = tmp_path / "conf.d"
    out_dir.mkdir()
    out = out_dir / "lbsync.conf"
    plant_symlinks(out_dir, out.name, wanted)

    write_atomic(out, b"new\n")

    assert out.read_bytes() == b"new\n"
    assert not wanted.exists()
    assert list(wanted.parent.iterdir()) == []


def test_no_temp_file_left_behind(tmp_path: Path) -> None:
    write_atomic(tmp_path / "a.conf", b"x")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.conf"]


def test_missing_directory_is_a_write_error(tmp_path: Path) -> None:
    with pytest.raises(WriteError, match=r"cannot write .*missing"):
        write_atomic(tmp_path / "missing" / "a.conf", b"x")


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".lbsync-tmp"))


def test_a_failed_rename_leaves_no_temp_file(tmp_path: Path) -> None:
    out = tmp_path / "a.conf"
    out.mkdir()  # os.replace cannot put a file over a directory
    (out / "keep").write_bytes(b"k")
    with pytest.raises(WriteError, match=r"cannot write .*a\.conf"):
        write_atomic(out, b"x")
    assert leftovers(tmp_path) == []
    assert (out / "keep").read_bytes() == b"k"


@pytest.mark.parametrize("failing", ["fsync", "write", "fchmod"])
def test_a_failed_write_leaves_no_temp_file_and_the_old_bytes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failing: str
) -> None:
    out = tmp_path / "a.conf"
    out.write_bytes(b"old\n")

    def broken(*args: object) -> None:
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(os, failing, broken)
    with pytest.raises(WriteError, match="Input/output error"):
        write_atomic(out, b"new\n")
    monkeypatch.undo()
    assert out.read_bytes() == b"old\n"
    assert leftovers(tmp_path) == []


def test_an_unexpected_error_leaves_no_temp_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def interrupted(*args: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "fsync", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_atomic(tmp_path / "a.conf", b"x")
    monkeypatch.undo()
    assert leftovers(tmp_path) == []


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
