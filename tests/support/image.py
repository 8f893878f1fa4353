"""The lbsync container image for tests: built once per test session by
``deploy/build-image.sh`` from the lab's Python base (a cached build of a few seconds with
unchanged sources), and the folders and group a container user of it needs."""

from __future__ import annotations

import functools
import os
import subprocess
from pathlib import Path

import pytest

from tests.support.lab import DOCKER, DOCKER_SOCKET, images_available
from tests.support.prerequisites import IN_CI, require_engine

REPO_ROOT = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO_ROOT / "deploy" / "build-image.sh"
IMAGE = os.environ.get("LBSYNC_TEST_IMAGE", "lbsync:dev")
BASE_IMAGE = "lbsync-lab/python-base:latest"
BUILD_TIMEOUT = 540.0


def _image_exists(image: str) -> bool:
    proc = subprocess.run(
        [DOCKER, "image", "inspect", "--format", "{{.Id}}", image],
        capture_output=True,
        text=True,
        check=False,
    )
    return proc.returncode == 0


def require_image_prerequisites() -> None:
    """The engine, the lab images and the Python base; a skip outside CI, a failure in CI."""
    require_engine()
    missing = [
        what
        for what, present in (
            ("the lab images (bash lab/lab.sh images)", images_available()),
            (f"{BASE_IMAGE} (bash lab/lab.sh python-base)", _image_exists(BASE_IMAGE)),
        )
        if not present
    ]
    if not missing:
        return
    message = "missing " + " and ".join(missing)
    if IN_CI:
        pytest.fail(f"CI=true but {message}")
    pytest.skip(message)


@functools.cache
def _build() -> tuple[str, str]:
    """(image id, "") after a build, or ("", why) when it failed; runs once per session."""
    env = dict(os.environ, LBSYNC_IMAGE=IMAGE, LBSYNC_BASE_IMAGE=BASE_IMAGE)
    try:
        proc = subprocess.run(
            ["bash", str(BUILD_SCRIPT)],
            capture_output=True,
            text=True,
            env=env,
            timeout=BUILD_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return "", f"{BUILD_SCRIPT} took more than {BUILD_TIMEOUT:g}s"
    if proc.returncode != 0:
        return "", f"{BUILD_SCRIPT} exited {proc.returncode}:\n{proc.stderr[-4000:]}"
    return proc.stdout.strip().splitlines()[-1], ""


def lbsync_image() -> str:
    """The tag of a fresh lbsync image (built, or reused from the layer cache)."""
    require_image_prerequisites()
    image_id, problem = _build()
    if problem:
        pytest.fail(problem)
    assert image_id.startswith("sha256:"), image_id
    return IMAGE


def docker_socket_gid() -> int:
    return os.stat(DOCKER_SOCKET).st_gid


def shared_dir(path: Path, mode: int = 0o755) -> Path:
    """A folder a container user other than ours can use (pytest makes them 0700)."""
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(mode)
    return path
