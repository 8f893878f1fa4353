"""Follow the engine: subscribe to events first, then list, then apply events; forever.

The list-then-watch order of kopf's `watching.py`, turned around so nothing falls between the
two: the events stream is opened (and read in its own task, so the engine never drops us for
stalling) before the containers are listed; events queued meanwhile are applied after the
listing, which is harmless because applying an event either re-inspects the one container it
names or, where the event says all there is to know, sets what it says (a stop, a health
status) in order, so the last event of each kind wins. Every reconnect and every
`docker.resync` lists again and reconciles.

An inspect costs the engine and us a millisecond or more, and a `docker stop` alone sends
five events, so events are read for what they say first (`Watcher._plan`): `kill`, `oom`,
a `stop` after the `die`, and network events of a container that is not running change
nothing a pass reads; Docker's `die` after a kill that cancels any restart leaves the
container `exited` (`registry.exited`); `health_status: <status>` of a running container
is its new health. Anything else, and any doubt (Podman, an unknown container, an event older
than the container's current run), is inspected, and an event for a container whose inspect
is running makes it inspected again.

Swarm mode (`discovery.swarm`, on a manager): the stream also carries `service` and `node`
events, and every full listing lists services, tasks and nodes too (`lbsync.engine.swarm` turns them
into containers). The engine emits no task events, so a service is looked up again (one
inspect plus one list of its tasks) on its own events, on an event of one of its task
containers on this node, and on node events; after such an event its tasks are listed every
`SETTLE_INTERVAL` until they have converged (`SETTLE_MIN` at least, `SETTLE_MAX` at most,
the whole of a rolling update). A task that changes on another node with no event at all (a
crash and its restart there) is seen at the next resync.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import signal
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import tenacity

from lbsync.config.schema import SwarmMode
from lbsync.engine.client import DockerClient
from lbsync.engine.container import Container
from lbsync.engine.errors import (
    ApiVersionTooOld,
    DockerError,
    NotFound,
    PermissionDenied,
    StreamError,
)
from lbsync.engine.events import MAX_EVENT_LINE, Event
from lbsync.engine.inspect import (
    ContainerParseError,
    container_from_inspect,
    listing_agrees,
    parse_created,
)
from lbsync.engine.swarm import (
    SERVICE_ID_LABEL,
    TASK_ID_LABEL,
    SwarmInfo,
    is_settled,
    is_updating,
    mask_task_container,
    node_addresses,
    node_states,
    service_containers,
    service_id,
    swarm_info,
    task_container_id,
    task_nodes,
    tasks_by_service,
)
from lbsync.state.registry import Registry, exited, is_serving

log = logging.getLogger("lbsync.watcher")

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
INSPECT_CONCURRENCY = 16
PODMAN_HEALTH_RECHECK = 0.5  # seconds after a Podman health_status event
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
#: Tasks swarm wants running; its history (up to 5 old tasks per slot) and the tasks it is
#: stopping are left out, so a task leaves the pool as soon as swarm decides to stop it.
CURRENT_TASKS: Mapping[str, Sequence[str]] = {"desired-state": ["running"]}
SETTLE_INTERVAL = 1.0  # seconds between task listings of a service that is converging
SETTLE_MIN = 3.0  # ... for at least this long after its event (new tasks take a moment)
SETTLE_MAX = 60.0  # ... and at most this long, unless a rolling update is running


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


@dataclass(frozen=True, slots=True)
class Change:
    """What the watcher tells the pass scheduler after updating the registry."""

    urgent: bool  # a container stopped serving: skip the quiet window
    event_time_ns: int | None  # the engine time of the oldest event behind it (None: a relist)
    reason: str
    # The containers (swarm: services) that changed; empty when that is not known (a
    # re-list). The debouncer tells a lone deploy from a burst by them.
    containers: tuple[str, ...] = ()


class StreamEnd:
    """Placed on the queue by the reader when the stream fails."""

    def __init__(self, error: DockerError) -> None:
        self.error = error


class _Inspect:
    """`Watcher._plan`'s answer when only an inspect can tell."""


INSPECT = _Inspect()


class Resubscribe(DockerError):
    """Put on the queue (as a `StreamEnd`) when the event types to watch changed: the session
    ends and a new one subscribes and lists again. Not an outage."""


class ReaderFailed(DockerError):
    """The events reader ended on something other than an engine error (a bug in lbsync):
    counted, and the session starts over after a backoff, subscribing and listing again."""


EventQueue = asyncio.Queue[Event | StreamEnd]


@dataclass(slots=True)
class _Settling:
    """A swarm service whose tasks are listed again until they converge."""

    since: float  # loop time of its last event
    next_poll: float


@contextlib.asynccontextmanager
async def subscribed_events(
    client: DockerClient, *, since: str | None = None, filters: Mapping[str, Sequence[str]]
) -> AsyncIterator[EventQueue]:
    """Subscribe, wait until the engine has the subscription, then read in a task of its own.

    The engine drops a subscriber that does not read for 100 ms, so nothing slow (a pass, an
    inspect, a print) may sit between two reads: the task only moves events onto a queue.
    Any end of the task but this context's own closing arrives on the queue as a `StreamEnd`:
    the engine's errors as they are, anything else (a bug) logged with its traceback and as a
    `ReaderFailed`, so that a follower never waits for events nobody reads.
    """
    queue: EventQueue = asyncio.Queue()
    ready = asyncio.Event()
    stream = client.events(since=since, filters=filters, subscribed=ready)
    closing = False

    async def pump() -> None:
        async for event in stream:
            queue.put_nowait(event)
        raise StreamError("the events stream ended")

    def reader_ended(task: asyncio.Task[None]) -> None:
        if closing:
            return
        error: DockerError
        if task.cancelled():
            error = ReaderFailed("the events reader was cancelled")
            log.error("%s", error)
        else:
            exc = task.exception()
            if isinstance(exc, DockerError):
                error = exc
            else:
                log.error("the events reader failed: %r", exc, exc_info=exc)
                error = ReaderFailed(f"the events reader failed: {exc!r}")
                error.__cause__ = exc
        queue.put_nowait(StreamEnd(error))

    task = asyncio.create_task(pump(), name="lbsync-events-reader")
    task.add_done_callback(reader_ended)
    try:
        ready_wait = asyncio.create_task(ready.wait())
        await asyncio.wait({task, ready_wait}, return_when=asyncio.FIRST_COMPLETED)
        ready_wait.cancel()
        if not ready.is_set():
            item = queue.get_nowait()
            raise item.error if isinstance(item, StreamEnd) else StreamError("no subscription")
        yield queue
    finally:
        closing = True
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task  # how it ended, if not by this cancel, is on the queue already
        with contextlib.suppress(Exception):
            await stream.aclose()


class Watcher:
    """Keeps `registry` equal to the engine and calls `on_change` after each change."""

    def __init__(
        self,
        client: DockerClient,
        registry: Registry,
        on_change: Callable[[Change], None],
        *,
        resync: float = 60.0,
        retry_max_wait: float = 10.0,
        on_event: Callable[[Event], None] | None = None,
        swarm: SwarmMode | None = None,
        label_prefix: str = "lbsync",
        matters: Callable[[Container], bool] | None = None,
    ) -> None:
        self.client = client
        # Does a change of this container concern any target? None: every container does.
        self.matters = matters
        self.registry = registry
        self.on_change = on_change
        self.resync = resync
        self.retry_max_wait = retry_max_wait
        self.on_event = on_event
        # Swarm mode: configured, and active while the engine is a manager.
        self.swarm = swarm
        self.label_prefix = label_prefix
        self.swarm_info: SwarmInfo | None = None
        self.swarm_active = False
        self._swarm_members: dict[str, frozenset[str]] = {}  # service id -> registry ids
        self._service_nodes: dict[str, set[str]] = {}  # service id -> nodes of its tasks
        self._nodes: dict[str, str] = {}  # node id -> Status.Addr
        self._node_states: dict[str, tuple[str, str, str]] = {}
        self._settling: dict[str, _Settling] = {}
        self._queue: EventQueue | None = None
        self.connected = False
        self.disconnected_since: float | None = time.time()
        self.last_error: str | None = None
        self.listed = asyncio.Event()  # set after the first full listing (kopf's marker)
        self.reconnects = 0
        self.reader_failures = 0  # ends of the events reader on a bug (ReaderFailed)
        self.events_seen = 0
        self._last_event_ns: int | None = None
        # Inspects run beside the event loop, one at a time per container: a kill that
        # arrives while others are inspected is applied at once, never queued behind them.
        self._inflight: dict[str, asyncio.Task[None]] = {}
        self._dirty: set[str] = set()  # an event came during its inspect: inspect again
        self._event_ns: dict[str, int] = {}  # oldest event not yet applied, per container
        # id -> StartedAt of the run a restart-cancelling kill was sent to: its `die` is final.
        self._final_kill: dict[str, str] = {}
        self.inspects = 0  # container inspects asked of the engine (listings included)
        self._inspect_slots = asyncio.Semaphore(INSPECT_CONCURRENCY)
        self._needs_relist: str | None = None  # why the follower must list everything now

    # -- the outer loop --

    async def run(self) -> None:
        """Forever: connect (with backoff), list, follow; on any engine error start over.

        Permission denied and a too-old API are not outages: they propagate.
        """
        while True:
            try:
                await self._sessions()
            except (PermissionDenied, ApiVersionTooOld):
                raise
            except Resubscribe as exc:
                log.info("%s: subscribing and listing again", exc)
            except DockerError as exc:
                self._lost(str(exc))

    async def _sessions(self) -> None:
        """Sessions, one after another while the events reader fails on a bug: each failure
        is counted and marks the engine lost (/healthz says why until the next listing), and
        the next session waits a backoff with jitter first, so that a reader failing at once
        again does not spin. Any other end propagates."""
        retrying = tenacity.AsyncRetrying(
            wait=tenacity.wait_random_exponential(multiplier=0.1, max=self.retry_max_wait),
            retry=tenacity.retry_if_exception_type(ReaderFailed),
            before_sleep=self._reader_failed,
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                await self._session()

    def _reader_failed(self, state: tenacity.RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        self.reader_failures += 1
        self._lost(str(exc))
        wait = state.next_action.sleep if state.next_action else 0.0
        log.warning("subscribing and listing again in %.1fs", wait)

    def _lost(self, reason: str) -> None:
        if self.connected:
            log.warning("lost the engine: %s", reason)
            self.disconnected_since = time.time()
            self.reconnects += 1
        self.connected = False
        self.last_error = reason

    async def _connect_with_backoff(self) -> None:
        retrying = tenacity.AsyncRetrying(
            # Full jitter: lbsyncs sharing an engine do not reconnect in lockstep after a restart.
            wait=tenacity.wait_random_exponential(multiplier=0.1, max=self.retry_max_wait),
            retry=tenacity.retry_if_exception(
                lambda exc: (
                    isinstance(exc, DockerError)
                    and not isinstance(exc, PermissionDenied | ApiVersionTooOld)
                )
            ),
            before_sleep=self._log_retry,
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                await self.client.connect()

    def _log_retry(self, state: tenacity.RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        self.last_error = str(exc)
        wait = state.next_action.sleep if state.next_action else 0.0
        level = logging.WARNING if state.attempt_number in (1, 10) else logging.DEBUG
        log.log(
            level,
            "engine unreachable (attempt %d, next in %.1fs): %s",
            state.attempt_number,
            wait,
            exc,
        )

    def set_resync(self, seconds: float) -> None:
        """A reloaded config's `docker.resync` (0: off), in effect at once: the session
        starts over (lists now, then every `seconds`), rather than after the next event,
        which an idle engine may not send for a long time."""
        if seconds != self.resync:
            self.resync = seconds
            if self._queue is not None:
                self._queue.put_nowait(StreamEnd(Resubscribe("docker.resync changed")))

    def set_discovery(self, swarm: SwarmMode | None, label_prefix: str) -> None:
        """A reloaded config: when the swarm settings changed, subscribe and list again."""
        unchanged = (swarm, label_prefix) == (self.swarm, self.label_prefix)
        off = swarm is None and self.swarm is None  # the prefix masks nothing then
        self.swarm = swarm
        self.label_prefix = label_prefix
        if not unchanged and not off and self._queue is not None:
            self._queue.put_nowait(StreamEnd(Resubscribe("discovery settings changed")))

    async def _session(self) -> None:
        await self._connect_with_backoff()
        since = None
        if self._last_event_ns is not None:
            seconds, nanos = divmod(self._last_event_ns, 1_000_000_000)
            since = f"{seconds}.{nanos:09d}"
        filters = WATCHED_EVENTS if self.swarm is None else SWARM_WATCHED_EVENTS
        async with subscribed_events(self.client, since=since, filters=filters) as queue:
            self._queue = queue
            try:
                await self.relist("reconnect" if self.listed.is_set() else "start")
                if not self.connected:
                    log.info(
                        "connected to the engine at %s (API %d.%d)",
                        self.client.endpoint.url,
                        *self.client.api_version,
                    )
                self.connected = True
                self.disconnected_since = None
                self.last_error = None
                self.listed.set()
                await self._follow(queue)
            finally:
                self._queue = None
                for task in list(self._inflight.values()):
                    task.cancel()
                self._inflight.clear()
                self._dirty.clear()
                # Their inspects were cancelled; the next listing re-reads those containers,
                # and a later event must not carry a time from before the outage.
                self._event_ns.clear()

    # -- listing --

    async def relist(self, reason: str) -> None:
        """List every container, inspect each, reconcile the registry.

        Swarm mode: first ask whether the engine is a manager; if so list services, tasks and
        nodes too, after the containers (whose health the tasks here take).
        """
        await self._drain_inspects()
        self._needs_relist = None
        if self.swarm is not None:
            await self._check_swarm()
        else:
            self.swarm_active = False
            self._settling.clear()
        before = {c.id: is_serving(c) for c in self.registry.containers()}
        health: dict[str, str] = {}  # every container the engine answered for: its health
        changed = False
        if reason == "resync" and not self.swarm_active:
            # The periodic re-list looks for what the stream may have missed: only what the
            # listing shows differently from the registry is inspected (inspecting all took
            # 0.2-0.3 s of CPU at 1,000). After a reconnect, and in swarm mode (labels masked
            # by services), every container is inspected.
            ids = []
            for entry in await self.client.list_containers_brief(all=True):
                current = self.registry.get(entry.id)
                if current is not None and listing_agrees(current, entry):
                    health[entry.id] = current.health
                else:
                    ids.append(entry.id)
        else:
            # Ids only, and each inspect applied as it arrives: at 1,000 containers the
            # parsed listing (about 3 MB) or a second copy of every container would otherwise
            # stay alive until the last inspect, and the peak is what the process keeps.
            ids = await self.client.list_container_ids(all=True)

        def store(container: Container) -> None:
            nonlocal changed
            health[container.id] = container.health
            changed = self.registry.upsert(container) or changed

        try:
            await self._inspect_each(ids, store)
            real = len(health)
            members: dict[str, list[Container]] = {}
            if self.swarm_active:
                members = await self._list_swarm(health)
                for group in members.values():
                    for member in group:
                        changed = self.registry.upsert(member) or changed
        except BaseException:
            # What was stored before the failure is in the registry, and the next listing
            # will find it unchanged: a pass must hear of it now. Not before the first full
            # listing, though: a first pass over part of the engine would drop the rest.
            if changed and self.listed.is_set():
                self._announce(before, reason)
            raise
        listed = health.keys() | {c.id for group in members.values() for c in group}
        for gone in [c.id for c in self.registry.containers() if c.id not in listed]:
            changed = self.registry.remove(gone) or changed
        for gone in set(self._final_kill) - listed:
            del self._final_kill[gone]
        self._swarm_members = {sid: frozenset(c.id for c in g) for sid, g in members.items()}
        if self.swarm_active:
            log.debug(
                "listed %d containers and %d services (%d routable objects) (%s)",
                real,
                len(members),
                len(listed) - real,
                reason,
            )
        else:
            log.debug("listed %d containers (%s)", real, reason)
        if changed or reason == "start":
            self._announce(before, reason)

    def _announce(self, serving_before: Mapping[str, bool], reason: str) -> None:
        """Tell the daemon the registry changed; urgent when a serving container no longer is."""
        urgent = any(
            serving and not is_serving(self.registry.get(cid))
            for cid, serving in serving_before.items()
        )
        self.on_change(Change(urgent=urgent, event_time_ns=None, reason=reason))

    async def _inspect_each(self, ids: list[str], store: Callable[[Container], None]) -> None:
        """Inspect every id, INSPECT_CONCURRENCY at a time, and `store` each answer at once.

        A few workers share one iterator over the ids, rather than a task per id all
        waiting on a semaphore (1.5 KB each, all alive for the whole listing).
        """
        pending = iter(ids)

        async def worker() -> None:
            for container_id in pending:  # each id is taken by exactly one worker
                container = await self._inspect(container_id)
                if container is not None:
                    store(container)

        workers = [
            asyncio.ensure_future(worker()) for _ in range(min(INSPECT_CONCURRENCY, len(ids)))
        ]
        try:
            await asyncio.gather(*workers)
        except BaseException:
            for task in workers:
                task.cancel()
            raise

    async def _inspect(self, container_id: str) -> Container | None:
        """The container now, or None when it is gone (removed since the event)."""
        self.inspects += 1
        try:
            data = await self.client.inspect_container(container_id)
        except NotFound:
            return None
        try:
            container = container_from_inspect(data)
        except ContainerParseError as exc:
            log.warning("container %s: unreadable inspect answer (%s)", container_id[:12], exc)
            return None
        if self.swarm_active:
            return mask_task_container(container, self.label_prefix)
        return container

    # -- swarm --

    async def _check_swarm(self) -> None:
        """Is the engine a swarm manager (so that swarm discovery can run)? Said once."""
        info = swarm_info(await self.client.info())
        was = self.swarm_active
        first = self.swarm_info is None
        self.swarm_info = info
        self.swarm_active = info.is_manager
        if self.swarm_active and not was:
            log.info("swarm discovery (%s) on manager node %s", self.swarm, info.node_id)
        elif not self.swarm_active and (was or first):
            log.warning(
                "discovery.swarm is %s but the engine at %s is not a swarm manager "
                "(LocalNodeState %s, ControlAvailable %s): only its containers are discovered; "
                "run lbsync on a manager node",
                self.swarm,
                self.client.endpoint.url,
                info.local_node_state or "unknown",
                str(info.control_available).lower(),
            )
        if not self.swarm_active:
            self._settling.clear()

    async def _list_swarm(self, health: Mapping[str, str]) -> dict[str, list[Container]]:
        """Every service as its containers (one list each of services, tasks and nodes)."""
        services, tasks, nodes = await asyncio.gather(
            self.client.list_services(),
            self.client.list_tasks(filters=CURRENT_TASKS),
            self.client.list_nodes(),
        )
        self._nodes = node_addresses(nodes)
        self._node_states = node_states(nodes)
        grouped = tasks_by_service(tasks)
        members: dict[str, list[Container]] = {}
        self._service_nodes = {}
        assert self.swarm is not None
        for service in services:
            sid = service_id(service)
            own = grouped.get(sid, [])
            members[sid] = service_containers(service, own, self.swarm, self._nodes, health)
            self._service_nodes[sid] = task_nodes(own)
        for sid in set(self._settling) - set(members):
            del self._settling[sid]
        return members

    def _local_health(self) -> dict[str, str]:
        """Health of the real containers here, by id: tasks here take their container's."""
        return {c.id: c.health for c in self.registry.containers() if not c.id.startswith("swarm-")}

    def _settle(self, service_ids: Iterable[str]) -> None:
        now = asyncio.get_running_loop().time()
        for sid in service_ids:
            self._settling[sid] = _Settling(since=now, next_poll=now + SETTLE_INTERVAL)

    def _next_settle_poll(self) -> float | None:
        return min((s.next_poll for s in self._settling.values()), default=None)

    async def _refresh_services(
        self, service_ids: Iterable[str], event_time_ns: int | None = None
    ) -> bool:
        """Look each service up again (404: removed) with its tasks; update the registry.

        Returns whether anything a pass reads changed; tells `on_change` itself.
        """
        assert self.swarm is not None
        semaphore = asyncio.Semaphore(INSPECT_CONCURRENCY)

        async def one(sid: str) -> tuple[str, dict[str, Any] | None, list[dict[str, Any]]]:
            async with semaphore:
                try:
                    service = await self.client.inspect_service(sid)
                except NotFound:
                    return sid, None, []
                filters = {"service": [sid], **CURRENT_TASKS}
                try:
                    return sid, service, await self.client.list_tasks(filters=filters)
                except NotFound:  # removed between the two calls
                    return sid, None, []

        found = await asyncio.gather(*(one(sid) for sid in service_ids))
        if any(node not in self._nodes for _, _, tasks in found for node in task_nodes(tasks)):
            nodes = await self.client.list_nodes()
            self._nodes = node_addresses(nodes)
            self._node_states = node_states(nodes)
        health = self._local_health()
        fresh: dict[str, list[Container]] = {}
        now = asyncio.get_running_loop().time()
        for sid, service, tasks in found:
            if service is None:
                fresh[sid] = []
                self._settling.pop(sid, None)
                self._service_nodes.pop(sid, None)
                continue
            fresh[sid] = service_containers(service, tasks, self.swarm, self._nodes, health)
            self._service_nodes[sid] = task_nodes(tasks)
            settling = self._settling.get(sid)
            if settling is not None:
                converging = not is_settled(service, tasks)
                age = now - settling.since
                done = (not converging and age >= SETTLE_MIN) or (
                    age >= SETTLE_MAX and not is_updating(service)
                )
                if done:
                    del self._settling[sid]
                else:
                    settling.next_poll = now + SETTLE_INTERVAL
        return self._replace_services(fresh, event_time_ns)

    def _replace_services(
        self, fresh: Mapping[str, Sequence[Container]], event_time_ns: int | None
    ) -> bool:
        """Put these services' containers in the registry in place of their old ones."""
        before: dict[str, bool] = {}
        changed = False
        for sid, containers in fresh.items():
            old = self._swarm_members.get(sid, frozenset())
            new_ids = frozenset(c.id for c in containers)
            for cid in old:
                before[cid] = is_serving(self.registry.get(cid))
            for cid in old - new_ids:
                changed = self.registry.remove(cid) or changed
            for container in containers:
                changed = self.registry.upsert(container) or changed
            if new_ids:
                self._swarm_members[sid] = new_ids
            else:
                self._swarm_members.pop(sid, None)
        if changed:
            urgent = any(
                was and not is_serving(self.registry.get(cid)) for cid, was in before.items()
            )
            self.on_change(Change(urgent, event_time_ns, "swarm", containers=tuple(sorted(fresh))))
        return changed

    async def _poll_settling(self) -> None:
        now = asyncio.get_running_loop().time()
        due = [sid for sid, s in self._settling.items() if s.next_poll <= now]
        if due:
            await self._refresh_services(due)

    async def _swarm_events(self, events: list[Event]) -> None:
        """Service, node and task-container events: look the services up again."""
        services: dict[str, None] = {}  # ordered set
        nodes_changed: set[str] = set()
        stopped: list[str] = []
        for event in events:
            if event.type == "service" and event.base_action in SERVICE_ACTIONS:
                if event.actor_id:
                    services[event.actor_id] = None
            elif event.type == "node" and event.base_action in NODE_ACTIONS:
                nodes_changed.add(event.actor_id)
            elif event.type == "container" and event.base_action in CONTAINER_ACTIONS:
                sid = event.attributes.get(SERVICE_ID_LABEL)
                if sid:
                    services[sid] = None
                task_id = event.attributes.get(TASK_ID_LABEL)
                if task_id and event.base_action == "kill":
                    # The task's container here is told to stop: its task leaves the pool now.
                    cid = task_container_id(task_id)
                    terminating = is_terminating_kill(event, self.registry.raw(cid))
                    if terminating and self.registry.mark_stopping(cid):
                        stopped.append(cid)
        oldest = min(e.time_nano for e in events) or None
        if stopped:
            self.on_change(Change(True, oldest, "stopping", containers=tuple(stopped)))
        if nodes_changed:
            # A node event: list the nodes (one call). Those whose address, state or
            # availability changed (down, drained, re-addressed) move or re-address their
            # tasks: the services with tasks there are looked up and followed while swarm
            # moves them. Other node updates (attachments for a new network) change nothing.
            nodes = await self.client.list_nodes()
            fresh_states = node_states(nodes)
            moved = {
                node
                for node in set(fresh_states) | set(self._node_states)
                if fresh_states.get(node) != self._node_states.get(node)
            }
            self._nodes = node_addresses(nodes)
            self._node_states = fresh_states
            for sid, on in self._service_nodes.items():
                if on & moved:
                    services[sid] = None
        if services:
            self._settle(services)
            await self._refresh_services(list(services), oldest)

    # -- following --

    async def _follow(self, queue: EventQueue) -> None:
        loop = asyncio.get_running_loop()
        listed_at = loop.time()
        while True:
            # From `self.resync` each time round: a config reload may change it, to 0 too.
            next_resync = listed_at + self.resync if self.resync > 0 else None
            wake = next_resync
            settle = self._next_settle_poll()
            if settle is not None:
                wake = settle if wake is None else min(wake, settle)
            timeout = None if wake is None else max(0.0, wake - loop.time())
            try:
                async with asyncio.timeout(timeout):  # not wait_for: see debounce.py
                    first = await queue.get()
            except TimeoutError:
                if next_resync is not None and loop.time() >= next_resync:
                    await self.relist("resync")
                    listed_at = loop.time()
                else:
                    await self._poll_settling()
                continue
            batch = [first]
            while not queue.empty():
                batch.append(queue.get_nowait())
            events = [item for item in batch if isinstance(item, Event)]
            if events:
                await self._note(events)
            if self._needs_relist:
                await self.relist(self._needs_relist)
            if self._settling:
                await self._poll_settling()  # a busy stream must not starve the polls
            ends = [item for item in batch if isinstance(item, StreamEnd)]
            if ends:
                raise ends[0].error

    async def apply(self, events: list[Event]) -> None:
        """Apply a batch of events and wait until their inspects are applied too."""
        await self._note(events)
        await self._drain_inspects()

    async def _note(self, events: list[Event]) -> None:
        """Take in a batch: stop marks and removals now, inspects started in the background."""
        touched: dict[str, list[Event]] = {}
        for event in events:
            self.events_seen += 1
            if self.on_event is not None:
                self.on_event(event)
            if event.time_nano:
                self._last_event_ns = max(self._last_event_ns or 0, event.time_nano)
            if event.oversized:
                self._skip_oversized(event)
            container_id = self._container_of(event)
            if container_id:
                touched.setdefault(container_id, []).append(event)
        if touched:
            self._apply_containers(touched)
        if self.swarm_active:
            await self._swarm_events(events)

    def _skip_oversized(self, event: Event) -> None:
        """An event whose line was too long to read: its attributes (every label of the
        container) are lost. A container event still names its container, which is inspected
        (`_plan`); where what the event concerns was in its attributes (a network event's
        container, a task's service in swarm mode) or its start is unreadable, everything is
        listed again. Service and node events need only their actor; the rest lbsync ignores."""
        known = bool(event.type and event.action)
        if event.type == "container" and event.base_action in CONTAINER_ACTIONS:
            if event.actor_id and not self.swarm_active:
                log.warning(
                    "skipped the %r event of container %s: %d bytes, over the %d-byte limit "
                    "(the engine puts every label in it); inspecting the container instead",
                    event.action,
                    event.actor_id[:12],
                    event.oversized,
                    MAX_EVENT_LINE,
                )
                return
        elif event.type == "network" and event.base_action in NETWORK_ACTIONS:
            pass  # its container is an attribute
        elif known:
            log.debug("a %s %r event of %d bytes", event.type, event.action, event.oversized)
            return
        log.warning(
            "skipped an event of %d bytes, over the %d-byte limit (%s %r, actor %r): "
            "listing every container again",
            event.oversized,
            MAX_EVENT_LINE,
            event.type or "of unknown type",
            event.action,
            event.actor_id[:12],
        )
        self._needs_relist = "an event too long to read"

    def _concerns(self, *containers: Container | None) -> bool:
        if self.matters is None:
            return True
        return any(c is not None and self.matters(c) for c in containers)

    def _apply_containers(self, touched: dict[str, list[Event]]) -> None:
        """The container part of a batch: stop marks, removals, then per container what its
        events say (`_plan`) or one inspect."""
        oldest = min(e.time_nano for group in touched.values() for e in group) or None

        # Stop marks first and at once: the removal pass must not wait for anything.
        stopped: list[str] = []
        for container_id, group in touched.items():
            current = self.registry.raw(container_id)
            kills = [e for e in group if e.type == "container" and e.base_action == "kill"]
            # A kill replayed from an earlier run (since= after a reconnect) must not take
            # the current run out of the pool.
            started = parse_created(current.started_at) if current is not None else 0
            terminating = any(
                is_terminating_kill(e, current) and not (started and 0 < e.time_nano < started)
                for e in kills
            )
            marked = terminating and self.registry.mark_stopping(container_id)
            if marked and self._concerns(current):
                stopped.append(container_id)
            if current is not None and any(
                cancels_restart(e, current) and not self._predates_run(e, current) for e in kills
            ):
                self._final_kill[container_id] = current.started_at
        if stopped:
            self.on_change(Change(True, oldest, "stopping", containers=tuple(stopped)))

        removed: list[str] = []
        for container_id, group in touched.items():
            last = group[-1]
            removal = last.type == "container" and last.base_action in REMOVED_ACTIONS
            if removal and container_id not in self._inflight:
                before = self.registry.raw(container_id)
                if self.registry.remove(container_id) and self._concerns(before):
                    removed.append(container_id)
                self._event_ns.pop(container_id, None)
                self._final_kill.pop(container_id, None)
                continue
            if any("HealthStatus" in e.raw for e in group):
                # Podman sends health_status before it stores the new status: look again.
                asyncio.get_running_loop().call_later(
                    PODMAN_HEALTH_RECHECK, self._schedule_inspect, container_id
                )
            # While an inspect runs the registry is behind the engine: nothing can be derived
            # from it, and the inspect is repeated once it is done.
            plan = INSPECT if container_id in self._inflight else self._plan(container_id, group)
            if plan is None:
                continue  # nothing a pass reads changed: no inspect, no event time to carry
            times = [e.time_nano for e in group if e.time_nano]
            if times:
                first = min(times)
                self._event_ns[container_id] = min(self._event_ns.get(container_id, first), first)
            if isinstance(plan, _Inspect):
                self._schedule_inspect(container_id)
            else:
                # The same path as an inspect's answer: urgency, `matters`, event time.
                self._apply_inspected(container_id, plan)
        if removed:
            self.on_change(Change(False, oldest, "removed", containers=tuple(removed)))

    def _plan(self, container_id: str, group: Sequence[Event]) -> Container | _Inspect | None:
        """What a batch's events make of a container no inspect is running for.

        The container to store when the events say exactly what an inspect would answer,
        None when nothing a pass reads changed, `INSPECT` when only an inspect can tell.
        The events are applied in order, so the last health status or stop wins.
        """
        current = self.registry.raw(container_id)
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
            if self._predates_run(event, view):
                return INSPECT  # about an earlier run (replayed after a reconnect)
            if action == "die" and self._final_kill.get(container_id) == view.started_at:
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

    @staticmethod
    def _predates_run(event: Event, container: Container) -> bool:
        """Is the event older than the container's current run, or is that unknown?"""
        started = parse_created(container.started_at)
        return not event.time_nano or not started or event.time_nano < started

    def _schedule_inspect(self, container_id: str) -> None:
        if container_id in self._inflight:
            self._dirty.add(container_id)
            return
        self._inflight[container_id] = asyncio.create_task(
            self._inspect_and_apply(container_id), name=f"lbsync-inspect-{container_id[:12]}"
        )

    async def _inspect_and_apply(self, container_id: str) -> None:
        try:
            while True:
                self._dirty.discard(container_id)
                async with self._inspect_slots:
                    container = await self._inspect(container_id)
                self._apply_inspected(container_id, container)
                if container_id not in self._dirty:
                    return
        except DockerError as exc:
            # Probably the connection: the stream fails too and the re-list catches up. If
            # not (a 500 for one inspect), re-list now rather than keep a stale entry.
            log.warning("cannot inspect container %s: %s", container_id[:12], exc)
            self._needs_relist = "an inspect failed"
        finally:
            self._inflight.pop(container_id, None)

    def _apply_inspected(self, container_id: str, container: Container | None) -> None:
        """Store a container as the engine has it now (inspected, or derived from events)."""
        final_run = self._final_kill.get(container_id)
        if final_run is not None and (
            container is None
            or container.started_at != final_run
            or container.state in SETTLED_STATES
        ):
            del self._final_kill[container_id]  # that run has ended (or is not this one)
        before = self.registry.raw(container_id)
        was_serving = is_serving(self.registry.get(container_id))
        if container is None:
            changed = self.registry.remove(container_id)
        else:
            changed = self.registry.upsert(container)
        event_ns = self._event_ns.pop(container_id, None)
        if not changed or not self._concerns(before, container):
            return
        urgent = was_serving and not is_serving(self.registry.get(container_id))
        self.on_change(Change(urgent, event_ns, "event", containers=(container_id,)))

    async def _drain_inspects(self) -> None:
        """Wait for every inspect in flight (and those they start) to be applied."""
        while self._inflight:
            await asyncio.gather(*self._inflight.values(), return_exceptions=True)

    @staticmethod
    def _container_of(event: Event) -> str | None:
        if event.type == "container":
            if event.base_action in CONTAINER_ACTIONS:
                return event.actor_id or None
            return None
        if event.type == "network" and event.base_action in NETWORK_ACTIONS:
            return event.attributes.get("container") or None
        return None
