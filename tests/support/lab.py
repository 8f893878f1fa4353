"""Helpers for tests that need the real Docker engine of the lab (``lab/lab.sh up``).

Everything goes through the docker CLI (never lbsync's own client), so a test sees the
engine the way a user does. Every container runs with ``--network host``, listens on a
127.0.0.1 port and carries the label ``lbsync-test=1``; a :class:`Lab` removes the
containers it started, by id, in :meth:`Lab.cleanup`.

Typical use::

    lab = Lab()
    try:
        port = free_port()
        lab.run_backend(port, name="web1", health=True)
        wait_for(lambda: lab.health(cid) == "healthy", 10)
        status, body = http_get(f"http://127.0.0.1:{port}/")
    finally:
        lab.cleanup()

The backend image answers GET / and each path of ``paths`` with
``backend=<name> path=<path>``, ``/cgi-bin/echo`` (any method) with
``backend=<name> method=<method> uri=<uri>`` then ``host=...`` and
``x-forwarded-for=...`` lines, ``/cgi-bin/sleep?SECONDS`` late, and any other path with
404 ``backend=<name> path=<path> status=404``. :meth:`Lab.set_healthy` makes it answer
503 (so its health check fails) and back.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import random
import secrets
import socket
import subprocess
import time
import urllib.parse
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

BACKEND_IMAGE = "lbsync-lab/backend:latest"
NGINX_IMAGE = "lbsync-lab/nginx:latest"
HAPROXY_IMAGE = "lbsync-lab/haproxy:latest"
IMAGES = (BACKEND_IMAGE, NGINX_IMAGE, HAPROXY_IMAGE)

TEST_LABEL = "lbsync-test"
DOCKER_SOCKET = "/var/run/docker.sock"
DOCKER = "/usr/bin/docker" if os.path.exists("/usr/bin/docker") else "docker"

NGINX_CONF_DIR = "/etc/nginx/conf.d"
HAPROXY_CFG_DIR = "/usr/local/etc/haproxy"
HAPROXY_MASTER_DIR = "/run/haproxy-master"
HAPROXY_MASTER_SOCKET = f"{HAPROXY_MASTER_DIR}/master.sock"
HAPROXY_RUN_DIR = "/run/haproxy"

_LOCAL_HOSTS = frozenset({"127.0.0.1", "localhost"})


def bulky_labels(total: int = 600_000, piece: int = 100_000) -> dict[str, str]:
    """Labels of about ``total`` bytes, which the engine copies into every event of the
    container (issue #17: a ~600 KB event line). In pieces: one ``docker run`` argument may
    not exceed 128 KiB (Linux MAX_ARG_STRLEN)."""
    return {f"{TEST_LABEL}.bulk{i}": "x" * piece for i in range(-(-total // piece))}


T = TypeVar("T")


class LabError(RuntimeError):
    """A docker CLI command of the lab failed."""


# --------------------------------------------------------------------------- engine


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._unix_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self._unix_path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


def engine_available(socket_path: str = DOCKER_SOCKET, timeout: float = 2.0) -> bool:
    """True when a Docker engine answers ``GET /_ping`` on the unix socket."""
    conn = _UnixHTTPConnection(socket_path, timeout)
    try:
        conn.request("GET", "/_ping")
        resp = conn.getresponse()
        return resp.status == 200 and resp.read().strip() == b"OK"
    except (OSError, http.client.HTTPException):
        return False
    finally:
        conn.close()


def images_available() -> bool:
    """True when the three lab images exist (``lab/lab.sh images`` builds them)."""
    proc = subprocess.run(
        [DOCKER, "image", "inspect", "--format", "{{.Id}}", *IMAGES],
        capture_output=True,
        text=True,
        check=False,
    )
    return proc.returncode == 0


# Ports for the tests' listeners come from below the kernel's ephemeral range, which every
# outgoing connection draws its local port from: a port picked there (bind to port 0) can be
# taken by a client socket before the container binds it. Seen in CI: nginx's new listen
# port held by a connection, `bind() to 127.0.0.1:45873 failed (98: Address already in use)`.
PORT_FLOOR = 20000
_handed_out: set[int] = set()  # never the same port twice in one test run


def _port_ceiling() -> int:
    try:
        first_ephemeral = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        first_ephemeral = 32768
    return first_ephemeral - 1


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago, outside the ephemeral range."""
    ceiling = _port_ceiling()
    tries = 200 if ceiling - PORT_FLOOR > 1000 else 0
    for _ in range(tries):
        port = random.randint(PORT_FLOOR, ceiling)
        if port in _handed_out:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    # An unusual ephemeral range leaves no room below it: let the kernel pick.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        picked: int = sock.getsockname()[1]
        return picked


def docker(*args: str, timeout: float = 60.0, check: bool = True) -> str:
    """Run the docker CLI; return its stdout without the trailing newline."""
    proc = subprocess.run(
        [DOCKER, *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and proc.returncode != 0:
        raise LabError(f"docker {' '.join(args)} exited {proc.returncode}: {proc.stderr.strip()}")
    return proc.stdout.rstrip("\n")


# --------------------------------------------------------------------------- waiting


def wait_for(
    predicate: Callable[[], T],
    timeout: float,
    interval: float = 0.05,
    message: str | None = None,
) -> T:
    """Poll ``predicate`` until it returns a truthy value, and return that value.

    Raises :class:`TimeoutError` when ``timeout`` seconds pass first. An exception from
    ``predicate`` propagates at once (catch inside the predicate to retry on errors).
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            what = message or getattr(predicate, "__name__", "condition")
            raise TimeoutError(f"{what}: not true after {timeout:g}s (last value {value!r})")
        time.sleep(min(interval, remaining))


# --------------------------------------------------------------------------- HTTP


def http_request(
    method: str,
    url: str,
    *,
    body: bytes | str | None = None,
    host_header: str | None = None,
    headers: Mapping[str, str] | None = None,
    timeout: float = 2.0,
) -> tuple[int, str]:
    """One HTTP request to 127.0.0.1 (or localhost); returns (status, body text).

    Any status is returned, 4xx and 5xx included; redirects are not followed.
    Connection errors raise OSError (ConnectionRefusedError, TimeoutError, ...).
    """
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "http":
        raise ValueError(f"only http:// URLs are supported: {url!r}")
    if parts.hostname not in _LOCAL_HOSTS:
        raise ValueError(f"the lab only talks to 127.0.0.1: {url!r}")
    port = parts.port or 80
    target = parts.path or "/"
    if parts.query:
        target = f"{target}?{parts.query}"
    send_headers = dict(headers or {})
    if host_header is not None:
        send_headers["Host"] = host_header
    elif "Host" not in send_headers:
        send_headers["Host"] = parts.netloc
    data = body.encode() if isinstance(body, str) else body
    # Always connect to 127.0.0.1: "localhost" may resolve to ::1 first.
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, target, body=data, headers=send_headers)
        resp = conn.getresponse()
        return resp.status, resp.read().decode("utf-8", "replace")
    finally:
        conn.close()


def http_get(url: str, host_header: str | None = None, timeout: float = 2.0) -> tuple[int, str]:
    """GET ``url`` (127.0.0.1 only); returns (status, body text)."""
    return http_request("GET", url, host_header=host_header, timeout=timeout)


def try_http_get(
    url: str, host_header: str | None = None, timeout: float = 2.0
) -> tuple[int, str] | None:
    """Like :func:`http_get`, but None when nothing answers (for :func:`wait_for`)."""
    try:
        return http_get(url, host_header=host_header, timeout=timeout)
    except (OSError, http.client.HTTPException):
        return None


# --------------------------------------------------------------------------- haproxy


def haproxy_cli(socket_path: str | os.PathLike[str], command: str, timeout: float = 2.0) -> str:
    """Send one command to an HAProxy CLI socket (master or runtime); return its answer.

    Works for sockets in a directory mounted into the container (``master_dir`` or
    ``run_dir`` of :meth:`Lab.run_haproxy`), also when the path is longer than AF_UNIX
    allows. The master socket exists a few dozen ms before the master answers: use
    :func:`wait_haproxy_master` first.
    """
    path = os.fspath(socket_path)
    dir_fd: int | None = None
    if len(path.encode()) > 100:
        dir_fd = os.open(os.path.dirname(path) or ".", os.O_PATH)
        path = f"/proc/self/fd/{dir_fd}/{os.path.basename(path)}"
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(path)
            sock.sendall(command.rstrip("\n").encode() + b"\n")
            # Without the half-close the master CLI waits for the next command.
            sock.shutdown(socket.SHUT_WR)
            chunks: list[bytes] = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
    finally:
        if dir_fd is not None:
            os.close(dir_fd)
    return b"".join(chunks).decode("utf-8", "replace")


def wait_haproxy_master(socket_path: str | os.PathLike[str], timeout: float = 10.0) -> str:
    """Wait until the HAProxy master answers ``show proc``; return that answer."""

    def show_proc() -> str:
        try:
            return haproxy_cli(socket_path, "show proc", timeout=1.0)
        except OSError:
            return ""

    return wait_for(show_proc, timeout, 0.05, f"haproxy master on {os.fspath(socket_path)}")


# --------------------------------------------------------------------------- containers


def _kv_args(flag: str, items: Mapping[str, str] | None) -> list[str]:
    return [arg for key, value in (items or {}).items() for arg in (flag, f"{key}={value}")]


class Lab:
    """Starts lab containers and removes exactly those again (by id)."""

    def __init__(self) -> None:
        self.ids: list[str] = []

    def __enter__(self) -> Lab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.cleanup()

    # ---- starting

    def run(
        self,
        image: str,
        *,
        name: str | None = None,
        labels: Mapping[str, str] | None = None,
        env: Mapping[str, str] | None = None,
        args: Sequence[str] = (),
        health_cmd: str | None = None,
        health_interval: str = "1s",
        health_timeout: str = "2s",
        health_retries: int | None = None,
        volumes: Sequence[str] = (),
        extra: Sequence[str] = (),
    ) -> str:
        """``docker run -d --network host --label lbsync-test=1 ...``; the full id.

        ``volumes`` are ``-v`` values (``/host/dir:/container/dir[:ro]``), ``extra`` more
        ``docker run`` options, ``args`` the command after the image.
        """
        cmd = ["run", "-d", "--network", "host", "--label", f"{TEST_LABEL}=1"]
        if name is not None:
            cmd += ["--name", name]
        cmd += _kv_args("--label", labels)
        cmd += _kv_args("--env", env)
        if health_cmd is not None:
            cmd += [
                "--health-cmd",
                health_cmd,
                "--health-interval",
                health_interval,
                "--health-timeout",
                health_timeout,
            ]
            if health_retries is not None:
                cmd += ["--health-retries", str(health_retries)]
        for volume in volumes:
            cmd += ["--volume", volume]
        cmd += [*extra, image, *args]
        cid = docker(*cmd)
        if len(cid) != 64:
            raise LabError(f"docker run printed {cid!r}, not a container id")
        self.ids.append(cid)
        return cid

    def run_backend(
        self,
        port: int,
        *,
        name: str | None = None,
        labels: Mapping[str, str] | None = None,
        env: Mapping[str, str] | None = None,
        health: bool = False,
        paths: Iterable[str] = (),
        stop_grace: float = 0,
        health_retries: int | None = 1,
        extra: Sequence[str] = (),
    ) -> str:
        """A backend on 127.0.0.1:``port`` answering ``backend=<name> ...``.

        Without ``name`` the container gets a random ``lbsync-test-...`` name; the answers
        carry the container name unless ``env`` sets NAME. ``health`` adds the lab health
        check (``wget`` of ``/`` every second; one failure makes it unhealthy).
        """
        cname = name or f"lbsync-test-{secrets.token_hex(4)}"
        full_env = {
            "PORT": str(port),
            "NAME": cname,
            "PATHS": " ".join(paths),
            "STOP_GRACE": f"{stop_grace:g}",
        }
        full_env.update(env or {})
        return self.run(
            BACKEND_IMAGE,
            name=cname,
            labels=labels,
            env=full_env,
            health_cmd=f"wget -q -O /dev/null http://127.0.0.1:{port}/" if health else None,
            health_retries=health_retries if health else None,
            extra=extra,
        )

    def run_nginx(
        self,
        conf_dir: str | os.PathLike[str],
        *,
        labels: Mapping[str, str] | None = None,
        name: str | None = None,
        extra: Sequence[str] = (),
    ) -> str:
        """nginx with the directory ``conf_dir`` mounted on /etc/nginx/conf.d."""
        return self.run(
            NGINX_IMAGE,
            name=name,
            labels=labels,
            volumes=[f"{os.fspath(conf_dir)}:{NGINX_CONF_DIR}"],
            extra=extra,
        )

    def run_haproxy(
        self,
        cfg_dir: str | os.PathLike[str],
        *,
        labels: Mapping[str, str] | None = None,
        name: str | None = None,
        master_dir: str | os.PathLike[str] | None = None,
        run_dir: str | os.PathLike[str] | None = None,
        extra: Sequence[str] = (),
    ) -> str:
        """HAProxy (master-worker) reading ``cfg_dir``/haproxy.cfg.

        ``master_dir`` is mounted on /run/haproxy-master (the master socket appears there as
        master.sock), ``run_dir`` on /run/haproxy (for runtime sockets the config declares).
        """
        volumes = [f"{os.fspath(cfg_dir)}:{HAPROXY_CFG_DIR}"]
        if master_dir is not None:
            volumes.append(f"{os.fspath(master_dir)}:{HAPROXY_MASTER_DIR}")
        if run_dir is not None:
            volumes.append(f"{os.fspath(run_dir)}:{HAPROXY_RUN_DIR}")
        return self.run(HAPROXY_IMAGE, name=name, labels=labels, volumes=volumes, extra=extra)

    # ---- acting on containers

    def stop(self, cid: str, timeout: int = 10) -> None:
        docker("stop", "--time", str(timeout), cid, timeout=timeout + 30)

    def kill(self, cid: str, signal: str = "KILL") -> None:
        docker("kill", "--signal", signal, cid)

    def start(self, cid: str) -> None:
        docker("start", cid)

    def pause(self, cid: str) -> None:
        docker("pause", cid)

    def unpause(self, cid: str) -> None:
        docker("unpause", cid)

    def remove(self, cid: str) -> None:
        """``docker rm -f`` one container and stop tracking it."""
        docker("rm", "--force", cid)
        if cid in self.ids:
            self.ids.remove(cid)

    def exec(self, cid: str, *cmd: str, check: bool = True) -> str:
        """Run ``cmd`` in the container; its stdout."""
        return docker("exec", cid, *cmd, check=check)

    def set_healthy(self, cid: str, healthy: bool) -> None:
        """Make a backend answer 503 on its paths (fails the health check), or not."""
        if healthy:
            self.exec(cid, "rm", "-f", "/tmp/unhealthy")
        else:
            self.exec(cid, "touch", "/tmp/unhealthy")

    # ---- looking at containers

    def inspect(self, cid: str) -> dict[str, Any]:
        data: list[dict[str, Any]] = json.loads(docker("inspect", "--type", "container", cid))
        return data[0]

    def state(self, cid: str) -> str:
        """running, exited, paused, created, ..."""
        return docker("inspect", "--format", "{{.State.Status}}", cid)

    def health(self, cid: str) -> str:
        """healthy, unhealthy, starting; "none" without a health check."""
        fmt = "{{if .State.Health}}{{.State.Health.Status}}{{else}}none{{end}}"
        return docker("inspect", "--format", fmt, cid)

    def wait_health(self, cid: str, status: str = "healthy", timeout: float = 15.0) -> None:
        wait_for(lambda: self.health(cid) == status, timeout, 0.1, f"{cid[:12]} {status}")

    def name(self, cid: str) -> str:
        """The container name without the leading slash."""
        return docker("inspect", "--format", "{{.Name}}", cid).lstrip("/")

    def logs(self, cid: str) -> str:
        """stdout and stderr of the container, merged into one text."""
        proc = subprocess.run(
            [DOCKER, "logs", cid],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=30,
            check=False,
        )
        return proc.stdout

    # ---- cleaning up

    def cleanup(self) -> None:
        """Remove every container this Lab started (``rm -f`` by id), ignoring errors."""
        while self.ids:
            cid = self.ids.pop()
            with contextlib.suppress(OSError, subprocess.SubprocessError):
                subprocess.run(
                    [DOCKER, "rm", "--force", "--volumes", cid],
                    capture_output=True,
                    timeout=60,
                    check=False,
                )
