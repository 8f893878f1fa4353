"""What the watcher knows of a swarm: its services' containers in the registry, followed.

Swarm mode (`discovery.swarm`, on a manager): the stream also carries `service` and `node`
events, and every full listing lists services, tasks and nodes too (`lbsync.engine.swarm`
turns them into containers). The engine emits no task events, so a service is looked up again
(one inspect plus one list of its tasks) on its own events, on an event of one of its task
containers on this node, and on node events; after such an event its tasks are listed every
`SETTLE_INTERVAL` until they have converged (`SETTLE_MIN` at least, `SETTLE_MAX` at most,
the whole of a rolling update). A task that changes on another node with no event at all (a
crash and its restart there) is seen at the next resync.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from lbsync.config.schema import SwarmMode
from lbsync.engine.client import DockerClient
from lbsync.engine.container import Container
from lbsync.engine.errors import NotFound
from lbsync.engine.events import Event
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
from lbsync.state.change import Change
from lbsync.state.containers import INSPECT_CONCURRENCY
from lbsync.state.event_plan import (
    CONTAINER_ACTIONS,
    NODE_ACTIONS,
    SERVICE_ACTIONS,
    is_terminating_kill,
)
from lbsync.state.registry import Registry, is_serving, stopped_serving

log = logging.getLogger("lbsync.watcher")

#: Tasks swarm wants running; its history (up to 5 old tasks per slot) and the tasks it is
#: stopping are left out, so a task leaves the pool as soon as swarm decides to stop it.
CURRENT_TASKS: Mapping[str, Sequence[str]] = {"desired-state": ["running"]}
SETTLE_INTERVAL = 1.0  # seconds between task listings of a service that is converging
SETTLE_MIN = 3.0  # ... for at least this long after its event (new tasks take a moment)
SETTLE_MAX = 60.0  # ... and at most this long, unless a rolling update is running


@dataclass(slots=True)
class _Settling:
    """A swarm service whose tasks are listed again until they converge."""

    since: float  # loop time of its last event
    next_poll: float


class SwarmState:
    """The swarm's services, tasks and nodes as the watcher last saw them, kept up to date in
    the registry between full listings (which the watcher runs, asking `list_services`).

    `mode` and `label_prefix` are the discovery settings (None: swarm discovery is off);
    `active` says whether it runs: configured, and the engine is a manager (`check`).
    """

    def __init__(
        self,
        client: DockerClient,
        registry: Registry,
        on_change: Callable[[Change], None],
        mode: SwarmMode | None,
        label_prefix: str,
    ) -> None:
        self.client = client
        self.registry = registry
        self.on_change = on_change
        self.mode = mode
        self.label_prefix = label_prefix
        self.info: SwarmInfo | None = None
        self.active = False
        self._members: dict[str, frozenset[str]] = {}  # service id -> registry ids
        self._service_nodes: dict[str, set[str]] = {}  # service id -> nodes of its tasks
        self._nodes: dict[str, str] = {}  # node id -> Status.Addr
        self._node_states: dict[str, tuple[str, str, str]] = {}
        self._settling: dict[str, _Settling] = {}

    def mask(self, container: Container) -> Container:
        """A container as inspected, its labels hidden when swarm discovery runs and it is a
        task's (its service's labels route it: `mask_task_container`)."""
        if self.active:
            return mask_task_container(container, self.label_prefix)
        return container

    def deactivate(self) -> None:
        """Swarm discovery is off: follow nothing."""
        self.active = False
        self._settling.clear()

    async def check(self) -> None:
        """Is the engine a swarm manager (so that swarm discovery can run)? Said once."""
        info = swarm_info(await self.client.info())
        was = self.active
        first = self.info is None
        self.info = info
        self.active = info.is_manager
        if self.active and not was:
            log.info("swarm discovery (%s) on manager node %s", self.mode, info.node_id)
        elif not self.active and (was or first):
            log.warning(
                "discovery.swarm is %s but the engine at %s is not a swarm manager "
                "(LocalNodeState %s, ControlAvailable %s): only its containers are discovered; "
                "run lbsync on a manager node",
                self.mode,
                self.client.endpoint.url,
                info.local_node_state or "unknown",
                str(info.control_available).lower(),
            )
        if not self.active:
            self._settling.clear()

    async def list_services(self, health: Mapping[str, str]) -> dict[str, list[Container]]:
        """Every service as its containers (one list each of services, tasks and nodes);
        `health`: of the real containers here, by id (tasks here take their container's)."""
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
        assert self.mode is not None
        for service in services:
            sid = service_id(service)
            own = grouped.get(sid, [])
            members[sid] = service_containers(service, own, self.mode, self._nodes, health)
            self._service_nodes[sid] = task_nodes(own)
        for sid in set(self._settling) - set(members):
            del self._settling[sid]
        return members

    def listed(self, members: Mapping[str, Sequence[Container]]) -> None:
        """A full listing stored these services' containers in the registry."""
        self._members = {sid: frozenset(c.id for c in group) for sid, group in members.items()}

    @property
    def settling(self) -> bool:
        """Is any service's convergence being followed (its tasks listed again)?"""
        return bool(self._settling)

    def next_poll(self) -> float | None:
        """The loop time of the next listing of a converging service's tasks."""
        return min((s.next_poll for s in self._settling.values()), default=None)

    async def poll(self) -> None:
        """List the tasks of the converging services that are due."""
        now = asyncio.get_running_loop().time()
        due = [sid for sid, s in self._settling.items() if s.next_poll <= now]
        if due:
            await self._refresh_services(due)

    async def take(self, events: list[Event]) -> None:
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

    def _settle(self, service_ids: Iterable[str]) -> None:
        now = asyncio.get_running_loop().time()
        for sid in service_ids:
            self._settling[sid] = _Settling(since=now, next_poll=now + SETTLE_INTERVAL)

    def _local_health(self) -> dict[str, str]:
        """Health of the real containers here, by id: tasks here take their container's."""
        return {c.id: c.health for c in self.registry.containers() if not c.id.startswith("swarm-")}

    async def _refresh_services(
        self, service_ids: Iterable[str], event_time_ns: int | None = None
    ) -> bool:
        """Look each service up again (404: removed) with its tasks; update the registry.

        Returns whether anything a pass reads changed; tells `on_change` itself.
        """
        assert self.mode is not None
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
            fresh[sid] = service_containers(service, tasks, self.mode, self._nodes, health)
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
            old = self._members.get(sid, frozenset())
            new_ids = frozenset(c.id for c in containers)
            for cid in old:
                before[cid] = is_serving(self.registry.get(cid))
            for cid in old - new_ids:
                changed = self.registry.remove(cid) or changed
            for container in containers:
                changed = self.registry.upsert(container) or changed
            if new_ids:
                self._members[sid] = new_ids
            else:
                self._members.pop(sid, None)
        if changed:
            urgent = stopped_serving(self.registry, before)
            self.on_change(Change(urgent, event_time_ns, "swarm", containers=tuple(sorted(fresh))))
        return changed
