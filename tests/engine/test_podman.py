"""lbsync against Podman's Docker-compatible API (``podman system service``).

The engine is a Podman of this module's own
(:class:`tests.support.podman_lab.PodmanEngine`): its socket, storage, run root and events log
live in a folder under /tmp made here, so the lab's dockerd is untouched. Images come from the
lab's dockerd (``docker save | podman load``).

The first tests are pure: they pin how lbsync reads answers captured from Debian's podman
4.3.1 (inspect, ``top``, events, error statuses). The rest run against the real Podman: our
client, then a real ``lbsync run`` beside a Podman nginx (``check: exec``, ``reload: signal``).
What Podman does differently, as measured here:

* ``/_ping`` carries ``Libpod-Api-Version``; the compat API speaks Docker API 1.41;
* removal is ``remove`` (Docker: ``destroy``); ``podman stop`` sends ``die`` with no ``kill``
  and only now and then a ``stop``; ``kill`` has no ``signal`` attribute; health events are
  the bare ``health_status`` with the value in a top-level ``HealthStatus``, sent on every
  probe, one probe late, and before the new status is stored (an inspect right after one
  may still read the old status);
* host-network containers have empty ``NetworkSettings.Networks``; ``StopSignal`` is a number;
* kill or exec of a stopped container is 500 "container state improper" (Docker: 409), and
  ``top`` of one is an empty 200; ``top`` rows are single strings, not columns;
* health checks run only when ``podman healthcheck run`` is called (no systemd here).
"""

from __future__ import annotations

import asyncio
import json
import secrets
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from lbsync.apply.proxy import pids_from_top
from lbsync.engine.client import MAX_API_VERSION, MIN_API_VERSION, DockerClient
from lbsync.engine.endpoint import resolve_endpoint
from lbsync.engine.errors import ApiError, BadRequest, Conflict, NotFound, ServerError
from lbsync.engine.events import Event
from lbsync.engine.inspect import container_from_inspect
from lbsync.state.event_plan import CONTAINER_ACTIONS, WATCHED_EVENTS, is_terminating_kill
from lbsync.state.subscription import StreamEnd, subscribed_events
from tests.support.fake_engine import FakeEngine
from tests.support.lab import BACKEND_IMAGE, NGINX_IMAGE, free_port, images_available, wait_for
from tests.support.podman_lab import HealthProber, LbsyncRun, PodmanEngine, podman_installed
from tests.support.prerequisites import IN_CI, require_engine

engine = pytest.mark.engine

# --- answers captured from podman 4.3.1 (Debian 12), trimmed to what lbsync reads ----------

PODMAN_ID = "a05790c1f8fc3696ba057680307fe684b5a473afb349161421f89371d6438abc"

#: GET /v1.41/containers/{id}/json of `podman run -d --network host --health-cmd ...`
#: after one probe.
PODMAN_INSPECT: dict[str, Any] = {
    "Id": PODMAN_ID,
    "Created": "2026-11-28T06:42:31.732551587Z",
    "Name": "/exp1",
    "State": {
        "Status": "running",
        "Running": True,
        "Paused": False,
        "Restarting": False,
        "OOMKilled": False,
        "Dead": False,
        "Pid": 3243,
        "ExitCode": 0,
        "Error": "",
        "StartedAt": "2026-11-28T06:42:31.910231861Z",
        "FinishedAt": "0001-01-01T00:00:00Z",
        "Health": {
            "Status": "healthy",
            "FailingStreak": 0,
            "Log": [
                {
                    "Start": "2026-11-28T06:42:32.454179193Z",
                    "End": "2026-11-28T06:42:32.586134574Z",
                    "ExitCode": 0,
                    "Output": "",
                }
            ],
        },
    },
    "HostConfig": {"NetworkMode": "host", "PortBindings": {}},
    "Config": {
        "Env": [
            "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "TERM=xterm",
            "container=podman",
            "PORT=18081",
            "NAME=x",
            "HOME=/root",
            "HOSTNAME=vm",
        ],
        "Labels": {"lbsync-test": "1", "lbsync.enable": "true", "lbsync.host": "a.test"},
        "StopSignal": "15",
        "Healthcheck": {
            "Test": ["CMD-SHELL", "wget -q -O /dev/null http://127.0.0.1:18081/"],
            "Interval": 1000000000,
            "Timeout": 30000000000,
            "Retries": 1,
        },
        "ExposedPorts": None,
    },
    "NetworkSettings": {
        "Bridge": "",
        "SandboxID": "",
        "Ports": {},
        "IPAddress": "",
        "Networks": {},
    },
}

#: The events stream's lines for a probe, `podman kill`, and `podman rm` (attributes trimmed).
PODMAN_EVENTS = [
    {
        "status": "health_status",
        "id": PODMAN_ID,
        "from": "localhost/lbsync-lab/backend:latest",
        "Type": "container",
        "Action": "health_status",
        "Actor": {"ID": PODMAN_ID, "Attributes": {"containerExitCode": "0", "name": "exp1"}},
        "scope": "local",
        "time": 1795848152,
        "timeNano": 1795848152523834355,
        "HealthStatus": "starting",
    },
    {
        "status": "kill",
        "id": PODMAN_ID,
        "Type": "container",
        "Action": "kill",
        "Actor": {"ID": PODMAN_ID, "Attributes": {"containerExitCode": "0", "name": "exp1"}},
        "time": 1795848154,
        "timeNano": 1795848154473937256,
    },
    {
        "status": "remove",
        "id": PODMAN_ID,
        "Type": "container",
        "Action": "remove",
        "Actor": {"ID": PODMAN_ID, "Attributes": {"containerExitCode": "0", "name": "exp1"}},
        "time": 1795848155,
        "timeNano": 1795848155054170860,
    },
]

#: GET /v1.41/containers/{id}/top of the lab nginx: one string per row, one title.
PODMAN_TOP = {
    "Processes": [["1 root     nginx: master process nginx"], ["6 root     nginx: worker process"]],
    "Titles": ["PID   USER     COMMAND"],
}
DOCKER_TOP = {
    "Processes": [
        ["root", "4100", "4080", "0", "10:00", "?", "00:00:00", "nginx: master process nginx"],
        ["www-data", "4150", "4100", "0", "10:00", "?", "00:00:00", "nginx: worker process"],
    ],
    "Titles": ["UID", "PID", "PPID", "C", "STIME", "TTY", "TIME", "CMD"],
}

PODMAN_KILL_STOPPED = (
    f"can only kill running containers. {PODMAN_ID} is in state exited: container state improper"
)


# --- pure tests: Podman's answers as lbsync reads them -------------------------------------


def test_inspect_of_a_podman_host_network_container() -> None:
    container = container_from_inspect(PODMAN_INSPECT)
    assert container.id == PODMAN_ID
    assert container.name == "exp1"
    assert container.network_mode == "host"
    assert container.uses_host_network
    assert container.networks == ()  # Podman: empty Networks for host mode
    assert container.state == "running"
    assert container.health == "healthy"
    assert container.stop_signal == "SIGTERM"  # Podman says "15"
    assert dict(container.env) == {}  # only nginx-proxy's VIRTUAL_* are kept
    assert container.labels["lbsync.host"] == "a.test"
    created = datetime(2026, 11, 28, 6, 42, 31, tzinfo=UTC)
    assert container.created_ns == int(created.timestamp()) * 1_000_000_000 + 732551587
    assert container.started_at == "2026-11-28T06:42:31.910231861Z"


def test_podman_container_without_health_check_has_health_none() -> None:
    data = json.loads(json.dumps(PODMAN_INSPECT))
    data["State"]["Health"] = {"Status": "", "FailingStreak": 0, "Log": None}
    del data["Config"]["Healthcheck"]
    assert container_from_inspect(data).health == "none"


@pytest.mark.parametrize("status", ["starting", "healthy", "unhealthy"])
def test_libpod_healthcheck_key_is_read_too(status: str) -> None:
    """Podman 4's own inspect says `State.Healthcheck`; the compat one `State.Health`."""
    data = json.loads(json.dumps(PODMAN_INSPECT))
    data["State"]["Healthcheck"] = {"Status": status, "FailingStreak": 0, "Log": None}
    del data["State"]["Health"]
    assert container_from_inspect(data).health == status


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("15", "SIGTERM"),
        ("3", "SIGQUIT"),
        (9, "SIGKILL"),
        ("SIGQUIT", "SIGQUIT"),
        ("", "SIGTERM"),
        (None, "SIGTERM"),
        ("999", "999"),
    ],
)
def test_stop_signal_number_becomes_a_name(value: object, expected: str) -> None:
    data = json.loads(json.dumps(PODMAN_INSPECT))
    data["Config"]["StopSignal"] = value
    assert container_from_inspect(data).stop_signal == expected


def test_podman_events_as_lbsync_reads_them() -> None:
    health, kill, remove = (Event.from_json(line) for line in PODMAN_EVENTS)
    assert health.action == "health_status"  # bare: no ": healthy" suffix
    assert health.base_action == "health_status"
    assert health.raw["HealthStatus"] == "starting"  # one probe late: inspect is the truth
    assert kill.attributes.get("signal") is None
    container = container_from_inspect(PODMAN_INSPECT)
    assert is_terminating_kill(kill, container) is False  # `die` follows if it ends
    assert remove.action == "remove"
    assert remove.actor_id == PODMAN_ID


def test_pids_from_podman_and_docker_top() -> None:
    assert pids_from_top(PODMAN_TOP) == {1, 6}
    assert pids_from_top(DOCKER_TOP) == {4100, 4150}
    assert pids_from_top({"Processes": [["7"]], "Titles": ["PID"]}) == {7}
    assert pids_from_top({}) == set()
    assert pids_from_top({"Processes": [["x y"]], "Titles": ["PID   CMD"]}) == set()


@pytest.mark.parametrize(
    ("path", "message", "error"),
    [
        pytest.param(
            f"/containers/{PODMAN_ID}/kill", PODMAN_KILL_STOPPED, Conflict, id="kill-stopped"
        ),
        pytest.param(
            f"/containers/{PODMAN_ID}/exec",
            "can only create exec sessions on running containers: container state improper",
            Conflict,
            id="exec-stopped",
        ),
        pytest.param(
            f"/containers/{PODMAN_ID}/kill", "invalid signal: BOGUS", BadRequest, id="bad-signal"
        ),
        pytest.param(f"/containers/{PODMAN_ID}/kill", "boom", ServerError, id="other-500"),
    ],
)
async def test_podman_500s_become_docker_classes(
    fake_engine: FakeEngine,
    fake_client: DockerClient,
    path: str,
    message: str,
    error: type[ApiError],
) -> None:
    cause = message.rpartition(": ")[2]
    fake_engine.json_route(
        "POST", path, {"cause": cause, "message": message, "response": 500}, status=500
    )
    async with fake_client:
        with pytest.raises(error) as info:
            if path.endswith("/kill"):
                await fake_client.kill(PODMAN_ID, "HUP")
            else:
                await fake_client.exec(PODMAN_ID, ["true"])
    assert info.value.status == 500
    assert info.value.engine_message == message


async def test_podman_empty_top_is_conflict(
    fake_engine: FakeEngine, fake_client: DockerClient
) -> None:
    async def empty(request: web.Request) -> web.StreamResponse:
        return web.Response(status=200, body=b"")

    fake_engine.route("GET", f"/containers/{PODMAN_ID}/top", empty)
    async with fake_client:
        with pytest.raises(Conflict, match="not running"):
            await fake_client.top(PODMAN_ID)


# --- the real Podman -------------------------------------------------------------------------


def require_podman() -> None:
    """Podman, and the lab's dockerd with its images (they are copied from there)."""
    if not podman_installed():
        if IN_CI:
            pytest.fail(
                "CI=true but podman is not installed "
                "(apt-get install -y --no-install-recommends podman)"
            )
        pytest.skip("podman is not installed (apt-get install -y --no-install-recommends podman)")
    require_engine()
    if not images_available():
        if IN_CI:
            pytest.fail("CI=true but the lab images are missing (bash lab/lab.sh images)")
        pytest.skip("the lab images are missing (bash lab/lab.sh images)")


@pytest.fixture(scope="module")
def podman_engine() -> Iterator[PodmanEngine]:
    """One Podman service for the module, all its state in a fresh folder, removed after."""
    require_podman()
    root = Path(tempfile.mkdtemp(prefix="lbp-", dir="/tmp"))  # short: AF_UNIX path limit
    instance = PodmanEngine(root)
    try:
        instance.start()
        instance.load_image(BACKEND_IMAGE)
        instance.load_image(NGINX_IMAGE)
        yield instance
    finally:
        instance.cleanup()


@pytest.fixture
def podman(podman_engine: PodmanEngine) -> Iterator[PodmanEngine]:
    """The module's Podman; the containers a test started are removed after it."""
    try:
        yield podman_engine
    finally:
        podman_engine.remove_containers()


@pytest.fixture
async def client(podman: PodmanEngine) -> AsyncIterator[DockerClient]:
    """Our client, connected to the Podman socket."""
    instance = DockerClient(resolve_endpoint(podman.host, {}))
    await instance.connect()
    try:
        yield instance
    finally:
        await instance.close()


def labels_for(run: str, **more: str) -> dict[str, str]:
    return {"lbsync-run": run, **more}


@engine
async def test_ping_identifies_podman(client: DockerClient) -> None:
    info = client.ping_info
    assert info is not None
    assert info.is_podman is True
    assert info.api_version >= MIN_API_VERSION
    assert client.api_version == min(info.api_version, MAX_API_VERSION)
    version = await client.version()
    assert any(c.get("Name") == "Podman Engine" for c in version.get("Components") or [])


@engine
async def test_list_and_inspect_a_host_network_container(
    podman: PodmanEngine, client: DockerClient
) -> None:
    run = secrets.token_hex(4)
    port = free_port()
    cid = await asyncio.to_thread(
        podman.run_backend, port, labels=labels_for(run, **{"lbsync.host": "a.test"})
    )

    listed = await client.list_containers(filters={"label": [f"lbsync-run={run}"]})
    assert [item["Id"] for item in listed] == [cid]

    container = container_from_inspect(await client.inspect_container(cid))
    assert container.network_mode == "host"
    assert container.networks == ()
    assert container.state == "running"
    assert container.health == "none"
    assert container.labels["lbsync.host"] == "a.test"
    assert dict(container.env) == {}  # PORT, NAME, ...: only nginx-proxy's VIRTUAL_* are kept
    assert container.stop_signal == "SIGTERM"
    assert container.created_ns > 0
    assert container.started_at

    await asyncio.to_thread(podman.stop_container, cid, 2)
    stopped = container_from_inspect(await client.inspect_container(cid))
    assert stopped.state == "exited"


@engine
async def test_stopped_container_errors_are_typed(
    podman: PodmanEngine, client: DockerClient
) -> None:
    cid = await asyncio.to_thread(podman.run_backend, free_port())
    await asyncio.to_thread(podman.stop_container, cid, 2)

    with pytest.raises(Conflict) as kill:
        await client.kill(cid, "HUP")
    assert kill.value.status == 500  # Docker: 409
    assert "container state improper" in kill.value.engine_message
    with pytest.raises(Conflict):
        await client.exec(cid, ["true"])
    with pytest.raises(Conflict):
        await client.top(cid)  # Podman: an empty 200

    unknown = f"lbsync-test-unknown-{secrets.token_hex(4)}"
    with pytest.raises(NotFound):
        await client.inspect_container(unknown)
    with pytest.raises(NotFound):
        await client.kill(unknown, "HUP")


@engine
async def test_top_exec_and_signal_on_podman_nginx(
    podman: PodmanEngine, client: DockerClient, tmp_path: Path
) -> None:
    """What `check: exec` and `reload: signal` use: exec, kill and top (pids of its own)."""
    conf_dir = tmp_path / "conf.d"
    conf_dir.mkdir()
    cid = await asyncio.to_thread(podman.run_nginx, conf_dir)

    async def pids() -> set[int]:
        return pids_from_top(await client.top(cid))

    before = await pids()
    assert 1 in before and len(before) >= 2  # master (pid 1 in its namespace) and a worker

    result = await client.exec(cid, ["nginx", "-t"])
    assert result.exit_code == 0, result.output
    assert "syntax is ok" in result.output
    failed = await client.exec(cid, ["sh", "-c", "echo out; echo err >&2; exit 3"])
    assert (failed.exit_code, failed.stdout, failed.stderr) == (3, b"out\n", b"err\n")

    await client.kill(cid, "HUP")
    deadline = time.monotonic() + 10
    while not (await pids()) - before:
        assert time.monotonic() < deadline, "no new nginx worker after HUP"
        await asyncio.sleep(0.05)


async def collect(
    queue: asyncio.Queue[Event | StreamEnd],
    seen: list[Event],
    until: Callable[[list[Event]], bool],
    timeout: float = 15.0,
) -> None:
    """Move events from `queue` into `seen` until `until(seen)` holds."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not until(seen):
        remaining = deadline - asyncio.get_running_loop().time()
        if remaining <= 0:
            actions = [(e.action, e.actor_id[:12]) for e in seen]
            raise AssertionError(f"events not seen within {timeout:g}s; seen: {actions}")
        try:
            async with asyncio.timeout(remaining):
                item = await queue.get()
        except TimeoutError:
            continue
        if isinstance(item, StreamEnd):
            raise item.error
        seen.append(item)


@engine
async def test_events_of_a_container_life(podman: PodmanEngine, client: DockerClient) -> None:
    port = free_port()
    seen: list[Event] = []

    def actions(cid: str) -> Callable[[list[Event]], list[str]]:
        return lambda events: [e.action for e in events if e.actor_id == cid]

    def has(cid: str, action: str, count: int = 1) -> Callable[[list[Event]], bool]:
        return lambda events: actions(cid)(events).count(action) >= count

    # lbsync's own filter: Podman names `die` `died` in it, and drops the probes' events.
    async with subscribed_events(client, filters=WATCHED_EVENTS) as queue:
        cid = await asyncio.to_thread(podman.run_backend, port, health=True)
        await collect(queue, seen, has(cid, "start"))

        # No systemd: the probe runs when we say so. The event is the bare `health_status`.
        assert await asyncio.to_thread(podman.healthcheck_run, cid)
        await collect(queue, seen, has(cid, "health_status"))
        health = next(e for e in seen if e.actor_id == cid and e.base_action == "health_status")
        assert health.action == "health_status"
        assert health.raw.get("HealthStatus") in ("starting", "healthy")  # one probe late
        inspected = container_from_inspect(await client.inspect_container(cid))
        assert inspected.health == "healthy"  # inspect is the truth

        # `podman stop`: `die`, no `kill` before it (Docker: kill, die, stop). A `stop` event
        # comes only now and then (2 stops in 12 here), so lbsync must not wait for one.
        await asyncio.to_thread(podman.stop_container, cid, 2)
        await collect(queue, seen, has(cid, "die"))
        assert "kill" not in actions(cid)(seen)

        # `podman kill`: `kill` without a signal attribute, then `die`.
        await asyncio.to_thread(podman.podman, "start", cid)
        await collect(queue, seen, has(cid, "start", 2))
        await asyncio.to_thread(podman.kill, cid, "KILL")
        await collect(queue, seen, has(cid, "die", 2))
        kills = [e for e in seen if e.actor_id == cid and e.action == "kill"]
        assert kills and all("signal" not in e.attributes for e in kills)

        # `podman rm`: `remove`, not `destroy`.
        await asyncio.to_thread(podman.remove, cid)
        await collect(queue, seen, has(cid, "remove"))

    assert "destroy" not in actions(cid)(seen)
    # exec_died of the probes, init and cleanup: not sent.
    assert set(actions(cid)(seen)) <= CONTAINER_ACTIONS


@engine
def test_lbsync_run_against_podman(podman: PodmanEngine, tmp_path: Path) -> None:
    """A real `lbsync run` on the Podman socket beside a Podman nginx (check: exec in it,
    reload: HUP through the API, confirmed by `top`): host-network backends are routed, a
    HEALTHCHECK one only once `podman healthcheck run` says healthy, `podman stop` (die, no
    stop event) and `podman rm` (remove, no destroy) take them out."""
    run = secrets.token_hex(4)
    target = f"t-{run}"
    conf_dir = tmp_path / "conf.d"
    conf_dir.mkdir()
    podman.run_nginx(conf_dir, labels={"lbsync.proxy": target}, name=f"lbsync-test-nginx-{run}")

    with LbsyncRun(
        tmp_path,
        host=podman.host,
        target={
            "name": target,
            "output": str(conf_dir / "lbsync.conf"),
            "select": {"label": f"lbsync-run={run}"},
        },
    ) as lbsync:
        lbsync.wait_healthy()

        def backend(name: str, port: int, health: bool = False) -> str:
            labels = labels_for(
                run, **{"lbsync.enable": "true", "lbsync.host": "a.test", "lbsync.port": str(port)}
            )
            return podman.run_backend(
                port, name=f"lbsync-test-{name}-{run}", labels=labels, health=health
            )

        port1, port2 = free_port(), free_port()
        web1 = backend("web1", port1)
        lbsync.wait_output(lambda text: f"server 127.0.0.1:{port1} " in text)
        lbsync.wait_answers("a.test", {f"lbsync-test-web1-{run}"})

        # A HEALTHCHECK container: skipped while `starting` (no systemd: no probe runs by
        # itself), routed once probes pass. The prober repeats them like systemd's timer:
        # Podman 4.3 sends `health_status` before it stores the new status, so the inspect
        # that follows one event may still read the old one and only the next probe's event
        # shows the change (1 in 12 here).
        web2 = backend("web2", port2, health=True)
        lbsync.wait_skipped(web2, "not_healthy")
        assert f"127.0.0.1:{port2}" not in lbsync.output_text()
        with HealthProber(podman, [web2]):
            lbsync.wait_output(lambda text: f"server 127.0.0.1:{port2} " in text)
            lbsync.wait_answers("a.test", {f"lbsync-test-web1-{run}", f"lbsync-test-web2-{run}"})
            assert podman.health(web2) == "healthy"

            # Unhealthy again: out.
            podman.exec(web2, "touch", "/tmp/unhealthy")
            lbsync.wait_output(lambda text: f"127.0.0.1:{port2}" not in text)
            lbsync.wait_skipped(web2, "not_healthy")

        # `podman stop`: Podman sends no `stop` (nor `kill`) event; `die` takes it out.
        podman.stop_container(web1, 2)
        lbsync.wait_output(lambda text: f"127.0.0.1:{port1}" not in text)
        lbsync.wait_skipped(web1, "not_running")
        wait_for(lambda: lbsync.get("a.test")[0] == 503, 10, 0.05, "a.test answers 503")

        # `podman rm`: the `remove` event drops it from the registry.
        podman.remove(web1)
        wait_for(lambda: web1 not in lbsync.skipped_ids(), 10, 0.05, "web1 forgotten")
        status = lbsync.status()
        assert status["engine"]["connected"] is True
        assert status["engine"]["api_version"] == "1.41"
        assert status["targets"][0]["last_reload_result"] == "ok"
    assert "Traceback" not in lbsync.log_text()
