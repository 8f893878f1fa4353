"""Swarm discovery against a real one-node swarm (`discovery.swarm`).

The swarm runs on a SEPARATE dockerd started by this module (its own socket, data root, exec
root and `--config-file`, like tests/e2e/test_engine_restart.py), so the lab's dockerd, which
other people's tests share, never enters swarm mode. It is initialised on 127.0.0.1
(`--advertise-addr 127.0.0.1 --listen-addr 127.0.0.1:<free port>`, a free VXLAN data-path
port) and its `docker_gwbridge` is created first under a bridge name of its own, so it cannot
collide with another engine's. The lab images are copied in (`docker save | docker load`)
and every service runs from an image ID with `--no-resolve-image`: nothing is pulled.

* `test_tasks_followed_by_service_events`: nginx runs as a swarm service (host network,
  container label `lbsync.proxy=...`); `lbsync run` with `discovery.swarm: tasks`, resync
  off, finds it, routes host-network services at 127.0.0.1:<port> and follows creation,
  scaling and removal by service events alone; requests go through nginx on 127.0.0.1.
* `test_vip_and_task_addresses_are_rendered`: a service on an overlay network, rendered
  (`lbsync render`) in `vip` mode (its virtual IP) and `tasks` mode (the task's IP); no
  traffic goes to overlay addresses.
* `test_stack_deploys_lbsync_on_the_manager`: deploy/stack.yaml itself (`docker stack
  deploy`, the lbsync image built from this checkout): lbsync as a service on the manager.

Teardown removes the services and networks it made, leaves the swarm, removes the
`docker_gwbridge` and `ingress` leftovers, and stops the dockerd.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.image import lbsync_image
from tests.support.lab import BACKEND_IMAGE, NGINX_IMAGE, free_port, try_http_get, wait_for
from tests.support.prerequisites import IN_CI, require_engine
from tests.support.swarm_engine import DOCKER, SwarmEngine

pytestmark = pytest.mark.engine

ROUTE_TIMEOUT = 30.0
DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


@pytest.fixture(scope="module")
def swarm() -> Iterator[SwarmEngine]:
    require_engine()
    if shutil.which("dockerd") is None:
        message = "dockerd is not installed (bash lab/lab.sh up)"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    engine = SwarmEngine(Path(tempfile.mkdtemp(prefix="lbsw-", dir="/tmp")))  # AF_UNIX limit
    try:
        engine.start()
        engine.load(BACKEND_IMAGE)
        engine.load(NGINX_IMAGE)
        engine.init_swarm()
        yield engine
    finally:
        engine.destroy()


def _lbsync_config(
    swarm: SwarmEngine, output: Path, mode: str, *, target: dict[str, Any], server_port: int
) -> dict[str, Any]:
    return {
        "docker": {"host": swarm.host, "resync": "0"},  # no resync: events alone must do it
        "discovery": {"swarm": mode},
        "debounce": {"quiet": "50ms", "max": "500ms"},
        "targets": [{"name": "t", "output": str(output), **target}],
        "server": {"listen": f"127.0.0.1:{server_port}"},
        "log": {"level": "debug"},
    }


@contextlib.contextmanager
def running_lbsync(config: dict[str, Any], tmp_path: Path) -> Iterator[Path]:
    config_file = tmp_path / "lbsync.yaml"
    config_file.write_text(yaml.safe_dump(config))
    log_path = tmp_path / "lbsync.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "lbsync.cli", "run", "-c", str(config_file)],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    failed = False
    try:
        yield log_path
    except BaseException:
        failed = True
        raise
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            code = process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            code = process.wait()
        if failed or code != 0:
            print(log_path.read_text()[-8000:])
        assert code == 0, f"lbsync exited {code}"
        assert "Traceback" not in log_path.read_text()


def _upstream_servers(text: str, host: str) -> list[str]:
    """The `server` lines of the upstream that `host`'s `location /` proxies to."""
    block = re.search(
        r"server_name " + re.escape(host) + r";.*?location / \{\s*(.*?)\}", text, re.S
    )
    if block is None:
        return []
    passed = re.search(r"proxy_pass http://([^;]+);", block.group(1))
    if passed is None:
        return []
    upstream = re.search(r"upstream " + re.escape(passed.group(1)) + r" \{(.*?)\}", text, re.S)
    assert upstream is not None
    return re.findall(r"server (\S+) weight", upstream.group(1))


def test_tasks_followed_by_service_events(swarm: SwarmEngine, tmp_path: Path) -> None:
    run = secrets.token_hex(3)
    host = f"app-{run}.test"
    listen, port_a, port_b, server_port = free_port(), free_port(), free_port(), free_port()
    confd = tmp_path / "conf.d"
    confd.mkdir()
    output = confd / "lbsync.conf"
    proxy_label = f"lbsync.proxy=t-{run}"
    swarm.service_create(
        f"nginx-{run}",
        "--network",
        "host",
        "--container-label",
        proxy_label,
        "--mount",
        f"type=bind,source={confd},target=/etc/nginx/conf.d",
        image=NGINX_IMAGE,
    )
    wait_for(lambda: swarm.running_tasks(f"nginx-{run}"), ROUTE_TIMEOUT, 0.1, "nginx runs")

    def labels(port: int) -> list[str]:
        args = []
        for label in ("lbsync.enable=true", f"lbsync.host={host}", f"lbsync.port={port}"):
            args += ["--label", label]
        return args

    def servers() -> list[str]:
        return _upstream_servers(output.read_text(), host) if output.exists() else []

    def backends_seen(count: int) -> set[str]:
        seen: set[str] = set()
        for _ in range(count):
            got = try_http_get(f"http://127.0.0.1:{listen}/", host_header=host)
            if got is not None and got[0] == 200:
                seen.add(got[1].split()[0])
        return seen

    config = _lbsync_config(
        swarm,
        output,
        "tasks",
        target={
            "listen": f"127.0.0.1:{listen}",
            "check": "exec",
            "reload": "signal",
            "proxy": {"label": proxy_label},
        },
        server_port=server_port,
    )
    with running_lbsync(config, tmp_path) as log_path:
        wait_for(
            lambda: (try_http_get(f"http://127.0.0.1:{server_port}/healthz") or (0,))[0] == 200,
            ROUTE_TIMEOUT,
            0.1,
            "lbsync found the nginx service's container and is healthy",
        )

        # A host-network service: routed at 127.0.0.1:<port>, through nginx.
        swarm.service_create(
            f"a-{run}", "--network", "host", *labels(port_a), "-e", f"PORT={port_a}",
            "-e", "NAME=a",
        )  # fmt: skip
        wait_for(lambda: servers() == [f"127.0.0.1:{port_a}"], ROUTE_TIMEOUT, 0.05, "a routed")
        wait_for(lambda: backends_seen(1) == {"backend=a"}, ROUTE_TIMEOUT, 0.05, "a answers")

        # A second service for the same host, at 0 replicas: declared, no server yet.
        swarm.service_create(
            f"b-{run}", "--network", "host", "--replicas", "0", *labels(port_b),
            "-e", f"PORT={port_b}", "-e", "NAME=b",
        )  # fmt: skip
        started = time.monotonic()
        swarm.docker("service", "scale", "--detach", f"b-{run}=1")
        both = sorted([f"127.0.0.1:{port_a}", f"127.0.0.1:{port_b}"], key=lambda s: s)
        wait_for(lambda: sorted(servers()) == both, ROUTE_TIMEOUT, 0.05, "b scaled up")
        print(f"scale 0->1 in the config after {time.monotonic() - started:.2f} s")
        wait_for(
            lambda: backends_seen(6) == {"backend=a", "backend=b"},
            ROUTE_TIMEOUT,
            0.05,
            "both answer through nginx",
        )

        started = time.monotonic()
        swarm.docker("service", "scale", "--detach", f"b-{run}=0")
        wait_for(lambda: servers() == [f"127.0.0.1:{port_a}"], ROUTE_TIMEOUT, 0.05, "b down")
        print(f"scale 1->0 in the config after {time.monotonic() - started:.2f} s")

        # A label change is a service update event too.
        swarm.docker("service", "update", "--detach", "--label-add", "lbsync.weight=7", f"a-{run}")
        wait_for(
            lambda: f"server 127.0.0.1:{port_a} weight=7;" in output.read_text(),
            ROUTE_TIMEOUT,
            0.05,
            "a's new weight",
        )

        # Removing a: b (0 replicas) still declares the host: it stays and answers 503.
        swarm.docker("service", "rm", f"a-{run}")
        wait_for(lambda: servers() == [] and host in output.read_text(), ROUTE_TIMEOUT, 0.05)
        wait_for(
            lambda: (
                (try_http_get(f"http://127.0.0.1:{listen}/", host_header=host) or (0,))[0] == 503
            ),
            ROUTE_TIMEOUT,
            0.05,
            "503 once no task serves the host",
        )
        swarm.docker("service", "rm", f"b-{run}")
        wait_for(lambda: host not in output.read_text(), ROUTE_TIMEOUT, 0.05, "host gone")

        metrics = (try_http_get(f"http://127.0.0.1:{server_port}/metrics") or (0, ""))[1]
        assert 'lbsync_events_total{action="update",type="service"}' in metrics
        text = log_path.read_text()
        assert "swarm discovery (tasks) on manager node" in text
        assert "(resync)" not in text  # resync is off: events did it all
    swarm.docker("service", "rm", f"nginx-{run}")


def _render(config: dict[str, Any], tmp_path: Path, name: str) -> str:
    config_file = tmp_path / f"{name}.yaml"
    config_file.write_text(yaml.safe_dump(config))
    proc = subprocess.run(
        [sys.executable, "-m", "lbsync.cli", "render", "-c", str(config_file)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_vip_and_task_addresses_are_rendered(swarm: SwarmEngine, tmp_path: Path) -> None:
    """Rendered config only: overlay and virtual IPs are never sent a request here."""
    run = secrets.token_hex(3)
    network = f"ov-{run}"
    service = f"v-{run}"
    host = f"vip-{run}.test"
    network_id = swarm.docker(
        "network", "create", "--driver", "overlay", "--attachable", network
    ).out.strip()
    try:
        swarm.service_create(
            service, "--network", network, "--label", "lbsync.enable=true",
            "--label", f"lbsync.host={host}", "--label", "lbsync.port=8080", "-e", "PORT=8080",
        )  # fmt: skip
        tasks = wait_for(lambda: swarm.running_tasks(service), ROUTE_TIMEOUT, 0.1, "task runs")
        inspected = json.loads(swarm.docker("service", "inspect", service).out)[0]
        vips = {v["NetworkID"]: v["Addr"] for v in inspected["Endpoint"]["VirtualIPs"]}
        vip = vips[network_id].partition("/")[0]
        attachments = {a["Network"]["ID"]: a for a in tasks[0]["NetworksAttachments"]}
        task_ip = attachments[network_id]["Addresses"][0].partition("/")[0]
        assert vip != task_ip

        target = {"listen": "127.0.0.1:1", "check": "none", "reload": "none"}
        for mode, expected, other in (("vip", vip, task_ip), ("tasks", task_ip, vip)):
            config = _lbsync_config(
                swarm, tmp_path / "out.conf", mode, target=target, server_port=1
            )
            text = _render(config, tmp_path, mode)
            assert _upstream_servers(text, host) == [f"{expected}:8080"], text
            assert other not in text

        # Swarm discovery off: the service is not seen, and its task's container has no
        # lbsync labels of its own.
        config = _lbsync_config(swarm, tmp_path / "out.conf", "tasks", target=target, server_port=1)
        config["discovery"] = {}
        assert host not in _render(config, tmp_path, "off")
    finally:
        swarm.docker("service", "rm", service, check=False)
        wait_for(lambda: swarm.docker("network", "rm", network, check=False).ok, ROUTE_TIMEOUT, 0.2)


def test_stack_deploys_lbsync_on_the_manager(swarm: SwarmEngine, tmp_path: Path) -> None:
    """deploy/stack.yaml as written, on the lab's images: lbsync runs as a swarm service on
    the manager, finds the nginx task beside it, and routes the demo service's tasks.

    The demo app is on an overlay network: its addresses are checked in the rendered config
    only. The one request goes to nginx on 127.0.0.1 for a host nobody declares (503).
    """
    image = lbsync_image()
    swarm.load(image)
    stack = f"st{secrets.token_hex(3)}"
    http_port = free_port()
    env = {
        **os.environ,
        "DOCKER_HOST": swarm.host,
        "DOCKER_GID": str(swarm.socket.stat().st_gid),
        "DOCKER_SOCKET": str(swarm.socket),
        "HTTP_PORT": str(http_port),
        "LBSYNC_IMAGE": swarm.images[image],
        "NGINX_IMAGE": swarm.images[NGINX_IMAGE],
        "DEMO_IMAGE": swarm.images[BACKEND_IMAGE],
        "DEMO_PORT": "8080",
    }

    def stack_cmd(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [DOCKER, "stack", *args],
            env=env,
            cwd=DEPLOY,
            capture_output=True,
            text=True,
            timeout=120,
            check=check,
        )

    def nginx_config() -> str:
        found = swarm.docker(
            "ps", "-q", "--filter", f"label=com.docker.swarm.service.name={stack}_nginx",
            check=False,
        ).out.split()  # fmt: skip
        if len(found) != 1:
            return ""
        cat = swarm.docker("exec", found[0], "cat", "/etc/nginx/conf.d/lbsync.conf", check=False)
        return cat.out if cat.ok else ""

    def task_ips() -> list[str]:
        ips = []
        for task in swarm.running_tasks(f"{stack}_whoami"):
            for attachment in task.get("NetworksAttachments") or []:
                if attachment["Network"]["Spec"]["Name"] == f"{stack}_apps":
                    ips.append(attachment["Addresses"][0].partition("/")[0] + ":8080")
        return sorted(ips)

    def routed() -> list[str]:
        return sorted(_upstream_servers(nginx_config(), "whoami.localhost"))

    stack_cmd("deploy", "--resolve-image", "never", "-c", "stack.yaml", stack)
    try:
        wait_for(lambda: len(task_ips()) == 2, 60, 0.2, "2 whoami tasks run")
        wait_for(lambda: routed() == task_ips(), 60, 0.2, "lbsync (a service) routes them")
        # Global on the managers: one task here, `running` once its HEALTHCHECK passed.
        wait_for(lambda: len(swarm.running_tasks(f"{stack}_lbsync")) == 1, 60, 0.2, "healthy")
        got = wait_for(
            lambda: try_http_get(f"http://127.0.0.1:{http_port}/", host_header="nobody.test"),
            30,
            0.1,
            "nginx answers on the published port",
        )
        assert got is not None and got[0] == 503
        swarm.docker("service", "scale", "--detach", f"{stack}_whoami=3")
        wait_for(lambda: len(task_ips()) == 3 and routed() == task_ips(), 60, 0.2, "scaled")
    except BaseException:
        # The service's tasks with their states and errors too: in two failures (both in a
        # full run, never alone) the logs were empty, so the task itself never started.
        for what in ("lbsync", "whoami", "nginx"):
            tasks = swarm.docker("service", "ps", "--no-trunc", f"{stack}_{what}", check=False)
            print(f"--- docker service ps {stack}_{what}\n{tasks.out}{tasks.err}")
        print(swarm.docker("service", "logs", f"{stack}_lbsync", check=False).out[-4000:])
        raise
    finally:
        stack_cmd("rm", stack, check=False)
        wait_for(
            lambda: (
                not swarm.docker(
                    "ps",
                    "-aq",
                    "--filter",
                    f"label=com.docker.stack.namespace={stack}",
                    check=False,
                ).out.split()
            ),
            60,
            0.2,
            "the stack's containers are gone",
        )
        wait_for(
            lambda: (
                swarm.docker("volume", "rm", f"{stack}_nginx-conf", check=False).ok
                or f"{stack}_nginx-conf" not in swarm.docker("volume", "ls", "-q").out.split()
            ),
            30,
            0.2,
        )
