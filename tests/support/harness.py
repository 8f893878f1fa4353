"""A real `lbsync run` beside a real lab nginx or HAProxy, for end-to-end tests (tests/e2e/:
``test_daemon_e2e.py``, ``test_haproxy_e2e.py``, ``test_churn.py``, ...).

:class:`LbsyncHarness` is a context manager: it writes a config YAML into a temp folder,
starts the lab nginx with ``<tmp>/conf.d`` mounted on /etc/nginx/conf.d, starts
``python -m lbsync.cli run -c <file>`` as a subprocess (its output goes to
``<tmp>/lbsync.log``), and waits until lbsync is ready. On exit it sends SIGTERM, checks the
exit code (0 unless the test says otherwise), and removes the containers it started, by id.
When the ``with`` body raises, the tail of lbsync's log (and of the proxy's) is printed, so
pytest shows it with the failure.

``proxy_kind="haproxy"`` puts the lab HAProxy (master-worker, ``-S`` master socket) in
nginx's place, with ``template: builtin:haproxy``. Its files live in a short folder under /tmp
(AF_UNIX paths are limited to ~100 bytes), :attr:`LbsyncHarness.haproxy_dir`:

* ``cfg/haproxy.cfg`` (:attr:`output`): a minimal bootstrap config is written there first
  (HAProxy cannot start without one; lbsync writes only once the proxy exists). The folder is
  mounted on /usr/local/etc/haproxy (what the image reads) and at its own path, so the
  default check ``haproxy -c -f <output>`` in the container reads the same file;
* ``m/master.sock`` (:attr:`master_socket`): the folder is mounted on /run/haproxy-master;
* ``run/admin.sock`` (:attr:`runtime_socket`): the folder is mounted at its own path, so the
  template's ``stats socket <runtime_socket>`` is the same socket inside and out.

``haproxy_reload`` picks how lbsync reloads it: ``signal`` (USR2 through the Docker API, the
default for builtin:haproxy), ``haproxy-master`` (the master socket) or ``haproxy-runtime``
(servers move through the runtime socket; a structure change reloads through the master
socket). The folder is removed when the harness shuts down.

Tests share one engine with other people's tests running in parallel, so every harness has
its own run id: its backends carry ``lbsync-run=<id>``, its target is named after the id and
only selects ``lbsync-run=<id>``, and its nginx carries ``lbsync.proxy=<target name>``.

Typical use::

    def test_x(lab: Lab, tmp_path: Path) -> None:
        with LbsyncHarness(lab, tmp_path) as h:
            web = h.backend("web", host="app.test")
            h.wait_until_routes("app.test", {web.name})

    def test_y(lab: Lab, tmp_path: Path) -> None:
        with LbsyncHarness(lab, tmp_path, proxy_kind="haproxy",
                           haproxy_reload="haproxy-runtime", target={"slots": 4}) as h:
            ...
"""

from __future__ import annotations

import copy
import http.client
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

import yaml
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from lbsync.apply.haproxy.master import ShowProc, parse_show_proc
from tests.support.lab import (
    Lab,
    free_port,
    haproxy_cli,
    http_get,
    http_request,
    wait_haproxy_master,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
RUN_LABEL = "lbsync-run"
STOP_TIMEOUT = 10.0
READY_TIMEOUT = 45.0  # the engine may be slow to list under a loaded CI machine
ROUTE_TIMEOUT = 15.0
LOG_TAIL_LINES = 120
_BACKEND_RE = re.compile(r"^backend=(\S+)")
HAPROXY_READY_TIMEOUT = 20.0

Json = dict[str, Any]
ProxyKind = Literal["nginx", "haproxy"]
HAProxyReload = Literal["signal", "haproxy-master", "haproxy-runtime"]

#: What HAProxy starts with before lbsync writes its file: valid for ``haproxy -c`` (the stats
#: socket stands in for a listener), no frontend, so nothing answers on the listen port yet.
HAPROXY_BOOTSTRAP = """\
# lbsync test harness: bootstrap config, replaced by lbsync's first pass
global
    master-worker
    log stdout format raw local0 info
    stats socket {socket} mode 600 level admin

defaults
    mode http
    timeout connect 5s
    timeout client 30s
    timeout server 30s
"""


@dataclass(frozen=True)
class Backend:
    """A lab backend a harness started: its container id, name (= what it answers) and port."""

    id: str
    name: str
    port: int


class MetricsSnapshot:
    """The parsed ``/metrics`` text of one moment."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.families = {f.name: f for f in text_string_to_metric_families(text)}
        self.samples: list[Sample] = [s for f in self.families.values() for s in f.samples]

    def value(self, sample_name: str, **labels: str) -> float:
        """Sum of the samples named ``sample_name`` whose labels include ``labels`` (0 if none)."""
        return sum(
            s.value
            for s in self.samples
            if s.name == sample_name and all(s.labels.get(k) == v for k, v in labels.items())
        )


def _deep_merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    """``extra`` merged into a copy of ``base``; a None value in ``extra`` deletes the key."""
    merged = copy.deepcopy(base)
    for key, value in extra.items():
        if value is None:
            merged.pop(key, None)
        elif isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def backend_names(bodies: Iterable[str]) -> set[str]:
    """The ``backend=NAME`` of each lab backend answer."""
    names = set()
    for body in bodies:
        match = _BACKEND_RE.match(body)
        if match:
            names.add(match.group(1))
    return names


class LbsyncHarness:
    """One lbsync daemon, its nginx and its backends, for one test.

    ``config`` is merged into the generated YAML (top level), ``target`` into its only
    target entry (a None value removes a key). The config is written at once, so containers
    (:meth:`backend`, :meth:`start_nginx`, :meth:`start_proxy`) may be started before the
    ``with``. On entering, the proxy (nginx, or HAProxy with ``proxy_kind="haproxy"``) is
    started unless one was already or ``nginx=False`` (the name is historical: it means "start
    the proxy"); ``wait_ready=False`` only waits for ``/livez``. ``proxy_extra`` are more
    ``docker run`` options for the proxy container (a mounted nginx.conf, say).
    """

    def __init__(
        self,
        lab: Lab,
        tmp_path: Path,
        *,
        config: Mapping[str, Any] | None = None,
        target: Mapping[str, Any] | None = None,
        nginx: bool = True,
        wait_ready: bool = True,
        expect_exit_code: int | None = 0,
        proxy_kind: ProxyKind = "nginx",
        haproxy_reload: HAProxyReload = "signal",
        proxy_extra: Sequence[str] = (),
    ) -> None:
        if proxy_kind not in ("nginx", "haproxy"):
            raise ValueError(f"proxy_kind must be nginx or haproxy, got {proxy_kind!r}")
        self.lab = lab
        self.tmp = tmp_path
        self.proxy_kind: ProxyKind = proxy_kind
        self.proxy_extra = tuple(proxy_extra)
        self.run_id = f"e2e-{secrets.token_hex(4)}"
        self.target_name = f"t-{self.run_id}"
        #: HAProxy only: the short folder of its config and sockets (None for nginx).
        self.haproxy_dir: Path | None = None
        self.master_socket: Path | None = None
        self.runtime_socket: Path | None = None
        if proxy_kind == "haproxy":
            self.haproxy_dir = Path(tempfile.mkdtemp(prefix="lbh-", dir="/tmp"))
            self.conf_dir = self.haproxy_dir / "cfg"
            self.output = self.conf_dir / "haproxy.cfg"
            self.master_socket = self.haproxy_dir / "m" / "master.sock"
            self.runtime_socket = self.haproxy_dir / "run" / "admin.sock"
        else:
            self.conf_dir = tmp_path / "conf.d"
            self.output = self.conf_dir / "lbsync.conf"
        self.config_path = tmp_path / "lbsync.yaml"
        self.log_path = tmp_path / "lbsync.log"
        self.listen_port = free_port()
        self.server_port = free_port()
        self.want_nginx = nginx
        self.wait_ready = wait_ready
        #: The exit code expected when the harness stops lbsync; None: do not check it.
        self.expect_exit_code = expect_exit_code
        #: Proxy containers this harness started (nginx or HAProxy); ``proxy_ids`` is the same.
        self.nginx_ids: list[str] = []
        self.started: list[str] = []  # every container id this harness started
        self.proc: subprocess.Popen[bytes] | None = None
        self.exit_code: int | None = None
        self._log_file: Any = None
        self._names = 0

        target_entry: dict[str, Any] = {
            "name": self.target_name,
            "output": str(self.output),
            "listen": f"127.0.0.1:{self.listen_port}",
            "select": {"label": f"{RUN_LABEL}={self.run_id}"},
        }
        if proxy_kind == "haproxy":
            target_entry["template"] = "builtin:haproxy"
            target_entry["reload"] = haproxy_reload
            if haproxy_reload in ("haproxy-master", "haproxy-runtime"):
                target_entry["master_socket"] = str(self.master_socket)
            if haproxy_reload == "haproxy-runtime":
                target_entry["runtime_socket"] = str(self.runtime_socket)
        document: dict[str, Any] = {
            "debounce": {"quiet": "50ms", "max": "500ms"},
            "server": {"listen": f"127.0.0.1:{self.server_port}"},
            "log": {"level": "debug"},
        }
        document = _deep_merge(document, config or {})
        document["targets"] = [_deep_merge(target_entry, target or {})]
        self.config: dict[str, Any] = document
        # Written now, so a test can start containers (nginx too) before lbsync.
        self.conf_dir.mkdir(parents=True, exist_ok=True)
        if self.haproxy_dir is not None:
            assert self.master_socket is not None and self.runtime_socket is not None
            self.master_socket.parent.mkdir()
            self.runtime_socket.parent.mkdir()
            bootstrap = self.runtime_socket.parent / "bootstrap.sock"
            self.output.write_text(HAPROXY_BOOTSTRAP.format(socket=bootstrap))
        self.config_path.write_text(yaml.safe_dump(self.config, sort_keys=False))

    @property
    def proxy_ids(self) -> list[str]:
        """The proxy containers this harness started (the same list as ``nginx_ids``)."""
        return self.nginx_ids

    # ------------------------------------------------------------------ lifecycle

    def __enter__(self) -> LbsyncHarness:
        try:
            if self.want_nginx and not self.nginx_ids:
                self.start_proxy()
            self.start()
        except BaseException:
            self._report_failure()
            self._shutdown(check_code=False)
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is not None:
            self._report_failure()
        self._shutdown(check_code=exc_type is None)

    def start(self) -> None:
        """Start ``lbsync run`` and wait until it is ready (or only alive)."""
        assert self.proc is None, "lbsync is running already"
        self._log_file = self.log_path.open("ab")
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p
        )
        env["PYTHONUNBUFFERED"] = "1"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "lbsync.cli", "run", "-c", str(self.config_path)],
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=REPO_ROOT,
            env=env,
        )
        if self.wait_ready:
            self.wait_ready_state()
        else:
            self.poll(lambda: self.livez() == 200, READY_TIMEOUT, "lbsync /livez answers 200")

    def wait_ready_state(self, timeout: float = READY_TIMEOUT) -> None:
        """/healthz answers 200 and the first pass has reloaded the proxy."""

        def ready() -> bool:
            if self.healthz()[0] != 200:
                return False
            target = self.status()["targets"][0]
            return bool(target["last_reload_result"] == "ok")

        self.poll(ready, timeout, "lbsync ready (/healthz 200 and a first reload done)")

    def stop(self, expect_code: int | None = 0, timeout: float = STOP_TIMEOUT) -> int:
        """SIGTERM lbsync; its exit code (asserted equal to ``expect_code`` unless None)."""
        proc = self.proc
        assert proc is not None, "lbsync is not running"
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
            raise AssertionError(
                f"lbsync did not exit within {timeout:g} s of SIGTERM (killed it)"
            ) from None
        finally:
            if self._log_file is not None:
                self._log_file.close()
                self._log_file = None
        self.proc = None
        self.exit_code = code
        if expect_code is not None:
            assert code == expect_code, f"lbsync exited {code}, expected {expect_code}"
        return code

    def _shutdown(self, *, check_code: bool) -> None:
        try:
            if self.proc is not None:
                if check_code:
                    try:
                        self.stop(self.expect_exit_code)
                    except AssertionError:
                        self._report_failure()
                        raise
                else:
                    try:
                        self.stop(None)
                    except AssertionError as exc:
                        print(f"harness: {exc}", file=sys.stderr)
        finally:
            for cid in reversed(self.started):
                if cid in self.lab.ids:
                    try:
                        self.lab.remove(cid)
                    except Exception as exc:  # the lab fixture removes it again
                        print(f"harness: cannot remove {cid[:12]}: {exc}", file=sys.stderr)
            self.started.clear()
            if self.haproxy_dir is not None:
                shutil.rmtree(self.haproxy_dir, ignore_errors=True)

    def _report_failure(self) -> None:
        lines = self.log_text().splitlines()
        print(f"----- lbsync log ({self.log_path}), last {LOG_TAIL_LINES} lines -----")
        print("\n".join(lines[-LOG_TAIL_LINES:]))
        for cid in self.nginx_ids:
            if cid in self.lab.ids:
                nginx_log = self.lab.logs(cid).splitlines()
                print(f"----- {self.proxy_kind} {cid[:12]} log, last 30 lines -----")
                print("\n".join(nginx_log[-30:]))
        if self.output.exists():
            print(f"----- {self.output} -----")
            print(self.output.read_text(errors="replace"))
        print("----- end -----")

    # ------------------------------------------------------------------ containers

    def unique_name(self, suffix: str) -> str:
        self._names += 1
        return f"lbsync-{self.run_id}-{suffix}-{self._names}"

    def start_proxy(self) -> str:
        """The harness's proxy: :meth:`start_nginx` or :meth:`start_haproxy`."""
        return self.start_haproxy() if self.proxy_kind == "haproxy" else self.start_nginx()

    def start_nginx(self) -> str:
        """The lab nginx, labelled as this target's proxy, with ``conf.d`` mounted."""
        cid = self.lab.run_nginx(
            self.conf_dir,
            labels={"lbsync.proxy": self.target_name},
            name=self.unique_name("nginx"),
            extra=self.proxy_extra,
        )
        self.nginx_ids.append(cid)
        self.started.append(cid)
        return cid

    def start_haproxy(self) -> str:
        """The lab HAProxy, labelled as this target's proxy, on the bootstrap config (or what
        lbsync wrote since); returns once its master answers ``show proc``."""
        assert self.haproxy_dir is not None, "start_haproxy needs proxy_kind='haproxy'"
        assert self.master_socket is not None and self.runtime_socket is not None
        run_dir = self.runtime_socket.parent
        cid = self.lab.run_haproxy(
            self.conf_dir,
            labels={"lbsync.proxy": self.target_name},
            name=self.unique_name("haproxy"),
            master_dir=self.master_socket.parent,
            extra=[
                # The output folder at its own path too: `haproxy -c -f <output>` in the
                # container checks the file lbsync wrote.
                "--volume",
                f"{self.conf_dir}:{self.conf_dir}",
                "--volume",
                f"{run_dir}:{run_dir}",
                *self.proxy_extra,
            ],
        )
        self.nginx_ids.append(cid)
        self.started.append(cid)
        try:
            wait_haproxy_master(self.master_socket, HAPROXY_READY_TIMEOUT)
        except TimeoutError as exc:
            logs = self.lab.logs(cid)[-2000:]
            raise AssertionError(f"haproxy {cid[:12]} did not start: {exc}\n{logs}") from None
        return cid

    def remove_nginx(self, cid: str) -> None:
        self.lab.remove(cid)
        if cid in self.started:
            self.started.remove(cid)

    def remove_proxy(self, cid: str) -> None:
        """Remove a proxy container this harness started (nginx or HAProxy)."""
        self.remove_nginx(cid)

    def backend(
        self,
        suffix: str,
        *,
        port: int | None = None,
        host: str | None = None,
        path: str | None = None,
        labels: Mapping[str, str] | None = None,
        run_label: bool = True,
        enable: bool = True,
        health: bool = False,
        paths: Iterable[str] = (),
        stop_grace: float = 0,
        extra: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
    ) -> Backend:
        """Start a lab backend on ``port`` (default: a free one) with this run's labels.

        ``host`` adds ``lbsync.host`` and ``lbsync.port`` (its own port), ``path``
        ``lbsync.path``; ``labels`` are added last (named services, hostile values); ``env``
        goes to the backend (``LOG_REQUESTS=0`` under load).
        """
        port = free_port() if port is None else port
        name = self.unique_name(suffix)
        all_labels: dict[str, str] = {}
        if run_label:
            all_labels[RUN_LABEL] = self.run_id
        if enable:
            all_labels["lbsync.enable"] = "true"
        if host is not None:
            all_labels["lbsync.host"] = host
            all_labels["lbsync.port"] = str(port)
        if path is not None:
            all_labels["lbsync.path"] = path
        all_labels.update(labels or {})
        cid = self.lab.run_backend(
            port,
            name=name,
            labels=all_labels,
            health=health,
            paths=paths,
            stop_grace=stop_grace,
            extra=extra,
            env=env,
        )
        self.started.append(cid)
        return Backend(cid, name, port)

    def forget(self, cid: str) -> None:
        """Remove a container this harness started, now (long churn runs keep few around)."""
        self.lab.remove(cid)
        if cid in self.started:
            self.started.remove(cid)

    # ------------------------------------------------------------------ looking

    def _server(self, path: str, timeout: float = 2.0) -> tuple[int, str]:
        return http_get(f"http://127.0.0.1:{self.server_port}{path}", timeout=timeout)

    def livez(self) -> int:
        try:
            return self._server("/livez")[0]
        except (OSError, http.client.HTTPException):
            return 0

    def healthz(self) -> tuple[int, str]:
        """(status, body) of ``/healthz``; (0, error) while nothing answers."""
        try:
            return self._server("/healthz")
        except (OSError, http.client.HTTPException) as exc:
            return 0, repr(exc)

    def status(self) -> Json:
        code, body = self._server("/status")
        assert code == 200, f"/status answered {code}: {body}"
        data: Json = json.loads(body)
        return data

    def metrics(self) -> MetricsSnapshot:
        code, body = self._server("/metrics")
        assert code == 200, f"/metrics answered {code}: {body}"
        return MetricsSnapshot(body)

    def metric(self, sample_name: str, **labels: str) -> float:
        return self.metrics().value(sample_name, **labels)

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def output_bytes(self) -> bytes | None:
        try:
            return self.output.read_bytes()
        except FileNotFoundError:
            return None

    def output_text(self) -> str:
        data = self.output_bytes()
        return "" if data is None else data.decode("utf-8", "replace")

    def get(self, host: str, path: str = "/", timeout: float = 2.0) -> tuple[int, str]:
        """GET through the proxy with ``Host: host``; (status, body). OSError when nothing
        listens."""
        return http_get(f"http://127.0.0.1:{self.listen_port}{path}", host_header=host,
                        timeout=timeout)  # fmt: skip

    def request(
        self,
        method: str,
        host: str,
        path: str = "/",
        body: bytes | str | None = None,
        timeout: float = 2.0,
    ) -> tuple[int, str]:
        """Any method through the proxy with ``Host: host``; (status, body)."""
        return http_request(method, f"http://127.0.0.1:{self.listen_port}{path}", body=body,
                            host_header=host, timeout=timeout)  # fmt: skip

    def try_get(self, host: str, path: str = "/") -> tuple[int, str] | None:
        try:
            return self.get(host, path)
        except (OSError, http.client.HTTPException):
            return None

    # ------------------------------------------------------------------ waiting

    def poll(self, predicate: Callable[[], object], timeout: float, what: str) -> None:
        """Poll ``predicate`` every 50 ms until truthy; fail (with ``what``) after ``timeout``.

        Fails at once when lbsync exited meanwhile.
        """
        deadline = time.monotonic() + timeout
        while True:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(
                    f"lbsync exited ({self.proc.returncode}) while waiting for: {what}"
                )
            if predicate():
                return
            if time.monotonic() >= deadline:
                raise AssertionError(f"not true after {timeout:g} s: {what}")
            time.sleep(0.05)

    def sample(self, host: str, path: str = "/", count: int = 6) -> list[tuple[int, str]]:
        """``count`` requests through the proxy; (0, "") for a request nothing answered."""
        return [self.try_get(host, path) or (0, "") for _ in range(count)]

    def wait_until_routes(
        self,
        host: str,
        expected: Iterable[str],
        path: str = "/",
        timeout: float = ROUTE_TIMEOUT,
        stable_rounds: int = 2,
    ) -> None:
        """Poll until rounds of requests to ``host`` ``path`` all answer 200 from exactly the
        backends named ``expected`` (``stable_rounds`` rounds in a row: right after a reload an
        old nginx worker may still answer one request the old way)."""
        want = set(expected)
        assert want, "use wait_until_status for a host with no backends"
        count = max(4, 3 * len(want))
        last: list[tuple[int, str]] = []
        stable = 0

        def settled() -> bool:
            nonlocal last, stable
            last = self.sample(host, path, count)
            good = (
                all(code == 200 for code, _ in last)
                and backend_names(body for _, body in last) == want
            )
            stable = stable + 1 if good else 0
            return stable >= stable_rounds

        try:
            self.poll(settled, timeout, f"{host}{path} served by exactly {sorted(want)}")
        except AssertionError as exc:
            seen = [(code, body.strip()[:80]) for code, body in last]
            raise AssertionError(f"{exc}; last answers: {seen}") from None

    def wait_until_status(
        self,
        host: str,
        status: int,
        path: str = "/",
        timeout: float = ROUTE_TIMEOUT,
        stable_rounds: int = 3,
        from_backend: bool | None = False,
    ) -> str:
        """Poll until ``host`` ``path`` answers ``status`` ``stable_rounds`` times in a row;
        the last body. ``from_backend=False`` also requires that no backend wrote the answer
        (nginx did), True that one did, None either."""
        last: tuple[int, str] | None = None
        stable = 0

        def settled() -> bool:
            nonlocal last, stable
            last = self.try_get(host, path)
            good = last is not None and last[0] == status
            if good and last is not None and from_backend is not None:
                good = bool(backend_names([last[1]])) == from_backend
            stable = stable + 1 if good else 0
            return stable >= stable_rounds

        try:
            self.poll(settled, timeout, f"{host}{path} answers {status}")
        except AssertionError as exc:
            raise AssertionError(f"{exc}; last answer: {last!r}") from None
        assert last is not None
        return last[1]

    def wait_for_passes(self, after: float, timeout: float = 10.0) -> float:
        """Poll until ``lbsync_passes_total`` exceeds ``after``; the new value."""
        seen = after

        def more() -> bool:
            nonlocal seen
            seen = self.metric("lbsync_passes_total")
            return seen > after

        self.poll(more, timeout, f"lbsync_passes_total > {after:g}")
        return seen

    # ------------------------------------------------------------------ HAProxy

    def show_proc(self, timeout: float = 2.0) -> ShowProc:
        """The HAProxy master's ``show proc``, parsed (HAProxy only)."""
        assert self.master_socket is not None, "show_proc needs proxy_kind='haproxy'"
        return parse_show_proc(haproxy_cli(self.master_socket, "show proc", timeout))

    def worker_pids(self) -> tuple[int, ...]:
        """The current HAProxy worker pid(s), from ``show proc`` (old workers not included)."""
        return self.show_proc().worker_pids

    def runtime(self, command: str, timeout: float = 2.0) -> str:
        """One command on the runtime (stats) socket, e.g. ``show servers state``."""
        assert self.runtime_socket is not None, "runtime needs proxy_kind='haproxy'"
        return haproxy_cli(self.runtime_socket, command, timeout)
