"""What a batch of events says about a container, without the watcher: `event_plan` as tables.

test_watcher_events.py holds the watcher to the same rules through its inspects; these are
the pure functions it asks.
"""

from __future__ import annotations

import dataclasses
from types import MappingProxyType

import pytest

from lbsync.engine.container import Container
from lbsync.engine.events import Event
from lbsync.state.event_plan import (
    INSPECT,
    Inspect,
    OversizedAnswer,
    ends_current_run,
    oversized_answer,
    plan,
    stops_current_run,
)
from lbsync.state.registry import exited
from tests.support.events import CID, RUN_NS, STARTED, connect, event, kill

RUNNING = Container(
    id=CID,
    name="web",
    created_ns=1,
    labels=MappingProxyType({"lbsync.enable": "true"}),
    state="running",
    health="healthy",
    started_at=STARTED,
)
EXITED = dataclasses.replace(RUNNING, state="exited", health="none")
BEFORE_RUN = -1_000  # ms: an event of the run before the current one
PODMAN_HEALTH = {"HealthStatus": "unhealthy"}


@pytest.mark.parametrize(
    ("current", "group", "final_run", "expected"),
    [
        pytest.param(None, [event("start", 5)], None, INSPECT, id="unknown-is-inspected"),
        pytest.param(None, [kill(5, "15")], None, None, id="unknown-kill-changes-nothing"),
        pytest.param(RUNNING, [kill(5, "15")], None, None, id="kill-changes-nothing"),
        pytest.param(RUNNING, [event("oom", 5)], None, None, id="oom-changes-nothing"),
        pytest.param(RUNNING, [connect(5)], None, INSPECT, id="running-connect-is-inspected"),
        pytest.param(EXITED, [connect(5)], None, None, id="stopped-connect-changes-nothing"),
        pytest.param(EXITED, [event("stop", 5)], None, None, id="stop-after-die"),
        pytest.param(RUNNING, [event("stop", 5)], None, INSPECT, id="stop-while-running"),
        pytest.param(
            RUNNING,
            [event("health_status: unhealthy", 5)],
            None,
            dataclasses.replace(RUNNING, health="unhealthy"),
            id="docker-health-is-read",
        ),
        pytest.param(
            RUNNING,
            [event("health_status: unhealthy", 5), event("health_status: healthy", 6)],
            None,
            RUNNING,
            id="last-health-wins",
        ),
        pytest.param(
            RUNNING,
            [event("health_status", 5, raw=PODMAN_HEALTH)],
            None,
            INSPECT,
            id="podman-health-is-inspected",
        ),
        pytest.param(
            EXITED,
            [event("health_status: healthy", 5)],
            None,
            INSPECT,
            id="health-of-a-stopped-one",
        ),
        pytest.param(
            RUNNING, [kill(5, "9"), event("die", 6)], STARTED, exited(RUNNING), id="final-die"
        ),
        pytest.param(RUNNING, [event("die", 6)], None, INSPECT, id="die-may-restart"),
        pytest.param(
            RUNNING,
            [event("die", 6)],
            "2020-01-01T00:00:00Z",
            INSPECT,
            id="final-kill-of-another-run",
        ),
        pytest.param(
            RUNNING,
            [event("health_status: unhealthy", BEFORE_RUN)],
            None,
            INSPECT,
            id="event-of-an-earlier-run",
        ),
        pytest.param(
            RUNNING,
            [dataclasses.replace(kill(5, "15"), oversized=70_000)],
            None,
            INSPECT,
            id="oversized",
        ),
    ],
)
def test_plan(
    current: Container | None,
    group: list[Event],
    final_run: str | None,
    expected: Container | Inspect | None,
) -> None:
    assert plan(current, group, final_run) == expected


@pytest.mark.parametrize(
    ("current", "group", "stops", "ends"),
    [
        pytest.param(RUNNING, [kill(5, "15")], True, True, id="its-stop-signal"),
        pytest.param(
            dataclasses.replace(RUNNING, stop_signal="SIGQUIT"),
            [kill(5, "15")],
            True,
            False,
            id="term-may-leave-it-restarting",
        ),
        pytest.param(RUNNING, [kill(5, "9")], True, True, id="kill-cancels-restart"),
        pytest.param(
            dataclasses.replace(RUNNING, stop_signal="SIGWINCH"),
            [kill(5, "28")],
            True,
            True,
            id="own-stop-signal",
        ),
        pytest.param(RUNNING, [kill(5, "1")], False, False, id="hup-is-a-reload"),
        pytest.param(RUNNING, [kill(BEFORE_RUN, "9")], False, False, id="replayed-kill"),
        pytest.param(None, [kill(5, "9")], True, False, id="unknown-container"),
        pytest.param(RUNNING, [event("die", 5)], False, False, id="no-kill"),
    ],
)
def test_kills_of_the_current_run(
    current: Container | None, group: list[Event], stops: bool, ends: bool
) -> None:
    assert stops_current_run(group, current) is stops
    assert ends_current_run(group, current) is ends


def oversized(kind: str, action: str, actor: str = CID) -> Event:
    return Event(kind, action, actor, time_nano=RUN_NS, oversized=70_000)


@pytest.mark.parametrize(
    ("event_", "swarm_active", "answer"),
    [
        pytest.param(oversized("container", "start"), False, "inspect", id="container"),
        pytest.param(oversized("container", "start"), True, "relist", id="swarm-task-service"),
        pytest.param(oversized("container", "start", ""), False, "relist", id="no-actor"),
        pytest.param(oversized("network", "connect"), False, "relist", id="network"),
        pytest.param(oversized("service", "update"), True, "ignore", id="service"),
        pytest.param(oversized("container", "exec_start: sh"), False, "ignore", id="exec"),
        pytest.param(oversized("", ""), False, "relist", id="unreadable-start"),
    ],
)
def test_oversized_answer(event_: Event, swarm_active: bool, answer: OversizedAnswer) -> None:
    assert oversized_answer(event_, swarm_active) == answer
