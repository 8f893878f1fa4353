"""lbsync.memory: glibc's mmap threshold stays fixed, so big freed blocks leave the heap."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from lbsync.daemon import memory

# Frees a 4 MiB block (glibc would raise its threshold to that), then allocates 512 KiB and
# says whether that block lies inside the main heap ([heap] in /proc/self/maps).
PROBE = textwrap.dedent(
    """
    import sys
    from lbsync.daemon.memory import fix_mmap_threshold
    if sys.argv[1] == "fixed":
        assert fix_mmap_threshold()
    big = bytes(4 * 1024 * 1024)
    del big
    block = bytes(512 * 1024)
    address = id(block)  # CPython: a bytes object is one block, header and data
    for line in open("/proc/self/maps"):
        if line.rstrip().endswith("[heap]"):
            low, high = (int(part, 16) for part in line.split()[0].split("-"))
            if low <= address < high:
                print("heap")
                break
    else:
        print("own mapping")
    """
)


def probe(mode: str) -> str:
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": ":".join(sys.path)}
    result = subprocess.run(
        [sys.executable, "-c", PROBE, mode], capture_output=True, text=True, env=env, check=True
    )
    return result.stdout.strip()


@pytest.mark.skipif(not memory.is_glibc(), reason="glibc's allocator only")
def test_a_big_block_after_a_bigger_one_was_freed_gets_its_own_mapping() -> None:
    assert probe("default") == "heap"  # what glibc does by itself: the probe can tell
    assert probe("fixed") == "own mapping"


def test_the_operators_setting_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "65536")
    assert not memory.fix_mmap_threshold()
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_")
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.mmap_threshold=65536")
    assert not memory.fix_mmap_threshold()


def test_startup_objects_leave_the_collectors_sight() -> None:
    """In a fresh interpreter, as `lbsync run` does it after loading its config."""
    script = textwrap.dedent(
        """
        import gc
        import lbsync.cli.commands, lbsync.daemon.daemon, lbsync.web.server
        from lbsync.daemon import memory
        moved = memory.freeze_startup_objects()
        left = len(gc.get_objects())
        print(moved, left)
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    ).stdout
    moved, left = map(int, out.split())
    assert moved > 20_000  # lbsync's imports alone
    assert left < 1_000  # what a full collection still walks
