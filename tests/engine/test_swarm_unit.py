"""Swarm discovery without an engine: `lbsync.engine.swarm` over golden JSON, the config key, and
the watcher's swarm half against a FAKE manager.

The golden inputs in tests/testdata/swarm/ are the engine's own answers (Docker 20.10.24, API
1.41) from a one-node swarm on 127.0.0.1 (see the README there). Cases that one node cannot
show (a task on another node, a node advertising 0.0.0.0) are those answers with one field
changed, and say so.
"""

from __future__ import annotations

import asyncio
import copy
import json
import logging
import urllib.parse
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest
from aiohttp import web

from lbsync.config.errors import ConfigError
from lbsync.config.parse import parse_config
from lbsync.config.schema import DiscoveryConfig, TargetConfig
from lbsync.engine.client import DockerClient
from lbsync.engine.container import Container, NetworkAttachment, PublishedPort
from lbsync.engine.inspect import KEPT_ENV
from lbsync.engine.swarm import (
    NO_RUNNING_TASK,
    NODE_HOST_MODE,
    STOPPING,
    is_settled,
    is_task_container,
    is_updating,
    mask_task_container,
    node_addresses,
    reachable_node_address,
    service_containers,
    swarm_info,
    task_container,
    task_container_id,
)
from lbsync.model.builder import build_model
from lbsync.model.entries import parse_entry
from lbsync.state.change import Change
from lbsync.state.event_plan import WATCHED_EVENTS
from lbsync.state.registry import Registry, is_serving
from lbsync.state.watcher import Watcher
from tests.support.fake_engine import FakeEngine

DATA = Path(__file__).parents[1] / "testdata" / "swarm"
NODE = "hhtyuv1czhubp5zmuhum9ogjv"  # the one node of the capture
OVERLAY = "lbsw-ov"


def load(name: str) -> Any:
    return json.loads((DATA / name).read_text())


SERVICES: dict[str, dict[str, Any]] = {s["Spec"]["Name"]: s for s in load("services.json")}
TASKS: list[dict[str, Any]] = load("tasks.json")
NODES: dict[str, str] = node_addresses(load("nodes.json"))


def tasks_of(name: str, tasks: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    sid = SERVICES[name]["ID"]
    return [t for t in (TASKS if tasks is None else tasks) if t["ServiceID"] == sid]


def one_task(name: str) -> dict[str, Any]:
    (task,) = tasks_of(name)
    return task


def labels_of(name: str) -> dict[str, str]:
    labels: dict[str, str] = SERVICES[name]["Spec"]["Labels"]
    return labels


# --------------------------------------------------------------------------- the engine's JSON


def test_info_of_a_manager_and_of_a_plain_engine() -> None:
    info = swarm_info(load("info.json"))
    assert (info.node_id, info.node_addr, info.is_manager) == (NODE, "127.0.0.1", True)
    plain = swarm_info({"Swarm": {"LocalNodeState": "inactive", "ControlAvailable": False}})
    assert not plain.is_manager
    worker = swarm_info({"Swarm": {"LocalNodeState": "active", "ControlAvailable": False}})
    assert not worker.is_manager
    assert not swarm_info({}).is_manager  # Podman: no Swarm section worth the name


def test_node_addresses() -> None:
    assert NODES == {NODE: "127.0.0.1"}


@pytest.mark.parametrize(
    ("addr", "expected"),
    [
        ("10.20.0.7", "10.20.0.7"),
        ("192.168.1.5", "192.168.1.5"),
        ("fd00::7", "fd00::7"),
        ("127.0.0.1", None),  # a one-node swarm on loopback: host_address instead
        ("127.1.2.3", None),
        ("::1", None),
        ("0.0.0.0", None),
        ("::", None),
        ("", None),
        ("node-1.example", None),
    ],
)
def test_reachable_node_address(addr: str, expected: str | None) -> None:
    assert reachable_node_address(addr) == expected


# --------------------------------------------------------------------------- tasks mode


@dataclass(frozen=True)
class Case:
    """One service of the capture, in one mode: what each of its containers must be."""

    service: str
    mode: str
    # Per container, sorted by name: (id kind, name, state, network_mode, networks).
    expected: list[tuple[str, str, str, str, tuple[NetworkAttachment, ...]]]
    exposed: tuple[int, ...] = ()
    published: tuple[PublishedPort, ...] = ()


OVERLAY_ID = "vpw8jp8gcmlkajsu2qdhn4hi5"


def _overlay(ip: str) -> tuple[NetworkAttachment, ...]:
    return (NetworkAttachment(OVERLAY, OVERLAY_ID, ip),)


HOST_NET = "ys63r7dnh9dgr46f7oujildhj"
CASES = [
    # A host-network task on a node that advertises 127.0.0.1: network_mode host, so routing
    # uses discovery.host_address.
    Case("web", "tasks", [("task", "web.1", "running", "host", (
        NetworkAttachment("host", HOST_NET, ""),))]),
    # Global: named after the node, as `docker service ps` does.
    Case("glob", "tasks", [("task", f"glob.{NODE}", "running", "host", (
        NetworkAttachment("host", HOST_NET, ""),))]),
    Case("vipsvc", "tasks", [("task", "vipsvc.1", "running", "default", _overlay("10.0.1.3"))]),
    # Published ports: ingress is left out of the networks; ingress-published ports are
    # reached on host_address (""), host-mode ones on the node's address (loopback: "").
    Case(
        "pub",
        "tasks",
        [("task", "pub.1", "running", "default", _overlay("10.0.1.6"))],
        exposed=(8080, 8081),
        published=(PublishedPort(8080, "", 18090), PublishedPort(8081, "", 18091)),
    ),
    # Not scheduled (no node satisfies its constraint): its state, so no traffic but the host
    # stays.
    Case("pending", "tasks", [("task", "pending.1", "pending", "default", _overlay("10.0.1.9"))]),
    # Zero replicas: a placeholder keeps the service's hosts (503).
    Case("zero", "tasks", [("service", "zero", NO_RUNNING_TASK, "default", ())]),
    Case("dnsrr", "tasks", [("task", "dnsrr.1", "running", "default", _overlay("10.0.1.10"))]),
    # VIP mode: the service's virtual IP on the overlay, named through its task.
    Case("vipsvc", "vip", [("service", "vipsvc", "running", "default", _overlay("10.0.1.2"))]),
    Case(
        "pub",
        "vip",
        [("service", "pub", "running", "default", _overlay("10.0.1.5"))],
        exposed=(8080, 8081),
        published=(PublishedPort(8080, "", 18090),),  # host-mode ports are per node: not here
    ),
    Case("pending", "vip", [
        ("service", "pending", NO_RUNNING_TASK, "default", _overlay("10.0.1.8"))]),
    # No task names the network: its id stands in for its name (no traffic anyway).
    Case("zero", "vip", [("service", "zero", NO_RUNNING_TASK, "default", (
        NetworkAttachment(OVERLAY_ID, OVERLAY_ID, "10.0.1.7"),))]),
    # No virtual IP (host network, dnsrr): routed per task, as in tasks mode.
    Case("web", "vip", [("task", "web.1", "running", "host", (
        NetworkAttachment("host", HOST_NET, ""),))]),
    Case("dnsrr", "vip", [("task", "dnsrr.1", "running", "default", _overlay("10.0.1.10"))]),
]  # fmt: skip


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c.service}-{c.mode}")
def test_service_containers(case: Case) -> None:
    service = SERVICES[case.service]
    got = service_containers(service, TASKS, case.mode, NODES)
    shape = [
        (
            "task" if c.id.startswith("swarm-task:") else "service",
            c.name,
            c.state,
            c.network_mode,
            c.networks,
        )
        for c in got
    ]
    assert shape == case.expected
    for container in got:
        assert dict(container.labels) == labels_of(case.service)
        assert container.exposed_ports == case.exposed
        assert container.published_ports == case.published
        assert container.created_ns > 0
        if container.id.startswith("swarm-task:"):
            task = next(t for t in TASKS if task_container_id(t["ID"]) == container.id)
            env = dict(e.split("=", 1) for e in task["Spec"]["ContainerSpec"].get("Env", []))
            assert dict(container.env) == {k: v for k, v in env.items() if k in KEPT_ENV}
        else:
            assert container.id == "swarm-service:" + service["ID"]


def test_only_the_services_own_current_tasks_count() -> None:
    # The whole task list (other services' tasks) gives the same as the service's own.
    assert service_containers(SERVICES["vipsvc"], TASKS, "tasks", NODES) == service_containers(
        SERVICES["vipsvc"], tasks_of("vipsvc"), "tasks", NODES
    )


def _elsewhere(task: dict[str, Any], node: str = "node2") -> dict[str, Any]:
    """The captured task, placed on another node (one node cannot show that)."""
    moved = copy.deepcopy(task)
    moved["NodeID"] = node
    return moved


def test_host_network_task_on_another_node_uses_the_nodes_address() -> None:
    task = _elsewhere(one_task("web"))
    nodes = {**NODES, "node2": "10.20.0.7"}
    container = task_container(SERVICES["web"], task, nodes)
    assert container.network_mode == NODE_HOST_MODE
    assert container.networks == (NetworkAttachment("host", HOST_NET, "10.20.0.7"),)


def test_host_mode_published_port_on_another_node() -> None:
    task = _elsewhere(one_task("pub"))
    container = task_container(SERVICES["pub"], task, {**NODES, "node2": "10.20.0.7"})
    assert container.published_ports == (
        PublishedPort(8080, "", 18090),
        PublishedPort(8081, "10.20.0.7", 18091),
    )


@pytest.mark.parametrize(
    ("nodes", "mode", "ip"),
    [
        ({"node2": "0.0.0.0"}, "host", ""),  # known node, unusable address: host_address
        ({"node2": "127.0.0.1"}, "host", ""),
        ({}, NODE_HOST_MODE, ""),  # unknown node: no address at all (skipped)
    ],
)
def test_host_network_task_address_rule(nodes: dict[str, str], mode: str, ip: str) -> None:
    container = task_container(SERVICES["web"], _elsewhere(one_task("web")), nodes)
    assert container.network_mode == mode
    assert container.networks == (NetworkAttachment("host", HOST_NET, ip),)


def test_a_task_keeps_only_the_env_vars_lbsync_reads() -> None:
    task = copy.deepcopy(one_task("web"))
    task["Spec"]["ContainerSpec"]["Env"] = [
        "DATABASE_URL=postgres://u:secret@db/app",
        "VIRTUAL_HOST=a.test",
        "VIRTUAL_PORT=8080",
        "VIRTUAL_PROTO=https",
    ]
    container = task_container(SERVICES["web"], task, NODES)
    assert dict(container.env) == {"VIRTUAL_HOST": "a.test", "VIRTUAL_PORT": "8080"}


def test_health_of_a_task_whose_container_is_here() -> None:
    task = one_task("vipsvc")
    cid = task["Status"]["ContainerStatus"]["ContainerID"]
    assert task_container(SERVICES["vipsvc"], task, NODES).health == "none"
    assert task_container(SERVICES["vipsvc"], task, NODES, {cid: "unhealthy"}).health == (
        "unhealthy"
    )


def test_rolling_update_in_progress() -> None:
    """Mid `docker service update`: the old task runs but is being stopped, the new one is
    pre-created `ready`, and the shut-down history task is left out."""
    service = load("service-web-updating.json")
    tasks = load("tasks-web-updating-all.json")
    got = service_containers(service, tasks, "tasks", NODES)
    assert sorted(c.state for c in got) == ["ready", STOPPING]
    assert not any(is_serving(c) for c in got)
    assert is_updating(service)
    assert not is_settled(service, tasks)


def test_settled() -> None:
    assert is_settled(SERVICES["web"], TASKS)
    assert is_settled(SERVICES["zero"], TASKS)
    assert not is_settled(SERVICES["pending"], TASKS)  # a task not yet running
    scaled = copy.deepcopy(SERVICES["web"])
    scaled["Spec"]["Mode"]["Replicated"]["Replicas"] = 3
    assert not is_settled(scaled, TASKS)  # swarm has not created the new tasks yet


# --------------------------------------------------------------------------- routing


def _model(containers: list[Container], discovery: DiscoveryConfig) -> dict[str, list[str]]:
    target = TargetConfig(name="t", template="builtin:nginx", output=Path("/tmp/x.conf"))
    entries = [parse_entry(c, discovery) for c in containers]
    model = build_model(entries, discovery, target, frozenset())
    return {
        h.name: [f"{s.address}:{s.port}" for r in h.routes for s in r.upstream.servers]
        for h in model.hosts
    }


@pytest.mark.parametrize(
    ("mode", "host_address", "expected"),
    [
        (
            "tasks",
            "127.0.0.1",
            {
                "svc.test": ["127.0.0.1:18081"],
                "glob.test": ["127.0.0.1:18082"],
                "vip.test": ["10.0.1.3:8080"],
                "pub.test": ["10.0.1.6:8080"],
                "dnsrr.test": ["10.0.1.10:8080"],
                "pending.test": [],
                "zero.test": [],
            },
        ),
        (
            "vip",
            "172.17.0.1",  # a proxy on a bridge network reaches the host there
            {
                "svc.test": ["172.17.0.1:18081"],
                "glob.test": ["172.17.0.1:18082"],
                "vip.test": ["10.0.1.2:8080"],
                "pub.test": ["10.0.1.5:8080"],
                "dnsrr.test": ["10.0.1.10:8080"],
                "pending.test": [],
                "zero.test": [],
            },
        ),
    ],
)
def test_routing_of_the_capture(mode: str, host_address: str, expected: dict[str, Any]) -> None:
    discovery = DiscoveryConfig(swarm=mode, host_address=host_address)  # type: ignore[arg-type]
    containers = [c for s in SERVICES.values() for c in service_containers(s, TASKS, mode, NODES)]
    assert _model(containers, discovery) == expected


def test_published_address_mode() -> None:
    discovery = DiscoveryConfig(swarm="vip", address="published", host_address="192.0.2.1")
    containers = service_containers(SERVICES["pub"], TASKS, "vip", NODES)
    assert _model(containers, discovery) == {"pub.test": ["192.0.2.1:18090"]}


# --------------------------------------------------------------------------- task containers


def _real_task_container(labels: Mapping[str, str]) -> Container:
    return Container(
        id="f" * 64,
        name="web.1.786tqxo54s3i8zolo5shgiu7c",
        created_ns=1,
        labels=MappingProxyType(dict(labels)),
        network_mode="host",
    )


def test_task_containers_are_not_routed_as_containers() -> None:
    own = {
        "com.docker.swarm.service.id": SERVICES["web"]["ID"],
        "com.docker.swarm.task.id": one_task("web")["ID"],
        "lbsync.enable": "true",  # container labels that would route it twice
        "lbsync.host": "svc.test",
        "lbsync.port": "18081",
        "lbsync.proxy": "edge",
    }
    real = _real_task_container(own)
    assert is_task_container(real)
    masked = mask_task_container(real, "lbsync")
    assert masked.labels["lbsync.enable"] == "false"
    assert masked.labels["lbsync.proxy"] == "edge"  # still found as a proxy
    discovery = DiscoveryConfig(swarm="tasks", exposed_by_default=True)
    assert _model([masked], discovery) == {}
    assert _model([real], discovery) == {"svc.test": ["127.0.0.1:18081"]}


def test_plain_containers_are_not_masked() -> None:
    plain = _real_task_container({"lbsync.enable": "true"})
    assert not is_task_container(plain)
    assert mask_task_container(plain, "lbsync") is plain


# --------------------------------------------------------------------------- config


@pytest.mark.parametrize(("value", "expected"), [("tasks", "tasks"), ("vip", "vip"), (None, None)])
def test_config_swarm(value: str | None, expected: str | None) -> None:
    assert parse_config({"discovery": {"swarm": value}}).discovery.swarm == expected
    assert parse_config(None).discovery.swarm is None


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("task", "discovery.swarm: expected one of tasks, vip, got 'task'"),
        (True, "discovery.swarm: expected one of tasks, vip, got true"),
        (["vip"], "discovery.swarm: expected one of tasks, vip, got a list"),
    ],
)
def test_config_swarm_errors(value: object, problem: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({"discovery": {"swarm": value}})
    assert info.value.problems == [problem]


# --------------------------------------------------------------------------- the watcher


@dataclass
class FakeManager:
    """A FAKE swarm manager: mutable services, tasks, nodes and containers; events fed live."""

    fake: FakeEngine
    manager: bool = True
    services: dict[str, dict[str, Any]] = field(default_factory=dict)
    tasks: list[dict[str, Any]] = field(default_factory=list)
    containers: dict[str, dict[str, Any]] = field(default_factory=dict)
    nodes: list[dict[str, Any]] = field(default_factory=lambda: load("nodes.json"))
    events: asyncio.Queue[dict[str, Any]] = field(default_factory=asyncio.Queue)

    def install(self) -> None:
        f = self.fake
        f.route("GET", "/info", self._info)
        f.route("GET", "/containers/json", self._containers)
        f.prefix_route("GET", "/containers/", self._container)
        f.route("GET", "/services", self._services)
        f.prefix_route("GET", "/services/", self._service)
        f.route("GET", "/tasks", self._tasks)
        f.route("GET", "/nodes", self._nodes)
        f.route("GET", "/events", self._events)

    def requests(self) -> list[str]:
        """Every request made, as `GET /v1.41/path?query` with the query decoded."""
        return [urllib.parse.unquote_plus(r) for r in self.fake.requests]

    def calls(self, path: str) -> list[str]:
        """The requests to `/v<version>/<path>`."""
        return [r for r in self.requests() if r.split("?")[0].split("/", 2)[-1] == path]

    async def _info(self, request: web.Request) -> web.StreamResponse:
        state = "active" if self.manager else "inactive"
        return web.json_response(
            {"Swarm": {"NodeID": NODE, "LocalNodeState": state, "ControlAvailable": self.manager}}
        )

    async def _containers(self, request: web.Request) -> web.StreamResponse:
        return web.json_response([{"Id": cid} for cid in self.containers])

    async def _container(self, request: web.Request) -> web.StreamResponse:
        cid = request.path.split("/")[3]
        if cid not in self.containers:
            return web.json_response({"message": "No such container"}, status=404)
        return web.json_response(self.containers[cid])

    async def _services(self, request: web.Request) -> web.StreamResponse:
        if not self.manager:
            return web.json_response({"message": "not a swarm manager"}, status=503)
        return web.json_response(list(self.services.values()))

    async def _service(self, request: web.Request) -> web.StreamResponse:
        sid = request.path.split("/")[3]
        if sid not in self.services:
            return web.json_response({"message": f"service {sid} not found"}, status=404)
        return web.json_response(self.services[sid])

    async def _tasks(self, request: web.Request) -> web.StreamResponse:
        filters = json.loads(request.query.get("filters", "{}"))
        found = [
            t
            for t in self.tasks
            if t["ServiceID"] in filters.get("service", [t["ServiceID"]])
            and t["DesiredState"] in filters.get("desired-state", [t["DesiredState"]])
        ]
        return web.json_response(found)

    async def _nodes(self, request: web.Request) -> web.StreamResponse:
        return web.json_response(self.nodes)

    async def _events(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        while True:
            event = await self.events.get()
            await response.write(json.dumps(event).encode() + b"\n")

    def emit(self, kind: str, action: str, actor: str, **attributes: str) -> None:
        self.events.put_nowait(
            {
                "Type": kind,
                "Action": action,
                "Actor": {"ID": actor, "Attributes": attributes},
                "time": 1_800_000_000,
                "timeNano": 1_800_000_000_000_000_000,
            }
        )


@pytest.fixture
async def manager(fake_engine: FakeEngine) -> FakeManager:
    engine = FakeManager(fake_engine)
    engine.install()
    return engine


@dataclass
class Running:
    watcher: Watcher
    registry: Registry
    changes: list[Change]
    task: asyncio.Task[None]

    def names(self) -> set[str]:
        return {c.name for c in self.registry.containers() if c.id.startswith("swarm-")}

    def state(self, name: str) -> str:
        return next((c.state for c in self.registry.containers() if c.name == name), "")


@pytest.fixture
async def start(fake_client: DockerClient) -> AsyncIterator[Callable[..., Running]]:
    started: list[Running] = []

    def go(mode: str = "tasks") -> Running:
        registry = Registry()
        changes: list[Change] = []
        watcher = Watcher(
            fake_client,
            registry,
            changes.append,
            resync=0,
            swarm=mode,  # type: ignore[arg-type]
        )
        running = Running(watcher, registry, changes, asyncio.create_task(watcher.run()))
        started.append(running)
        return running

    yield go
    for running in started:
        running.task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await running.task
    await fake_client.close()


async def until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.01)


def _task_container_json(task: dict[str, Any], service: dict[str, Any]) -> dict[str, Any]:
    """The inspect answer of a task's own container (labels as the engine sets them)."""
    return {
        "Id": task["Status"]["ContainerStatus"]["ContainerID"],
        "Name": f"/{service['Spec']['Name']}.{task['Slot']}.{task['ID']}",
        "Created": task["CreatedAt"],
        "Config": {
            "Labels": {
                "com.docker.swarm.service.id": service["ID"],
                "com.docker.swarm.task.id": task["ID"],
                "lbsync.enable": "true",
                "lbsync.host": "container-labels.test",
                "lbsync.port": "80",
            }
        },
        "State": {"Status": "running", "Running": True, "StartedAt": task["CreatedAt"]},
        "HostConfig": {"NetworkMode": "host"},
        "NetworkSettings": {"Networks": {"host": {"NetworkID": HOST_NET, "IPAddress": ""}}},
    }


async def test_watcher_lists_services_and_masks_task_containers(
    manager: FakeManager, start: Callable[..., Running]
) -> None:
    web_service = SERVICES["web"]
    manager.services = {s["ID"]: s for s in (web_service, SERVICES["vipsvc"])}
    manager.tasks = tasks_of("web") + tasks_of("vipsvc")
    real = _task_container_json(one_task("web"), web_service)
    manager.containers[real["Id"]] = real
    running = start()
    await until(lambda: running.watcher.listed.is_set())
    assert running.names() == {"web.1", "vipsvc.1"}
    assert running.watcher.swarm_active
    masked = running.registry.get(real["Id"])
    assert masked is not None and masked.labels["lbsync.enable"] == "false"
    assert manager.calls("tasks") == ['GET /v1.41/tasks?filters={"desired-state": ["running"]}']
    assert manager.calls("services") == ["GET /v1.41/services"]
    assert len(manager.calls("nodes")) == 1


async def test_service_events_look_the_service_up(
    manager: FakeManager, start: Callable[..., Running]
) -> None:
    vip = SERVICES["vipsvc"]
    manager.services = {vip["ID"]: vip}
    running = start()
    await until(lambda: running.watcher.listed.is_set())
    assert running.names() == {"vipsvc"}  # no task yet: the placeholder
    before = len(manager.requests())

    manager.tasks = tasks_of("vipsvc")
    manager.emit("service", "update", vip["ID"], name="vipsvc")
    manager.emit("service", "update", vip["ID"], name="vipsvc")  # one batch, one lookup
    await until(lambda: running.names() == {"vipsvc.1"})
    made = manager.requests()[before:]
    assert made == [
        f"GET /v1.41/services/{vip['ID']}",
        f'GET /v1.41/tasks?filters={{"service": ["{vip["ID"]}"], "desired-state": ["running"]}}',
    ]

    del manager.services[vip["ID"]]
    manager.emit("service", "remove", vip["ID"], name="vipsvc")
    await until(lambda: running.names() == set())
    assert running.changes[-1].urgent  # a serving task went away: no quiet window


async def test_a_kill_of_a_task_container_drains_its_task(
    manager: FakeManager, start: Callable[..., Running]
) -> None:
    web_service = SERVICES["web"]
    task = one_task("web")
    manager.services = {web_service["ID"]: web_service}
    manager.tasks = [task]
    real = _task_container_json(task, web_service)
    manager.containers[real["Id"]] = real
    running = start()
    await until(lambda: running.watcher.listed.is_set())
    assert running.state("web.1") == "running"
    manager.emit(
        "container",
        "kill",
        real["Id"],
        signal="15",
        **{
            "com.docker.swarm.service.id": web_service["ID"],
            "com.docker.swarm.task.id": task["ID"],
        },
    )
    await until(lambda: running.state("web.1") == "stopping")
    assert any(c.urgent and c.reason == "stopping" for c in running.changes)


async def test_tasks_are_listed_again_until_the_service_settles(
    manager: FakeManager, start: Callable[..., Running], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("lbsync.state.swarm_state.SETTLE_INTERVAL", 0.05)
    monkeypatch.setattr("lbsync.state.swarm_state.SETTLE_MIN", 0.2)
    vip = SERVICES["vipsvc"]
    manager.services = {vip["ID"]: vip}
    running = start()
    await until(lambda: running.watcher.listed.is_set())
    starting = copy.deepcopy(one_task("vipsvc"))
    starting["Status"]["State"] = "starting"
    manager.tasks = [starting]
    manager.emit("service", "update", vip["ID"])  # e.g. `docker service scale vipsvc=1`
    await until(lambda: running.state("vipsvc.1") == "starting")
    # On another node the task starts with no event at all: the polls see it.
    manager.tasks = tasks_of("vipsvc")
    await until(lambda: running.state("vipsvc.1") == "running")
    await until(lambda: not running.watcher.swarm_state.settling)  # settled: the polls stop
    count = len(manager.calls("tasks"))
    await asyncio.sleep(0.3)
    assert len(manager.calls("tasks")) == count


async def test_not_a_manager_means_containers_only(
    manager: FakeManager, start: Callable[..., Running], caplog: pytest.LogCaptureFixture
) -> None:
    manager.manager = False
    real = _task_container_json(one_task("web"), SERVICES["web"])
    manager.containers[real["Id"]] = real
    with caplog.at_level(logging.WARNING, "lbsync.watcher"):
        running = start()
        await until(lambda: running.watcher.listed.is_set())
    assert not running.watcher.swarm_active
    assert manager.calls("services") == []
    container = running.registry.get(real["Id"])
    assert container is not None and container.labels["lbsync.enable"] == "true"  # as is
    assert "is not a swarm manager" in caplog.text


async def test_swarm_mode_off_subscribes_as_before(
    manager: FakeManager, start: Callable[..., Running]
) -> None:
    running = start(None)
    await until(lambda: running.watcher.listed.is_set())
    assert manager.calls("info") == []
    events = [r for r in manager.requests() if "/events" in r]
    assert events == [f"GET /v1.41/events?filters={json.dumps(WATCHED_EVENTS)}"]
    assert WATCHED_EVENTS["type"] == ["container", "network"]


async def test_a_config_reload_that_turns_swarm_on_resubscribes(
    manager: FakeManager, start: Callable[..., Running]
) -> None:
    vip = SERVICES["vipsvc"]
    manager.services = {vip["ID"]: vip}
    manager.tasks = tasks_of("vipsvc")
    running = start(None)
    await until(lambda: running.watcher.listed.is_set())
    assert running.names() == set()
    running.watcher.set_discovery("vip", "lbsync")
    await until(lambda: running.names() == {"vipsvc"})
    assert running.watcher.reconnects == 0  # not an outage
    events = [r for r in manager.requests() if "/events" in r]
    assert '"service"' in events[-1] and '"node"' in events[-1]


async def test_node_events_look_up_the_services_on_a_changed_node(
    manager: FakeManager, start: Callable[..., Running]
) -> None:
    web_service, vip = SERVICES["web"], SERVICES["vipsvc"]
    manager.services = {s["ID"]: s for s in (web_service, vip)}
    manager.tasks = tasks_of("web") + tasks_of("vipsvc")
    running = start()
    await until(lambda: running.watcher.listed.is_set())

    # An update that changes nothing lbsync reads (swarm gives nodes an address on each new
    # overlay network): one list of nodes, no service lookups.
    before = len(manager.requests())
    manager.emit("node", "update", NODE)
    await until(lambda: len(manager.calls("nodes")) == 2)
    await asyncio.sleep(0.1)
    assert manager.requests()[before:] == ["GET /v1.41/nodes"]

    # The node goes down: both services have a task there; each is looked up.
    manager.nodes = copy.deepcopy(manager.nodes)
    manager.nodes[0]["Status"]["State"] = "down"
    manager.emit("node", "update", NODE)
    await until(lambda: len(manager.calls(f"services/{vip['ID']}")) == 1)
    await until(lambda: len(manager.calls(f"services/{web_service['ID']}")) == 1)


async def test_task_on_a_node_not_yet_known_lists_the_nodes(
    manager: FakeManager, start: Callable[..., Running]
) -> None:
    web_service = SERVICES["web"]
    manager.services = {web_service["ID"]: web_service}
    running = start()
    await until(lambda: running.watcher.listed.is_set())
    manager.nodes = [*manager.nodes, {"ID": "node2", "Status": {"Addr": "10.20.0.7"}}]
    manager.tasks = [_elsewhere(one_task("web"))]
    manager.emit("service", "update", web_service["ID"])
    await until(lambda: running.state("web.1") == "running")
    container = next(c for c in running.registry.containers() if c.name == "web.1")
    assert container.networks[0].ip == "10.20.0.7"
    assert len(manager.calls("nodes")) == 2
