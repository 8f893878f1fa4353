"""The debouncer: quiet window, max wait, urgency, and changes during a pass."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from lbsync.debounce import BURST_WINDOW, Debouncer


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


async def test_churn_after_a_pass_doubles_the_quiet_window(recorder: Recorder) -> None:
    # Changes 0.08 s apart: longer than quiet (0.05), so each would be its own pass.
    debouncer = Debouncer(recorder, quiet=0.05, max_wait=0.6)
    task = await _run(debouncer)
    for i in range(12):
        debouncer.poke(event_time_ns=i + 1)
        await asyncio.sleep(0.08)
    await _wait_passes(recorder, 1)
    async with asyncio.timeout(2):  # until the last change has had its pass
        while sum(len(times) for _, times in recorder.passes) < 12:
            await asyncio.sleep(0.01)
    task.cancel()
    # First round: quiet 0.05 -> a pass after the first change. Then 0.1 (still shorter
    # than the gaps), then 0.2 and more: the rest coalesce, bounded by max.
    assert 2 <= len(recorder.passes) <= 4, recorder.passes
    assert sorted(t for _, times in recorder.passes for t in times) == list(range(1, 13))
    assert debouncer.quiet_now > debouncer.quiet


async def test_quiet_window_is_back_after_a_calm_max(recorder: Recorder) -> None:
    debouncer = Debouncer(recorder, quiet=0.05, max_wait=0.3)
    task = await _run(debouncer)
    debouncer.poke()
    await _wait_passes(recorder, 1)
    debouncer.poke()  # within max of the pass: churn
    assert debouncer.quiet_now == pytest.approx(0.1)
    await _wait_passes(recorder, 2)
    await asyncio.sleep(0.35)  # calm for longer than max
    start = asyncio.get_running_loop().time()
    debouncer.poke()
    assert debouncer.quiet_now == pytest.approx(0.05)
    await _wait_passes(recorder, 3)
    task.cancel()
    assert recorder.passes[2][0] - start < 0.09  # the plain quiet window again


async def test_urgent_changes_ignore_the_doubled_window(recorder: Recorder) -> None:
    debouncer = Debouncer(recorder, quiet=0.2, max_wait=2.0)
    task = await _run(debouncer)
    debouncer.poke(urgent=True)
    await _wait_passes(recorder, 1)
    start = asyncio.get_running_loop().time()
    debouncer.poke(urgent=True)
    await _wait_passes(recorder, 2)
    task.cancel()
    assert debouncer.quiet_now == pytest.approx(0.4)
    assert recorder.passes[1][0] - start < 0.1


async def test_slow_changes_inside_one_round_widen_its_window(recorder: Recorder) -> None:
    debouncer = Debouncer(recorder, quiet=0.1, max_wait=1.0)
    task = await _run(debouncer)
    debouncer.poke(event_time_ns=1)
    await asyncio.sleep(0.07)  # more than half the window: the next gap could close it
    debouncer.poke(event_time_ns=2)
    assert debouncer.quiet_now == pytest.approx(0.2)
    await asyncio.sleep(0.15)  # longer than quiet, shorter than the widened window
    debouncer.poke(event_time_ns=3)
    await _wait_passes(recorder, 1)  # without the widening: [1, 2] at 0.17 s, then [3]
    task.cancel()
    assert [times for _, times in recorder.passes] == [[1, 2, 3]]


async def test_a_fast_burst_waits_a_bounded_window_after_its_last_change(
    recorder: Recorder,
) -> None:
    # `docker compose up` of ten services: changes a few ms apart, then nothing. From the
    # third change the window doubles, up to BURST_WINDOW times quiet: never `max`.
    debouncer = Debouncer(recorder, quiet=0.1, max_wait=1.0)
    task = await _run(debouncer)
    for i in range(10):
        debouncer.poke(event_time_ns=i + 1)
        await asyncio.sleep(0.005)
    last = asyncio.get_running_loop().time()
    assert debouncer.quiet_now == pytest.approx(BURST_WINDOW * 0.1)
    await _wait_passes(recorder, 1)
    task.cancel()
    assert 0.35 < recorder.passes[0][0] - last < 0.5
    assert [times for _, times in recorder.passes] == [list(range(1, 11))]


async def test_two_changes_still_wait_only_quiet(recorder: Recorder) -> None:
    # `docker run` is two changes (create, start): no burst, the plain window.
    debouncer = Debouncer(recorder, quiet=0.1, max_wait=1.0)
    task = await _run(debouncer)
    debouncer.poke()
    debouncer.poke()
    last = asyncio.get_running_loop().time()
    await _wait_passes(recorder, 1)
    task.cancel()
    assert debouncer.quiet_now == pytest.approx(0.1)
    assert recorder.passes[0][0] - last < 0.18


async def test_changes_during_a_pass_count_as_churn(recorder: Recorder) -> None:
    recorder.hold.clear()  # the first pass runs until released
    debouncer = Debouncer(recorder, quiet=0.05, max_wait=0.2)
    task = await _run(debouncer)
    debouncer.poke()
    await _wait_passes(recorder, 1)
    await asyncio.sleep(0.3)  # a long pass: longer than max
    debouncer.poke()  # during the pass
    assert debouncer.quiet_now == pytest.approx(0.1)
    recorder.hold.set()
    await _wait_passes(recorder, 2)
    task.cancel()
