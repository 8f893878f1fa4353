"""What the web side shows, as plain frozen data: the daemon hands a `StatusSnapshot` over.

The web side never reads the daemon itself (its targets, watcher, client or registry): it
is given a callable that returns the current snapshot, so the page, `/status` and
`/healthz` can be tested from a snapshot written by hand, and the daemon can change its
insides without touching them. Times are seconds since the epoch (the web side writes
them as ISO 8601); everything else is already in the form `/status` serves it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class BackendStatus:
    """One server of an upstream: the container that answers and where it is reached."""

    container: str
    container_id: str
    address: str
    port: int
    weight: int
    health: str  # the container's health now: healthy, unhealthy, starting or none


@dataclass(frozen=True, slots=True)
class UpstreamStatus:
    name: str
    balance: str
    servers: tuple[BackendStatus, ...]


@dataclass(frozen=True, slots=True)
class RouteStatus:
    path: str
    upstream: str  # the upstream's name


@dataclass(frozen=True, slots=True)
class HostStatus:
    name: str
    routes: tuple[RouteStatus, ...]


@dataclass(frozen=True, slots=True)
class SkipStatus:
    """A container (or one of its services) that gets no traffic, and why."""

    container: str
    container_id: str
    reason: str
    detail: str


@dataclass(frozen=True, slots=True)
class LeftOutProxy:
    """A container matched by a target's `proxy` but not reloaded (SPEC §1), and why."""

    container: str
    container_id: str
    reason: str
    detail: str


@dataclass(frozen=True, slots=True)
class TargetStatus:
    name: str
    output: str
    template: str
    reload: str
    waiting_for_proxy: bool
    last_pass_at: float | None
    last_reload_at: float | None
    last_reload_result: str | None
    last_error: str | None
    hosts: tuple[HostStatus, ...]
    upstreams: tuple[UpstreamStatus, ...]
    skipped: tuple[SkipStatus, ...]
    proxies_left_out: tuple[LeftOutProxy, ...]  # in container name order


@dataclass(frozen=True, slots=True)
class EngineStatus:
    endpoint: str
    connected: bool
    api_version: str | None  # "1.44"; None before the first answer
    disconnected_since: float | None
    last_error: str | None
    reconnects: int
    events: int  # events seen since start


@dataclass(frozen=True, slots=True)
class ConfigStatus:
    source: str | None  # the config file, None when there is none
    error: str | None  # why the last reload of it was refused, None when it was taken


@dataclass(frozen=True, slots=True)
class ChangeStatus:
    """One reload, for the page's "recent changes"."""

    at: float
    target: str
    change: str
    duration_ms: float


@dataclass(frozen=True, slots=True)
class StatusSnapshot:
    """Everything `/healthz`, `/status` and the status page show, at one moment."""

    started_at: float
    engine: EngineStatus
    config: ConfigStatus
    containers: int  # in the registry
    targets: tuple[TargetStatus, ...]
    recent_changes: tuple[ChangeStatus, ...]  # newest first
    problems: tuple[str, ...]  # what /healthz answers 503 with; empty: healthy
