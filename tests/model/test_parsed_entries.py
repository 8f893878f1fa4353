"""The model's parsed entries of a registry: parsed once per label change, read by changes."""

from __future__ import annotations

import dataclasses
from types import MappingProxyType

import pytest

from lbsync.config.schema import DiscoveryConfig
from lbsync.model import labels as labels_memo
from lbsync.model.entries import PARSE_MEMO_SLACK, ParsedEntries
from lbsync.state.registry import CHANGE_LOG_SLACK, STOPPING, Registry
from tests.support.containers import make


def test_entries_parse_once_per_label_change() -> None:
    registry = Registry()
    entries = ParsedEntries(registry)
    registry.upsert(make())
    discovery = DiscoveryConfig()
    first = entries.all(discovery)[0]
    registry.upsert(make(health="healthy"))
    second = entries.all(discovery)[0]
    assert second.parsed is first.parsed  # state changed, labels did not: no re-parse
    relabelled = {"lbsync.enable": "true", "lbsync.host": "b.test", "lbsync.port": "80"}
    registry.upsert(make(labels=MappingProxyType(relabelled)))
    third = entries.all(discovery)[0]
    assert third.parsed is not first.parsed
    assert third.parsed.services[0].hosts == ("b.test",)


def test_entries_keep_the_objects_of_unchanged_containers() -> None:
    registry = Registry()
    entries = ParsedEntries(registry)
    for i in range(3):
        registry.upsert(make(cid=str(i) * 64, name=f"web-{i}"))
    discovery = DiscoveryConfig()
    first = {e.container.id: e for e in entries.all(discovery)}
    registry.upsert(make(cid="1" * 64, name="web-1", health="healthy"))
    registry.mark_stopping("2" * 64)
    second = {e.container.id: e for e in entries.all(discovery)}
    assert second["0" * 64] is first["0" * 64]  # untouched: the very same entry
    assert second["1" * 64].container.health == "healthy"
    assert second["2" * 64].container.state == STOPPING
    assert entries.all(discovery)[2] is second["2" * 64]  # a stopping view is kept too
    registry.remove("0" * 64)
    assert sorted(e.container.name for e in entries.all(discovery)) == ["web-1", "web-2"]
    other = dataclasses.replace(discovery, label_prefix="other")
    assert all(not e.parsed.enabled for e in entries.all(other))  # a new config: all


def test_entries_since_gives_every_entry_and_the_changes() -> None:
    registry = Registry()
    entries = ParsedEntries(registry)
    discovery = DiscoveryConfig()
    for i in range(3):
        registry.upsert(make(str(i) * 64, name=f"web-{i}"))
    first = entries.since(discovery, None)
    assert first.changed is None
    assert sorted(first.entries) == [str(i) * 64 for i in range(3)]
    registry.upsert(make("1" * 64, name="web-1", health="healthy"))
    second = entries.since(discovery, first.epoch)
    assert second.changed == frozenset({"1" * 64})
    assert second.entries["1" * 64].container.health == "healthy"
    assert second.entries["0" * 64] is first.entries["0" * 64]
    with pytest.raises(TypeError):
        second.entries["x"] = second.entries["0" * 64]  # type: ignore[index]
    # Another discovery config re-parses every entry: all of them changed.
    other = dataclasses.replace(discovery, label_prefix="other")
    third = entries.since(other, second.epoch)
    assert third.changed == frozenset(str(i) * 64 for i in range(3))
    assert entries.since(other, third.epoch).changed == frozenset()


def test_hosts_that_came_and_went_leave_the_parse_memo() -> None:
    # One host per short-lived container (preview environments): the memo follows what the
    # registry holds, not every label set it ever saw.
    registry = Registry()
    entries = ParsedEntries(registry)
    discovery = DiscoveryConfig()
    labels_memo.trim_parse_memo([])  # other tests' leftovers
    for i in range(3 * PARSE_MEMO_SLACK):
        cid = f"{i:064x}"
        labels = {"lbsync.enable": "true", "lbsync.host": f"pr-{i}.test", "lbsync.port": "80"}
        registry.upsert(make(cid, labels=MappingProxyType(labels)))
        registry.remove(f"{i - 1:064x}")
        [entry] = entries.all(discovery)
        assert entry.parsed.services[0].hosts == (f"pr-{i}.test",)
        assert labels_memo.parse_memo_size() <= 2 * len(registry) + PARSE_MEMO_SLACK + 1


def test_replicas_share_one_parse() -> None:
    registry = Registry()
    entries = ParsedEntries(registry)
    for i in range(3):
        registry.upsert(make(f"{i:064x}"))
    parsed = {id(entry.parsed) for entry in entries.all(DiscoveryConfig())}
    assert len(parsed) == 1


def test_entries_too_far_behind_the_log_read_every_container_and_keep_the_unchanged() -> None:
    registry = Registry()
    entries = ParsedEntries(registry)
    discovery = DiscoveryConfig()
    for i in range(3):
        registry.upsert(make(str(i) * 64, name=f"web-{i}"))
    first = {e.container.id: e for e in entries.all(discovery)}
    for i in range(3 * CHANGE_LOG_SLACK):
        registry.upsert(make("1" * 64, name="web-1", health="healthy" if i % 2 else "unhealthy"))
    registry.remove("2" * 64)
    registry.upsert(make("3" * 64, name="web-3"))
    second = {e.container.id: e for e in entries.all(discovery)}
    assert sorted(second) == ["0" * 64, "1" * 64, "3" * 64]
    assert second["0" * 64] is first["0" * 64]
    assert second["1" * 64].container.health == "healthy"
    assert second["1" * 64].parsed is first["1" * 64].parsed
