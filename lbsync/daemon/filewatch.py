"""Wake the daemon when its config file or a template may have changed.

The daemon used to stat its files every second. On an idle 2-vCPU VM that cost 1.2 ms of CPU
a second, nearly all of it the wake-up itself, and it was the daemon's only activity when
nothing happens on the engine. inotify (Linux) says at once that something in a watched
directory moved; the caller then compares the files' stat as before. The stdlib has no
binding, so this calls libc's three functions through ctypes.

inotify is not everything: NFS, most FUSE filesystems and Docker Desktop's shares of the
host's folders send no events for changes made elsewhere. So the caller still polls, slowly,
and falls back to the fast poll when inotify cannot be had at all (not Linux, no free
instance).
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import logging
import os
import struct
from collections.abc import Iterable
from pathlib import Path

log = logging.getLogger("lbsync.filewatch")

# <sys/inotify.h>
IN_MODIFY = 0x00000002
IN_ATTRIB = 0x00000004
IN_CLOSE_WRITE = 0x00000008
IN_MOVED_FROM = 0x00000040
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_DELETE = 0x00000200
IN_DELETE_SELF = 0x00000400
IN_MOVE_SELF = 0x00000800
IN_IGNORED = 0x00008000
IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = os.O_CLOEXEC
#: struct inotify_event before its name: wd, mask, cookie, len.
EVENT_HEADER = struct.Struct("iIII")

#: Anything that can change what a path reads: written in place, replaced by a rename (editors
#: that save atomically, Kubernetes swapping the `..data` symlink of a ConfigMap volume),
#: created, removed, its mode or mtime set.
WATCH_MASK = (
    IN_MODIFY
    | IN_ATTRIB
    | IN_CLOSE_WRITE
    | IN_MOVED_FROM
    | IN_MOVED_TO
    | IN_CREATE
    | IN_DELETE
    | IN_DELETE_SELF
    | IN_MOVE_SELF
)


class Inotify:
    """One inotify instance watching some files and their directories, readable on an event.

    `watch()` replaces every watch: a file replaced by a rename is a new inode, so the caller
    watches again after each change. The events themselves are read and dropped: the caller
    decides what changed by comparing the files, which also covers filesystems without
    events.
    """

    def __init__(self) -> None:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            self._add = libc.inotify_add_watch
            self._rm = libc.inotify_rm_watch
            init = libc.inotify_init1
        except (OSError, AttributeError) as exc:
            raise OSError(errno.ENOSYS, f"inotify is not available: {exc}") from exc
        self._add.argtypes = (ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32)
        self._add.restype = ctypes.c_int
        self._rm.argtypes = (ctypes.c_int, ctypes.c_int)
        self._rm.restype = ctypes.c_int
        init.argtypes = (ctypes.c_int,)
        init.restype = ctypes.c_int
        fd = init(IN_NONBLOCK | IN_CLOEXEC)
        if fd < 0:
            code = ctypes.get_errno()
            raise OSError(code, f"inotify_init1: {os.strerror(code)}")
        self.fd: int = fd
        self._watches: list[int] = []

    def watch(self, paths: Iterable[Path]) -> list[Path]:
        """Watch these files and the directories holding them, instead of what was watched;
        returns the ones that could be watched (a missing file: its directory still is)."""
        for wd in self._watches:
            self._rm(self.fd, wd)  # fails for a watch the kernel dropped already: fine
        self._watches = []
        targets: dict[Path, None] = {}
        for path in paths:
            targets[path] = None
            targets[path.parent] = None
        watched = []
        for target in targets:
            wd = self._add(self.fd, os.fsencode(target), WATCH_MASK)
            if wd < 0:
                code = ctypes.get_errno()
                if code not in (errno.ENOENT, errno.ENOTDIR):
                    log.debug("cannot watch %s: %s", target, os.strerror(code))
                continue
            self._watches.append(wd)
            watched.append(target)
        return watched

    def drain(self) -> bool:
        """Read and drop the pending events; True if any says something moved (a watch the
        kernel or `watch()` removed says IN_IGNORED, and that is all it says)."""
        moved = False
        while True:
            try:
                data = os.read(self.fd, 65536)
            except BlockingIOError:
                return moved
            offset = 0
            while offset + EVENT_HEADER.size <= len(data):
                _wd, mask, _cookie, name_len = EVENT_HEADER.unpack_from(data, offset)
                offset += EVENT_HEADER.size + name_len
                moved = moved or mask != IN_IGNORED

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class ChangeSignal:
    """An asyncio.Event set whenever the inotify instance has events (its fd on the loop)."""

    def __init__(self, inotify: Inotify) -> None:
        self.inotify = inotify
        self.event = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(inotify.fd, self._readable)

    def _readable(self) -> None:
        if self.inotify.drain():
            self.event.set()

    def close(self) -> None:
        self._loop.remove_reader(self.inotify.fd)
        self.inotify.close()


def open_change_signal() -> ChangeSignal | None:
    """inotify on the running loop, or None where there is none (the caller polls fast)."""
    try:
        return ChangeSignal(Inotify())
    except OSError as exc:
        log.info("watching the config file by polling: %s", exc)
        return None
