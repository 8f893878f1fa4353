"""Which engine events the watcher reads, and what a batch of them says: pure functions.

An inspect costs the engine and us a millisecond or more, and a `docker stop` alone sends
five events, so events are read for what they say first (`plan`): `kill`, `oom`, a `stop`
after the `die`, and network events of a container that is not running change nothing a
pass reads; Docker's `die` after a kill that cancels any restart leaves the container
`exited` (`registry.exited`); `health_status: <status>` of a running container is its new
health. Anything else, and any doubt (Podman, an unknown container, an event older than the
container's current run), is inspected.
"""

from __future__ import annotations

import dataclasses
import signal
from collections.abc import Mapping, Sequence
from typing import Final, Literal

from lbsync.engine.container import Container
from lbsync.engine.events import Event
from lbsync.engine.inspect import parse_created
from lbsync.state.registry import exited

__all__ = [
    "CONTAINER_ACTIONS",
    "CONTAINER_EVENTS",
    "HEALTH_STATUSES",
    "INSPECT",
    "NETWORK_ACTIONS",
    "NODE_ACTIONS",
    "PODMAN_FILTER_ACTIONS",
    "REMOVED_ACTIONS",
    "SERVICE_ACTIONS",
    "SETTLED_STATES",
    "SWARM_WATCHED_EVENTS",
    "TERMINATING_SIGNALS",
    "WATCHED_EVENTS",
    "Inspect",
    "OversizedAnswer",
    "cancels_restart",
    "container_of",
    "ends_current_run",
    "is_terminating_kill",
    "oversized_answer",
    "plan",
    "predates_run",
    "signal_name",
    "stops_current_run",
]

#: Actions that can change what a container contributes; anything else (exec_*, attach,
#: top, resize, ...) is ignored without an inspect.
CONTAINER_ACTIONS = frozenset(
    {
        "create",
        "start",
        "restart",
        "die",
        "stop",
        "kill",
        "pause",
        "unpause",
        "destroy",
        "remove",
        "health_status",
        "rename",
        "update",
        "oom",
    }
)
REMOVED_ACTIONS = frozenset({"destroy", "remove"})  # Docker says destroy, Podman remove
NETWORK_ACTIONS = frozenset({"connect", "disconnect"})
#: Signals that end a process unless it handles them; the container's own StopSignal too.
TERMINATING_SIGNALS = frozenset({"TERM", "INT", "QUIT", "KILL"})
#: Container states only a `start` (which is inspected) or a removal leaves: a `stop` of a
#: container in one of them changes nothing a pass reads.
SETTLED_STATES = frozenset({"created", "exited", "dead"})
HEALTH_STATUSES = frozenset({"healthy", "unhealthy", "starting"})
SERVICE_ACTIONS = frozenset({"create", "update", "remove"})
NODE_ACTIONS = frozenset({"create", "update", "remove"})
#: The engine sends only the actions lbsync reads. A health check alone would otherwise send
#: three exec_* events per probe of every container (at 1,000 containers probed every 30 s,
#: 100 a second), each a wake-up and a parse for nothing. `died` is how Podman's filter names
#: `die` (its events still say `die`). With `health_status` in the list Docker matches every
#: value as a prefix, so `health_status: healthy` passes. Events are checked against
#: CONTAINER_ACTIONS on arrival too: an engine that ignores the filter loses nothing.
PODMAN_FILTER_ACTIONS = frozenset({"died"})
CONTAINER_EVENTS: Mapping[str, Sequence[str]] = {
    "type": ["container"],
    "event": sorted(CONTAINER_ACTIONS | PODMAN_FILTER_ACTIONS),
}
WATCHED_EVENTS: Mapping[str, Sequence[str]] = {
    "type": ["container", "network"],
    "event": sorted(CONTAINER_ACTIONS | NETWORK_ACTIONS | PODMAN_FILTER_ACTIONS),
}
SWARM_WATCHED_EVENTS: Mapping[str, Sequence[str]] = {
    "type": ["container", "network", "service", "node"],
    "event": sorted(
        CONTAINER_ACTIONS | NETWORK_ACTIONS | SERVICE_ACTIONS | NODE_ACTIONS | PODMAN_FILTER_ACTIONS
    ),
}


def signal_name(value: str) -> str:
    """`15`, `SIGTERM` or `TERM` -> `TERM`; unknown values unchanged (upper case)."""
    text = value.strip().upper()
    if text.isdigit():
        try:
            return signal.Signals(int(text)).name.removeprefix("SIG")
        except ValueError:
            return text
    return text.removeprefix("SIG")


def cancels_restart(event: Event, container: Container) -> bool:
    """A Docker `kill` after which the container's `die` is final (no restart policy applies).

    Docker cancels the restart policy when the signal is SIGKILL or the container's stop
    signal (moby `killWithSignal`: `ExitOnNext`); `docker stop`, `docker kill` and `docker rm
    -f` send those. Another signal (TERM to a container whose stop signal is QUIT) may end
    the process and leave it `restarting`, and Podman's kill carries no signal: no.
    """
    raw = event.attributes.get("signal")
    if raw is None:
        return False
    name = signal_name(raw)
    return name == "KILL" or name == signal_name(container.stop_signal)


def is_terminating_kill(event: Event, container: Container | None) -> bool:
    """A `kill` whose signal ends the process: leave the pool now, before `die`."""
    raw = event.attributes.get("signal")
    if raw is None:
        # Podman sends kill without a signal attribute; `die` will follow if it ends.
        return False
    name = signal_name(raw)
    if name in TERMINATING_SIGNALS:
        return True
    return container is not None and signal_name(container.stop_signal) == name


def predates_run(event: Event, container: Container) -> bool:
    """Is the event older than the container's current run, or is that unknown?"""
    started = parse_created(container.started_at)
    return not event.time_nano or not started or event.time_nano < started


def container_of(event: Event) -> str | None:
    """The container an event may change (a network event names it in an attribute)."""
    if event.type == "container":
        if event.base_action in CONTAINER_ACTIONS:
            return event.actor_id or None
        return None
    if event.type == "network" and event.base_action in NETWORK_ACTIONS:
        return event.attributes.get("container") or None
    return None


def _kills(group: Sequence[Event]) -> list[Event]:
    return [e for e in group if e.type == "container" and e.base_action == "kill"]


def stops_current_run(group: Sequence[Event], current: Container | None) -> bool:
    """Is one of a container's events a terminating kill of its current run (so that it
    leaves the pool now, before its `die`)?

    A kill replayed from an earlier run (since= after a reconnect) must not take the current
    run out of the pool.
    """
    started = parse_created(current.started_at) if current is not None else 0
    return any(
        is_terminating_kill(e, current) and not (started and 0 < e.time_nano < started)
        for e in _kills(group)
    )


def ends_current_run(group: Sequence[Event], current: Container | None) -> bool:
    """Is one of a container's events a kill that cancels any restart of its current run (so
    that the `die` that follows is final: see `plan`)?"""
    return current is not None and any(
        cancels_restart(e, current) and not predates_run(e, current) for e in _kills(group)
    )


class Inspect:
    """`plan`'s answer when only an inspect can tell."""


INSPECT: Final = Inspect()


def plan(
    current: Container | None, group: Sequence[Event], final_run: str | None
) -> Container | Inspect | None:
    """What a batch's events make of a container no inspect is running for.

    `current` is the container as the registry has it (None: unknown), `group` its events of
    the batch, oldest first, and `final_run` the StartedAt of the run a restart-cancelling
    kill was sent to (`ends_current_run`), if any. The answer: the container to store when
    the events say exactly what an inspect would answer, None when nothing a pass reads
    changed, `INSPECT` when only an inspect can tell. The events are applied in order, so
    the last health status or stop wins.
    """
    view = current
    for event in group:
        if event.oversized:
            return INSPECT  # its attributes were not read (a kill's signal, say)
        if event.type == "network":
            # Only a running container's addresses reach the model, and every way back
            # to running (start, unpause) is an event that is inspected. An unknown
            # container is not running either: its `create` or `start` is inspected.
            # A live connect or disconnect moves a running container's addresses.
            if view is not None and view.state == "running":
                return INSPECT
            continue
        action = event.base_action
        if action in ("kill", "oom"):
            continue  # the process may live on; if it ends, its `die` says so
        if view is None:
            # Stopped containers are discovered too (hosts answering 503): what to list
            # of one nobody has inspected yet only an inspect can tell.
            return INSPECT
        if action == "stop" and view.state in SETTLED_STATES:
            continue  # Docker says `stop` after the `die` that was applied already
        if predates_run(event, view):
            return INSPECT  # about an earlier run (replayed after a reconnect)
        if action == "die" and final_run == view.started_at:
            view = exited(view)
            continue
        if action == "health_status" and view.state == "running":
            status = event.action.partition(":")[2].strip()
            # Podman's bare `health_status` (the status one probe late, in `HealthStatus`)
            # is inspected; Docker's names the status it has just stored.
            if status in HEALTH_STATUSES and "HealthStatus" not in event.raw:
                view = dataclasses.replace(view, health=status)
                continue
        return INSPECT
    return None if view is current else view


#: What to do about an event whose line was too long to read (`oversized_answer`).
OversizedAnswer = Literal["inspect", "ignore", "relist"]


def oversized_answer(event: Event, swarm_active: bool) -> OversizedAnswer:
    """An event whose line was too long to read has lost its attributes (every label of the
    container). A container event still names its container, which is inspected (`plan`):
    `inspect`. Where what the event concerns was in its attributes (a network event's
    container, a task's service in swarm mode) or its start is unreadable, everything must
    be listed again: `relist`. Service and node events need only their actor, and the rest
    lbsync ignores: `ignore`."""
    if event.type == "container" and event.base_action in CONTAINER_ACTIONS:
        return "inspect" if event.actor_id and not swarm_active else "relist"
    if event.type == "network" and event.base_action in NETWORK_ACTIONS:
        return "relist"  # its container is an attribute
    if event.type and event.action:
        return "ignore"
    return "relist"
