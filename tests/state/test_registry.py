"""The registry and the watcher's pure decisions (which kill drains, which events matter)."""

from __future__ import annotations

from types import MappingProxyType

import pytest

from lbsync.engine.events import Event
from lbsync.state.event_plan import container_of, is_terminating_kill, signal_name
from lbsync.state.registry import CHANGE_LOG_SLACK, STOPPING, Registry, is_serving
from tests.support.containers import make


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
    end = registry.epoch
    registry.log_all()  # a reader's reading of every container changed: all of them logged
    assert registry.changed_since(end) == frozenset({a})


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
    assert container_of(event) == expected
