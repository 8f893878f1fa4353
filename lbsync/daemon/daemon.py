"""`lbsync run`: the watcher, the debounced passes, and the HTTP server, wired together.

A pass, per target (SPEC §5): find the proxy (wait while it is missing), build the routing
model, render; unchanged bytes end the pass; changed bytes are written atomically and
checked, and a refused check puts the last good file back. Then the proxy is reloaded and
the reload confirmed. The first pass always reloads. Nothing here ever exits the process on
a bad event, label, template, check or reload.

`plan` decides what a pass does for a target, `passes.PassExecutor` performs it, on the
`target.TargetState` it remembers; this module runs the whole: events in, passes, the live
config, health and the lifecycle.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import signal
import time
from pathlib import Path
from typing import Any

from prometheus_client import Counter

from lbsync.apply.selection import is_proxy
from lbsync.config.errors import ConfigError
from lbsync.config.load import load_config
from lbsync.config.schema import Config
from lbsync.daemon.debounce import Debouncer
from lbsync.daemon.filewatch import open_change_signal
from lbsync.daemon.logs import current_pass, current_target, setup_logging
from lbsync.daemon.metrics import Metrics
from lbsync.daemon.passes import PassExecutor
from lbsync.daemon.reports import PassReports, RecentChange
from lbsync.daemon.target import TargetState
from lbsync.engine.client import DockerClient
from lbsync.engine.container import Container
from lbsync.engine.errors import ApiVersionTooOld, PermissionDenied
from lbsync.engine.events import Event
from lbsync.model.entries import ParsedEntries
from lbsync.model.labels import parse_services
from lbsync.render.templates import TemplateError, load_template
from lbsync.state.change import Change
from lbsync.state.registry import Registry
from lbsync.state.watcher import Watcher

log = logging.getLogger("lbsync")

SHUTDOWN_GRACE = 30.0
RECENT_CHANGES = 50
#: The config file and templates: stat() a second where there is no inotify; with inotify,
#: after each of its wake-ups (FILE_SETTLE later) and every FILE_POLL_FALLBACK seconds for
#: filesystems that send no events (NFS, FUSE, Docker Desktop's shares of host folders).
FILE_POLL_INTERVAL = 1.0
FILE_POLL_FALLBACK = 10.0
FILE_SETTLE = 0.1


class Daemon:
    """lbsync running: engine events in, debounced passes out to every target, the config
    re-read live, the health for /healthz, and a clean stop."""

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
        self.passes_completed = 0
        self.changes: collections.deque[RecentChange] = collections.deque(maxlen=RECENT_CHANGES)
        self.executor = PassExecutor(
            client,
            self.registry,
            self.entries,
            self.metrics,
            PassReports(self.metrics, self.changes),
            poke=self.debouncer.poke,
        )

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
                ok = await self.executor.sync(state, self.config.discovery, event_times) and ok
            except Exception as exc:  # a bug must cost one pass, never the daemon
                log.exception("target %s: pass failed unexpectedly", state.config.name)
                state.last_error = f"internal error: {exc}"
                ok = False
        self.last_pass_ok = ok
        self.passes_completed += 1

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
                state.reconfigure(target, template)
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
        # Here: only `run` serves HTTP, and the CLI's other commands import this module too.
        from lbsync.daemon.snapshot import start_web_server

        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        loop.add_signal_handler(signal.SIGHUP, self.reload_config, "SIGHUP")
        runner = await start_web_server(self, self.config.server.host, self.config.server.port)
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
