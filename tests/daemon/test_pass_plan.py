"""What a pass does for one target (`lbsync.daemon.plan`), and the phases it reads
(`TargetState`), as named tables of cases."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import pytest

from lbsync.config.parse import parse_config
from lbsync.daemon.plan import (
    Action,
    OutputFacts,
    ProxyFacts,
    ReloadPhase,
    RuntimeFacts,
    addressing_proxy,
    compares_slot_lines,
    only_slot_lines_differ,
    output_action,
    proxy_action,
)
from lbsync.daemon.target import RETRY_PASS_MAX, RETRY_PASS_MIN, TargetState
from lbsync.engine.container import Container, NetworkAttachment
from lbsync.render.templates import load_template

NOT_RELOADED = ReloadPhase.NOT_RELOADED
CURRENT = ReloadPhase.CURRENT
RELOAD_DUE = ReloadPhase.RELOAD_DUE

# --------------------------------------------------------------------------- before the build

PROXY_CASES: dict[str, tuple[ProxyFacts, Action | None]] = {
    "in containers, none runs: wait": (
        ProxyFacts(in_containers=True, found=False),
        Action.WAIT_FOR_PROXY,
    ),
    "in containers, one runs: go on": (ProxyFacts(in_containers=True, found=True), None),
    "pid file or command: no container to wait for": (
        ProxyFacts(in_containers=False, found=False),
        None,
    ),
}


@pytest.mark.parametrize(("facts", "expected"), PROXY_CASES.values(), ids=PROXY_CASES.keys())
def test_proxy_action(facts: ProxyFacts, expected: Action | None) -> None:
    assert proxy_action(facts) is expected


# --------------------------------------------------------------------------- after the render

#: haproxy-runtime, and everything says only servers moved between slots.
SLOTS_ONLY = RuntimeFacts(
    live_slots_known=True, same_settings=True, same_structure=True, only_slot_lines_differ=True
)


def facts(
    changed: bool,
    phase: ReloadPhase,
    *,
    refused_before: bool = False,
    runtime: RuntimeFacts | None = None,
) -> OutputFacts:
    return OutputFacts(changed, refused_before, phase, runtime)


OUTPUT_CASES: dict[str, tuple[OutputFacts, Action]] = {
    # Unchanged bytes: nothing once the proxy runs them, else the reload still due.
    "unchanged, current: nothing": (facts(False, CURRENT), Action.NOTHING),
    "unchanged, first pass: reload": (facts(False, NOT_RELOADED), Action.RELOAD),
    "unchanged, reload due: reload": (facts(False, RELOAD_DUE), Action.RELOAD),
    "unchanged, current, the refused bytes on disk: nothing": (
        facts(False, CURRENT, refused_before=True),
        Action.NOTHING,
    ),
    "unchanged, reload due, the refused bytes on disk: reload": (
        facts(False, RELOAD_DUE, refused_before=True),
        Action.RELOAD,
    ),
    "unchanged, current, haproxy-runtime: nothing": (
        facts(False, CURRENT, runtime=SLOTS_ONLY),
        Action.NOTHING,
    ),
    "unchanged, first pass, haproxy-runtime: reload": (
        facts(False, NOT_RELOADED, runtime=SLOTS_ONLY),
        Action.RELOAD,
    ),
    # Changed bytes the check refused last: held, whatever else holds.
    "changed, refused before: hold": (
        facts(True, CURRENT, refused_before=True),
        Action.HOLD_REFUSED,
    ),
    "changed, refused before, first pass: hold": (
        facts(True, NOT_RELOADED, refused_before=True),
        Action.HOLD_REFUSED,
    ),
    "changed, refused before, only slots moved: hold": (
        facts(True, CURRENT, refused_before=True, runtime=SLOTS_ONLY),
        Action.HOLD_REFUSED,
    ),
    # Changed bytes: written, checked and reloaded.
    "changed, current: write, check, reload": (facts(True, CURRENT), Action.WRITE_CHECK_RELOAD),
    "changed, first pass: write, check, reload": (
        facts(True, NOT_RELOADED),
        Action.WRITE_CHECK_RELOAD,
    ),
    "changed, reload due: write, check, reload": (
        facts(True, RELOAD_DUE),
        Action.WRITE_CHECK_RELOAD,
    ),
    # haproxy-runtime: the runtime API only when every fact says only servers moved.
    "only slots moved: runtime update": (
        facts(True, CURRENT, runtime=SLOTS_ONLY),
        Action.RUNTIME_UPDATE,
    ),
    "only slots moved, first pass: write, check, reload": (
        facts(True, NOT_RELOADED, runtime=SLOTS_ONLY),
        Action.WRITE_CHECK_RELOAD,
    ),
    "only slots moved, reload due: write, check, reload": (
        facts(True, RELOAD_DUE, runtime=SLOTS_ONLY),
        Action.WRITE_CHECK_RELOAD,
    ),
    "slots unknown: write, check, reload": (
        facts(True, CURRENT, runtime=replace(SLOTS_ONLY, live_slots_known=False)),
        Action.WRITE_CHECK_RELOAD,
    ),
    "new settings: write, check, reload": (
        facts(True, CURRENT, runtime=replace(SLOTS_ONLY, same_settings=False)),
        Action.WRITE_CHECK_RELOAD,
    ),
    "new structure: write, check, reload": (
        facts(True, CURRENT, runtime=replace(SLOTS_ONLY, same_structure=False)),
        Action.WRITE_CHECK_RELOAD,
    ),
    "more than slot lines differ: write, check, reload": (
        facts(True, CURRENT, runtime=replace(SLOTS_ONLY, only_slot_lines_differ=False)),
        Action.WRITE_CHECK_RELOAD,
    ),
}


@pytest.mark.parametrize(("facts", "expected"), OUTPUT_CASES.values(), ids=OUTPUT_CASES.keys())
def test_output_action(facts: OutputFacts, expected: Action) -> None:
    assert output_action(facts) is expected


@pytest.mark.parametrize("facts", [f for f, _ in OUTPUT_CASES.values()], ids=OUTPUT_CASES.keys())
def test_the_slot_lines_are_compared_only_where_they_decide(facts: OutputFacts) -> None:
    """The executor leaves `only_slot_lines_differ` False unless `compares_slot_lines`: the
    action must then be the same whatever the bytes would say."""
    if facts.runtime is None:
        assert not compares_slot_lines(facts)
        return
    actions = {
        output_action(replace(facts, runtime=replace(facts.runtime, only_slot_lines_differ=v)))
        for v in (False, True)
    }
    assert (len(actions) == 2) == compares_slot_lines(facts)


SLOT_LINE_CASES: dict[str, tuple[bytes, bytes, bool]] = {
    "the same bytes": (
        b"backend b\n  server s1 127.0.0.1:80\n",
        b"backend b\n  server s1 127.0.0.1:80\n",
        True,
    ),
    "a slot's server moved": (
        b"backend b\n  server s1 127.0.0.1:80\n  server s2 127.0.0.1:81 disabled\n",
        b"backend b\n  server s1 127.0.0.1:80\n  server s2 127.0.0.1:82\n",
        True,
    ),
    "another line changed": (
        b"backend b\n  balance roundrobin\n  server s1 127.0.0.1:80\n",
        b"backend b\n  balance leastconn\n  server s1 127.0.0.1:80\n",
        False,
    ),
    "a slot more": (
        b"backend b\n  server s1 127.0.0.1:80\n",
        b"backend b\n  server s1 127.0.0.1:80\n  server s2 127.0.0.1:81\n",
        False,
    ),
    "a server that is no slot": (
        b"backend b\n  server web 127.0.0.1:80\n",
        b"backend b\n  server web 127.0.0.1:81\n",
        False,
    ),
}


@pytest.mark.parametrize(
    ("old", "new", "expected"), SLOT_LINE_CASES.values(), ids=SLOT_LINE_CASES.keys()
)
def test_only_slot_lines_differ(old: bytes, new: bytes, expected: bool) -> None:
    assert only_slot_lines_differ(old, new) is expected


# --------------------------------------------------------------------------- the phases


def reload_failed(state: TargetState) -> None:
    state.reload_failed("boom")


PHASE_CASES: dict[str, tuple[ReloadPhase, Callable[[TargetState], None], ReloadPhase]] = {
    "first reload worked": (NOT_RELOADED, lambda s: s.reload_worked(1.0), CURRENT),
    "first reload failed": (NOT_RELOADED, reload_failed, NOT_RELOADED),
    "written before the first reload": (NOT_RELOADED, TargetState.reload_due, NOT_RELOADED),
    "written while current": (CURRENT, TargetState.reload_due, RELOAD_DUE),
    "written while due": (RELOAD_DUE, TargetState.reload_due, RELOAD_DUE),
    "due reload worked": (RELOAD_DUE, lambda s: s.reload_worked(1.0), CURRENT),
    "due reload failed": (RELOAD_DUE, reload_failed, RELOAD_DUE),
}


def new_state() -> TargetState:
    target = parse_config({}).targets[0]
    return TargetState(config=target, template=load_template(target))


@pytest.mark.parametrize(
    ("start", "transition", "expected"), PHASE_CASES.values(), ids=PHASE_CASES.keys()
)
def test_phase_transitions(
    start: ReloadPhase, transition: Callable[[TargetState], None], expected: ReloadPhase
) -> None:
    state = new_state()
    state.phase = start
    transition(state)
    assert state.phase is expected


def test_a_new_target_is_not_reloaded_yet() -> None:
    assert new_state().phase is NOT_RELOADED


def test_the_retry_delay_doubles_to_its_limit_and_resets_on_a_reload() -> None:
    state = new_state()
    delays = [state.back_off() for _ in range(7)]
    assert delays == [RETRY_PASS_MIN * 2**i for i in range(5)] + [RETRY_PASS_MAX] * 2
    state.reload_worked(1.0)
    assert state.back_off() == RETRY_PASS_MIN


def test_new_settings_forget_the_refused_bytes() -> None:
    state = new_state()
    state.rejected = b"refused"
    state.reconfigure(state.config, state.template)
    assert state.rejected is None


def test_the_wait_for_the_proxy_is_told_once_and_its_end_once() -> None:
    state = new_state()
    assert [state.wait_for_proxy(), state.wait_for_proxy()] == [True, False]
    assert state.waiting_for_proxy and state.last_error == "proxy container missing"
    assert [state.proxy_found([]), state.proxy_found([])] == [True, False]
    assert not state.waiting_for_proxy


def _proxy(cid: str, network: str) -> Container:
    attachment = NetworkAttachment(network, f"id-{network}", "10.0.0.1")
    return Container(id=cid, name=cid, created_ns=1, networks=(attachment,))


ROGUE = _proxy("aaa-rogue", "rogue_net")
NGINX = _proxy("nginx", "app_net")

ADDRESSING_CASES: dict[str, tuple[list[Container], set[str], Container | None]] = {
    "no proxy container (a pid file, a command)": ([], set(), None),
    "one proxy": ([NGINX], set(), NGINX),
    "the first match before any check": ([ROGUE, NGINX], set(), ROGUE),
    "a left-out rogue does not pick the network": ([ROGUE, NGINX], {"aaa-rogue"}, NGINX),
    "every match left out: the first still decides": (
        [ROGUE, NGINX],
        {"aaa-rogue", "nginx"},
        ROGUE,
    ),
}


@pytest.mark.parametrize("case", ADDRESSING_CASES, ids=list(ADDRESSING_CASES))
def test_addressing_proxy(case: str) -> None:
    proxies, left_out, expected = ADDRESSING_CASES[case]
    assert addressing_proxy(proxies, left_out) is expected
