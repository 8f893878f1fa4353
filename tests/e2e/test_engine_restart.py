"""lbsync while its engine stops and starts, several times in a row.

The engine here is a SEPARATE dockerd (its own socket, data root, exec root and managed
containerd) started by this test, so the lab's dockerd and every other test's containers
are untouched. `LBSYNC_RESTART_CYCLES` sets the number of cycles (3 by default; raise it
for a long run).
"""

from __future__ import annotations

import http.client
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml

from tests.support.lab import BACKEND_IMAGE, free_port, wait_for
from tests.support.private_engine import start_dockerd, unmount_below

pytestmark = pytest.mark.engine

CYCLES = int(os.environ.get("LBSYNC_RESTART_CYCLES", "3"))
DOCKER = "/usr/bin/docker" if Path("/usr/bin/docker").exists() else "docker"


class SecondEngine:
    """A dockerd of this test's own; stopped and started by pid."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.socket = root / "d.sock"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def host(self) -> str:
        return f"unix://{self.socket}"

    def start(self) -> None:
        self.process = start_dockerd(self.root, self.host)
        wait_for(self.answers, timeout=60, interval=0.1)

    def answers(self) -> bool:
        return (
            self.docker("version", "--format", "{{.Server.Version}}", check=False).returncode == 0
        )

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(timeout=60)

    def docker(
        self, *args: str, check: bool = True, stdin: bytes | None = None
    ) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            [DOCKER, "-H", self.host, *args],
            input=stdin,
            capture_output=True,
            check=check,
            timeout=60,
        )


@pytest.fixture
def second_engine(lab: object) -> Iterator[SecondEngine]:
    if shutil.which("dockerd") is None:
        pytest.fail("dockerd is not installed (bash lab/lab.sh up)")
    root = Path(tempfile.mkdtemp(prefix="lbd-", dir="/tmp"))  # short: AF_UNIX path limit
    engine = SecondEngine(root)
    engine.start()
    try:
        image = subprocess.run([DOCKER, "save", BACKEND_IMAGE], capture_output=True, check=True)
        engine.docker("load", stdin=image.stdout)
        yield engine
    finally:
        if engine.process is not None and engine.process.poll() is None:
            ids = engine.docker("ps", "-aq", check=False).stdout.decode().split()
            if ids:
                engine.docker("rm", "-f", *ids, check=False)
        engine.stop()
        unmount_below(root)
        shutil.rmtree(root, ignore_errors=True)


def _get(port: int, path: str) -> tuple[int, str]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read().decode()
    finally:
        connection.close()


def test_lbsync_rides_out_engine_restarts(second_engine: SecondEngine, tmp_path: Path) -> None:
    output = tmp_path / "out" / "lbsync.conf"
    output.parent.mkdir()
    server_port = free_port()
    config = {
        "docker": {"host": second_engine.host, "resync": "0"},
        "debounce": {"quiet": "50ms", "max": "500ms"},
        "targets": [
            {
                "name": "t",
                "output": str(output),
                "listen": "127.0.0.1:1",
                "check": "none",
                "reload": "none",
            }
        ],
        "server": {"listen": f"127.0.0.1:{server_port}"},
        "log": {"level": "debug"},
    }
    config_file = tmp_path / "lbsync.yaml"
    config_file.write_text(yaml.safe_dump(config))
    log_path = tmp_path / "lbsync.log"
    with log_path.open("wb") as log:
        lbsync = subprocess.Popen(
            [sys.executable, "-m", "lbsync.cli", "run", "-c", str(config_file)],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:

        def healthz() -> int:
            try:
                return _get(server_port, "/healthz")[0]
            except OSError:
                return 0

        def file_has(text: str) -> Callable[[], bool]:
            return lambda: output.exists() and text in output.read_text()

        wait_for(lambda: healthz() == 200, timeout=20)
        for cycle in range(CYCLES):
            second_engine.stop()
            wait_for(lambda: healthz() == 503, timeout=10)
            _, body = _get(server_port, "/healthz")
            assert "engine disconnected since" in body
            assert _get(server_port, "/livez")[0] == 200
            assert lbsync.poll() is None, "lbsync exited while the engine was down"

            second_engine.start()
            host = f"cycle{cycle}.test"
            second_engine.docker(
                "run",
                "-d",
                "--network",
                "host",
                "--label",
                "lbsync-test=1",
                "--label",
                "lbsync.enable=true",
                "--label",
                f"lbsync.host={host}",
                "--label",
                "lbsync.port=1",
                "-e",
                f"PORT={free_port()}",
                BACKEND_IMAGE,
            )
            wait_for(file_has(f"server_name {host};"), timeout=20)
            wait_for(lambda: healthz() == 200, timeout=20)
        metrics = _get(server_port, "/metrics")[1]
        reconnects = [
            line
            for line in metrics.splitlines()
            if line.startswith("lbsync_engine_reconnects_total")
        ]
        assert reconnects and float(reconnects[0].split()[-1]) >= CYCLES
    finally:
        lbsync.send_signal(signal.SIGTERM)
        try:
            code = lbsync.wait(timeout=15)
        except subprocess.TimeoutExpired:
            lbsync.kill()
            code = lbsync.wait()
        if code != 0:
            print(log_path.read_text()[-5000:])
    assert code == 0
    text = log_path.read_text()
    assert "lost the engine" in text
    assert "Traceback" not in text
