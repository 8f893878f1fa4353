"""The proxy side of a pass: check a written config, reload the proxy and confirm it.

Finding the proxy is pure and lives in `lbsync.apply.selection`. Checking and reloading are
I/O: exec or signals through the Docker API, a signal to a pid from a pid file (a shared PID
namespace), or a local command. Which proxy containers' checks count, and which are
reloaded, when several match the target is the pure `decide` (SPEC §1: anyone who can start
a container can label it as a proxy, so no single one may veto a file or stall the reloads
of the others).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import os
import signal
import subprocess
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from lbsync.apply.haproxy.master import master_reload
from lbsync.apply.haproxy.socket import HAProxySocketError
from lbsync.apply.selection import signals_container
from lbsync.config.schema import TargetConfig
from lbsync.engine.client import DockerClient
from lbsync.engine.container import Container
from lbsync.engine.errors import DockerError

CHECK_TIMEOUT = 60.0
RELOAD_CONFIRM_TIMEOUT = 5.0
CONFIRM_POLL_INTERVAL = 0.05

T = TypeVar("T")


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


class CheckOutcome(enum.StrEnum):
    OK = "ok"  # the checker accepted the file
    REFUSED = "refused"  # the checker ran and refused it
    UNRUNNABLE = "unrunnable"  # no checker ran: exec error, exit 126/127, timeout


class LeftOutReason(enum.StrEnum):
    UNRUNNABLE = "unrunnable"  # the check could not run in it
    DISAGREED = "disagreed"  # it refused what another container accepted
    RELOAD_FAILED = "reload_failed"  # its reload failed while another one's worked


#: Exit codes of a shell or runtime that found no command to run (126: not executable,
#: 127: not found): the checker never ran, so they say nothing about the config.
NOT_RUN_EXIT_CODES = frozenset({126, 127})
#: Once the check passed (or a reload was confirmed) in one container, how long the others
#: still get: a container whose checker hangs must not hold every pass for CHECK_TIMEOUT.
GRACE = 5.0
MESSAGE_MAX = 300


@dataclass(frozen=True, slots=True)
class CheckResult:
    """The check in one proxy container."""

    container: str
    outcome: CheckOutcome
    message: str


@dataclass(frozen=True, slots=True)
class LeftOut:
    """A proxy container that is reported and not reloaded."""

    container: str
    reason: LeftOutReason
    message: str


@dataclass(frozen=True, slots=True)
class CheckDecision:
    """What the check results mean for the new file (SPEC §1)."""

    keep: bool  # the new file stays
    ran: bool  # the check ran somewhere (False: nothing said anything about the file)
    reload: tuple[str, ...]  # the containers to reload (empty unless `keep`)
    left_out: tuple[LeftOut, ...]  # reported, not reloaded
    refusal: str = ""  # when not `keep`: what refused it, or why it could not run

    @classmethod
    def passed(cls, containers: Sequence[str]) -> CheckDecision:
        return cls(keep=True, ran=True, reload=tuple(containers), left_out=())


def decide(results: Sequence[CheckResult]) -> CheckDecision:
    """Which result counts when several containers ran the check (SPEC §1).

    Labels can be set by whoever starts a container, so one container cannot veto the file:
    it stays when the check passed in at least one container, and is refused only when every
    container that ran the check refused it. Containers where the check could not run, or
    that refused what another accepted, are left out of the reload and reported.
    """
    accepted = [r for r in results if r.outcome is CheckOutcome.OK]
    refused = [r for r in results if r.outcome is CheckOutcome.REFUSED]
    unrunnable = tuple(
        LeftOut(r.container, LeftOutReason.UNRUNNABLE, one_line(r.message))
        for r in results
        if r.outcome is CheckOutcome.UNRUNNABLE
    )
    if accepted:
        disagreed = tuple(
            LeftOut(r.container, LeftOutReason.DISAGREED, one_line(r.message)) for r in refused
        )
        return CheckDecision(
            keep=True,
            ran=True,
            reload=tuple(r.container for r in accepted),
            left_out=unrunnable + disagreed,
        )
    if refused:
        if len(refused) == 1 and len(results) == 1:
            refusal = refused[0].message
        else:
            refusal = "\n".join(f"{r.container}: {r.message}" for r in refused)
        return CheckDecision(keep=False, ran=True, reload=(), left_out=unrunnable, refusal=refusal)
    reasons = "; ".join(f"{r.container}: {r.message}" for r in results)
    return CheckDecision(
        keep=False,
        ran=False,
        reload=(),
        left_out=unrunnable,
        refusal=f"the check could not run in any proxy container ({reasons or 'none'})",
    )


def one_line(text: str, limit: int = MESSAGE_MAX) -> str:
    """A message for one log line or a /status field: the last non-empty line (where a
    checker puts its verdict), control characters escaped, cut to `limit` characters."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    last = lines[-1] if lines else ""
    shown = "".join(c if c.isprintable() else repr(c)[1:-1] for c in last)
    return shown if len(shown) <= limit else shown[: limit - 3] + "..."


async def check_in(client: DockerClient, target: TargetConfig, proxy: Container) -> CheckResult:
    """Run the target's checker in one proxy container."""
    try:
        result = await client.exec(proxy.id, target.check_command, timeout=CHECK_TIMEOUT)
    except DockerError as exc:
        return CheckResult(
            proxy.name, CheckOutcome.UNRUNNABLE, one_line(f"cannot run the check: {exc}")
        )
    if result.exit_code == 0:
        return CheckResult(proxy.name, CheckOutcome.OK, result.output)
    if result.exit_code in NOT_RUN_EXIT_CODES:
        output = one_line(result.output) or f"{target.check_command[0]} not run"
        message = f"the check exited {result.exit_code}: {output}"
        return CheckResult(proxy.name, CheckOutcome.UNRUNNABLE, message)
    message = result.output or f"check exited {result.exit_code} in {proxy.name}"
    return CheckResult(proxy.name, CheckOutcome.REFUSED, message)


async def settle(
    jobs: Sequence[Awaitable[T]],
    worked: Callable[[T], bool],
    late: Callable[[int, str], T],
    grace: float,
) -> list[T]:
    """Await `jobs` at once, each result in its place. Once one has `worked`, the others get
    `grace` seconds more: one still running then is cancelled, and `late(index, why)` stands
    in for its result. A container that hangs must not hold every pass for its timeout."""
    loop = asyncio.get_running_loop()
    tasks = [asyncio.ensure_future(job) for job in jobs]
    index = {task: i for i, task in enumerate(tasks)}
    results: dict[int, T] = {}
    deadline: float | None = None
    pending = set(tasks)
    try:
        while pending:
            timeout = None if deadline is None else max(0.0, deadline - loop.time())
            done, pending = await asyncio.wait(
                pending, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
            if not done:
                break
            for task in done:
                result = results[index[task]] = task.result()
                if deadline is None and worked(result):
                    deadline = loop.time() + grace
    finally:
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending)
    why = f"still running {grace:g} s after it worked in another proxy container"
    return [results[i] if i in results else late(i, why) for i in range(len(tasks))]


async def check_all(
    client: DockerClient,
    target: TargetConfig,
    proxies: Sequence[Container],
    grace: float = GRACE,
) -> list[CheckResult]:
    """The check in every proxy container at once; one still running `grace` seconds after
    it passed in another counts as unrunnable (a timeout)."""
    return await settle(
        [check_in(client, target, p) for p in proxies],
        worked=lambda result: result.outcome is CheckOutcome.OK,
        late=lambda i, why: CheckResult(
            proxies[i].name, CheckOutcome.UNRUNNABLE, f"the check was {why}"
        ),
        grace=grace,
    )


async def check(
    client: DockerClient, target: TargetConfig, proxies: Sequence[Container]
) -> CheckDecision:
    """Run the target's checker (in every proxy container for `exec`) and decide."""
    names = [p.name for p in proxies]
    if target.check == "none":
        return CheckDecision.passed(names)
    if target.check == "command":
        code, output = await run_local(target.check_command, CHECK_TIMEOUT)
        if code != 0:
            refusal = output or f"{' '.join(target.check_command)} exited {code}"
            return CheckDecision(keep=False, ran=True, reload=(), left_out=(), refusal=refusal)
        return CheckDecision.passed(names)
    return decide(await check_all(client, target, proxies))


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


def reloads_containers(target: TargetConfig) -> bool:
    """Is the reload sent to each proxy container on its own (a signal or an exec through
    the Docker API)? Else `reload` reloads the whole target at once."""
    return target.proxy.pid_file is None and signals_container(target)


async def reload(client: DockerClient, target: TargetConfig) -> None:
    """Reload a target that `reloads_containers` does not (a command, HAProxy's master
    socket, a pid file) and confirm it."""
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
    raise ReloadFailed(f"reload {mode} goes to each proxy container: use reload_container")


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


async def reload_container(client: DockerClient, target: TargetConfig, proxy: Container) -> None:
    """Reload one proxy container (a signal or an exec) and confirm it."""
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
