"""HAProxy's master CLI: `show proc`, and a reload through the master confirmed by it."""

from __future__ import annotations

import asyncio
import os
import re
from dataclasses import dataclass

from lbsync.apply.haproxy.socket import (
    DEFAULT_TIMEOUT,
    HAProxySocketError,
    check_command,
    exchange,
)

RELOAD_TIMEOUT = 10.0  # a whole master_reload: show proc, reload, confirmation
RELOAD_POLL_INTERVAL = 0.02


async def master_command(
    path: str | os.PathLike[str], command: str, timeout: float = DEFAULT_TIMEOUT
) -> str:
    """Run one command on the master CLI (`-S` socket) and return its whole answer.

    Worker commands go through it too, prefixed `@1 ` (the current worker) or `@!PID `.
    """
    check_command(path, command)
    return await exchange(path, command, timeout)


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
    check_command(path, "reload")
    try:
        answer = await exchange(path, "reload", remaining())
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
