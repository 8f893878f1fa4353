"""Between two listings: each container's events applied to the registry, or it is inspected.

A batch's events are applied at once where they say all there is to know (stop marks,
removals, what `event_plan.plan` derives); any other container is inspected in a task beside
the event loop, one inspect at a time per container, so that a kill that arrives while
others are inspected is applied at once, never queued behind them. An event for a container
whose inspect is running makes it inspected again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Collection, Mapping, Sequence

from lbsync.engine.client import DockerClient
from lbsync.engine.container import Container
from lbsync.engine.errors import DockerError, NotFound
from lbsync.engine.events import Event
from lbsync.engine.inspect import ContainerParseError, container_from_inspect
from lbsync.state.change import Change
from lbsync.state.event_plan import (
    INSPECT,
    REMOVED_ACTIONS,
    SETTLED_STATES,
    Inspect,
    ends_current_run,
    plan,
    stops_current_run,
)
from lbsync.state.registry import Registry, is_serving

log = logging.getLogger("lbsync.watcher")

INSPECT_CONCURRENCY = 16
PODMAN_HEALTH_RECHECK = 0.5  # seconds after a Podman health_status event


class ContainerUpdater:
    """Keeps each container in `registry` up to date from its events and inspects.

    `matters`: does a change of this container concern any target (None: every container
    does)? A change that concerns none updates the registry without telling `on_change`.
    `mask` is applied to every inspected container (swarm: a task's labels hidden);
    `relist_needed` is told when only a full listing can catch up (an inspect failed).
    """

    def __init__(
        self,
        client: DockerClient,
        registry: Registry,
        on_change: Callable[[Change], None],
        *,
        matters: Callable[[Container], bool] | None,
        mask: Callable[[Container], Container],
        relist_needed: Callable[[str], None],
    ) -> None:
        self.client = client
        self.registry = registry
        self.on_change = on_change
        self.matters = matters
        self._mask = mask
        self._relist_needed = relist_needed
        self._inflight: dict[str, asyncio.Task[None]] = {}
        self._dirty: set[str] = set()  # an event came during its inspect: inspect again
        self._event_ns: dict[str, int] = {}  # oldest event not yet applied, per container
        # id -> StartedAt of the run a restart-cancelling kill was sent to: its `die` is final.
        self._final_kill: dict[str, str] = {}
        self.inspects = 0  # container inspects asked of the engine (listings included)
        self._inspect_slots = asyncio.Semaphore(INSPECT_CONCURRENCY)

    def take(self, touched: Mapping[str, Sequence[Event]]) -> None:
        """A batch's container events, by container: stop marks, removals, then per
        container what its events say (`plan`) or one inspect."""
        oldest = min(e.time_nano for group in touched.values() for e in group) or None

        # Stop marks first and at once: the removal pass must not wait for anything.
        stopped: list[str] = []
        for container_id, group in touched.items():
            current = self.registry.raw(container_id)
            marked = stops_current_run(group, current) and self.registry.mark_stopping(container_id)
            if marked and self._concerns(current):
                stopped.append(container_id)
            if current is not None and ends_current_run(group, current):
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
            planned = (
                INSPECT
                if container_id in self._inflight
                else plan(
                    self.registry.raw(container_id), group, self._final_kill.get(container_id)
                )
            )
            if planned is None:
                continue  # nothing a pass reads changed: no inspect, no event time to carry
            times = [e.time_nano for e in group if e.time_nano]
            if times:
                first = min(times)
                self._event_ns[container_id] = min(self._event_ns.get(container_id, first), first)
            if isinstance(planned, Inspect):
                self._schedule_inspect(container_id)
            else:
                # The same path as an inspect's answer: urgency, `matters`, event time.
                self.apply_inspected(container_id, planned)
        if removed:
            self.on_change(Change(False, oldest, "removed", containers=tuple(removed)))

    def apply_inspected(self, container_id: str, container: Container | None) -> None:
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

    async def drain(self) -> None:
        """Wait for every inspect in flight (and those they start) to be applied."""
        while self._inflight:
            await asyncio.gather(*self._inflight.values(), return_exceptions=True)

    def cancel(self) -> None:
        """The session ended: cancel the inspects in flight. The next listing re-reads those
        containers, and a later event must not carry a time from before the outage."""
        for task in list(self._inflight.values()):
            task.cancel()
        self._inflight.clear()
        self._dirty.clear()
        self._event_ns.clear()

    def listed(self, ids: Collection[str]) -> None:
        """A full listing found these ids: forget the final kills of the others."""
        for gone in set(self._final_kill) - set(ids):
            del self._final_kill[gone]

    async def inspect_each(self, ids: list[str], store: Callable[[Container], None]) -> None:
        """Inspect every id, INSPECT_CONCURRENCY at a time, and `store` each answer at once.

        A few workers share one iterator over the ids, rather than a task per id all
        waiting on a semaphore (1.5 KB each, all alive for the whole listing).
        """
        pending = iter(ids)

        async def worker() -> None:
            for container_id in pending:  # each id is taken by exactly one worker
                container = await self.inspect(container_id)
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

    async def inspect(self, container_id: str) -> Container | None:
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
        return self._mask(container)

    def _concerns(self, *containers: Container | None) -> bool:
        if self.matters is None:
            return True
        return any(c is not None and self.matters(c) for c in containers)

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
                    container = await self.inspect(container_id)
                self.apply_inspected(container_id, container)
                if container_id not in self._dirty:
                    return
        except DockerError as exc:
            # Probably the connection: the stream fails too and the re-list catches up. If
            # not (a 500 for one inspect), re-list now rather than keep a stale entry.
            log.warning("cannot inspect container %s: %s", container_id[:12], exc)
            self._relist_needed("an inspect failed")
        finally:
            self._inflight.pop(container_id, None)
