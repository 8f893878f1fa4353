"""A real HAProxy for tests: `haproxy -c` on a rendered file, short folders for its sockets, a
master-worker haproxy run until it serves, HTTP backends that answer with their name, and the
haproxy targets the tests render for."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from lbsync.config.schema import TargetConfig
from lbsync.model.slots import SlotView
from lbsync.model.types import RoutingModel
from lbsync.render.templates import CompiledTemplate, render
from tests.support.prerequisites import require_binary


def require_haproxy() -> str:
    return require_binary("haproxy", "haproxy")


def haproxy_check(path: Path) -> str:
    """`haproxy -c -f path`: valid, with no warning or alert. Returns its output."""
    result = subprocess.run(
        [require_haproxy(), "-c", "-f", str(path)], capture_output=True, text=True, timeout=60
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "[WARNING]" not in output and "[ALERT]" not in output, output
    return output


@contextlib.contextmanager
def short_socket_dir() -> Iterator[Path]:
    """A short folder for unix sockets (AF_UNIX paths are limited to ~107 bytes), removed
    afterwards: pytest's tmp_path is often too long for them."""
    path = Path(tempfile.mkdtemp(prefix="lbh-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    """Poll `condition` every 10 ms until it holds; fail naming `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.01)


def sync_exchange(path: Path, command: str, timeout: float = 5.0) -> str:
    """A blocking master CLI / stats socket exchange, for setup and teardown."""
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(timeout)
        sock.connect(str(path))
        sock.sendall(command.encode() + b"\n")
        sock.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks).decode()


def _workers(master_socket: Path) -> list[int]:
    with contextlib.suppress(OSError):
        text = sync_exchange(master_socket, "show proc", timeout=2)
        return [int(m) for m in re.findall(r"^(\d+)\s+worker\b", text, re.MULTILINE)]
    return []


def _alive(pid: int) -> bool:
    """A process that exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2 :].split()[0] != "Z"


@dataclass
class RunningHAProxy:
    proc: subprocess.Popen[bytes]
    config: Path
    master_socket: Path
    port: int
    log: Path

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


@contextlib.contextmanager
def run_haproxy(
    config: Path, master_socket: Path, port: int, ready: Path | None = None
) -> Iterator[RunningHAProxy]:
    """`haproxy -W -db -f config -S master_socket` until it serves on 127.0.0.1:port (and
    `ready`, a stats socket, exists); stopped by its pid afterwards, workers included."""
    haproxy = require_haproxy()
    log = config.with_suffix(".log")
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [haproxy, "-W", "-db", "-f", str(config), "-S", str(master_socket)],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    running = RunningHAProxy(proc, config, master_socket, port, log)
    workers: set[int] = set()
    try:

        def up() -> bool:
            if proc.poll() is not None:
                pytest.fail(f"haproxy exited {proc.returncode}: {running.log_text()}")
            if ready is not None and not ready.exists():
                return False
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
            except OSError:
                return False
            workers.update(_workers(master_socket))
            return bool(workers)

        wait_until(up, f"haproxy on port {port}")
        yield running
    finally:
        workers.update(_workers(master_socket))
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        deadline = time.monotonic() + 5
        for pid in workers:
            while _alive(pid) and time.monotonic() < deadline:
                time.sleep(0.01)
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


class _NamedHandler(BaseHTTPRequestHandler):
    """Answers 200 with JSON: which backend it is, the path and the request headers."""

    protocol_version = "HTTP/1.1"  # keep-alive: lets haproxy pool server connections
    server: _NamedServer

    def do_GET(self) -> None:
        self.server.hits += 1
        body = json.dumps(
            {
                "name": self.server.name,
                "path": self.path,
                # HAProxy sends header names lowercased (HTX): compare them that way.
                "headers": {k.lower(): v for k, v in self.headers.items()},
            }
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _NamedServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, name: str) -> None:
        super().__init__(("127.0.0.1", 0), _NamedHandler)
        self.name = name
        self.hits = 0

    @property
    def port(self) -> int:
        port: int = self.server_address[1]
        return port

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # haproxy resets its pooled connections when it stops: not worth a traceback


@contextlib.contextmanager
def http_backends(*names: str) -> Iterator[dict[str, _NamedServer]]:
    """Local HTTP servers on 127.0.0.1 (free ports), each answering with its name."""
    servers = {name: _NamedServer(name) for name in names}
    threads = [threading.Thread(target=s.serve_forever, daemon=True) for s in servers.values()]
    for thread in threads:
        thread.start()
    try:
        yield servers
    finally:
        for s in servers.values():
            s.shutdown()
            s.server_close()
        for thread in threads:
            thread.join(timeout=5)


def http_get(port: int, host_header: str, path: str = "/") -> tuple[int, dict[str, Any]]:
    """GET through haproxy: (status, JSON body or {})."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}", headers={"Host": host_header}
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        err.read()
        return err.code, {}


def served_by(port: int, host_header: str, path: str = "/") -> str | int:
    """The backend name that answered, or the status when haproxy answered itself."""
    status, body = http_get(port, host_header, path)
    return str(body["name"]) if status == 200 else status


# --- haproxy targets, rendered ---------------------------------------------------------------


def target(**overrides: Any) -> TargetConfig:
    values: dict[str, Any] = {
        "name": "haproxy",
        "template": "builtin:haproxy",
        "output": Path("/etc/haproxy/haproxy.cfg"),
        "check_command": ("haproxy", "-c", "-f", "/etc/haproxy/haproxy.cfg"),
        "signal": "USR2",
        "reload_command": (),
    }
    values.update(overrides)
    return TargetConfig(**values)


def runtime_target(**overrides: Any) -> TargetConfig:
    values: dict[str, Any] = {
        "reload": "haproxy-runtime",
        "runtime_socket": Path("/run/haproxy/admin.sock"),
        "slots": 4,
    }
    values.update(overrides)
    return target(**values)


def render_cfg(
    compiled: CompiledTemplate,
    routing: RoutingModel,
    tgt: TargetConfig,
    slots: SlotView | None = None,
) -> str:
    return render(compiled, routing, tgt, slots=slots)
