"""The lbsync daemon, in-process, against the lab's real engine: latency, reloads, CPU, RSS.

    python -m bench.bench_daemon [--n 50] [--burst 50] [--singles 10] [--nginx] [--json]

Starts `--n` labelled lab backends (``--network host``, one 127.0.0.1 port and one virtual
host each), runs `lbsync.daemon.Daemon` in this process with one nginx target whose output is
in a temp dir, and measures, while the N run:

* `single start` / `single stop`: `--singles` containers started (then stopped) one at a
  time, each after the daemon went idle;
* `paced 2s` / `paced 1.5s`: `--paced` containers each, started one by one at that pace
  without waiting for lbsync (an ordinary day of deploys: each is a lone change and should
  be written `quiet` after its start, however recent the last pass);
* `burst start`: `--burst` created containers started at once (`xargs -P` of
  `docker start`, in one helper process), then `burst stop`: the same stopped at once;
* `churn`: a start every `--churn-gap` seconds for `--churn-for` seconds (sustained churn:
  it should cost about one reload per debounce `max`, reported as reloads per minute).

For every container: from its engine event (`timeNano` of `start`; of the first `kill`/
`die`/`stop` for a stop) to the output file written with the change (`write_atomic`, wrapped
through `lbsync.daemon.passes`' reference), and to the reload sent and returned (`reload`,
or `reload_container` with `--nginx`, same); p50 and p99, also minus the debounce quiet
window for starts (stops skip it by design).
Per scenario: passes, writes and reloads, lbsync's CPU per event received
(`time.process_time()` over the scenario, minus the instrumentation's own, divided by the
growth of `daemon.watcher.events_seen`), and the peak RSS (`ru_maxrss`) of this process.

Default: `reload: command` with `reload_command: ["true"]` and `check: none`. `--nginx`: the
real lab nginx (`check: exec` of `nginx -t`, `reload: signal` HUP, confirmed by new workers).

Every container carries `lbsync-test=1` and `lbsync-run=<run id>`; the config selects
`lbsync-run=<run id>`, so containers of other people on the same engine are never routed.
Every container started here is removed by id at the end, also on Ctrl-C or SIGTERM.
Targets: single and paced starts, beyond the quiet window p99 <= 50 ms at 50 and at 1,000
running containers; a burst of 50 starts -> at most 3 reloads (one more than the engine's
spread / max when the engine spreads them over more than 4 s); churn: at most one reload per
`max`; CPU per event <= 2 ms; what lbsync adds above its imports <= 12 MB at 1,000 (the
whole process here: `bench_rss` measures lbsync alone). Figures only: nothing is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import itertools
import json
import math
import pstats
import re
import resource
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, cast

import lbsync.daemon.passes as passes_module
from lbsync.cli.commands import client_for
from lbsync.config.parse import parse_config
from lbsync.config.schema import Config
from lbsync.daemon.daemon import Daemon
from lbsync.engine.container import Container
from lbsync.engine.events import Event
from tests.support.lab import BACKEND_IMAGE, DOCKER, NGINX_CONF_DIR, NGINX_IMAGE, TEST_LABEL

RUN_LABEL = "lbsync-run"
PROXY_LABEL = "lbsync-bench-proxy"
SERVER_RE = re.compile(rb"server 127\.0\.0\.1:(\d+) ")
STOP_ACTIONS = frozenset({"kill", "die", "stop"})
SETUP_CONCURRENCY = 8  # more parallel `docker run`s gain little here and strain dockerd 20.10
RM_BATCH = 1  # containers per `docker rm --force`: see Fleet.cleanup
TARGET_P99_MS = 50.0
TARGET_BURST_RELOADS = 3
TARGET_CPU_MS = 2.0
TARGET_ADDED_MB = 12.0  # above the imports, at 1,000
PACES = (2.0, 1.5)  # seconds between paced single starts

#: writes, reloads, passes, CPU seconds, events seen, instrumentation CPU ns, inspects
Marks = tuple[int, int, int, float, int, int, int]
ReloadFn = Callable[..., Awaitable[None]]


class BenchError(RuntimeError):
    """The bench cannot go on (a docker command failed, the daemon never wrote, ...)."""


class Interrupted(Exception):
    """Ctrl-C or SIGTERM."""


# --------------------------------------------------------------------------- docker


def docker(*args: str, timeout: float = 120.0) -> str:
    proc = subprocess.run(
        [DOCKER, *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    if proc.returncode != 0:
        raise BenchError(f"docker {' '.join(args[:3])} ... exited {proc.returncode}: "
                         f"{proc.stderr.strip()}")  # fmt: skip
    return proc.stdout.strip()


def free_ports(count: int) -> list[int]:
    """`count` distinct TCP ports of 127.0.0.1 that were free a moment ago."""
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sockets.append(sock)
            sock.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in sockets]
    finally:
        for sock in sockets:
            sock.close()


@dataclass(frozen=True)
class Backend:
    cid: str
    name: str
    port: int
    host: str


class Fleet:
    """The containers of one bench run; removes every one of them (by id) in `cleanup`."""

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        self.ids: list[str] = []
        self.kept: set[str] = set()  # --keep-running: left for the next run's --fleet

    def adopt_running(self) -> list[Backend]:
        """--fleet: the running backends an earlier run left (`--keep-running`)."""
        fmt = '{{.ID}} {{.Names}} {{.Label "lbsync.port"}} {{.Label "lbsync.host"}}'
        listed = docker(
            "ps", "--no-trunc", "--filter", f"label={RUN_LABEL}={self.run_id}",
            "--filter", "status=running", "--format", fmt,
        )  # fmt: skip
        backends = []
        for line in listed.splitlines():
            cid, name, port, host = line.split()
            if name.startswith(f"lbsync-bench-{self.run_id}-r"):
                backends.append(Backend(cid, name, int(port), host))
        if not backends:
            raise BenchError(f"--fleet {self.run_id}: no running backends of that run")
        self.kept.update(b.cid for b in backends)
        return sorted(backends, key=lambda b: b.name)

    def labels(self) -> list[str]:
        return ["--label", f"{TEST_LABEL}=1", "--label", f"{RUN_LABEL}={self.run_id}"]

    def _backend(self, verb: str, kind: str, index: int, port: int) -> Backend:
        name = f"lbsync-bench-{self.run_id}-{kind}{index}"
        host = f"{kind}{index}.{self.run_id}.bench.test"
        cid = docker(
            verb,
            *(["-d"] if verb == "run" else []),
            "--network", "host",
            "--name", name,
            *self.labels(),
            "--label", "lbsync.enable=true",
            "--label", f"lbsync.host={host}",
            "--label", f"lbsync.port={port}",
            "--env", f"PORT={port}",
            "--env", f"NAME={name}",
            "--env", "LOG_REQUESTS=0",
            BACKEND_IMAGE,
        )  # fmt: skip
        if len(cid) != 64:
            raise BenchError(f"docker {verb} printed {cid!r}, not a container id")
        self.ids.append(cid)
        return Backend(cid, name, port, host)

    def backends(self, verb: str, kind: str, ports: Sequence[int]) -> list[Backend]:
        """`docker run -d` (verb "run") or `docker create` one backend per port, in parallel."""
        with ThreadPoolExecutor(SETUP_CONCURRENCY) as pool:
            futures = [
                pool.submit(self._backend, verb, kind, i, port) for i, port in enumerate(ports)
            ]
            try:
                return [f.result() for f in futures]
            except BaseException:
                for f in futures:
                    f.cancel()
                raise

    def nginx(self, conf_dir: Path) -> str:
        cid = docker(
            "run", "-d", "--network", "host",
            "--name", f"lbsync-bench-{self.run_id}-nginx",
            *self.labels(),
            "--label", f"{PROXY_LABEL}={self.run_id}",
            "--volume", f"{conf_dir}:{NGINX_CONF_DIR}",
            NGINX_IMAGE,
        )  # fmt: skip
        self.ids.append(cid)
        return cid

    def cleanup(self) -> int:
        """Remove every container of this run: those we know, and any a `docker run`
        interrupted before it printed its id created (found by the run's own label)."""
        ids = set(self.ids)
        with contextlib.suppress(BenchError, subprocess.SubprocessError, OSError):
            listed = docker(
                "ps", "-aq", "--no-trunc", "--filter", f"label={RUN_LABEL}={self.run_id}"
            )
            ids.update(listed.split())
        ids -= self.kept
        batches = [sorted(ids)[i : i + RM_BATCH] for i in range(0, len(ids), RM_BATCH)]

        def remove(batch: list[str]) -> None:
            subprocess.run(
                [DOCKER, "rm", "--force", "--volumes", *batch],
                capture_output=True,
                timeout=300,
                check=False,
            )

        # One container at a time: this engine (20.10) deadlocks (even /info hangs) when
        # several running containers are removed at once (the CLI removes a batch in
        # parallel; libnetwork's watchLoop and endpoint deletes take two locks in opposite
        # orders). Batches of 50 did it twice with nothing else running, batches of 10 once.
        # A removal takes about 0.2 s: 1,000 containers are a few minutes.
        for batch in batches:
            remove(batch)
        self.ids.clear()
        return len(ids)


# --------------------------------------------------------------------------- probes


@dataclass(frozen=True)
class Write:
    at_ns: int
    ports: frozenset[int]
    size: int


@dataclass(frozen=True)
class Reload:
    sent_ns: int
    done_ns: int
    ok: bool


@dataclass(frozen=True)
class PassEnd:
    started_ns: int
    ended_ns: int
    cpu: float  # process CPU seconds at the end of the pass
    events_seen: int


@dataclass
class Seen:
    action: str
    time_nano: int
    received_ns: int  # handed to the watcher (`Watcher._note`)
    applied_ns: int = 0  # its inspect applied: in the registry, debouncer poked


class Probe:
    """Wraps the daemon's write, reload, pass and event entry points to timestamp them."""

    def __init__(self) -> None:
        self.writes: list[Write] = []
        self.reloads: list[Reload] = []
        self.passes: list[PassEnd] = []
        self.events: dict[str, list[Seen]] = {}
        self.instrument_cpu = 0.0  # CPU seconds spent here, subtracted from lbsync's
        self.inspects: list[tuple[int, float]] = []  # (done at ns, seconds it took)
        self.changed: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._undo: list[Callable[[], None]] = []

    def _poke(self) -> None:
        if self.changed is not None:
            self.changed.set()

    def install(self, daemon: Daemon) -> None:
        self._loop = asyncio.get_running_loop()
        self.changed = asyncio.Event()
        # The executor module's own references: what the passes call.
        names = vars(passes_module)
        orig_write = cast(Callable[[Path, bytes], None], names["write_atomic"])
        # `reload` (a command, a pid file, HAProxy's master) and, where the daemon has it,
        # `reload_container` (one proxy container); older daemons had `reload` only.
        reload_names: list[str] = [n for n in ("reload", "reload_container") if n in names]
        originals = {n: cast(ReloadFn, names[n]) for n in reload_names}

        def write_atomic(path: Path, data: bytes) -> None:
            orig_write(path, data)
            at = time.time_ns()
            c0 = time.thread_time()
            ports = frozenset(int(p) for p in SERVER_RE.findall(data))
            self.writes.append(Write(at, ports, len(data)))
            self.instrument_cpu += time.thread_time() - c0
            if self._loop is not None:
                self._loop.call_soon_threadsafe(self._poke)

        def timed(orig_reload: ReloadFn) -> ReloadFn:
            async def reload(*args: Any) -> None:
                sent = time.time_ns()
                ok = False
                try:
                    await orig_reload(*args)
                    ok = True
                finally:
                    self.reloads.append(Reload(sent, time.time_ns(), ok))
                    self._poke()

            return reload

        orig_pass = daemon._pass

        async def run_pass(event_times: list[int]) -> None:
            started = time.time_ns()
            try:
                await orig_pass(event_times)
            finally:
                self.passes.append(
                    PassEnd(started, time.time_ns(), time.process_time(), watcher.events_seen)
                )
                self._poke()

        watcher = daemon.watcher
        orig_note = watcher._note
        orig_applied = watcher.updater.apply_inspected

        async def note(events: list[Event]) -> None:
            received = time.time_ns()
            c0 = time.thread_time()
            for event in events:
                # Network events name their container in an attribute.
                key = event.actor_id if event.type == "container" else ""
                if event.type == "network":
                    key = event.attributes.get("container", "")
                if key:
                    seen = Seen(event.base_action, event.time_nano, received)
                    self.events.setdefault(key, []).append(seen)
            self.instrument_cpu += time.thread_time() - c0
            await orig_note(events)
            self._poke()

        def apply_inspected(container_id: str, container: Container | None) -> None:
            orig_applied(container_id, container)
            applied = time.time_ns()
            for seen in self.events.get(container_id, ()):
                if not seen.applied_ns:
                    seen.applied_ns = applied
            self._poke()

        client = daemon.client
        orig_inspect = client.inspect_container

        async def inspect_container(container_id: str) -> dict[str, Any]:
            t0 = time.perf_counter()
            try:
                return await orig_inspect(container_id)
            finally:
                self.inspects.append((time.time_ns(), time.perf_counter() - t0))

        setattr(client, "inspect_container", inspect_container)  # noqa: B010
        names["write_atomic"] = write_atomic
        for name, orig in originals.items():
            names[name] = timed(orig)
        setattr(daemon, "_pass", run_pass)  # noqa: B010 (a method: mypy refuses assignment)
        setattr(watcher, "_note", note)  # noqa: B010
        setattr(watcher.updater, "apply_inspected", apply_inspected)  # noqa: B010

        def undo() -> None:
            names["write_atomic"] = orig_write
            names.update(originals)
            for obj, name in (
                (daemon, "_pass"),
                (watcher, "_note"),
                (watcher.updater, "apply_inspected"),
                (client, "inspect_container"),
            ):
                with contextlib.suppress(AttributeError):
                    delattr(obj, name)

        self._undo.append(undo)

    def uninstall(self) -> None:
        while self._undo:
            self._undo.pop()()

    async def wait(self, condition: Callable[[], bool], timeout: float, what: str) -> None:
        """Until `condition()` holds, re-checked whenever a probe fires (no polling)."""
        assert self.changed is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not condition():
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise BenchError(f"timed out after {timeout:g}s waiting for {what}")
            self.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), min(remaining, 1.0))

    def event_time(self, cid: str, actions: Iterable[str], after_ns: int = 0) -> int | None:
        wanted = set(actions)
        times = [
            s.time_nano
            for s in self.events.get(cid, [])
            if s.action in wanted and s.time_nano >= after_ns
        ]
        return min(times) if times else None

    def count_events(self, cids: Iterable[str], after_ns: int) -> int:
        return sum(1 for cid in cids for s in self.events.get(cid, []) if s.time_nano >= after_ns)

    def first_seen(self, cid: str, actions: Iterable[str], after_ns: int) -> Seen | None:
        wanted = set(actions)
        seen = [
            s for s in self.events.get(cid, []) if s.action in wanted and s.time_nano >= after_ns
        ]
        return min(seen, key=lambda s: s.time_nano) if seen else None

    def pass_of(self, at_ns: int) -> PassEnd | None:
        """The pass that was running at `at_ns` (a write happens inside one)."""
        for p in self.passes:
            if p.started_ns <= at_ns <= p.ended_ns:
                return p
        return None

    def first_write(self, predicate: Callable[[Write], bool], from_index: int) -> Write | None:
        for write in self.writes[from_index:]:
            if predicate(write):
                return write
        return None

    def reload_after(self, at_ns: int) -> Reload | None:
        for reload in self.reloads:
            if reload.ok and reload.sent_ns >= at_ns:
                return reload
        return None


# --------------------------------------------------------------------------- figures


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile (p99 of 50 values is the largest)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[rank - 1]


@dataclass
class Scenario:
    name: str
    containers: int
    quiet_applies: bool
    events: int = 0
    passes: int = 0
    writes: int = 0
    reloads: int = 0
    cpu_ms: float = 0.0
    wall_s: float = 0.0
    spread_ms: float = 0.0  # first to last engine event of the containers acted on
    to_file_ms: list[float] = field(default_factory=list)
    to_reload_sent_ms: list[float] = field(default_factory=list)
    to_reload_done_ms: list[float] = field(default_factory=list)
    receive_lag_ms: list[float] = field(default_factory=list)
    own_ms: list[float] = field(default_factory=list)  # excluding the debounce wait
    ingest_ms: list[float] = field(default_factory=list)  # event -> in the registry
    pass_to_file_ms: list[float] = field(default_factory=list)  # pass start -> file written
    inspect_ms: list[float] = field(default_factory=list)  # every inspect in the window
    own_events: int = 0  # events of the containers acted on (the rest: other containers)
    after_last_event_ms: float = math.nan  # the last file write minus the last event
    pass_ms: list[float] = field(default_factory=list)
    rss_mb: float = 0.0
    paced_s: float = 0.0  # paced and churn: seconds between starts, as sent (not the engine's)
    reload_gaps_ms: list[float] = field(default_factory=list)  # between its reloads sent

    @property
    def reloads_per_minute(self) -> float:
        """Reloads over the spread of the scenario's events (a long scenario only)."""
        if self.spread_ms < 10_000:
            return math.nan
        return self.reloads * 60_000 / self.spread_ms

    @property
    def cpu_per_event_ms(self) -> float:
        return self.cpu_ms / self.events if self.events else math.nan


@dataclass
class Report:
    n: int
    burst: int
    singles: int
    mode: str
    quiet_ms: float
    max_ms: float
    setup_s: float = 0.0
    first_pass_s: float = 0.0
    output_bytes: int = 0
    idle_cpu_ms_per_s: float = 0.0
    rss_mb_imports: float = 0.0
    rss_mb_after_first_pass: float = 0.0
    rss_mb_peak: float = 0.0
    scenarios: list[Scenario] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# --------------------------------------------------------------------------- the bench


def make_config(
    run_id: str, output: Path, listen: int, server_port: int, args: argparse.Namespace
) -> Config:
    target: dict[str, Any] = {
        "name": "bench",
        "template": "builtin:nginx",
        "output": str(output),
        "listen": f"127.0.0.1:{listen}",
        "select": {"label": f"{RUN_LABEL}={run_id}"},
        "proxy": {"label": f"{PROXY_LABEL}={run_id}"},
    }
    if args.nginx:
        target.update({"check": "exec", "reload": "signal", "signal": "HUP"})
    else:
        target.update({"check": "none", "reload": "command", "reload_command": ["true"]})
    return parse_config(
        {
            "docker": {"resync": args.resync},
            "debounce": {"quiet": f"{args.quiet}ms", "max": f"{args.max}ms"},
            "targets": [target],
            "server": {"listen": f"127.0.0.1:{server_port}"},
            "log": {"level": "warning"},
        }
    )


async def spawn(*argv: str, stdin: bytes | None = None) -> asyncio.subprocess.Process:
    """Start a helper process; the caller reads the CPU clock after this returns."""
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    if stdin is not None:
        assert proc.stdin is not None
        proc.stdin.write(stdin)
        proc.stdin.close()
    return proc


async def finish(proc: asyncio.subprocess.Process, what: str) -> None:
    assert proc.stderr is not None
    err = await proc.stderr.read()
    if await proc.wait() != 0:
        raise BenchError(f"{what} exited {proc.returncode}: {err.decode(errors='replace')[:500]}")


class Bench:
    def __init__(self, args: argparse.Namespace, fleet: Fleet, report: Report) -> None:
        self.args = args
        self.fleet = fleet
        self.report = report
        self.probe = Probe()
        self.quiet_ns = int(args.quiet * 1_000_000)

    async def run(self, config: Config, running: list[Backend], extra: list[Backend]) -> None:
        daemon = Daemon(config, client_for(config))
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            # Until the daemon installs its own (the same: request_stop), and after.
            loop.add_signal_handler(sig, daemon.request_stop)
        probe = self.probe
        probe.install(daemon)
        daemon_task = asyncio.create_task(daemon.run(), name="bench-daemon")
        measure = asyncio.create_task(self.measure(daemon, running, extra), name="bench-measure")
        try:
            done, _ = await asyncio.wait(
                {daemon_task, measure}, return_when=asyncio.FIRST_COMPLETED
            )
            if measure not in done:
                measure.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await measure
                code = daemon_task.result()
                if code != 0:
                    raise BenchError(f"the daemon exited {code}")
                raise Interrupted()  # its SIGINT/SIGTERM handler stopped it
            measure.result()
        finally:
            daemon.request_stop()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(daemon_task, 40)
            probe.uninstall()

    async def measure(self, daemon: Daemon, running: list[Backend], extra: list[Backend]) -> None:
        args, probe, report = self.args, self.probe, self.report
        singles, rest = extra[: args.singles], extra[args.singles :]
        paced = [rest[i * args.paced : (i + 1) * args.paced] for i in range(len(PACES))]
        rest = rest[len(PACES) * args.paced :]
        burst, churn = rest[: args.burst], rest[args.burst :]
        expected = {b.port for b in running}

        t0 = time.monotonic()
        try:
            await probe.wait(
                lambda: (
                    bool(probe.writes)
                    and expected <= probe.writes[-1].ports
                    and probe.reload_after(probe.writes[-1].at_ns) is not None
                ),
                args.timeout,
                f"the first pass to write all {len(expected)} servers and reload",
            )
        except BenchError as exc:
            raise BenchError(f"{exc}; {self.diagnose(daemon, running)}") from None
        report.first_pass_s = time.monotonic() - t0
        report.output_bytes = probe.writes[-1].size
        report.rss_mb_after_first_pass = rss_mb()

        # Idle CPU: what the daemon costs with nothing happening.
        await asyncio.sleep(1.0)
        c0, w0 = time.process_time(), time.monotonic()
        await asyncio.sleep(2.0)
        report.idle_cpu_ms_per_s = (time.process_time() - c0) * 1000 / (time.monotonic() - w0)

        profiler = cProfile.Profile() if args.profile else None
        if profiler is not None:
            profiler.enable()
        report.scenarios.append(await self.singles(daemon, singles, start=True))
        if profiler is not None:
            profiler.disable()
            profiler.dump_stats(args.profile)
            pstats.Stats(profiler, stream=sys.stderr).sort_stats("tottime").print_stats(30)
        for pace, backends in zip(PACES, paced, strict=True):
            if backends:
                name = f"paced {pace:g}s"
                report.scenarios.append(await self.paced(daemon, backends, pace, name))
        report.scenarios.append(await self.burst(daemon, burst, start=True))
        if churn:
            name = f"churn {args.churn_gap:g}s"
            report.scenarios.append(await self.paced(daemon, churn, args.churn_gap, name))
        report.scenarios.append(await self.singles(daemon, singles, start=False))
        report.scenarios.append(await self.burst(daemon, burst, start=False))
        report.rss_mb_peak = rss_mb()
        if args.nginx and burst:
            report.notes.append(await self.check_routing(burst[0], daemon))

    def diagnose(self, daemon: Daemon, running: list[Backend]) -> str:
        """What the daemon has of the backends a first pass never wrote."""
        probe = self.probe
        last = probe.writes[-1].ports if probe.writes else frozenset()
        missing = [b for b in running if b.port not in last]
        states: dict[str, int] = {}
        for b in missing:
            c = daemon.registry.get(b.cid)
            key = "not in the registry" if c is None else f"{c.state}/{c.health}"
            states[key] = states.get(key, 0) + 1
        return (
            f"{len(probe.writes)} writes, {len(probe.reloads)} reloads, {len(probe.passes)} "
            f"passes, watcher connected={daemon.watcher.connected} "
            f"error={daemon.watcher.last_error!r}, registry {len(daemon.registry)} containers; "
            f"{len(missing)} of {len(running)} backends not in the last write "
            f"(registry state: {states}; e.g. {[b.name for b in missing[:3]]})"
        )

    async def idle(self) -> None:
        """Let the daemon go quiet: nothing pending after the debounce max window."""
        await asyncio.sleep(self.args.max / 1000 + 0.3)

    def _window(self, scenario: Scenario, marks: Marks) -> None:
        """Passes, writes, reloads and CPU from the marks to the last pass that ended."""
        n_writes, n_reloads, n_passes, cpu0, events0, instr0, n_inspects = marks
        probe = self.probe
        passes = probe.passes[n_passes:]
        scenario.passes = len(passes)
        scenario.writes = len(probe.writes) - n_writes
        scenario.reloads = sum(1 for r in probe.reloads[n_reloads:] if r.ok)
        sent = [r.sent_ns for r in probe.reloads[n_reloads:] if r.ok]
        scenario.reload_gaps_ms = [(b - a) / 1e6 for a, b in itertools.pairwise(sent)]
        scenario.pass_ms = [(p.ended_ns - p.started_ns) / 1e6 for p in passes]
        scenario.inspect_ms += [d * 1000 for _, d in probe.inspects[n_inspects:]]
        if passes:
            last = passes[-1]
            instrument = (probe.instrument_cpu - instr0 * 1e-9) * 1000
            scenario.cpu_ms = (last.cpu - cpu0) * 1000 - instrument
            scenario.events = last.events_seen - events0
        scenario.rss_mb = rss_mb()

    def _marks(self, daemon: Daemon) -> Marks:
        probe = self.probe
        return (
            len(probe.writes),
            len(probe.reloads),
            len(probe.passes),
            time.process_time(),
            daemon.watcher.events_seen,
            int(probe.instrument_cpu * 1e9),
            len(probe.inspects),
        )

    def _latencies(
        self, scenario: Scenario, backend: Backend, start: bool, since_ns: int, write_index: int
    ) -> int:
        """Record one container's figures; its event time."""
        probe = self.probe
        actions = ("start",) if start else STOP_ACTIONS
        event_ns = probe.event_time(backend.cid, actions, since_ns)
        if event_ns is None:
            raise BenchError(f"no {'/'.join(actions)} event seen for {backend.name}")
        write = probe.first_write(self._settles([backend], start), write_index)
        if write is None:
            raise BenchError(f"no write {'with' if start else 'without'} {backend.name}")
        reload = probe.reload_after(write.at_ns)
        if reload is None:
            raise BenchError(f"no reload after the write for {backend.name}")
        scenario.to_file_ms.append((write.at_ns - event_ns) / 1e6)
        scenario.to_reload_sent_ms.append((reload.sent_ns - event_ns) / 1e6)
        scenario.to_reload_done_ms.append((reload.done_ns - event_ns) / 1e6)
        seen = probe.first_seen(backend.cid, actions, since_ns)
        if seen is not None:
            scenario.receive_lag_ms.append((seen.received_ns - seen.time_nano) / 1e6)
            the_pass = probe.pass_of(write.at_ns)
            if the_pass is not None and seen.applied_ns:
                # lbsync's own time: the event in (stream + inspect), then its pass until the
                # write; what is left of the latency is waiting in the debounce window.
                ingest = seen.applied_ns - seen.time_nano
                in_pass = write.at_ns - the_pass.started_ns
                scenario.ingest_ms.append(ingest / 1e6)
                scenario.pass_to_file_ms.append(in_pass / 1e6)
                scenario.own_ms.append((ingest + in_pass) / 1e6)
        return event_ns

    @staticmethod
    def _settles(backends: Sequence[Backend], start: bool) -> Callable[[Write], bool]:
        """Does a write hold every one of them (start), or none of them (stop)?"""
        ports = frozenset(b.port for b in backends)
        if start:
            return lambda write: ports <= write.ports
        return lambda write: not (ports & write.ports)

    def _done_check(
        self, backends: Sequence[Backend], start: bool, since_ns: int, index: int
    ) -> Callable[[], bool]:
        """Every container's event seen, written, and a reload sent after that write."""
        probe = self.probe
        actions = ("start",) if start else STOP_ACTIONS
        settles = self._settles(backends, start)

        def done() -> bool:
            if any(probe.event_time(b.cid, actions, since_ns) is None for b in backends):
                return False
            write = probe.first_write(settles, index)
            return write is not None and probe.reload_after(write.at_ns) is not None

        return done

    async def singles(self, daemon: Daemon, backends: list[Backend], start: bool) -> Scenario:
        verb = "start" if start else "stop"
        scenario = Scenario(f"single {verb}", len(backends), quiet_applies=start)
        total_cpu = 0.0
        for backend in backends:
            await self.idle()
            since = time.time_ns() - 1_000_000
            argv = (
                [DOCKER, verb, backend.cid] if start else [DOCKER, "stop", "-t", "10", backend.cid]
            )
            wall0 = time.monotonic()
            proc = await spawn(*argv)
            marks = self._marks(daemon)
            index = marks[0]
            await self.probe.wait(
                self._done_check([backend], start, since, index),
                self.args.timeout,
                f"{verb} of {backend.name} written and reloaded",
            )
            await finish(proc, f"docker {verb}")
            await self.idle()
            scenario.wall_s += time.monotonic() - wall0
            one = Scenario("", 1, start)
            self._window(one, marks)
            total_cpu += one.cpu_ms
            scenario.events += one.events
            scenario.passes += one.passes
            scenario.writes += one.writes
            scenario.reloads += one.reloads
            scenario.pass_ms += one.pass_ms
            scenario.inspect_ms += one.inspect_ms
            scenario.own_events += self.probe.count_events([backend.cid], since)
            event_ns = self._latencies(scenario, backend, start, since, index)
            write = self.probe.first_write(self._settles([backend], start), index)
            assert write is not None
            scenario.after_last_event_ms = (write.at_ns - event_ns) / 1e6
        scenario.cpu_ms = total_cpu
        scenario.rss_mb = rss_mb()
        return scenario

    async def paced(
        self, daemon: Daemon, backends: list[Backend], pace: float, name: str
    ) -> Scenario:
        """Start the backends one by one, `pace` seconds apart, without waiting for lbsync."""
        scenario = Scenario(name, len(backends), quiet_applies=True, paced_s=pace)
        await self.idle()
        since = time.time_ns() - 1_000_000
        marks = self._marks(daemon)
        index = marks[0]
        loop = asyncio.get_running_loop()
        wall0 = loop.time()
        procs = []
        for i, backend in enumerate(backends):
            delay = wall0 + i * pace - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            procs.append(await spawn(DOCKER, "start", backend.cid))
        await self.probe.wait(
            self._done_check(backends, True, since, index),
            self.args.timeout,
            f"{name}: {len(backends)} starts written and reloaded",
        )
        for proc in procs:
            await finish(proc, "docker start")
        await self.idle()  # later passes, if any, count too
        scenario.wall_s = loop.time() - wall0
        self._figures(scenario, backends, True, since, marks)
        return scenario

    async def burst(self, daemon: Daemon, backends: list[Backend], start: bool) -> Scenario:
        verb = "start" if start else "stop"
        scenario = Scenario(f"burst {verb}", len(backends), quiet_applies=start)
        if not backends:
            return scenario
        await self.idle()
        since = time.time_ns() - 1_000_000
        ids = "".join(f"{b.cid}\n" for b in backends).encode()
        extra = [] if start else ["-t", "10"]
        wall0 = time.monotonic()
        proc = await spawn(
            "xargs", "-P", str(len(backends)), "-n", "1", DOCKER, verb, *extra, stdin=ids
        )
        marks = self._marks(daemon)
        index = marks[0]
        await self.probe.wait(
            self._done_check(backends, start, since, index),
            self.args.timeout,
            f"burst {verb} of {len(backends)} written and reloaded",
        )
        await finish(proc, f"xargs docker {verb}")
        await self.idle()  # later passes of the burst, if any, count too
        scenario.wall_s = time.monotonic() - wall0
        self._figures(scenario, backends, start, since, marks)
        return scenario

    def _figures(
        self, scenario: Scenario, backends: list[Backend], start: bool, since: int, marks: Marks
    ) -> None:
        """A scenario of several containers at once: its window, then each one's latency."""
        self._window(scenario, marks)
        scenario.own_events = self.probe.count_events([b.cid for b in backends], since)
        times = [self._latencies(scenario, b, start, since, marks[0]) for b in backends]
        scenario.spread_ms = (max(times) - min(times)) / 1e6
        last_write = self.probe.first_write(self._settles(backends, start), marks[0])
        assert last_write is not None
        scenario.after_last_event_ms = (last_write.at_ns - max(times)) / 1e6

    async def check_routing(self, backend: Backend, daemon: Daemon) -> str:
        """--nginx: one request through the reloaded nginx to a host of the burst."""
        listen = daemon.config.targets[0].listen.rsplit(":", 1)[1]
        await finish(await spawn(DOCKER, "start", backend.cid), "docker start")
        await asyncio.sleep(self.args.quiet / 1000 + 1.0)

        def get() -> str:
            import http.client

            conn = http.client.HTTPConnection("127.0.0.1", int(listen), timeout=5)
            try:
                conn.request("GET", "/", headers={"Host": backend.host})
                resp = conn.getresponse()
                return f"{resp.status} {resp.read().decode(errors='replace').strip()}"
            finally:
                conn.close()

        try:
            answer = await asyncio.to_thread(get)
        except OSError as exc:
            answer = f"error {exc}"
        return f"routing check through nginx for {backend.host}: {answer}"


# --------------------------------------------------------------------------- report


def fmt_ms(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:,.1f}"


def table(report: Report) -> str:
    rows: list[tuple[str, Callable[[Scenario], str]]] = [
        ("containers acted on", lambda s: str(s.containers)),
        ("events received (own)", lambda s: f"{s.events} ({s.own_events})"),
        ("spread of their events (ms)", lambda s: fmt_ms(s.spread_ms) if s.spread_ms else "-"),
        ("event -> lbsync p50 (ms)", lambda s: fmt_ms(percentile(s.receive_lag_ms, 50))),
        ("event -> file p50 (ms)", lambda s: fmt_ms(percentile(s.to_file_ms, 50))),
        ("event -> file p99 (ms)", lambda s: fmt_ms(percentile(s.to_file_ms, 99))),
        ("  p50 minus quiet (ms)", lambda s: minus_quiet(report, s, 50, s.to_file_ms)),
        ("  p99 minus quiet (ms)", lambda s: minus_quiet(report, s, 99, s.to_file_ms)),
        ("event -> reload sent p50", lambda s: fmt_ms(percentile(s.to_reload_sent_ms, 50))),
        ("event -> reload sent p99", lambda s: fmt_ms(percentile(s.to_reload_sent_ms, 99))),
        ("  p99 minus quiet (ms)", lambda s: minus_quiet(report, s, 99, s.to_reload_sent_ms)),
        ("event -> reload done p99", lambda s: fmt_ms(percentile(s.to_reload_done_ms, 99))),
        ("last event -> file (ms)", lambda s: fmt_ms(s.after_last_event_ms)),
        ("event -> registry p50/p99", lambda s: p50_p99(s.ingest_ms)),
        ("pass start -> file p50/p99", lambda s: p50_p99(s.pass_to_file_ms)),
        ("ingest+pass to file p50", lambda s: fmt_ms(percentile(s.own_ms, 50))),
        ("ingest+pass to file p99", lambda s: fmt_ms(percentile(s.own_ms, 99))),
        ("passes", lambda s: str(s.passes)),
        ("writes", lambda s: str(s.writes)),
        ("reloads", lambda s: str(s.reloads)),
        ("reloads per minute", lambda s: fmt_ms(s.reloads_per_minute)),
        ("gap between reloads min/p50", lambda s: min_p50(s.reload_gaps_ms)),
        ("pass wall p50/max (ms)", pass_times),
        ("inspects", lambda s: str(len(s.inspect_ms))),
        ("inspect p50/p99 (ms)", lambda s: p50_p99(s.inspect_ms)),
        (
            "other events per s",
            lambda s: f"{(s.events - s.own_events) / s.wall_s:.1f}" if s.wall_s else "-",
        ),
        ("lbsync CPU (ms)", lambda s: fmt_ms(s.cpu_ms)),
        ("CPU per event (ms)", lambda s: fmt_ms(s.cpu_per_event_ms)),
        (
            "CPU per own event (ms)",
            lambda s: fmt_ms(s.cpu_ms / s.own_events if s.own_events else math.nan),
        ),
        ("peak RSS after (MB)", lambda s: f"{s.rss_mb:.1f}"),
    ]
    width = 26
    head = f"{'':<{width}}" + "".join(f"{s.name:>13}" for s in report.scenarios)
    lines = [head, "-" * len(head)]
    for label, cell in rows:
        lines.append(f"{label:<{width}}" + "".join(f"{cell(s):>13}" for s in report.scenarios))
    return "\n".join(lines)


def minus_quiet(report: Report, s: Scenario, pct: float, values: Sequence[float]) -> str:
    if not s.quiet_applies:
        return "(no quiet)"
    return fmt_ms(percentile(values, pct) - report.quiet_ms)


def p50_p99(values: Sequence[float]) -> str:
    if not values:
        return "-"
    return f"{percentile(values, 50):.0f}/{percentile(values, 99):.0f}"


def min_p50(values: Sequence[float]) -> str:
    if not values:
        return "-"
    return f"{min(values):.0f}/{percentile(values, 50):.0f}"


def pass_times(s: Scenario) -> str:
    if not s.pass_ms:
        return "-"
    return f"{percentile(s.pass_ms, 50):.0f}/{max(s.pass_ms):.0f}"


def summary(report: Report) -> str:
    mode = (
        "lab nginx (check exec nginx -t, reload signal HUP)"
        if report.mode == "nginx"
        else ('reload: command ["true"], check: none')
    )
    lines = [
        f"lbsync daemon bench: N={report.n} running, burst={report.burst}, "
        f"singles={report.singles}; {mode}; debounce quiet {report.quiet_ms:g} ms, "
        f"max {report.max_ms:g} ms",
        f"setup {report.setup_s:.1f} s; first pass (list + inspect + write + reload) "
        f"{report.first_pass_s:.2f} s; output {report.output_bytes / 1024:,.0f} KiB; "
        f"idle CPU {report.idle_cpu_ms_per_s:.2f} ms/s",
        f"peak RSS (ru_maxrss, whole process): {report.rss_mb_imports:.1f} MB after the "
        f"imports, {report.rss_mb_after_first_pass:.1f} MB after the first pass, "
        f"{report.rss_mb_peak:.1f} MB at the end",
        "",
        table(report),
    ]
    verdict = []
    for s in report.scenarios:
        if s.to_file_ms and (s.name == "single start" or s.name.startswith("paced")):
            p99 = percentile(s.to_file_ms, 99) - report.quiet_ms
            verdict.append(f"{s.name} p99 beyond quiet {p99:.1f} ms (target <= {TARGET_P99_MS:g})")
        elif s.name == "burst start" and s.containers:
            spread_bound = math.floor(s.spread_ms / report.max_ms) + 1 if s.spread_ms > 4000 else 0
            verdict.append(
                f"burst of {s.containers} starts over {s.spread_ms / 1000:.1f} s: {s.reloads} "
                f"reloads (target <= {max(TARGET_BURST_RELOADS, spread_bound)})"
            )
        elif s.name.startswith("churn") and s.containers:
            # The first start of the churn is lone (its own pass after `quiet`); from then
            # on a round lasts `max`: the gaps after the first reload are what the target says.
            steady = s.reload_gaps_ms[1:]
            gap = percentile(steady, 50) if steady else math.nan
            verdict.append(
                f"{s.name}: {fmt_ms(s.reloads_per_minute)} reloads per minute, p50 gap between "
                f"reloads after the first {fmt_ms(gap)} ms (target: one reload per max, a gap "
                f">= {report.max_ms:g} ms)"
            )
    cpus = [s.cpu_per_event_ms for s in report.scenarios if s.events]
    if cpus:
        verdict.append(
            f"CPU per event {min(cpus):.2f}..{max(cpus):.2f} ms (target <= {TARGET_CPU_MS:g})"
        )
    added = report.rss_mb_peak - report.rss_mb_imports
    verdict.append(
        f"peak RSS {report.rss_mb_peak:.1f} MB, {added:.1f} MB above the imports (target <= "
        f"{TARGET_ADDED_MB:g} at 1,000, for lbsync alone: see bench_rss)"
    )
    lines += ["", "; ".join(verdict)]
    lines += report.notes
    return "\n".join(lines)


# --------------------------------------------------------------------------- main


@contextlib.contextmanager
def interruptible() -> Iterator[None]:
    """SIGTERM raises KeyboardInterrupt like Ctrl-C, so the cleanup always runs."""

    def on_term(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def uninterrupted() -> Iterator[None]:
    """Ignore Ctrl-C and SIGTERM while the containers are removed."""
    old_int = signal.signal(signal.SIGINT, signal.SIG_IGN)
    old_term = signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old_int)
        signal.signal(signal.SIGTERM, old_term)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.bench_daemon",
        description="The lbsync daemon in-process against the lab engine.",
    )
    parser.add_argument("--n", type=int, default=50, help="running backends (default 50)")
    parser.add_argument("--burst", type=int, default=50, help="containers per burst (default 50)")
    parser.add_argument("--singles", type=int, default=10, help="one-at-a-time starts/stops")
    parser.add_argument(
        "--paced", type=int, default=10, help="starts per paced scenario (2 s and 1.5 s apart)"
    )
    parser.add_argument(
        "--churn-for", type=float, default=30.0, help="sustained churn: seconds (0: none)"
    )
    parser.add_argument(
        "--churn-gap", type=float, default=0.3, help="sustained churn: seconds between starts"
    )
    parser.add_argument(
        "--keep-running",
        action="store_true",
        help="leave the running backends for a later run's --fleet (another version side by "
        "side on the same containers; the last run leaves it off to remove them)",
    )
    parser.add_argument(
        "--fleet", metavar="RUN_ID", help="use the running backends a --keep-running run left"
    )
    parser.add_argument("--nginx", action="store_true", help="the real lab nginx as the proxy")
    parser.add_argument("--quiet", type=float, default=200.0, help="debounce quiet, ms")
    parser.add_argument("--max", type=float, default=2000.0, help="debounce max, ms")
    parser.add_argument("--resync", default="0", help="docker.resync (default 0: off)")
    parser.add_argument("--timeout", type=float, default=300.0, help="per wait, seconds")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    parser.add_argument(
        "--profile", type=Path, help="cProfile the single starts into this file (and print it)"
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    run_id = args.fleet or secrets.token_hex(5)
    fleet = Fleet(run_id)
    report = Report(
        rss_mb_imports=rss_mb(),
        n=args.n,
        burst=args.burst,
        singles=args.singles,
        mode="nginx" if args.nginx else "command",
        quiet_ms=args.quiet,
        max_ms=args.max,
    )
    code = 0
    with interruptible(), tempfile.TemporaryDirectory(prefix="lbsync-bench-") as tmp:
        try:
            print(f"bench run {run_id}: starting {args.n} backends ...", file=sys.stderr,
                  flush=True)  # fmt: skip
            churn = round(args.churn_for / args.churn_gap) if args.churn_for > 0 else 0
            extra_count = args.singles + len(PACES) * args.paced + args.burst + churn
            ports = free_ports(args.n + extra_count + 2)
            listen, server_port = ports[-2:]
            conf_dir = Path(tmp) / "conf.d"
            conf_dir.mkdir()
            t0 = time.monotonic()
            if args.nginx:
                fleet.nginx(conf_dir)
            if args.fleet:
                running = fleet.adopt_running()
                report.n = len(running)
                report.notes.append(f"the {len(running)} running backends of run {run_id}")
            else:
                running = fleet.backends("run", "r", ports[: args.n])
                if args.keep_running:
                    fleet.kept.update(b.cid for b in running)
            up = set(
                docker(
                    "ps", "-q", "--no-trunc",
                    "--filter", f"label={RUN_LABEL}={run_id}",
                    "--filter", "status=running",
                ).split()
            )  # fmt: skip
            dead = [b for b in running if b.cid not in up]
            if dead:
                fmt = "{{.State.Status}} exit {{.State.ExitCode}} {{.State.Error}}"
                why = docker("inspect", "--format", fmt, dead[0].cid)
                report.notes.append(
                    f"{len(dead)} of {len(running)} backends were not running after setup "
                    f"(e.g. {dead[0].name}: {why!r}); measured without them"
                )
                running = [b for b in running if b.cid in up]
            extra = fleet.backends("create", "x", ports[args.n : -2])
            report.setup_s = time.monotonic() - t0
            print(f"bench run {run_id}: {len(fleet.ids)} containers in {report.setup_s:.1f} s; "
                  "measuring ...", file=sys.stderr, flush=True)  # fmt: skip
            config = make_config(run_id, conf_dir / "lbsync.conf", listen, server_port, args)
            asyncio.run(Bench(args, fleet, report).run(config, running, extra))
            print(summary(report))
            if args.json:
                args.json.write_text(json.dumps(asdict(report), indent=1))
        except (KeyboardInterrupt, Interrupted):
            print("\ninterrupted", file=sys.stderr)
            code = 130
        except BenchError as exc:
            print(f"bench failed: {exc}", file=sys.stderr)
            code = 1
        finally:
            with uninterrupted():
                print(f"bench run {run_id}: removing its containers ...", file=sys.stderr)
                if not args.keep_running:
                    fleet.kept.clear()
                removed = fleet.cleanup()
                print(f"bench run {run_id}: removed {removed} containers", file=sys.stderr)
                if fleet.kept:
                    print(f"bench run {run_id}: {len(fleet.kept)} running backends kept: "
                          f"--fleet {run_id}", file=sys.stderr)  # fmt: skip
    return code


if __name__ == "__main__":
    raise SystemExit(main())
