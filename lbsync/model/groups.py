"""One container's part of a routing model, and a (host, path) group settled (SPEC §2, §5.6).

Pure: no I/O, no logging. Groups are keyed by (host, path). Every enabled, selected
container's valid services define groups, running or not, so a host whose containers are
all stopped keeps its route with an upstream of no servers (the template answers 503). Only
containers that get traffic (running; healthy when they have a health check and
`discovery.require_healthy`) add servers. `contribute` computes what one container adds
(its servers, its skips, the groups it joins); `settle` decides a group from its members.
`lbsync.model.builder` puts the contributions together into a `RoutingModel`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import fields
from operator import attrgetter
from typing import Any, NamedTuple

from lbsync.config.selectors import LabelSelector
from lbsync.engine.container import Container, NetworkAttachment
from lbsync.model.entries import ParsedEntry
from lbsync.model.types import (
    ContainerRef,
    DiscoveredContainer,
    Route,
    Server,
    Service,
    Skip,
)

__all__ = [
    "NOT_HEALTHY",
    "NOT_PUBLISHED",
    "NOT_RUNNING",
    "NO_ADDRESS",
    "Contribution",
    "Group",
    "GroupKey",
    "Member",
    "ModelContext",
    "contribute",
    "group_label",
    "route_key",
    "settle",
    "skip_key",
]

# Skip reasons added here (label_grammar.py has the label ones).
NO_ADDRESS = "no_address"  # no usable IP for the container
NOT_PUBLISHED = "not_published"  # address: published, and the service port is not published
NOT_RUNNING = "not_running"  # declared services, but not running (its hosts answer 503)
NOT_HEALTHY = "not_healthy"  # running, has a health check, not healthy, require_healthy on

_UNSPECIFIED_IPS = frozenset(("", "0.0.0.0", "::"))


def _pick_network(
    container: Container, wanted: str | None, proxy_networks: frozenset[str], label: str
) -> NetworkAttachment | str:
    """The attachment whose IP to use, else the sentence saying why there is none."""
    with_ip = [n for n in container.networks if n.ip]
    if wanted is not None:
        for net in container.networks:
            if net.name == wanted:
                if net.ip:
                    return net
                return f"it has no IP address on network {wanted!r} named by label {label}"
        attached = ", ".join(sorted(n.name for n in container.networks)) or "none"
        return (
            f"it is not attached to network {wanted!r} named by label {label} "
            f"(attached: {attached}; compose network names carry the project prefix)"
        )
    shared = [n for n in with_ip if n.name in proxy_networks]
    if shared:
        return min(shared, key=lambda n: n.name)
    if len(with_ip) == 1:
        return with_ip[0]
    if not with_ip:
        mode = container.network_mode
        how = f" (network mode {mode})" if mode not in ("default", "bridge") else ""
        return f"it has no IP address on any network{how}"
    names = ", ".join(sorted(n.name for n in with_ip))
    return (
        f"it is on several networks ({names}), none shared with the proxy; "
        f"set label {label} to choose one"
    )


def _published(container: Container, port: int, host_address: str) -> tuple[str, int] | None:
    """(address, host port) for a container port published on the host: IPv4 bindings
    first, then the lowest host port; an unspecified host IP means `host_address`."""
    best: tuple[bool, int, str] | None = None
    for pub in container.published_ports:
        if pub.container_port == port:
            key = (":" in pub.host_ip, pub.host_port, pub.host_ip)
            if best is None or key < best:
                best = key
    if best is None:
        return None
    address = host_address if best[2] in _UNSPECIFIED_IPS else best[2]
    return address, best[1]


# Fast constructors for the three model objects built once per container on every pass.
# A frozen dataclass __init__ calls object.__setattr__ per field; setting the slots through
# their descriptors does the same at about half the cost (10,000 containers: several ms).
# Used only while the class has exactly the expected fields, slots and no __post_init__;
# otherwise the plain constructor runs. tests/model/test_routing.py checks both give equal objects.
_new = object.__new__


def _slot_setters(cls: type, names: tuple[str, ...]) -> tuple[Callable[[object, Any], None], ...]:
    """The slot descriptors' setters of a slots dataclass whose fields are exactly `names`
    (in that order) and that has no __post_init__, else ()."""
    if tuple(f.name for f in fields(cls)) != names or hasattr(cls, "__post_init__"):
        return ()
    try:
        return tuple(vars(cls)[name].__set__ for name in names)
    except (KeyError, AttributeError):  # not a slots class
        return ()


_SERVER_SET = _slot_setters(Server, ("address", "port", "weight", "container"))
_REF_SET = _slot_setters(ContainerRef, ("id", "name"))
_DISCOVERED_SET = _slot_setters(DiscoveredContainer, ("id", "name", "labels", "health", "services"))


def _server(address: str, port: int, weight: int, container: ContainerRef) -> Server:
    """`Server(...)` without the frozen dataclass __init__ (one object.__setattr__ per
    field): the model's hot path builds one per container and pass."""
    if not _SERVER_SET:
        return Server(address, port, weight, container)
    server: Server = _new(Server)
    set_address, set_port, set_weight, set_container = _SERVER_SET
    set_address(server, address)
    set_port(server, port)
    set_weight(server, weight)
    set_container(server, container)
    return server


def _ref(id_: str, name: str) -> ContainerRef:
    if not _REF_SET:
        return ContainerRef(id_, name)
    ref: ContainerRef = _new(ContainerRef)
    _REF_SET[0](ref, id_)
    _REF_SET[1](ref, name)
    return ref


def _discovered(c: Container, services: tuple[Service, ...]) -> DiscoveredContainer:
    if not _DISCOVERED_SET:
        return DiscoveredContainer(c.id, c.name, c.labels, c.health, services)
    item: DiscoveredContainer = _new(DiscoveredContainer)
    set_id, set_name, set_labels, set_health, set_services = _DISCOVERED_SET
    set_id(item, c.id)
    set_name(item, c.name)
    set_labels(item, c.labels)
    set_health(item, c.health)
    set_services(item, services)
    return item


# A group member: (created_ns, container id, service name, seq, service, server or None,
# container name). Tuples compare in C (max() finds the newest); `seq` (the service's
# index in its container) makes (created_ns, id, service name, seq) unique, so a
# comparison never reaches the Service.
Member = tuple[int, str, str, int, Service, Server | None, str]
server_key = attrgetter("container.name", "port", "address", "container.id")
GroupKey = tuple[str, str]


def route_key(route: Route) -> tuple[int, str]:
    return (-len(route.path), route.path)


def skip_key(skip: Skip) -> tuple[str, str, str, str]:
    return (skip.container.name, skip.reason, skip.container.id, skip.detail)


def group_label(key: GroupKey) -> str:
    return f"{key[0]}{key[1]}"


class ModelContext(NamedTuple):
    """Everything besides the containers that a model depends on."""

    select: LabelSelector | None
    require_healthy: bool
    published: bool
    host_address: str
    network_label: str
    proxy_networks: frozenset[str]


class Contribution(NamedTuple):
    """What one container adds to the model, computed once per entry and context."""

    entry: ParsedEntry
    discovered: DiscoveredContainer | None  # None: not selected or not enabled
    skips: tuple[Skip, ...]
    groups: tuple[tuple[GroupKey, tuple[Member, ...]], ...]  # its members per group
    multi: bool  # several services: the servers of its groups need a sort by port


class Group(NamedTuple):
    """A settled (host, path) group: who decides its upstream, and its servers."""

    members: tuple[Member, ...]  # in container (name, id) order
    decider: Service
    servers: tuple[Server, ...]
    warning: str | None  # its containers disagree on upstream or balance


def contribute(entry: ParsedEntry, ctx: ModelContext) -> Contribution:
    c = entry.container
    if ctx.select is not None and not ctx.select.matches(c.labels):
        return Contribution(entry, None, (), (), False)
    parsed = entry.parsed
    if not parsed.enabled:
        return Contribution(entry, None, parsed.skips, (), False)
    services = parsed.services
    discovered = _discovered(c, services)
    if not services:
        return Contribution(entry, discovered, parsed.skips, (), False)
    if (
        len(services) == 1
        and c.state == "running"
        and not parsed.skips
        and (c.health == "none" or c.health == "healthy" or not ctx.require_healthy)
        and parsed.network is None
        and not ctx.published
        and (c.network_mode == "host" or (len(c.networks) == 1 and c.networks[0].ip))
    ):
        # The common case (one service, serving, one address), kept cheap: a first pass
        # over 10,000 containers runs this 10,000 times.
        only = services[0]
        at = ctx.host_address if c.network_mode == "host" else c.networks[0].ip
        one: tuple[Member] = (
            (
                c.created_ns,
                c.id,
                only.name,
                0,
                only,
                _server(at, only.port, only.weight, _ref(c.id, c.name)),
                c.name,
            ),
        )
        return Contribution(
            entry, discovered, (), tuple([((host, only.path), one) for host in only.hosts]), False
        )

    skips = list(parsed.skips)
    ref: ContainerRef | None = None
    address: str | None = None
    if c.state != "running":
        skips.append(
            Skip(
                ContainerRef(c.id, c.name),
                NOT_RUNNING,
                f"container {c.name} is not running (state {c.state}), so it gets no "
                "traffic; its hosts stay and answer 503 while no other container serves them",
            )
        )
    elif ctx.require_healthy and c.health != "healthy" and c.health != "none":
        skips.append(
            Skip(
                ContainerRef(c.id, c.name),
                NOT_HEALTHY,
                f"container {c.name} is running but {c.health}, so it gets no traffic until "
                "its health check passes (discovery.require_healthy)",
            )
        )
    else:
        ref = _ref(c.id, c.name)
        if c.network_mode == "host":
            address = ctx.host_address
        elif not ctx.published:
            nets = c.networks
            if len(nets) == 1 and nets[0].ip and parsed.network is None:
                address = nets[0].ip  # the common case; every rule agrees
            else:
                picked = _pick_network(c, parsed.network, ctx.proxy_networks, ctx.network_label)
                if isinstance(picked, str):
                    skips.append(Skip(ref, NO_ADDRESS, f"container {c.name}: {picked}; no traffic"))
                    ref = None
                else:
                    address = picked.ip

    reported_ports: set[int] = set()
    groups: dict[GroupKey, list[Member]] = {}
    for seq, service in enumerate(services):
        server: Server | None = None
        if ref is not None:
            if address is not None:
                server = _server(address, service.port, service.weight, ref)
            else:  # published mode
                found = _published(c, service.port, ctx.host_address)
                if found is not None:
                    server = _server(found[0], found[1], service.weight, ref)
                elif service.port not in reported_ports:
                    reported_ports.add(service.port)
                    skips.append(
                        Skip(
                            ref,
                            NOT_PUBLISHED,
                            f"container {c.name}: port {service.port} is not published "
                            "on the host (discovery.address is published); no traffic to it",
                        )
                    )
        member: Member = (c.created_ns, c.id, service.name, seq, service, server, c.name)
        path = service.path
        for host in service.hosts:
            bucket = groups.get((host, path))
            if bucket is None:
                groups[(host, path)] = [member]
            else:
                bucket.append(member)
    return Contribution(
        entry,
        discovered,
        tuple(skips),
        tuple((key, tuple(members)) for key, members in groups.items()),
        len(services) > 1,
    )


def settle(key: GroupKey, members: tuple[Member, ...], resort: bool) -> Group:
    """The newest container decides upstream and balance; one server per (container, port)."""
    if len(members) == 1:
        only = members[0]
        return Group(members, only[4], () if only[5] is None else (only[5],), None)
    newest = max(members)
    decider = newest[4]
    upstream = decider.upstream
    balance = decider.balance
    warning = None
    for m in members:
        other = m[4]
        if other is not decider and (other.upstream != upstream or other.balance != balance):
            warning = _conflict_warning(key, newest, members)
            break
    servers = [m[5] for m in members if m[5] is not None]
    if resort:
        servers.sort(key=server_key)
        unique: list[Server] = []
        for server in servers:
            last = unique[-1] if unique else None
            if last is None or server.port != last.port or server.container != last.container:
                unique.append(server)
        servers = unique
    return Group(members, decider, tuple(servers), warning)


def _conflict_warning(key: GroupKey, newest: Member, members: Sequence[Member]) -> str:
    decider = newest[4]
    parts: list[str] = []
    upstreams = {m[4].upstream for m in members}
    if len(upstreams) > 1:
        shown = ", ".join(sorted("(derived)" if u is None else repr(u) for u in upstreams))
        mine = "the derived name" if decider.upstream is None else repr(decider.upstream)
        parts.append(f"upstream ({shown}; using {mine})")
    balances = {m[4].balance for m in members}
    if len(balances) > 1:
        parts.append(f"balance ({', '.join(sorted(balances))}; using {decider.balance})")
    return (
        f"group {group_label(key)}: its containers disagree on {' and '.join(parts)}; "
        f"the newest container, {newest[6]}, wins"
    )
