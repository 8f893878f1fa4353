"""What swarm discovery costs, measured on a one-node swarm (figures only, nothing asserted).

    python -m bench.bench_swarm                      # 100 services x 100 tasks
    python -m bench.bench_swarm --services 20 --replicas 50 --runs 5

Needs the lab (`bash lab/lab.sh up`) for its dockerd binary and backend image; starts a
dockerd of its own and makes it a one-node swarm on 127.0.0.1 (`SwarmEngine` of
tests/support/swarm_engine.py), so the lab engine never enters swarm mode. Everything is
removed at the end.

1. List costs. `--services` services of `--replicas` tasks each, on an overlay network, with
   a placement constraint no node meets: swarm creates, allocates (an overlay IP each) and
   lists every task, but starts no container, so 10,000 tasks fit on one machine. Times, with
   lbsync's own client (aiohttp, JSON parsed): `GET /services`, `GET /tasks` (the
   desired-running filter lbsync uses), `GET /nodes`, one service's lookup (inspect + its
   tasks), and the pure translation of all of it into `Container`s, the routing model and
   the nginx render (with every task marked running, as in a converged cluster).
2. Event rates. On one service of `--event-replicas` running tasks (overlay network, the
   backend image): the events a manager's stream carries for create, scale, a label change,
   a rolling update and removal, by type, and the container events this node adds.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import json
import secrets
import statistics
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

from lbsync.config.schema import DiscoveryConfig, TargetConfig
from lbsync.engine.client import DockerClient
from lbsync.engine.endpoint import resolve_endpoint
from lbsync.engine.events import Event
from lbsync.engine.swarm import node_addresses, service_containers, tasks_by_service
from lbsync.model.builder import build_model
from lbsync.model.entries import ParsedEntries
from lbsync.render.templates import load_template, render
from lbsync.state.registry import Registry
from lbsync.state.subscription import subscribed_events
from lbsync.state.swarm_state import CURRENT_TASKS
from tests.support.lab import BACKEND_IMAGE, wait_for
from tests.support.swarm_engine import SwarmEngine

T = TypeVar("T")


async def timed(runs: int, call: Callable[[], Awaitable[T]]) -> tuple[float, T]:
    """The median wall time of `runs` calls (ms) and the last result."""
    times = []
    result: T | None = None
    for _ in range(runs):
        started = time.perf_counter()
        result = await call()
        times.append((time.perf_counter() - started) * 1000)
    assert result is not None
    return statistics.median(times), result


def as_running(tasks: list[dict[str, Any]], node: str) -> list[dict[str, Any]]:
    """The pending tasks as a converged cluster would list them: running on a node."""
    out = copy.deepcopy(tasks)
    for task in out:
        task["NodeID"] = node
        task["Status"]["State"] = "running"
    return out


async def list_costs(engine: SwarmEngine, services: int, replicas: int, runs: int) -> None:
    image = engine.images[BACKEND_IMAGE]
    net = f"bench-{secrets.token_hex(3)}"
    engine.docker("network", "create", "-d", "overlay", "--subnet", "10.240.0.0/16", net)
    started = time.monotonic()
    for index in range(services):
        engine.docker(
            "service", "create", "--detach", "--name", f"{net}-{index}", "--no-resolve-image",
            "--replicas", str(replicas), "--constraint", "node.labels.bench==never",
            "--network", net, "--label", "lbsync.enable=true",
            "--label", f"lbsync.host=s{index}.bench.test", "--label", "lbsync.port=8080", image,
        )  # fmt: skip
    client = DockerClient(resolve_endpoint(engine.host, {}))
    await client.connect()
    try:

        async def count() -> int:
            return len(await client.list_tasks(filters=CURRENT_TASKS))

        total = services * replicas
        while await count() < total:
            await asyncio.sleep(0.2)
        print(f"created {services} services x {replicas} tasks in "
              f"{time.monotonic() - started:.1f} s (pending: no containers)")  # fmt: skip

        ms_services, listed_services = await timed(runs, client.list_services)
        ms_tasks, listed_tasks = await timed(runs, lambda: client.list_tasks(filters=CURRENT_TASKS))
        ms_nodes, listed_nodes = await timed(runs, client.list_nodes)
        sid = listed_services[0]["ID"]

        async def one_service() -> list[dict[str, Any]]:
            await client.inspect_service(sid)
            return await client.list_tasks(filters={"service": [sid], **CURRENT_TASKS})

        ms_one, _ = await timed(runs, one_service)
        task_bytes = len(json.dumps(listed_tasks))
        service_bytes = len(json.dumps(listed_services))
        print(f"GET /services        {len(listed_services):6d} services  {ms_services:8.1f} ms"
              f"  {service_bytes / 1e6:6.2f} MB")  # fmt: skip
        print(f"GET /tasks (running) {len(listed_tasks):6d} tasks     {ms_tasks:8.1f} ms"
              f"  {task_bytes / 1e6:6.2f} MB")  # fmt: skip
        print(f"GET /nodes           {len(listed_nodes):6d} nodes     {ms_nodes:8.1f} ms")
        print(f"one service lookup   inspect + {replicas} tasks  {ms_one:8.1f} ms")

        nodes = node_addresses(listed_nodes)
        node = next(iter(nodes))
        running = as_running(listed_tasks, node)
        discovery = DiscoveryConfig(swarm="tasks")
        target = TargetConfig(name="t", template="builtin:nginx", output=Path("/tmp/b.conf"))
        template = load_template(target)
        for mode in ("tasks", "vip"):
            started_p = time.perf_counter()
            grouped = tasks_by_service(running)
            containers = [
                c
                for s in listed_services
                for c in service_containers(s, grouped.get(s["ID"], []), mode, nodes)
            ]
            translate = (time.perf_counter() - started_p) * 1000
            registry = Registry()
            registry.replace_all(containers)
            started_p = time.perf_counter()
            entries = ParsedEntries(registry).all(discovery)
            model = build_model(entries, discovery, target, frozenset())
            text = render(template, model, target)
            model_ms = (time.perf_counter() - started_p) * 1000
            servers = sum(len(u.servers) for u in model.upstreams)
            print(f"{mode:5s}: JSON -> {len(containers)} Containers {translate:7.1f} ms; "
                  f"model + render ({servers} servers, {len(text) / 1e3:.0f} kB) "
                  f"{model_ms:7.1f} ms")  # fmt: skip
    finally:
        await client.close()
        for index in range(services):
            engine.docker("service", "rm", f"{net}-{index}", check=False)
        wait_for(lambda: engine.docker("network", "rm", net, check=False).ok, 120, 0.5)


async def event_rates(engine: SwarmEngine, replicas: int) -> None:
    image = engine.images[BACKEND_IMAGE]
    name = f"ev-{secrets.token_hex(3)}"
    net = f"{name}-net"
    engine.docker("network", "create", "-d", "overlay", "--subnet", "10.241.0.0/24", net)
    client = DockerClient(resolve_endpoint(engine.host, {}))
    await client.connect()
    filters = {"type": ["container", "network", "service", "node"]}
    try:
        async with subscribed_events(client, filters=filters) as queue:

            def drain() -> Counter[str]:
                seen: Counter[str] = Counter()
                while not queue.empty():
                    item = queue.get_nowait()
                    if isinstance(item, Event):
                        seen[f"{item.type}:{item.base_action}"] += 1
                return seen

            def running() -> int:
                return len(
                    [
                        t
                        for t in engine.running_tasks(name)
                        if t["Spec"]["ContainerSpec"].get("Env", []) == want_env
                    ]
                )

            async def step(title: str, *args: str, settle: Callable[[], bool]) -> None:
                started = time.monotonic()
                engine.docker(*args)
                await asyncio.to_thread(wait_for, settle, 120, 0.1)
                await asyncio.sleep(0.3)  # the last events of the step arrive
                seen = drain()
                swarm_events = sum(n for k, n in seen.items() if k.startswith("service:"))
                print(f"{title:34s} {time.monotonic() - started:5.1f} s  service events "
                      f"{swarm_events:3d}  all: {dict(sorted(seen.items()))}")  # fmt: skip

            want_env = ["PORT=8080"]
            await step(
                f"create ({replicas} replicas)", "service", "create", "--detach", "--name",
                name, "--no-resolve-image", "--replicas", str(replicas), "--network", net,
                "-e", "PORT=8080", "--label", "lbsync.enable=true", image,
                settle=lambda: running() == replicas,
            )  # fmt: skip
            await step(
                "label change", "service", "update", "--detach", "--label-add", "x=1", name,
                settle=lambda: True,
            )  # fmt: skip
            await step(
                f"scale {replicas} -> {replicas * 2}", "service", "scale", "--detach",
                f"{name}={replicas * 2}", settle=lambda: running() == replicas * 2,
            )  # fmt: skip
            want_env = ["PORT=8080", "V=2"]
            await step(
                f"rolling update ({replicas * 2} tasks)", "service", "update", "--detach",
                "--env-add", "V=2", "--update-parallelism", "0", name,
                settle=lambda: running() == replicas * 2,
            )  # fmt: skip
            await step(
                "remove", "service", "rm", name,
                settle=lambda: not engine.docker("ps", "-q", "--filter",
                                                 f"label=com.docker.swarm.service.name={name}"
                                                 ).out.split(),
            )  # fmt: skip
    finally:
        await client.close()
        engine.docker("service", "rm", name, check=False)
        wait_for(lambda: engine.docker("network", "rm", net, check=False).ok, 60, 0.5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--services", type=int, default=100)
    parser.add_argument("--replicas", type=int, default=100)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--event-replicas", type=int, default=10)
    args = parser.parse_args()
    engine = SwarmEngine(Path(tempfile.mkdtemp(prefix="lbsb-", dir="/tmp")))
    try:
        engine.start()
        engine.load(BACKEND_IMAGE)
        engine.init_swarm()
        # Events first: removing 10,000 tasks keeps the engine busy for a while after.
        asyncio.run(event_rates(engine, args.event_replicas))
        asyncio.run(list_costs(engine, args.services, args.replicas, args.runs))
    finally:
        engine.destroy()


if __name__ == "__main__":
    main()
