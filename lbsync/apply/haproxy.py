"""HAProxy sockets (asyncio, stdlib).

`master_command` talks to the master CLI (`haproxy -W -S PATH`),
`master_reload` reloads through it and confirms the result with `show proc`;
`runtime_command` / `apply_runtime` talk to a `stats socket ... level admin`. Every failure is
an `HAProxySocketError` naming the socket and the command.

HAProxy 2.6 facts these rely on (Debian 12's 2.6.12, checked against the real binary):

- The master CLI answers `reload` by closing the connection with no text: the master
  re-executes itself and refuses connections for some tens of milliseconds, then `show proc`
  answers again. Only `show proc` tells what happened:

      #<PID>          <type>          <reloads>       <uptime>        <version>
      23094           master          2 [failed: 1]   0d00h00m04s     2.6.12-1+deb12u4
      # workers
      23322           worker          1               0d00h00m01s     2.6.12-1+deb12u4
      # old workers
      23108           worker          2               0d00h00m09s     2.6.12-1+deb12u4
      # programs

  The master's `reloads` counts every reload, `failed` the failed ones since the last success
  (it drops back to 0 after a good reload). A worker's `reloads` counts the reloads it has
  lived through (a new worker shows 0). `# old workers` lists workers still finishing
  connections after a reload; it is absent when there are none. A refused config keeps the
  worker and increments `reloads` and `failed`; a good one forks a new worker.
  (HAProxy 2.7+ answers `reload` with `Success=0|1` and the startup log; that is read too.)
- The stats socket answers each command with its text and an empty line: `set weight` and
  `set server ... state` print nothing on success, `set server ... addr` prints
  `IP changed from 'A' to 'B', port changed from '1' to '8080' by 'stats socket command'`
  (or `no need to change the addr`/`the port`); errors are text (`No such server.`, `No such
  backend.`, `Invalid addr ...`, `Absolute weight can only be between 0 and 256 inclusive.`).
  Commands on one line separated by `;` run in order, each answer ended by an empty line, and
  an error does not stop the ones after it. A port above 65535 is silently wrapped, so ports
  are checked here.
- A non-interactive connection runs one line and closes, so a command is sent with "\\n" and
  the socket half-closed (SHUT_WR); the answer is everything up to EOF.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass

DEFAULT_TIMEOUT = 5.0  # one socket exchange
RELOAD_TIMEOUT = 10.0  # a whole master_reload: show proc, reload, confirmation
RELOAD_POLL_INTERVAL = 0.02
# Runtime commands per `;`-separated line, and the longest line sent. HAProxy reads a CLI line
# into one buffer (tune.bufsize, 16 kB by default); staying well below keeps it safe.
BATCH_MAX_COMMANDS = 200
BATCH_MAX_BYTES = 8000

# --- sockets --------------------------------------------------------------------------------


class HAProxySocketError(Exception):
    """A master CLI or runtime API exchange that failed: the socket could not be reached,
    did not answer in time, or (HAProxyCommandError) refused the command.

    str(): `haproxy socket PATH, command 'CMD': REASON`.
    """

    def __init__(self, path: str | os.PathLike[str], command: str, reason: str) -> None:
        self.path = os.fspath(path)
        self.command = command
        self.reason = reason
        super().__init__(f"haproxy socket {self.path}, command {command!r}: {reason}")


class HAProxyCommandError(HAProxySocketError):
    """HAProxy answered a command with an error (its text is in `answer`).

    From `apply_runtime`, `failures` holds every refused (command, answer) and `command` is
    the first of them.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        command: str,
        answer: str,
        failures: tuple[tuple[str, str], ...] = (),
    ) -> None:
        self.answer = answer
        self.failures = failures or ((command, answer),)
        super().__init__(path, command, f"haproxy answered: {answer}")


# Characters a command may hold. `;` separates commands and `\` escapes on HAProxy's CLI, so
# neither may come from data; nor may control characters (a newline ends the command).
_COMMAND_RE = re.compile(r"[\x20-\x7e]+")


def _check_command(path: str | os.PathLike[str], command: str) -> None:
    if not _COMMAND_RE.fullmatch(command) or ";" in command or "\\" in command:
        raise HAProxySocketError(
            path, command, "refused to send: empty, or holds ';', '\\' or a control character"
        )


def _reason(exc: BaseException) -> str:
    if isinstance(exc, FileNotFoundError):
        return "no such socket (is haproxy running, and is the socket's volume shared?)"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused (nothing listens: haproxy stopped, or is reloading)"
    if isinstance(exc, PermissionError):
        return (
            "permission denied (haproxy creates its sockets mode 600: run lbsync as root or "
            "as haproxy's user)"
        )
    if isinstance(exc, ConnectionResetError):
        return "connection reset by haproxy"
    if isinstance(exc, OSError):
        return exc.strerror or str(exc)
    return str(exc) or type(exc).__name__


async def _exchange(path: str | os.PathLike[str], line: str, timeout: float) -> str:
    """Send one line, half-close, read to EOF: the whole answer, decoded."""
    writer: asyncio.StreamWriter | None = None
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_unix_connection(os.fspath(path))
            writer.write(line.encode("ascii") + b"\n")
            await writer.drain()
            # Non-interactive mode: the master waits for more input until it sees EOF.
            writer.write_eof()
            data = await reader.read()
    except TimeoutError as exc:
        raise HAProxySocketError(path, line, f"no answer within {timeout:g} s") from exc
    except OSError as exc:
        raise HAProxySocketError(path, line, _reason(exc)) from exc
    finally:
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
    return data.decode("utf-8", "replace")


async def master_command(
    path: str | os.PathLike[str], command: str, timeout: float = DEFAULT_TIMEOUT
) -> str:
    """Run one command on the master CLI (`-S` socket) and return its whole answer.

    Worker commands go through it too, prefixed `@1 ` (the current worker) or `@!PID `.
    """
    _check_command(path, command)
    return await _exchange(path, command, timeout)


# --- show proc ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ProcEntry:
    """One line of `show proc`."""

    pid: int
    kind: str  # "master", "worker", or a program's name
    reloads: int
    uptime: str  # as shown: 0d00h00m04s
    version: str

    @property
    def uptime_seconds(self) -> int | None:
        match = _UPTIME_RE.fullmatch(self.uptime)
        if match is None:
            return None
        days, hours, minutes, seconds = (int(g) for g in match.groups())
        return ((days * 24 + hours) * 60 + minutes) * 60 + seconds


@dataclass(frozen=True, slots=True)
class ShowProc:
    """The master CLI's `show proc`: the master, its counters, current and old workers."""

    master: ProcEntry
    failed_reloads: int  # failed reloads since the last good one (0 after a success)
    workers: tuple[ProcEntry, ...]  # the current worker(s)
    old_workers: tuple[ProcEntry, ...] = ()  # still finishing connections after a reload
    programs: tuple[ProcEntry, ...] = ()

    @property
    def master_pid(self) -> int:
        return self.master.pid

    @property
    def reloads(self) -> int:
        return self.master.reloads

    @property
    def worker_pids(self) -> tuple[int, ...]:
        return tuple(w.pid for w in self.workers)

    @property
    def all_worker_pids(self) -> frozenset[int]:
        return frozenset(w.pid for w in self.workers + self.old_workers)


_UPTIME_RE = re.compile(r"(\d+)d(\d+)h(\d+)m(\d+)s")
_MASTER_RE = re.compile(
    r"(?P<pid>\d+)\s+master\s+(?P<reloads>\d+)(?:\s+\[failed:\s*(?P<failed>\d+)\])?"
    r"\s+(?P<uptime>\S+)(?:\s+(?P<version>\S+))?"
)
_PROC_RE = re.compile(
    r"(?P<pid>\d+)\s+(?P<kind>\S+)\s+(?P<reloads>\d+)\s+(?P<uptime>\S+)(?:\s+(?P<version>\S+))?"
)


def parse_show_proc(text: str) -> ShowProc:
    """Parse the master CLI's `show proc` answer; ValueError when it is not one."""
    master: ProcEntry | None = None
    failed = 0
    sections: dict[str, list[ProcEntry]] = {"workers": [], "old workers": [], "programs": []}
    section = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#<"):
            continue
        if line.startswith("#"):
            section = line.lstrip("#").strip().lower()
            continue
        match = _MASTER_RE.fullmatch(line)
        if match is not None and master is None and not section:
            master = ProcEntry(
                pid=int(match["pid"]),
                kind="master",
                reloads=int(match["reloads"]),
                uptime=match["uptime"],
                version=match["version"] or "",
            )
            failed = int(match["failed"] or 0)
            continue
        match = _PROC_RE.fullmatch(line)
        if match is None or section not in sections:
            raise ValueError(f"not a show proc line: {raw!r}")
        sections[section].append(
            ProcEntry(
                pid=int(match["pid"]),
                kind=match["kind"],
                reloads=int(match["reloads"]),
                uptime=match["uptime"],
                version=match["version"] or "",
            )
        )
    if master is None:
        shown = text.strip().splitlines()[0] if text.strip() else "nothing"
        raise ValueError(f"not a show proc answer (no master line): {shown!r}")
    return ShowProc(
        master=master,
        failed_reloads=failed,
        workers=tuple(sections["workers"]),
        old_workers=tuple(sections["old workers"]),
        programs=tuple(sections["programs"]),
    )


async def show_proc(path: str | os.PathLike[str], timeout: float = DEFAULT_TIMEOUT) -> ShowProc:
    """`show proc` on the master CLI, parsed."""
    answer = await master_command(path, "show proc", timeout)
    try:
        return parse_show_proc(answer)
    except ValueError as exc:
        raise HAProxySocketError(path, "show proc", str(exc)) from exc


# --- reload through the master ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ReloadOutcome:
    """What `master_reload` saw. `ok`: a new worker runs the new config."""

    ok: bool
    message: str
    before: ShowProc
    after: ShowProc | None  # the last `show proc` read after the reload, if any
    new_workers: tuple[int, ...] = ()
    seconds: float = 0.0


_SUCCESS_RE = re.compile(r"^Success=(\d)", re.MULTILINE)


def _describe(proc: ShowProc) -> str:
    workers = ", ".join(str(p) for p in proc.worker_pids) or "none"
    return (
        f"master {proc.master_pid}: {proc.reloads} reloads, {proc.failed_reloads} failed "
        f"since the last good one; worker {workers}"
    )


async def master_reload(
    path: str | os.PathLike[str],
    timeout: float = RELOAD_TIMEOUT,
    poll_interval: float = RELOAD_POLL_INTERVAL,
) -> ReloadOutcome:
    """Reload HAProxy through its master CLI and confirm it.

    Reads `show proc`, sends `reload`, then polls `show proc` (the master refuses connections
    while it re-executes) until a worker that was not there before appears (ok), or the
    master's failed-reload counter grows (HAProxy refused the config and keeps the old
    worker), or `timeout` passes. Never raises for a failed reload: the outcome says so.
    Raises HAProxySocketError only when the master cannot be reached before the reload was
    sent (nothing was reloaded then).
    """
    loop = asyncio.get_running_loop()
    started = loop.time()
    deadline = started + timeout

    def remaining() -> float:
        return max(0.05, deadline - loop.time())

    before = await show_proc(path, remaining())
    _check_command(path, "reload")
    try:
        answer = await _exchange(path, "reload", remaining())
    except HAProxySocketError as exc:
        if isinstance(exc.__cause__, FileNotFoundError | ConnectionRefusedError | PermissionError):
            raise  # never sent
        answer = ""  # sent: the master re-executes and may drop the connection
    known = before.all_worker_pids
    reported = _SUCCESS_RE.search(answer)  # HAProxy 2.7+ reports the result itself
    if reported is not None and reported.group(1) == "0":
        log_text = answer[reported.end() :].strip().lstrip("-").strip()
        return ReloadOutcome(
            ok=False,
            message=f"haproxy refused the new configuration: {log_text or 'no details'}",
            before=before,
            after=None,
            seconds=loop.time() - started,
        )

    after: ShowProc | None = None
    last_error: HAProxySocketError | None = None
    while True:
        try:
            after = await show_proc(path, remaining())
            last_error = None
        except HAProxySocketError as exc:
            last_error = exc
        if after is not None and last_error is None:
            new = tuple(p for p in after.worker_pids if p not in known)
            if new:
                return ReloadOutcome(
                    ok=True,
                    message=f"new worker {', '.join(map(str, new))} ({_describe(after)})",
                    before=before,
                    after=after,
                    new_workers=new,
                    seconds=loop.time() - started,
                )
            same_master = after.master_pid == before.master_pid
            if same_master and after.failed_reloads > before.failed_reloads:
                return ReloadOutcome(
                    ok=False,
                    message=(
                        "haproxy refused the new configuration and keeps running the previous "
                        f"one ({_describe(after)}); its log, or haproxy -c, says why"
                    ),
                    before=before,
                    after=after,
                    seconds=loop.time() - started,
                )
        if loop.time() >= deadline:
            seen = f"last show proc: {_describe(after)}" if after is not None else "no show proc"
            if last_error is not None:
                seen += f"; last error: {last_error.reason}"
            return ReloadOutcome(
                ok=False,
                message=f"no new worker within {timeout:g} s of the reload ({seen})",
                before=before,
                after=after,
                seconds=loop.time() - started,
            )
        await asyncio.sleep(poll_interval)


# --- runtime API (stats socket) -------------------------------------------------------------

# `set server B/S addr ...` reports what it changed; anything else a `set` prints is an error.
_ADDR_OK_RE = re.compile(
    r"(?:IP changed from '[^']*' to '[^']*'|no need to change the addr)"
    r"(?:, (?:port changed from '[^']*' to '[^']*'|no need to change the port))?"
    r" by '[^']*'"
)
_SET_SERVER_ADDR_RE = re.compile(r"set server (\S+) addr (\S+)(?: port (\S+))?")


def _answer_ok(answer: str) -> bool:
    text = answer.strip()
    return not text or _ADDR_OK_RE.fullmatch(text) is not None


def _check_runtime_command(path: str | os.PathLike[str], command: str) -> None:
    _check_command(path, command)
    match = _SET_SERVER_ADDR_RE.fullmatch(command)
    if match is not None and match.group(3) is not None:
        port = match.group(3)
        if not port.isdigit() or not 1 <= int(port) <= 65535:
            # HAProxy 2.6 silently wraps a port above 65535.
            raise HAProxySocketError(path, command, f"refused to send: bad port {port!r}")


def _split_answers(text: str) -> list[str]:
    """Answers of `;`-separated commands: each one's text, ended by an empty line."""
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    answers: list[str] = []
    current: list[str] = []
    for line in lines:
        if line == "":
            answers.append("\n".join(current))
            current = []
        else:
            current.append(line)
    if current:
        answers.append("\n".join(current))
    return answers


async def runtime_query(
    path: str | os.PathLike[str], command: str, timeout: float = DEFAULT_TIMEOUT
) -> str:
    """Run a read command (`show servers state`, `get weight B/S`, ...) on the runtime API
    (a `stats socket`) and return its answer as is."""
    _check_command(path, command)
    return await _exchange(path, command, timeout)


async def runtime_command(
    path: str | os.PathLike[str], command: str, timeout: float = DEFAULT_TIMEOUT
) -> str:
    """Run one changing command on the runtime API (a `stats socket ... level admin`).

    Returns HAProxy's informational answer (empty for most commands; `set server ... addr`
    says what changed). Raises HAProxyCommandError when HAProxy answers anything else (its
    errors are text: `No such server.`), HAProxySocketError when the socket fails.
    """
    _check_runtime_command(path, command)
    answer = await _exchange(path, command, timeout)
    if not _answer_ok(answer):
        raise HAProxyCommandError(path, command, answer.strip())
    return answer.strip()


@dataclass(frozen=True, slots=True)
class ApplyReport:
    """What `apply_runtime` did: commands sent, connections used, seconds taken."""

    commands: int
    connections: int
    seconds: float


def _batches(commands: Sequence[str]) -> list[list[str]]:
    batches: list[list[str]] = []
    current: list[str] = []
    size = 0
    for command in commands:
        extra = len(command) + 2
        if current and (len(current) >= BATCH_MAX_COMMANDS or size + extra > BATCH_MAX_BYTES):
            batches.append(current)
            current, size = [], 0
        current.append(command)
        size += extra
    if current:
        batches.append(current)
    return batches


async def apply_runtime(
    path: str | os.PathLike[str],
    commands: Sequence[str],
    timeout: float = DEFAULT_TIMEOUT,
    *,
    batch: bool = True,
) -> ApplyReport:
    """Send `commands` to the runtime API, in order, and check every answer.

    By default commands go `;`-separated on as few connections as possible (a few hundred
    per line); `batch=False` sends one connection per command. HAProxy runs every command of
    a line even when one fails, so on an error all of them have been tried: the raised
    HAProxyCommandError lists each refused command with HAProxy's answer, and the running
    state is then uncertain (reload the written file to be sure). `timeout` is per connection.
    """
    for command in commands:
        _check_runtime_command(path, command)
    started = time.monotonic()
    connections = 0
    failures: list[tuple[str, str]] = []
    if not batch:
        for command in commands:
            connections += 1
            answer = await _exchange(path, command, timeout)
            if not _answer_ok(answer):
                failures.append((command, answer.strip()))
    else:
        for group in _batches(commands):
            line = "; ".join(group)
            connections += 1
            text = await _exchange(path, line, timeout)
            answers = _split_answers(text)
            if len(answers) != len(group):
                raise HAProxyCommandError(
                    path,
                    line,
                    f"{len(answers)} answers for {len(group)} commands: {text.strip()!r}",
                )
            failures.extend(
                (command, answer.strip())
                for command, answer in zip(group, answers, strict=True)
                if not _answer_ok(answer)
            )
    if failures:
        first_command, first_answer = failures[0]
        answer = first_answer
        if len(failures) > 1:
            answer += (
                f" (and {len(failures) - 1} more: "
                + "; ".join(f"{c!r}: {a}" for c, a in failures[1:])
                + ")"
            )
        raise HAProxyCommandError(path, first_command, answer, tuple(failures))
    return ApplyReport(
        commands=len(commands), connections=connections, seconds=time.monotonic() - started
    )
