"""Which containers are a target's proxies, and whether a target needs one."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

from lbsync.config.schema import TargetConfig
from lbsync.engine.container import Container

__all__ = [
    "ContainerFeed",
    "ProxyTracker",
    "find_proxies",
    "is_proxy",
    "signals_container",
    "uses_containers",
]


def signals_container(target: TargetConfig) -> bool:
    """Is the reload a signal (or exec) through the Docker API? haproxy-runtime reloads the
    structure through the master socket when it has one, else by signal like `signal`."""
    if target.reload == "haproxy-runtime":
        return target.master_socket is None
    return target.reload in ("signal", "exec")


def uses_containers(target: TargetConfig) -> bool:
    """Does this target need a proxy container (rather than a pid file or local commands)?"""
    if target.proxy.pid_file is not None:
        return False
    return target.check == "exec" or signals_container(target)


def is_proxy(target: TargetConfig, container: Container) -> bool:
    """Does the target's `proxy` name this container (running or not)?"""
    selector = target.proxy
    if selector.label is not None and selector.label.matches(container.labels):
        return True
    return selector.name is not None and container.name == selector.name.lstrip("/")


def find_proxies(target: TargetConfig, containers: Iterable[Container]) -> list[Container]:
    """The running containers the target's `proxy` names, sorted by name (then id)."""
    found = [c for c in containers if c.state == "running" and is_proxy(target, c)]
    return sorted(found, key=lambda c: (c.name, c.id))


class ContainerFeed(Protocol):
    """What `ProxyTracker` reads: `lbsync.state.registry.Registry` is one."""

    @property
    def epoch(self) -> int: ...

    def changed_since(self, epoch: int | None) -> frozenset[str] | None: ...

    def get(self, container_id: str) -> Container | None: ...

    def containers(self) -> list[Container]: ...

    def __len__(self) -> int: ...


class ProxyTracker:
    """`find_proxies` for one target, kept up to date from a feed's changes.

    A pass looks at the containers that changed since the last one, not at all of them:
    at 10,000 containers that scan was most of a pass that changed nothing. A new target
    config, or a feed that cannot say what changed, costs one full scan.
    """

    def __init__(self) -> None:
        self._target: TargetConfig | None = None
        self._epoch: int | None = None
        self._named: dict[str, Container] = {}  # every container the target's proxy names
        self._found: list[Container] = []

    def find(self, target: TargetConfig, feed: ContainerFeed) -> list[Container]:
        """The running proxies, sorted by name (then id), as `find_proxies` gives them."""
        changed = feed.changed_since(self._epoch) if target is self._target else None
        if changed is None or 4 * len(changed) > len(feed):
            # A quarter or more changed (a new discovery config logs every id): scan all.
            changed = None
            self._named = {c.id: c for c in feed.containers() if is_proxy(target, c)}
        elif changed:
            for cid in changed:
                container = feed.get(cid)
                if container is not None and is_proxy(target, container):
                    self._named[cid] = container
                else:
                    self._named.pop(cid, None)
        if changed is None or changed:
            self._found = find_proxies(target, self._named.values())
        self._target, self._epoch = target, feed.epoch
        return list(self._found)
