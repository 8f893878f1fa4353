"""The data the routing model hands to render: frozen, plain, and free of I/O.

`Service` is what one container declares through its labels.
`Host`/`Route`/`Upstream`/`Server` are the routing model templates receive (SPEC §3a).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Service:
    """One routable service a container declares (the default one has name "")."""

    name: str
    hosts: tuple[str, ...]
    port: int
    path: str = "/"
    upstream: str | None = None  # explicit `lbsync.upstream`; None = the derived name
    weight: int = 1
    balance: str = "round_robin"


@dataclass(frozen=True, slots=True)
class ContainerRef:
    id: str
    name: str


@dataclass(frozen=True, slots=True)
class Server:
    address: str
    port: int
    weight: int
    container: ContainerRef


@dataclass(frozen=True, slots=True)
class Upstream:
    name: str
    balance: str
    servers: tuple[Server, ...]


@dataclass(frozen=True, slots=True)
class Route:
    path: str
    upstream: Upstream


@dataclass(frozen=True, slots=True)
class Host:
    name: str
    routes: tuple[Route, ...]


@dataclass(frozen=True, slots=True)
class Skip:
    """Why a container, or one of its services, gets no traffic; shown to operators."""

    container: ContainerRef
    reason: str  # a short stable key: "invalid_label", "no_port", "not_running", ...
    detail: str  # one human sentence naming the container and the label


@dataclass(frozen=True, slots=True)
class DiscoveredContainer:
    """A container as templates see it (SPEC §3a `containers`)."""

    id: str
    name: str
    labels: Mapping[str, str]
    health: str
    services: tuple[Service, ...]


@dataclass(frozen=True, slots=True)
class RoutingModel:
    hosts: tuple[Host, ...]
    upstreams: tuple[Upstream, ...]
    containers: tuple[DiscoveredContainer, ...]
    skips: tuple[Skip, ...] = ()
    warnings: tuple[str, ...] = ()  # one sentence each: group conflicts, upstream name clashes
