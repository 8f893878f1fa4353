"""Containers with their parsed labels: the entries a routing model is built from.

A registry keeps one `ParsedEntry` per container and hands a `ModelBuilder`
(`lbsync.model.builder`) its entries with what changed since it last asked (`EntryChanges`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

from lbsync.config.schema import DiscoveryConfig
from lbsync.engine.container import Container
from lbsync.model.labels import ParsedContainer, parse_services

__all__ = ["EntryChanges", "ParsedEntry", "parse_entry"]


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
