"""The proxy side of a pass: check a written config, reload the proxy and confirm it.

Finding the proxy is pure and lives in `lbsync.selection`. Checking and reloading are I/O: exec or
signals through the Docker API, a signal to a pid from a pid file (a shared PID namespace),
or a local command.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from lbsync.config import TargetConfig
from lbsync.docker_api import DockerClient, DockerError
from lbsync.haproxy import HAProxySocketError, master_reload
from lbsync.model import Container

CHECK_TIMEOUT = 60.0
RELOAD_CONFIRM_TIMEOUT = 5.0
CONFIRM_POLL_INTERVAL = 0.05


class CheckFailed(Exception):
    """The proxy's checker refused the new config; the message is the checker's output."""


class ReloadFailed(Exception):
    """The reload could not be sent, or no new worker appeared after it."""


class ProxyMissing(Exception):
    """No running proxy container matches the target: nothing may be written yet."""


# --- checks -------------------------------------------------------------------------------


async def run_local(command: Sequence[str], timeout: float) -> tuple[int, str]:
    """Run a local command; (exit code, combined output). A missing binary is exit 127.

    The command runs in a worker thread, which collects its output and reaps it: one
    hand-off to the loop, where asyncio's subprocess transport takes a dozen loop turns (pipe
    protocols, a watcher thread per child) for what is usually a millisecond's reload.
    """
    started: list[subprocess.Popen[bytes]] = []
    try:
        return await asyncio.to_thread(_run_local, command, timeout, started)
    except asyncio.CancelledError:
        # The thread waits for the child: a dead child lets it, and a shutdown, end now.
        for process in started:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
        raise


def _run_local(
    command: Sequence[str], timeout: float, started: list[subprocess.Popen[bytes]]
) -> tuple[int, str]:
    try:
        process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
    except OSError as exc:
        return 127, f"cannot run {command[0]!r}: {exc.strerror or exc}"
    started.append(process)
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()  # reap it
        return 124, f"{' '.join(command)} did not finish within {timeout:g} s"
    return process.returncode or 0, output.decode("utf-8", "replace").strip()


async def check(client: DockerClient, target: TargetConfig, proxies: Sequence[Container]) -> None:
    """Run the target's checker; raise CheckFailed with its output when it refuses."""
    if target.check == "none":
        return
    if target.check == "command":
        code, output = await run_local(target.check_command, CHECK_TIMEOUT)
        if code != 0:
            raise CheckFailed(output or f"{' '.join(target.check_command)} exited {code}")
        return
    for proxy in proxies:
        try:
            result = await client.exec(proxy.id, target.check_command, timeout=CHECK_TIMEOUT)
        except DockerError as exc:
            raise CheckFailed(f"cannot run the check in {proxy.name}: {exc}") from exc
        if result.exit_code != 0:
            raise CheckFailed(result.output or f"check exited {result.exit_code} in {proxy.name}")


# --- reloads ------------------------------------------------------------------------------


def pids_from_top(listing: Mapping[str, Any]) -> set[int]:
    """The PID column of a `top` answer.

    Docker splits each row into columns under `Titles`. Podman 4 sends each row as one
    string under one title (`["1 root     nginx: master process nginx"]` under
    `["PID   USER     COMMAND"]`, pids of the container's namespace): split those on blanks.
    """
    titles = [str(t).upper() for t in listing.get("Titles") or []]
    if len(titles) == 1:
        titles = titles[0].split()
    column = titles.index("PID") if "PID" in titles else 1
    pids = set()
    for row in listing.get("Processes") or []:
        with contextlib.suppress(ValueError, IndexError, TypeError, AttributeError):
            cells = row
            if len(row) == 1 and len(titles) > 1:
                cells = str(row[0]).split(None, len(titles) - 1)
            pids.add(int(cells[column]))
    return pids


async def _container_pids(client: DockerClient, container_id: str) -> set[int]:
    return pids_from_top(await client.top(container_id))


def _children_of(pid: int) -> set[int]:
    """Pids whose parent is `pid`, from /proc (works in a shared PID namespace)."""
    children = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            stat = (entry / "stat").read_text()
            # The command may hold spaces or parentheses: fields start after the last ')'.
            fields = stat[stat.rindex(")") + 2 :].split()
            if int(fields[1]) == pid:
                children.add(int(entry.name))
    return children


#: What /proc/PID/comm says for a proxy's master process. Either proxy is accepted whatever
#: the target's template: a user template or `check: none` says nothing reliable about which
#: proxy runs, and the point is never to signal what is not a proxy (nginx-debug: the
#: official nginx image's debug binary).
PROXY_COMMANDS = frozenset({"nginx", "nginx-debug", "haproxy"})
#: Enough for any pid file (HAProxy writes one pid a line); what is past it is not read.
PID_FILE_READ_MAX = 4096
#: The highest pid Linux can have is 2**22 (/proc/sys/kernel/pid_max): 7 digits.
PID_MAX_DIGITS = 7


def read_pid_file(path: Path) -> int:
    """The proxy master's pid from its pid file (the first number in it).

    Only a pid >= 1 of a running nginx or haproxy (`/proc/PID/comm`): `kill(0)` would signal
    lbsync's own process group and `kill(-1)` every process it may signal, and a stale file
    can name a pid the kernel gave to something else. PID 1 is fine: with a shared PID
    namespace (deploy/compose.least-privilege.yaml) the proxy is PID 1. ReloadFailed says
    which file and what is wrong with it.
    """
    try:
        with path.open("rb") as file:
            head = file.read(PID_FILE_READ_MAX)
    except OSError as exc:
        raise ReloadFailed(f"pid file {path}: cannot read it: {exc.strerror or exc}") from exc
    words = head.split()
    if not words:
        raise ReloadFailed(f"pid file {path}: it is empty (is the proxy running?)")
    word = words[0].decode("utf-8", "replace")
    if word.startswith("-") and word[1:].isascii() and word[1:].isdigit():
        raise ReloadFailed(
            f"pid file {path}: {word[:40]} is not a pid (a negative one would signal a "
            "process group, -1 every process)"
        )
    if not (word.isascii() and word.isdigit()) or len(word) > PID_MAX_DIGITS:
        raise ReloadFailed(f"pid file {path}: {word[:40]!r} is not a pid")
    pid = int(word)
    if pid < 1:
        raise ReloadFailed(f"pid file {path}: pid 0 would signal lbsync's own process group")
    try:
        command = Path(f"/proc/{pid}/comm").read_text(errors="replace").rstrip("\n")
    except FileNotFoundError as exc:
        raise ReloadFailed(
            f"pid file {path}: no process {pid} (a stale file, or the proxy is not in "
            "lbsync's PID namespace)"
        ) from exc
    except OSError as exc:
        raise ReloadFailed(
            f"pid file {path}: cannot read /proc/{pid}/comm: {exc.strerror or exc}"
        ) from exc
    if command not in PROXY_COMMANDS:
        expected = " or ".join(sorted(PROXY_COMMANDS))
        raise ReloadFailed(f"pid file {path}: pid {pid} is {command[:40]!r}, not {expected}")
    return pid


async def _wait_for_new(
    observe: Callable[[], Awaitable[set[int]]],
    before: set[int],
    what: str,
    timeout: float = RELOAD_CONFIRM_TIMEOUT,
) -> None:
    """Poll until a pid not in `before` shows up (the proxy started new workers)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        now_pids = await observe()
        if now_pids - before:
            return
        if loop.time() >= deadline:
            raise ReloadFailed(
                f"{what}: no new worker process within {timeout:g} s of the reload "
                "(the proxy may have refused the new config: see its log)"
            )
        await asyncio.sleep(CONFIRM_POLL_INTERVAL)


async def reload(client: DockerClient, target: TargetConfig, proxies: Sequence[Container]) -> None:
    """Tell the proxy to load the new config and confirm it did (new worker processes)."""
    mode = target.reload
    if mode == "none":
        return
    if mode == "command":
        code, output = await run_local(target.reload_command, CHECK_TIMEOUT)
        if code != 0:
            raise ReloadFailed(output or f"{' '.join(target.reload_command)} exited {code}")
        return
    if mode == "haproxy-master" or (mode == "haproxy-runtime" and target.master_socket):
        assert target.master_socket is not None
        try:
            outcome = await master_reload(target.master_socket, timeout=RELOAD_CONFIRM_TIMEOUT)
        except HAProxySocketError as exc:
            raise ReloadFailed(str(exc)) from exc
        if not outcome.ok:
            raise ReloadFailed(outcome.message)
        return
    if target.proxy.pid_file is not None:
        await _reload_pid(target.proxy.pid_file, target.signal)
        return
    for proxy in proxies:
        await _reload_container(client, target, proxy)


async def _reload_pid(pid_file: Path, signal_name: str) -> None:
    pid = read_pid_file(pid_file)
    before = await asyncio.to_thread(_children_of, pid)
    try:
        os.kill(pid, signal.Signals[f"SIG{signal_name}"])
    except OSError as exc:
        raise ReloadFailed(f"cannot signal pid {pid} from {pid_file}: {exc.strerror}") from exc

    async def observe() -> set[int]:
        return await asyncio.to_thread(_children_of, pid)

    await _wait_for_new(observe, before, f"pid {pid} ({pid_file})")


async def _reload_container(client: DockerClient, target: TargetConfig, proxy: Container) -> None:
    try:
        before = await _container_pids(client, proxy.id)
        if target.reload != "exec":
            await client.kill(proxy.id, target.signal)
        else:
            result = await client.exec(proxy.id, target.reload_command, timeout=CHECK_TIMEOUT)
            if result.exit_code != 0:
                raise ReloadFailed(
                    f"{' '.join(target.reload_command)} in {proxy.name} exited "
                    f"{result.exit_code}: {result.output}"
                )
    except DockerError as exc:
        raise ReloadFailed(f"cannot reload {proxy.name}: {exc}") from exc

    async def observe() -> set[int]:
        return await _container_pids(client, proxy.id)

    try:
        await _wait_for_new(observe, before, f"proxy container {proxy.name}")
    except DockerError as exc:
        raise ReloadFailed(f"cannot confirm the reload of {proxy.name}: {exc}") from exc
