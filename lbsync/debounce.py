"""Coalesce bursts of changes into passes: docker-gen's min/max debounce, plus urgency.

A pass starts once `quiet` has passed with no new change, and never later than `max` after
the first change of a burst. An urgent change (a container stopped serving) starts it at once:
draining must not wait for the quiet window. Changes that arrive during a pass lead to one
more pass after it.

Sustained churn (a deploy starting 50 replicas over several seconds, with gaps longer than
`quiet` between some of them) would otherwise cost a reload per gap; every reload starts new
proxy workers while the old ones drain. So a change that comes within `max` of the last pass
doubles the quiet window for its round, and so does a change that comes after more than half
the round's window without one (the changes are slow enough for the window to close between
two of them); never beyond `max`. A round's third and later changes double it too, up to
BURST_WINDOW times `quiet`: a burst that has begun is likely to go on, and its first pass
should not come at its first pause. Once the engine has been calm for `max` the window is
back to `quiet`. A `docker run` (create, start) waits `quiet`; a fast burst (`compose up`)
waits at most BURST_WINDOW times `quiet` after its last change; slow churn costs a pass
about every `max`.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable

BURST_CHANGES = 2  # changes a round takes at `quiet`: `docker run` is create + start
BURST_WINDOW = 4  # how far (times `quiet`) the count of a round's changes widens its window


class Debouncer:
    def __init__(
        self,
        run_pass: Callable[[list[int]], Awaitable[None]],
        *,
        quiet: float,
        max_wait: float,
    ) -> None:
        self._run_pass = run_pass
        self.quiet = quiet
        self.max_wait = max_wait
        self._wake = asyncio.Event()
        self._pending = False
        self._urgent = False
        self._first_at = 0.0
        self._last_at = 0.0
        self._last_pass_at = -math.inf  # when the last pass ended
        self._in_pass = False
        self.quiet_now = quiet  # this round's quiet window: `quiet`, doubled during churn
        self._round_changes = 0  # changes in the round waiting for its pass
        self._event_times: list[int] = []
        self.passes = 0

    def poke(self, *, urgent: bool = False, event_time_ns: int | None = None) -> None:
        """Note a change; never blocks (called from the watcher's loop)."""
        now = asyncio.get_running_loop().time()
        if not self._pending:
            self._first_at = now
            self._round_changes = 0
            if self._in_pass or now - self._last_pass_at <= self.max_wait:
                self.quiet_now = min(self.max_wait, max(self.quiet, self.quiet_now * 2))
            else:
                self.quiet_now = self.quiet
        elif now - self._last_at > self.quiet_now / 2:
            # Slow churn inside one round: the next gap may well close the window.
            self.quiet_now = min(self.max_wait, self.quiet_now * 2)
        elif self._round_changes >= BURST_CHANGES and self.quiet_now < BURST_WINDOW * self.quiet:
            self.quiet_now = min(self.max_wait, self.quiet_now * 2)
        self._round_changes += 1
        self._pending = True
        self._last_at = now
        self._urgent = self._urgent or urgent
        if event_time_ns:
            self._event_times.append(event_time_ns)
        self._wake.set()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wake.wait()
            self._wake.clear()
            if not self._pending:
                continue
            while not self._urgent:
                deadline = min(self._last_at + self.quiet_now, self._first_at + self.max_wait)
                remaining = deadline - loop.time()
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
            self._pending = False
            self._urgent = False
            self.passes += 1
            self._in_pass = True  # changes during a pass are churn after it
            try:
                await self._run_pass(event_times)
            finally:
                self._in_pass = False
                self._last_pass_at = loop.time()
