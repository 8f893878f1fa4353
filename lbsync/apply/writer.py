"""Atomic replacement of an output file (SPEC §5.4).

The temp file lives in the output's own directory (a rename never crosses a filesystem) and
its name never matches `*.conf` or `*.cfg`, so a proxy that includes `conf.d/*.conf` never
reads a half-written file. Its name is random and it is created exclusively: a file or
symlink someone planted in the directory is never opened, followed or re-moded. The proxy
must mount the directory: a bind-mounted single file keeps its old inode and would never see
the rename.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from pathlib import Path

DEFAULT_MODE = 0o644
TEMP_SUFFIX = ".lbsync-tmp"


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


def create_temp(path: Path) -> tuple[int, Path]:
    """A new, empty temp file beside `path`: `.lbsync.conf.<random>.lbsync-tmp`, open for writing.

    mkstemp picks a random name and creates it with O_CREAT|O_EXCL|O_NOFOLLOW (mode 0600),
    retrying on a taken name: whatever someone planted in the directory (a symlink to a file
    of theirs, or to one they want created) is never opened. Hidden, and it ends in
    `.lbsync-tmp`, so no proxy glob (`*.conf`, `*.cfg`) matches it.
    """
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMP_SUFFIX)
    return fd, Path(name)


def write_atomic(path: Path, data: bytes) -> None:
    """Write `data` to a temp file, fsync it, rename it over `path`, fsync the directory."""
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        mode = DEFAULT_MODE
    except OSError as exc:
        raise WriteError(f"cannot stat {path}: {exc.strerror or exc}") from exc
    try:
        fd, tmp = create_temp(path)
    except OSError as exc:
        raise WriteError(f"cannot write {path}: {exc.strerror or exc}") from exc
    renamed = False
    try:
        try:
            os.fchmod(fd, mode)  # mkstemp creates it 0600; we want the replaced file's mode
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        renamed = True
    except OSError as exc:
        raise WriteError(f"cannot write {path}: {exc.strerror or exc}") from exc
    finally:
        if not renamed:  # whatever failed: leave nothing beside the output
            with contextlib.suppress(OSError):
                tmp.unlink()
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
