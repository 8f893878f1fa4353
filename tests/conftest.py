"""Shared fixtures: the real engine (skipped outside CI when none answers), the lab, a fake one."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from lbsync.engine.client import DockerClient
from lbsync.engine.endpoint import resolve_endpoint
from tests.support.fake_engine import FakeEngine
from tests.support.haproxy import short_socket_dir
from tests.support.prerequisites import require_engine

if TYPE_CHECKING:
    from tests.support.lab import Lab


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    """A test that runs a Daemon in-process (a config reload calls setup_logging) must not
    leave lbsync's logger detached from pytest's capture (caplog) for the tests after it."""
    loggers = [logging.getLogger("lbsync"), logging.getLogger()]
    saved = [(lg, lg.handlers[:], lg.level, lg.propagate) for lg in loggers]
    yield
    for lg, handlers, level, propagate in saved:
        lg.handlers[:] = handlers
        lg.setLevel(level)
        lg.propagate = propagate
    logging.captureWarnings(False)


@pytest.fixture
def lab() -> Iterator[Lab]:
    """Starts lab containers for one test and removes every one of them, pass or fail."""
    from tests.support.lab import Lab

    require_engine()
    instance = Lab()
    try:
        yield instance
    finally:
        instance.cleanup()


@pytest.fixture
async def engine() -> AsyncIterator[DockerClient]:
    """Our client, connected to the real local engine."""
    require_engine()
    client = DockerClient(resolve_endpoint("unix:///var/run/docker.sock", {}))
    await client.connect()
    try:
        yield client
    finally:
        await client.close()


@pytest.fixture
async def fake_engine(tmp_path: Path) -> AsyncIterator[FakeEngine]:
    """A FAKE engine on a unix socket, for faults the real one won't produce on demand."""
    fake = FakeEngine(tmp_path / "fake-docker.sock")
    await fake.start()
    try:
        yield fake
    finally:
        await fake.stop()


@pytest.fixture
def fake_client(fake_engine: FakeEngine) -> DockerClient:
    return DockerClient(resolve_endpoint(f"unix://{fake_engine.socket_path}", {}))


@pytest.fixture
def sock_dir() -> Iterator[Path]:
    """A short folder for unix sockets (pytest's tmp_path is often too long for AF_UNIX)."""
    with short_socket_dir() as path:
        yield path
