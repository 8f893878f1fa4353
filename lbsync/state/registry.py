"""The in-memory registry: every container the engine has, as last inspected.

It also remembers containers that are being stopped (a terminating `kill` was seen) so they
leave the pool before the engine reports them dead, and logs which containers changed, so
that a reader (the model's parsed entries, a target's proxies) touches only those.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping

from lbsync.engine.container import Container

#: The state a container is shown in between a terminating signal and its `die`.
STOPPING = "stopping"
#: Change-log entries kept beyond twice the registry's size; a reader further behind reads all.
CHANGE_LOG_SLACK = 1024


def is_serving(container: Container | None) -> bool:
    """Could this container be getting traffic (ignoring labels and addresses)?"""
    return (
        container is not None
        and container.state == "running"
        and container.health in ("healthy", "none")
    )


def stopped_serving(registry: Registry, serving_before: Mapping[str, bool]) -> bool:
    """Did a container that was serving (`serving_before`: id -> `is_serving` then) stop?
    Such a change is urgent: the pass skips its quiet window."""
    return any(
        serving and not is_serving(registry.get(cid)) for cid, serving in serving_before.items()
    )


def exited(container: Container) -> Container:
    """`container` as Docker's inspect shows it once its process has ended for good.

    What an inspect right after such a `die` answers (measured on Docker 20.10), so the
    watcher can store it without asking: stopping the health monitor leaves a checked
    container `unhealthy`, and releasing the network clears the endpoints' addresses and the
    port map. `exposed_ports` stays: Docker publishes only exposed ports, so the port map
    never adds one. Not for a container a restart policy brings back (`restarting`) nor for
    Podman, whose stopped containers look different: those are inspected.
    """
    return dataclasses.replace(
        container,
        state="exited",
        health="none" if container.health == "none" else "unhealthy",
        networks=tuple(
            n if not n.ip else dataclasses.replace(n, ip="") for n in container.networks
        ),
        published_ports=(),
    )


class Registry:
    """Containers by id. Mutated only by the watcher; read by passes as a snapshot.

    Reads cost what changed: the view of each container (a stopping one shown as such) is
    kept up to date by the mutations, and every changed view is appended to a change log,
    numbered by `epoch`: a reader that remembers the epoch it last read at asks
    `changed_since` for the ids changed after it and touches only those, so a pass at 1,000
    containers does not touch 1,000. The log is bounded: a reader too far behind gets None
    and reads everything. A reader whose reading of every container changed (the model's
    parsed entries, for a new discovery config) logs every id (`log_all`).
    """

    def __init__(self) -> None:
        self._containers: dict[str, Container] = {}
        self._views: dict[str, Container] = {}  # what passes see: stopping ones as such
        # id -> StartedAt of the run that was told to stop; a new run clears the mark.
        self._stopping: dict[str, str] = {}
        self._log: list[str] = []  # ids of changed views, oldest first
        self._log_base = 0  # the epoch of `_log[0]`
        self.generation = 0  # bumps on every change, so a pass can tell it saw the latest

    def __len__(self) -> int:
        return len(self._containers)

    def __contains__(self, container_id: object) -> bool:
        return container_id in self._containers

    def get(self, container_id: str) -> Container | None:
        """The container as passes see it (a stopping one shows state `stopping`)."""
        return self._views.get(container_id)

    def raw(self, container_id: str) -> Container | None:
        return self._containers.get(container_id)

    def _refresh_view(self, container_id: str) -> None:
        container = self._containers[container_id]
        if container_id in self._stopping:
            container = dataclasses.replace(container, state=STOPPING)
        self._views[container_id] = container
        self._changed(container_id)

    def _changed(self, container_id: str) -> None:
        self._log.append(container_id)
        self._trim_log()

    def _trim_log(self) -> None:
        log = self._log
        if len(log) > 2 * len(self._views) + CHANGE_LOG_SLACK:
            half = len(log) // 2
            del log[:half]
            self._log_base += half

    @property
    def epoch(self) -> int:
        """Where the change log is now: hand it to `changed_since` later."""
        return self._log_base + len(self._log)

    def changed_since(self, epoch: int | None) -> frozenset[str] | None:
        """Ids whose view changed (or went) after `epoch`; None: not known, read them all."""
        if epoch is None or epoch < self._log_base:
            return None
        return frozenset(self._log[epoch - self._log_base :])

    def log_all(self) -> None:
        """Log every container as changed (their views are the same): for a reader whose
        reading of all of them changed, so that the other readers read them all again."""
        self._log.extend(self._views)
        self._trim_log()

    def upsert(self, container: Container) -> bool:
        """Store a fresh inspect; True when anything a pass reads changed."""
        stopping_run = self._stopping.get(container.id)
        unmarked = False
        if stopping_run is not None and (
            container.state != "running" or container.started_at != stopping_run
        ):
            # It died, or it is a new run (restart): the stop mark has done its job.
            del self._stopping[container.id]
            unmarked = True
        before = self._containers.get(container.id)
        if before == container:
            if unmarked:
                self._refresh_view(container.id)
            return False
        self._containers[container.id] = container
        self._refresh_view(container.id)
        self.generation += 1
        return True

    def remove(self, container_id: str) -> bool:
        self._stopping.pop(container_id, None)
        self._views.pop(container_id, None)
        self._changed(container_id)
        if self._containers.pop(container_id, None) is None:
            return False
        self.generation += 1
        return True

    def mark_stopping(self, container_id: str) -> bool:
        """A terminating signal was sent: take it out of the pool now. True if that changed."""
        container = self._containers.get(container_id)
        if container is None or container_id in self._stopping or container.state != "running":
            return False
        self._stopping[container_id] = container.started_at
        self._refresh_view(container_id)
        self.generation += 1
        return True

    def replace_all(self, containers: Iterable[Container]) -> bool:
        """Reconcile with a full listing: add, update and drop. True when anything changed."""
        fresh = {c.id: c for c in containers}
        changed = False
        for gone in set(self._containers) - set(fresh):
            changed = self.remove(gone) or changed
        for container in fresh.values():
            changed = self.upsert(container) or changed
        return changed

    def containers(self) -> list[Container]:
        """Every container, stopping ones shown as such, in no particular order."""
        return list(self._views.values())
