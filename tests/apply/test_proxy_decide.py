"""Which proxy containers' checks count, and which are reloaded (SPEC §1): `decide` as a table.

Anyone who can start a container can label it as a target's proxy, so no single container may
veto a file: it stays when the check passed in at least one container and is refused only when
every container that ran the check refused it. A container where the check could not run, or
that refused what another accepted, is reported and not reloaded.
"""

from __future__ import annotations

import asyncio

import pytest

from lbsync.apply.proxy import (
    CheckDecision,
    CheckOutcome,
    CheckResult,
    LeftOut,
    LeftOutReason,
    decide,
    one_line,
    settle,
)

OK = CheckOutcome.OK
REFUSED = CheckOutcome.REFUSED
UNRUNNABLE = CheckOutcome.UNRUNNABLE
NOT_FOUND = 'exec: "nginx": executable file not found in $PATH'
EMERG = 'nginx: [emerg] unknown directive "bogus"\nnginx: configuration file test failed'


def r(container: str, outcome: CheckOutcome, message: str = "") -> CheckResult:
    return CheckResult(container, outcome, message)


def out(container: str, reason: LeftOutReason, message: str = "") -> LeftOut:
    return LeftOut(container, reason, message)


CASES = [
    pytest.param(
        [r("nginx", OK, "test is successful")],
        CheckDecision(keep=True, ran=True, reload=("nginx",), left_out=()),
        id="one-proxy-accepts",
    ),
    pytest.param(
        [r("nginx", REFUSED, EMERG)],
        CheckDecision(keep=False, ran=True, reload=(), left_out=(), refusal=EMERG),
        id="one-proxy-refuses: its output is the refusal, as before",
    ),
    pytest.param(
        [r("aaa-rogue", UNRUNNABLE, NOT_FOUND), r("nginx", OK)],
        CheckDecision(
            keep=True,
            ran=True,
            reload=("nginx",),
            left_out=(out("aaa-rogue", LeftOutReason.UNRUNNABLE, NOT_FOUND),),
        ),
        id="rogue-without-checker-sorted-first: file stays, rogue reported, nginx reloaded",
    ),
    pytest.param(
        [r("aaa-rogue", REFUSED, "no\nway"), r("nginx", OK)],
        CheckDecision(
            keep=True,
            ran=True,
            reload=("nginx",),
            left_out=(out("aaa-rogue", LeftOutReason.DISAGREED, "way"),),
        ),
        id="rogue-refuses-what-nginx-accepts: disagreed, one line",
    ),
    pytest.param(
        [r("a", UNRUNNABLE, "gone"), r("b", REFUSED, "bad"), r("c", OK), r("d", OK)],
        CheckDecision(
            keep=True,
            ran=True,
            reload=("c", "d"),
            left_out=(
                out("a", LeftOutReason.UNRUNNABLE, "gone"),
                out("b", LeftOutReason.DISAGREED, "bad"),
            ),
        ),
        id="mixed: every accepting one reloaded",
    ),
    pytest.param(
        [r("nginx-1", REFUSED, "e1"), r("nginx-2", REFUSED, "e2")],
        CheckDecision(
            keep=False, ran=True, reload=(), left_out=(), refusal="nginx-1: e1\nnginx-2: e2"
        ),
        id="all-that-ran-refuse: refused, each named",
    ),
    pytest.param(
        [r("aaa-rogue", UNRUNNABLE, NOT_FOUND), r("nginx", REFUSED, "e")],
        CheckDecision(
            keep=False,
            ran=True,
            reload=(),
            left_out=(out("aaa-rogue", LeftOutReason.UNRUNNABLE, NOT_FOUND),),
            refusal="nginx: e",
        ),
        id="refused-where-it-ran: the unrunnable one is still reported",
    ),
    pytest.param(
        [r("x", UNRUNNABLE, "timeout"), r("y", UNRUNNABLE, NOT_FOUND)],
        CheckDecision(
            keep=False,
            ran=False,
            reload=(),
            left_out=(
                out("x", LeftOutReason.UNRUNNABLE, "timeout"),
                out("y", LeftOutReason.UNRUNNABLE, NOT_FOUND),
            ),
            refusal=f"the check could not run in any proxy container (x: timeout; y: {NOT_FOUND})",
        ),
        id="ran-nowhere: nothing is kept",
    ),
    pytest.param(
        [],
        CheckDecision(
            keep=False,
            ran=False,
            reload=(),
            left_out=(),
            refusal="the check could not run in any proxy container (none)",
        ),
        id="no-container: nothing is kept",
    ),
]


@pytest.mark.parametrize(("results", "expected"), CASES)
def test_decide(results: list[CheckResult], expected: CheckDecision) -> None:
    assert decide(results) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("one", "one", id="plain"),
        pytest.param("warn\n\nverdict\n  \n", "verdict", id="last-non-empty-line"),
        pytest.param("a\x1b[31mred\x07", "a\\x1b[31mred\\x07", id="control-characters-escaped"),
        pytest.param("x" * 400, "x" * 297 + "...", id="cut"),
        pytest.param("", "", id="empty"),
    ],
)
def test_one_line(text: str, expected: str) -> None:
    assert one_line(text) == expected


async def _after(delay: float, value: str) -> str:
    await asyncio.sleep(delay)
    return value


async def test_settle_waits_for_all_until_one_worked() -> None:
    # Nothing worked yet: the slow one is waited for, however long.
    got = await settle(
        [_after(0.3, "bad-slow"), _after(0.0, "bad")],
        worked=lambda v: v.startswith("ok"),
        late=lambda i, why: f"late {i}",
        grace=0.01,
    )
    assert got == ["bad-slow", "bad"]


async def test_settle_cuts_the_others_short_once_one_worked() -> None:
    loop = asyncio.get_running_loop()
    started = loop.time()
    got = await settle(
        [_after(30, "hangs"), _after(0.0, "ok"), _after(0.05, "ok-soon")],
        worked=lambda v: v.startswith("ok"),
        late=lambda i, why: f"late {i}: {why}",
        grace=0.2,
    )
    assert loop.time() - started < 5
    assert got[1:] == ["ok", "ok-soon"]
    assert got[0].startswith("late 0: still running 0.2 s after it worked")
