"""Engine events: the `Event` type, and the events stream cut into bounded lines.

The stream is one JSON object per line. A line is never held whole past `MAX_EVENT_LINE`:
what the start and end of a longer one say becomes an `Event` with `oversized` set.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Final

from lbsync.engine.errors import StreamError

#: The longest events-stream line that is parsed, in bytes (its newline not counted). The
#: engine puts every label of a container into each of its events, so the length is the
#: container owner's choice; real events are 1-5 KB (a Compose project's labels included).
#: A longer line is never held whole: it is skipped up to its newline, and what its start and
#: end say becomes an `Event` with `oversized` set, which the watcher answers with an inspect.
#: Only the event's attributes are lost that way, so the bound need only be far above real
#: events and cheap to hold: 64 KiB, aiohttp's own read-buffer size.
MAX_EVENT_LINE: Final = 64 * 1024
#: What is kept of a longer line: its start (the engine writes `status`, `id`, `from`, `Type`,
#: `Action` and `Actor.ID` before the attributes) and its end (`scope`, `time`, `timeNano`).
OVERSIZED_HEAD: Final = 4096
OVERSIZED_TAIL: Final = 256


@dataclass(frozen=True, slots=True)
class Event:
    """One engine event, as lbsync reads it."""

    type: str  # container, network, image, service, ...
    action: str  # start, die, health_status: healthy, kill, connect, ...
    actor_id: str
    attributes: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    time_nano: int = 0
    raw: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    #: The length of its line when that was over `MAX_EVENT_LINE`: the line was skipped, only
    #: type, action, actor and time were read (attributes and `raw` are empty). 0 otherwise.
    oversized: int = 0

    @property
    def base_action(self) -> str:
        """The action without its detail: `health_status: healthy` -> `health_status`."""
        return self.action.split(":", 1)[0].strip()

    @classmethod
    def from_json(cls, data: Any) -> Event:
        if not isinstance(data, dict):
            raise ValueError(f"event is not a JSON object: {data!r:.200}")
        actor = data.get("Actor") or {}
        if not isinstance(actor, dict):
            actor = {}
        attributes = actor.get("Attributes") or {}
        if not isinstance(attributes, dict):
            attributes = {}
        actor_id = actor.get("ID") or data.get("id") or ""
        time_nano = data.get("timeNano")
        if not isinstance(time_nano, int):
            seconds = data.get("time")
            time_nano = int(seconds) * 1_000_000_000 if isinstance(seconds, int) else 0
        return cls(
            type=str(data.get("Type") or ""),
            action=str(data.get("Action") or data.get("status") or ""),
            actor_id=str(actor_id),
            attributes=MappingProxyType({str(k): str(v) for k, v in attributes.items()}),
            time_nano=time_nano,
            raw=MappingProxyType(data),
        )


#: What `exec` keeps of each output stream (stdout, stderr): a container may print without
#: end, and an exec must cost lbsync the same memory whatever it prints. The tail is kept,
#: not the head: a checker says its verdict last (nginx's `[emerg] ...` then `test failed`,


@dataclass(frozen=True, slots=True)
class OversizedLine:
    """A line longer than a `LineSplitter`'s bound, which was not held: what is left of it."""

    size: int  # its length in bytes, without the newline
    head: bytes  # its first bytes (up to the splitter's `head`)
    tail: bytes  # its last bytes (up to the splitter's `tail`)


class LineSplitter:
    """Cuts a byte stream, fed in chunks of any size, into lines, holding at most `max_line`
    bytes of a line: a longer one is skipped up to its newline and comes out as an
    `OversizedLine`, however many chunks it spans. Lines come out without their newline."""

    def __init__(
        self, max_line: int, *, head: int = OVERSIZED_HEAD, tail: int = OVERSIZED_TAIL
    ) -> None:
        self.max_line = max_line
        self._head_size = head
        self._tail_size = tail
        self._line = bytearray()
        self._skipped: int | None = None  # bytes of an oversized line so far; None: none
        self._head = b""
        self._tail = b""

    @property
    def partial(self) -> bytes:
        """The start of a line not finished yet; empty between lines."""
        return self._head if self._skipped is not None else bytes(self._line)

    def feed(self, data: bytes) -> list[bytes | OversizedLine]:
        """The lines `data` finishes."""
        lines: list[bytes | OversizedLine] = []
        start = 0
        while True:
            end = data.find(b"\n", start)
            self._take(data[start:] if end < 0 else data[start:end])
            if end < 0:
                return lines
            lines.append(self._finish())
            start = end + 1

    def _take(self, piece: bytes) -> None:
        if self._skipped is None:
            if len(self._line) + len(piece) <= self.max_line:
                self._line += piece
                return
            # Over the bound: keep its start and end, drop the rest, from now to its newline.
            self._skipped = len(self._line)
            self._head = bytes(self._line[: self._head_size])
            self._tail = bytes(self._line[-self._tail_size :])
            self._line = bytearray()
        if len(self._head) < self._head_size:
            self._head += piece[: self._head_size - len(self._head)]
        self._tail = (self._tail + piece[-self._tail_size :])[-self._tail_size :]
        self._skipped += len(piece)

    def _finish(self) -> bytes | OversizedLine:
        if self._skipped is None:
            line = bytes(self._line)
            self._line.clear()
            return line
        oversized = OversizedLine(size=self._skipped, head=self._head, tail=self._tail)
        self._skipped = None
        self._head = self._tail = b""
        return oversized


_JSON_STRING = rb'"(?:[^"\\]|\\.)*"'
#: The start of an event line: the engine's own string fields (`status`, `id`, `from`, `Type`,
#: `Action`), then `"Actor":{"ID":...`, all before the attributes, which hold the labels. Read
#: field by field from the first byte, honouring escapes: a label value can never be taken
#: for one of them.
_EVENT_HEAD = re.compile(
    rb'\{((?:"[A-Za-z]+":' + _JSON_STRING + rb",)*)"
    rb'(?:"Actor":\{"ID":(' + _JSON_STRING + rb"))?"
)
_EVENT_FIELD = re.compile(rb'"([A-Za-z]+)":(' + _JSON_STRING + rb")")
#: The end of an event line: `..."time":1700000000,"timeNano":1700000000123456789}`.
_EVENT_TIME_NANO = re.compile(rb'"timeNano":([0-9]{1,20})\}\s*$')


def _json_string(token: bytes) -> str:
    """A JSON string token's text; "" when it does not decode."""
    try:
        text = json.loads(token)
    except ValueError:
        return ""
    return text if isinstance(text, str) else ""


def oversized_event(line: OversizedLine) -> Event:
    """What can be read of an event whose line was too long to parse: type, action and actor
    from its start, time from its end; "" (0 for the time) where they do not say."""
    fields: dict[str, str] = {}
    actor_id = ""
    head = _EVENT_HEAD.match(line.head)
    if head is not None:
        for key, token in _EVENT_FIELD.findall(head.group(1)):
            fields[key.decode("ascii")] = _json_string(token)
        if head.group(2) is not None:
            actor_id = _json_string(head.group(2))
    end = _EVENT_TIME_NANO.search(line.tail)
    return Event(
        type=fields.get("Type", ""),
        action=fields.get("Action") or fields.get("status", ""),
        actor_id=actor_id or fields.get("id", ""),
        time_nano=int(end.group(1)) if end is not None else 0,
        oversized=line.size,
    )


def event_from_line(line: bytes | OversizedLine) -> Event | None:
    """The event a line of the stream says (what can be read of it, when it was too long);
    None for a blank line. `StreamError` for a line that is not an event: the stream is not
    what it should be, and no later line can be trusted."""
    if isinstance(line, OversizedLine):
        return oversized_event(line)
    if not line.strip():
        return None
    try:
        return Event.from_json(json.loads(line))
    except ValueError as exc:
        raise StreamError(
            f"the events stream sent a line that is not an event: {line[:200]!r}"
        ) from exc
