"""What the engine says of one container, parsed once at the boundary (`lbsync.engine.inspect`):
narrow, frozen and free of I/O."""

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
