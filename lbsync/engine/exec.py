"""What an exec in a container returns, and Docker's multiplexed output stream read
in bounded memory."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Final

from lbsync.engine.errors import DockerError

#: What `exec` keeps of each output stream (stdout, stderr): a container may print without
#: end, and an exec must cost lbsync the same memory whatever it prints. The tail is kept,
#: not the head: a checker says its verdict last (nginx's `[emerg] ...` then `test failed`,
#: HAProxy's alerts then `Fatal errors found`), after any number of warnings before it
#: (nginx writes one `conflicting server name` line per duplicate host).
EXEC_OUTPUT_LIMIT: Final = 64 * 1024


@dataclass(frozen=True, slots=True)
class ExecResult:
    exit_code: int
    stdout: bytes
    stderr: bytes
    dropped: int = 0  # bytes of earlier output left out to stay within the limit

    @property
    def output(self) -> str:
        """stdout and stderr as text, for logs and error messages."""
        text = (self.stdout + self.stderr).decode("utf-8", "replace").strip()
        if self.dropped:
            return f"[{self.dropped} bytes of earlier output left out]\n{text}"
        return text


class FrameReader:
    """Docker's multiplexed stream (8-byte frame headers), fed in chunks of any size.

    Keeps the last `limit` bytes of stdout and of stderr (None: all of them) and counts what
    it left out: a frame header may announce up to 4 GiB, and none of it is buffered whole.
    """

    def __init__(self, limit: int | None = None) -> None:
        self._limit = limit
        self._header = bytearray()
        self._left = 0  # payload bytes still due in the current frame
        self.stdout = bytearray()
        self.stderr = bytearray()
        self._into = self.stdout
        self.dropped = 0

    def feed(self, chunk: bytes) -> None:
        view = memoryview(chunk)
        while view:
            if self._left == 0:
                need = 8 - len(self._header)
                self._header += view[:need]
                view = view[need:]
                if len(self._header) < 8:
                    return
                stream, self._left = struct.unpack(">BxxxL", self._header)
                self._header.clear()
                self._into = self.stderr if stream == 2 else self.stdout
                continue
            part = view[: self._left]
            view = view[len(part) :]
            self._left -= len(part)
            self._keep(self._into, part)

    def _keep(self, buffer: bytearray, part: memoryview) -> None:
        limit = self._limit
        if limit is None:
            buffer += part
            return
        if len(part) >= limit:
            self.dropped += len(buffer) + len(part) - limit
            buffer[:] = part[len(part) - limit :]
            return
        buffer += part
        if len(buffer) > limit:
            cut = len(buffer) - limit
            del buffer[:cut]
            self.dropped += cut

    def finish(self) -> tuple[bytes, bytes]:
        """(stdout, stderr); DockerError when the stream ended inside a frame."""
        if self._header or self._left:
            raise DockerError(
                "exec output ends inside a frame "
                f"({len(self._header)} header bytes, {self._left} payload bytes missing)"
            )
        return bytes(self.stdout), bytes(self.stderr)


def demultiplex(data: bytes) -> tuple[bytes, bytes]:
    """Split Docker's multiplexed stream (8-byte frame headers) into stdout and stderr."""
    reader = FrameReader()
    reader.feed(data)
    return reader.finish()
