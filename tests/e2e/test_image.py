"""The lbsync container image (Dockerfile), built from the lab's Python base and run for real.

The image is built once per test session by ``deploy/build-image.sh`` (tag ``lbsync:dev``,
base ``lbsync-lab/python-base:latest``); with unchanged sources that is a cached build of a
few seconds. Outside CI the engine tests skip when no engine answers or the base image is
missing (``bash lab/lab.sh python-base``); with ``CI=true`` they fail instead.

Also here: ``lbsync.healthcheck`` (the image's HEALTHCHECK) without any engine.
"""

from __future__ import annotations

import http.server
import json
import secrets
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from lbsync import __version__
from lbsync.healthcheck import livez_url, probe
from tests.support.image import (
    BASE_IMAGE,
    BUILD_TIMEOUT,
    docker_socket_gid,
    lbsync_image,
    shared_dir,
)
from tests.support.lab import (
    DOCKER_SOCKET,
    Lab,
    docker,
    free_port,
    try_http_get,
    wait_for,
)

IMAGE_UID = 10001
HEALTHCHECK = ["CMD", "/opt/lbsync/bin/python", "-m", "lbsync.healthcheck"]


# --------------------------------------------------------------------------- no engine


class _LivezHandler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        status = 200 if self.path == "/livez" else 503
        body = b"ok\n" if status == 200 else b"engine disconnected\n"
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def livez_server() -> Iterator[int]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _LivezHandler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_healthcheck_url_follows_server_listen(tmp_path: Path) -> None:
    config = tmp_path / "lbsync.yaml"
    cases = {
        "127.0.0.1:9300": "http://127.0.0.1:9300/livez",
        "0.0.0.0:9301": "http://127.0.0.1:9301/livez",
        "[::]:9302": "http://[::1]:9302/livez",
        "[::1]:9303": "http://[::1]:9303/livez",
        "localhost:9304": "http://localhost:9304/livez",
    }
    for listen, url in cases.items():
        config.write_text(yaml.safe_dump({"server": {"listen": listen}}))
        assert livez_url({"LBSYNC_CONFIG": str(config)}) == url, listen
    # No file at all: the built-in default. A broken file: the default too, never a crash.
    assert livez_url({}) == "http://127.0.0.1:9180/livez"
    config.write_text("server: {listen: nonsense\n")
    assert livez_url({"LBSYNC_CONFIG": str(config)}) == "http://127.0.0.1:9180/livez"
    override = {"LBSYNC_CONFIG": str(config), "LBSYNC_HEALTHCHECK_URL": "http://127.0.0.1:1/x"}
    assert livez_url(override) == "http://127.0.0.1:1/x"


def test_healthcheck_probe(livez_server: int) -> None:
    assert probe(f"http://127.0.0.1:{livez_server}/livez") is None
    problem = probe(f"http://127.0.0.1:{livez_server}/healthz")
    assert problem is not None and "HTTP 503" in problem and "engine disconnected" in problem
    closed = free_port()
    problem = probe(f"http://127.0.0.1:{closed}/livez", timeout=1.0)
    assert problem is not None and f"127.0.0.1:{closed}" in problem
    problem = probe("https://127.0.0.1/livez")
    assert problem is not None and "only http://" in problem


# --------------------------------------------------------------------------- the image


@pytest.mark.engine
@pytest.mark.timeout(BUILD_TIMEOUT + 60)
def test_image_metadata_and_contents() -> None:
    image = lbsync_image()
    info = json.loads(docker("image", "inspect", image))[0]
    config = info["Config"]
    assert config["User"] == f"{IMAGE_UID}:{IMAGE_UID}"
    assert config["Entrypoint"] == ["lbsync"]
    assert config["Cmd"] == ["run"]
    assert "LBSYNC_CONFIG=/etc/lbsync/lbsync.yaml" in config["Env"]
    assert config["Healthcheck"]["Test"] == HEALTHCHECK
    labels = config["Labels"]
    assert labels["org.opencontainers.image.title"] == "lbsync"
    assert labels["org.opencontainers.image.version"] == __version__
    assert labels["org.opencontainers.image.licenses"] == "MIT"
    assert labels["org.opencontainers.image.revision"]  # the git commit, or "unknown"
    assert labels["org.opencontainers.image.base.name"] == BASE_IMAGE

    run = ["run", "--rm", "--network", "host", "--label", "lbsync-test=1"]
    assert docker(*run, image, "version") == f"lbsync {__version__}"
    # The shipped /etc/lbsync/lbsync.yaml is valid: the built-in defaults.
    assert "ok (1 target(s))" in docker(*run, image, "check")
    # The venv holds lbsync and its runtime dependencies, not the tools that built it.
    script = (
        "import importlib.util as u, os; "
        "print(sorted(m for m in ('pip', 'setuptools', 'wheel', 'hatchling') if u.find_spec(m))); "
        "print(os.getuid(), os.getgid()); "
        "import aiohttp, jinja2, yaml, tenacity, prometheus_client, lbsync.healthcheck"
    )
    out = docker(*run, "--entrypoint", "/opt/lbsync/bin/python", image, "-c", script)
    assert out.splitlines() == ["[]", f"{IMAGE_UID} {IMAGE_UID}"]


@pytest.mark.engine
@pytest.mark.timeout(BUILD_TIMEOUT + 120)
def test_image_routes_through_lab_nginx(lab: Lab, tmp_path: Path) -> None:
    """The image against the real engine: socket with --group-add, a config directory, the lab
    nginx sharing a conf.d directory, a labelled backend; healthy, uid 10001, stops with 0."""
    image = lbsync_image()
    token = secrets.token_hex(4)
    target = f"img{token}"
    host = f"{token}.image.test"
    nginx_port, server_port, backend_port = free_port(), free_port(), free_port()

    config_dir = shared_dir(tmp_path / "config")
    (config_dir / "lbsync.yaml").write_text(
        yaml.safe_dump(
            {
                "debounce": {"quiet": "50ms", "max": "500ms"},
                "targets": [
                    {
                        "name": target,  # the proxy: containers labelled lbsync.proxy=<target>
                        "output": "/etc/nginx/conf.d/lbsync.conf",
                        "listen": f"127.0.0.1:{nginx_port}",
                        "select": {"label": f"lbsync-image-test={token}"},
                    }
                ],
                # Not the default port: the HEALTHCHECK must find it in the config.
                "server": {"listen": f"127.0.0.1:{server_port}"},
            }
        )
    )
    (config_dir / "lbsync.yaml").chmod(0o644)
    conf_d = shared_dir(tmp_path / "conf.d", 0o777)

    lab.run_nginx(conf_d, labels={"lbsync.proxy": target})
    backend = f"lbsync-image-{token}"
    lab.run_backend(
        backend_port,
        name=backend,
        labels={
            "lbsync.enable": "true",
            "lbsync.host": host,
            "lbsync.port": str(backend_port),
            "lbsync-image-test": token,
        },
    )
    gid = docker_socket_gid()
    cid = lab.run(
        image,
        name=f"lbsync-image-{token}-lbsync",
        volumes=[
            f"{DOCKER_SOCKET}:{DOCKER_SOCKET}",
            f"{config_dir}:/etc/lbsync:ro",
            f"{conf_d}:/etc/nginx/conf.d",
        ],
        # The image's own HEALTHCHECK command, probed every second instead of every 10.
        extra=["--group-add", str(gid), "--health-interval", "1s", "--health-start-period", "0s"],
    )

    def routed() -> bool:
        got = try_http_get(f"http://127.0.0.1:{nginx_port}/", host_header=host)
        return got is not None and got[0] == 200 and got[1].startswith(f"backend={backend} ")

    try:
        wait_for(routed, 30, 0.1, f"a request for {host} through nginx reaching {backend}")
        lab.wait_health(cid, "healthy", timeout=20)
    except TimeoutError as exc:
        raise AssertionError(f"{exc}\nlbsync log:\n{lab.logs(cid)[-3000:]}") from None

    # The daemon (PID 1 of the container) runs as uid 10001 with the socket's group added.
    status = {
        key: value.strip()
        for key, _, value in (
            line.partition(":") for line in lab.exec(cid, "cat", "/proc/1/status").splitlines()
        )
    }
    assert "lbsync" in status["Name"] or "python" in status["Name"]
    assert status["Uid"].split() == [str(IMAGE_UID)] * 4
    assert str(gid) in status["Groups"].split()
    written = conf_d / "lbsync.conf"
    assert written.stat().st_uid == IMAGE_UID
    assert f"server_name {host};" in written.read_text()

    # SIGTERM, then SIGKILL after 10 s: exit code 0 means lbsync handled SIGTERM (137 = killed).
    lab.stop(cid, timeout=10)
    state = lab.inspect(cid)["State"]
    assert (state["Status"], state["ExitCode"], state["OOMKilled"]) == ("exited", 0, False), state
