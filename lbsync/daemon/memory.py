"""Memory settings for the long-running daemon: glibc's allocator, the cycle collector.

glibc (elsewhere nothing happens) serves a block of 128 KiB or more from its own mapping,
returned to the system when it is freed, but it raises that threshold to the size of the
largest such block freed so far. After the first pass, then, every copy of the rendered file
(0.7 MB at 1,000 containers, a few per pass) is carved out of the main heap, among small
objects that outlive it and keep the space from ever going back: 4-5 MB of the daemon's
resident memory at 1,000 containers (bench_rss). A fixed threshold keeps those blocks in their
own mappings.

The cycle collector: see `freeze_startup_objects`.
"""

from __future__ import annotations

import ctypes
import gc
import logging
import os

log = logging.getLogger("lbsync.memory")

#: mallopt's parameter number for the mmap threshold (malloc.h), and the value to fix it at:
#: glibc's own initial threshold.
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 128 * 1024


def is_glibc() -> bool:
    try:
        return bool(os.confstr("CS_GNU_LIBC_VERSION"))
    except (ValueError, OSError):  # not glibc (musl, macOS): the name is unknown there
        return False


def operator_chose_threshold() -> bool:
    """The environment already sets the threshold (and so glibc does not adjust it)."""
    return "MALLOC_MMAP_THRESHOLD_" in os.environ or "glibc.malloc.mmap_threshold" in (
        os.environ.get("GLIBC_TUNABLES", "")
    )


def fix_mmap_threshold() -> bool:
    """Stop glibc from raising its mmap threshold; True when it was set here."""
    if not is_glibc() or operator_chose_threshold():
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError) as exc:
        log.debug("mallopt unavailable: %s", exc)
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD))


def freeze_startup_objects() -> int:
    """Move every object alive now (modules, classes, functions, compiled templates: about
    46,000 after lbsync's imports) out of the cycle collector's sight; how many were moved.

    They live as long as the process, yet each full collection walked them all again: 10-13 ms
    of CPU on a 2-vCPU VM, whenever enough containers came and went. Called once the config
    and templates are loaded, before anything about containers is held.
    """
    gc.freeze()
    return gc.get_freeze_count()
