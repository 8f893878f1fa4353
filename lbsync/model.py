"""The data every pass step hands to the next: frozen, plain, and free of I/O.

`Container` is the narrow view of one engine container, parsed once at the boundary
(`lbsync.containers`). `Service` is what one container declares through its labels.
`Host`/`Route`/`Upstream`/`Server` are the routing model templates receive (SPEC §3a).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

EMPTY_MAPPING: Mapping[str, str] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class NetworkAttachment:
    """One network a container is connected to, with its IPv4 address ("" when none)."""

    name: str
    network_id: str
    ip: str


@dataclass(frozen=True, slots=True)
class PublishedPort:
    """A container port published on the host (`-p host_ip:host_port:container_port`)."""

    container_port: int
    host_ip: str
    host_port: int


@dataclass(frozen=True, slots=True)
class Container:
    """What lbsync needs to know about one container; built from an inspect answer."""

    id: str
    name: str  # without the leading "/"
    created_ns: int  # creation time in nanoseconds since the epoch, for "newest wins"
    labels: Mapping[str, str] = field(default_factory=lambda: EMPTY_MAPPING)
    env: Mapping[str, str] = field(default_factory=lambda: EMPTY_MAPPING)
    state: str = "running"  # created, running, paused, restarting, removing, exited, dead
    health: str = "none"  # healthy, unhealthy, starting, none
    network_mode: str = "default"  # host, bridge, none, container:<id>, or a network name
    networks: tuple[NetworkAttachment, ...] = ()
    exposed_ports: tuple[int, ...] = ()  # TCP ports only, sorted
    published_ports: tuple[PublishedPort, ...] = ()
    stop_signal: str = "SIGTERM"
    started_at: str = ""  # State.StartedAt: tells one run of the container from the next

    @property
    def short_id(self) -> str:
        return self.id[:12]

    @property
    def uses_host_network(self) -> bool:
        return self.network_mode == "host"


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
