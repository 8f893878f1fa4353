"""Follow the engine: subscribe to events first, then list, then apply events; forever.

The list-then-watch order of kopf's `watching.py`, turned around so nothing falls between the
two: the events stream is opened (and read in its own task, so the engine never drops us for
stalling: `subscription`) before the containers are listed; events queued meanwhile are
applied after the listing, which is harmless because applying an event either re-inspects the
one container it names or, where the event says all there is to know, sets what it says (a
stop, a health status) in order, so the last event of each kind wins. Every reconnect and
every `docker.resync` lists again and reconciles.

The watcher runs the sessions and the listings and hands each batch of events on: container
events to its `ContainerUpdater` (`containers`: what the events say, `event_plan`, or an
inspect), service and node events to its `SwarmState` (`swarm_state`) in swarm mode.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import tenacity

from lbsync.config.schema import SwarmMode
from lbsync.engine.client import DockerClient
from lbsync.engine.container import Container
from lbsync.engine.errors import ApiVersionTooOld, DockerError, PermissionDenied
from lbsync.engine.events import MAX_EVENT_LINE, Event
from lbsync.engine.inspect import listing_agrees
from lbsync.state.change import Change
from lbsync.state.containers import ContainerUpdater
from lbsync.state.event_plan import (
    SWARM_WATCHED_EVENTS,
    WATCHED_EVENTS,
    OversizedAnswer,
    container_of,
    oversized_answer,
)
from lbsync.state.registry import Registry, is_serving, stopped_serving
from lbsync.state.subscription import (
    EventQueue,
    ReaderFailed,
    Resubscribe,
    StreamEnd,
    subscribed_events,
)
from lbsync.state.swarm_state import SwarmState

# `Change` is what `on_change` hears: part of the watcher's interface.
__all__ = ["Watcher"]

log = logging.getLogger("lbsync.watcher")


class Watcher:
    """Keeps `registry` equal to the engine and calls `on_change` after each change.

    What it follows is read by the daemon and the status page: `connected`,
    `disconnected_since`, `last_error`, `reconnects`, `reader_failures`, `events_seen`,
    `listed` (set after the first full listing) and `swarm_active`.
    """

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
        self.registry = registry
        self.on_change = on_change
        self.resync = resync
        self.retry_max_wait = retry_max_wait
        self.on_event = on_event
        # Swarm mode: configured, and active while the engine is a manager.
        self.swarm_state = SwarmState(client, registry, on_change, swarm, label_prefix)
        # Does a change of this container concern any target? None: every container does.
        self.updater = ContainerUpdater(
            client,
            registry,
            on_change,
            matters=matters,
            mask=self.swarm_state.mask,
            relist_needed=self._relist_needed,
        )
        self._queue: EventQueue | None = None
        self.connected = False
        self.disconnected_since: float | None = time.time()
        self.last_error: str | None = None
        self.listed = asyncio.Event()  # set after the first full listing (kopf's marker)
        self.reconnects = 0
        self.reader_failures = 0  # ends of the events reader on a bug (ReaderFailed)
        self.events_seen = 0
        self._last_event_ns: int | None = None
        self._needs_relist: str | None = None  # why the follower must list everything now

    @property
    def swarm_active(self) -> bool:
        """Swarm discovery runs: configured, and the engine is a manager."""
        return self.swarm_state.active

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

        def reader_failed(state: tenacity.RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome else None
            self.reader_failures += 1
            self._lost(str(exc))
            wait = state.next_action.sleep if state.next_action else 0.0
            log.warning("subscribing and listing again in %.1fs", wait)

        retrying = tenacity.AsyncRetrying(
            wait=tenacity.wait_random_exponential(multiplier=0.1, max=self.retry_max_wait),
            retry=tenacity.retry_if_exception_type(ReaderFailed),
            before_sleep=reader_failed,
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                await self._session()

    def _lost(self, reason: str) -> None:
        if self.connected:
            log.warning("lost the engine: %s", reason)
            self.disconnected_since = time.time()
            self.reconnects += 1
        self.connected = False
        self.last_error = reason

    async def _connect_with_backoff(self) -> None:
        def unreachable(state: tenacity.RetryCallState) -> None:
            self.last_error = _log_retry(state)

        retrying = tenacity.AsyncRetrying(
            # Full jitter: lbsyncs sharing an engine do not reconnect in lockstep after a restart.
            wait=tenacity.wait_random_exponential(multiplier=0.1, max=self.retry_max_wait),
            retry=tenacity.retry_if_exception(
                lambda exc: (
                    isinstance(exc, DockerError)
                    and not isinstance(exc, PermissionDenied | ApiVersionTooOld)
                )
            ),
            before_sleep=unreachable,
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                await self.client.connect()

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
        state = self.swarm_state
        unchanged = (swarm, label_prefix) == (state.mode, state.label_prefix)
        off = swarm is None and state.mode is None  # the prefix masks nothing then
        state.mode = swarm
        state.label_prefix = label_prefix
        if not unchanged and not off and self._queue is not None:
            self._queue.put_nowait(StreamEnd(Resubscribe("discovery settings changed")))

    async def _session(self) -> None:
        await self._connect_with_backoff()
        since = None
        if self._last_event_ns is not None:
            seconds, nanos = divmod(self._last_event_ns, 1_000_000_000)
            since = f"{seconds}.{nanos:09d}"
        filters = WATCHED_EVENTS if self.swarm_state.mode is None else SWARM_WATCHED_EVENTS
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
                self.updater.cancel()

    # -- listing --

    async def relist(self, reason: str) -> None:
        """List every container, inspect each, reconcile the registry.

        Swarm mode: first ask whether the engine is a manager; if so list services, tasks and
        nodes too, after the containers (whose health the tasks here take).
        """
        await self.updater.drain()
        self._needs_relist = None
        swarm = self.swarm_state
        if swarm.mode is not None:
            await swarm.check()
        else:
            swarm.deactivate()
        before = {c.id: is_serving(c) for c in self.registry.containers()}
        health: dict[str, str] = {}  # every container the engine answered for: its health
        changed = False
        if reason == "resync" and not swarm.active:
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
            await self.updater.inspect_each(ids, store)
            real = len(health)
            members: dict[str, list[Container]] = {}
            if swarm.active:
                members = await swarm.list_services(health)
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
        self.updater.listed(listed)
        swarm.listed(members)
        if swarm.active:
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

    def _announce(self, serving_before: dict[str, bool], reason: str) -> None:
        """Tell the daemon the registry changed; urgent when a serving container no longer is."""
        urgent = stopped_serving(self.registry, serving_before)
        self.on_change(Change(urgent=urgent, event_time_ns=None, reason=reason))

    # -- following --

    async def _follow(self, queue: EventQueue) -> None:
        loop = asyncio.get_running_loop()
        listed_at = loop.time()
        swarm = self.swarm_state
        while True:
            # From `self.resync` each time round: a config reload may change it, to 0 too.
            next_resync = listed_at + self.resync if self.resync > 0 else None
            wake = next_resync
            settle = swarm.next_poll()
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
                    await swarm.poll()
                continue
            batch = [first]
            while not queue.empty():
                batch.append(queue.get_nowait())
            events = [item for item in batch if isinstance(item, Event)]
            if events:
                await self._note(events)
            if self._needs_relist:
                await self.relist(self._needs_relist)
            if swarm.settling:
                await swarm.poll()  # a busy stream must not starve the polls
            ends = [item for item in batch if isinstance(item, StreamEnd)]
            if ends:
                raise ends[0].error

    async def apply(self, events: list[Event]) -> None:
        """Apply a batch of events and wait until their inspects are applied too."""
        await self._note(events)
        await self.updater.drain()

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
                answer = oversized_answer(event, self.swarm_active)
                _log_oversized(event, answer)
                if answer == "relist":
                    self._needs_relist = "an event too long to read"
            container_id = container_of(event)
            if container_id:
                touched.setdefault(container_id, []).append(event)
        if touched:
            self.updater.take(touched)
        if self.swarm_active:
            await self.swarm_state.take(events)

    def _relist_needed(self, reason: str) -> None:
        """Only a full listing can catch up: the follower lists everything after this batch."""
        self._needs_relist = reason


def _log_retry(state: tenacity.RetryCallState) -> str:
    """Say that the engine is unreachable (now and then: attempts 1 and 10 are warnings);
    the error, for `last_error`."""
    exc = state.outcome.exception() if state.outcome else None
    wait = state.next_action.sleep if state.next_action else 0.0
    level = logging.WARNING if state.attempt_number in (1, 10) else logging.DEBUG
    log.log(
        level,
        "engine unreachable (attempt %d, next in %.1fs): %s",
        state.attempt_number,
        wait,
        exc,
    )
    return str(exc)


def _log_oversized(event: Event, answer: OversizedAnswer) -> None:
    """Say what becomes of an event whose line was too long to read (`oversized_answer`)."""
    if answer == "inspect":
        log.warning(
            "skipped the %r event of container %s: %d bytes, over the %d-byte limit "
            "(the engine puts every label in it); inspecting the container instead",
            event.action,
            event.actor_id[:12],
            event.oversized,
            MAX_EVENT_LINE,
        )
    elif answer == "ignore":
        log.debug("a %s %r event of %d bytes", event.type, event.action, event.oversized)
    else:
        log.warning(
            "skipped an event of %d bytes, over the %d-byte limit (%s %r, actor %r): "
            "listing every container again",
            event.oversized,
            MAX_EVENT_LINE,
            event.type or "of unknown type",
            event.action,
            event.actor_id[:12],
        )
