"""Engine events of one container, as Docker 20.10 sends them, timed into its current run."""

from __future__ import annotations

from types import MappingProxyType
from typing import Any

from lbsync.engine.events import Event
from lbsync.engine.inspect import parse_created

CID = "c" * 64
STARTED = "2026-11-28T05:00:01.123456789Z"  # StartedAt of the container's current run
RUN_NS = parse_created(STARTED)


def event(
    action: str,
    at_ms: int,
    *,
    kind: str = "container",
    raw: dict[str, Any] | None = None,
    **attributes: str,
) -> Event:
    """An event `at_ms` milliseconds into the container's current run."""
    if kind == "network":
        attributes = {"container": CID, "name": "host", "type": "host", **attributes}
    return Event(
        type=kind,
        action=action,
        actor_id="h" * 64 if kind == "network" else CID,
        attributes=MappingProxyType(attributes),
        time_nano=RUN_NS + at_ms * 1_000_000,
        raw=MappingProxyType(raw or {}),
    )


def connect(at_ms: int) -> Event:
    return event("connect", at_ms, kind="network")


def disconnect(at_ms: int) -> Event:
    return event("disconnect", at_ms, kind="network")


def kill(at_ms: int, signal: str) -> Event:
    return event("kill", at_ms, signal=signal)
