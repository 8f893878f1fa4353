"""A rolling deploy under load: ``pool`` backends replaced one by one while a steady stream of
requests goes through the proxy, and what the load saw.

A replacement: start the new backend (with a Docker HEALTHCHECK), wait until it is healthy and
lbsync routes it, then SIGTERM the old one. The backends are well-behaved apps: after SIGTERM
they keep serving for ``stop_grace`` seconds (finishing what is in flight) and then exit.

The load is GET and POST to ``/cgi-bin/echo`` from an aiohttp client in a thread of its own,
a new connection per request (a reused keep-alive connection that the proxy closes on a
reload is a client-side race, not the proxy dropping a request), paced at a fixed rate,
bounded in time and count, to 127.0.0.1 only.

:func:`run_churn` is used by ``tests/e2e/test_churn.py`` and ``bench/bench_churn.py``.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import aiohttp

from tests.support.harness import Backend, LbsyncHarness
from tests.support.lab import Lab, LabError

CHURN_HOST = "churn.test"
REPLACEMENTS = 20
POOL = 3
#: Requests per second; the lab backend (busybox nc + sh per connection) saturates around
#: 500/s through one proxy on this 2-core machine, so 200/s leaves room for the churn.
RATE = 200.0
CONCURRENCY = 8
STOP_GRACE = 4.0
HEALTH_INTERVAL = "500ms"
REQUEST_TIMEOUT = 10.0
MAX_SECONDS = 120.0
SETTLE_SECONDS = 1.0  # load kept running after the last replacement
ROUTED_TIMEOUT = 30.0
ECHO_PATH = "/cgi-bin/echo"


# ---------------------------------------------------------------------------- the load


@dataclass
class LoadReport:
    """What the request loop saw."""

    requests: int = 0
    failed: int = 0
    seconds: float = 0.0
    by_method: Counter[str] = field(default_factory=Counter)
    by_backend: Counter[str] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)  # the first few, with details
    latencies: list[float] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def latency_ms(self, pct: float) -> float:
        if not self.latencies:
            return math.nan
        ordered = sorted(self.latencies)
        index = min(len(ordered) - 1, max(0, math.ceil(pct / 100 * len(ordered)) - 1))
        return ordered[index] * 1000

    def summary(self) -> str:
        return (
            f"{self.requests} requests in {self.seconds:.1f} s ({self.rate:.0f}/s; "
            f"GET {self.by_method['GET']}, POST {self.by_method['POST']}), "
            f"{self.failed} failed, latency p50 {self.latency_ms(50):.0f} ms "
            f"p99 {self.latency_ms(99):.0f} ms, {len(self.by_backend)} backends answered"
        )


class RequestLoop:
    """GET and POST to ``/cgi-bin/echo`` on 127.0.0.1:``port`` with ``Host: host``, at
    ``rate`` requests per second from ``concurrency`` workers, in a thread with its own event
    loop, until :meth:`stop`, ``max_seconds`` or ``max_requests``.

    A request fails unless it is answered 200 by a lab backend that echoes its method.
    """

    def __init__(
        self,
        port: int,
        host: str,
        *,
        rate: float = RATE,
        concurrency: int = CONCURRENCY,
        max_seconds: float = MAX_SECONDS,
        max_requests: int | None = None,
        keep_failures: int = 20,
    ) -> None:
        self.url = f"http://127.0.0.1:{port}{ECHO_PATH}"
        self.host = host
        self.rate = rate
        self.concurrency = concurrency
        self.max_seconds = max_seconds
        self.max_requests = max_requests or int(rate * max_seconds) + 1
        self.keep_failures = keep_failures
        self.report = LoadReport()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._started = threading.Event()

    def __enter__(self) -> RequestLoop:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="churn-load", daemon=True)
        self._thread.start()
        self._started.wait(10)

    def stop(self) -> LoadReport:
        """Stop sending; wait for the requests in flight; the report."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(REQUEST_TIMEOUT + 10)
            if self._thread.is_alive():
                raise AssertionError("the request loop did not stop")
            self._thread = None
        if self._error is not None:
            raise AssertionError(f"the request loop crashed: {self._error!r}") from self._error
        return self.report

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # reported by stop()
            self._error = exc
            self._started.set()

    def _fail(self, at: float, method: str, what: str) -> None:
        self.report.failed += 1
        if len(self.report.failures) < self.keep_failures:
            self.report.failures.append(f"t+{at:.3f}s {method}: {what}")

    async def _main(self) -> None:
        report = self.report
        connector = aiohttp.TCPConnector(force_close=True, limit=self.concurrency)
        timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT)
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        deadline = t0 + self.max_seconds
        issued = 0

        async def one(method: str, number: int, session: aiohttp.ClientSession) -> None:
            sent = loop.time()
            body = f"n={number}".encode() if method == "POST" else None
            try:
                async with session.request(
                    method, self.url, data=body, headers={"Host": self.host}
                ) as response:
                    text = await response.text()
                    status = response.status
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                self._fail(sent - t0, method, f"{type(exc).__name__}: {exc}")
                return
            finally:
                report.requests += 1
                report.by_method[method] += 1
                report.latencies.append(loop.time() - sent)
            first = text.split("\n", 1)[0]
            name = first.split(" ", 1)[0].removeprefix("backend=")
            if status != 200 or not first.startswith("backend=") or f"method={method}" not in first:
                self._fail(sent - t0, method, f"{status} {text.strip()[:160]!r}")
                return
            report.by_backend[name] += 1

        async def worker(session: aiohttp.ClientSession) -> None:
            nonlocal issued
            while not self._stop.is_set() and issued < self.max_requests:
                number = issued
                issued += 1
                at = t0 + number / self.rate
                now = loop.time()
                if now >= deadline:
                    return
                if at > now:
                    await asyncio.sleep(at - now)
                await one("POST" if number % 2 else "GET", number, session)

        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            self._started.set()
            await asyncio.gather(*(worker(session) for _ in range(self.concurrency)))
        report.seconds = loop.time() - t0


# ---------------------------------------------------------------------------- the churn


@dataclass
class ChurnReport:
    load: LoadReport
    replacements: int
    seconds: float
    reloads: float  # lbsync_reloads_total{result=ok} growth during the churn
    runtime_updates: float  # lbsync_runtime_updates_total{result=ok} growth
    backends: list[str]
    workers_before: tuple[int, ...] = ()  # HAProxy worker pids when the load started
    workers_after: tuple[int, ...] = ()  # and when it stopped
    load_started: float = 0.0  # time.time() when the load started
    kills: dict[str, float] = field(default_factory=dict)  # old backend -> time.time() of TERM

    def summary(self) -> str:
        return (
            f"{self.replacements} replacements in {self.seconds:.1f} s; {self.load.summary()}; "
            f"lbsync: {self.reloads:g} reloads, {self.runtime_updates:g} runtime updates"
        )


def wait_routed(h: LbsyncHarness, backend: Backend, timeout: float = ROUTED_TIMEOUT) -> None:
    """Until lbsync's /status shows ``backend`` in a live upstream: the proxy has it (status
    reflects a model only once its reload or runtime update went through)."""

    def routed() -> bool:
        for upstream in h.status()["targets"][0]["upstreams"]:
            if any(s["container_id"] == backend.id for s in upstream["servers"]):
                return True
        return False

    h.poll(routed, timeout, f"{backend.name} routed by lbsync")


def run_churn(
    h: LbsyncHarness,
    lab: Lab,
    *,
    replacements: int = REPLACEMENTS,
    pool: int = POOL,
    rate: float = RATE,
    concurrency: int = CONCURRENCY,
    stop_grace: float = STOP_GRACE,
    host: str = CHURN_HOST,
    health_interval: str = HEALTH_INTERVAL,
    progress: Callable[[str], None] | None = None,
) -> ChurnReport:
    """Start ``pool`` backends, then replace them ``replacements`` times one by one under a
    :class:`RequestLoop`; the report. Stopped backends are removed as they exit."""

    def new_backend(index: int) -> Backend:
        return h.backend(
            f"c{index}",
            host=host,
            health=True,
            stop_grace=stop_grace,
            env={"LOG_REQUESTS": "0"},
            extra=["--health-interval", health_interval],
        )

    live = [new_backend(i) for i in range(pool)]
    for backend in live:
        lab.wait_health(backend.id, "healthy", timeout=ROUTED_TIMEOUT)
    h.wait_until_routes(host, {b.name for b in live}, path=ECHO_PATH, timeout=ROUTED_TIMEOUT)

    retiring: list[Backend] = []

    def reap(wait: bool) -> None:
        """Remove the retired backends that exited (all of them, waiting, with ``wait``)."""
        deadline = time.monotonic() + stop_grace + 15
        for old in list(retiring):
            try:
                while wait and lab.state(old.id) == "running" and time.monotonic() < deadline:
                    time.sleep(0.1)
                if lab.state(old.id) != "running":
                    h.forget(old.id)
                    retiring.remove(old)
            except LabError:
                retiring.remove(old)

    metrics = h.metrics()
    reloads = metrics.value("lbsync_reloads_total", target=h.target_name, result="ok")
    updates = metrics.value("lbsync_runtime_updates_total", target=h.target_name, result="ok")
    names = [b.name for b in live]
    workers_before = h.worker_pids() if h.proxy_kind == "haproxy" else ()
    started = time.monotonic()
    load_started = time.time()
    kills: dict[str, float] = {}
    loop = RequestLoop(h.listen_port, host, rate=rate, concurrency=concurrency)
    with loop:
        for i in range(replacements):
            slot = i % pool
            old = live[slot]
            new = new_backend(pool + i)
            names.append(new.name)
            lab.wait_health(new.id, "healthy", timeout=ROUTED_TIMEOUT)
            wait_routed(h, new)
            kills[old.name] = time.time()
            lab.kill(old.id, "TERM")  # a well-behaved app: serves `stop_grace` more, exits
            retiring.append(old)
            live[slot] = new
            reap(wait=False)
            if progress is not None:
                progress(f"replacement {i + 1}/{replacements}: {old.name} -> {new.name}")
            assert loop.running, "the request loop ended early (time or count bound)"
        settle_until = time.monotonic() + SETTLE_SECONDS
        while time.monotonic() < settle_until:
            time.sleep(0.05)
        report = loop.stop()
    seconds = time.monotonic() - started
    metrics = h.metrics()
    workers_after = h.worker_pids() if h.proxy_kind == "haproxy" else ()
    reap(wait=True)
    reloads = metrics.value("lbsync_reloads_total", target=h.target_name, result="ok") - reloads
    updates = (
        metrics.value("lbsync_runtime_updates_total", target=h.target_name, result="ok") - updates
    )
    return ChurnReport(
        load=report,
        replacements=replacements,
        seconds=seconds,
        reloads=reloads,
        runtime_updates=updates,
        backends=names,
        workers_before=workers_before,
        workers_after=workers_after,
        load_started=load_started,
        kills=kills,
    )
