"""Atomic replacement of an output file (SPEC §5.4).

The temp file lives in the output's own directory (a rename never crosses a filesystem) and
its name never matches `*.conf` or `*.cfg`, so a proxy that includes `conf.d/*.conf` never
reads a half-written file. The proxy must mount the directory: a bind-mounted single file
keeps its old inode and would never see the rename.
"""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path

DEFAULT_MODE = 0o644


class WriteError(Exception):
    """The output could not be replaced; the old file is untouched."""


def read_current(path: Path) -> bytes | None:
    """The bytes on disk now, or None when there is no file (or it cannot be read)."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise WriteError(f"cannot read {path}: {exc.strerror or exc}") from exc


def temp_name(path: Path) -> Path:
    """`.lbsync.conf.lbsync-tmp` beside `lbsync.conf`: hidden, and no proxy glob matches it."""
    return path.with_name(f".{path.name}.lbsync-tmp")


def write_atomic(path: Path, data: bytes) -> None:
    """Write `data` to a temp file, fsync it, rename it over `path`, fsync the directory."""
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        mode = DEFAULT_MODE
    except OSError as exc:
        raise WriteError(f"cannot stat {path}: {exc.strerror or exc}") from exc
    tmp = temp_name(path)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
        try:
            os.fchmod(fd, mode)  # O_CREAT's mode is filtered by the umask; we want the old one
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise WriteError(f"cannot write {path}: {exc.strerror or exc}") from exc
    _fsync_dir(path.parent)


def restore(path: Path, previous: bytes | None) -> None:
    """Put back what was there before a write: the old bytes, or no file at all."""
    if previous is None:
        try:
            path.unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise WriteError(f"cannot remove {path}: {exc.strerror or exc}") from exc
        _fsync_dir(path.parent)
        return
    write_atomic(path, previous)


def _fsync_dir(directory: Path) -> None:
    # The rename is durable only once the directory entry is; some filesystems refuse it.
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
