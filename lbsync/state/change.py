"""The watcher's word to the pass scheduler (the daemon's debouncer)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Change:
    """What the watcher tells the pass scheduler after updating the registry."""

    urgent: bool  # a container stopped serving: skip the quiet window
    event_time_ns: int | None  # the engine time of the oldest event behind it (None: a relist)
    reason: str
    # The containers (swarm: services) that changed; empty when that is not known (a
    # re-list). The debouncer tells a lone deploy from a burst by them.
    containers: tuple[str, ...] = ()
