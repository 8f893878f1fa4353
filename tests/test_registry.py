"""The registry and the watcher's pure decisions (which kill drains, which events matter)."""

from __future__ import annotations

import dataclasses
from types import MappingProxyType

import pytest

from lbsync.config.schema import DiscoveryConfig
from lbsync.engine.client import Event
from lbsync.engine.container import Container
from lbsync.model import labels as labels_memo
from lbsync.state.registry import CHANGE_LOG_SLACK, PARSE_MEMO_SLACK, STOPPING, Registry, is_serving
from lbsync.state.watcher import Watcher, is_terminating_kill, signal_name


def make(cid: str = "a" * 64, **changes: object) -> Container:
    base = Container(
        id=cid,
        name="web",
        created_ns=1,
        labels=MappingProxyType(
            {"lbsync.enable": "true", "lbsync.host": "a.test", "lbsync.port": "80"}
        ),
        started_at="2026-01-01T00:00:00Z",
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def kill(signal: str | None, cid: str = "a" * 64) -> Event:
    attributes = {"name": "web"} if signal is None else {"name": "web", "signal": signal}
    return Event(
        type="container", action="kill", actor_id=cid, attributes=MappingProxyType(attributes)
    )


@pytest.mark.parametrize(
    ("value", "name"),
    [
        ("15", "TERM"),
        ("SIGTERM", "TERM"),
        ("term", "TERM"),
        ("9", "KILL"),
        ("1", "HUP"),
        ("SIGUSR2", "USR2"),
        ("999", "999"),
    ],
)
def test_signal_name(value: str, name: str) -> None:
    assert signal_name(value) == name


@pytest.mark.parametrize(
    ("signal", "stop_signal", "drains"),
    [
        pytest.param("15", "SIGTERM", True, id="term"),
        pytest.param("2", "SIGTERM", True, id="int"),
        pytest.param("3", "SIGTERM", True, id="quit"),
        pytest.param("9", "SIGTERM", True, id="kill"),
        pytest.param("1", "SIGTERM", False, id="hup-is-a-reload"),
        pytest.param("10", "SIGTERM", False, id="usr1-is-a-reload"),
        pytest.param("12", "SIGTERM", False, id="usr2-is-a-reload"),
        pytest.param("28", "SIGWINCH", True, id="own-stop-signal"),
        pytest.param("28", "SIGTERM", False, id="winch-not-its-stop-signal"),
        pytest.param(None, "SIGTERM", False, id="podman-no-signal-attribute"),
    ],
)
def test_terminating_kill(signal: str | None, stop_signal: str, drains: bool) -> None:
    assert is_terminating_kill(kill(signal), make(stop_signal=stop_signal)) is drains


def test_mark_stopping_takes_it_out_until_a_new_run() -> None:
    registry = Registry()
    registry.upsert(make())
    assert is_serving(registry.get("a" * 64))
    assert registry.mark_stopping("a" * 64)
    assert not registry.mark_stopping("a" * 64)  # once
    shown = registry.get("a" * 64)
    assert shown is not None and shown.state == STOPPING and not is_serving(shown)
    # An inspect of the same run while it is still shutting down keeps it out.
    registry.upsert(make(health="healthy"))
    assert not is_serving(registry.get("a" * 64))
    # A new run (restart) clears the mark.
    registry.upsert(make(started_at="2026-01-01T00:01:00Z"))
    assert is_serving(registry.get("a" * 64))


def test_stop_mark_cleared_when_it_died() -> None:
    registry = Registry()
    registry.upsert(make())
    registry.mark_stopping("a" * 64)
    registry.upsert(make(state="exited"))
    registry.upsert(make())  # started again, same StartedAt cannot happen, but state rules
    assert is_serving(registry.get("a" * 64))


def test_upsert_reports_changes_only() -> None:
    registry = Registry()
    assert registry.upsert(make())
    assert not registry.upsert(make())
    assert registry.upsert(make(health="unhealthy"))


def test_replace_all_reconciles() -> None:
    registry = Registry()
    registry.upsert(make("a" * 64))
    registry.upsert(make("b" * 64))
    assert registry.replace_all([make("b" * 64), make("c" * 64)])
    assert {c.id[0] for c in registry.containers()} == {"b", "c"}
    assert not registry.replace_all([make("b" * 64), make("c" * 64)])


def test_entries_parse_once_per_label_change() -> None:
    registry = Registry()
    registry.upsert(make())
    discovery = DiscoveryConfig()
    first = registry.entries(discovery)[0]
    registry.upsert(make(health="healthy"))
    second = registry.entries(discovery)[0]
    assert second.parsed is first.parsed  # state changed, labels did not: no re-parse
    relabelled = {"lbsync.enable": "true", "lbsync.host": "b.test", "lbsync.port": "80"}
    registry.upsert(make(labels=MappingProxyType(relabelled)))
    third = registry.entries(discovery)[0]
    assert third.parsed is not first.parsed
    assert third.parsed.services[0].hosts == ("b.test",)


def test_entries_keep_the_objects_of_unchanged_containers() -> None:
    registry = Registry()
    for i in range(3):
        registry.upsert(make(cid=str(i) * 64, name=f"web-{i}"))
    discovery = DiscoveryConfig()
    first = {e.container.id: e for e in registry.entries(discovery)}
    registry.upsert(make(cid="1" * 64, name="web-1", health="healthy"))
    registry.mark_stopping("2" * 64)
    second = {e.container.id: e for e in registry.entries(discovery)}
    assert second["0" * 64] is first["0" * 64]  # untouched: the very same entry
    assert second["1" * 64].container.health == "healthy"
    assert second["2" * 64].container.state == STOPPING
    assert registry.entries(discovery)[2] is second["2" * 64]  # a stopping view is kept too
    registry.remove("0" * 64)
    assert sorted(e.container.name for e in registry.entries(discovery)) == ["web-1", "web-2"]
    other = dataclasses.replace(discovery, label_prefix="other")
    assert all(not e.parsed.enabled for e in registry.entries(other))  # a new config: all


def test_the_change_log_names_what_changed_since_an_epoch() -> None:
    registry = Registry()
    a, b = "a" * 64, "b" * 64
    assert registry.changed_since(None) is None  # no epoch: the reader must read everything
    start = registry.epoch
    registry.upsert(make(a))
    registry.upsert(make(b, name="api"))
    assert registry.changed_since(start) == frozenset({a, b})
    middle = registry.epoch
    assert registry.changed_since(middle) == frozenset()
    assert not registry.upsert(make(a))  # the same inspect again: nothing to log
    assert registry.epoch == middle
    registry.mark_stopping(b)
    assert registry.changed_since(middle) == frozenset({b})
    registry.upsert(make(a, health="healthy"))
    registry.remove(b)
    assert registry.changed_since(middle) == frozenset({a, b})
    assert registry.changed_since(start) == frozenset({a, b})


def test_a_reader_too_far_behind_the_bounded_log_reads_everything() -> None:
    registry = Registry()
    registry.upsert(make())
    start = registry.epoch
    for i in range(3 * CHANGE_LOG_SLACK):
        registry.upsert(make(health="healthy" if i % 2 else "unhealthy"))
        recent = registry.epoch
    registry.upsert(make(health="starting"))
    assert registry.changed_since(start) is None  # its part of the log is gone
    assert registry.changed_since(recent) == frozenset({"a" * 64})
    assert registry.epoch - start == 3 * CHANGE_LOG_SLACK + 1  # epochs keep counting


def test_entries_since_gives_every_entry_and_the_changes() -> None:
    registry = Registry()
    discovery = DiscoveryConfig()
    for i in range(3):
        registry.upsert(make(str(i) * 64, name=f"web-{i}"))
    first = registry.entries_since(discovery, None)
    assert first.changed is None
    assert sorted(first.entries) == [str(i) * 64 for i in range(3)]
    registry.upsert(make("1" * 64, name="web-1", health="healthy"))
    second = registry.entries_since(discovery, first.epoch)
    assert second.changed == frozenset({"1" * 64})
    assert second.entries["1" * 64].container.health == "healthy"
    assert second.entries["0" * 64] is first.entries["0" * 64]
    with pytest.raises(TypeError):
        second.entries["x"] = second.entries["0" * 64]  # type: ignore[index]
    # Another discovery config re-parses every entry: all of them changed.
    other = dataclasses.replace(discovery, label_prefix="other")
    third = registry.entries_since(other, second.epoch)
    assert third.changed == frozenset(str(i) * 64 for i in range(3))
    assert registry.entries_since(other, third.epoch).changed == frozenset()


@pytest.mark.parametrize(
    ("event", "expected"),
    [
        pytest.param(Event("container", "start", "x"), "x", id="start"),
        pytest.param(Event("container", "health_status: healthy", "x"), "x", id="health"),
        pytest.param(Event("container", "health_status", "x"), "x", id="podman-health"),
        pytest.param(Event("container", "exec_start: sh -c true", "x"), None, id="exec-ignored"),
        pytest.param(Event("container", "remove", "x"), "x", id="podman-remove"),
        pytest.param(
            Event("network", "connect", "n", MappingProxyType({"container": "x"})),
            "x",
            id="network-connect",
        ),
        pytest.param(Event("network", "create", "n"), None, id="network-create-ignored"),
        pytest.param(Event("image", "pull", "i"), None, id="image-ignored"),
    ],
)
def test_which_events_name_a_container(event: Event, expected: str | None) -> None:
    assert Watcher._container_of(event) == expected


def test_hosts_that_came_and_went_leave_the_parse_memo() -> None:
    # One host per short-lived container (preview environments): the memo follows what the
    # registry holds, not every label set it ever saw.
    registry = Registry()
    discovery = DiscoveryConfig()
    labels_memo.trim_parse_memo([])  # other tests' leftovers
    for i in range(3 * PARSE_MEMO_SLACK):
        cid = f"{i:064x}"
        labels = {"lbsync.enable": "true", "lbsync.host": f"pr-{i}.test", "lbsync.port": "80"}
        registry.upsert(make(cid, labels=MappingProxyType(labels)))
        registry.remove(f"{i - 1:064x}")
        [entry] = registry.entries(discovery)
        assert entry.parsed.services[0].hosts == (f"pr-{i}.test",)
        assert labels_memo.parse_memo_size() <= 2 * len(registry) + PARSE_MEMO_SLACK + 1


def test_replicas_share_one_parse() -> None:
    registry = Registry()
    for i in range(3):
        registry.upsert(make(f"{i:064x}"))
    parsed = {id(entry.parsed) for entry in registry.entries(DiscoveryConfig())}
    assert len(parsed) == 1
