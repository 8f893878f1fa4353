"""The watcher against a FAKE engine that misbehaves on purpose: streams cut mid-line, garbage,
unknown events, a 500 on /events, a slow engine, inspects that 404, an event line too long
that names nothing, a re-list held back. A real engine will not do these on demand; the
behaviour under a real engine is tested in the integration tests. A bug in the events reader
is injected into lbsync (the parser made to raise), with the fake engine holding the re-list
after it, so that the moment before recovery can be looked at.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from lbsync.config.load import load_config
from lbsync.daemon.daemon import Daemon
from lbsync.daemon.snapshot import web_app
from lbsync.engine.client import DockerClient
from lbsync.engine.events import MAX_EVENT_LINE, Event
from lbsync.state.change import Change
from lbsync.state.registry import Registry
from lbsync.state.watcher import Watcher
from tests.support.fake_engine import FakeEngine, event_line

CUT = b"<cut>"  # close the connection abruptly
HANG = b"<hang>"  # keep the stream open and idle


def inspect_json(cid: str, name: str, *, running: bool = True) -> dict[str, Any]:
    return {
        "Id": cid,
        "Name": "/" + name,
        "Created": "2026-11-28T05:00:00.123456789Z",
        "Config": {
            "Labels": {
                "lbsync.enable": "true",
                "lbsync.host": f"{name}.test",
                "lbsync.port": "8080",
            }
        },
        "State": {
            "Status": "running" if running else "exited",
            "Running": running,
            "StartedAt": "2026-11-28T05:00:01Z",
        },
        "HostConfig": {"NetworkMode": "host"},
        "NetworkSettings": {"Networks": {"host": {"NetworkID": "h", "IPAddress": ""}}},
    }


def listed_json(inspected: dict[str, Any]) -> dict[str, Any]:
    """The entry Docker's /containers/json gives for a container it inspects as `inspected`."""
    state = inspected["State"]
    networks = inspected["NetworkSettings"]["Networks"]
    return {
        "Id": inspected["Id"],
        "Names": [inspected["Name"]],
        "Labels": inspected["Config"]["Labels"],
        "State": state["Status"],
        "Status": "Up 5 minutes" if state["Running"] else "Exited (0) 5 minutes ago",
        "NetworkSettings": {
            "Networks": {name: {**net, "EndpointID": "e"} for name, net in networks.items()}
        },
        "Ports": [],
        "Mounts": [],
    }


@dataclass
class ScriptedEngine:
    """A fake engine's state plus one script per /events connection."""

    fake: FakeEngine
    containers: dict[str, dict[str, Any]] = field(default_factory=dict)
    scripts: list[list[bytes] | int] = field(default_factory=list)  # int = an HTTP status
    inspect_delay: float = 0.0
    connections: int = 0
    inspects: list[str] = field(default_factory=list)
    listings: int = 0

    def install(self) -> None:
        self.fake.route("GET", "/containers/json", self._list)
        self.fake.prefix_route("GET", "/containers/", self._inspect)
        self.fake.route("GET", "/events", self._events)

    async def _list(self, request: web.Request) -> web.StreamResponse:
        self.listings += 1
        return web.json_response([listed_json(data) for data in self.containers.values()])

    async def _inspect(self, request: web.Request) -> web.StreamResponse:
        cid = request.path.split("/")[3]
        self.inspects.append(cid)
        if self.inspect_delay:
            await asyncio.sleep(self.inspect_delay)
        if cid not in self.containers:
            return web.json_response({"message": f"No such container: {cid}"}, status=404)
        return web.json_response(self.containers[cid])

    async def _events(self, request: web.Request) -> web.StreamResponse:
        index = self.connections
        self.connections += 1
        script = self.scripts[index] if index < len(self.scripts) else [HANG]
        if isinstance(script, int):
            return web.json_response({"message": "engine trouble"}, status=script)
        response = web.StreamResponse()
        await response.prepare(request)
        for chunk in script:
            if chunk == CUT:
                assert request.transport is not None
                request.transport.close()
                return response
            if chunk == HANG:
                await asyncio.Event().wait()  # hang until the server shuts down
            await response.write(chunk)
            await asyncio.sleep(0.01)
        await response.write_eof()
        return response


@pytest.fixture
async def engine(fake_engine: FakeEngine) -> AsyncIterator[ScriptedEngine]:
    scripted = ScriptedEngine(fake_engine)
    scripted.install()
    yield scripted


@dataclass
class Running:
    watcher: Watcher
    registry: Registry
    changes: list[Change]
    task: asyncio.Task[None]


@pytest.fixture
async def start_watcher(
    fake_client: DockerClient,
) -> AsyncIterator[Callable[..., Running]]:
    started: list[Running] = []

    def start(resync: float = 0, retry_max_wait: float = 0.05) -> Running:
        registry = Registry()
        changes: list[Change] = []
        watcher = Watcher(
            fake_client, registry, changes.append, resync=resync, retry_max_wait=retry_max_wait
        )
        running = Running(watcher, registry, changes, asyncio.create_task(watcher.run()))
        started.append(running)
        return running

    yield start
    for running in started:
        running.task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await running.task
    await fake_client.close()


async def until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.01)


def names(registry: Registry) -> set[str]:
    return {c.name for c in registry.containers()}


async def test_cut_mid_line_reconnects_and_catches_up(
    engine: ScriptedEngine, start_watcher: Callable[..., Running]
) -> None:
    engine.containers["a" * 64] = inspect_json("a" * 64, "first")
    engine.scripts = [[b'{"Type": "container", "Act', CUT]]
    running = start_watcher()
    await until(lambda: engine.connections >= 2 and running.watcher.connected)
    assert running.watcher.reconnects == 1
    assert names(running.registry) == {"first"}
    assert "cut mid-line" in (running.watcher.last_error or "cut mid-line")
    assert not running.task.done()


async def test_gap_is_reconciled_on_reconnect(
    engine: ScriptedEngine, start_watcher: Callable[..., Running]
) -> None:
    engine.containers["a" * 64] = inspect_json("a" * 64, "old")
    gate = asyncio.Event()

    async def events(request: web.Request) -> web.StreamResponse:
        engine.connections += 1
        response = web.StreamResponse()
        await response.prepare(request)
        if engine.connections == 1:
            await gate.wait()
            assert request.transport is not None
            request.transport.close()  # the connection drops
            return response
        await asyncio.Event().wait()  # hang until the server shuts down
        return response

    engine.fake.route("GET", "/events", events)
    running = start_watcher()
    await until(lambda: names(running.registry) == {"old"})
    # While the connection is about to drop: one container goes, another comes.
    del engine.containers["a" * 64]
    engine.containers["c" * 64] = inspect_json("c" * 64, "new")
    gate.set()
    await until(lambda: names(running.registry) == {"new"}, timeout=2.0)
    assert running.watcher.reconnects == 1


async def test_garbage_line_is_survived(
    engine: ScriptedEngine, start_watcher: Callable[..., Running]
) -> None:
    engine.containers["a" * 64] = inspect_json("a" * 64, "web")
    engine.containers["b" * 64] = inspect_json("b" * 64, "api")
    engine.scripts = [[b"<html>not json</html>\n", HANG], [event_line("die", "b" * 64), HANG]]
    running = start_watcher()
    await until(lambda: engine.connections >= 2 and running.watcher.connected)
    # The stream after the reconnect is followed: a later event is applied.
    await until(lambda: engine.inspects.count("b" * 64) >= 3)  # list, re-list, the die
    assert running.watcher.reconnects == 1
    assert names(running.registry) == {"web", "api"}


async def test_unknown_types_and_actions_are_ignored(
    engine: ScriptedEngine, start_watcher: Callable[..., Running]
) -> None:
    engine.containers["a" * 64] = inspect_json("a" * 64, "web")
    odd = [
        json.dumps({"Type": "plugin", "Action": "enable", "Actor": {"ID": "p"}}).encode() + b"\n",
        json.dumps({"Type": "container", "Action": "teleport", "Actor": {"ID": "a" * 64}}).encode()
        + b"\n",
        json.dumps({"Type": "container"}).encode() + b"\n",  # no action, no actor
        event_line("exec_start: sh -c true", "a" * 64),
    ]
    engine.scripts = [[*odd, HANG]]
    running = start_watcher()
    await until(lambda: running.watcher.connected and running.watcher.events_seen >= len(odd))
    assert engine.inspects.count("a" * 64) == 1  # only the listing inspected it
    assert engine.connections == 1  # none of these broke the stream
    assert not running.task.done()


async def test_500_on_events_is_retried_with_backoff(
    engine: ScriptedEngine, start_watcher: Callable[..., Running]
) -> None:
    engine.containers["a" * 64] = inspect_json("a" * 64, "web")
    engine.scripts = [500, 500, 503, [HANG]]
    running = start_watcher()
    await until(lambda: running.watcher.connected, timeout=5.0)
    assert engine.connections == 4
    assert names(running.registry) == {"web"}


async def test_inspect_404_for_a_vanished_container(
    engine: ScriptedEngine, start_watcher: Callable[..., Running]
) -> None:
    engine.scripts = [[event_line("start", "d" * 64), HANG]]
    running = start_watcher()
    await until(lambda: "d" * 64 in engine.inspects)
    await asyncio.sleep(0.05)
    assert "d" * 64 not in running.registry
    assert running.watcher.connected and not running.task.done()


async def test_slow_engine_still_converges(
    engine: ScriptedEngine, start_watcher: Callable[..., Running]
) -> None:
    engine.inspect_delay = 0.3
    engine.containers["a" * 64] = inspect_json("a" * 64, "web")
    engine.scripts = [[*(event_line("start", "a" * 64) for _ in range(20)), HANG]]
    running = start_watcher()
    await until(lambda: names(running.registry) == {"web"}, timeout=5.0)
    await until(lambda: running.watcher.events_seen >= 20, timeout=5.0)
    # 20 events for one container while inspects were slow: batched, not 20 inspects.
    assert engine.inspects.count("a" * 64) < 10


async def test_a_resync_that_fails_part_way_still_announces_what_it_stored(
    engine: ScriptedEngine, start_watcher: Callable[..., Running]
) -> None:
    engine.containers["a" * 64] = inspect_json("a" * 64, "web")
    engine.containers["b" * 64] = inspect_json("b" * 64, "api")
    broken = "c" * 64

    async def inspect(request: web.Request) -> web.StreamResponse:
        cid = request.path.split("/")[3]
        if cid == broken:
            await asyncio.sleep(0.05)  # after the others were stored
            return web.json_response({"message": "engine trouble"}, status=500)
        return await engine._inspect(request)

    engine.fake.prefix_route("GET", "/containers/", inspect)
    running = start_watcher(resync=0.2)
    registry, changes = running.registry, running.changes
    await until(lambda: running.watcher.listed.is_set() and names(registry) == {"web", "api"})
    listed_changes = len(changes)
    # Before the next resync: one container renamed, and one whose inspect always fails.
    engine.containers["a" * 64] = inspect_json("a" * 64, "web2")
    engine.containers[broken] = inspect_json(broken, "flaky")
    await until(lambda: names(registry) == {"web2", "api"}, timeout=3.0)
    # The listing failed, and every retry will too (and find web2 unchanged): the rename
    # was stored, so it must have been announced at once.
    await until(lambda: len(changes) > listed_changes, timeout=1.0)
    assert changes[-1].reason == "resync"


async def test_resync_set_to_0_stops_relisting(
    engine: ScriptedEngine, start_watcher: Callable[..., Running]
) -> None:
    engine.containers["a" * 64] = inspect_json("a" * 64, "web")
    running = start_watcher(resync=0.1)
    await until(lambda: engine.listings >= 2)  # listed, then re-listed
    # The follower reads the setting each time round (set_resync also starts over).
    running.watcher.resync = 0
    await asyncio.sleep(0.15)  # a re-list already under way may finish
    after = engine.listings
    await asyncio.sleep(0.3)
    assert engine.listings == after  # was: a re-list after every re-list, forever
    assert running.watcher.connected and not running.task.done()


async def test_resync_turned_on_by_a_config_reload_applies_without_an_event(
    engine: ScriptedEngine, start_watcher: Callable[..., Running]
) -> None:
    engine.containers["a" * 64] = inspect_json("a" * 64, "web")
    running = start_watcher(resync=0)
    await until(lambda: running.watcher.listed.is_set())
    assert engine.listings == 1
    running.watcher.set_resync(0.1)  # the engine is idle: no event will wake the follower
    await until(lambda: engine.listings >= 3, timeout=2.0)


def timed_line(action: str, container_id: str, time_nano: int) -> bytes:
    event = json.loads(event_line(action, container_id))
    event["time"], event["timeNano"] = time_nano // 1_000_000_000, time_nano
    return json.dumps(event).encode() + b"\n"


async def test_an_event_cut_off_by_a_reconnect_does_not_date_a_later_change(
    engine: ScriptedEngine, start_watcher: Callable[..., Running]
) -> None:
    cid = "a" * 64
    before, after = 1_700_000_000_000_000_000, 1_700_000_060_000_000_000
    engine.containers[cid] = inspect_json(cid, "web")
    restarted = inspect_json(cid, "web")
    restarted["State"]["StartedAt"] = "2026-11-28T06:00:00Z"

    async def inspect(request: web.Request) -> web.StreamResponse:
        engine.inspects.append(cid)
        # 1: the first listing; 2: the event before the cut (still running at the cut);
        # 3: the listing after the reconnect; 4: the event after it, a new run by then.
        if len(engine.inspects) == 2:
            await asyncio.sleep(0.2)
        return web.json_response(restarted if len(engine.inspects) >= 4 else engine.containers[cid])

    engine.fake.prefix_route("GET", "/containers/", inspect)
    engine.scripts = [
        [timed_line("start", cid, before), CUT],
        [timed_line("start", cid, after), HANG],
    ]
    running = start_watcher()
    await until(lambda: any(c.event_time_ns for c in running.changes), timeout=5.0)
    assert [c.event_time_ns for c in running.changes if c.event_time_ns] == [after]


async def test_a_resync_inspects_only_what_the_listing_shows_changed(
    engine: ScriptedEngine, start_watcher: Callable[..., Running]
) -> None:
    web_id, api_id = "a" * 64, "b" * 64
    engine.containers[web_id] = inspect_json(web_id, "web")
    engine.containers[api_id] = inspect_json(api_id, "api")
    running = start_watcher(resync=0.05)
    registry = running.registry
    await until(lambda: running.watcher.listed.is_set())
    assert sorted(engine.inspects) == [web_id, api_id]  # the first listing inspects all

    await until(lambda: engine.listings >= 4)
    assert len(engine.inspects) == 2  # unchanged: the listing says so, no inspect

    # A stop the stream missed: the listing says exited, so that one is inspected.
    engine.containers[api_id] = inspect_json(api_id, "api", running=False)
    await until(lambda: (c := registry.get(api_id)) is not None and c.state == "exited")
    assert engine.inspects[2:] == [api_id]

    # A container marked stopping (its kill seen, its die not yet) is always inspected.
    assert registry.mark_stopping(web_id)
    listings = engine.listings
    await until(lambda: engine.listings >= listings + 2)
    assert web_id in engine.inspects[3:]
    assert api_id not in engine.inspects[3:]


async def test_after_a_reconnect_every_container_is_inspected(
    engine: ScriptedEngine, start_watcher: Callable[..., Running]
) -> None:
    engine.containers["a" * 64] = inspect_json("a" * 64, "web")
    engine.scripts = [[CUT]]
    running = start_watcher()
    await until(lambda: engine.connections >= 2 and running.watcher.connected)
    assert engine.inspects == ["a" * 64] * 2  # listed at start, listed again after the cut


# --- event lines too long, and bugs in the events reader -----------------------------------

INJECTED = "injected reader bug"


def inject_reader_bug(monkeypatch: pytest.MonkeyPatch, times: int | None = 1) -> None:
    """Make lbsync's event parser raise RuntimeError (a bug, not an engine error) the first
    `times` times it runs (None: always)."""
    real = Event.from_json
    calls = 0

    def buggy(data: Any) -> Event:
        nonlocal calls
        calls += 1
        if times is None or calls <= times:
            raise RuntimeError(INJECTED)
        return real(data)

    monkeypatch.setattr(Event, "from_json", staticmethod(buggy))


def reader_errors(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [
        r
        for r in caplog.records
        if r.levelno == logging.ERROR and "the events reader failed" in r.getMessage()
    ]


async def test_an_oversized_event_that_names_nothing_makes_a_relist(
    engine: ScriptedEngine,
    start_watcher: Callable[..., Running],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A line over the bound whose start says nothing lbsync can read (no engine writes its
    attributes first): it is skipped, and everything listed again; the stream goes on."""
    engine.containers["a" * 64] = inspect_json("a" * 64, "web")
    unreadable = b'{"Actor":{"Attributes":{"x":"' + b"y" * (2 * MAX_EVENT_LINE) + b'"}}}\n'
    engine.scripts = [[unreadable, event_line("start", "b" * 64), HANG]]
    running = start_watcher()
    await until(lambda: engine.listings >= 2 and "b" * 64 in engine.inspects)
    assert engine.connections == 1 and running.watcher.reconnects == 0
    assert running.watcher.connected and not running.task.done()
    assert any("listing every container again" in r.getMessage() for r in caplog.records)


async def test_a_bug_in_the_events_reader_is_logged_counted_and_followed_by_a_relist(
    engine: ScriptedEngine,
    start_watcher: Callable[..., Running],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Was: anything but a DockerError ended the reader task silently; the follower waited
    on an empty queue forever, still "connected"."""
    engine.containers["a" * 64] = inspect_json("a" * 64, "web")
    engine.containers["c" * 64] = inspect_json("c" * 64, "api")
    engine.scripts = [[event_line("start", "a" * 64), HANG], [event_line("start", "c" * 64), HANG]]
    inject_reader_bug(monkeypatch)
    running = start_watcher()
    watcher = running.watcher
    await until(lambda: engine.connections >= 2 and watcher.connected and watcher.events_seen >= 1)
    assert (watcher.reader_failures, watcher.reconnects) == (1, 1)
    assert engine.listings == 2  # listed at start, and again after the reconnect
    [logged] = reader_errors(caplog)
    assert logged.exc_info is not None and isinstance(logged.exc_info[1], RuntimeError)
    assert INJECTED in logged.getMessage()
    # The stream after the reconnect is followed: its event was applied.
    await until(lambda: engine.inspects.count("c" * 64) >= 3)  # list, re-list, the event
    assert not running.task.done()


async def test_a_reader_that_keeps_failing_backs_off_and_never_stops(
    engine: ScriptedEngine,
    start_watcher: Callable[..., Running],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    engine.containers["a" * 64] = inspect_json("a" * 64, "web")
    engine.scripts = [[event_line("start", "a" * 64), HANG] for _ in range(50)]
    inject_reader_bug(monkeypatch, times=None)
    # The top of each jittered window: waits of 0.1, 0.2, 0.4, 0.8 s, then 1 s.
    monkeypatch.setattr(random, "uniform", lambda low, high: high)
    running = start_watcher(retry_max_wait=1.0)
    await until(lambda: running.watcher.reader_failures >= 4)
    # Each failure waited its backoff before the next session: without one it would spin.
    waits = [r.getMessage() for r in caplog.records if r.getMessage().startswith("subscribing and")]
    assert waits[:4] == [f"subscribing and listing again in {w}s" for w in (0.1, 0.2, 0.4, 0.8)]
    # Each failure was followed by a reconnect and a re-list (the last one may be waiting).
    assert engine.connections == engine.listings
    assert engine.connections - running.watcher.reader_failures in (0, 1)
    assert not running.watcher.connected and INJECTED in (running.watcher.last_error or "")
    assert not running.task.done()


async def test_a_reader_cancelled_from_outside_is_a_failure_too(
    engine: ScriptedEngine, start_watcher: Callable[..., Running]
) -> None:
    engine.containers["a" * 64] = inspect_json("a" * 64, "web")
    running = start_watcher()
    await until(lambda: running.watcher.connected)
    [reader] = [t for t in asyncio.all_tasks() if t.get_name() == "lbsync-events-reader"]
    reader.cancel()
    await until(lambda: engine.connections >= 2 and running.watcher.connected)
    assert running.watcher.reader_failures == 1
    assert engine.listings == 2


async def test_healthz_is_503_with_the_reason_until_the_relist_after_a_reader_bug(
    engine: ScriptedEngine,
    fake_client: DockerClient,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    aiohttp_client: Callable[..., Any],
) -> None:
    """The daemon's own /healthz, /metrics and /status while the reader has failed and the
    re-list after the reconnect is held back by the fake engine, then after it."""
    config_path = tmp_path / "lbsync.yaml"
    config_path.write_text(
        "targets:\n"
        "  - name: edge\n"
        f"    output: {tmp_path / 'conf.d' / 'lbsync.conf'}\n"
        "    check: none\n"
        "    reload: none\n"
        "    proxy: {pid_file: /nonexistent/nginx.pid}\n"
    )
    daemon = Daemon(load_config(config_path, {}), fake_client, config_path=config_path)
    engine.containers["a" * 64] = inspect_json("a" * 64, "web")
    held = asyncio.Event()

    async def listing(request: web.Request) -> web.StreamResponse:
        engine.listings += 1
        if engine.listings == 2:
            await held.wait()
        return web.json_response([listed_json(data) for data in engine.containers.values()])

    engine.fake.route("GET", "/containers/json", listing)
    engine.scripts = [[event_line("start", "a" * 64), HANG]]
    inject_reader_bug(monkeypatch)
    http = await aiohttp_client(web_app(daemon))
    task = asyncio.create_task(daemon.watcher.run())
    try:
        await until(lambda: engine.listings == 2)
        response = await http.get("/healthz")
        body = await response.text()
        assert response.status == 503
        assert f"the events reader failed: RuntimeError({INJECTED!r})" in body
        metrics = await (await http.get("/metrics")).text()
        assert "lbsync_event_reader_failures_total 1.0" in metrics.splitlines()
        assert "lbsync_engine_connected 0.0" in metrics.splitlines()
        status = await (await http.get("/status")).json()
        assert status["engine"]["connected"] is False
        assert INJECTED in status["engine"]["last_error"]

        held.set()
        await until(lambda: daemon.watcher.connected)
        body = await (await http.get("/healthz")).text()
        assert "engine" not in body and "reader" not in body  # only: no pass has run yet
        metrics = await (await http.get("/metrics")).text()
        assert "lbsync_engine_connected 1.0" in metrics.splitlines()
        assert "lbsync_engine_reconnects_total 1.0" in metrics.splitlines()
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await fake_client.close()
