"""deploy/compose*.yaml brought up for real with Debian's docker-compose (v1).

Each test runs one compose file under its own project name (``-p``) with the lab's images
and host networking on free 127.0.0.1 ports, all through the files' own variables
(LBSYNC_IMAGE, NGINX_IMAGE, DEMO_IMAGE, LBSYNC_NETWORK_MODE=host, APP1_PORT, ...). The
lbsync config is a copy of the variant's ``deploy/<variant>/lbsync.yaml`` (LBSYNC_CONFIG_DIR)
with three changes for a shared engine: ``listen`` and ``server.listen`` on free ports, and
``select`` limited to this project's containers. A request through the proxy must reach both
demo apps; ``down -v`` always runs, pass or fail.

docker-compose v1 refuses ``ports`` together with ``network_mode: host`` (Docker itself
discards published ports then, with a warning), so the test asks ``docker-compose config``
for the resolved file and drops ``ports`` from host-network services before ``up``.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.image import BUILD_TIMEOUT, docker_socket_gid, lbsync_image, shared_dir
from tests.support.lab import (
    BACKEND_IMAGE,
    DOCKER,
    DOCKER_SOCKET,
    HAPROXY_IMAGE,
    NGINX_IMAGE,
    docker,
    free_port,
    try_http_get,
    wait_for,
)
from tests.support.prerequisites import IN_CI

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
COMPOSE_TIMEOUT = 120.0
ROUTE_TIMEOUT = 30.0
APPS = ("app1", "app2")


def require_compose() -> str:
    path = shutil.which("docker-compose")
    if path is not None:
        return path
    if IN_CI:
        pytest.fail(
            "CI=true but docker-compose is missing (bash lab/lab.sh python-base installs it)"
        )
    pytest.skip("docker-compose (v1, apt package docker-compose) is not installed")


@dataclass
class ComposeProject:
    """One `docker-compose -p PROJECT` run of a compose file; :meth:`down` removes it all."""

    compose: str
    file: Path
    project: str
    env: dict[str, str]
    work: Path
    resolved: Path | None = None
    log: list[str] = field(default_factory=list)

    def run(self, *args: str, check: bool = True) -> str:
        files = ["-f", str(self.resolved or self.file)]
        cmd = [self.compose, *files, "-p", self.project, *args]
        proc = subprocess.run(
            cmd,
            capture_output=True,
            text=True,
            env=self.env,
            timeout=COMPOSE_TIMEOUT,
            check=False,
        )
        self.log.append(f"$ docker-compose {' '.join(args)} -> {proc.returncode}\n{proc.stderr}")
        if check and proc.returncode != 0:
            raise AssertionError(
                f"docker-compose {' '.join(args)} exited {proc.returncode}:\n{proc.stderr[-3000:]}"
            )
        return proc.stdout

    def up(self) -> None:
        config: dict[str, Any] = yaml.safe_load(self.run("config"))
        for service in config["services"].values():
            if service.get("network_mode") == "host":
                service.pop("ports", None)
        self.resolved = self.work / "compose.resolved.yaml"
        self.resolved.write_text(yaml.safe_dump(config, sort_keys=False))
        self.run("up", "--detach", "--no-build")

    def down(self) -> None:
        self.run("down", "--volumes", "--remove-orphans", "--timeout", "10", check=False)

    def container(self, service: str) -> str:
        """The id of the service's container (through the docker CLI: quicker than compose)."""
        cid = docker(
            "ps",
            "--quiet",
            "--no-trunc",
            "--filter",
            f"label=com.docker.compose.project={self.project}",
            "--filter",
            f"label=com.docker.compose.service={service}",
        )
        assert len(cid) == 64, f"no single running container for {service}: {cid!r}"
        return cid

    def logs(self) -> str:
        return self.run("logs", "--no-color", "--tail", "40", check=False)


@dataclass
class Deployed:
    project: ComposeProject
    proxy_port: int


@contextlib.contextmanager
def deployed(compose_file: str, config_dir: str, tmp_path: Path) -> Iterator[Deployed]:
    """Bring `deploy/<compose_file>` up on the lab's images; `down -v` on the way out."""
    compose = require_compose()
    image = lbsync_image()
    token = secrets.token_hex(4)
    project = f"lbsynctest{token}"
    proxy_port, server_port = free_port(), free_port()

    config = shared_dir(tmp_path / "config")
    shutil.copytree(DEPLOY / config_dir, config, dirs_exist_ok=True)
    config_file = config / "lbsync.yaml"
    data = yaml.safe_load(config_file.read_text())
    target = data["targets"][0]
    target["listen"] = f"127.0.0.1:{proxy_port}"
    target["select"] = {"label": f"com.docker.compose.project={project}"}
    data["server"]["listen"] = f"127.0.0.1:{server_port}"
    config_file.write_text(yaml.safe_dump(data, sort_keys=False))
    for path in config.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)

    env = {key: value for key, value in os.environ.items() if not key.startswith("COMPOSE_")}
    env.update(
        DOCKER_GID=str(docker_socket_gid()),
        LBSYNC_IMAGE=image,
        LBSYNC_CONFIG_DIR=str(config),
        LBSYNC_NETWORK_MODE="host",
        LBSYNC_ISOLATED_NETWORK_MODE="host",
        NGINX_IMAGE=NGINX_IMAGE,
        NGINX_PID_DIR="/run",  # the lab nginx writes /run/nginx.pid
        HAPROXY_IMAGE=HAPROXY_IMAGE,
        SOCKET_PROXY_IMAGE=HAPROXY_IMAGE,
        DEMO_IMAGE=BACKEND_IMAGE,
        APP1_PORT=str(free_port()),
        APP2_PORT=str(free_port()),
    )
    work = shared_dir(tmp_path / "compose")
    run = ComposeProject(compose, DEPLOY / compose_file, project, env, work)
    failed = False
    try:
        run.up()
        yield Deployed(run, proxy_port)
    except BaseException as exc:
        failed = True
        exc.add_note(f"docker-compose logs ({project}):\n{run.logs()}")
        raise
    finally:
        run.down()
        leftover = docker(
            "ps", "-aq", "--filter", f"label=com.docker.compose.project={project}", check=False
        )
        if leftover and not failed:
            raise AssertionError(f"down left containers of {project}: {leftover}")


def assert_routes_apps(deployment: Deployed) -> None:
    """A request through the proxy reaches each demo app; an unknown host gets 503."""
    url = f"http://127.0.0.1:{deployment.proxy_port}/"
    for app in APPS:

        def reached(app: str = app) -> bool:
            got = try_http_get(url, host_header=f"{app}.localhost")
            return got is not None and got == (200, f"backend={app} path=/\n")

        wait_for(reached, ROUTE_TIMEOUT, 0.1, f"{app}.localhost through the proxy")
    got = try_http_get(url, host_header="nobody.localhost")
    assert got is not None and got[0] == 503, got


@pytest.mark.engine
@pytest.mark.timeout(BUILD_TIMEOUT + 180)
def test_compose_nginx(tmp_path: Path) -> None:
    with deployed("compose.yaml", "nginx", tmp_path) as deployment:
        assert_routes_apps(deployment)
        lbsync = deployment.project.container("lbsync")
        user = docker("inspect", "--format", "{{.Config.User}}", lbsync)
        assert user == f"10001:{docker_socket_gid()}"


@pytest.mark.engine
@pytest.mark.timeout(BUILD_TIMEOUT + 180)
def test_compose_haproxy(tmp_path: Path) -> None:
    with deployed("compose.haproxy.yaml", "haproxy", tmp_path) as deployment:
        assert_routes_apps(deployment)
        haproxy = deployment.project.container("haproxy")
        logs = subprocess.run(
            [DOCKER, "logs", haproxy], capture_output=True, text=True, timeout=30, check=False
        )
        # Started on the seed config, then reloaded by lbsync's SIGUSR2 to the master.
        assert (logs.stdout + logs.stderr).count("Loading success") >= 2


# Run inside the lbsync container: what it gets from the engine through the socket proxy.
_PROBE = """
import socket, sys
for request in sys.argv[1:]:
    method, path = request.split(" ", 1)
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(10)
        sock.connect("/run/docker-proxy/docker.sock")
        sock.sendall(
            f"{method} {path} HTTP/1.1\\r\\nHost: docker\\r\\nContent-Length: 0\\r\\n"
            "Connection: close\\r\\n\\r\\n".encode()
        )
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    print(request, answer.split(b" ", 2)[1].decode())
"""


@pytest.mark.engine
@pytest.mark.timeout(BUILD_TIMEOUT + 180)
def test_compose_least_privilege(tmp_path: Path) -> None:
    with deployed("compose.least-privilege.yaml", "least-privilege", tmp_path) as deployment:
        assert_routes_apps(deployment)
        project = deployment.project
        lbsync, nginx = project.container("lbsync"), project.container("nginx")
        info = docker("inspect", "--format", "{{json .Mounts}} {{.Config.User}}", lbsync)
        assert DOCKER_SOCKET not in info and info.endswith(" 10001:10001"), info

        requests = {
            "GET /_ping": "200",
            "GET /v1.41/version": "200",
            "GET /v1.41/containers/json": "200",
            f"GET /v1.41/containers/{nginx}/json": "200",
            f"POST /v1.41/containers/{nginx}/kill?signal=KILL": "403",
            f"POST /v1.41/containers/{nginx}/exec": "403",
            f"DELETE /v1.41/containers/{nginx}?force=1": "403",
            "POST /v1.41/containers/create": "403",
            f"GET /v1.41/containers/{nginx}/logs?stdout=1": "403",
            f"GET /v1.41/containers/{nginx}/archive?path=/etc": "403",
            "GET /v1.41/containers/../secrets/json": "403",
        }
        out = docker("exec", lbsync, "/opt/lbsync/bin/python", "-c", _PROBE, *requests, timeout=60)
        answers = (line.rpartition(" ") for line in out.splitlines())
        got = {request: status for request, _, status in answers}
        assert got == requests
        # The refused kill never reached the engine: nginx still serves.
        assert docker("inspect", "--format", "{{.State.Status}}", nginx) == "running"
        assert_routes_apps(deployment)
