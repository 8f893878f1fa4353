"""What the watcher takes from events without an inspect, against an in-process FAKE client.

The event sequences are the ones Docker 20.10 sends (measured on the lab engine): `docker
start` of a created container is `network connect`, `start`; `docker stop` is `kill` (the
stop signal), `kill` (KILL, when the grace period runs out), `die`, `network disconnect`,
`stop`. Each case says which inspects may be asked and what the registry holds after; where
the events alone set the state, it must equal what an inspect would have answered. The same
two sequences against the real engine are in test_watcher_engine.py.
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import pytest

from lbsync.engine.client import DockerClient
from lbsync.engine.container import Container, NetworkAttachment, PublishedPort
from lbsync.engine.errors import NotFound
from lbsync.engine.events import Event
from lbsync.engine.inspect import container_from_inspect
from lbsync.state import containers as containers_module
from lbsync.state.change import Change
from lbsync.state.registry import Registry, exited
from lbsync.state.watcher import Watcher
from tests.support.events import CID, STARTED, connect, disconnect, event, kill

NEVER = "0001-01-01T00:00:00Z"  # StartedAt of a container that never ran


def inspect_json(
    state: str = "running",
    *,
    health: str | None = None,
    started: str = STARTED,
    stop_signal: str | None = None,
) -> dict[str, Any]:
    """An inspect answer of a host-network container (Docker's shape)."""
    state_json: dict[str, Any] = {
        "Status": state,
        "Running": state in ("running", "restarting"),
        "Restarting": state == "restarting",
        "StartedAt": started,
    }
    config: dict[str, Any] = {
        "Labels": {"lbsync.enable": "true", "lbsync.host": "web.test", "lbsync.port": "8080"},
        "ExposedPorts": {"8080/tcp": {}},
    }
    if health is not None:
        state_json["Health"] = {"Status": health, "FailingStreak": 0, "Log": []}
        config["Healthcheck"] = {"Test": ["CMD-SHELL", "true"]}
    if stop_signal is not None:
        config["StopSignal"] = stop_signal
    return {
        "Id": CID,
        "Name": "/web",
        "Created": "2026-11-28T05:00:00.123456789Z",
        "Config": config,
        "State": state_json,
        "HostConfig": {"NetworkMode": "host"},
        "NetworkSettings": {
            "Ports": {},
            "Networks": {"host": {"NetworkID": "h" * 64, "IPAddress": ""}},
        },
    }


@dataclass
class FakeClient:
    """Just what `Watcher.apply` calls: inspects, answered from `containers`, counted.

    The answer is the engine's state when the inspect is asked; `gate`, while cleared, holds
    the answer back (an inspect in flight)."""

    containers: dict[str, dict[str, Any]] = field(default_factory=dict)
    inspected: list[str] = field(default_factory=list)
    gate: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self.gate.set()

    async def inspect_container(self, container_id: str) -> dict[str, Any]:
        self.inspected.append(container_id)
        data = copy.deepcopy(self.containers.get(container_id))
        await self.gate.wait()
        if data is None:
            raise NotFound(404, f"No such container: {container_id}", method="GET", path="/x")
        return data


@dataclass
class Setup:
    client: FakeClient
    registry: Registry
    watcher: Watcher
    changes: list[Change]


def setup(known: dict[str, Any] | None, engine: dict[str, Any] | None) -> Setup:
    """The registry holding `known` (None: not there), the engine answering `engine`."""
    client = FakeClient()
    if engine is not None:
        client.containers[CID] = engine
    registry = Registry()
    if known is not None:
        registry.upsert(container_from_inspect(known))
    changes: list[Change] = []
    watcher = Watcher(cast(DockerClient, client), registry, changes.append)
    return Setup(client, registry, watcher, changes)


@dataclass(frozen=True)
class Case:
    name: str
    known: dict[str, Any] | None  # in the registry before (None: unknown)
    engine: dict[str, Any] | None  # what an inspect answers (None: 404)
    batches: Sequence[Sequence[Event]]  # each applied as one batch, inspects awaited
    inspects: int
    state: str | None  # the registry's state after (None: not in the registry)
    health: str = "none"
    urgent: tuple[bool, ...] = ()  # `Change.urgent` of each change told, in order
    exact: bool = True  # the registry then equals what an inspect answers


STOP_EVENTS = [kill(100, "15"), kill(200, "9"), event("die", 210), disconnect(220)]

CASES = [
    Case(
        "docker start of a created container: one inspect, for the start",
        known=inspect_json("created", started=NEVER),
        engine=inspect_json("running"),
        batches=[[connect(0)], [event("start", 1)]],
        inspects=1,
        state="running",
        urgent=(False,),
    ),
    Case(
        "docker start, both events in one batch",
        known=inspect_json("created", started=NEVER),
        engine=inspect_json("running"),
        batches=[[connect(0), event("start", 1)]],
        inspects=1,
        state="running",
        urgent=(False,),
    ),
    Case(
        "docker stop, one batch per event: no inspect; out at the kill, exited at the die",
        known=inspect_json("running", health="healthy"),
        engine=inspect_json("exited", health="unhealthy"),
        batches=[[e] for e in [*STOP_EVENTS, event("stop", 230)]],
        inspects=0,
        state="exited",
        health="unhealthy",
        urgent=(True, False),
    ),
    Case(
        "docker stop in one batch",
        known=inspect_json("running", health="healthy"),
        engine=inspect_json("exited", health="unhealthy"),
        batches=[[*STOP_EVENTS, event("stop", 230)]],
        inspects=0,
        state="exited",
        health="unhealthy",
        urgent=(True, False),
    ),
    Case(
        "docker stop of a container without a health check, its own stop signal",
        known=inspect_json("running", stop_signal="SIGQUIT"),
        engine=inspect_json("exited", stop_signal="SIGQUIT"),
        batches=[[kill(100, "3")], [event("die", 110)], [disconnect(120)], [event("stop", 130)]],
        inspects=0,
        state="exited",
        urgent=(True, False),
    ),
    Case(
        "docker kill (KILL), then die: no inspect",
        known=inspect_json("running"),
        engine=inspect_json("exited"),
        batches=[[kill(100, "9")], [event("die", 110)], [disconnect(120)]],
        inspects=0,
        state="exited",
        urgent=(True, False),
    ),
    Case(
        "a die nobody asked for (a crash) is inspected: a restart policy may bring it back",
        known=inspect_json("running"),
        engine=inspect_json("restarting"),
        batches=[[event("die", 100)]],
        inspects=1,
        state="restarting",
        urgent=(True,),
    ),
    Case(
        "TERM to a container whose stop signal is QUIT does not cancel its restart: inspected",
        known=inspect_json("running", stop_signal="SIGQUIT"),
        engine=inspect_json("restarting", stop_signal="SIGQUIT"),
        batches=[[kill(100, "15")], [event("die", 110)], [disconnect(120)]],
        inspects=1,
        state="restarting",
        urgent=(True, False),
    ),
    Case(
        "Podman stop: die without a kill, inspected",
        known=inspect_json("running"),
        engine=inspect_json("exited"),
        batches=[[event("die", 100)]],
        inspects=1,
        state="exited",
        urgent=(True,),
    ),
    Case(
        "Podman kill: no signal attribute, so its die is inspected",
        known=inspect_json("running"),
        engine=inspect_json("exited"),
        batches=[[event("kill", 100)], [event("die", 110)]],
        inspects=1,
        state="exited",
        urgent=(True,),
    ),
    Case(
        "a kill and die of an earlier run (replayed after a reconnect): inspected, no stop mark",
        known=inspect_json("running"),
        engine=inspect_json("running"),
        batches=[[kill(-2000, "9"), event("die", -1990)]],
        inspects=1,
        state="running",
        urgent=(),  # the current run stays in the pool
    ),
    Case(
        "die of a container the registry does not know: inspected (it is discovered)",
        known=None,
        engine=inspect_json("exited"),
        batches=[[event("die", 100)]],
        inspects=1,
        state="exited",
        urgent=(False,),
    ),
    Case(
        "stop of a container the registry does not know: inspected",
        known=None,
        engine=inspect_json("exited"),
        batches=[[event("stop", 100)]],
        inspects=1,
        state="exited",
        urgent=(False,),
    ),
    Case(
        "network connect of a running container: inspected (its addresses change)",
        known=inspect_json("running"),
        engine=inspect_json("running"),
        batches=[[connect(100)]],
        inspects=1,
        state="running",
    ),
    Case(
        "network events of a container the registry does not know: nothing to do",
        known=None,
        engine=inspect_json("created", started=NEVER),
        batches=[[connect(100)], [disconnect(200)]],
        inspects=0,
        state=None,
        exact=False,
    ),
    Case(
        "network events of a restarting container: nothing until its start",
        known=inspect_json("restarting"),
        engine=inspect_json("running", started="2026-11-28T05:00:01.3Z"),
        batches=[[disconnect(100)], [connect(200)]],
        inspects=0,
        state="restarting",
        exact=False,
    ),
    Case(
        "network disconnect of an exited container: nothing to do",
        known=inspect_json("exited"),
        engine=inspect_json("exited"),
        batches=[[disconnect(100)]],
        inspects=0,
        state="exited",
    ),
    Case(
        "oom and a non-terminating kill change nothing",
        known=inspect_json("running"),
        engine=inspect_json("running"),
        batches=[[event("oom", 100)], [kill(200, "1")]],
        inspects=0,
        state="running",
    ),
    Case(
        "health_status: unhealthy of a healthy container: no inspect, out at once",
        known=inspect_json("running", health="healthy"),
        engine=inspect_json("running", health="unhealthy"),
        batches=[[event("health_status: unhealthy", 100)]],
        inspects=0,
        state="running",
        health="unhealthy",
        urgent=(True,),
    ),
    Case(
        "health_status: healthy of a starting container: no inspect, in (not urgent)",
        known=inspect_json("running", health="starting"),
        engine=inspect_json("running", health="healthy"),
        batches=[[event("health_status: healthy", 100)]],
        inspects=0,
        state="running",
        health="healthy",
        urgent=(False,),
    ),
    Case(
        "health flapping in one batch: the last status wins",
        known=inspect_json("running", health="healthy"),
        engine=inspect_json("running", health="healthy"),
        batches=[[event("health_status: unhealthy", 100), event("health_status: healthy", 200)]],
        inspects=0,
        state="running",
        health="healthy",
    ),
    Case(
        "health_status of a container the registry has as exited: inspected",
        known=inspect_json("exited"),
        engine=inspect_json("running", health="healthy"),
        batches=[[event("health_status: healthy", 100)]],
        inspects=1,
        state="running",
        health="healthy",
        urgent=(False,),
    ),
    Case(
        "Podman's bare health_status is inspected (and again a moment later)",
        known=inspect_json("running", health="starting"),
        engine=inspect_json("running", health="healthy"),
        batches=[[event("health_status", 100, raw={"HealthStatus": "starting"})]],
        inspects=2,
        state="running",
        health="healthy",
        urgent=(False,),
    ),
    Case(
        "docker restart: only the start is inspected, and the restart event after it",
        known=inspect_json("running"),
        engine=inspect_json("running", started="2026-11-28T05:00:01.268456789Z"),
        batches=[
            [kill(100, "15")],
            [event("die", 110)],
            [disconnect(120)],
            [event("stop", 130)],
            [connect(140)],
            [event("start", 150)],
            [event("restart", 160)],
        ],
        inspects=2,
        state="running",
        urgent=(True, False, False),
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
async def test_events(case: Case, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(containers_module, "PODMAN_HEALTH_RECHECK", 0.0)
    s = setup(case.known, case.engine)
    for batch in case.batches:
        await s.watcher.apply(list(batch))
    if case.name.startswith("Podman's bare"):
        async with asyncio.timeout(2):
            while len(s.client.inspected) < case.inspects:
                await asyncio.sleep(0.005)
            await s.watcher.apply([])

    assert len(s.client.inspected) == case.inspects
    assert s.watcher.updater.inspects == case.inspects
    stored = s.registry.raw(CID)
    if case.state is None:
        assert stored is None
    else:
        assert stored is not None
        assert (stored.state, stored.health) == (case.state, case.health)
        if case.exact:
            assert case.engine is not None
            assert stored == container_from_inspect(case.engine)
    assert tuple(c.urgent for c in s.changes) == case.urgent
    if case.state == "running" and not case.urgent:
        shown = s.registry.get(CID)
        assert shown is not None and shown.state == "running"  # no stop mark either
    if case.state != "running":
        assert s.watcher.updater._final_kill == {}  # nothing kept for a run that is over


async def test_docker_stop_carries_each_event_time() -> None:
    """The stop mark carries the kill's time, the exit the die's: latency is measured from
    the event that made the change, as when each was inspected."""
    s = setup(inspect_json("running"), inspect_json("exited"))
    for e in [*STOP_EVENTS, event("stop", 230)]:
        await s.watcher.apply([e])
    assert [(c.urgent, c.reason, c.event_time_ns) for c in s.changes] == [
        (True, "stopping", STOP_EVENTS[0].time_nano),
        (False, "event", STOP_EVENTS[2].time_nano),
    ]
    assert s.watcher.updater._event_ns == {}


async def test_die_while_an_inspect_is_in_flight_is_inspected_again() -> None:
    """The registry is behind while an inspect runs: the die marks it for another inspect,
    whose answer (not the die) is what the registry ends with."""
    s = setup(inspect_json("running"), inspect_json("running"))
    s.client.gate.clear()
    await s.watcher._note([event("start", 50)])  # its inspect answers `running`, held back
    async with asyncio.timeout(2):
        while not s.client.inspected:
            await asyncio.sleep(0)
    s.client.containers[CID] = inspect_json("exited", health=None)
    await s.watcher._note([kill(100, "15"), event("die", 110)])
    assert s.client.inspected == [CID]  # not yet: one inspect at a time per container
    s.client.gate.set()
    await s.watcher.apply([])
    assert s.client.inspected == [CID, CID]
    stored = s.registry.raw(CID)
    assert stored == container_from_inspect(inspect_json("exited"))
    # Out at the kill (urgent); the exit is no longer news to the pool.
    assert [c.urgent for c in s.changes] == [True, False]


async def test_health_change_of_a_container_no_target_selects_tells_nobody() -> None:
    s = setup(inspect_json("running", health="healthy"), None)
    s.watcher.updater.matters = lambda c: False
    await s.watcher.apply([event("health_status: unhealthy", 100)])
    stored = s.registry.raw(CID)
    assert stored is not None and stored.health == "unhealthy"
    assert s.changes == []
    assert s.client.inspected == []


async def test_removal_forgets_the_final_kill() -> None:
    s = setup(inspect_json("running"), None)
    await s.watcher.apply([kill(100, "9")])
    assert s.watcher.updater._final_kill == {CID: STARTED}
    await s.watcher.apply([event("destroy", 200)])
    assert CID not in s.registry
    assert s.watcher.updater._final_kill == {}


async def test_a_new_run_forgets_the_final_kill_of_the_old_one() -> None:
    """A kill the process survived marks its run only: a crash of the next run is inspected."""
    s = setup(inspect_json("running"), inspect_json("running", started="2026-11-28T06:00:00Z"))
    await s.watcher.apply([kill(100, "15")])
    await s.watcher.apply([event("restart", 200)])  # inspected: a new run
    assert s.watcher.updater._final_kill == {}
    s.client.containers[CID] = inspect_json("restarting", started="2026-11-28T06:00:00Z")
    await s.watcher.apply([event("die", 3_600_000)])
    stored = s.registry.raw(CID)
    assert stored is not None and stored.state == "restarting"
    assert len(s.client.inspected) == 2


def test_exited_is_what_docker_shows_after_the_die() -> None:
    """Docker 20.10 after a stop: health `unhealthy` (when checked), endpoint addresses and
    the port map cleared, the exposed ports kept."""
    running = Container(
        id=CID,
        name="web",
        created_ns=1,
        health="healthy",
        network_mode="appnet",
        networks=(
            NetworkAttachment("appnet", "n1", "172.18.0.5"),
            NetworkAttachment("other", "n2", ""),
        ),
        exposed_ports=(80,),
        published_ports=(PublishedPort(80, "127.0.0.1", 8080),),
        started_at=STARTED,
    )
    after = exited(running)
    assert after.state == "exited"
    assert after.health == "unhealthy"
    assert after.networks == (
        NetworkAttachment("appnet", "n1", ""),
        NetworkAttachment("other", "n2", ""),
    )
    assert after.published_ports == ()
    assert after.exposed_ports == (80,)
    assert after.started_at == STARTED
    assert exited(after) == after
    unchecked = exited(Container(id=CID, name="web", created_ns=1))
    assert unchecked.health == "none"
