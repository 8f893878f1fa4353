"""The debouncer: the rule as tables over plain times, then the asyncio loop that runs it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

import pytest

from lbsync.daemon.debounce import BURST_GAP, Debouncer, Schedule


class Recorder:
    def __init__(self) -> None:
        self.passes: list[tuple[float, list[int]]] = []
        self.hold = asyncio.Event()
        self.hold.set()

    async def __call__(self, event_times: list[int]) -> None:
        self.passes.append((asyncio.get_running_loop().time(), event_times))
        await self.hold.wait()


@pytest.fixture
async def recorder() -> AsyncIterator[Recorder]:
    yield Recorder()


async def _run(debouncer: Debouncer) -> asyncio.Task[None]:
    task = asyncio.create_task(debouncer.run())
    await asyncio.sleep(0)
    return task


async def _wait_passes(recorder: Recorder, count: int, timeout: float = 2.0) -> None:
    async with asyncio.timeout(timeout):
        while len(recorder.passes) < count:
            await asyncio.sleep(0.005)


async def test_burst_coalesces_into_one_pass(recorder: Recorder) -> None:
    debouncer = Debouncer(recorder, quiet=0.05, max_wait=1.0)
    task = await _run(debouncer)
    for i in range(10):
        debouncer.poke(event_time_ns=i + 1)
        await asyncio.sleep(0.01)
    await _wait_passes(recorder, 1)
    await asyncio.sleep(0.1)
    task.cancel()
    assert len(recorder.passes) == 1
    assert recorder.passes[0][1] == list(range(1, 11))


async def test_quiet_window_is_waited(recorder: Recorder) -> None:
    debouncer = Debouncer(recorder, quiet=0.1, max_wait=1.0)
    task = await _run(debouncer)
    start = asyncio.get_running_loop().time()
    debouncer.poke()
    await _wait_passes(recorder, 1)
    task.cancel()
    assert recorder.passes[0][0] - start >= 0.09


async def test_max_wait_bounds_a_steady_stream(recorder: Recorder) -> None:
    debouncer = Debouncer(recorder, quiet=0.1, max_wait=0.2)
    task = await _run(debouncer)
    start = asyncio.get_running_loop().time()
    # Pokes every 30 ms never leave a 100 ms quiet gap: only max_wait ends the wait.
    while not recorder.passes:
        debouncer.poke()
        await asyncio.sleep(0.03)
        assert asyncio.get_running_loop().time() - start < 1.0
    task.cancel()
    assert 0.19 <= recorder.passes[0][0] - start < 0.5


async def test_urgent_skips_the_quiet_window(recorder: Recorder) -> None:
    debouncer = Debouncer(recorder, quiet=5.0, max_wait=10.0)
    task = await _run(debouncer)
    start = asyncio.get_running_loop().time()
    debouncer.poke()
    await asyncio.sleep(0.01)
    debouncer.poke(urgent=True)
    await _wait_passes(recorder, 1)
    task.cancel()
    assert recorder.passes[0][0] - start < 0.5


async def test_change_during_a_pass_runs_one_more(recorder: Recorder) -> None:
    debouncer = Debouncer(recorder, quiet=0.01, max_wait=0.1)
    task = await _run(debouncer)
    recorder.hold.clear()
    debouncer.poke(event_time_ns=1)
    await _wait_passes(recorder, 1)
    debouncer.poke(event_time_ns=2)
    debouncer.poke(event_time_ns=3)
    recorder.hold.set()
    await _wait_passes(recorder, 2)
    await asyncio.sleep(0.05)
    task.cancel()
    assert [times for _, times in recorder.passes] == [[1], [2, 3]]


async def test_a_lone_start_right_after_a_pass_waits_only_quiet(recorder: Recorder) -> None:
    # Deploys 0.3 s apart with a 0.1 s burst gap: each is lone, each waits `quiet`, however
    # recently the last pass ran (the old rule ratcheted this up to `max`).
    debouncer = Debouncer(recorder, quiet=0.05, max_wait=1.0, burst_gap=0.1)
    task = await _run(debouncer)
    loop = asyncio.get_running_loop()
    pokes = []
    for i in range(4):
        pokes.append(loop.time())
        debouncer.poke(event_time_ns=2 * i + 1, containers=[f"c{i}"])  # create
        debouncer.poke(event_time_ns=2 * i + 2, containers=[f"c{i}"])  # start
        await _wait_passes(recorder, i + 1)
        await asyncio.sleep(0.3 - (loop.time() - pokes[-1]))
    task.cancel()
    waits = [at - poked for (at, _), poked in zip(recorder.passes, pokes, strict=True)]
    assert all(0.045 <= w < 0.09 for w in waits), waits
    assert [times for _, times in recorder.passes] == [[1, 2], [3, 4], [5, 6], [7, 8]]


async def test_other_containers_within_the_gap_wait_for_the_burst_to_end(
    recorder: Recorder,
) -> None:
    # The first change is lone (due at 0.1 s); the next, 0.05 s later, makes it a burst.
    debouncer = Debouncer(recorder, quiet=0.1, max_wait=2.0, burst_gap=0.2)
    task = await _run(debouncer)
    loop = asyncio.get_running_loop()
    for i in range(5):
        debouncer.poke(event_time_ns=i + 1, containers=[f"c{i}"])
        await asyncio.sleep(0.05)
    last = loop.time() - 0.05
    await _wait_passes(recorder, 1)
    task.cancel()
    assert [times for _, times in recorder.passes] == [[1, 2, 3, 4, 5]]
    assert 0.18 <= recorder.passes[0][0] - last < 0.3


# -- the rule, as tables over plain times (no event loop, no sleeps) --


@dataclass(frozen=True)
class At:
    """A change of `containers` at time `t` (seconds)."""

    t: float
    containers: tuple[str, ...] = ()
    urgent: bool = False


def passes_for(
    changes: Sequence[At], quiet: float = 0.2, max_wait: float = 2.0, pass_takes: float = 0.0
) -> list[float]:
    """When passes start for these changes; a pass takes `pass_takes`, and a change during
    it leads to one more pass after it (as `Debouncer.run` does)."""
    schedule = Schedule(quiet, max_wait)
    starts: list[float] = []
    busy_until = 0.0

    def run_due(until: float) -> None:
        nonlocal busy_until
        while schedule.pending:
            at = max(busy_until, until if schedule.urgent else schedule.due_at)
            if at > until:
                return
            schedule.start_pass()
            starts.append(round(at, 3))
            busy_until = at + pass_takes

    for change in changes:
        run_due(change.t)
        schedule.note(change.t, change.containers, change.urgent)
        if schedule.urgent:
            run_due(change.t)
    run_due(float("inf"))
    return starts


def run_of(name: str, t: float) -> list[At]:
    """`docker run`: a create and, 50 ms later, a start of one container."""
    return [At(t, (name,)), At(t + 0.05, (name,))]


RULE_CASES = {
    "a lone docker run waits quiet after its start": (run_of("a", 0.0), [0.25]),
    "deploys 2 s apart: each waits quiet": (
        run_of("a", 0.0) + run_of("b", 2.0) + run_of("c", 4.0),
        [0.25, 2.25, 4.25],
    ),
    "deploys 1.5 s apart: each waits quiet": (
        run_of("a", 0.0) + run_of("b", 1.5) + run_of("c", 3.0) + run_of("d", 4.5),
        [0.25, 1.75, 3.25, 4.75],
    ),
    "a deploy 0.9 s after another is part of a burst: a second after it": (
        run_of("a", 0.0) + run_of("b", 0.9),
        [0.25, 1.95],
    ),
    "one container's own changes never make a burst": (
        [At(0.0, ("a",)), At(0.1, ("a",)), At(0.35, ("a",)), At(0.9, ("a",))],
        [0.3, 0.55, 1.1],
    ),
    "a burst of 10 in 0.5 s: one pass, a second after its last change": (
        [At(i * 0.05, (f"c{i}",)) for i in range(10)],
        [1.45],
    ),
    "sustained churn, a start every 300 ms: the first is lone, then a pass every max": (
        [At(i * 0.3, (f"c{i}",)) for i in range(30)],
        [0.2, 2.3, 4.4, 6.5, 8.6, 9.7],
    ),
    "a removal starts its pass at once": (
        [*run_of("a", 0.0), At(0.1, ("b",), urgent=True)],
        [0.1],
    ),
    "a re-list (no container named) is lone and makes nothing a burst": (
        [At(0.0), At(0.5, ("a",))],
        [0.2, 0.7],
    ),
    "max bounds a round that burst changes keep extending": (
        [At(0.0, ("a",))] + [At(0.55 + i * 0.5, (f"c{i}",)) for i in range(8)],
        [0.2, 2.55, 4.55],
    ),
}


@pytest.mark.parametrize("case", RULE_CASES, ids=list(RULE_CASES))
def test_when_passes_start(case: str) -> None:
    changes, expected = RULE_CASES[case]
    assert passes_for(changes) == pytest.approx(expected)


def test_changes_during_a_long_pass_get_one_more_pass_after_it() -> None:
    # The first pass takes 1.5 s; the deploy at 1.1 s (lone) is due at 1.35 s, during it,
    # so its pass starts when the first one ends.
    assert passes_for(run_of("a", 0.0) + run_of("b", 1.1), pass_takes=1.5) == pytest.approx(
        [0.25, 1.75]
    )


def test_a_quiet_longer_than_the_gap_is_still_the_least_a_burst_waits() -> None:
    changes = [At(0.0, ("a",)), At(0.1, ("b",))]
    assert passes_for(changes, quiet=3.0, max_wait=10.0) == pytest.approx([3.1])


def test_what_it_remembers_is_bounded_by_the_gap() -> None:
    schedule = Schedule(quiet=0.2, max_wait=2.0)
    for i in range(10_000):  # 100 changes a second for 100 s, every one a new container
        schedule.note(i * 0.01, (f"c{i}",))
        schedule.start_pass()
    assert schedule.remembered() <= BURST_GAP / 0.01 + 1
