"""Small builders for routing models in template tests (nginx and HAProxy alike)."""

from __future__ import annotations

import hashlib

from lbsync.model.types import (
    ContainerRef,
    DiscoveredContainer,
    Host,
    Route,
    RoutingModel,
    Server,
    Upstream,
)


def ref(name: str) -> ContainerRef:
    return ContainerRef(id=hashlib.sha256(name.encode()).hexdigest(), name=name)


def srv(address: str, port: int = 8080, weight: int = 1, name: str = "app-1") -> Server:
    return Server(address=address, port=port, weight=weight, container=ref(name))


def ups(name: str, *servers: Server, balance: str = "round_robin") -> Upstream:
    return Upstream(name=name, balance=balance, servers=servers)


def host(name: str, *routes: tuple[str, Upstream]) -> Host:
    ordered = sorted(routes, key=lambda r: (-len(r[0]), r[0]))
    return Host(name=name, routes=tuple(Route(path=p, upstream=u) for p, u in ordered))


def model(
    *hosts: Host,
    extra: tuple[Upstream, ...] = (),
    containers: tuple[DiscoveredContainer, ...] = (),
) -> RoutingModel:
    """Hosts sorted, and every upstream their routes name (plus `extra`) sorted by name."""
    by_name = {r.upstream.name: r.upstream for h in hosts for r in h.routes}
    by_name.update({u.name: u for u in extra})
    return RoutingModel(
        hosts=tuple(sorted(hosts, key=lambda h: h.name)),
        upstreams=tuple(by_name[n] for n in sorted(by_name)),
        containers=containers,
    )
