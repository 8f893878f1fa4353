"""Our Docker client against the REAL engine of the lab (``lab/lab.sh up``).

Containers are made with the docker CLI (through :class:`tests.support.lab.Lab`); our
:class:`~lbsync.docker_api.DockerClient` only observes and acts on them, so each test checks
what our client makes of the engine's real answers. Every container runs with
``--network host`` on a 127.0.0.1 port and is removed by id, pass or fail.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import pytest

from lbsync.engine.client import MAX_API_VERSION, DockerClient, parse_version
from lbsync.engine.errors import Conflict, NotFound
from lbsync.engine.events import MAX_EVENT_LINE, Event
from lbsync.engine.exec import EXEC_OUTPUT_LIMIT, ExecResult
from lbsync.engine.inspect import container_from_inspect, listing_agrees
from lbsync.state.event_plan import WATCHED_EVENTS
from tests.support.lab import (
    TEST_LABEL,
    Lab,
    bulky_labels,
    docker,
    free_port,
    try_http_get,
    wait_for,
)

pytestmark = pytest.mark.engine

T = TypeVar("T")
Inspect = dict[str, Any]
Filters = Mapping[str, Sequence[str]]

#: Label key the tests use to tell their own containers apart (value: a fresh token).
CASE_LABEL = "lbsync-test.case"
#: How long one expected event may take to arrive (the health check runs every second).
EVENT_DEADLINE = 10.0


def case_labels() -> dict[str, str]:
    return {CASE_LABEL: secrets.token_hex(6)}


def label_filter(labels: Mapping[str, str]) -> list[str]:
    return [f"{key}={value}" for key, value in labels.items()]


def is_exec(event: Event) -> bool:
    """Health checks run as execs: exec_create, exec_start, exec_die are noise here."""
    return event.base_action.startswith("exec_")


def wait_serving(port: int, timeout: float = 10.0) -> None:
    """Wait until a backend answers on 127.0.0.1:port (its signal traps are set by then)."""
    wait_for(lambda: try_http_get(f"http://127.0.0.1:{port}/"), timeout, 0.05, f"port {port}")


async def poll(
    predicate: Callable[[], Awaitable[T | None]],
    timeout: float,
    interval: float = 0.05,
    message: str = "condition",
) -> T:
    """Await ``predicate()`` until truthy; its value. TimeoutError after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = await predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{message}: not true after {timeout:g}s (last {value!r})")
        await asyncio.sleep(interval)


class EventReader:
    """Reads our client's events stream into a queue in a background task."""

    def __init__(self, client: DockerClient, *, since: str | None, filters: Filters) -> None:
        self.queue: asyncio.Queue[Event] = asyncio.Queue()
        self.seen: list[Event] = []
        self.skipped: list[Event] = []  # exec_* events `expect` passed over
        self._client = client
        self._since = since
        self._filters = filters
        self.task: asyncio.Task[None] | None = None

    async def _read(self) -> None:
        async for event in self._client.events(since=self._since, filters=self._filters):
            await self.queue.put(event)

    def start(self) -> None:
        self.task = asyncio.create_task(self._read())

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task

    async def expect(
        self, action: str, timeout: float = EVENT_DEADLINE, *, actor: str | None = None
    ) -> Event:
        """The next event with ``action`` (exec_* skipped, others recorded in ``seen``), of
        the container ``actor`` when given (``since`` may replay earlier tests' events)."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no {action!r} event within {timeout:g}s; saw {self.actions}")
            if self.task is not None and self.task.done():
                # The reader ended or failed: show why instead of timing out.
                self.task.result()
                raise AssertionError(f"events stream ended before {action!r}; saw {self.actions}")
            try:
                event = await asyncio.wait_for(self.queue.get(), min(remaining, 0.25))
            except TimeoutError:
                continue
            if is_exec(event):
                self.skipped.append(event)
                continue
            self.seen.append(event)
            if event.action == action and actor in (None, event.actor_id):
                return event

    @property
    def actions(self) -> list[str]:
        return [event.action for event in self.seen]


@contextlib.asynccontextmanager
async def reading_events(
    client: DockerClient, *, since: str | None = None, filters: Filters
) -> AsyncIterator[EventReader]:
    reader = EventReader(client, since=since, filters=filters)
    reader.start()
    try:
        yield reader
    finally:
        await reader.stop()


async def replay(client: DockerClient, since: str, until: str, filters: Filters) -> list[Event]:
    return [event async for event in client.events(since=since, until=until, filters=filters)]


# --- listing and inspecting -------------------------------------------------------------


async def test_list_with_label_filter_and_inspect(lab: Lab, engine: DockerClient) -> None:
    labels = case_labels()
    port = free_port()
    cid = lab.run_backend(port, labels={**labels, "lbsync.host": "a.test"})
    other = lab.run_backend(free_port(), labels=case_labels())  # same key, another value
    name = lab.name(cid)

    found = await engine.list_containers(filters={"label": label_filter(labels)})
    assert [c["Id"] for c in found] == [cid]
    assert found[0]["Names"] == [f"/{name}"]
    assert found[0]["Labels"][CASE_LABEL] == labels[CASE_LABEL]
    assert found[0]["State"] == "running"
    by_key = await engine.list_containers(filters={"label": [CASE_LABEL]})
    assert {cid, other} <= {c["Id"] for c in by_key}
    assert await engine.list_container_ids(filters={"label": label_filter(labels)}) == [cid]

    data = await engine.inspect_container(cid)
    assert data["Id"] == cid
    assert data["Name"] == f"/{name}"
    assert data["State"]["Running"] is True
    assert data["State"]["Status"] == "running"
    assert data["HostConfig"]["NetworkMode"] == "host"
    # The container's labels, merged with the image's own (lbsync-lab=1, lbsync-lab.hash).
    assert (
        data["Config"]["Labels"].items()
        >= {
            TEST_LABEL: "1",
            CASE_LABEL: labels[CASE_LABEL],
            "lbsync.host": "a.test",
        }.items()
    )
    assert data["Config"]["Labels"]["lbsync-lab"] == "1"
    # Inspect by name and by short id find the same container.
    assert (await engine.inspect_container(name))["Id"] == cid
    assert (await engine.inspect_container(cid[:12]))["Id"] == cid

    container = container_from_inspect(data)
    assert container.id == cid
    assert container.name == name
    assert not container.name.startswith("/")
    assert container.state == "running"
    assert container.health == "none"
    assert container.network_mode == "host"
    assert [n.name for n in container.networks] == ["host"]
    assert dict(container.labels) == data["Config"]["Labels"]
    assert dict(container.env) == {}  # PORT, NAME, ...: only nginx-proxy's VIRTUAL_* are kept
    assert container.created_ns > 0


async def test_inspect_with_health_check_parses_health(lab: Lab, engine: DockerClient) -> None:
    cid = lab.run_backend(free_port(), health=True)
    data = await poll(
        lambda: _inspect_if(engine, cid, lambda d: d["State"]["Health"]["Status"] == "healthy"),
        EVENT_DEADLINE,
        message="healthy",
    )
    assert container_from_inspect(data).health == "healthy"


async def _inspect_if(
    client: DockerClient, cid: str, check: Callable[[Inspect], bool]
) -> Inspect | None:
    data = await client.inspect_container(cid)
    return data if check(data) else None


async def test_a_brief_listing_agrees_with_the_inspects_until_something_changes(
    lab: Lab, engine: DockerClient
) -> None:
    """The periodic re-list inspects only the containers whose listing entry disagrees with
    what the registry holds: on a real engine an unchanged container must agree (else the
    re-list saves nothing) and a changed one must not (else a missed change stays missed)."""
    healthy_port, plain_port = free_port(), free_port()
    checked = lab.run_backend(healthy_port, health=True)
    plain = lab.run_backend(plain_port)
    stopped = lab.run_backend(free_port())
    lab.stop(stopped)
    await poll(
        lambda: _inspect_if(engine, checked, lambda d: d["State"]["Health"]["Status"] == "healthy"),
        timeout=EVENT_DEADLINE,
        message="healthy",
    )

    async def agreement() -> dict[str, bool]:
        brief = {item.id: item for item in await engine.list_containers_brief(all=True)}
        result = {}
        for cid in (checked, plain, stopped):
            container = container_from_inspect(await engine.inspect_container(cid))
            result[cid] = listing_agrees(container, brief[cid])
        return result

    assert await agreement() == {checked: True, plain: True, stopped: True}
    brief = {item.id: item for item in await engine.list_containers_brief(all=True)}
    assert brief[checked].health == "healthy" and brief[plain].health == "none"
    assert brief[plain].state == "running" and brief[stopped].state == "exited"
    assert [name for name, _, _ in brief[plain].networks] == ["host"]

    before = {cid: container_from_inspect(await engine.inspect_container(cid)) for cid in (plain,)}
    await asyncio.to_thread(lab.stop, plain)
    item = next(i for i in await engine.list_containers_brief(all=True) if i.id == plain)
    assert not listing_agrees(before[plain], item)  # exited now: inspected at the re-list
    old = container_from_inspect(await engine.inspect_container(stopped))
    renamed = f"lbsync-test-{secrets.token_hex(4)}"
    await asyncio.to_thread(docker, "rename", stopped, renamed)
    item = next(i for i in await engine.list_containers_brief(all=True) if i.id == stopped)
    assert item.names == (f"/{renamed}",)
    assert not listing_agrees(old, item)


# --- events -----------------------------------------------------------------------------


async def test_events_follow_a_container_lifecycle(lab: Lab, engine: DockerClient) -> None:
    labels = case_labels()
    filters = {"type": ["container"], "label": label_filter(labels)}
    port = free_port()
    # Subscribed before the container exists; `since` makes sure a subscription that
    # reaches the engine a moment late still sees the container's first events.
    since = f"{time.time() - 1:.9f}"
    async with reading_events(engine, since=since, filters=filters) as reader:
        cid = await asyncio.to_thread(lab.run_backend, port, labels=labels, health=True)
        name = await asyncio.to_thread(lab.name, cid)

        start = await reader.expect("start")
        assert start.type == "container"
        assert start.actor_id == cid
        assert start.attributes["name"] == name
        assert start.attributes[CASE_LABEL] == labels[CASE_LABEL]
        assert start.attributes["image"] == "lbsync-lab/backend:latest"
        assert start.time_nano > 0

        healthy = await reader.expect("health_status: healthy")
        assert healthy.base_action == "health_status"
        assert healthy.actor_id == cid

        await asyncio.to_thread(lab.stop, cid)
        kill = await reader.expect("kill")
        assert kill.attributes["signal"] == "15"
        die = await reader.expect("die")
        assert die.attributes["exitCode"] == "0"
        await reader.expect("stop")

    assert all(event.actor_id == cid for event in reader.seen)
    assert reader.actions == ["create", "start", "health_status: healthy", "kill", "die", "stop"]


async def test_watched_events_leave_out_probes_and_keep_what_lbsync_reads(
    lab: Lab, engine: DockerClient
) -> None:
    """lbsync's subscription (WATCHED_EVENTS) against a subscription by type alone, side by
    side: the engine sends the same life of a health-checked container minus the exec_* of
    its probes; `health_status: healthy` still passes (the filter's prefix match), so do the
    network events (they carry no container labels, so the two are matched by id here)."""
    port = free_port()
    since = f"{time.time() - 1:.9f}"
    everything = {"type": ["container", "network"]}
    async with (
        reading_events(engine, since=since, filters=WATCHED_EVENTS) as watched,
        reading_events(engine, since=since, filters=everything) as control,
    ):
        cid = await asyncio.to_thread(lab.run_backend, port, health=True)
        for reader in (watched, control):
            await reader.expect("health_status: healthy", actor=cid)
        await asyncio.to_thread(docker, "rename", cid, f"lbsync-test-{secrets.token_hex(4)}")
        await asyncio.to_thread(lab.stop, cid)
        await asyncio.to_thread(lab.remove, cid)
        for reader in (watched, control):
            await reader.expect("destroy", actor=cid)
        probes = [e for e in control.skipped if e.actor_id == cid]

    def life(reader: EventReader) -> list[tuple[str, str]]:
        return [
            (e.type, e.action)
            for e in reader.seen
            if e.actor_id == cid or e.attributes.get("container") == cid
        ]

    assert probes, "the health check ran no exec: the control shows nothing filtered"
    assert not [e for e in watched.skipped if e.actor_id == cid]
    assert life(watched) == life(control)
    assert ("container", "health_status: healthy") in life(watched)
    assert ("network", "connect") in life(watched)
    assert ("network", "disconnect") in life(watched)
    assert [a for t, a in life(watched) if t == "container"][:2] == ["create", "start"]
    assert {"rename", "kill", "die", "stop", "destroy"} <= {a for _, a in life(watched)}


async def test_events_since_until_replay_then_end(lab: Lab, engine: DockerClient) -> None:
    labels = case_labels()
    filters = {"type": ["container"], "label": label_filter(labels)}
    t0 = f"{time.time() - 1:.9f}"
    cid = lab.run_backend(free_port(), labels=labels)
    lab.stop(cid)
    now = f"{time.time():.9f}"  # everything above happened before it

    events = await asyncio.wait_for(replay(engine, t0, now, filters), 10.0)
    assert [e.action for e in events if not is_exec(e)] == [
        "create",
        "start",
        "kill",
        "die",
        "stop",
    ]
    assert {e.actor_id for e in events} == {cid}
    assert [e.time_nano for e in events] == sorted(e.time_nano for e in events)
    assert all(int(float(t0) * 1e9) <= e.time_nano <= int(float(now) * 1e9) for e in events)

    # Seconds only (what `since=` after a reconnect may carry) work as well.
    events = await asyncio.wait_for(replay(engine, str(int(float(t0))), now, filters), 10.0)
    assert [e.action for e in events][:2] == ["create", "start"]

    # Nothing matches: the stream still ends (no events, no error).
    none = {"type": ["container"], "label": [f"{CASE_LABEL}=nothing-{secrets.token_hex(4)}"]}
    assert await asyncio.wait_for(replay(engine, t0, now, none), 10.0) == []


async def test_an_event_line_over_the_bound_is_skipped_and_the_stream_goes_on(
    lab: Lab, engine: DockerClient
) -> None:
    """The engine copies every label into each event: ~600 KB of labels make ~600 KB lines.
    Each comes out as an event naming its container (attributes unread, the line never held
    whole), and the events after it are read as usual (aiohttp's readline raised LineTooLong
    there, ending the stream)."""
    labels = case_labels()
    filters = {"type": ["container"], "label": label_filter(labels)}
    t0 = f"{time.time() - 1:.9f}"
    bulky = await asyncio.to_thread(
        lab.run_backend, free_port(), labels={**labels, **bulky_labels()}
    )
    plain = await asyncio.to_thread(lab.run_backend, free_port(), labels=labels)
    await asyncio.to_thread(lab.stop, bulky)
    now = f"{time.time():.9f}"

    events = await asyncio.wait_for(replay(engine, t0, now, filters), 20.0)
    big = [e for e in events if e.actor_id == bulky]
    assert [e.action for e in big] == ["create", "start", "kill", "die", "stop"]
    assert all(e.type == "container" and e.oversized > 600_000 > MAX_EVENT_LINE for e in big)
    assert all(not e.attributes for e in big)
    assert [e.time_nano for e in big] == sorted(e.time_nano for e in big)
    assert all(int(float(t0) * 1e9) <= e.time_nano <= int(float(now) * 1e9) for e in big)
    # Started after the bulky one: its events came after those lines, and read in full.
    small = [e for e in events if e.actor_id == plain]
    assert [e.action for e in small] == ["create", "start"]
    assert all(not e.oversized and e.attributes[CASE_LABEL] == labels[CASE_LABEL] for e in small)
    assert small[0].time_nano > big[1].time_nano


# --- kill -------------------------------------------------------------------------------


async def test_kill_signals_conflict_and_not_found(lab: Lab, engine: DockerClient) -> None:
    port = free_port()
    cid = lab.run_backend(port)
    await asyncio.to_thread(wait_serving, port)
    pid = (await engine.inspect_container(cid))["State"]["Pid"]

    await engine.kill(cid, "HUP")  # the backend traps HUP and keeps serving
    for _ in range(4):
        await asyncio.sleep(0.1)
        state = (await engine.inspect_container(cid))["State"]
        assert state["Running"] is True
        assert state["Pid"] == pid
    assert await asyncio.to_thread(try_http_get, f"http://127.0.0.1:{port}/") is not None

    await engine.kill(cid, "KILL")
    state = await poll(
        lambda: _inspect_if(engine, cid, lambda d: not d["State"]["Running"]),
        10.0,
        message="not running after KILL",
    )
    assert state["State"]["Status"] == "exited"
    assert state["State"]["ExitCode"] == 137

    with pytest.raises(Conflict) as conflict:
        await engine.kill(cid, "KILL")
    assert conflict.value.status == 409
    assert "is not running" in conflict.value.engine_message
    assert cid in conflict.value.engine_message

    lab.remove(cid)
    with pytest.raises(NotFound) as gone:
        await engine.inspect_container(cid)
    assert gone.value.status == 404
    assert cid in str(gone.value)
    assert "No such container" in gone.value.engine_message

    unknown = f"lbsync-test-unknown-{secrets.token_hex(4)}"
    with pytest.raises(NotFound) as missing:
        await engine.inspect_container(unknown)
    assert unknown in str(missing.value)
    with pytest.raises(NotFound):
        await engine.kill(unknown, "HUP")


# --- exec -------------------------------------------------------------------------------


async def test_exec_exit_code_and_separate_streams(lab: Lab, engine: DockerClient) -> None:
    cid = lab.run_backend(free_port())

    result = await engine.exec(cid, ["sh", "-c", "echo out; echo err >&2; exit 3"])
    assert result == ExecResult(exit_code=3, stdout=b"out\n", stderr=b"err\n")

    missing = await engine.exec(cid, ["cat", "/nonexistent"])
    assert missing.exit_code != 0
    assert missing.stdout == b""
    assert b"/nonexistent" in missing.stderr

    # More output than one frame, and binary-safe.
    big = await engine.exec(
        cid, ["sh", "-c", "i=0; while [ $i -lt 5000 ]; do echo line$i; i=$((i+1)); done"]
    )
    assert big.exit_code == 0
    assert big.stdout.count(b"\n") == 5000
    assert big.stdout.endswith(b"line4999\n")


async def test_exec_output_is_bounded_to_its_tail(lab: Lab, engine: DockerClient) -> None:
    cid = lab.run_backend(free_port())
    # 2.2 MB of noise on stderr, then the verdict: a container printing without end costs
    # lbsync EXEC_OUTPUT_LIMIT bytes, and the verdict is what is kept.
    result = await engine.exec(
        cid, ["sh", "-c", "yes noise-line | head -n 200000 >&2; echo verdict >&2; exit 1"]
    )
    assert result.exit_code == 1
    assert len(result.stderr) == EXEC_OUTPUT_LIMIT
    assert result.stderr.endswith(b"noise-line\nverdict\n")
    assert result.dropped == 200_000 * len(b"noise-line\n") + len(b"verdict\n") - EXEC_OUTPUT_LIMIT
    assert result.output.startswith(f"[{result.dropped} bytes of earlier output left out]")


async def test_exec_nginx_config_test(lab: Lab, engine: DockerClient, tmp_path: Path) -> None:
    conf_dir = tmp_path / "conf.d"
    conf_dir.mkdir()
    cid = lab.run_nginx(conf_dir)

    result = await engine.exec(cid, ["nginx", "-t"])
    assert result.exit_code == 0, result.output
    assert "syntax is ok" in result.output
    assert "test is successful" in result.output

    (conf_dir / "broken.conf").write_text("server { listen 127.0.0.1:1 }\n")
    broken = await engine.exec(cid, ["nginx", "-t"])
    assert broken.exit_code != 0
    assert "broken.conf" in broken.output


async def test_exec_in_stopped_container_conflicts(lab: Lab, engine: DockerClient) -> None:
    cid = lab.run_backend(free_port())
    lab.kill(cid)
    with pytest.raises(Conflict):
        await engine.exec(cid, ["true"])


# --- top, networks, version -------------------------------------------------------------


async def test_top_lists_nginx_master_and_workers(
    lab: Lab, engine: DockerClient, tmp_path: Path
) -> None:
    conf_dir = tmp_path / "conf.d"
    conf_dir.mkdir()
    cid = lab.run_nginx(conf_dir)

    async def with_workers() -> Inspect | None:
        top = await engine.top(cid, "-o pid,ppid,args")
        args = [row[2] for row in top["Processes"]]
        if any("master process" in a for a in args) and any("worker process" in a for a in args):
            return top
        return None

    top = await poll(with_workers, 10.0, message="nginx master and workers")
    assert top["Titles"] == ["PID", "PPID", "COMMAND"]
    rows = top["Processes"]
    masters = [row for row in rows if "nginx: master process" in row[2]]
    workers = [row for row in rows if "nginx: worker process" in row[2]]
    assert len(masters) == 1
    assert workers
    assert all(row[1] == masters[0][0] for row in workers)

    # Without ps_args the engine runs its own default (`ps -ef` on Docker 20.10).
    default = await engine.top(cid)
    pid_column = default["Titles"].index("PID")
    pids = {row[pid_column] for row in default["Processes"]}
    assert {masters[0][0], workers[0][0]} <= pids


async def test_list_networks_includes_host(engine: DockerClient) -> None:
    networks = await engine.list_networks()
    by_name = {n["Name"]: n for n in networks}
    assert "host" in by_name
    assert by_name["host"]["Driver"] == "host"
    only_host = await engine.list_networks(filters={"name": ["host"]})
    assert "host" in {n["Name"] for n in only_host}


async def test_version_and_negotiated_api_version(engine: DockerClient) -> None:
    version = await engine.version()
    assert "ApiVersion" in version
    reported = parse_version(version["ApiVersion"])
    assert engine.api_version == reported
    assert engine.api_version == min(reported, MAX_API_VERSION)
    if str(version.get("Version", "")).startswith("20.10."):
        assert engine.api_version == (1, 41)  # the lab's engine
    assert engine.ping_info is not None
    assert engine.ping_info.api_version == reported
    assert engine.ping_info.os_type == "linux"
    assert engine.ping_info.is_podman is False
