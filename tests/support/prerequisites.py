"""What a test needs from the machine (a program from apt, a Docker engine): a skip when it is
missing, but a failure under CI=true, where the lab provides everything."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require_binary(name: str, package: str) -> str:
    """A program from apt (nginx, haproxy): skipped without it, but a failure under CI=true."""
    found = shutil.which(name) or (
        f"/usr/sbin/{name}" if Path(f"/usr/sbin/{name}").exists() else None
    )
    if found is not None:
        return found
    if IN_CI:
        pytest.fail(f"CI=true but {name} is not installed (apt-get install {package})")
    pytest.skip(f"{name} is not installed")


def require_engine() -> None:
    """Under CI a missing engine is a failure, never a skip."""
    from tests.support.lab import engine_available

    if engine_available():
        return
    if IN_CI:
        pytest.fail("CI=true but no Docker engine answers on /var/run/docker.sock (lab/lab.sh up)")
    pytest.skip("no Docker engine answers on /var/run/docker.sock; run `bash lab/lab.sh up`")
