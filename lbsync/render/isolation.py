"""A builtin template's refused blocks, and the model without the services they came from.

A builtin template renders each host and upstream as its own block (`render_each`). When a
quoting filter refuses a value in one block, that block's service is left out rather than
the whole file (SPEC §1: one container's bad input never stops the rest of a target): the
route whose path was refused, the host whose name was, or the upstream and its routes.
`Isolation` notes what was refused while a render runs (`render_block`); `leave_out` gives
the model without it and one sentence per service left out, for the next attempt.
"""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass, field, replace
from typing import NamedTuple

import jinja2

from lbsync.model.types import Host, Route, RoutingModel, Upstream
from lbsync.render.quoting import UnsafeValueError

__all__ = ["Isolation", "current_isolation", "leave_out", "render_block"]


class _RouteKey(NamedTuple):
    host: str
    path: str


@dataclass(slots=True)
class Isolation:
    """What one attempt at rendering a builtin template had refused, block by block."""

    failures: list[UnsafeValueError] = field(default_factory=list)
    hosts: dict[str, UnsafeValueError] = field(default_factory=dict)  # refused names
    routes: dict[_RouteKey, UnsafeValueError] = field(default_factory=dict)
    upstreams: dict[str, UnsafeValueError] = field(default_factory=dict)  # by name
    unplaced: UnsafeValueError | None = None  # refused in a block that is no host or upstream

    def refused(self, macro: jinja2.runtime.Macro, item: object, exc: UnsafeValueError) -> None:
        """Find what in `item` the filter refused: for a host, each of its routes alone,
        then its name with no routes; an upstream (or a block built on one) as a whole."""
        self.failures.append(exc)
        if isinstance(item, Host):
            if _refuses(macro, _CANARY_HOST):
                # Any host is refused (a setting the block uses): not this host's doing.
                self.unplaced = self.unplaced or exc
                return
            bad = [r for r in item.routes if _refuses(macro, Host(item.name, (r,)))]
            if not bad or _refuses(macro, Host(item.name, ())):
                self.hosts[item.name] = exc
            for route in bad:
                self.routes[_RouteKey(item.name, route.path)] = exc
            return
        upstream = item if isinstance(item, Upstream) else getattr(item, "upstream", None)
        if isinstance(upstream, Upstream):
            self.upstreams[upstream.name] = exc
        elif self.unplaced is None:
            self.unplaced = exc


# A host every template must accept: `.invalid` is reserved (RFC 2606), and no routes.
_CANARY_HOST = Host("lbsync.invalid", ())

# Set while a builtin template renders: `render_each` leaves a refused block out.
current_isolation: ContextVar[Isolation | None] = ContextVar("lbsync_isolation", default=None)


def _refuses(macro: jinja2.runtime.Macro, item: object) -> bool:
    try:
        str(macro(item))
    except UnsafeValueError:
        return True
    return False


def render_block(macro: jinja2.runtime.Macro, item: object) -> str:
    """One block's text; while a builtin renders, "" (and the refusal noted) when a quoting
    filter refuses a value in it."""
    isolation = current_isolation.get()
    if isolation is None:
        return str(macro(item))
    try:
        return str(macro(item))
    except UnsafeValueError as exc:
        isolation.refused(macro, item, exc)
        return ""


_SHOWN = 60  # a value longer than this is cut in a sentence


def _shown(value: str) -> str:
    """A value for a one-line message: as is when plain, else quoted (newlines escaped);
    cut when long."""
    cut = value if len(value) <= _SHOWN else value[:_SHOWN]
    if cut.isascii() and cut.isprintable() and " " not in cut:
        return cut if cut is value else cut + "..."
    return repr(cut) if cut is value else repr(cut) + "..."


def leave_out(model: RoutingModel, isolation: Isolation) -> tuple[RoutingModel, list[str]] | None:
    """`model` without what `isolation` saw refused, and one sentence per service left out:
    a refused route (or every route of a refused host, or to a refused upstream) goes, a
    host left with no route goes, an upstream no route leads to any more goes. None when
    that leaves out nothing."""
    gone: dict[_RouteKey, UnsafeValueError] = {}
    hosts: list[Host] = []
    for host in model.hosts:
        kept: list[Route] = []
        for route in host.routes:
            key = _RouteKey(host.name, route.path)
            exc = (
                isolation.hosts.get(host.name)
                or isolation.routes.get(key)
                or isolation.upstreams.get(route.upstream.name)
            )
            if exc is None:
                kept.append(route)
            else:
                gone[key] = exc
        if len(kept) == len(host.routes):
            hosts.append(host)
        elif kept:
            hosts.append(Host(host.name, tuple(kept)))
    used_before = {route.upstream.name for host in model.hosts for route in host.routes}
    used = {route.upstream.name for host in hosts for route in host.routes}
    upstreams = tuple(
        u
        for u in model.upstreams
        if u.name not in isolation.upstreams and (u.name in used or u.name not in used_before)
    )
    if not gone and len(upstreams) == len(model.upstreams):
        return None
    sentences = []
    for (host_name, path), exc in sorted(gone.items()):
        containers = sorted(
            c.name
            for c in model.containers
            if any(host_name in s.hosts and s.path == path for s in c.services)
        )
        who = f" (container{'s' if len(containers) > 1 else ''} {', '.join(containers)})"
        who = who if containers else ""
        sentences.append(
            f"service {_shown(host_name + path)}{who} left out: {exc}; "
            "the rest of the file is written"
        )
    return replace(model, hosts=tuple(hosts), upstreams=upstreams), sentences
