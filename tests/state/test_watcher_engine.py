"""The watcher against the REAL engine of the lab: what a start and a stop cost in inspects.

`docker start` of a created container sends `network connect` and `start`: one inspect.
`docker stop` sends `kill`, `die`, `network disconnect`, `stop`: none, and the registry then
holds exactly what an inspect answers. A health check's `health_status` events cost none
either. Inspects of other containers (other tests share the engine) are not counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from lbsync.engine.client import DockerClient
from lbsync.engine.container import Container
from lbsync.engine.events import Event
from lbsync.engine.inspect import container_from_inspect
from lbsync.state.change import Change
from lbsync.state.registry import Registry
from lbsync.state.watcher import Watcher
from tests.support.lab import BACKEND_IMAGE, TEST_LABEL, Lab, bulky_labels, docker, free_port

pytestmark = pytest.mark.engine

DEADLINE = 15.0  # seconds for one expected state (the health check runs every second)


class Followed:
    """A running watcher, the events it saw and the containers it inspected."""

    def __init__(self, client: DockerClient) -> None:
        self.client = client
        self.registry = Registry()
        self.changes: list[Change] = []
        self.seen: list[Event] = []
        self.inspected: list[str] = []
        self.watcher = Watcher(
            client, self.registry, self.changes.append, resync=0, on_event=self.seen.append
        )
        inspect = client.inspect_container
        self.inspect_uncounted = inspect

        async def counted(container_id: str) -> dict[str, Any]:
            self.inspected.append(container_id)
            return await inspect(container_id)

        setattr(client, "inspect_container", counted)  # noqa: B010

    async def until(self, what: str, predicate: Callable[[], bool]) -> None:
        """Wait for `predicate`, then for the inspects it left running to be applied."""
        try:
            async with asyncio.timeout(DEADLINE):
                while not predicate():
                    await asyncio.sleep(0.01)
        except TimeoutError:
            actions = [e.action for e in self.seen if not e.base_action.startswith("exec_")]
            raise AssertionError(f"{what}: not within {DEADLINE:g} s; events {actions}") from None
        await self.watcher.updater.drain()

    def saw(self, cid: str, action: str) -> bool:
        return any(
            e.action == action and cid in (e.actor_id, e.attributes.get("container"))
            for e in self.seen
        )

    def state(self, cid: str) -> Container | None:
        return self.registry.raw(cid)


@pytest.fixture
async def followed(engine: DockerClient) -> AsyncIterator[Followed]:
    followed = Followed(engine)
    task = asyncio.create_task(followed.watcher.run())
    try:
        async with asyncio.timeout(60):  # lists (and inspects) every container on the engine
            await followed.watcher.listed.wait()
        yield followed
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        delattr(engine, "inspect_container")


async def test_start_costs_one_inspect_and_stop_none(lab: Lab, followed: Followed) -> None:
    port = free_port()
    name = f"lbsync-test-{secrets.token_hex(4)}"
    cid = await asyncio.to_thread(
        docker,
        "create",
        "--network",
        "host",
        "--label",
        f"{TEST_LABEL}=1",
        "--name",
        name,
        "--env",
        f"PORT={port}",
        "--env",
        f"NAME={name}",
        "--health-cmd",
        f"wget -q -O /dev/null http://127.0.0.1:{port}/",
        "--health-interval",
        "1s",
        BACKEND_IMAGE,
    )
    lab.ids.append(cid)  # removed by id at the end, pass or fail

    def state_is(state: str, health: str | None = None) -> Callable[[], bool]:
        def check() -> bool:
            c = followed.state(cid)
            return c is not None and c.state == state and health in (None, c.health)

        return check

    await followed.until("created", state_is("created"))
    before = followed.inspected.count(cid)

    # Start: `network connect` (not inspected: created), `start` (inspected).
    await asyncio.to_thread(docker, "start", cid)
    await followed.until("started", lambda: followed.saw(cid, "start"))
    assert followed.saw(cid, "connect")
    assert state_is("running")()
    started = followed.inspected.count(cid) - before
    assert started == 1

    # The health check passes: `health_status: healthy` sets it, no inspect.
    await followed.until("healthy", state_is("running", "healthy"))
    assert followed.inspected.count(cid) - before == 1
    serving = len(followed.changes)

    # Stop: `kill` (out of the pool at once), `die` (exited), `disconnect`, `stop`: no inspect.
    await asyncio.to_thread(lab.stop, cid, 5)
    await followed.until("stopped", lambda: followed.saw(cid, "stop"))
    assert followed.saw(cid, "die") and followed.saw(cid, "disconnect")
    stopped = followed.inspected.count(cid) - before - started
    assert stopped == 0
    assert any(c.urgent for c in followed.changes[serving:])
    stored = followed.state(cid)
    assert stored is not None and (stored.state, stored.health) == ("exited", "unhealthy")
    # What the events said is what an inspect answers.
    assert stored == container_from_inspect(await followed.inspect_uncounted(cid))
    print(f"\ninspects of the container: start {started}, stop {stopped}")


async def test_an_oversized_event_is_answered_with_an_inspect(lab: Lab, followed: Followed) -> None:
    """~600 KB of labels make each event of the container ~600 KB long (the engine copies
    every label into it): each is skipped, and the container it names inspected instead. The
    stream goes on: a container started next is followed from its own event (resync is off)."""

    def running(cid: str) -> Callable[[], bool]:
        return lambda: (c := followed.state(cid)) is not None and c.state == "running"

    bulky = await asyncio.to_thread(lab.run_backend, free_port(), labels=bulky_labels())
    await followed.until("the bulky container running", running(bulky))
    skipped = [e for e in followed.seen if e.actor_id == bulky]
    assert skipped and all(e.oversized > 600_000 for e in skipped)
    assert followed.inspected.count(bulky) >= 1
    stored = followed.state(bulky)
    assert stored is not None and stored.labels.keys() >= bulky_labels().keys()

    plain = await asyncio.to_thread(lab.run_backend, free_port())
    await followed.until("the next container running", running(plain))
    assert followed.saw(plain, "start")

    await asyncio.to_thread(lab.stop, bulky, 5)
    await followed.until(
        "the bulky container exited",
        lambda: (c := followed.state(bulky)) is not None and c.state == "exited",
    )
    assert (followed.watcher.reconnects, followed.watcher.reader_failures) == (0, 0)
