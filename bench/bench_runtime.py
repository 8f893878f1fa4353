"""HAProxy: a change live through the Runtime API vs through a reload, timed from the engine.

    python -m bench.bench_runtime [--changes 20] [--pool 2] [--quiet 200] [--out FILE]

Runs a real ``lbsync run`` (tests/support/harness.py) beside the lab HAProxy twice: with
``reload: haproxy-runtime`` (servers move between slots through the runtime socket; no reload
while the slots suffice) and with ``reload: haproxy-master`` (every change is a new config and
a reload through the master socket). Each time, ``--pool`` backends serve one host while
``--changes`` changes are made one at a time: start a new backend, wait until it answers,
then SIGTERM the oldest (it keeps serving ``--stop-grace`` seconds, so its removal is what
lbsync does, not the backend dying) and wait until it exited and lbsync saw that (so its
urgent `die` pass never carries the next start along). Pollers send GET / through HAProxy
back to back (a new connection each) and record who answered.

* start: from the ``start`` event's ``timeNano`` (``docker events``) to the first answer
  received from the new backend;
* stop: from the ``kill`` event's ``timeNano`` to the send time of the first request after the
  last one the old backend answered (the moment HAProxy stopped choosing it, to the pollers'
  resolution);

p50 and p99, and for starts also minus the debounce quiet window (a removal skips it); then
what lbsync counted: reloads, runtime updates (= reloads avoided) and its own pass times (from
its log). Figures only, nothing asserted. They are printed and written to ``--out`` (default
/tmp/bench-haproxy-churn.md, in a section of their own; ``bench.bench_churn`` writes another).
Every container carries the harness's run id and is removed by id at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import math
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from tests.support.harness import RUN_LABEL, Backend, HAProxyReload, LbsyncHarness
from tests.support.lab import DOCKER, Lab, http_get

HOST = "bench.test"
DEFAULT_OUT = Path("/tmp/bench-haproxy-churn.md")
WAIT = 60.0
PASS_RE = re.compile(
    r"target \S+: (?P<how>updated through the runtime API|reloaded \S+) in (?P<ms>\d+) ms"
)


# --------------------------------------------------------------------------- shared helpers


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile; NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, math.ceil(pct / 100 * len(ordered)) - 1))
    return ordered[index]


def fmt_ms(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.0f}"


def write_section(path: Path, name: str, text: str) -> None:
    """Put ``text`` in ``path`` between the markers of section ``name``, replacing an older
    run's section and keeping the others."""
    begin, end = f"<!-- {name} -->", f"<!-- /{name} -->"
    block = f"{begin}\n{text.rstrip()}\n{end}\n"
    try:
        old = path.read_text()
    except FileNotFoundError:
        old = "# lbsync: churn and HAProxy runtime benches\n\n"
    if begin in old and end in old:
        head, rest = old.split(begin, 1)
        _, tail = rest.split(end, 1)
        new = head + block.rstrip("\n") + tail
    else:
        new = old.rstrip("\n") + "\n\n" + block
    path.write_text(new)


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


class EventLog:
    """``docker events`` for one run id, in a thread: (container id, action) -> timeNano."""

    def __init__(self, run_id: str) -> None:
        self.proc = subprocess.Popen(
            [
                DOCKER, "events", "--format", "{{json .}}",
                "--filter", "type=container", "--filter", f"label={RUN_LABEL}={run_id}",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )  # fmt: skip
        self.events: list[tuple[str, str, int]] = []
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with contextlib.suppress(ValueError, KeyError):
                event: dict[str, Any] = json.loads(line)
                action = str(event.get("Action") or event.get("status") or "")
                with self._lock:
                    self.events.append((str(event["id"]), action, int(event["timeNano"])))

    def first(self, cid: str, action: str, timeout: float = WAIT) -> int:
        """timeNano of the first ``action`` event of ``cid`` (waits for it)."""
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                for event_id, event_action, nano in self.events:
                    if event_id == cid and event_action.split(":")[0] == action:
                        return nano
            if time.monotonic() > deadline:
                raise RuntimeError(f"no {action} event for {cid[:12]} within {timeout:g} s")
            time.sleep(0.01)

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


@dataclass(frozen=True, slots=True)
class Answer:
    sent: float  # time.time()
    received: float
    backend: str  # the backend's name, or "<status>" / "error"


class Pollers:
    """``count`` threads sending GET / with ``Host: host`` back to back (new connection
    each), recording every answer."""

    def __init__(self, port: int, host: str, count: int) -> None:
        self.url = f"http://127.0.0.1:{port}/"
        self.host = host
        self.answers: list[Answer] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(count)]
        for thread in self._threads:
            thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            sent = time.time()
            try:
                status, body = http_get(self.url, host_header=self.host, timeout=5)
                name = body.split(" ", 1)[0].removeprefix("backend=") if status == 200 else ""
                who = name or f"<{status}>"
            except (OSError, http.client.HTTPException):
                who = "error"
            self.answers.append(Answer(sent, time.time(), who))

    def wait_for(self, name: str, after: float, timeout: float = WAIT) -> Answer:
        """The first answer from ``name`` received after ``after`` (waits for it)."""
        deadline = time.monotonic() + timeout
        seen = 0
        while True:
            answers = self.answers
            for answer in answers[seen:]:
                if answer.backend == name and answer.received >= after:
                    return answer
            seen = max(0, len(answers) - 64)  # threads append out of order: look back a bit
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name} never answered within {timeout:g} s")
            time.sleep(0.01)

    def wait_past(self, moment: float, count: int = 20, timeout: float = WAIT) -> None:
        """Until ``count`` requests were sent after ``moment``."""
        deadline = time.monotonic() + timeout
        while sum(1 for a in self.answers[-4 * count :] if a.sent > moment) < count:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the pollers sent fewer than {count} requests in {timeout:g} s")
            time.sleep(0.01)

    def removal_seen(self, name: str, after: float) -> float | None:
        """When HAProxy stopped choosing ``name``: the send time of the first request sent
        after the last one ``name`` answered (requests sent after ``after`` only)."""
        answers = sorted((a for a in self.answers if a.sent >= after), key=lambda a: a.sent)
        last_old = max((a.sent for a in answers if a.backend == name), default=after)
        later = [a.sent for a in answers if a.sent > last_old]
        return later[0] if later else None

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(10)


# --------------------------------------------------------------------------- one mode


@dataclass
class ModeResult:
    mode: str
    starts_ms: list[float] = field(default_factory=list)
    stops_ms: list[float] = field(default_factory=list)
    reloads: float = 0.0
    runtime_updates: float = 0.0
    runtime_errors: float = 0.0
    passes_ms: dict[str, list[float]] = field(default_factory=dict)
    bad_answers: int = 0
    answers: int = 0
    workers_changed: int = 0


def run_mode(
    mode: HAProxyReload, args: argparse.Namespace, log: Callable[[str], None] = print
) -> ModeResult:
    result = ModeResult(mode)
    quiet_ms = args.quiet
    with Lab() as lab, tempfile.TemporaryDirectory(prefix="lbsync-bench-rt-") as tmp:
        harness = LbsyncHarness(
            lab,
            Path(tmp),
            proxy_kind="haproxy",
            haproxy_reload=mode,
            config={
                "debounce": {"quiet": f"{quiet_ms:g}ms", "max": f"{max(quiet_ms * 5, 1000):g}ms"},
                "log": {"level": "info"},
            },
            target={"slots": args.slots} if mode == "haproxy-runtime" else None,
        )
        events = EventLog(harness.run_id)
        pollers: Pollers | None = None
        try:
            with harness as h:

                def backend(index: int) -> Backend:
                    return h.backend(f"b{index}", host=HOST, stop_grace=args.stop_grace,
                                     env={"LOG_REQUESTS": "0"})  # fmt: skip

                live = [backend(i) for i in range(args.pool)]
                h.wait_until_routes(HOST, {b.name for b in live}, timeout=WAIT)
                pollers = Pollers(h.listen_port, HOST, args.pollers)
                pollers.wait_past(time.time(), 10)
                before = h.metrics()
                workers = h.worker_pids()
                start_answers = len(pollers.answers)
                for i in range(args.changes):
                    new = backend(args.pool + i)
                    started_ns = events.first(new.id, "start")
                    first = pollers.wait_for(new.name, started_ns / 1e9)
                    result.starts_ms.append((first.received - started_ns / 1e9) * 1000)

                    old = live.pop(0)
                    lab.kill(old.id, "TERM")
                    live.append(new)
                    kill_ns = events.first(old.id, "kill")

                    def gone(old: Backend = old) -> bool:
                        upstreams = h.status()["targets"][0]["upstreams"]
                        return all(
                            s["container_id"] != old.id for u in upstreams for s in u["servers"]
                        )

                    h.poll(gone, WAIT, f"{old.name} out of lbsync's model")
                    pollers.wait_past(time.time(), 2 * args.pollers + 4)
                    removed = pollers.removal_seen(old.name, kill_ns / 1e9)
                    if removed is not None:
                        result.stops_ms.append(max(0.0, removed - kill_ns / 1e9) * 1000)
                    if h.worker_pids() != workers:
                        result.workers_changed += 1
                        workers = h.worker_pids()
                    # Let the old backend exit and lbsync see it before the next change: its
                    # `die` starts a pass at once (a removal skips the quiet window), which
                    # would carry the next start along and hide the quiet window.
                    passes = h.metric("lbsync_passes_total")
                    events.first(old.id, "die", timeout=args.stop_grace + WAIT)
                    h.wait_for_passes(passes, timeout=WAIT)
                    log(
                        f"  {mode} change {i + 1}/{args.changes}: start "
                        f"{result.starts_ms[-1]:.0f} ms, stop "
                        f"{result.stops_ms[-1] if result.stops_ms else math.nan:.0f} ms"
                    )
                after = h.metrics()
                pollers.stop()
                answers = pollers.answers[start_answers:]
                result.answers = len(answers)
                result.bad_answers = sum(
                    1 for a in answers if a.backend == "error" or a.backend.startswith("<")
                )
                name = h.target_name
                result.reloads = after.value("lbsync_reloads_total", target=name) - before.value(
                    "lbsync_reloads_total", target=name
                )
                for outcome in ("ok", "error"):
                    grown = after.value(
                        "lbsync_runtime_updates_total", target=name, result=outcome
                    ) - before.value("lbsync_runtime_updates_total", target=name, result=outcome)
                    if outcome == "ok":
                        result.runtime_updates = grown
                    else:
                        result.runtime_errors = grown
                for match in PASS_RE.finditer(h.log_text()):
                    how = "runtime" if match["how"].startswith("updated") else "reload"
                    result.passes_ms.setdefault(how, []).append(float(match["ms"]))
        finally:
            if pollers is not None:
                pollers.stop()
            events.close()
    return result


# --------------------------------------------------------------------------- report


def report(results: Sequence[ModeResult], args: argparse.Namespace) -> str:
    quiet = args.quiet
    lines = [
        "## HAProxy: runtime API vs reload (`python -m bench.bench_runtime`)",
        "",
        f"{args.changes} changes per mode (each: start one backend, then SIGTERM the oldest; "
        f"pool {args.pool}, stop grace {args.stop_grace:g} s), debounce quiet {quiet:g} ms, "
        f"{args.pollers} pollers through HAProxy. Times in ms from the engine event "
        "(`timeNano`) to the change seen through HAProxy.",
        "",
        "| mode | start p50 | start p99 | start p50 - quiet | start p99 - quiet "
        "| stop p50 | stop p99 | reloads | runtime updates (reloads avoided) "
        "| worker changed | non-200 answers |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        s50, s99 = percentile(r.starts_ms, 50), percentile(r.starts_ms, 99)
        updates = f"{r.runtime_updates:g}"
        if r.runtime_errors:
            updates += f" ({r.runtime_errors:g} failed)"
        lines.append(
            f"| {r.mode} | {fmt_ms(s50)} | {fmt_ms(s99)} | {fmt_ms(s50 - quiet)} "
            f"| {fmt_ms(s99 - quiet)} | {fmt_ms(percentile(r.stops_ms, 50))} "
            f"| {fmt_ms(percentile(r.stops_ms, 99))} | {r.reloads:g} | {updates} "
            f"| {r.workers_changed} of {args.changes} | {r.bad_answers} of {r.answers} |"
        )
    lines += ["", "lbsync's own pass times (its log, `... in N ms`, whole run):", ""]
    for r in results:
        for how, values in sorted(r.passes_ms.items()):
            lines.append(
                f"- {r.mode}, {how} passes: {len(values)}, p50 {fmt_ms(percentile(values, 50))} "
                f"ms, p99 {fmt_ms(percentile(values, 99))} ms"
            )
    lines += [
        "",
        "Start: to the first answer *received* from the new backend (includes one request's "
        "round trip); a start can beat the quiet window when `docker run` was slow between "
        "`create` and `start` (the window's max counts from `create`). Stop: to the first "
        "request sent after the last one the old backend answered (it keeps serving through "
        "its grace, so only HAProxy's choice ends it). "
        "Figures only, on a shared 2-core machine: compare the rows, not the absolute values.",
    ]
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.bench_runtime",
        description="HAProxy through lbsync: runtime API updates vs master-socket reloads.",
    )
    parser.add_argument("--changes", type=int, default=20, help="changes per mode (default 20)")
    parser.add_argument("--pool", type=int, default=2, help="backends serving (default 2)")
    parser.add_argument("--slots", type=int, default=4, help="haproxy-runtime slots (default 4)")
    parser.add_argument("--quiet", type=float, default=200.0, help="debounce quiet, ms")
    parser.add_argument("--stop-grace", type=float, default=2.0, help="backend grace, s")
    parser.add_argument("--pollers", type=int, default=2, help="polling threads (default 2)")
    parser.add_argument("--modes", default="haproxy-runtime,haproxy-master", help="comma separated")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="markdown file")
    return parser.parse_args(argv)


MODES: dict[str, HAProxyReload] = {
    "haproxy-runtime": "haproxy-runtime",
    "haproxy-master": "haproxy-master",
}


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    results = []
    modes = args.modes.split(",")
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        print(f"unknown mode(s): {', '.join(unknown)}; expected {', '.join(MODES)}")
        return 2
    with interruptible():
        for mode in modes:
            print(f"{mode}: {args.changes} changes ...", flush=True)
            started = time.monotonic()
            result = run_mode(MODES[mode], args, log=lambda line: print(line, flush=True))
            print(f"{mode}: done in {time.monotonic() - started:.0f} s", flush=True)
            results.append(result)
    text = report(results, args)
    print()
    print(text)
    write_section(args.out, "bench_runtime", text)
    print(f"\nwritten to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
