"""`proxy: {pid_file: ...}`: only a running nginx or haproxy is ever signalled.

A pid file holding 0 or -1 would make `kill` signal lbsync's process group or every process
it may; a stale one names whatever the kernel gave that pid next. The pid must be >= 1 and
`/proc/PID/comm` a proxy's. PID 1 stays allowed: in deploy/compose.least-privilege.yaml lbsync
shares nginx's PID namespace, where nginx is PID 1 (proved here with a real nginx as PID 1 of
its own namespace, lbsync's code entered into it).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from lbsync.apply.proxy import ReloadFailed, read_pid_file
from tests.support.nginx import nginx_prefix_config, require_nginx
from tests.support.pid_file import reload_by_pid_file

REPO_ROOT = Path(__file__).resolve().parents[2]


@contextmanager
def sleeping() -> Iterator[subprocess.Popen[bytes]]:
    """A process that is not a proxy, and that SIGHUP would end: stopped by its pid after."""
    proc = subprocess.Popen(["sleep", "60"])
    try:
        comm = Path(f"/proc/{proc.pid}/comm")
        deadline = time.monotonic() + 5
        while comm.read_text().strip() != "sleep":  # the exec may not have named it yet
            assert time.monotonic() < deadline, comm.read_text()
            time.sleep(0.01)
        yield proc
    finally:
        proc.kill()
        proc.wait()


def a_free_pid() -> int:
    """The pid of a process that has ended and been reaped (not yet given to another)."""
    proc = subprocess.Popen(["true"])
    proc.wait()
    assert not Path(f"/proc/{proc.pid}").exists()
    return proc.pid


@pytest.mark.parametrize(
    ("content", "says"),
    [
        pytest.param(b"0\n", "pid 0 would signal lbsync's own process group", id="zero"),
        pytest.param(b"-1\n", "-1 is not a pid (a negative one would signal", id="minus-one"),
        pytest.param(b"-4242\n", "-4242 is not a pid (a negative one", id="negative"),
        pytest.param(b"", "it is empty", id="empty"),
        pytest.param(b" \n\t\n", "it is empty", id="blank"),
        pytest.param(b"nginx\n", "'nginx' is not a pid", id="word"),
        pytest.param(b"12.5\n", "'12.5' is not a pid", id="decimal"),
        pytest.param(b"0x1f\n", "'0x1f' is not a pid", id="hex"),
        pytest.param(b"+42\n", "'+42' is not a pid", id="plus"),
        pytest.param("١٢".encode(), "'١٢' is not a pid", id="arabic-digits"),
        pytest.param(b"\xff\xfe\n", "is not a pid", id="binary"),
        pytest.param(b"9" * 5000, "is not a pid", id="huge"),
        pytest.param(b"4194305\n", "no process 4194305", id="above-pid-max"),
    ],
)
def test_a_bad_pid_file_is_one_clear_reload_failure(
    tmp_path: Path, content: bytes, says: str
) -> None:
    pid_file = tmp_path / "nginx.pid"
    pid_file.write_bytes(content)
    with pytest.raises(ReloadFailed) as info:
        read_pid_file(pid_file)
    message = str(info.value)
    assert message.startswith(f"pid file {pid_file}: "), message
    assert says in message, message
    assert "\n" not in message and len(message) < 300
    with pytest.raises(ReloadFailed, match="pid file"):  # and the reload sends nothing
        reload_by_pid_file(pid_file)


def test_a_missing_pid_file(tmp_path: Path) -> None:
    pid_file = tmp_path / "nginx.pid"
    with pytest.raises(ReloadFailed, match=r"nginx\.pid: cannot read it: No such file"):
        read_pid_file(pid_file)


def test_a_pid_no_process_has(tmp_path: Path) -> None:
    pid_file = tmp_path / "nginx.pid"
    pid = a_free_pid()
    pid_file.write_text(f"{pid}\n")
    with pytest.raises(ReloadFailed) as info:
        read_pid_file(pid_file)
    assert str(info.value) == (
        f"pid file {pid_file}: no process {pid} (a stale file, or the proxy is not in "
        "lbsync's PID namespace)"
    )


def test_a_process_that_is_not_a_proxy_is_never_signalled(tmp_path: Path) -> None:
    pid_file = tmp_path / "nginx.pid"
    with sleeping() as sleeper:
        pid_file.write_text(f"{sleeper.pid}\n")
        with pytest.raises(ReloadFailed) as info:
            read_pid_file(pid_file)
        assert str(info.value) == (
            f"pid file {pid_file}: pid {sleeper.pid} is 'sleep', not haproxy or nginx or "
            "nginx-debug"
        )
        with pytest.raises(ReloadFailed, match="is 'sleep'"):
            reload_by_pid_file(pid_file, "HUP")
        time.sleep(0.2)
        assert sleeper.poll() is None, "the SIGHUP reached sleep"


def test_pid_1_is_judged_by_its_command_like_any_other(tmp_path: Path) -> None:
    pid_file = tmp_path / "nginx.pid"
    pid_file.write_text("1\n")
    init = Path("/proc/1/comm").read_text().strip()
    if init in ("nginx", "haproxy"):
        pytest.skip(f"PID 1 here is {init}")
    with pytest.raises(ReloadFailed, match=f"pid 1 is '{init}', not haproxy or nginx"):
        read_pid_file(pid_file)


# --------------------------------------------------------------------------- a real nginx


def nginx_config(tmp_path: Path) -> tuple[list[str], Path]:
    """The argv of an nginx in the foreground whose files all live in tmp_path, and its pid
    file."""
    nginx = require_nginx()
    include = tmp_path / "empty.conf"
    include.write_text("")
    conf = nginx_prefix_config(tmp_path, include, extra_main="worker_processes 1;")
    argv = [nginx, "-e", str(tmp_path / "error.log"), "-p", f"{tmp_path}/", "-c", str(conf)]
    return [*argv, "-g", "daemon off;"], tmp_path / "nginx.pid"


def children(pid: int) -> set[int]:
    found = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        found |= {int(p) for p in (task / "children").read_text().split()}
    return found


def wait_for_file_text(path: Path, timeout: float = 10.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.read_text().strip():
            return path.read_text()
        time.sleep(0.05)
    raise AssertionError(f"{path} not written within {timeout:g}s")


def test_a_real_nginx_is_reloaded_through_its_pid_file(tmp_path: Path) -> None:
    argv, pid_file = nginx_config(tmp_path)
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert int(wait_for_file_text(pid_file)) == proc.pid
        assert read_pid_file(pid_file) == proc.pid
        before = children(proc.pid)
        reload_by_pid_file(pid_file, "HUP")  # returns once a new worker is seen
        assert children(proc.pid) - before
    finally:
        proc.terminate()
        proc.wait(timeout=10)


# Run by nsenter inside the PID namespace where nginx is PID 1: lbsync's own reload.
_RELOAD_AS_PID_1 = """
import sys
from pathlib import Path
from lbsync.apply.proxy import read_pid_file
from tests.support.pid_file import reload_by_pid_file

pid_file = Path(sys.argv[1])
print("pid", read_pid_file(pid_file), flush=True)
reload_by_pid_file(pid_file, "HUP")
print("reloaded", flush=True)
"""


def test_nginx_as_pid_1_of_a_shared_namespace_is_reloaded(tmp_path: Path) -> None:
    """compose.least-privilege.yaml's shape: lbsync in nginx's PID namespace, nginx PID 1."""
    if os.geteuid() != 0 or not (shutil.which("unshare") and shutil.which("nsenter")):
        pytest.skip("needs root, unshare and nsenter (util-linux) for a PID namespace")
    argv, pid_file = nginx_config(tmp_path)
    # unshare forks nginx as PID 1 of a new PID namespace, with its own /proc.
    namespace = subprocess.Popen(
        ["unshare", "--pid", "--fork", "--mount-proc", "--kill-child", *argv],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    nginx = 0
    try:
        assert wait_for_file_text(pid_file).strip() == "1"  # nginx's own view: PID 1
        (nginx,) = children(namespace.pid)  # the same nginx, as the host numbers it
        entered = subprocess.run(
            [
                *("nsenter", f"--target={nginx}", "--pid", "--mount", "--"),
                *(sys.executable, "-c", _RELOAD_AS_PID_1, str(pid_file)),
            ],
            cwd=REPO_ROOT,
            env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert entered.returncode == 0, entered.stderr
        assert entered.stdout.splitlines() == ["pid 1", "reloaded"]
    finally:
        # unshare ignores SIGTERM while it waits: stop nginx (the namespace's PID 1) by its
        # host pid, and unshare ends with it (--kill-child covers a test that died early).
        if nginx:
            os.kill(nginx, signal.SIGTERM)
        else:
            namespace.send_signal(signal.SIGKILL)
        try:
            namespace.wait(timeout=10)
        except subprocess.TimeoutExpired:
            namespace.kill()
            namespace.wait()
