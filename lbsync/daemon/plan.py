"""What a pass does for one target, decided from plain facts (SPEC §5). No I/O here.

A pass decides twice. Before the routing model is built (`proxy_action`): a target whose
check or reload runs in a proxy container waits while none runs, and builds, renders and
writes nothing meanwhile. Once the file is rendered and the one on disk known
(`output_action`): what the new bytes need. `passes.PassExecutor` gathers the facts and
performs the action.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Collection, Sequence
from dataclasses import dataclass

from lbsync.engine.container import Container


class ReloadPhase(enum.Enum):
    """Does the proxy run the file on disk? What a pass does with unchanged bytes hangs on it.

    NOT_RELOADED --a reload worked--> CURRENT
    CURRENT --a new file written and checked, or a runtime update failed--> RELOAD_DUE
    RELOAD_DUE --a reload worked--> CURRENT

    A failed reload leaves the phase as it was (the pass is retried later). A file written
    before the first reload leaves NOT_RELOADED: that reload is due anyway.
    """

    NOT_RELOADED = "not reloaded yet"  # the first pass reloads, changed bytes or not
    CURRENT = "current"  # the proxy runs the file on disk
    RELOAD_DUE = "reload due"  # the file on disk is not live yet


class Action(enum.Enum):
    """What a pass does for one target."""

    # No proxy container runs: nothing is written until one does (the pass fails).
    WAIT_FOR_PROXY = "wait for the proxy"
    # The rendered bytes are the file on disk, and the proxy runs it.
    NOTHING = "nothing"
    # The rendered bytes are the ones the check refused last: not tried again until
    # something changes (the pass fails).
    HOLD_REFUSED = "hold the refused bytes"
    # haproxy-runtime, only servers moved between slots: write the file and move them
    # through the runtime API; no check, no reload. When the write or the API fails:
    # WRITE_CHECK_RELOAD.
    RUNTIME_UPDATE = "runtime update"
    # Write the new bytes, check them (a refusal puts the last good file back), reload.
    WRITE_CHECK_RELOAD = "write, check, reload"
    # The file on disk is not live yet (the first pass, or a reload still due): reload it,
    # checked first where several proxy containers must agree.
    RELOAD = "reload"


@dataclass(frozen=True, slots=True)
class ProxyFacts:
    """Before the model is built: the proxy containers."""

    in_containers: bool  # the check or reload runs in proxy containers (`uses_containers`)
    found: bool  # at least one runs


@dataclass(frozen=True, slots=True)
class RuntimeFacts:
    """haproxy-runtime: may the running HAProxy take the new bytes through its runtime API?"""

    live_slots_known: bool  # the slots the running HAProxy has are known
    same_settings: bool  # the target's settings are the ones the proxy last reloaded with
    same_structure: bool  # the same routes, and backends of the same sizes: only servers moved
    # The bytes say so too: a user template may render more than server lines from the same
    # structure, and that would be a new config that needs a check. False: not compared
    # (`compares_slot_lines`), or no file on disk.
    only_slot_lines_differ: bool


@dataclass(frozen=True, slots=True)
class OutputFacts:
    """Once the file is rendered and the one on disk known."""

    changed: bool  # the rendered bytes are not the file on disk
    refused_before: bool  # the rendered bytes are the ones the check refused last
    phase: ReloadPhase  # does the proxy run the file on disk?
    runtime: RuntimeFacts | None = None  # haproxy-runtime targets only


def proxy_action(facts: ProxyFacts) -> Action | None:
    """WAIT_FOR_PROXY, or None: go on (build, render, read, then `output_action`)."""
    if facts.in_containers and not facts.found:
        return Action.WAIT_FOR_PROXY
    return None


def compares_slot_lines(facts: OutputFacts) -> bool:
    """Does the action hang on `RuntimeFacts.only_slot_lines_differ`? That fact costs a pass
    of a regex over both files, so it is established only then."""
    runtime = facts.runtime
    return (
        facts.changed
        and not facts.refused_before
        and facts.phase is ReloadPhase.CURRENT
        and runtime is not None
        and runtime.live_slots_known
        and runtime.same_settings
        and runtime.same_structure
    )


def output_action(facts: OutputFacts) -> Action:
    """What the rendered bytes need (the proxy containers, if the target has any, run)."""
    if not facts.changed:
        return Action.NOTHING if facts.phase is ReloadPhase.CURRENT else Action.RELOAD
    if facts.refused_before:
        return Action.HOLD_REFUSED
    runtime = facts.runtime
    if runtime is not None and compares_slot_lines(facts) and runtime.only_slot_lines_differ:
        return Action.RUNTIME_UPDATE
    return Action.WRITE_CHECK_RELOAD


_SLOT_LINE = re.compile(rb"^[ \t]*server[ \t]+s[0-9]+[ \t].*$", re.MULTILINE)


def only_slot_lines_differ(old: bytes, new: bytes) -> bool:
    """Do two renderings differ in nothing but the `server sN ...` slot lines?"""
    return _SLOT_LINE.sub(b"server", old) == _SLOT_LINE.sub(b"server", new)


def addressing_proxy(proxies: Sequence[Container], left_out: Collection[str]) -> Container | None:
    """The proxy container whose networks decide a backend's address (SPEC §2).

    Not one reported and left out (its check could not run, or it refused what another
    accepted): anyone who can start a container can label it as the proxy (SPEC §1), and such
    a container must not steer which address of a backend is written. With every match left
    out, the first one still decides: the file is then refused or kept by the check anyway.
    """
    trusted = [proxy for proxy in proxies if proxy.id not in left_out] or proxies
    return trusted[0] if trusted else None
