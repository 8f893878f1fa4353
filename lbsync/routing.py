"""Parsed containers -> the routing model templates receive (SPEC §2, §3a, §5.6).

Pure: no I/O, no logging. Problems come back as data: `RoutingModel.skips` (why a container
or service gets no traffic) and `RoutingModel.warnings` (group conflicts, upstream name
clashes). The same entries in any order give an equal model.

Groups are keyed by (host, path). Every enabled, selected container's valid services define
groups, running or not, so a host whose containers are all stopped keeps its route with an
upstream of no servers (the template answers 503). Only containers that get traffic
(running; healthy when they have a health check and `discovery.require_healthy`) add servers.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterable
from dataclasses import fields
from operator import attrgetter
from typing import Any, NamedTuple

from lbsync.config import DiscoveryConfig, TargetConfig
from lbsync.labels import ParsedContainer, parse_services
from lbsync.model import (
    Container,
    ContainerRef,
    DiscoveredContainer,
    Host,
    NetworkAttachment,
    Route,
    RoutingModel,
    Server,
    Service,
    Skip,
    Upstream,
)

__all__ = [
    "NOT_HEALTHY",
    "NOT_PUBLISHED",
    "NOT_RUNNING",
    "NO_ADDRESS",
    "ParsedEntry",
    "build_model",
    "derived_upstream_name",
    "parse_entry",
]

# Skip reasons added here (labels.py has the label ones).
NO_ADDRESS = "no_address"  # no usable IP for the container
NOT_PUBLISHED = "not_published"  # address: published, and the service port is not published
NOT_RUNNING = "not_running"  # declared services, but not running (its hosts answer 503)
NOT_HEALTHY = "not_healthy"  # running, has a health check, not healthy, require_healthy on

_SLUG_RE = re.compile(r"[^a-z0-9]+")
_SLUG_MAX = 40
_UNSPECIFIED_IPS = frozenset(("", "0.0.0.0", "::"))


class ParsedEntry(NamedTuple):
    """A container with its parsed labels: what `build_model` takes.

    Parsing depends only on the container's id, name, labels, env and exposed ports and on
    the discovery config, so a registry keeps one entry per container and refreshes it with
    `parse_entry(container, discovery, previous)`, which re-parses only when those changed
    (a state or health change reuses the parse). `discovery` is the config it was parsed
    with (None: unknown, `parse_entry` then always re-parses). A NamedTuple: cheap to build.
    """

    container: Container
    parsed: ParsedContainer
    discovery: DiscoveryConfig | None = None


def _same_parse_inputs(a: Container, b: Container) -> bool:
    return (
        a.id == b.id
        and a.name == b.name
        and a.exposed_ports == b.exposed_ports
        and a.labels == b.labels
        and a.env == b.env
    )


def parse_entry(
    container: Container, discovery: DiscoveryConfig, previous: ParsedEntry | None = None
) -> ParsedEntry:
    """`container` with its `parse_services`, reusing `previous.parsed` when still valid."""
    if (
        previous is not None
        and previous.discovery == discovery
        and (previous.container is container or _same_parse_inputs(previous.container, container))
    ):
        if previous.container is container:
            return previous
        return ParsedEntry(container, previous.parsed, discovery)
    return ParsedEntry(container, parse_services(container, discovery), discovery)


def derived_upstream_name(host: str, path: str) -> str:
    """The upstream name of a group without an explicit `upstream` label.

    `lbsync_<slug>_<hash>`: slug is the host with a leading `*.` written as `wildcard_` and
    every run of characters outside `[a-z0-9]` replaced by one `_`, cut to 40 characters;
    hash is the first 8 hex digits of the SHA-1 of the UTF-8 bytes of host + path (for
    example `a.test` + `/api` hashes `a.test/api`). So `*.example.com` with `/` gives
    `lbsync_wildcard_example_com_` followed by 8 hex digits. Hosts never contain `/` and
    paths always start with it, so host + path is unambiguous.
    """
    slug_source = "wildcard_" + host[2:] if host.startswith("*.") else host
    slug = _SLUG_RE.sub("_", slug_source)[:_SLUG_MAX]
    digest = hashlib.sha1((host + path).encode(), usedforsecurity=False).hexdigest()[:8]
    return f"lbsync_{slug}_{digest}"


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
# otherwise the plain constructor runs. tests/test_routing.py checks both give equal objects.
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
# container name). Tuples compare in C (max() finds the newest); `seq` is unique, so a
# comparison never reaches the Service.
_Member = tuple[int, str, str, int, Service, Server | None, str]
_server_key = attrgetter("container.name", "port", "address", "container.id")
_GroupKey = tuple[str, str]


_entry_name = attrgetter("container.name")  # a str key: CPython's fast path for str sorts
_entry_name_id = attrgetter("container.name", "container.id")


def _route_key(route: Route) -> tuple[int, str]:
    return (-len(route.path), route.path)


def _skip_key(skip: Skip) -> tuple[str, str, str, str]:
    return (skip.container.name, skip.reason, skip.container.id, skip.detail)


def _group_label(key: _GroupKey) -> str:
    return f"{key[0]}{key[1]}"


def build_model(
    containers: Iterable[ParsedEntry],
    discovery: DiscoveryConfig,
    target: TargetConfig,
    proxy_networks: frozenset[str],
) -> RoutingModel:
    """The routing model for one target (SPEC §2, §3a).

    `proxy_networks`: names of the networks the proxy container is on (empty when unknown).
    Address rules: host-network containers use `discovery.host_address` and the service
    port; otherwise the IP on the network named by the container's network label (a
    container not on it is skipped: no silent fallback), else on a network it shares with
    the proxy (the first by name when several), else its only network with an IP.
    With `discovery.address == "published"` the published host port of the service port is
    used, on its host IP unless unspecified (`discovery.host_address` then).
    """
    select = target.select
    require_healthy = discovery.require_healthy
    published = discovery.address == "published"
    host_address = discovery.host_address
    network_label = discovery.label_prefix + ".network"

    # Walk the containers by name (then id): `discovered` comes out sorted and every group's
    # members, hence its servers, come out in container-name order. Only a group holding
    # several services of one container (or two containers of one name) still needs a
    # sort by port; those are noted in `resort`.
    ordered = sorted(containers, key=_entry_name)
    same_names = len(set(map(_entry_name, ordered))) != len(ordered)
    if same_names:
        ordered.sort(key=_entry_name_id)

    groups: dict[_GroupKey, list[_Member]] = {}
    discovered: list[DiscoveredContainer] = []
    skips: list[Skip] = []
    seq = 0
    # id(Service) -> the member lists of the groups it belongs to.
    buckets_of: dict[int, list[list[_Member]]] = {}
    resort: set[int] = set()  # ids of member lists to sort by (name, port, address, id)

    for entry in ordered:
        c = entry.container
        if select is not None and not select.matches(c.labels):
            continue
        parsed = entry.parsed
        if parsed.skips:
            skips.extend(parsed.skips)
        if not parsed.enabled:
            continue
        services = parsed.services
        discovered.append(_discovered(c, services))
        if not services:
            continue

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
        elif require_healthy and c.health != "healthy" and c.health != "none":
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
                address = host_address
            elif not published:
                nets = c.networks
                if len(nets) == 1 and nets[0].ip and parsed.network is None:
                    address = nets[0].ip  # the common case; every rule agrees
                else:
                    picked = _pick_network(c, parsed.network, proxy_networks, network_label)
                    if isinstance(picked, str):
                        skips.append(
                            Skip(ref, NO_ADDRESS, f"container {c.name}: {picked}; no traffic")
                        )
                        ref = None
                    else:
                        address = picked.ip

        reported_ports: set[int] | None = None
        multi = len(services) > 1 or same_names
        for service in services:
            server: Server | None = None
            if ref is not None:
                if address is not None:
                    server = _server(address, service.port, service.weight, ref)
                else:  # published mode
                    found = _published(c, service.port, host_address)
                    if found is not None:
                        server = _server(found[0], found[1], service.weight, ref)
                    elif reported_ports is None or service.port not in reported_ports:
                        if reported_ports is None:
                            reported_ports = set()
                        reported_ports.add(service.port)
                        skips.append(
                            Skip(
                                ref,
                                NOT_PUBLISHED,
                                f"container {c.name}: port {service.port} is not published "
                                "on the host (discovery.address is published); "
                                "no traffic to it",
                            )
                        )
            seq += 1
            member: _Member = (c.created_ns, c.id, service.name, seq, service, server, c.name)
            # Replicas share their parsed Service objects (labels.py memoizes): look the
            # group buckets up once per Service object, not once per container and host.
            # The members keep each Service alive until we return, so no id is reused.
            buckets = buckets_of.get(id(service))
            if buckets is None:
                buckets = buckets_of[id(service)] = []
                path = service.path
                for host in service.hosts:
                    key = (host, path)
                    bucket = groups.get(key)
                    if bucket is None:
                        bucket = groups[key] = []
                    buckets.append(bucket)
            for bucket in buckets:
                bucket.append(member)
            if multi:
                resort.update(map(id, buckets))

    warnings: list[str] = []
    keys = sorted(groups)

    # Per group: the newest container decides upstream and balance; servers sorted.
    chosen: dict[_GroupKey, tuple[Service, tuple[Server, ...]]] = {}
    for key in keys:
        members = groups[key]
        if len(members) == 1:
            only = members[0]
            chosen[key] = (only[4], () if only[5] is None else (only[5],))
            continue
        newest = max(members)
        decider = newest[4]
        upstream = decider.upstream
        balance = decider.balance
        for m in members:
            other = m[4]
            if other is not decider and (other.upstream != upstream or other.balance != balance):
                warnings.append(_conflict_warning(key, newest, members))
                break
        servers = [m[5] for m in members if m[5] is not None]
        if id(members) in resort:
            servers.sort(key=_server_key)
            unique: list[Server] = []
            for server in servers:  # one server per (container, port)
                last = unique[-1] if unique else None
                if last is None or server.port != last.port or server.container != last.container:
                    unique.append(server)
            servers = unique
        chosen[key] = (decider, tuple(servers))

    names = _name_upstreams(keys, groups, chosen, warnings)

    upstream_by_name: dict[str, Upstream] = {}
    routes_by_host: dict[str, list[Route]] = {}
    for key in keys:
        name = names[key]
        upstream_obj = upstream_by_name.get(name)
        if upstream_obj is None:
            decider, servers_t = chosen[key]
            upstream_obj = upstream_by_name[name] = Upstream(name, decider.balance, servers_t)
        route = Route(key[1], upstream_obj)
        host_routes = routes_by_host.get(key[0])
        if host_routes is None:
            routes_by_host[key[0]] = [route]
        else:
            host_routes.append(route)

    hosts = tuple(
        Host(host, tuple(sorted(routes, key=_route_key)) if len(routes) > 1 else (routes[0],))
        for host, routes in sorted(routes_by_host.items())
    )
    upstreams = tuple(upstream_by_name[n] for n in sorted(upstream_by_name))
    skips.sort(key=_skip_key)
    warnings.sort()
    return RoutingModel(hosts, upstreams, tuple(discovered), tuple(skips), tuple(warnings))


def _conflict_warning(key: _GroupKey, newest: _Member, members: list[_Member]) -> str:
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
        f"group {_group_label(key)}: its containers disagree on {' and '.join(parts)}; "
        f"the newest container, {newest[6]}, wins"
    )


def _name_upstreams(
    keys: list[_GroupKey],
    groups: dict[_GroupKey, list[_Member]],
    chosen: dict[_GroupKey, tuple[Service, tuple[Server, ...]]],
    warnings: list[str],
) -> dict[_GroupKey, str]:
    """Each group's upstream name, unique across groups.

    An explicit name claimed by several groups goes to the first group by (host, path);
    a later group shares it when it has exactly the same members (the same services of
    the same containers: typically one service listing several hosts), else it falls back
    to its derived name with a warning. Names are compared ignoring case. An explicit name
    equal to the derived name another group uses falls back too.
    """
    names: dict[_GroupKey, str] = {}
    # Names are compared ignoring case: nginx does (`App` and `app` are one upstream).
    owners: dict[str, tuple[_GroupKey, frozenset[tuple[str, str]], str]] = {}
    for key in keys:
        explicit = chosen[key][0].upstream
        if explicit is None:
            names[key] = derived_upstream_name(*key)
            continue
        members = frozenset((m[1], m[2]) for m in groups[key])
        folded = explicit.lower()
        owner = owners.get(folded)
        if owner is None:
            owners[folded] = (key, members, explicit)
            names[key] = explicit
        elif owner[1] == members and owner[2] == explicit:
            names[key] = explicit
        else:
            names[key] = derived_upstream_name(*key)
            warnings.append(
                f"group {_group_label(key)}: upstream name {explicit!r} is already used by "
                f"group {_group_label(owner[0])}; using {names[key]!r}"
            )
    if owners:
        derived_in_use = {n for k, n in names.items() if n != chosen[k][0].upstream}
        for folded, (_, _, explicit) in owners.items():
            if folded not in derived_in_use:  # derived names are lowercase
                continue
            for k in keys:
                if names[k] == explicit and chosen[k][0].upstream == explicit:
                    names[k] = derived_upstream_name(*k)
                    warnings.append(
                        f"group {_group_label(k)}: upstream name {explicit!r} is the derived "
                        f"name of another group; using {names[k]!r}"
                    )
    return names
