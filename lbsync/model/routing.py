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

import bisect
import gc
import hashlib
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import fields
from operator import attrgetter, itemgetter
from typing import Any, NamedTuple

from lbsync.config.schema import DiscoveryConfig, TargetConfig
from lbsync.config.selectors import LabelSelector
from lbsync.engine.container import Container, NetworkAttachment
from lbsync.model.labels import ParsedContainer, parse_services
from lbsync.model.types import (
    ContainerRef,
    DiscoveredContainer,
    Host,
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
    "EntryChanges",
    "ModelBuilder",
    "ParsedEntry",
    "build_model",
    "derived_upstream_name",
    "explicit_upstream_name",
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
BULK_CHANGES = 64  # ModelBuilder: more changed containers than this are taken in bulk


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


class EntryChanges(NamedTuple):
    """Every entry by container id, and which of them changed since a reader last looked.

    What a registry hands a `ModelBuilder` so that a pass touches only what changed:
    `epoch` says where its change log stands now (the builder keeps it for its next
    question), `changed` holds the ids changed or gone since the epoch the builder asked
    about, or None when that is not known (the builder then compares every entry).
    `entries` may be a live view: read it during `build`, never keep it.
    """

    entries: Mapping[str, ParsedEntry]
    epoch: int
    changed: frozenset[str] | None


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


def derived_upstream_name(host: str, path: str, *, full_hash: bool = False) -> str:
    """The upstream name of a group without an explicit `upstream` label.

    `lbsync_<slug>_<hash>`: slug is the host with a leading `*.` written as `wildcard_` and
    every run of characters outside `[a-z0-9]` replaced by one `_`, cut to 40 characters;
    hash is the first 8 hex digits of the SHA-1 of the UTF-8 bytes of host + path (for
    example `a.test` + `/api` hashes `a.test/api`). So `*.example.com` with `/` gives
    `lbsync_wildcard_example_com_` followed by 8 hex digits. Hosts never contain `/` and
    paths always start with it, so host + path is unambiguous.

    `full_hash`: all 40 hex digits, for groups whose 8-digit names clash: 32 bits are
    quickly searched for a host and path that give another group's name, 160 are not.
    """
    slug_source = "wildcard_" + host[2:] if host.startswith("*.") else host
    slug = _SLUG_RE.sub("_", slug_source)[:_SLUG_MAX]
    digest = hashlib.sha1((host + path).encode(), usedforsecurity=False).hexdigest()
    return f"lbsync_{slug}_{digest if full_hash else digest[:8]}"


def explicit_upstream_name(value: str) -> str:
    """The upstream name a group's `upstream` label value is written as: `lbsync_<value>`.

    Every name lbsync writes starts with `lbsync_` (SPEC §1), so `upstream=grafana` never
    meets (or captures the `proxy_pass http://grafana` of) the operator's own `grafana`.
    """
    return "lbsync_" + value


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
# container name). Tuples compare in C (max() finds the newest); `seq` (the service's
# index in its container) makes (created_ns, id, service name, seq) unique, so a
# comparison never reaches the Service.
_Member = tuple[int, str, str, int, Service, Server | None, str]
_server_key = attrgetter("container.name", "port", "address", "container.id")
_GroupKey = tuple[str, str]


_second = itemgetter(1)


def _route_key(route: Route) -> tuple[int, str]:
    return (-len(route.path), route.path)


def _skip_key(skip: Skip) -> tuple[str, str, str, str]:
    return (skip.container.name, skip.reason, skip.container.id, skip.detail)


def _group_label(key: _GroupKey) -> str:
    return f"{key[0]}{key[1]}"


class _Context(NamedTuple):
    """Everything besides the containers that a model depends on."""

    select: LabelSelector | None
    require_healthy: bool
    published: bool
    host_address: str
    network_label: str
    proxy_networks: frozenset[str]


class _Contribution(NamedTuple):
    """What one container adds to the model, computed once per entry and context."""

    entry: ParsedEntry
    discovered: DiscoveredContainer | None  # None: not selected or not enabled
    skips: tuple[Skip, ...]
    groups: tuple[tuple[_GroupKey, tuple[_Member, ...]], ...]  # its members per group
    multi: bool  # several services: the servers of its groups need a sort by port


class _Group(NamedTuple):
    """A settled (host, path) group: who decides its upstream, and its servers."""

    members: tuple[_Member, ...]  # in container (name, id) order
    decider: Service
    servers: tuple[Server, ...]
    warning: str | None  # its containers disagree on upstream or balance


def _contribute(entry: ParsedEntry, ctx: _Context) -> _Contribution:
    c = entry.container
    if ctx.select is not None and not ctx.select.matches(c.labels):
        return _Contribution(entry, None, (), (), False)
    parsed = entry.parsed
    if not parsed.enabled:
        return _Contribution(entry, None, parsed.skips, (), False)
    services = parsed.services
    discovered = _discovered(c, services)
    if not services:
        return _Contribution(entry, discovered, parsed.skips, (), False)
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
        one: tuple[_Member] = (
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
        return _Contribution(
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
    groups: dict[_GroupKey, list[_Member]] = {}
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
        member: _Member = (c.created_ns, c.id, service.name, seq, service, server, c.name)
        path = service.path
        for host in service.hosts:
            bucket = groups.get((host, path))
            if bucket is None:
                groups[(host, path)] = [member]
            else:
                bucket.append(member)
    return _Contribution(
        entry,
        discovered,
        tuple(skips),
        tuple((key, tuple(members)) for key, members in groups.items()),
        len(services) > 1,
    )


def _settle(key: _GroupKey, members: tuple[_Member, ...], resort: bool) -> _Group:
    """The newest container decides upstream and balance; one server per (container, port)."""
    if len(members) == 1:
        only = members[0]
        return _Group(members, only[4], () if only[5] is None else (only[5],), None)
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
        servers.sort(key=_server_key)
        unique: list[Server] = []
        for server in servers:
            last = unique[-1] if unique else None
            if last is None or server.port != last.port or server.container != last.container:
                unique.append(server)
        servers = unique
    return _Group(members, decider, tuple(servers), warning)


class ModelBuilder:
    """`build_model` with a memory: the next model costs what changed, not what exists.

    Pure (no I/O): it keeps each container's contribution by the identity of its
    `ParsedEntry`, so a registry that hands back the same entry for an unchanged container
    (as `lbsync.state.registry` does) gets only the changed containers and their (host, path)
    groups recomputed. Unchanged hosts and upstreams come back as the very same objects, and
    a pass with nothing changed gets the previous `RoutingModel` itself; templates can cache
    by identity (`render_each`). A change of discovery settings, target selector or proxy
    networks starts from scratch. Equal to `build_model` of the same entries, always
    (tests/test_routing_incremental.py holds both to that).
    """

    def __init__(self) -> None:
        self._reset(None)

    def _reset(self, ctx: _Context | None) -> None:
        self._ctx = ctx
        self._contribs: dict[str, _Contribution] = {}
        self._members: dict[_GroupKey, dict[str, tuple[_Member, ...]]] = {}
        self._groups: dict[_GroupKey, _Group] = {}
        self._explicit: set[_GroupKey] = set()  # groups whose decider names its upstream
        self._conflicts: dict[_GroupKey, str] = {}  # group -> its conflict warning
        self._named_together = False  # the last assembly named every group at once
        self._name_counts: dict[str, int] = {}
        self._shared_names = 0  # container names held by more than one container
        self._upstream_of: dict[_GroupKey, Upstream] = {}
        self._upstreams: dict[str, Upstream] = {}
        self._upstream_order: list[str] = []
        self._paths: dict[str, set[str]] = {}  # host -> its group paths
        self._hosts: dict[str, Host] = {}
        self._host_order: list[str] = []
        self._discovered: dict[str, DiscoveredContainer] = {}
        self._discovered_order: list[tuple[str, str]] = []  # (name, id)
        self._skips: dict[str, tuple[Skip, ...]] = {}
        self._naming_warnings: list[str] = []
        self._model: RoutingModel | None = None
        # Whether a host / upstream object was added, replaced or dropped since `_finish`.
        self._hosts_dirty = True
        self._upstreams_dirty = True
        self._epoch: int | None = None  # see `epoch`
        self._bulk = False
        self._in_order = False

    @property
    def epoch(self) -> int | None:
        """The registry epoch of the entries the current model was built from (None: not
        from an `EntryChanges`, or nothing built since a reset): what to ask changes after."""
        return self._epoch

    def build(
        self,
        entries: Iterable[ParsedEntry] | EntryChanges,
        discovery: DiscoveryConfig,
        target: TargetConfig,
        proxy_networks: frozenset[str],
    ) -> RoutingModel:
        """The model of `entries` (SPEC §2, §3a); see `build_model`.

        Given an `EntryChanges` asked for at this builder's `epoch`, it looks only at the
        ids that changed; given anything else, it compares every entry with what it holds.
        """
        ctx = _Context(
            target.select,
            discovery.require_healthy,
            discovery.address == "published",
            discovery.host_address,
            discovery.label_prefix + ".network",
            proxy_networks,
        )
        if ctx != self._ctx:
            self._reset(ctx)
        contribs = self._contribs
        hint: frozenset[str] | None = None
        epoch: int | None = None
        if isinstance(entries, EntryChanges):
            fresh: Mapping[str, ParsedEntry] = entries.entries
            epoch = entries.epoch
            # The changes are relative to the epoch asked about, which must be this
            # model's: after a reset (or a model from plain entries) compare them all.
            if self._model is not None and self._epoch is not None:
                hint = entries.changed
        else:
            fresh = {entry.container.id: entry for entry in entries}
        if hint is None:
            changed = [
                cid
                for cid, entry in fresh.items()
                if (known := contribs.get(cid)) is None or known.entry is not entry
            ]
            gone = [cid for cid in contribs if cid not in fresh]
        else:
            changed = [
                cid
                for cid in hint
                if (entry := fresh.get(cid)) is not None
                and ((known := contribs.get(cid)) is None or known.entry is not entry)
            ]
            gone = [cid for cid in hint if cid not in fresh and cid in contribs]
        if self._model is not None and not changed and not gone:
            self._epoch = epoch
            return self._model

        # Many changes (a first pass): sort the orders once at the end rather than insert
        # into them one by one, and keep the cyclic GC out of an allocation burst that
        # builds only acyclic objects (at 10,000 containers it costs more than the work).
        self._bulk = len(changed) + len(gone) > BULK_CHANGES
        gc_was_enabled = gc.isenabled()
        if self._bulk:
            gc.disable()
        try:
            model = self._update(fresh, changed, gone, ctx)
        except BaseException:
            # Half-applied changes would be wrong forever after: start over next time.
            self._reset(None)
            raise
        finally:
            if gc_was_enabled:
                gc.enable()
        self._epoch = epoch
        return model

    def _update(
        self,
        fresh: Mapping[str, ParsedEntry],
        changed: list[str],
        gone: list[str],
        ctx: _Context,
    ) -> RoutingModel:
        contribs = self._contribs
        # From empty, take the containers in (name, id) order: every group's members then
        # arrive in the order build_model promises, and no group needs a sort of its own.
        self._in_order = not contribs
        if self._in_order:
            changed.sort(key=lambda cid: (fresh[cid].container.name, cid))
        shared_before = self._shared_names
        affected: set[_GroupKey] = set()
        lists_changed = False  # discovered containers or skips
        for cid in gone:
            lists_changed = self._drop(cid, affected) or lists_changed
        for cid in changed:
            if cid in contribs:
                lists_changed = self._drop(cid, affected) or lists_changed
            lists_changed = self._add(_contribute(fresh[cid], ctx), affected) or lists_changed
        if self._bulk:
            self._discovered_order = sorted((d.name, cid) for cid, d in self._discovered.items())

        # Two containers of one name: build_model sorts every group's servers then.
        resort_all = self._shared_names > 0
        if resort_all != (shared_before > 0):
            affected.update(self._members)
            affected.update(self._groups)
        for key in affected:
            self._settle_group(key, resort_all)

        names = None
        if not (self._explicit or self._named_together):
            names = self._fresh_names(affected)
        if names is None:
            self._assemble_all()
        else:
            self._assemble(affected, names)
        return self._finish(lists_changed)

    def _fresh_names(self, affected: set[_GroupKey]) -> dict[_GroupKey, str] | None:
        """The derived names of the groups new in `affected`; None when one of them is a
        name in use or another new group's (then `_assemble_all` names every group)."""
        fresh: dict[_GroupKey, str] = {}
        taken = self._upstreams
        upstream_of = self._upstream_of
        groups = self._groups
        for key in affected:
            if key in upstream_of or key not in groups:
                continue
            name = derived_upstream_name(*key)
            if name in taken:
                return None
            fresh[key] = name
        if len(set(fresh.values())) != len(fresh):
            return None
        return fresh

    def _finish(self, lists_changed: bool) -> RoutingModel:
        """The model, reusing the previous one's tuples (or itself) where nothing changed."""
        previous = self._model
        if previous is None or self._hosts_dirty:
            hosts = tuple(map(self._hosts.__getitem__, self._host_order))
        else:
            hosts = previous.hosts
        if previous is None or self._upstreams_dirty:
            upstreams = tuple(map(self._upstreams.__getitem__, self._upstream_order))
        else:
            upstreams = previous.upstreams
        self._hosts_dirty = self._upstreams_dirty = False
        if previous is not None and not lists_changed:
            discovered, skips = previous.containers, previous.skips
        else:
            discovered = tuple(
                map(self._discovered.__getitem__, map(_second, self._discovered_order))
            )
            skips = tuple(sorted((s for one in self._skips.values() for s in one), key=_skip_key))
        warnings = tuple(sorted([*self._conflicts.values(), *self._naming_warnings]))
        if previous is not None:
            # Tuples compare item by item, and unchanged items are the same objects: cheap.
            hosts = previous.hosts if hosts == previous.hosts else hosts
            upstreams = previous.upstreams if upstreams == previous.upstreams else upstreams
            discovered = previous.containers if discovered == previous.containers else discovered
            skips = previous.skips if skips == previous.skips else skips
            warnings = previous.warnings if warnings == previous.warnings else warnings
            if (
                hosts is previous.hosts
                and upstreams is previous.upstreams
                and discovered is previous.containers
                and skips is previous.skips
                and warnings is previous.warnings
            ):
                return previous
        self._model = RoutingModel(hosts, upstreams, discovered, skips, warnings)
        return self._model

    # -- containers in and out --

    def _add(self, contrib: _Contribution, affected: set[_GroupKey]) -> bool:
        """Take in one container's contribution; True when discovered/skips change."""
        c = contrib.entry.container
        self._contribs[c.id] = contrib
        count = self._name_counts.get(c.name, 0) + 1
        self._name_counts[c.name] = count
        if count == 2:
            self._shared_names += 1
        for key, members in contrib.groups:
            by_container = self._members.get(key)
            if by_container is None:
                self._members[key] = {c.id: members}
            else:
                by_container[c.id] = members
            affected.add(key)
        if contrib.skips:
            self._skips[c.id] = contrib.skips
        if contrib.discovered is not None:
            self._discovered[c.id] = contrib.discovered
            if not self._bulk:
                bisect.insort(self._discovered_order, (c.name, c.id))
        return bool(contrib.skips) or contrib.discovered is not None

    def _drop(self, cid: str, affected: set[_GroupKey]) -> bool:
        """Forget one container's contribution; True when discovered/skips change."""
        contrib = self._contribs.pop(cid)
        name = contrib.entry.container.name
        count = self._name_counts[name] - 1
        if count:
            self._name_counts[name] = count
            if count == 1:
                self._shared_names -= 1
        else:
            del self._name_counts[name]
        for key, _ in contrib.groups:
            by_container = self._members[key]
            del by_container[cid]
            if not by_container:
                del self._members[key]
            affected.add(key)
        self._skips.pop(cid, None)
        if contrib.discovered is not None:
            del self._discovered[cid]
            if not self._bulk:
                order = self._discovered_order
                del order[bisect.bisect_left(order, (name, cid))]
        return bool(contrib.skips) or contrib.discovered is not None

    def _settle_group(self, key: _GroupKey, resort_all: bool) -> None:
        by_container = self._members.get(key)
        if not by_container:
            self._groups.pop(key, None)
            self._explicit.discard(key)
            self._conflicts.pop(key, None)
            return
        contribs = self._contribs
        if len(by_container) == 1:
            ((cid, members),) = by_container.items()
            resort = resort_all or contribs[cid].multi
        elif self._in_order:
            members = tuple(m for one in by_container.values() for m in one)
            resort = resort_all or any(contribs[cid].multi for cid in by_container)
        else:
            order = sorted(by_container, key=lambda cid: (contribs[cid].entry.container.name, cid))
            members = tuple(m for cid in order for m in by_container[cid])
            resort = resort_all or any(contribs[cid].multi for cid in order)
        group = _settle(key, members, resort)
        self._groups[key] = group
        if group.warning is None:
            self._conflicts.pop(key, None)
        else:
            self._conflicts[key] = group.warning
        if group.decider.upstream is None:
            self._explicit.discard(key)
        else:
            self._explicit.add(key)

    # -- hosts and upstreams --

    def _upstream(self, name: str, group: _Group) -> Upstream:
        """The upstream of that name, the previous object when nothing in it changed."""
        previous = self._upstreams.get(name)
        if (
            previous is not None
            and previous.balance == group.decider.balance
            and previous.servers == group.servers
        ):
            return previous
        return Upstream(name, group.decider.balance, group.servers)

    def _host(self, host: str) -> Host | None:
        paths = self._paths.get(host)
        if not paths:
            return None
        upstream_of = self._upstream_of
        routes = [Route(path, upstream_of[(host, path)]) for path in paths]
        if len(routes) > 1:
            routes.sort(key=_route_key)
        previous = self._hosts.get(host)
        if (
            previous is not None
            and len(previous.routes) == len(routes)
            and all(
                a.path == b.path and a.upstream is b.upstream
                for a, b in zip(previous.routes, routes, strict=True)
            )
        ):
            return previous
        return Host(host, tuple(routes))

    def _assemble(self, affected: set[_GroupKey], fresh: Mapping[_GroupKey, str]) -> None:
        """Only derived upstream names, none clashing: each group has its own upstream;
        patch in place. `fresh`: the names of the new groups (`_fresh_names`)."""
        hosts: set[str] = set()
        for key in affected:
            host, path = key
            hosts.add(host)
            # A group keeps its name for life: only a new one needs it derived (a hash).
            # Names here are all derived (the last `_assemble_all` had no explicit ones).
            known_upstream = self._upstream_of.get(key)
            group = self._groups.get(key)
            if group is None:
                if known_upstream is not None:
                    name = known_upstream.name
                    del self._upstream_of[key]
                    del self._upstreams[name]
                    self._upstreams_dirty = True
                    if not self._bulk:
                        order = self._upstream_order
                        del order[bisect.bisect_left(order, name)]
                    paths = self._paths[host]
                    paths.discard(path)
                    if not paths:
                        del self._paths[host]
                continue
            name = fresh[key] if known_upstream is None else known_upstream.name
            upstream = self._upstream(name, group)
            known = self._upstreams.get(name)
            if known is None:
                if not self._bulk:
                    bisect.insort(self._upstream_order, name)
                self._paths.setdefault(host, set()).add(path)
            if known is not upstream:
                self._upstreams_dirty = True
            self._upstreams[name] = upstream
            self._upstream_of[key] = upstream
        for host in hosts:
            host_obj = self._host(host)
            known_host = self._hosts.get(host)
            if host_obj is None:
                if known_host is not None:
                    del self._hosts[host]
                    self._hosts_dirty = True
                    if not self._bulk:
                        order = self._host_order
                        del order[bisect.bisect_left(order, host)]
            elif known_host is not host_obj:
                if known_host is None and not self._bulk:
                    bisect.insort(self._host_order, host)
                self._hosts[host] = host_obj
                self._hosts_dirty = True
        if self._bulk:
            self._upstream_order = sorted(self._upstreams)
            self._host_order = sorted(self._hosts)

    def _assemble_all(self) -> None:
        """Explicit upstream names are shared or contested across groups: name them all."""
        keys = sorted(self._groups)
        groups = self._groups
        warnings: list[str] = []
        names, clashed = _name_upstreams(
            keys,
            {k: list(groups[k].members) for k in keys},
            {k: (groups[k].decider, groups[k].servers) for k in keys},
            warnings,
        )
        upstreams: dict[str, Upstream] = {}
        upstream_of: dict[_GroupKey, Upstream] = {}
        paths: dict[str, set[str]] = {}
        for key in keys:
            name = names[key]
            upstream = upstreams.get(name)
            if upstream is None:
                upstream = upstreams[name] = self._upstream(name, groups[key])
            upstream_of[key] = upstream
            paths.setdefault(key[0], set()).add(key[1])
        self._upstreams = upstreams
        self._upstream_order = sorted(upstreams)
        self._upstream_of = upstream_of
        self._paths = paths
        self._hosts = {h: host for h in paths if (host := self._host(h)) is not None}
        self._host_order = sorted(self._hosts)
        self._naming_warnings = warnings
        # Explicit names, or derived ones that clashed: names depend on other groups, so
        # the next pass names them all together again.
        self._named_together = bool(self._explicit) or clashed
        self._hosts_dirty = self._upstreams_dirty = True


def build_model(
    containers: Iterable[ParsedEntry],
    discovery: DiscoveryConfig,
    target: TargetConfig,
    proxy_networks: frozenset[str],
) -> RoutingModel:
    """The routing model for one target (SPEC §2, §3a), from scratch.

    `proxy_networks`: names of the networks the proxy container is on (empty when unknown).
    Address rules: host-network containers use `discovery.host_address` and the service
    port; otherwise the IP on the network named by the container's network label (a
    container not on it is skipped: no silent fallback), else on a network it shares with
    the proxy (the first by name when several), else its only network with an IP.
    With `discovery.address == "published"` the published host port of the service port is
    used, on its host IP unless unspecified (`discovery.host_address` then).
    Groups are keyed by (host, path); servers come in container-name order.
    A daemon keeps a `ModelBuilder` instead, so a pass costs what changed.
    """
    return ModelBuilder().build(containers, discovery, target, proxy_networks)


def _conflict_warning(key: _GroupKey, newest: _Member, members: Sequence[_Member]) -> str:
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


def _derived_names(keys: Iterable[_GroupKey]) -> tuple[dict[_GroupKey, str], bool]:
    """Each group's derived name, unique across `keys`; and whether any clashed.

    8 hex digits of a hash are few: a host and path that give another group's name are
    found in seconds. Groups whose names clash take the full hash instead (both of them, so
    the name depends on the set of groups, never on the order they came in).
    """
    names = {key: derived_upstream_name(*key) for key in keys}
    full: set[_GroupKey] = set()
    while True:
        holders: dict[str, list[_GroupKey]] = {}
        for key, name in names.items():
            holders.setdefault(name, []).append(key)
        clashing = [k for ks in holders.values() if len(ks) > 1 for k in ks if k not in full]
        if not clashing:
            return names, bool(full)
        for key in clashing:  # a full-hash name may still equal some short one: look again
            names[key] = derived_upstream_name(*key, full_hash=True)
            full.add(key)


def _name_upstreams(
    keys: list[_GroupKey],
    groups: dict[_GroupKey, list[_Member]],
    chosen: dict[_GroupKey, tuple[Service, tuple[Server, ...]]],
    warnings: list[str],
) -> tuple[dict[_GroupKey, str], bool]:
    """Each group's upstream name, unique across groups; and whether derived names clashed.

    An explicit value is written as `lbsync_<value>` (`explicit_upstream_name`). One claimed
    by several groups goes to the first group by (host, path); a later group shares it when
    it has exactly the same members (the same services of the same containers: typically
    one service listing several hosts), else it falls back to its derived name with a
    warning. Names are compared ignoring case. An explicit name equal to the derived name
    of another group (used or not) falls back too, so a label can never pick the name of a
    group it does not belong to; derived names are unique among themselves (see
    `_derived_names`), so no fallback meets another group's name either.
    """
    derived, clashed = _derived_names(keys)
    # Derived names are lowercase: comparing an explicit name folded finds them.
    derived_of = {name: key for key, name in derived.items()}
    names: dict[_GroupKey, str] = {}
    # Names are compared ignoring case: nginx does (`App` and `app` are one upstream).
    owners: dict[str, tuple[_GroupKey, frozenset[tuple[str, str]], str]] = {}
    for key in keys:
        value = chosen[key][0].upstream
        if value is None:
            names[key] = derived[key]
            continue
        explicit = explicit_upstream_name(value)
        folded = explicit.lower()
        other = derived_of.get(folded)
        if other is not None and other != key:
            names[key] = derived[key]
            warnings.append(
                f"group {_group_label(key)}: upstream name {explicit!r} is the derived name of "
                f"group {_group_label(other)}; using {names[key]!r}"
            )
            continue
        members = frozenset((m[1], m[2]) for m in groups[key])
        owner = owners.get(folded)
        if owner is None:
            owners[folded] = (key, members, explicit)
            names[key] = explicit
        elif owner[1] == members and owner[2] == explicit:
            names[key] = explicit
        else:
            names[key] = derived[key]
            warnings.append(
                f"group {_group_label(key)}: upstream name {explicit!r} is already used by "
                f"group {_group_label(owner[0])}; using {names[key]!r}"
            )
    return names, clashed
