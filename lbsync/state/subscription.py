"""The events subscription: subscribed before anything is listed, read in a task of its own.

The engine drops a subscriber that does not read for 100 ms, so the reader only moves events
onto a queue; whoever follows them takes them from there at its own pace.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Mapping, Sequence

from lbsync.engine.client import DockerClient
from lbsync.engine.errors import DockerError, StreamError
from lbsync.engine.events import Event

__all__ = ["EventQueue", "ReaderFailed", "Resubscribe", "StreamEnd", "subscribed_events"]

log = logging.getLogger("lbsync.watcher")


class StreamEnd:
    """Placed on the queue by the reader when the stream fails."""

    def __init__(self, error: DockerError) -> None:
        self.error = error


class Resubscribe(DockerError):
    """Put on the queue (as a `StreamEnd`) when the event types to watch changed: the session
    ends and a new one subscribes and lists again. Not an outage."""


class ReaderFailed(DockerError):
    """The events reader ended on something other than an engine error (a bug in lbsync):
    counted, and the session starts over after a backoff, subscribing and listing again."""


EventQueue = asyncio.Queue[Event | StreamEnd]


@contextlib.asynccontextmanager
async def subscribed_events(
    client: DockerClient, *, since: str | None = None, filters: Mapping[str, Sequence[str]]
) -> AsyncIterator[EventQueue]:
    """Subscribe, wait until the engine has the subscription, then read in a task of its own.

    The engine drops a subscriber that does not read for 100 ms, so nothing slow (a pass, an
    inspect, a print) may sit between two reads: the task only moves events onto a queue.
    Any end of the task but this context's own closing arrives on the queue as a `StreamEnd`:
    the engine's errors as they are, anything else (a bug) logged with its traceback and as a
    `ReaderFailed`, so that a follower never waits for events nobody reads.
    """
    queue: EventQueue = asyncio.Queue()
    ready = asyncio.Event()
    stream = client.events(since=since, filters=filters, subscribed=ready)
    closing = False

    async def pump() -> None:
        async for event in stream:
            queue.put_nowait(event)
        raise StreamError("the events stream ended")

    def reader_ended(task: asyncio.Task[None]) -> None:
        if closing:
            return
        error: DockerError
        if task.cancelled():
            error = ReaderFailed("the events reader was cancelled")
            log.error("%s", error)
        else:
            exc = task.exception()
            if isinstance(exc, DockerError):
                error = exc
            else:
                log.error("the events reader failed: %r", exc, exc_info=exc)
                error = ReaderFailed(f"the events reader failed: {exc!r}")
                error.__cause__ = exc
        queue.put_nowait(StreamEnd(error))

    task = asyncio.create_task(pump(), name="lbsync-events-reader")
    task.add_done_callback(reader_ended)
    try:
        ready_wait = asyncio.create_task(ready.wait())
        await asyncio.wait({task, ready_wait}, return_when=asyncio.FIRST_COMPLETED)
        ready_wait.cancel()
        if not ready.is_set():
            item = queue.get_nowait()
            raise item.error if isinstance(item, StreamEnd) else StreamError("no subscription")
        yield queue
    finally:
        closing = True
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task  # how it ended, if not by this cancel, is on the queue already
        with contextlib.suppress(Exception):
            await stream.aclose()
