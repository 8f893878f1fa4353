"""HAProxy's runtime API (a stats socket at level admin): commands, and a batch applied."""

from __future__ import annotations

import os
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass

from lbsync.apply.haproxy.socket import (
    DEFAULT_TIMEOUT,
    HAProxyCommandError,
    HAProxySocketError,
    check_command,
    exchange,
)

# Runtime commands per `;`-separated line, and the longest line sent. HAProxy reads a CLI line
# into one buffer (tune.bufsize, 16 kB by default); staying well below keeps it safe.
BATCH_MAX_COMMANDS = 200
BATCH_MAX_BYTES = 8000


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
    check_command(path, command)
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
    check_command(path, command)
    return await exchange(path, command, timeout)


async def runtime_command(
    path: str | os.PathLike[str], command: str, timeout: float = DEFAULT_TIMEOUT
) -> str:
    """Run one changing command on the runtime API (a `stats socket ... level admin`).

    Returns HAProxy's informational answer (empty for most commands; `set server ... addr`
    says what changed). Raises HAProxyCommandError when HAProxy answers anything else (its
    errors are text: `No such server.`), HAProxySocketError when the socket fails.
    """
    _check_runtime_command(path, command)
    answer = await exchange(path, command, timeout)
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
            answer = await exchange(path, command, timeout)
            if not _answer_ok(answer):
                failures.append((command, answer.strip()))
    else:
        for group in _batches(commands):
            line = "; ".join(group)
            connections += 1
            text = await exchange(path, line, timeout)
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
