"""One exchange on an HAProxy socket (master CLI or stats socket), and its errors."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re

DEFAULT_TIMEOUT = 5.0  # one socket exchange


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


def check_command(path: str | os.PathLike[str], command: str) -> None:
    if not _COMMAND_RE.fullmatch(command) or ";" in command or "\\" in command:
        raise HAProxySocketError(
            path, command, "refused to send: empty, or holds ';', '\\' or a control character"
        )


def describe_failure(exc: BaseException) -> str:
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


async def exchange(path: str | os.PathLike[str], line: str, timeout: float) -> str:
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
        raise HAProxySocketError(path, line, describe_failure(exc)) from exc
    finally:
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
    return data.decode("utf-8", "replace")
