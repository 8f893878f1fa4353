"""Follow the engine: subscribe to events first, then list, then apply events; forever.

The list-then-watch order of kopf's `watching.py`, turned around so nothing falls between the
two: the events stream is opened (and read in its own task, so the engine never drops us for
stalling) before the containers are listed; events queued meanwhile are applied after the
listing, which is harmless because applying an event means re-inspecting the one container it
names. Every reconnect and every `docker.resync` lists again and reconciles.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass

import tenacity

from lbsync.containers import ContainerParseError, container_from_inspect
from lbsync.docker_api import (
    ApiVersionTooOld,
    DockerClient,
    DockerError,
    Event,
    NotFound,
    PermissionDenied,
    StreamError,
)
from lbsync.model import Container
from lbsync.registry import Registry, is_serving

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
WATCHED_TYPES: Mapping[str, Sequence[str]] = {"type": ["container", "network"]}


def signal_name(value: str) -> str:
    """`15`, `SIGTERM` or `TERM` -> `TERM`; unknown values unchanged (upper case)."""
    text = value.strip().upper()
    if text.isdigit():
        try:
            return signal.Signals(int(text)).name.removeprefix("SIG")
        except ValueError:
            return text
    return text.removeprefix("SIG")


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


class StreamEnd:
    """Placed on the queue by the reader when the stream fails."""

    def __init__(self, error: DockerError) -> None:
        self.error = error


EventQueue = asyncio.Queue[Event | StreamEnd]


@contextlib.asynccontextmanager
async def subscribed_events(
    client: DockerClient, *, since: str | None = None, filters: Mapping[str, Sequence[str]]
) -> AsyncIterator[EventQueue]:
    """Subscribe, wait until the engine has the subscription, then read in a task of its own.

    The engine drops a subscriber that does not read for 100 ms, so nothing slow (a pass, an
    inspect, a print) may sit between two reads: the task only moves events onto a queue.
    A failure of the stream arrives on the queue as a `StreamEnd`.
    """
    queue: EventQueue = asyncio.Queue()
    ready = asyncio.Event()
    stream = client.events(since=since, filters=filters, subscribed=ready)

    async def pump() -> None:
        try:
            async for event in stream:
                queue.put_nowait(event)
            queue.put_nowait(StreamEnd(StreamError("the events stream ended")))
        except DockerError as exc:
            queue.put_nowait(StreamEnd(exc))

    task = asyncio.create_task(pump(), name="lbsync-events-reader")
    try:
        ready_wait = asyncio.create_task(ready.wait())
        await asyncio.wait({task, ready_wait}, return_when=asyncio.FIRST_COMPLETED)
        ready_wait.cancel()
        if not ready.is_set():
            item = queue.get_nowait()
            raise item.error if isinstance(item, StreamEnd) else StreamError("no subscription")
        yield queue
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, DockerError):
            await task
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
    ) -> None:
        self.client = client
        self.registry = registry
        self.on_change = on_change
        self.resync = resync
        self.retry_max_wait = retry_max_wait
        self.on_event = on_event
        self.connected = False
        self.disconnected_since: float | None = time.time()
        self.last_error: str | None = None
        self.listed = asyncio.Event()  # set after the first full listing (kopf's marker)
        self.reconnects = 0
        self.events_seen = 0
        self._last_event_ns: int | None = None

    # -- the outer loop --

    async def run(self) -> None:
        """Forever: connect (with backoff), list, follow; on any engine error start over.

        Permission denied and a too-old API are not outages: they propagate.
        """
        while True:
            try:
                await self._session()
            except (PermissionDenied, ApiVersionTooOld):
                raise
            except DockerError as exc:
                self._lost(str(exc))

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

    async def _session(self) -> None:
        await self._connect_with_backoff()
        since = None
        if self._last_event_ns is not None:
            seconds, nanos = divmod(self._last_event_ns, 1_000_000_000)
            since = f"{seconds}.{nanos:09d}"
        async with subscribed_events(self.client, since=since, filters=WATCHED_TYPES) as queue:
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

    # -- listing --

    async def relist(self, reason: str) -> None:
        """List every container, inspect each, reconcile the registry."""
        listed = await self.client.list_containers(all=True)
        ids = [str(item["Id"]) for item in listed if item.get("Id")]
        inspected = await self._inspect_many(ids)
        containers = [c for c in inspected.values() if c is not None]
        before = {c.id: is_serving(c) for c in self.registry.containers()}
        changed = self.registry.replace_all(containers)
        log.debug("listed %d containers (%s)", len(containers), reason)
        if changed or reason == "start":
            urgent = any(
                serving and not is_serving(self.registry.get(cid))
                for cid, serving in before.items()
            )
            self.on_change(Change(urgent=urgent, event_time_ns=None, reason=reason))

    async def _inspect_many(self, ids: list[str]) -> dict[str, Container | None]:
        semaphore = asyncio.Semaphore(INSPECT_CONCURRENCY)

        async def one(container_id: str) -> tuple[str, Container | None]:
            async with semaphore:
                return container_id, await self._inspect(container_id)

        results = await asyncio.gather(*(one(cid) for cid in ids))
        return dict(results)

    async def _inspect(self, container_id: str) -> Container | None:
        """The container now, or None when it is gone (removed since the event)."""
        try:
            data = await self.client.inspect_container(container_id)
        except NotFound:
            return None
        try:
            return container_from_inspect(data)
        except ContainerParseError as exc:
            log.warning("container %s: unreadable inspect answer (%s)", container_id[:12], exc)
            return None

    # -- following --

    async def _follow(self, queue: EventQueue) -> None:
        loop = asyncio.get_running_loop()
        next_resync = loop.time() + self.resync if self.resync > 0 else None
        while True:
            timeout = None if next_resync is None else max(0.0, next_resync - loop.time())
            try:
                async with asyncio.timeout(timeout):  # not wait_for: see debounce.py
                    first = await queue.get()
            except TimeoutError:
                await self.relist("resync")
                next_resync = loop.time() + self.resync
                continue
            batch = [first]
            while not queue.empty():
                batch.append(queue.get_nowait())
            events = [item for item in batch if isinstance(item, Event)]
            if events:
                await self.apply(events)
            ends = [item for item in batch if isinstance(item, StreamEnd)]
            if ends:
                raise ends[0].error

    async def apply(self, events: list[Event]) -> None:
        """Apply a batch of events: at most one inspect per container named in it."""
        touched: dict[str, list[Event]] = {}
        for event in events:
            self.events_seen += 1
            if self.on_event is not None:
                self.on_event(event)
            if event.time_nano:
                self._last_event_ns = max(self._last_event_ns or 0, event.time_nano)
            container_id = self._container_of(event)
            if container_id:
                touched.setdefault(container_id, []).append(event)
        if not touched:
            return

        # Stop marks first and at once: the removal pass must not wait for inspects.
        oldest = min(e.time_nano for group in touched.values() for e in group) or None
        stopped_now = False
        for container_id, group in touched.items():
            current = self.registry.raw(container_id)
            if any(
                e.type == "container"
                and e.base_action == "kill"
                and is_terminating_kill(e, current)
                for e in group
            ):
                stopped_now = self.registry.mark_stopping(container_id) or stopped_now
        if stopped_now:
            self.on_change(Change(urgent=True, event_time_ns=oldest, reason="stopping"))

        before = {cid: is_serving(self.registry.get(cid)) for cid in touched}
        removed = [
            cid
            for cid, group in touched.items()
            if group[-1].type == "container" and group[-1].base_action in REMOVED_ACTIONS
        ]
        changed = False
        for cid in removed:
            changed = self.registry.remove(cid) or changed
        to_inspect = [cid for cid in touched if cid not in removed]
        for cid, container in (await self._inspect_many(to_inspect)).items():
            if container is None:
                changed = self.registry.remove(cid) or changed
            else:
                changed = self.registry.upsert(container) or changed
        if changed:
            urgent = any(
                was and not is_serving(self.registry.get(cid)) for cid, was in before.items()
            )
            self.on_change(Change(urgent=urgent, event_time_ns=oldest, reason="event"))

    @staticmethod
    def _container_of(event: Event) -> str | None:
        if event.type == "container":
            if event.base_action in CONTAINER_ACTIONS:
                return event.actor_id or None
            return None
        if event.type == "network" and event.base_action in NETWORK_ACTIONS:
            return event.attributes.get("container") or None
        return None
