"""`lbsync run`: the watcher, the debounced passes, and the HTTP server, wired together.

A pass, per target (SPEC §5): find the proxy (wait while it is missing), build the routing
model, render; unchanged bytes end the pass; changed bytes are written atomically and
checked, and a refused check puts the last good file back. Then the proxy is reloaded and
the reload confirmed. The first pass always reloads. Nothing here ever exits the process on
a bad event, label, template, check or reload.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import logging
import os
import re
import signal
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import chain, compress
from operator import attrgetter, is_not
from pathlib import Path
from typing import Any, TypeVar

import tenacity
from prometheus_client import Counter

from lbsync.apply.haproxy import HAProxySocketError, apply_runtime
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
from lbsync.apply.selection import ProxyTracker, is_proxy, uses_containers
from lbsync.apply.writer import WriteError, read_current, restore, write_atomic
from lbsync.config.schema import Config, ConfigError, TargetConfig, load_config
from lbsync.daemon.debounce import Debouncer
from lbsync.daemon.filewatch import open_change_signal
from lbsync.daemon.logs import current_pass, current_target, setup_logging
from lbsync.daemon.metrics import Metrics
from lbsync.engine.client import ApiVersionTooOld, DockerClient, Event, PermissionDenied
from lbsync.engine.container import Container
from lbsync.model.entries import ParsedEntries
from lbsync.model.labels import parse_services
from lbsync.model.routing import NOT_HEALTHY, NOT_RUNNING, ModelBuilder
from lbsync.model.slots import (
    BackendSlots,
    SlotMap,
    SlotTable,
    SlottedUpstream,
    StructureKey,
    assign_backend,
    backend_view,
    hosts_structure,
    runtime_commands,
)
from lbsync.model.types import RoutingModel, Upstream
from lbsync.render.templates import (
    CompiledTemplate,
    FragmentCache,
    TemplateError,
    load_template,
    render_bytes,
)
from lbsync.state.registry import Registry
from lbsync.state.watcher import Change, Watcher

log = logging.getLogger("lbsync")

RELOAD_ATTEMPTS = 3
RETRY_PASS_MIN = 1.0
RETRY_PASS_MAX = 30.0
SHUTDOWN_GRACE = 30.0
RECENT_CHANGES = 50
#: The config file and templates: stat() a second where there is no inotify; with inotify,
#: after each of its wake-ups (FILE_SETTLE later) and every FILE_POLL_FALLBACK seconds for
#: filesystems that send no events (NFS, FUSE, Docker Desktop's shares of host folders).
FILE_POLL_INTERVAL = 1.0
FILE_POLL_FALLBACK = 10.0
FILE_SETTLE = 0.1
STATE_REASONS = frozenset({NOT_RUNNING, NOT_HEALTHY})
_SERVERS_OF = attrgetter("servers")
_CONTAINER_ID_OF = attrgetter("container.id")


@dataclass(frozen=True, slots=True)
class RuntimeSlots:
    """haproxy-runtime: which container holds which server slot of each backend.

    `derive` is `assign_slots` + `slot_view` + `structure_key` at the cost of what changed: an
    upstream that is the same object as last time has the same servers, so it keeps its
    slots (and their very objects, which `render_each` and `runtime_commands` skip).
    """

    table: SlotTable
    view: SlotMap
    structure: StructureKey
    per_backend: int
    model: RoutingModel  # the model these slots were derived for

    @classmethod
    def derive(
        cls, previous: RuntimeSlots | None, model: RoutingModel, per_backend: int
    ) -> RuntimeSlots:
        same_size = previous is not None and previous.per_backend == per_backend
        if same_size and previous is not None and model is previous.model:
            return previous
        backends: dict[str, BackendSlots] = {}
        fresh: dict[str, SlottedUpstream] = {}
        for upstream in model.upstreams:
            name = upstream.name
            old = previous.table.get(name) if previous is not None else None
            pair = previous.view.pair(name) if same_size and previous is not None else None
            if pair is not None and pair.upstream is upstream and old is not None:
                backends[name], fresh[name] = old, pair
                continue
            slots = assign_backend(old, upstream, per_backend)
            backends[name] = slots
            fresh[name] = SlottedUpstream(upstream, backend_view(slots, upstream))
        table = SlotTable.of(backends)
        if previous is not None and model.hosts is previous.model.hosts:
            hosts_key = previous.structure[0]  # the same hosts: the same routes
        else:
            hosts_key = hosts_structure(model.hosts)
        backends_key = tuple(
            (u.name, u.balance, backends[u.name].capacity) for u in model.upstreams
        )
        structure = (hosts_key, backends_key)
        return cls(table, SlotMap(fresh), structure, per_backend, model)


@dataclass(frozen=True, slots=True)
class RecentChange:
    """One reload, for the status page's "recent changes"."""

    at: float
    target: str
    change: str
    duration_ms: float


@dataclass
class TargetState:
    """What one target's passes remember between runs."""

    config: TargetConfig
    template: CompiledTemplate
    on_disk: bytes | None = None  # what we last wrote or read; None with known=False: unread
    known: bool = False
    rejected: bytes | None = None  # the last bytes the check refused: not retried unchanged
    reloaded: bool = False  # the first pass always reloads
    reload_pending: bool = False
    model: RoutingModel | None = None
    last_pass_at: float | None = None
    last_reload_at: float | None = None
    last_reload_result: str | None = None
    last_error: str | None = None
    waiting_for_proxy: bool = False
    retry_delay: float = RETRY_PASS_MIN
    slots: RuntimeSlots | None = None  # haproxy-runtime: the slots the running HAProxy has
    reloaded_with: TargetConfig | None = None  # the settings the proxy last reloaded with
    warned_skips: set[str] = field(default_factory=set)
    # Proxy containers reported and not reloaded (SPEC §1), by container id.
    left_out: dict[str, LeftOut] = field(default_factory=dict)
    services_left_out: set[str] = field(default_factory=set)  # services the last render left out
    # A pass costs what changed: the model is patched, unchanged blocks are not re-rendered,
    # and an unchanged model with the same template and settings is not rendered at all.
    builder: ModelBuilder = field(default_factory=ModelBuilder)
    proxies: ProxyTracker = field(default_factory=ProxyTracker)
    fragments: FragmentCache = field(default_factory=FragmentCache)
    reported: RoutingModel | None = None  # the model the metrics and skip logs describe
    rendered: tuple[object, ...] = ()  # (model, template, config, slots) of `rendered_data`
    # Kept as bytes only: the text would be a second copy of the whole file (0.7 MB at
    # 1,000 containers), and an unchanged pass would encode it again.
    rendered_data: bytes = b""


class Daemon:
    def __init__(
        self, config: Config, client: DockerClient, *, config_path: Path | None = None
    ) -> None:
        self.config = config
        self.config_path = config_path  # what `-c` named: SIGHUP re-runs the same search
        self.config_error: str | None = None
        self.client = client
        self.metrics = Metrics()
        self._event_counters: dict[tuple[str, str], Counter] = {}
        self._seen_reconnects = 0  # watcher.reconnects already counted in the metrics
        self._seen_reader_failures = 0  # ... and watcher.reader_failures
        self.registry = Registry()
        self.entries = ParsedEntries(self.registry)  # its containers with their labels parsed
        self.started_at = time.time()
        self.targets = [
            TargetState(config=target, template=load_template(target)) for target in config.targets
        ]
        self.watcher = Watcher(
            client,
            self.registry,
            self._on_change,
            resync=config.docker.resync,
            on_event=self._count_event,
            matters=self._matters,
            swarm=config.discovery.swarm,
            label_prefix=config.discovery.label_prefix,
        )
        self.debouncer = Debouncer(
            self._run_pass, quiet=config.debounce.quiet, max_wait=config.debounce.max
        )
        self._pass_task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()
        self.last_pass_ok: bool | None = None
        self._skip_reasons_seen: set[str] = set()
        self.passes_completed = 0
        self.changes: collections.deque[RecentChange] = collections.deque(maxlen=RECENT_CHANGES)

    # -- events in --

    def _matters(self, container: Container) -> bool:
        """Can this container change any target's output? Others cost no pass at all."""
        parsed = parse_services(container, self.config.discovery)  # cached by its labels
        for state in self.targets:
            target = state.config
            if is_proxy(target, container):
                return True
            selected = target.select is None or target.select.matches(container.labels)
            if selected and (parsed.enabled or parsed.skips):
                return True
        return False

    def _count_event(self, event: Event) -> None:
        # The base action only: `exec_start: <command>` would make a label value per command.
        # The counter child is kept: prometheus_client's labels() takes a lock and validates
        # on every call, and this runs for every engine event.
        key = (event.type, event.base_action)
        counter = self._event_counters.get(key)
        if counter is None:
            counter = self._event_counters[key] = self.metrics.events.labels(*key)
        counter.inc()

    def _on_change(self, change: Change) -> None:
        urgent = change.urgent and self.config.debounce.drain
        self.debouncer.poke(
            urgent=urgent, event_time_ns=change.event_time_ns, containers=change.containers
        )

    # -- passes --

    async def _run_pass(self, event_times: list[int]) -> None:
        # Shielded: a shutdown waits for a pass in flight rather than cutting a write short.
        self._pass_task = asyncio.ensure_future(self._pass(event_times))
        await asyncio.shield(self._pass_task)

    async def _pass(self, event_times: list[int]) -> None:
        self.metrics.passes.inc()
        ok = True
        current_pass.set(self.passes_completed + 1)
        for state in self.targets:
            current_target.set(state.config.name)
            try:
                ok = await self._sync_target(state, event_times) and ok
            except Exception as exc:  # a bug must cost one pass, never the daemon
                log.exception("target %s: pass failed unexpectedly", state.config.name)
                state.last_error = f"internal error: {exc}"
                ok = False
        self.last_pass_ok = ok
        self.passes_completed += 1

    async def _sync_target(self, state: TargetState, event_times: list[int]) -> bool:
        target = state.config
        started = time.monotonic()
        state.last_pass_at = time.time()
        # Entries first: a new discovery config logs every id, and the proxies are then
        # found by one scan now rather than id by id on the next pass.
        entries = self.entries.since(self.config.discovery, state.builder.epoch)
        proxies = state.proxies.find(target, self.registry) if uses_containers(target) else []
        if uses_containers(target) and not proxies:
            if not state.waiting_for_proxy:
                log.warning(
                    "target %s: no running proxy container matches %s; waiting for it "
                    "(nothing is written until it exists)",
                    target.name,
                    _describe_proxy(target),
                )
            state.waiting_for_proxy = True
            state.last_error = "proxy container missing"
            return False
        if state.waiting_for_proxy:
            log.info("target %s: proxy %s found", target.name, ", ".join(p.name for p in proxies))
        state.waiting_for_proxy = False
        if state.left_out:  # a container that is gone (or no longer a proxy) is not reported
            current_ids = {p.id for p in proxies}
            state.left_out = {k: v for k, v in state.left_out.items() if k in current_ids}

        proxy_networks = frozenset(n.name for n in proxies[0].networks) if proxies else frozenset()
        model = state.builder.build(
            entries,
            self.config.discovery,
            target,
            proxy_networks,
        )
        if model is not state.reported:
            self._report_model(state, model)
            state.reported = model
        slots = None
        if target.reload == "haproxy-runtime":
            slots = RuntimeSlots.derive(state.slots, model, target.slots)
        view = slots.view if slots else None
        inputs = (model, state.template, target, view)
        if len(state.rendered) == len(inputs) and all(
            a is b for a, b in zip(state.rendered, inputs, strict=True)
        ):
            data = state.rendered_data
        else:
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
                return False
            for sentence in left_out:
                if sentence not in state.services_left_out:  # once, not on every render
                    log.warning("target %s: %s", target.name, sentence)
            state.services_left_out = set(left_out)
            if state.on_disk is not None and data == state.on_disk:
                data = state.on_disk  # one object for both, not two equal copies
            state.rendered, state.rendered_data = inputs, data
            self.metrics.renders.labels(target.name).inc()

        if not state.known:
            try:
                state.on_disk = await asyncio.to_thread(read_current, target.output)
            except WriteError as exc:
                log.error("target %s: %s", target.name, exc)
                state.last_error = str(exc)
                return False
            state.known = True
        changed = data != state.on_disk
        if not changed and state.reloaded and not state.reload_pending:
            state.last_error = None
            state.model = model
            return True
        if changed and data == state.rejected:
            log.debug("target %s: same config as the one refused; waiting", target.name)
            return False
        # Only servers moved in or out of slots: no new config, so no check and no reload.
        # The bytes must say so too: a user template may render more than server lines
        # from the same model structure, and that would be a new config that needs a check.
        servers_only = (
            changed
            and slots is not None
            and state.slots is not None
            and state.reloaded
            and not state.reload_pending
            and state.reloaded_with == target
            and slots.structure == state.slots.structure
            and state.on_disk is not None
            and only_slot_lines_differ(state.on_disk, data)
        )
        if (
            servers_only
            and slots is not None
            and state.slots is not None
            and await self._update_runtime(state, data, state.slots, slots, event_times)
        ):
            self._record_change(state, model, started, "updated through the runtime API")
            state.slots = slots
            return True
        if changed:
            chosen = await self._write_and_check(state, data, proxies)
        else:
            chosen = await self._choose_for_reload(state, data, proxies)
        if chosen is None:
            return False
        reloaded = await self._reload(state, chosen, event_times)
        if reloaded is None:
            return False
        self._record_change(
            state, model, started, "reloaded " + (", ".join(reloaded) or target.reload)
        )
        state.slots = slots
        state.reloaded_with = target
        return True

    def _record_change(
        self, state: TargetState, model: RoutingModel, started: float, how: str
    ) -> None:
        change = _describe_change(state.model, model)
        elapsed_ms = (time.monotonic() - started) * 1000
        log.info("target %s: %s in %.0f ms: %s", state.config.name, how, elapsed_ms, change)
        self.changes.appendleft(
            RecentChange(time.time(), state.config.name, change, round(elapsed_ms, 1))
        )
        state.model = model

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
            state.reload_pending = True
            return False
        self.metrics.runtime_updates.labels(target.name, "ok").inc()
        self._observe_latency(target.name, event_times)
        state.last_error = None
        return True

    def _observe_latency(self, target_name: str, event_times: list[int]) -> None:
        now = time.time()
        for event_ns in event_times:
            self.metrics.event_to_reload.labels(target_name).observe(max(0.0, now - event_ns / 1e9))

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
        self._report_left_out(state, proxies, decision.left_out, stays=_is_reload_failure)
        if not decision.keep:
            await self._refused(state, decision, data, written=True, previous=previous)
            return None
        state.on_disk = data
        state.rejected = None
        state.reload_pending = True
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
        self._report_left_out(state, proxies, decision.left_out, stays=_is_reload_failure)
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

    def _report_left_out(
        self,
        state: TargetState,
        proxies: Sequence[Container],
        entries: Sequence[LeftOut],
        stays: Callable[[LeftOut], bool],
    ) -> None:
        """Record the proxy containers left out of a reload: each is counted every time and
        logged once per container and reason (a rogue container is there on every pass).
        Of those recorded before, the ones `stays` picks remain."""
        target = state.config
        ids = {p.name: p.id for p in proxies}
        current = {cid: entry for cid, entry in state.left_out.items() if stays(entry)}
        for entry in entries:
            cid = ids.get(entry.container, entry.container)
            self.metrics.proxies_left_out.labels(target.name, entry.reason).inc()
            before = state.left_out.get(cid)
            level = logging.DEBUG if before and before.reason == entry.reason else logging.WARNING
            log.log(
                level,
                "target %s: proxy container %s is not reloaded: %s: %s",
                target.name,
                entry.container,
                LEFT_OUT_WHY[entry.reason],
                entry.message,
            )
            current[cid] = entry
        state.left_out = current

    async def _retrying(self, action: Callable[[], Awaitable[None]]) -> ReloadFailed | None:
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
                    self._retrying(functools.partial(reload_container, self.client, target, p))
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
            failure = await self._retrying(functools.partial(reload, self.client, target))
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
            state.reload_pending = True
            state.last_reload_result = "error"
            state.last_error = f"reload failed: {message}"
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
            self._report_left_out(
                state,
                proxies,
                [
                    LeftOut(name, LeftOutReason.RELOAD_FAILED, one_line(str(exc)))
                    for name, exc in failures
                ],
                stays=lambda entry: not (_is_reload_failure(entry) and entry.container in done),
            )
        now = time.time()
        self._observe_latency(target.name, event_times)
        state.reloaded = True
        state.reload_pending = False
        state.last_reload_at = now
        state.last_reload_result = "ok"
        state.last_error = None
        state.retry_delay = RETRY_PASS_MIN
        return reloaded

    def _retry_later(self, state: TargetState) -> None:
        delay = state.retry_delay
        state.retry_delay = min(RETRY_PASS_MAX, delay * 2)
        asyncio.get_running_loop().call_later(delay, self.debouncer.poke)

    def _report_model(self, state: TargetState, model: RoutingModel) -> None:
        name = state.config.name
        reported = state.reported
        if reported is None or model.upstreams is not reported.upstreams:
            # map/chain keep the loop in C: this runs on every pass that changed something.
            servers = list(chain.from_iterable(map(_SERVERS_OF, model.upstreams)))
            self.metrics.upstreams.labels(name).set(len(model.upstreams))
            self.metrics.servers.labels(name).set(len(servers))
            routed = set(map(_CONTAINER_ID_OF, servers))
            self.metrics.containers_routed.labels(name).set(len(routed))
        self.metrics.containers_discovered.labels(name).set(len(model.containers))
        by_reason: dict[str, int] = {}
        current: set[str] = set()
        for skip in model.skips:
            by_reason[skip.reason] = by_reason.get(skip.reason, 0) + 1
            key = f"{skip.container.id}:{skip.reason}"
            current.add(key)
            if key not in state.warned_skips:
                # Once per container and reason, not on every pass. A stopped or unhealthy
                # container is state, not a mistake: worth a line, not a warning.
                level = logging.INFO if skip.reason in STATE_REASONS else logging.WARNING
                log.log(level, "%s", skip.detail)
        for warning in model.warnings:
            current.add(warning)
            if warning not in state.warned_skips:
                log.warning("%s", warning)
        state.warned_skips = current
        for reason in set(by_reason) | self._skip_reasons_seen:
            self.metrics.containers_skipped.labels(name, reason).set(by_reason.get(reason, 0))
        self._skip_reasons_seen |= set(by_reason)

    # -- live config --

    def reload_config(self, reason: str) -> bool:
        """Re-read the config and templates; keep the running ones if anything is wrong."""
        try:
            new = load_config(self.config_path, os.environ)
            templates = [load_template(target) for target in new.targets]
        except (ConfigError, TemplateError) as exc:
            lines = exc.problems if isinstance(exc, ConfigError) else [str(exc)]
            where = f"{exc.source}: " if isinstance(exc, ConfigError) and exc.source else ""
            self.config_error = where + "; ".join(lines)
            log.error(
                "config not reloaded (%s), the running one stays:\n%s",
                reason,
                "\n".join(f"  {where}{line}" for line in lines),
            )
            return False
        old = self.config
        if (old.docker, old.server) != (new.docker, new.server):
            log.warning("docker.* and server.* changes take effect when lbsync restarts")
        states = {state.config.name: state for state in self.targets}
        targets = []
        for target, template in zip(new.targets, templates, strict=True):
            state = states.get(target.name)
            if state is None or state.config.output != target.output:
                state = TargetState(config=target, template=template)
            else:
                state.config = target
                state.template = template
                state.rejected = None
            targets.append(state)
        self.targets = targets
        self.config = new
        self.config_error = None
        self.debouncer.set_window(new.debounce.quiet, new.debounce.max)
        self.watcher.set_resync(new.docker.resync)
        self.watcher.set_discovery(new.discovery.swarm, new.discovery.label_prefix)
        setup_logging(new.log)
        log.info("config reloaded (%s): %d target(s)", reason, len(targets))
        self.debouncer.poke()
        return True

    def watched_files(self) -> list[Path]:
        """The config file and every user template: an edit of any of them re-reads all."""
        paths = [self.config.source] if self.config.source else []
        paths += [s.template.path for s in self.targets if not s.template.is_builtin]
        return [p for p in paths if p is not None]

    async def _watch_files(self) -> None:
        def fingerprint() -> tuple[tuple[int, int, int] | None, ...]:
            result: list[tuple[int, int, int] | None] = []
            for path in self.watched_files():
                try:
                    st = path.stat()
                    result.append((st.st_mtime_ns, st.st_size, st.st_ino))
                except OSError:
                    result.append(None)
            return tuple(result)

        changes = open_change_signal()
        interval = FILE_POLL_INTERVAL if changes is None else FILE_POLL_FALLBACK
        try:
            if changes is not None:
                changes.inotify.watch(self.watched_files())
            last = fingerprint()
            while True:
                if changes is None:
                    await asyncio.sleep(interval)
                else:
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(interval):
                            await changes.event.wait()
                    if changes.event.is_set():
                        # An editor or `kubectl apply` writes in steps: read once they are done.
                        await asyncio.sleep(FILE_SETTLE)
                        changes.event.clear()
                now = fingerprint()
                if now != last:
                    self.reload_config("a watched file changed")
                    if changes is not None:
                        # A file replaced by a rename is a new inode; the template list may
                        # have changed too.
                        changes.inotify.watch(self.watched_files())
                    last = fingerprint()
        finally:
            if changes is not None:
                changes.close()

    # -- health --

    def health_problems(self) -> list[str]:
        problems = []
        if self.passes_completed == 0:
            problems.append("starting: no pass has completed yet")
        if self.config_error:
            problems.append(f"config not reloaded: {self.config_error}")
        if not self.watcher.connected:
            since = self.watcher.disconnected_since
            when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(since)) if since else "start"
            problems.append(
                f"engine disconnected since {when}: {self.watcher.last_error or 'connecting'}"
            )
        for state in self.targets:
            if state.last_error:
                problems.append(f"target {state.config.name}: {state.last_error}")
        return problems

    # -- lifecycle --

    def request_stop(self) -> None:
        self._stop.set()

    async def run(self) -> int:
        """Run until SIGTERM/SIGINT; 0 then, 1 on permission denied or a too-old API."""
        from lbsync.web.server import start_server

        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        loop.add_signal_handler(signal.SIGHUP, self.reload_config, "SIGHUP")
        runner = await start_server(self, self.config.server.host, self.config.server.port)
        watcher_task = asyncio.create_task(self.watcher.run(), name="lbsync-watcher")
        debounce_task = asyncio.create_task(self.debouncer.run(), name="lbsync-passes")
        files_task = asyncio.create_task(self._watch_files(), name="lbsync-config-watch")
        stop_task = asyncio.create_task(self._stop.wait())
        code = 0
        try:
            done, _ = await asyncio.wait(
                {watcher_task, stop_task}, return_when=asyncio.FIRST_COMPLETED
            )
            if watcher_task in done:
                exc = watcher_task.exception()
                if isinstance(exc, PermissionDenied | ApiVersionTooOld):
                    log.error("%s", exc)
                    code = 1
                elif exc is not None:
                    log.error("the watcher stopped: %r", exc)
                    code = 1
            else:
                log.info("stopping")
        finally:
            tasks: set[asyncio.Task[Any]] = {
                watcher_task,
                debounce_task,
                files_task,
                stop_task,
            }
            for task in tasks:
                task.cancel()
            if self._pass_task is not None and not self._pass_task.done():
                log.info("finishing the pass in progress before exiting")
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(asyncio.shield(self._pass_task), SHUTDOWN_GRACE)
            # Bounded: a task that swallowed its cancellation must not hang the exit.
            _, stuck = await asyncio.wait(tasks, timeout=5.0)
            for task in stuck:
                log.warning("task %s did not stop in time", task.get_name())
            await runner.cleanup()
            await self.client.close()
        return code

    def sync_connection_metrics(self) -> None:
        """Copy the watcher's connection state into the metrics. /metrics calls it before
        every scrape, and nothing else reads them: no task wakes up to poll it."""
        self.metrics.engine_connected.set(1 if self.watcher.connected else 0)
        if self.watcher.reconnects > self._seen_reconnects:
            self.metrics.engine_reconnects.inc(self.watcher.reconnects - self._seen_reconnects)
            self._seen_reconnects = self.watcher.reconnects
        failures = self.watcher.reader_failures - self._seen_reader_failures
        if failures > 0:
            self.metrics.event_reader_failures.inc(failures)
            self._seen_reader_failures = self.watcher.reader_failures


_SLOT_LINE = re.compile(rb"^[ \t]*server[ \t]+s[0-9]+[ \t].*$", re.MULTILINE)


def only_slot_lines_differ(old: bytes, new: bytes) -> bool:
    """Do two renderings differ in nothing but the `server sN ...` slot lines?"""
    return _SLOT_LINE.sub(b"server", old) == _SLOT_LINE.sub(b"server", new)


def _describe_proxy(target: TargetConfig) -> str:
    proxy = target.proxy
    if proxy.label is not None:
        value = f"={proxy.label.value}" if proxy.label.value is not None else ""
        return f"label {proxy.label.key}{value}"
    if proxy.name is not None:
        return f"name {proxy.name}"
    return f"pid file {proxy.pid_file}"


T = TypeVar("T")

#: Why a proxy container is not reloaded, for its log line.
LEFT_OUT_WHY = {
    LeftOutReason.UNRUNNABLE: "the check could not run in it",
    LeftOutReason.DISAGREED: "it refused the config another proxy container accepted",
    LeftOutReason.RELOAD_FAILED: "its reload failed while other proxy containers reloaded",
}


def _is_reload_failure(entry: LeftOut) -> bool:
    return entry.reason is LeftOutReason.RELOAD_FAILED


def _differing(before: tuple[T, ...], after: tuple[T, ...]) -> tuple[list[T], list[T]]:
    """The items of each that are not the very object found in the other.

    Same lengths: position by position (in C). Whatever lies outside the differing positions
    is in both, so differences computed on what is left are the whole differences.
    """
    if len(before) == len(after):
        moved = list(compress(range(len(after)), map(is_not, before, after)))
        return [before[i] for i in moved], [after[i] for i in moved]
    old_ids, new_ids = {id(x) for x in before}, {id(x) for x in after}
    return [x for x in before if id(x) not in new_ids], [x for x in after if id(x) not in old_ids]


def _server_labels(upstream: Upstream) -> Iterator[str]:
    return (f"{upstream.name}/{s.container.name}:{s.port}" for s in upstream.servers)


def _describe_change(before: RoutingModel | None, after: RoutingModel) -> str:
    """`hosts +a.test -b.test; servers +web-2 -web-1`, or what is now served on a first pass."""
    if before is None:
        return f"{len(after.hosts)} hosts, {sum(len(u.servers) for u in after.upstreams)} servers"
    # Unchanged hosts and upstreams are the same objects (ModelBuilder): only the others are
    # compared, and at 1,000 hosts a change touches a handful.
    old_host_items, new_host_items = _differing(before.hosts, after.hosts)
    old_hosts = {h.name for h in old_host_items}
    new_hosts = {h.name for h in new_host_items}
    old_upstreams, new_upstreams = _differing(before.upstreams, after.upstreams)
    old_servers = {label for u in old_upstreams for label in _server_labels(u)}
    new_servers = {label for u in new_upstreams for label in _server_labels(u)}
    parts = []
    for label, was, now in (
        ("hosts", old_hosts, new_hosts),
        ("servers", old_servers, new_servers),
    ):
        added = sorted(now - was)
        removed = sorted(was - now)
        if added or removed:
            parts.append(
                label + " " + " ".join([f"+{x}" for x in added] + [f"-{x}" for x in removed])
            )
    return "; ".join(parts) or "no routing change"
