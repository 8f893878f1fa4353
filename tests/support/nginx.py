"""A real nginx for tests: `nginx -t` on a rendered file, a minimal config around an include
with every path nginx writes in a test's folder, and a server run until it accepts."""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.support.prerequisites import require_binary


def require_nginx() -> str:
    return require_binary("nginx", "nginx")


def nginx_prefix_config(tmp_path: Path, include: Path, extra_main: str = "") -> Path:
    """A minimal nginx.conf that includes `include` at the http level, with every path
    nginx writes (pid, logs, temp folders) inside tmp_path."""
    conf = tmp_path / "nginx.conf"
    conf.write_text(
        f"{extra_main}\n"
        f"pid {tmp_path}/nginx.pid;\n"
        f"error_log {tmp_path}/error.log;\n"
        "events {}\n"
        "http {\n"
        f"    access_log {tmp_path}/access.log;\n"
        f"    client_body_temp_path {tmp_path}/client_body;\n"
        f"    proxy_temp_path {tmp_path}/proxy;\n"
        f"    fastcgi_temp_path {tmp_path}/fastcgi;\n"
        f"    uwsgi_temp_path {tmp_path}/uwsgi;\n"
        f"    scgi_temp_path {tmp_path}/scgi;\n"
        f"    include {include};\n"
        "}\n",
        encoding="utf-8",
    )
    return conf


def nginx_test(tmp_path: Path, include: Path) -> None:
    """`nginx -t` on `include` wrapped in a minimal config: no error and no warning."""
    nginx = require_nginx()
    conf = nginx_prefix_config(tmp_path, include)
    error_log = tmp_path / "error.log"
    result = subprocess.run(
        [nginx, "-t", "-e", str(error_log), "-p", f"{tmp_path}/", "-c", str(conf)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "[warn]" not in output and "[emerg]" not in output, output


@contextmanager
def running(argv: list[str], log: Path, port: int) -> Iterator[subprocess.Popen[bytes]]:
    """Run a server in the foreground until it accepts on 127.0.0.1:`port`; stop it after."""
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"{argv[0]} did not start: {log.read_text(errors='replace')}")
                time.sleep(0.05)
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
