"""A Podman engine of a test's own, for ``tests/engine/test_podman.py``.

:class:`PodmanEngine` runs ``podman system service`` (Podman's Docker-compatible API) on a
short unix socket, with every bit of its state in one folder the test made: storage
(``--root``), run root (``--runroot``), tmp dir, events log and network configs (through a
``containers.conf`` given by ``CONTAINERS_CONF``). The lab's dockerd and its containers are
never touched. Containers are started with the podman CLI on the same state, with
``--network host`` and the label ``lbsync-test=1``, and removed again by id. Images are copied
from the lab's dockerd (``docker save | podman load``), never pulled.

Two quirks of this kind of machine are absorbed here:

* root lacks CAP_SYS_RESOURCE, so a container fails to start (``error setting rlimit``)
  unless ``containers.conf`` sets ``default_ulimits`` no higher than the current limits;
* there is no systemd, so health checks never run by themselves: call
  :meth:`PodmanEngine.healthcheck_run`, or keep a :class:`HealthProber` running.

Typical use::

    engine = PodmanEngine(Path(tempfile.mkdtemp(prefix="lbp-", dir="/tmp")))
    try:
        engine.start()
        engine.load_image(BACKEND_IMAGE)
        cid = engine.run_backend(free_port(), labels={...}, health=True)
        engine.healthcheck_run(cid)
    finally:
        engine.cleanup()
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import yaml

from tests.support.lab import (
    BACKEND_IMAGE,
    DOCKER,
    NGINX_CONF_DIR,
    NGINX_IMAGE,
    engine_available,
    free_port,
    http_get,
    try_http_get,
    wait_for,
)
from tests.support.private_engine import unmount_below

REPO_ROOT = Path(__file__).resolve().parents[2]

PODMAN = shutil.which("podman") or "/usr/bin/podman"
TEST_LABEL = "lbsync-test"

CONTAINERS_CONF = """\
[containers]
# No CAP_SYS_RESOURCE here: raising rlimits fails, so ask for what the machine allows.
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]

[engine]
cgroup_manager = "cgroupfs"
# No journald (nor systemd) here; the service and the CLI share this file.
events_logger = "file"
events_logfile_path = "{root}/tmp/events.log"
tmp_dir = "{root}/tmp"
# An exec through the API keeps two conmon processes this long (default 300 s) so that its
# exit code can be read; lbsync reads it at once. 0 would race that read.
exit_command_delay = 5

[network]
network_config_dir = "{root}/net"
"""


class PodmanError(RuntimeError):
    """A podman CLI command failed."""


def podman_installed() -> bool:
    return Path(PODMAN).exists()


class PodmanEngine:
    """``podman system service`` with all its state under ``root``; stopped by pid."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.socket = root / "p.sock"  # short: AF_UNIX paths are limited to ~100 bytes
        self.conf = root / "containers.conf"
        self.log_path = root / "service.log"
        for sub in ("tmp", "net"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        self.conf.write_text(CONTAINERS_CONF.format(root=root))
        self.env = dict(os.environ, CONTAINERS_CONF=str(self.conf))
        self.env.pop("CONTAINER_HOST", None)  # never a remote podman
        self.process: subprocess.Popen[bytes] | None = None
        self.ids: list[str] = []

    @property
    def host(self) -> str:
        """What lbsync's ``docker.host`` is set to."""
        return f"unix://{self.socket}"

    def _base(self) -> list[str]:
        return [PODMAN, "--root", str(self.root / "root"), "--runroot", str(self.root / "run")]

    def podman(
        self, *args: str, check: bool = True, stdin: bytes | None = None, timeout: float = 60.0
    ) -> str:
        """Run the podman CLI on this engine's state; its stdout (trailing newline cut)."""
        proc = subprocess.run(
            [*self._base(), *args],
            input=stdin,
            capture_output=True,
            timeout=timeout,
            check=False,
            env=self.env,
        )
        if check and proc.returncode != 0:
            raise PodmanError(
                f"podman {' '.join(args)} exited {proc.returncode}: "
                f"{proc.stderr.decode('utf-8', 'replace').strip()[-2000:]}"
            )
        return proc.stdout.decode("utf-8", "replace").rstrip("\n")

    # ---- the service

    def start(self, timeout: float = 30.0) -> None:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [*self._base(), "system", "service", "--time=0", self.host],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self.env,
                start_new_session=True,
            )
        try:
            wait_for(self.answers, timeout, 0.05, "podman system service answering /_ping")
        except TimeoutError:
            raise PodmanError(f"podman system service did not answer: {self.log_tail()}") from None

    def answers(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            raise PodmanError(f"podman system service exited: {self.log_tail()}")
        return self.socket.exists() and engine_available(str(self.socket), timeout=1.0)

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM to the service's pid (only that process), then SIGKILL if it lingers."""
        process = self.process
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=timeout)

    def log_tail(self, size: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-size:]
        except OSError:
            return ""

    # ---- images

    def load_image(self, image: str) -> None:
        """Copy an image from the lab's dockerd into this engine's storage (never a pull)."""
        saved = subprocess.run([DOCKER, "save", image], capture_output=True, timeout=120)
        if saved.returncode != 0:
            raise PodmanError(f"docker save {image}: {saved.stderr.decode().strip()}")
        self.podman("load", "--quiet", stdin=saved.stdout, timeout=120)

    # ---- containers

    def run(
        self,
        image: str,
        *,
        name: str | None = None,
        labels: Mapping[str, str] | None = None,
        env: Mapping[str, str] | None = None,
        health_cmd: str | None = None,
        health_retries: int = 1,
        volumes: Sequence[str] = (),
        extra: Sequence[str] = (),
    ) -> str:
        """``podman run -d --network host --label lbsync-test=1 ...``; the full id."""
        cmd = ["run", "-d", "--network", "host", "--label", f"{TEST_LABEL}=1"]
        if name is not None:
            cmd += ["--name", name]
        for key, value in (labels or {}).items():
            cmd += ["--label", f"{key}={value}"]
        for key, value in (env or {}).items():
            cmd += ["--env", f"{key}={value}"]
        if health_cmd is not None:
            # The interval never fires without systemd; HealthProber/healthcheck_run do.
            cmd += ["--health-cmd", health_cmd, "--health-interval", "1s"]
            cmd += ["--health-retries", str(health_retries), "--health-timeout", "2s"]
        for volume in volumes:
            cmd += ["--volume", volume]
        cmd += [*extra, image]
        cid = self.podman(*cmd).strip().splitlines()[-1]
        if len(cid) != 64:
            raise PodmanError(f"podman run printed {cid!r}, not a container id")
        self.ids.append(cid)
        return cid

    def run_backend(
        self,
        port: int,
        *,
        name: str | None = None,
        labels: Mapping[str, str] | None = None,
        health: bool = False,
    ) -> str:
        """The lab backend on 127.0.0.1:``port`` answering ``backend=<name> ...``."""
        cname = name or f"lbsync-test-{secrets.token_hex(4)}"
        return self.run(
            BACKEND_IMAGE,
            name=cname,
            labels=labels,
            env={"PORT": str(port), "NAME": cname},
            health_cmd=f"wget -q -O /dev/null http://127.0.0.1:{port}/" if health else None,
        )

    def run_nginx(
        self, conf_dir: Path, *, name: str | None = None, labels: Mapping[str, str] | None = None
    ) -> str:
        """The lab nginx with ``conf_dir`` mounted on /etc/nginx/conf.d."""
        return self.run(
            NGINX_IMAGE, name=name, labels=labels, volumes=[f"{conf_dir}:{NGINX_CONF_DIR}"]
        )

    def stop_container(self, cid: str, timeout: int = 5) -> None:
        self.podman("stop", "--time", str(timeout), cid, timeout=timeout + 30)

    def kill(self, cid: str, signal_name: str = "KILL") -> None:
        self.podman("kill", "--signal", signal_name, cid)

    def remove(self, cid: str) -> None:
        """``podman rm -f`` one container and stop tracking it."""
        self.podman("rm", "--force", cid)
        if cid in self.ids:
            self.ids.remove(cid)

    def exec(self, cid: str, *cmd: str) -> str:
        return self.podman("exec", cid, *cmd)

    def healthcheck_run(self, cid: str) -> bool:
        """Run the container's health check once (what systemd's timer would do); healthy?"""
        proc = subprocess.run(
            [*self._base(), "healthcheck", "run", cid],
            capture_output=True,
            timeout=30,
            check=False,
            env=self.env,
        )
        return proc.returncode == 0

    def inspect(self, cid: str) -> dict[str, Any]:
        data: list[dict[str, Any]] = json.loads(self.podman("inspect", "--type", "container", cid))
        return data[0]

    def state(self, cid: str) -> str:
        return str(self.inspect(cid)["State"]["Status"])

    def health(self, cid: str) -> str:
        """healthy, unhealthy, starting; "none" without a check (libpod says Healthcheck)."""
        state = self.inspect(cid)["State"]
        health = state.get("Health") or state.get("Healthcheck") or {}
        return str(health.get("Status") or "none")

    # ---- cleaning up

    def remove_containers(self) -> None:
        """Remove every container started through this engine (by id), ignoring errors."""
        while self.ids:
            cid = self.ids.pop()
            with contextlib.suppress(OSError, subprocess.SubprocessError):
                self.podman("rm", "--force", "--volumes", cid, check=False)

    def cleanup(self) -> None:
        """Containers, then the service (by pid), then mounts under ``root``, then ``root``."""
        self.remove_containers()
        self.stop()
        self.stop_leftovers()
        # Podman leaves its storage bind mount (and any shm/overlay a crash left) behind.
        unmount_below(self.root)
        shutil.rmtree(self.root, ignore_errors=True)

    def leftover_pids(self) -> list[int]:
        """Processes of this engine still running: conmons of exec sessions waiting out
        `exit_command_delay`, `podman container cleanup` runs. Found by this engine's own
        root folder on their command line (no other engine's process has it)."""
        marker = f"{self.root}/".encode()
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            try:
                argv = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            program = Path(argv[0].decode(errors="replace")).name
            if program in ("conmon", "podman") and any(a.startswith(marker) for a in argv):
                found.append(int(entry.name))
        return found

    def stop_leftovers(self, timeout: float = 10.0) -> None:
        """SIGTERM, by pid, to this engine's leftover processes; wait until they are gone."""
        for pid in self.leftover_pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        with contextlib.suppress(TimeoutError):
            wait_for(lambda: not self.leftover_pids(), timeout, 0.05, "podman leftovers gone")


class HealthProber:
    """A thread running ``podman healthcheck run`` on some containers every ``interval``
    seconds (the systemd timer this machine lacks). Use as a context manager."""

    def __init__(self, engine: PodmanEngine, ids: Iterable[str] = (), interval: float = 0.2):
        self.engine = engine
        self.ids = set(ids)
        self.interval = interval
        self.runs = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="podman-health", daemon=True)

    def add(self, cid: str) -> None:
        with self._lock:
            self.ids.add(cid)

    def discard(self, cid: str) -> None:
        with self._lock:
            self.ids.discard(cid)

    def _loop(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                ids = sorted(self.ids)
            for cid in ids:
                with contextlib.suppress(OSError, subprocess.SubprocessError):
                    self.engine.healthcheck_run(cid)
                self.runs += 1
            self._stop.wait(self.interval)

    def __enter__(self) -> HealthProber:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join(timeout=35)


class LbsyncRun:
    """``python -m lbsync.cli run`` on an engine at ``host``, one target; a context manager.

    ``target`` is merged into the target entry (``name`` and ``output`` are required);
    nginx defaults apply otherwise (``check: exec``, ``reload: signal``). On exit lbsync gets
    SIGTERM (by pid) and must exit 0; when the body failed, its log tail is printed.
    """

    def __init__(
        self,
        tmp_path: Path,
        *,
        host: str,
        target: Mapping[str, Any],
        config: Mapping[str, Any] | None = None,
    ) -> None:
        self.listen_port = free_port()
        self.server_port = free_port()
        self.output = Path(target["output"])
        self.log_path = tmp_path / "lbsync.log"
        self.config_path = tmp_path / "lbsync.yaml"
        document: dict[str, Any] = {
            "docker": {"host": host, "resync": "0"},  # events alone must do it
            "debounce": {"quiet": "50ms", "max": "500ms"},
            "targets": [{"listen": f"127.0.0.1:{self.listen_port}", **target}],
            "server": {"listen": f"127.0.0.1:{self.server_port}"},
            "log": {"level": "debug"},
            **(config or {}),
        }
        self.config_path.write_text(yaml.safe_dump(document, sort_keys=False))
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> LbsyncRun:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p
        )
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "lbsync.cli", "run", "-c", str(self.config_path)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=REPO_ROOT,
                env=env,
            )
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        code = self.stop()
        if exc_type is not None or code != 0:
            print(f"--- lbsync log (tail) ---\n{self.log_text()[-6000:]}")
        if exc_type is None:
            assert code == 0, f"lbsync exited {code} on SIGTERM"

    def stop(self, timeout: float = 15.0) -> int | None:
        proc = self.proc
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=timeout)
        return proc.returncode

    # ---- looking

    def _server(self, path: str) -> tuple[int, str]:
        return http_get(f"http://127.0.0.1:{self.server_port}{path}")

    def status(self) -> dict[str, Any]:
        code, body = self._server("/status")
        assert code == 200, body
        document: dict[str, Any] = json.loads(body)
        return document

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def output_text(self) -> str:
        try:
            return self.output.read_text()
        except OSError:
            return ""

    def get(self, host: str, path: str = "/") -> tuple[int, str]:
        """A request through the proxy (127.0.0.1:listen) with ``Host: host``; (0, "") when
        nothing answers."""
        answer = try_http_get(f"http://127.0.0.1:{self.listen_port}{path}", host_header=host)
        return answer or (0, "")

    def skipped_ids(self) -> dict[str, str]:
        """Skipped container id -> reason, in the first target."""
        skipped = self.status()["targets"][0]["skipped"]
        return {str(s["container_id"]): str(s["reason"]) for s in skipped}

    # ---- waiting (polls with deadlines; lbsync's log is shown when one runs out)

    def _wait(self, predicate: Callable[[], object], what: str, timeout: float) -> None:
        def alive_and(pred: Callable[[], object]) -> object:
            assert self.proc is not None and self.proc.poll() is None, "lbsync exited"
            return pred()

        wait_for(lambda: alive_and(predicate), timeout, 0.05, what)

    def wait_healthy(self, timeout: float = 20.0) -> None:
        def healthy() -> bool:
            try:
                return self._server("/healthz")[0] == 200
            except OSError:
                return False

        self._wait(healthy, "lbsync /healthz 200", timeout)

    def wait_output(self, predicate: Callable[[str], bool], timeout: float = 15.0) -> None:
        self._wait(lambda: predicate(self.output_text()), "the output file", timeout)

    def wait_skipped(self, cid: str, reason: str, timeout: float = 15.0) -> None:
        self._wait(
            lambda: self.skipped_ids().get(cid) == reason, f"{cid[:12]} skipped: {reason}", timeout
        )

    def wait_answers(self, host: str, names: set[str], timeout: float = 15.0) -> None:
        """Until two rounds of requests in a row all answer 200 from exactly ``names``
        (right after a reload an old nginx worker may answer one request the old way)."""
        stable = 0

        def settled() -> bool:
            nonlocal stable
            answers = [self.get(host) for _ in range(max(4, 3 * len(names)))]
            seen = {
                word.removeprefix("backend=")
                for _, body in answers
                for word in body.split()
                if word.startswith("backend=")
            }
            good = all(code == 200 for code, _ in answers) and seen == names
            stable = stable + 1 if good else 0
            return stable >= 2

        self._wait(settled, f"{host} served by {sorted(names)}", timeout)
