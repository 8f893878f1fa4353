"""One target's part of a pass, performed: find the proxy, build, render, read, then what
`plan` decides (write, check, reload; a runtime update; nothing). SPEC §5.

Nothing here ever exits the process on a bad label, template, check or reload: each costs the
pass for that target, with its reason in the log, the metrics and `TargetState.last_error`.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace

import tenacity

from lbsync.apply.haproxy.runtime import apply_runtime
from lbsync.apply.haproxy.socket import HAProxySocketError
from lbsync.apply.proxy import (
    GRACE,
    CheckDecision,
    LeftOut,
    LeftOutReason,
    ReloadFailed,
    check,
    one_line,
    reload,
    reload_container,
    reloads_containers,
    settle,
)
from lbsync.apply.selection import uses_containers
from lbsync.apply.writer import WriteError, read_current, restore, write_atomic
from lbsync.config.schema import DiscoveryConfig, TargetConfig
from lbsync.daemon.metrics import Metrics
from lbsync.daemon.plan import (
    Action,
    OutputFacts,
    ProxyFacts,
    RuntimeFacts,
    addressing_proxy,
    compares_slot_lines,
    only_slot_lines_differ,
    output_action,
    proxy_action,
)
from lbsync.daemon.reports import PassReports
from lbsync.daemon.target import TargetState
from lbsync.engine.client import DockerClient
from lbsync.engine.container import Container
from lbsync.model.entries import ParsedEntries
from lbsync.model.slots import RuntimeSlots, runtime_commands
from lbsync.model.types import RoutingModel
from lbsync.render.templates import TemplateError, render_bytes
from lbsync.state.registry import Registry

log = logging.getLogger("lbsync")

RELOAD_ATTEMPTS = 3


class PassExecutor:
    """Performs one target's part of each pass, on what `plan` decides."""

    def __init__(
        self,
        client: DockerClient,
        registry: Registry,
        entries: ParsedEntries,
        metrics: Metrics,
        reports: PassReports,
        poke: Callable[[], None],
    ) -> None:
        self.client = client
        self.registry = registry
        self.entries = entries  # the registry's containers with their labels parsed
        self.metrics = metrics
        self.reports = reports
        self._poke = poke  # asks for a pass: a retry

    async def sync(
        self, state: TargetState, discovery: DiscoveryConfig, event_times: list[int]
    ) -> bool:
        """Carry the registry to the target's proxy; True when the proxy runs it."""
        target = state.config
        started = time.monotonic()
        state.last_pass_at = time.time()
        # Entries first: a new discovery config logs every id, and the proxies are then
        # found by one scan now rather than id by id on the next pass.
        entries = self.entries.since(discovery, state.builder.epoch)
        in_containers = uses_containers(target)
        proxies = state.proxies.find(target, self.registry) if in_containers else []
        if proxy_action(ProxyFacts(in_containers, bool(proxies))) is Action.WAIT_FOR_PROXY:
            if state.wait_for_proxy():
                log.warning(
                    "target %s: no running proxy container matches %s; waiting for it "
                    "(nothing is written until it exists)",
                    target.name,
                    _describe_proxy(target),
                )
            return False
        if state.proxy_found(proxies):
            log.info("target %s: proxy %s found", target.name, ", ".join(p.name for p in proxies))

        addressing = addressing_proxy(proxies, state.left_out)
        proxy_networks = (
            frozenset(n.name for n in addressing.networks) if addressing else frozenset()
        )
        model = state.builder.build(entries, discovery, target, proxy_networks)
        self.reports.model(state, model)
        slots = None
        if target.reload == "haproxy-runtime":
            slots = RuntimeSlots.derive(state.slots, model, target.slots)
        data = self._render(state, target, model, slots)
        if data is None or not await self._read_file(state, target):
            return False

        action = output_action(output_facts(state, target, data, slots))
        if action is Action.NOTHING:
            state.last_error = None
            state.model = model
            return True
        if action is Action.HOLD_REFUSED:
            log.debug("target %s: same config as the one refused; waiting", target.name)
            return False
        live = state.slots  # with RUNTIME_UPDATE, neither it nor `slots` is None
        if (
            action is Action.RUNTIME_UPDATE
            and live is not None
            and slots is not None
            and await self._update_runtime(state, data, live, slots, event_times)
        ):
            self.reports.change(state, model, started, "updated through the runtime API")
            state.slots = slots
            return True
        if action is Action.RELOAD:
            chosen = await self._choose_for_reload(state, data, proxies)
        else:  # WRITE_CHECK_RELOAD, or a RUNTIME_UPDATE that failed
            chosen = await self._write_and_check(state, data, proxies)
        if chosen is None:
            return False
        reloaded = await self._reload(state, chosen, event_times)
        if reloaded is None:
            return False
        how = "reloaded " + (", ".join(reloaded) or target.reload)
        self.reports.change(state, model, started, how)
        state.slots = slots
        state.reloaded_with = target
        return True

    def _render(
        self,
        state: TargetState,
        target: TargetConfig,
        model: RoutingModel,
        slots: RuntimeSlots | None,
    ) -> bytes | None:
        """The file's bytes; the last ones again for the very same inputs. None (logged) when
        the template failed."""
        view = slots.view if slots else None
        inputs = (model, state.template, target, view)
        if len(state.rendered) == len(inputs) and all(
            a is b for a, b in zip(state.rendered, inputs, strict=True)
        ):
            return state.rendered_data
        left_out: list[str] = []
        try:
            data = render_bytes(
                state.template,
                model,
                target,
                slots=view,
                fragments=state.fragments,
                left_out=left_out,
            )
        except TemplateError as exc:
            log.error("target %s: %s", target.name, exc)
            state.last_error = str(exc)
            return None
        for sentence in left_out:
            if sentence not in state.services_left_out:  # once, not on every render
                log.warning("target %s: %s", target.name, sentence)
        state.services_left_out = set(left_out)
        if state.on_disk is not None and data == state.on_disk:
            data = state.on_disk  # one object for both, not two equal copies
        state.rendered, state.rendered_data = inputs, data
        self.metrics.renders.labels(target.name).inc()
        return data

    async def _read_file(self, state: TargetState, target: TargetConfig) -> bool:
        """Know what the output holds (read it unless known); False (logged) on a failure."""
        if state.known:
            return True
        try:
            state.on_disk = await asyncio.to_thread(read_current, target.output)
        except WriteError as exc:
            log.error("target %s: %s", target.name, exc)
            state.last_error = str(exc)
            return False
        state.known = True
        return True

    async def _update_runtime(
        self,
        state: TargetState,
        data: bytes,
        old: RuntimeSlots,
        new: RuntimeSlots,
        event_times: list[int],
    ) -> bool:
        """Write the file (it must always describe the truth), then move the slots live."""
        target = state.config
        assert target.runtime_socket is not None
        if not await self._write(state, data):
            return False
        state.on_disk = data
        commands = runtime_commands(old.view, new.view)
        try:
            await apply_runtime(target.runtime_socket, commands)
        except HAProxySocketError as exc:
            self.metrics.runtime_updates.labels(target.name, "error").inc()
            log.warning("target %s: runtime update failed, reloading instead: %s", target.name, exc)
            state.reload_due()
            return False
        self.metrics.runtime_updates.labels(target.name, "ok").inc()
        self.reports.latency(target.name, event_times)
        state.last_error = None
        return True

    async def _write(self, state: TargetState, data: bytes) -> bool:
        """The atomic write of a target's file, counted; False (logged) when it failed."""
        target = state.config
        try:
            await asyncio.to_thread(write_atomic, target.output, data)
        except WriteError as exc:
            log.error("target %s: %s (the old file is untouched)", target.name, exc)
            self.metrics.writes.labels(target.name, "error").inc()
            state.last_error = f"write failed: {exc}"
            return False
        self.metrics.writes.labels(target.name, "ok").inc()
        return True

    async def _write_and_check(
        self, state: TargetState, data: bytes, proxies: list[Container]
    ) -> list[Container] | None:
        """Write the new file and check it: the proxies to reload, or None when the file was
        refused (or could not be checked anywhere) and the last good one is back."""
        previous = state.on_disk
        if not await self._write(state, data):
            return None
        decision = await check(self.client, state.config, proxies)
        self.reports.left_out(state, proxies, decision.left_out, stays=_is_reload_failure)
        if not decision.keep:
            await self._refused(state, decision, data, written=True, previous=previous)
            return None
        state.on_disk = data
        state.rejected = None
        state.reload_due()
        return [p for p in proxies if p.name in decision.reload]

    async def _choose_for_reload(
        self, state: TargetState, data: bytes, proxies: list[Container]
    ) -> list[Container] | None:
        """The proxies to reload with the file on disk (unchanged: the first pass, or a reload
        still due). With several proxy containers the check says which: one where it cannot
        run (not a proxy at all, say) would never confirm a reload, and must not be sent one."""
        target = state.config
        if len(proxies) < 2 or target.check != "exec" or not reloads_containers(target):
            return proxies
        decision = await check(self.client, target, proxies)
        self.reports.left_out(state, proxies, decision.left_out, stays=_is_reload_failure)
        if not decision.keep:
            await self._refused(state, decision, data, written=False)
            return None
        return [p for p in proxies if p.name in decision.reload]

    async def _refused(
        self,
        state: TargetState,
        decision: CheckDecision,
        data: bytes,
        *,
        written: bool,
        previous: bytes | None = None,
    ) -> None:
        """No reload: the check refused `data` everywhere it ran, or ran nowhere. When it was
        `written`, the last good file (`previous`; None: none existed) goes back."""
        target = state.config
        if decision.ran:
            self.metrics.check_failures.labels(target.name).inc()
            state.rejected = data  # not tried again until something changes
            state.last_error = f"check failed: {decision.refusal}"
        else:
            state.last_error = decision.refusal
        if written:
            try:
                await asyncio.to_thread(restore, target.output, previous)
            except WriteError as restore_exc:
                log.error(
                    "target %s: cannot put the last good file back: %s", target.name, restore_exc
                )
                state.known = False
        done = (
            "the last good file is back and the proxy was not reloaded"
            if written
            else "the proxy was not reloaded"
        )
        if decision.ran:
            what = "the new config" if written else "the file on disk"
            log.error(
                "target %s: the proxy's check refused %s; %s:\n%s",
                target.name,
                what,
                done,
                decision.refusal,
            )
            return
        # Nothing judged the file (an engine hiccup, a proxy restarting): try again later.
        log.error(
            "target %s: %s; %s (retrying in %.0f s)",
            target.name,
            decision.refusal,
            done,
            state.retry_delay,
        )
        self._retry_later(state)

    async def _reload(
        self, state: TargetState, proxies: list[Container], event_times: list[int]
    ) -> list[str] | None:
        """Reload the proxy: each container on its own (all at once), or the whole target.

        The names of the containers reloaded ([] for a target-wide reload), or None when no
        reload worked (retried later). When some containers reloaded, the file is live: the
        others are reported, and get the next reload with everyone else.
        """
        target = state.config
        reloaded: list[str] = []
        failures: list[tuple[str, ReloadFailed]] = []
        if reloads_containers(target):
            outcomes = await settle(
                [
                    _retrying(functools.partial(reload_container, self.client, target, p))
                    for p in proxies
                ],
                worked=lambda failure: failure is None,
                late=lambda i, why: ReloadFailed(f"the reload of {proxies[i].name} was {why}"),
                grace=GRACE,
            )
            for proxy, failure in zip(proxies, outcomes, strict=True):
                if failure is None:
                    reloaded.append(proxy.name)
                else:
                    failures.append((proxy.name, failure))
        else:
            failure = await _retrying(functools.partial(reload, self.client, target))
            if failure is not None:
                failures.append((target.reload, failure))
        # One count per container reloaded (or per target-wide reload), by result.
        worked = len(reloaded) if reloads_containers(target) else int(not failures)
        if worked:
            self.metrics.reloads.labels(target.name, "ok").inc(worked)
        if failures:
            self.metrics.reloads.labels(target.name, "error").inc(len(failures))
        if failures and not reloaded:
            message = "; ".join(str(exc) for _, exc in failures)
            state.reload_failed(message)
            log.error(
                "target %s: reload failed (retrying in %.0f s): %s",
                target.name,
                state.retry_delay,
                message,
            )
            self._retry_later(state)
            return None
        if reloaded:
            done = set(reloaded)
            self.reports.left_out(
                state,
                proxies,
                [
                    LeftOut(name, LeftOutReason.RELOAD_FAILED, one_line(str(exc)))
                    for name, exc in failures
                ],
                stays=lambda entry: not (_is_reload_failure(entry) and entry.container in done),
            )
        now = time.time()
        self.reports.latency(target.name, event_times)
        state.reload_worked(now)
        return reloaded

    def _retry_later(self, state: TargetState) -> None:
        asyncio.get_running_loop().call_later(state.back_off(), self._poke)


def output_facts(
    state: TargetState, target: TargetConfig, data: bytes, slots: RuntimeSlots | None
) -> OutputFacts:
    """What `plan.output_action` needs to know of the rendered `data` (the file on disk is
    known); `target` is the settings the pass began with."""
    runtime = None
    if slots is not None:
        live = state.slots
        runtime = RuntimeFacts(
            live_slots_known=live is not None,
            same_settings=state.reloaded_with == target,
            same_structure=live is not None and slots.structure == live.structure,
            only_slot_lines_differ=False,
        )
    facts = OutputFacts(
        changed=data != state.on_disk,
        refused_before=data == state.rejected,
        phase=state.phase,
        runtime=runtime,
    )
    if runtime is not None and state.on_disk is not None and compares_slot_lines(facts):
        differ = only_slot_lines_differ(state.on_disk, data)
        facts = replace(facts, runtime=replace(runtime, only_slot_lines_differ=differ))
    return facts


async def _retrying(action: Callable[[], Awaitable[None]]) -> ReloadFailed | None:
    """`action` with retries and backoff; the last failure, or None once it worked."""
    retrying = tenacity.AsyncRetrying(
        stop=tenacity.stop_after_attempt(RELOAD_ATTEMPTS),
        wait=tenacity.wait_exponential(multiplier=0.2, max=2.0) + tenacity.wait_random(0, 0.1),
        retry=tenacity.retry_if_exception_type(ReloadFailed),
        reraise=True,
    )
    try:
        async for attempt in retrying:
            with attempt:
                await action()
    except ReloadFailed as exc:
        return exc
    return None


def _is_reload_failure(entry: LeftOut) -> bool:
    return entry.reason is LeftOutReason.RELOAD_FAILED


def _describe_proxy(target: TargetConfig) -> str:
    proxy = target.proxy
    if proxy.label is not None:
        value = f"={proxy.label.value}" if proxy.label.value is not None else ""
        return f"label {proxy.label.key}{value}"
    if proxy.name is not None:
        return f"name {proxy.name}"
    return f"pid file {proxy.pid_file}"
