"""TEST TOOL, never shipped: a unix-socket forwarder in front of the Docker socket.

A test points lbsync's ``docker.host`` at ``unix://<proxy path>`` and can then make the
engine unreachable *for lbsync only*, without touching dockerd (other tests share it):

* :meth:`EngineSocketProxy.cut` closes the listener, removes the socket file and aborts
  every connection open through it (the events stream included), as an engine restart would;
* :meth:`EngineSocketProxy.restore` listens on the same path again.

Bytes are copied as they come, in both directions, half-closes included, so hijacked
connections (``exec``) work through it. :class:`EngineSocketProxy` is asyncio;
:class:`ThreadedSocketProxy` runs one in a thread of its own for synchronous tests::

    with ThreadedSocketProxy(short_socket_path()) as proxy:
        ...  # lbsync with docker.host = proxy.url
        proxy.cut()
        ...  # lbsync sees no engine
        proxy.restore()
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
import threading
from collections.abc import Coroutine
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

DOCKER_SOCKET = "/var/run/docker.sock"
CHUNK = 65536
T = TypeVar("T")


def short_socket_path(name: str = "docker.sock") -> Path:
    """A socket path in a fresh folder under /tmp: AF_UNIX paths are limited to 107 bytes,
    and pytest's ``tmp_path`` can be longer. The caller removes the folder."""
    return Path(tempfile.mkdtemp(prefix="lbsync-sp-", dir="/tmp")) / name


class EngineSocketProxy:
    """Listens on ``path`` and forwards each connection to ``upstream`` (asyncio)."""

    def __init__(self, path: str | os.PathLike[str], upstream: str = DOCKER_SOCKET) -> None:
        self.path = Path(path)
        self.upstream = upstream
        self.accepted = 0  # connections accepted since start, for tests that want to know
        self._server: asyncio.AbstractServer | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[Any]] = set()

    @property
    def url(self) -> str:
        """What to put in ``docker.host``."""
        return f"unix://{self.path}"

    @property
    def listening(self) -> bool:
        return self._server is not None

    @property
    def open_connections(self) -> int:
        """Client connections being forwarded right now."""
        return len(self._tasks)

    async def start(self) -> None:
        """Listen on ``path`` (a stale socket file there is replaced)."""
        if self._server is None:
            self._server = await asyncio.start_unix_server(self._handle, path=str(self.path))

    async def restore(self) -> None:
        """Listen again after :meth:`cut`."""
        await self.start()

    async def cut(self) -> None:
        """Stop listening, remove the socket file, abort every open connection."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        for writer in list(self._writers):
            writer.transport.abort()  # both pumps of that connection see EOF and end
        tasks = list(self._tasks)
        if tasks:
            _, stuck = await asyncio.wait(tasks, timeout=5.0)
            for task in stuck:
                task.cancel()
            await asyncio.gather(*stuck, return_exceptions=True)
        if server is not None:
            await server.wait_closed()

    async def stop(self) -> None:
        await self.cut()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(writer)
        self.accepted += 1
        upstream_writer: asyncio.StreamWriter | None = None
        try:
            try:
                up_reader, upstream_writer = await asyncio.open_unix_connection(self.upstream)
            except OSError:
                return  # no engine behind us either: the client sees the connection close
            self._writers.add(upstream_writer)
            await asyncio.gather(
                _pump(reader, upstream_writer), _pump(up_reader, writer), return_exceptions=True
            )
        except asyncio.CancelledError:
            pass  # cut() gave up waiting: end quietly (asyncio logs a handler that raises)
        finally:
            for w in (writer, upstream_writer):
                if w is not None:
                    self._writers.discard(w)
                    w.transport.abort()
            self._tasks.discard(task)


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Copy until EOF, then pass the half-close on (HTTP bodies, hijacked exec streams)."""
    try:
        while data := await reader.read(CHUNK):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof() and not writer.is_closing():
            writer.write_eof()
    except (ConnectionError, OSError):
        writer.transport.abort()


class ThreadedSocketProxy:
    """An :class:`EngineSocketProxy` on an event loop in its own thread; a synchronous API.

    A context manager: listens on enter; on exit stops and removes the socket file and, when
    the path came from :func:`short_socket_path`, its folder.
    """

    def __init__(self, path: str | os.PathLike[str], upstream: str = DOCKER_SOCKET) -> None:
        self.proxy = EngineSocketProxy(path, upstream)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="engine-socket-proxy", daemon=True
        )
        self._thread.start()

    @property
    def path(self) -> Path:
        return self.proxy.path

    @property
    def url(self) -> str:
        return self.proxy.url

    @property
    def accepted(self) -> int:
        return self.proxy.accepted

    @property
    def open_connections(self) -> int:
        return self.proxy.open_connections

    def _call(self, coro: Coroutine[Any, Any, T], timeout: float = 10.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def start(self) -> None:
        self._call(self.proxy.start())

    def cut(self) -> None:
        """The engine disappears for whoever uses this proxy (see :meth:`EngineSocketProxy.cut`)."""
        self._call(self.proxy.cut())

    def restore(self) -> None:
        self._call(self.proxy.restore())

    def close(self) -> None:
        """Stop forwarding, end the loop's thread, remove the socket (and its temp folder)."""
        if self._loop.is_closed():
            return
        try:
            self._call(self.proxy.stop())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            if not self._thread.is_alive():
                self._loop.close()
            folder = self.path.parent
            if folder.name.startswith("lbsync-sp-") and folder.parent == Path("/tmp"):
                with contextlib.suppress(OSError):
                    folder.rmdir()

    def __enter__(self) -> ThreadedSocketProxy:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
