"""Parsed containers -> the routing model templates receive (SPEC §2, §3a, §5.6).

Pure: no I/O, no logging. Problems come back as data: `RoutingModel.skips` (why a container
or service gets no traffic) and `RoutingModel.warnings` (group conflicts, upstream name
clashes). The same entries in any order give an equal model.

`build_model` builds one from scratch; a daemon keeps a `ModelBuilder`, which patches the
previous model with what changed. What one container adds and how a (host, path) group is
decided are `lbsync.model.groups`; upstream names are `lbsync.model.upstream_names`.
"""

from __future__ import annotations

import bisect
import gc
from collections.abc import Iterable, Mapping
from operator import itemgetter

from lbsync.config.schema import DiscoveryConfig, TargetConfig
from lbsync.model.entries import EntryChanges, ParsedEntry
from lbsync.model.groups import (
    Contribution,
    Group,
    GroupKey,
    Member,
    ModelContext,
    contribute,
    route_key,
    settle,
    skip_key,
)
from lbsync.model.types import DiscoveredContainer, Host, Route, RoutingModel, Skip, Upstream
from lbsync.model.upstream_names import derived_upstream_name, name_upstreams

__all__ = ["BULK_CHANGES", "ModelBuilder", "build_model"]

BULK_CHANGES = 64  # ModelBuilder: more changed containers than this are taken in bulk
_second = itemgetter(1)


class ModelBuilder:
    """`build_model` with a memory: the next model costs what changed, not what exists.

    Pure (no I/O): it keeps each container's contribution by the identity of its
    `ParsedEntry`, so a registry that hands back the same entry for an unchanged container
    (as `lbsync.state.registry` does) gets only the changed containers and their (host, path)
    groups recomputed. Unchanged hosts and upstreams come back as the very same objects, and
    a pass with nothing changed gets the previous `RoutingModel` itself; templates can cache
    by identity (`render_each`). A change of discovery settings, target selector or proxy
    networks starts from scratch. Equal to `build_model` of the same entries, always
    (tests/model/test_routing_incremental.py holds both to that).
    """

    def __init__(self) -> None:
        self._reset(None)

    def _reset(self, ctx: ModelContext | None) -> None:
        self._ctx = ctx
        self._contribs: dict[str, Contribution] = {}
        self._members: dict[GroupKey, dict[str, tuple[Member, ...]]] = {}
        self._groups: dict[GroupKey, Group] = {}
        self._explicit: set[GroupKey] = set()  # groups whose decider names its upstream
        self._conflicts: dict[GroupKey, str] = {}  # group -> its conflict warning
        self._named_together = False  # the last assembly named every group at once
        self._name_counts: dict[str, int] = {}
        self._shared_names = 0  # container names held by more than one container
        self._upstream_of: dict[GroupKey, Upstream] = {}
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
        ctx = ModelContext(
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
        ctx: ModelContext,
    ) -> RoutingModel:
        contribs = self._contribs
        # From empty, take the containers in (name, id) order: every group's members then
        # arrive in the order build_model promises, and no group needs a sort of its own.
        self._in_order = not contribs
        if self._in_order:
            changed.sort(key=lambda cid: (fresh[cid].container.name, cid))
        shared_before = self._shared_names
        affected: set[GroupKey] = set()
        lists_changed = False  # discovered containers or skips
        for cid in gone:
            lists_changed = self._drop(cid, affected) or lists_changed
        for cid in changed:
            if cid in contribs:
                lists_changed = self._drop(cid, affected) or lists_changed
            lists_changed = self._add(contribute(fresh[cid], ctx), affected) or lists_changed
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

    def _fresh_names(self, affected: set[GroupKey]) -> dict[GroupKey, str] | None:
        """The derived names of the groups new in `affected`; None when one of them is a
        name in use or another new group's (then `_assemble_all` names every group)."""
        fresh: dict[GroupKey, str] = {}
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
            skips = tuple(sorted((s for one in self._skips.values() for s in one), key=skip_key))
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

    def _add(self, contrib: Contribution, affected: set[GroupKey]) -> bool:
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

    def _drop(self, cid: str, affected: set[GroupKey]) -> bool:
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

    def _settle_group(self, key: GroupKey, resort_all: bool) -> None:
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
        group = settle(key, members, resort)
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

    def _upstream(self, name: str, group: Group) -> Upstream:
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
            routes.sort(key=route_key)
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

    def _assemble(self, affected: set[GroupKey], fresh: Mapping[GroupKey, str]) -> None:
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
        names, clashed = name_upstreams(
            keys,
            {k: list(groups[k].members) for k in keys},
            {k: (groups[k].decider, groups[k].servers) for k in keys},
            warnings,
        )
        upstreams: dict[str, Upstream] = {}
        upstream_of: dict[GroupKey, Upstream] = {}
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
