"""Memory and CPU of the real `lbsync run` process at N running containers, on the lab engine.

    python -m bench.bench_rss [--n 1000] [--singles 30] [--resync 10] [--idle 20]
                              [--soak CYCLES] [--image IMAGE]
                              [--json FILE]

`bench.bench_daemon` runs the daemon inside the bench process, so its RSS includes the bench.
This one starts `python -m lbsync run -c FILE` from this checkout as a subprocess and reads
that process's own figures from /proc/<pid>/status (VmHWM: the peak since it started;
VmRSS, RssAnon, RssFile: now) and /proc/<pid>/smaps (the resident part of the heap, of the
other anonymous mappings: pymalloc arenas, glibc's per-thread malloc arenas, thread stacks;
and of the files mapped: libpython, libcrypto, the extension modules), at these stages:

1. `N=0`: lbsync started before any backend; its first pass wrote a file without servers.
2. `N=<n>`: `--n` labelled backends started (`docker run -d`, 16 at a time, as
   `bench.bench_daemon` does), the file holds all of them, `/healthz` answers 200, and then
   `--resync` * 1.5 seconds more, so at least one re-list at N is in the peak (every
   `docker.resync` the daemon reads the whole listing and inspects what it shows changed).
3. `steady`: `--singles` extra containers started and stopped one at a time, each waited for
   in the file. Before them, lbsync's idle CPU is measured over `--idle` seconds (with
   `--resync` re-lists in them), then its config is rewritten with `resync: 0s` and it gets
   a SIGHUP, and the idle CPU measured again: the singles are about events alone.
   lbsync's CPU (each thread's time on a CPU from /proc/<pid>/task/*/schedstat, in ns) is
   summed from each `docker start` to the file holding the container, and from each
   `docker stop` to the file without it; divided by the engine events lbsync received
   meanwhile (`lbsync_events_total` from its /metrics, read before and after), it is the
   issue's "CPU per event" for a real process, without a bench inside it. Also shown less
   what its timers cost over the same seconds at the idle rate without re-lists.
4. `soak <i>` (with `--soak C`): C containers that lbsync has never seen, SOAK_CONCURRENCY at
   a time: each new (its own id, name and host) is run, waited for in the file, stopped
   (`docker stop`), removed and waited for out of the file, as a host with deploys all day
   sees them. A sample every C/10 of them; the summary gives VmRSS's growth per 100 over the second
   half, when the bounded memories (the registry's change log, the label parser's memo) are
   full: a daemon that runs for months must not grow with the containers it has seen.
5. `cold start`: a second lbsync process started at N (its first listing inspects every
   container at once), measured when its file holds all N.

The config is a YAML file: `check: none`, `reload: command` with `["true"]`, the output in
a temp dir, `select` on this run's label (other containers on the engine are not routed, but
lbsync keeps every container of the engine in its registry: the table says how many the
engine had), `server.listen` on a free 127.0.0.1 port, `log.level: warning`. `--daemon-env
KEY=VALUE` (repeatable) sets an environment variable for the lbsync processes, e.g.
`MALLOC_ARENA_MAX=2`; `--env-vars K` gives every backend K more environment variables of
about 60 bytes each (containers in the wild carry dozens; lbsync reads three).
`--health-interval S` gives every backend a HEALTHCHECK (a wget of its port) every S seconds:
the idle figures then include what the probes cost lbsync (the engine sends it no exec_*
event of theirs; health_status events only when a status changes).

`--image lbsync:dev` runs lbsync as people deploy it instead: a container of that local image
(`deploy/build-image.sh` builds it; its own Python, only the declared dependencies), with
`--network host`, the engine's socket and the socket's group, the config and the output
directory mounted; its main process is read from this host's /proc.

Every container carries `lbsync-test=1` and `lbsync-run=<run id>` and is removed by id at
the end, also on Ctrl-C or SIGTERM; the lbsync processes are stopped by pid (SIGTERM), an
lbsync container by `docker stop` and then removed by id.
Target from the issue: RSS <= 40 MB at 1,000 running containers. Figures only: nothing is
asserted.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import queue
import re
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bench.bench_daemon import (
    RUN_LABEL,
    SERVER_RE,
    TARGET_ADDED_MB,
    TARGET_CPU_MS,
    Backend,
    BenchError,
    Fleet,
    docker,
    free_ports,
    interruptible,
    uninterrupted,
)
from tests.support.lab import DOCKER

REPO = Path(__file__).resolve().parent.parent
POLL = 0.1  # seconds between looks at the output file
STOP_GRACE = 30.0  # seconds lbsync gets to exit after SIGTERM
DOCKER_SOCKET = "/var/run/docker.sock"
IMAGE_CONFIG = "/etc/lbsync/lbsync.yaml"  # --image: where the config is mounted
IMAGE_OUTPUT_DIR = "/run/lbsync-out"  # --image: where the output directory is mounted
SOAK_CONCURRENCY = 4  # --soak: containers in their cycle at once


# --------------------------------------------------------------------------- /proc


@dataclass
class Sample:
    """One look at a process's memory, in KiB (from /proc)."""

    stage: str
    engine_containers: int  # every container of the engine: lbsync keeps all of them
    hwm: int  # VmHWM: peak resident set since the process started
    rss: int  # VmRSS
    anon: int  # RssAnon
    file: int  # RssFile (+ RssShmem)
    heap: int  # resident part of [heap] (brk: the main thread's malloc arena)
    other_anon: int  # the other anonymous mappings: pymalloc, thread arenas and stacks
    threads: int
    seconds: float  # since lbsync started
    files: dict[str, int] = field(default_factory=dict)  # the biggest file mappings


def read_status(pid: int) -> dict[str, int]:
    fields: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        words = value.split()
        if words and words[0].isdigit():
            fields[key] = int(words[0])
    return fields


def read_smaps(pid: int) -> tuple[int, int, dict[str, int]]:
    """Resident KiB of [heap], of the other anonymous mappings, and per mapped file."""
    heap = anon = 0
    files: dict[str, int] = {}
    name = ""
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        words = line.split()
        if not words:
            continue
        if not words[0].endswith(":"):  # a mapping's header: address perms offset dev inode path
            name = words[5] if len(words) > 5 else ""
        elif words[0] == "Rss:":
            kib = int(words[1])
            if name == "[heap]":
                heap += kib
            elif name == "" or name.startswith("[stack"):
                anon += kib
            elif name.startswith("/"):
                files[name] = files.get(name, 0) + kib
    return heap, anon, files


def cpu_seconds(pid: int) -> float:
    """CPU time of the process so far: each thread's time on a CPU, in nanoseconds
    (/proc/<pid>/task/*/schedstat). /proc/<pid>/stat counts exited threads too, but in clock
    ticks of 10 ms: an idle second of lbsync is about 1 ms, so every reading of it would be
    off by up to ten times what it measures. lbsync's threads (the default executor's) live
    as long as the process; where schedstat cannot be read, the ticks."""
    total = 0
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(FileNotFoundError, ProcessLookupError):  # a thread ended
                total += int((task / "schedstat").read_text().split()[0])
    except OSError:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        utime, stime = int(fields[11]), int(fields[12])  # fields 14 and 15 of proc(5)
        return (utime + stime) / os.sysconf("SC_CLK_TCK")
    return total / 1e9


EVENTS_RE = re.compile(rb"^lbsync_events_total\{[^}]*\} ([0-9.e+]+)$", re.MULTILINE)


def events_received(metrics_url: str) -> int:
    """Engine events lbsync has received so far (the sum of lbsync_events_total)."""
    with urllib.request.urlopen(metrics_url, timeout=5) as response:
        body = response.read()
    return int(sum(float(value) for value in EVENTS_RE.findall(body)))


def sample(pid: int, stage: str, started: float) -> Sample:
    status = read_status(pid)
    heap, other, files = read_smaps(pid)
    biggest = dict(sorted(files.items(), key=lambda kv: -kv[1])[:6])
    return Sample(
        stage=stage,
        engine_containers=len(docker("ps", "-aq").split()),
        hwm=status["VmHWM"],
        rss=status["VmRSS"],
        anon=status.get("RssAnon", 0),
        file=status.get("RssFile", 0) + status.get("RssShmem", 0),
        heap=heap,
        other_anon=other,
        threads=status.get("Threads", 0),
        seconds=time.monotonic() - started,
        files=biggest,
    )


# --------------------------------------------------------------------------- lbsync


class RssFleet(Fleet):
    """`Fleet`, whose backends also carry `env_vars` unused environment variables and, with
    `health_interval`, a HEALTHCHECK probing their port that often."""

    def __init__(self, run_id: str, env_vars: int, health_interval: float = 0) -> None:
        super().__init__(run_id)
        self.env_vars = env_vars
        self.health_interval = health_interval

    def labels(self) -> list[str]:
        # Spliced into every `docker run`/`docker create` of the fleet, after the name.
        extra: list[str] = []
        for i in range(self.env_vars):
            extra += ["--env", f"BENCH_SETTING_{i:02d}=value-{i:02d}-{self.run_id}-{'x' * 24}"]
        if self.health_interval > 0:
            # $PORT is the backend's own (the shell in the container expands it).
            extra += ["--health-cmd", "wget -q -O /dev/null http://127.0.0.1:$PORT/",
                      "--health-interval", f"{self.health_interval:g}s",
                      "--health-retries", "3"]  # fmt: skip
        return super().labels() + extra


@dataclass
class Lbsync:
    """One lbsync daemon (a subprocess, or a container of `--image`) and the files it writes."""

    output: Path
    health_url: str
    started: float

    @property
    def pid(self) -> int:
        raise NotImplementedError

    def alive(self) -> None:
        """Raise BenchError when the daemon is gone."""
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def signal_hup(self) -> None:
        raise NotImplementedError

    def set_resync(self, config: Path, seconds: float) -> None:
        """Rewrite `docker.resync` in its config file (in place: a mounted file stays the
        same inode), SIGHUP, and give it a moment to re-read."""
        data = yaml.safe_load(config.read_text())
        data["docker"]["resync"] = f"{seconds:g}s"
        config.write_text(yaml.safe_dump(data, sort_keys=False))
        self.signal_hup()
        time.sleep(1.0)
        self.alive()

    def servers(self) -> frozenset[int]:
        """Ports of the servers in the file lbsync wrote last (empty before its first)."""
        try:
            data = self.output.read_bytes()
        except FileNotFoundError:
            return frozenset()
        return frozenset(int(p) for p in SERVER_RE.findall(data))

    def written(self) -> bool:
        return self.output.exists()

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(self.health_url, timeout=2) as response:
                return bool(response.status == 200)
        except (urllib.error.URLError, OSError):
            return False


@dataclass
class LocalLbsync(Lbsync):
    """`python -m lbsync run` from this checkout, as a subprocess."""

    proc: subprocess.Popen[bytes] = field(repr=False, kw_only=True)
    stderr: Path = field(kw_only=True)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> None:
        if self.proc.poll() is not None:
            raise BenchError(f"lbsync (pid {self.pid}) exited {self.proc.returncode}: "
                             f"{self.stderr_tail()}")  # fmt: skip

    def stderr_tail(self) -> str:
        try:
            return self.stderr.read_text(errors="replace")[-2000:].strip() or "(no output)"
        except OSError:
            return "(no output)"

    def signal_hup(self) -> None:
        os.kill(self.pid, signal.SIGHUP)

    def stop(self) -> None:
        """SIGTERM by pid, then SIGKILL if it is still there after the grace time."""
        if self.proc.poll() is not None:
            return
        os.kill(self.pid, signal.SIGTERM)
        try:
            self.proc.wait(STOP_GRACE)
        except subprocess.TimeoutExpired:
            os.kill(self.pid, signal.SIGKILL)
            self.proc.wait()


@dataclass
class ContainerLbsync(Lbsync):
    """`lbsync run` in a container of the `--image`, as people deploy it; its main process
    is read from this host's /proc (the engine's State.Pid)."""

    cid: str = field(kw_only=True)
    main_pid: int = field(kw_only=True)

    @property
    def pid(self) -> int:
        return self.main_pid

    def alive(self) -> None:
        running = docker("inspect", "-f", "{{.State.Running}}", self.cid)
        if running != "true":
            logs = subprocess.run(
                [DOCKER, "logs", "--tail", "20", self.cid], capture_output=True, text=True
            )
            raise BenchError(f"lbsync container {self.cid[:12]} stopped: "
                             f"{(logs.stdout + logs.stderr).strip()[-2000:]}")  # fmt: skip

    def signal_hup(self) -> None:
        docker("kill", "--signal", "HUP", self.cid)

    def stop(self) -> None:
        """`docker stop` (SIGTERM, then SIGKILL after the grace time), then removed by id."""
        with contextlib.suppress(BenchError, subprocess.SubprocessError):
            docker("stop", "-t", f"{STOP_GRACE:g}", self.cid, timeout=STOP_GRACE + 30)
        with contextlib.suppress(BenchError, subprocess.SubprocessError):
            docker("rm", "--force", self.cid)


def write_config(
    path: Path, run_id: str, output: Path, listen: int, server_port: int, resync: float
) -> None:
    config = {
        "docker": {"resync": f"{resync:g}s"},
        "targets": [
            {
                "name": "bench",
                "template": "builtin:nginx",
                "output": str(output),
                "listen": f"127.0.0.1:{listen}",
                "select": {"label": f"{RUN_LABEL}={run_id}"},
                "check": "none",
                "reload": "command",
                "reload_command": ["true"],
            }
        ],
        "server": {"listen": f"127.0.0.1:{server_port}"},
        "log": {"level": "warning"},
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))


def start_lbsync(
    tmp: Path, name: str, run_id: str, ports: tuple[int, int], args: argparse.Namespace
) -> Lbsync:
    listen, server_port = ports
    config = config_of(tmp, name)
    output = tmp / name / "lbsync.conf"
    output.parent.mkdir()
    health_url = f"http://127.0.0.1:{server_port}/healthz"
    if args.image:
        output.parent.chmod(0o777)  # the image runs as its own uid (10001)
        write_config(config, run_id, Path(IMAGE_OUTPUT_DIR) / output.name, listen, server_port,
                     args.resync)  # fmt: skip
        config.chmod(0o644)
        socket_gid = os.stat(DOCKER_SOCKET).st_gid
        env_args = [arg for item in args.daemon_env for arg in ("--env", item)]
        cid = docker(
            "run", "-d", "--network", "host", "--label", "lbsync-test=1",
            "--label", f"lbsync-bench-daemon={run_id}", "--name", f"lbsync-rss-{run_id}-{name}",
            "--group-add", str(socket_gid), "-v", f"{DOCKER_SOCKET}:{DOCKER_SOCKET}",
            "-v", f"{output.parent}:{IMAGE_OUTPUT_DIR}", "-v", f"{config}:{IMAGE_CONFIG}:ro",
            *env_args, args.image, "run", "-c", IMAGE_CONFIG,
        )  # fmt: skip
        started = time.monotonic()
        pid = int(docker("inspect", "-f", "{{.State.Pid}}", cid))
        return ContainerLbsync(output, health_url, started, cid=cid, main_pid=pid)
    write_config(config, run_id, output, listen, server_port, args.resync)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    for item in args.daemon_env:
        key, _, value = item.partition("=")
        env[key] = value
    stderr = tmp / f"{name}.stderr"
    with stderr.open("wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "lbsync", "run", "-c", str(config)],
            cwd=REPO,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=err,
            stderr=err,
        )
    return LocalLbsync(output, health_url, time.monotonic(), proc=proc, stderr=stderr)


def wait_until(lbsync: Lbsync, condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        lbsync.alive()
        if time.monotonic() > deadline:
            raise BenchError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(POLL)


def config_of(tmp: Path, name: str) -> Path:
    return tmp / f"{name}.yaml"


def idle_cpu(lbsync: Lbsync, seconds: float, what: str) -> float:
    """lbsync's CPU in ms per second over `seconds` of nothing happening on the engine."""
    print(f"{seconds:g} s idle ({what}) ...", file=sys.stderr, flush=True)
    cpu0, wall0 = cpu_seconds(lbsync.pid), time.monotonic()
    time.sleep(seconds)
    return (cpu_seconds(lbsync.pid) - cpu0) * 1000 / (time.monotonic() - wall0)


def holds(ports: frozenset[int], lbsync: Lbsync) -> Callable[[], bool]:
    return lambda: ports <= lbsync.servers()


def lacks(ports: frozenset[int], lbsync: Lbsync) -> Callable[[], bool]:
    return lambda: not (ports & lbsync.servers())


# --------------------------------------------------------------------------- the bench


@dataclass
class CpuFigures:
    """lbsync's CPU over the single starts and stops at N (the engine's events included)."""

    starts: int
    start_cpu_ms: float  # from `docker start` until the file holds the container
    stop_cpu_ms: float  # from `docker stop` until the file no longer does
    events: int  # engine events lbsync received meanwhile (a start is `start` + a network
    # `connect`; a stop is `kill`, `die`, `stop` and a `disconnect`)
    seconds: float  # wall time of all those windows together

    @property
    def per_event_ms(self) -> float:
        return (self.start_cpu_ms + self.stop_cpu_ms) / self.events if self.events else 0.0


@dataclass
class Report:
    n: int
    singles: int
    resync: float
    env_vars: int
    health_interval: float
    daemon_env: list[str]
    python: str
    import_floor_kb: int = 0  # VmHWM of a process that only imports what `lbsync run` does
    samples: list[Sample] = field(default_factory=list)
    cpu: CpuFigures | None = None
    idle_cpu_ms_per_s: float | None = None  # at N, nothing happening but re-lists
    idle_cpu_no_resync_ms_per_s: float | None = None  # at N, nothing happening at all
    soak: list[tuple[int, Sample]] = field(default_factory=list)  # (containers so far, sample)
    notes: list[str] = field(default_factory=list)


def running_backends(fleet: Fleet, backends: list[Backend], report: Report) -> list[Backend]:
    """The backends that are running (a few may have died of a port taken meanwhile)."""
    up = set(docker("ps", "-q", "--no-trunc", "--filter", f"label={RUN_LABEL}={fleet.run_id}",
                    "--filter", "status=running").split())  # fmt: skip
    dead = [b for b in backends if b.cid not in up]
    if dead:
        report.notes.append(
            f"{len(dead)} of {len(backends)} backends were not running after setup "
            f"(e.g. {dead[0].name}); measured without them"
        )
    return [b for b in backends if b.cid in up]


def run(args: argparse.Namespace, fleet: RssFleet, tmp: Path, report: Report) -> None:
    daemons: list[Lbsync] = []
    try:
        ports = free_ports(args.n + max(args.singles, SOAK_CONCURRENCY) + 4)
        main = start_lbsync(tmp, "lbsync", fleet.run_id, (ports[-4], ports[-3]), args)
        daemons.append(main)
        print(f"lbsync pid {main.pid}; waiting for its first pass ...", file=sys.stderr)
        wait_until(main, main.written, args.timeout, "the first file written")
        wait_until(main, main.healthy, args.timeout, "/healthz to answer 200")
        time.sleep(args.settle)
        report.samples.append(sample(main.pid, "N=0", main.started))

        print(f"starting {args.n} backends ...", file=sys.stderr, flush=True)
        t0 = time.monotonic()
        backends = running_backends(fleet, fleet.backends("run", "r", ports[: args.n]), report)
        extra = fleet.backends("create", "x", ports[args.n : args.n + args.singles])
        print(f"{len(fleet.ids)} containers in {time.monotonic() - t0:.0f} s; waiting for "
              "lbsync ...", file=sys.stderr, flush=True)  # fmt: skip
        expected = frozenset(b.port for b in backends)
        wait_until(main, holds(expected, main), args.timeout, f"all {len(expected)} servers")
        wait_until(main, main.healthy, args.timeout, "/healthz to answer 200")
        time.sleep(args.settle + 1.5 * args.resync)  # at least one full re-list at N
        report.samples.append(sample(main.pid, f"N={len(expected)}", main.started))

        if args.idle > 0 and args.resync > 0:
            report.idle_cpu_ms_per_s = idle_cpu(main, args.idle, "re-listing")
        if args.resync > 0:
            # Re-lists are measured above; the singles below are about events alone.
            main.set_resync(config_of(tmp, "lbsync"), 0)
        if args.idle > 0:
            report.idle_cpu_no_resync_ms_per_s = idle_cpu(main, args.idle, "no re-list")
        print(f"{args.singles} single starts and stops ...", file=sys.stderr, flush=True)
        metrics_url = main.health_url.replace("/healthz", "/metrics")
        events0 = events_received(metrics_url)
        start_cpu = stop_cpu = 0.0
        wall0 = time.monotonic()
        for backend in extra:
            one = frozenset({backend.port})
            cpu0 = cpu_seconds(main.pid)
            docker("start", backend.cid)
            wait_until(main, holds(one, main), args.timeout, f"{backend.name} written")
            cpu1 = cpu_seconds(main.pid)
            docker("stop", "-t", "10", backend.cid)
            wait_until(main, lacks(one, main), args.timeout, f"{backend.name} gone")
            start_cpu += cpu1 - cpu0
            stop_cpu += cpu_seconds(main.pid) - cpu1
        if extra:
            events = events_received(metrics_url) - events0
            report.cpu = CpuFigures(
                len(extra), start_cpu * 1000, stop_cpu * 1000, events, time.monotonic() - wall0
            )
        time.sleep(args.settle)
        report.samples.append(sample(main.pid, "steady", main.started))
        if args.soak > 0:
            soak_ports = ports[args.n : args.n + max(args.singles, SOAK_CONCURRENCY)]
            soak(main, fleet, soak_ports, args, report)

        print("cold start of a second lbsync at N ...", file=sys.stderr, flush=True)
        cold = start_lbsync(tmp, "cold", fleet.run_id, (ports[-2], ports[-1]), args)
        daemons.append(cold)
        wait_until(cold, holds(expected, cold), args.timeout, "the second lbsync's servers")
        wait_until(cold, cold.healthy, args.timeout, "the second lbsync's /healthz")
        time.sleep(args.settle)
        report.samples.append(sample(cold.pid, "cold start", cold.started))
    finally:
        for daemon in daemons:
            daemon.stop()


def soak(
    lbsync: Lbsync, fleet: Fleet, ports: Sequence[int], args: argparse.Namespace, report: Report
) -> None:
    """`args.soak` new containers: run, in the file, stopped, removed, out of the file; up to
    SOAK_CONCURRENCY at once (a port each), a sample after every tenth of them."""
    every = max(1, args.soak // 10)
    workers = min(SOAK_CONCURRENCY, len(ports))
    print(f"soak: {args.soak} new containers, {workers} at a time ...", file=sys.stderr,
          flush=True)  # fmt: skip

    def cycle(i: int, port: int) -> None:
        (backend,) = fleet.backends("run", f"s{i}-", [port])
        one = frozenset({port})
        wait_until(lbsync, holds(one, lbsync), args.timeout, f"{backend.name} written")
        docker("stop", "-t", "10", backend.cid)
        docker("rm", backend.cid)
        fleet.ids.remove(backend.cid)
        wait_until(lbsync, lacks(one, lbsync), args.timeout, f"{backend.name} gone")

    free: queue.SimpleQueue[int] = queue.SimpleQueue()  # a port is one running container's
    for port in ports[:workers]:
        free.put(port)

    def one_cycle(i: int) -> None:
        port = free.get()
        try:
            cycle(i, port)
        finally:
            free.put(port)

    done = 0
    with ThreadPoolExecutor(workers) as pool:
        while done < args.soak:
            batch = range(done + 1, min(done + every, args.soak) + 1)
            for future in [pool.submit(one_cycle, i) for i in batch]:
                future.result()
            done = batch[-1]
            time.sleep(args.settle)
            taken = sample(lbsync.pid, f"soak {done}", lbsync.started)
            report.soak.append((done, taken))
            report.samples.append(taken)
            print(f"  {done}: VmRSS {mb(taken.rss)} MB", file=sys.stderr, flush=True)


def soak_growth(report: Report) -> str | None:
    """VmRSS's growth per 100 containers over the soak's second half (a least-squares slope)."""
    half = report.soak[len(report.soak) // 2 :]
    if len(half) < 2:
        return None
    slope = statistics.linear_regression([i for i, _ in half], [s.rss for _, s in half]).slope
    first, last = report.soak[0], report.soak[-1]
    return (
        f"soak: VmRSS {mb(first[1].rss)} MB after {first[0]} new containers, {mb(last[1].rss)} MB "
        f"after {last[0]}; over the second half {slope * 100:+.0f} KiB per 100 containers"
    )


def mb(kib: int) -> str:
    return f"{kib / 1024:.1f}"


def table(report: Report) -> str:
    columns: list[tuple[str, Callable[[Sample], str]]] = [
        ("stage", lambda s: s.stage),
        ("engine", lambda s: str(s.engine_containers)),
        ("VmHWM", lambda s: mb(s.hwm)),
        ("VmRSS", lambda s: mb(s.rss)),
        ("anon", lambda s: mb(s.anon)),
        ("heap", lambda s: mb(s.heap)),
        ("mmap anon", lambda s: mb(s.other_anon)),
        ("file", lambda s: mb(s.file)),
        ("threads", lambda s: str(s.threads)),
        ("at (s)", lambda s: f"{s.seconds:.0f}"),
    ]
    rows = [[name for name, _ in columns]]
    rows += [[cell(s) for _, cell in columns] for s in report.samples]
    widths = [max(len(row[i]) for row in rows) for i in range(len(columns))]
    lines = []
    for index, row in enumerate(rows):
        cells = [row[0].ljust(widths[0])]
        cells += [cell.rjust(width) for cell, width in zip(row[1:], widths[1:], strict=True)]
        lines.append("  ".join(cells))
        if index == 0:
            lines.append("-" * len(lines[0]))
    return "\n".join(lines)


def summary(report: Report) -> str:
    env = f"; lbsync env {' '.join(report.daemon_env)}" if report.daemon_env else ""
    health = (
        f", a health check every {report.health_interval:g}s on each"
        if report.health_interval > 0
        else ""
    )
    lines = [
        f"lbsync run ({'container' if report.python.startswith('image') else 'subprocess'}) "
        f"memory in MB: N={report.n}, {report.singles} single "
        f"starts/stops, docker.resync {report.resync:g}s, {report.env_vars} extra env vars "
        f"per backend{health}{env}; {report.python}",
        "",
        table(report),
        "",
        "engine: containers on the engine (lbsync keeps all of them); VmHWM: peak since that "
        "process started; anon = heap + mmap anon (pymalloc, thread arenas, stacks); file: "
        "libraries and extension modules mapped.",
    ]
    if report.samples:
        biggest = report.samples[-1].files
        lines.append(
            "largest file mappings (MB): "
            + ", ".join(f"{Path(k).name} {mb(v)}" for k, v in biggest.items())
        )
        at_n = [s for s in report.samples if s.stage.startswith("N=") and s.stage != "N=0"]
        if at_n:
            peak = max(s.hwm for s in report.samples)
            added = peak - report.import_floor_kb
            lines.append(
                f"peak {mb(peak)} MB; the imports alone {mb(report.import_floor_kb)} MB; "
                f"lbsync adds {mb(added)} MB (target <= {TARGET_ADDED_MB:g} MB at 1,000)"
            )
    if report.idle_cpu_ms_per_s is not None:
        lines.append(f"idle CPU at N: {report.idle_cpu_ms_per_s:.1f} ms per second with a "
                     f"re-list every {report.resync:g} s")  # fmt: skip
    if report.idle_cpu_no_resync_ms_per_s is not None:
        lines.append(f"idle CPU at N: {report.idle_cpu_no_resync_ms_per_s:.1f} ms per second "
                     "without re-lists (timers only)")  # fmt: skip
    if report.cpu is not None:
        cpu = report.cpu
        per_start = cpu.start_cpu_ms / cpu.starts
        lines.append(
            f"CPU at N over {cpu.starts} single starts and stops: {per_start:.1f} ms per start,"
            f" {cpu.stop_cpu_ms / cpu.starts:.1f} ms per stop; {cpu.events} engine "
            f"events, {cpu.per_event_ms:.2f} ms per event (target <= {TARGET_CPU_MS:g} ms)"
        )
        idle = report.idle_cpu_no_resync_ms_per_s
        if idle is not None and cpu.events:
            timers = idle * cpu.seconds
            net = (cpu.start_cpu_ms + cpu.stop_cpu_ms - timers) / cpu.events
            lines.append(
                f"  less its timers over those {cpu.seconds:.0f} s ({timers:.0f} ms at the idle "
                f"rate): {net:.2f} ms per event"
            )
    growth = soak_growth(report)
    if growth is not None:
        lines.append(growth)
    lines += report.notes
    return "\n".join(lines)


def remove_all(fleet: Fleet) -> None:
    """`fleet.cleanup()`, again when a `docker rm` batch timed out (a busy engine): the next
    round finds what is left by the run's label."""
    for attempt in range(1, 4):
        try:
            removed = fleet.cleanup()
        except subprocess.TimeoutExpired:
            print(f"docker rm timed out (attempt {attempt} of 3)", file=sys.stderr)
            continue
        print(f"bench run {fleet.run_id}: removed {removed} containers", file=sys.stderr)
        return
    print(f"bench run {fleet.run_id}: containers may be left: docker ps -a --filter "
          f"label={RUN_LABEL}={fleet.run_id}", file=sys.stderr)  # fmt: skip


#: What `lbsync run` imports before it reads its config, then its own peak RSS.
FLOOR_SCRIPT = (
    "import lbsync.cli.main, lbsync.daemon.daemon\n"
    "print(next(l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM:')))"
)


def import_floor_kb(image: str | None) -> int:
    """The peak RSS of a Python that imports lbsync's daemon and nothing more: the floor
    that CPython and the libraries set, which lbsync's own memory comes on top of."""
    if image:
        out = docker("run", "--rm", "--network", "host", "--label", "lbsync-test=1",
                     "--entrypoint", "python3", image, "-c", FLOOR_SCRIPT)  # fmt: skip
    else:
        out = subprocess.run(
            [sys.executable, "-c", FLOOR_SCRIPT], capture_output=True, text=True, check=True
        ).stdout
    return int(out.strip())


def image_python(image: str) -> str:
    """What runs lbsync in `image`: its Python version."""
    version = docker("run", "--rm", "--network", "host", "--label", "lbsync-test=1",
                     "--entrypoint", "python3", image, "--version")  # fmt: skip
    return f"image {image}, {version}"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.bench_rss",
        description="Memory and CPU of the real `lbsync run` process on the lab engine.",
    )
    parser.add_argument("--n", type=int, default=1000, help="running backends (default 1000)")
    parser.add_argument("--singles", type=int, default=30, help="single starts/stops (30)")
    parser.add_argument(
        "--resync", type=float, default=10.0, help="docker.resync, seconds (default 10; 0: off)"
    )
    parser.add_argument("--settle", type=float, default=2.0, help="seconds before a sample")
    parser.add_argument(
        "--idle", type=float, default=20.0, help="seconds of idle CPU measured at N (20; 0: off)"
    )
    parser.add_argument(
        "--soak",
        type=int,
        default=0,
        metavar="CYCLES",
        help="after the singles, this many new containers, 4 at a time (run, stop, remove), "
        "sampled every tenth (default 0: none)",
    )
    parser.add_argument("--env-vars", type=int, default=0, help="extra env vars per backend")
    parser.add_argument(
        "--health-interval",
        type=float,
        default=0.0,
        help="give every backend a HEALTHCHECK run this often, seconds (default 0: none)",
    )
    parser.add_argument(
        "--daemon-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="environment variable for the lbsync processes (repeatable)",
    )
    parser.add_argument(
        "--image",
        help="run lbsync in a container of this local image (e.g. lbsync:dev, built by "
        "deploy/build-image.sh), as deployed, instead of from this checkout",
    )
    parser.add_argument("--timeout", type=float, default=600.0, help="per wait, seconds")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args(argv)
    for item in args.daemon_env:
        if "=" not in item:
            parser.error(f"--daemon-env {item!r}: expected KEY=VALUE")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    run_id = secrets.token_hex(5)
    fleet = RssFleet(run_id, args.env_vars, args.health_interval)
    report = Report(
        n=args.n,
        singles=args.singles,
        resync=args.resync,
        env_vars=args.env_vars,
        health_interval=args.health_interval,
        daemon_env=list(args.daemon_env),
        python=image_python(args.image) if args.image else f"Python {sys.version.split()[0]}",
    )
    code = 0
    with interruptible(), tempfile.TemporaryDirectory(prefix="lbsync-rss-") as tmp:
        try:
            print(f"bench run {run_id}", file=sys.stderr, flush=True)
            report.import_floor_kb = import_floor_kb(args.image)
            run(args, fleet, Path(tmp), report)
            print(summary(report))
            if args.json:
                data: dict[str, Any] = asdict(report)
                args.json.write_text(json.dumps(data, indent=1))
        except KeyboardInterrupt:
            print("\ninterrupted", file=sys.stderr)
            code = 130
        except BenchError as exc:
            print(f"bench failed: {exc}", file=sys.stderr)
            if report.samples:
                print(summary(report))
            code = 1
        finally:
            with uninterrupted():
                print(f"bench run {run_id}: removing its containers ...", file=sys.stderr)
                remove_all(fleet)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
