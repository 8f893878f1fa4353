"""Which containers are a target's proxies, and whether a target needs one: pure functions."""

from __future__ import annotations

from collections.abc import Iterable

from lbsync.config import TargetConfig
from lbsync.model import Container

__all__ = ["find_proxies", "is_proxy", "signals_container", "uses_containers"]


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
