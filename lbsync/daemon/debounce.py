"""Coalesce changes into passes: a lone change waits `quiet`, a burst waits for its end.

The rule, per change of container c at time t (SPEC §3, `debounce`):

* no round open: the change opens one (`first = t`);
* the round's pass is set to `min(t + wait, first + max)`, where `wait` is `quiet` when no
  *other* container changed in the BURST_GAP (1 s) before t, else BURST_GAP: a lone change;
* an urgent change (a container stopped serving) starts the pass at once: draining never
  waits.

What a user sees: a `docker run` (a create and a start of one container) is written `quiet`
after its start, however recently another deploy was; changes of several containers less
than a second apart are one burst, written a second after its last change; and no change
waits longer than `max`, so sustained churn costs about one reload per `max`. "Burst" is
decided from the gaps between changes of *different* containers, never from the time since
the last pass: one container's own create, start and health changes never delay it, and a
deploy every 1.5 s is each one lone.

Changes that arrive during a pass lead to one more pass after it, under the same rule.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass, field

#: Another container's change less than this long before a change makes it part of a burst.
BURST_GAP = 1.0


@dataclass
class Schedule:
    """The rule itself, over plain times: when the pass of the open round is due.

    Pure (the caller says what time it is), so the rule is tested as tables of changes.
    """

    quiet: float
    max_wait: float
    burst_gap: float = BURST_GAP
    pending: bool = False  # a round is open: a pass is due
    urgent: bool = False  # ... and due now
    first_at: float = 0.0  # the change that opened the round
    due_at: float = 0.0  # when its pass starts, unless a later change moves it
    last_wait: float = 0.0  # the wait the latest change was given (status, tests)
    # When each container last changed, oldest first; only the last `burst_gap` is kept.
    _changed_at: collections.OrderedDict[str, float] = field(
        default_factory=collections.OrderedDict
    )

    def note(self, now: float, containers: Collection[str] = (), urgent: bool = False) -> None:
        """A change of `containers` at `now`.

        A change no container is named for (a re-list, a config reload, a retry) is lone
        and makes no other change part of a burst.
        """
        burst = self._others_changed(containers, now)
        wait = max(self.quiet, self.burst_gap) if burst else self.quiet
        for container in containers:
            self._changed_at[container] = now
            self._changed_at.move_to_end(container)
        if not self.pending:
            self.first_at = now
        self.due_at = min(now + wait, self.first_at + self.max_wait)
        self.last_wait = wait
        self.pending = True
        self.urgent = self.urgent or urgent

    def start_pass(self) -> None:
        """The due pass starts: the next change opens a new round."""
        self.pending = False
        self.urgent = False

    def remembered(self) -> int:
        """How many containers' change times are kept (bounded by the burst gap)."""
        return len(self._changed_at)

    def _others_changed(self, containers: Collection[str], now: float) -> bool:
        """Did a container not in `containers` change in the burst gap before `now`?"""
        horizon = now - self.burst_gap
        changed_at = self._changed_at
        while changed_at:  # oldest first: forget what is older than the horizon
            oldest, at = next(iter(changed_at.items()))
            if at > horizon:
                break
            del changed_at[oldest]
        return any(container not in containers for container in changed_at)


class Debouncer:
    """Runs `run_pass` when the `Schedule` says, with the event times it gathered."""

    def __init__(
        self,
        run_pass: Callable[[list[int]], Awaitable[None]],
        *,
        quiet: float,
        max_wait: float,
        burst_gap: float = BURST_GAP,
    ) -> None:
        self._run_pass = run_pass
        self.schedule = Schedule(quiet, max_wait, burst_gap)
        self._wake = asyncio.Event()
        self._event_times: list[int] = []
        self.passes = 0

    def set_window(self, quiet: float, max_wait: float) -> None:
        """A new config's window; the round already open keeps its due time."""
        self.schedule.quiet = quiet
        self.schedule.max_wait = max_wait

    def poke(
        self,
        *,
        urgent: bool = False,
        event_time_ns: int | None = None,
        containers: Collection[str] = (),
    ) -> None:
        """Note a change of `containers`; never blocks (called from the watcher's loop)."""
        self.schedule.note(asyncio.get_running_loop().time(), containers, urgent)
        if event_time_ns:
            self._event_times.append(event_time_ns)
        self._wake.set()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        schedule = self.schedule
        while True:
            await self._wake.wait()
            self._wake.clear()
            if not schedule.pending:
                continue
            while not schedule.urgent:
                remaining = schedule.due_at - loop.time()
                if remaining <= 0:
                    break
                # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation
                # that races with the wake-up, and shutdown would then hang.
                try:
                    async with asyncio.timeout(remaining):
                        await self._wake.wait()
                except TimeoutError:
                    break
                self._wake.clear()
            event_times, self._event_times = self._event_times, []
            schedule.start_pass()
            self.passes += 1
            await self._run_pass(event_times)
