"""The output directory read-only or full, and SIGTERM in the middle of a pass.

The old file must stay intact, the error must show in the log, the metrics and /healthz, and
the next change must retry; a pass cut by SIGTERM finishes (or rolls back) before exit 0.
"""

from __future__ import annotations

import errno
import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.support.harness import LbsyncHarness
from tests.support.lab import Lab

pytestmark = pytest.mark.engine


@contextmanager
def tmpfs(path: Path, size: str = "256k") -> Iterator[None]:
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True)
    try:
        yield
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(directory: Path) -> Path:
    """Write a filler file until the filesystem is full; returns it."""
    filler = directory / "filler.bin"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError as exc:
        assert exc.errno == errno.ENOSPC
    finally:
        os.close(fd)
    return filler


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if "lbsync-tmp" in p.name)


def test_full_output_directory_keeps_the_old_file(lab: Lab, tmp_path: Path) -> None:
    h = LbsyncHarness(lab, tmp_path)
    with tmpfs(h.conf_dir), h:
        one = h.backend("one", host="full.test")
        h.wait_until_routes("full.test", {one.name})
        good = h.output_bytes()
        errors_before = h.metric("lbsync_writes_total", result="error")
        filler = fill(h.conf_dir)

        two = h.backend("two", host="full.test", labels={"lbsync.web.host": "x" * 60 + ".test"})
        h.poll(
            lambda: h.metric("lbsync_writes_total", result="error") > errors_before,
            10,
            "a failed write counted in /metrics",
        )
        assert h.output_bytes() == good
        assert leftovers(h.conf_dir) == []
        status, body = h.healthz()
        assert status == 503 and "write failed" in body
        assert "No space left" in h.log_text()
        h.wait_until_routes("full.test", {one.name})  # nginx still serves the last good file

        filler.unlink()
        three = h.backend("three", host="full.test")  # the next change retries
        h.wait_until_routes("full.test", {one.name, two.name, three.name})
        h.poll(lambda: h.healthz()[0] == 200, 10, "/healthz back to 200")


def test_read_only_output_directory_keeps_the_old_file(lab: Lab, tmp_path: Path) -> None:
    h = LbsyncHarness(lab, tmp_path)
    with tmpfs(h.conf_dir), h:
        one = h.backend("one", host="ro.test")
        h.wait_until_routes("ro.test", {one.name})
        good = h.output_bytes()
        subprocess.run(["mount", "-o", "remount,ro", str(h.conf_dir)], check=True)
        try:
            two = h.backend("two", host="ro.test")
            h.poll(lambda: h.healthz()[0] == 503, 10, "/healthz reports the failed write")
            assert "write failed" in h.healthz()[1]
            assert "Read-only file system" in h.log_text()
            assert h.output_bytes() == good
        finally:
            subprocess.run(["mount", "-o", "remount,rw", str(h.conf_dir)], check=True)
        three = h.backend("three", host="ro.test")  # the next change retries
        h.poll(lambda: f":{three.port} " in h.output_text(), 10, "the next change is written")
        h.wait_until_routes("ro.test", {one.name, two.name, three.name})
        h.poll(lambda: h.healthz()[0] == 200, 10, "/healthz back to 200")


def _slow_check(tmp_path: Path, fail_on: str) -> list[str]:
    """A local check that takes 1.5 s and refuses files mentioning `fail_on`."""
    script = tmp_path / "check.sh"
    script.write_text(f"#!/bin/sh\nsleep 1.5\n! grep -q '{fail_on}' \"$1\"\n")
    script.chmod(0o755)
    return [str(script), str(tmp_path / "conf.d" / "lbsync.conf")]


@pytest.mark.parametrize(
    ("host", "kept"),
    [
        pytest.param("finish.test", True, id="check-passes-write-finishes"),
        pytest.param("rollback.test", False, id="check-fails-write-rolls-back"),
    ],
)
def test_sigterm_during_a_pass(lab: Lab, tmp_path: Path, host: str, kept: bool) -> None:
    target = {
        "check": "command",
        "check_command": _slow_check(tmp_path, "rollback.test"),
        "reload": "command",
        "reload_command": ["true"],
    }
    h = LbsyncHarness(lab, tmp_path, target=target, nginx=False)
    with h:
        before = h.output_bytes()
        assert before is not None
        h.backend("late", host=host)
        # The new file is in place and its check is running: now stop lbsync.
        h.poll(lambda: host in h.output_text(), 10, "the pass wrote the new file")
        code = h.stop(expect_code=0, timeout=15)  # SIGTERM, while the check still runs
        assert code == 0
        log = h.log_text()
        assert "finishing the pass in progress" in log
        assert "Traceback" not in log
        assert leftovers(h.conf_dir) == []
        if kept:
            assert host in h.output_text()
        else:
            assert h.output_bytes() == before  # rolled back byte for byte
