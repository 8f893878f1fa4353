"""A one-node swarm on a dockerd of its own (its own socket, data root, exec root and bridge
names), so the lab's dockerd never enters swarm mode; used by tests/e2e/test_swarm.py and
bench/bench_swarm.py."""

from __future__ import annotations

import contextlib
import json
import secrets
import shutil
import signal
import socket
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.support.lab import BACKEND_IMAGE, free_port, wait_for
from tests.support.private_engine import start_dockerd, unmount_below

DOCKER = "/usr/bin/docker" if Path("/usr/bin/docker").exists() else "docker"


def free_udp_port() -> int:
    """A UDP port swarm accepts for VXLAN (1024-49151, below the ephemeral range) that was
    free a moment ago: the lab engine or another swarm may hold the default 4789."""
    for _ in range(100):
        port = secrets.randbelow(32000 - 20000) + 20000
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            try:
                sock.bind(("0.0.0.0", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free UDP port in 20000-32000")


class SwarmEngine:
    """A dockerd of its own, made a one-node swarm on 127.0.0.1."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.socket = root / "d.sock"
        self.log = root / "dockerd.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.bridge = "lbsw" + secrets.token_hex(4)  # <= 15 characters: a Linux name
        self.images: dict[str, str] = {}  # lab tag -> image ID in this engine

    @property
    def host(self) -> str:
        return f"unix://{self.socket}"

    def start(self) -> None:
        self.process = start_dockerd(self.root, self.host)
        wait_for(self.answers, timeout=60, interval=0.1, message="the swarm dockerd answers")

    def answers(self) -> bool:
        return self.docker("version", "--format", "{{.Server.Version}}", check=False).ok

    def docker(self, *args: str, check: bool = True, stdin: bytes | None = None) -> Result:
        proc = subprocess.run(
            [DOCKER, "-H", self.host, *args],
            input=stdin,
            capture_output=True,
            check=False,
            timeout=120,
        )
        result = Result(proc.returncode, proc.stdout.decode(), proc.stderr.decode())
        if check and not result.ok:
            raise AssertionError(f"docker {' '.join(args)} exited {proc.returncode}: {result.err}")
        return result

    def load(self, tag: str) -> str:
        """Copy a lab image in; return its ID (services use the ID: no registry lookup)."""
        image = subprocess.run([DOCKER, "save", tag], capture_output=True, check=True)
        self.docker("load", stdin=image.stdout)
        image_id = self.docker("image", "inspect", "--format", "{{.Id}}", tag).out.strip()
        self.images[tag] = image_id
        return image_id

    def init_swarm(self) -> None:
        # docker_gwbridge first, on a bridge of our own name: swarm uses it as it finds it.
        self.docker(
            "network",
            "create",
            "--driver",
            "bridge",
            "--opt",
            f"com.docker.network.bridge.name={self.bridge}",
            "--opt",
            "com.docker.network.bridge.enable_icc=false",
            "--opt",
            "com.docker.network.bridge.enable_ip_masquerade=false",
            "docker_gwbridge",
        )
        self.docker(
            "swarm",
            "init",
            "--advertise-addr",
            "127.0.0.1",
            "--listen-addr",
            f"127.0.0.1:{free_port()}",
            "--data-path-port",
            str(free_udp_port()),
        )

    def leave_swarm(self) -> None:
        services = self.docker("service", "ls", "-q", check=False).out.split()
        if services:
            self.docker("service", "rm", *services, check=False)
        # Tasks' containers go away asynchronously; leaving does not wait for them.
        with contextlib.suppress(TimeoutError):
            wait_for(
                lambda: not self.docker("ps", "-aq", check=False).out.split(),
                timeout=30,
                interval=0.1,
            )
        self.docker("swarm", "leave", "--force", check=False)
        # Every container of this dockerd is ours; one left attached to docker_gwbridge
        # (a task's that outlived the wait) would keep the network in use.
        ids = self.docker("ps", "-aq", check=False).out.split()
        if ids:
            self.docker("rm", "-f", *ids, check=False)

        def removed(network: str) -> Callable[[], bool]:
            def gone() -> bool:
                # The ingress sandbox lets go of docker_gwbridge a moment after the leave.
                names = self.docker("network", "ls", "--format", "{{.Name}}", check=False).out
                if network not in names.split():
                    return True
                return self.docker("network", "rm", network, check=False).ok

            return gone

        for leftover in ("ingress", "docker_gwbridge"):
            wait_for(removed(leftover), 30, 0.2, f"{leftover} removed")

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def destroy(self) -> None:
        """Leave the swarm, remove its leftovers, stop the dockerd, remove its root."""
        try:
            if self.process is not None and self.process.poll() is None:
                self.leave_swarm()
        finally:
            self.stop()
            unmount_below(self.root)
            if Path(f"/sys/class/net/{self.bridge}").exists():
                subprocess.run(["ip", "link", "del", self.bridge], check=False)
            shutil.rmtree(self.root, ignore_errors=True)

    def service_create(self, name: str, *args: str, image: str = BACKEND_IMAGE) -> str:
        return self.docker(
            "service",
            "create",
            "--detach",
            "--name",
            name,
            "--no-resolve-image",
            "--container-label",
            "lbsync-test=1",
            *args,
            self.images[image],
        ).out.strip()

    def tasks(self, service: str) -> list[dict[str, Any]]:
        ids = self.docker("service", "ps", "-q", "--no-trunc", service, check=False).out.split()
        if not ids:
            return []
        found: list[dict[str, Any]] = json.loads(self.docker("inspect", *ids).out)
        return found

    def running_tasks(self, service: str) -> list[dict[str, Any]]:
        return [
            t
            for t in self.tasks(service)
            if t["Status"]["State"] == "running" and t["DesiredState"] == "running"
        ]


class Result:
    def __init__(self, code: int, out: str, err: str) -> None:
        self.code = code
        self.out = out
        self.err = err.strip()

    @property
    def ok(self) -> bool:
        return self.code == 0
