"""A registry's containers with their parsed labels, re-parsed only where they changed.

The registry holds containers and a log of which changed; parsing their labels is the
model's business. `ParsedEntries` reads that log: each read re-parses only the containers
that changed since the last one (and only those whose labels changed at that: see
`parse_entry`), so a pass at 1,000 containers does not touch 1,000. It also keeps the label
parser's memo to the label sets its entries still use.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import NamedTuple

from lbsync.config.schema import DiscoveryConfig
from lbsync.engine.container import Container
from lbsync.model.labels import ParsedContainer, parse_memo_size, parse_services, trim_parse_memo
from lbsync.state.registry import Registry

__all__ = ["PARSE_MEMO_SLACK", "EntryChanges", "ParsedEntries", "ParsedEntry", "parse_entry"]


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


#: Label sets the parse memo may hold beyond twice the entries' count before it is trimmed.
PARSE_MEMO_SLACK = 256


class ParsedEntries:
    """Every container of `registry` with its parsed labels, by id.

    One per registry, shared by every reader (each `ModelBuilder` asks it with its own
    epoch): an unchanged container keeps its entry object, which a builder skips by that
    identity. A new discovery config re-parses every entry, and tells the registry's other
    readers so by logging every id as changed.
    """

    def __init__(self, registry: Registry) -> None:
        self._registry = registry
        self._entries: dict[str, ParsedEntry] = {}
        self._discovery: DiscoveryConfig | None = None  # the config `_entries` parsed with
        self._epoch: int | None = None  # the registry epoch `_entries` are up to date with

    def all(self, discovery: DiscoveryConfig) -> list[ParsedEntry]:
        """Every container with its parsed labels, in no particular order."""
        self._refresh(discovery)
        return list(self._entries.values())

    def since(self, discovery: DiscoveryConfig, epoch: int | None) -> EntryChanges:
        """Every entry by id, with the ids that changed after `epoch` (see `EntryChanges`)."""
        self._refresh(discovery)
        registry = self._registry
        return EntryChanges(
            MappingProxyType(self._entries), registry.epoch, registry.changed_since(epoch)
        )

    def _refresh(self, discovery: DiscoveryConfig) -> None:
        registry = self._registry
        cache = self._entries
        stale: Iterable[str] | None
        if discovery != self._discovery:
            self._discovery = discovery
            registry.log_all()  # every entry is new: the other readers hear of them all
            stale = None
        else:
            stale = registry.changed_since(self._epoch)
        self._epoch = registry.epoch
        if stale is None:  # a new config, or too far behind the log to know: look at all
            ids = [container.id for container in registry.containers()]
            for gone in set(cache) - set(ids):
                del cache[gone]
            stale = ids
        for cid in stale:
            container = registry.get(cid)
            if container is None:
                cache.pop(cid, None)
            else:
                cache[cid] = parse_entry(container, discovery, cache.get(cid))
        if parse_memo_size() > 2 * len(cache) + PARSE_MEMO_SLACK:
            trim_parse_memo(entry.parsed for entry in cache.values())
