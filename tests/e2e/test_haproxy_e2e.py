"""`lbsync run` end to end through HAProxy: a real daemon, the lab HAProxy (master-worker,
``-S`` master socket), real backends on the lab engine, ``template: builtin:haproxy``.

The nginx scenarios of :mod:`tests.e2e.test_daemon_e2e` again, reloading HAProxy by ``signal``
(USR2 through the Docker API, the default for builtin:haproxy) or through the master socket
(``haproxy-master``); then ``haproxy-runtime``, where servers move between slots through the
Runtime API and the worker never changes, until a backend outgrows its slots (one reload).
Each test has its own run id and proxy label (see :mod:`tests.support.harness`).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from tests.support.harness import REPO_ROOT, HAProxyReload, LbsyncHarness
from tests.support.lab import Lab
from tests.support.scenarios import (
    health_gates_traffic,
    hostile_labels_never_reach_the_file,
    left_file,
    server_line,
)

pytestmark = pytest.mark.engine

RELOADS = "lbsync_reloads_total"
RUNTIME_UPDATES = "lbsync_runtime_updates_total"
CHECK_FAILURES = "lbsync_check_failures_total"
#: HAProxy's own 503 page (no server, or an unknown host): never a backend's answer.
HAPROXY_503 = "503 Service Unavailable"
#: srv_admin_state bits that keep a server out of the balancing (forced, inherited and
#: resolver maintenance). 0x04, "disabled in the config", stays set after `set server ...
#: state ready` on a slot the file rendered `disabled`, but does not count (HAProxy 2.6).
MAINT_FLAGS = 0x01 | 0x02 | 0x20


def haproxy(lab: Lab, tmp_path: Path, reload: HAProxyReload, **kwargs: Any) -> LbsyncHarness:
    return LbsyncHarness(lab, tmp_path, proxy_kind="haproxy", haproxy_reload=reload, **kwargs)


# ---------------------------------------------------------------------------- basics


@pytest.mark.parametrize("reload", ["signal", "haproxy-master"])
def test_backends_stop_one_then_all_then_503(
    lab: Lab, tmp_path: Path, reload: HAProxyReload
) -> None:
    with haproxy(lab, tmp_path, reload) as h:
        assert h.status()["targets"][0]["reload"] == reload
        one = h.backend("one", host="app.test")
        two = h.backend("two", host="app.test")
        h.wait_until_routes("app.test", {one.name, two.name})
        text = h.output_text()
        assert server_line(one.port) in text and server_line(two.port) in text
        assert " if { var(txn.lbsync_host) -m str -- app.test }\n" in text

        lab.stop(one.id)
        # HAProxy redispatches a refused connection to the other server (`retries 2`,
        # `option redispatch`), so the answers alone do not show that lbsync acted: the file
        # must drop the server (and the reload that follows is awaited by the next step).
        left_file(h, one.port)
        h.wait_until_routes("app.test", {two.name})

        lab.stop(two.id)
        left_file(h, two.port)
        body = h.wait_until_status("app.test", 503)
        assert HAPROXY_503 in body, body
        assert "-- app.test" in h.output_text(), "the stopped host's rules must stay"

        # A host nobody declares: the catch-all answers 503, never another site.
        status, body = h.get("unknown.test")
        assert status == 503, body
        assert "backend=" not in body

        reloads = h.metric(RELOADS, target=h.target_name, result="ok")
        assert reloads >= 3, "start, two stops: each a reload in this mode"
        assert h.metric(RELOADS, target=h.target_name, result="error") == 0
        assert h.metric(RUNTIME_UPDATES) == 0


def test_healthcheck_gates_traffic(lab: Lab, tmp_path: Path) -> None:
    with haproxy(lab, tmp_path, "haproxy-master") as h:
        health_gates_traffic(h, lab, "-- health.test")


def test_path_routing_through_haproxy(lab: Lab, tmp_path: Path) -> None:
    with haproxy(lab, tmp_path, "signal") as h:
        api = h.backend("api", host="paths.test", path="/api", paths=["/api/x"])
        site = h.backend("site", host="paths.test", path="/", paths=["/other"])
        h.wait_until_routes("paths.test", {api.name}, path="/api/x")
        h.wait_until_routes("paths.test", {site.name}, path="/other")
        status, body = h.get("paths.test", "/api/x")
        assert (status, body.strip()) == (200, f"backend={api.name} path=/api/x")
        # POST goes through too, with the forwarded headers the template sets.
        status, body = h.request("POST", "paths.test", "/cgi-bin/echo", body="x=1")
        assert status == 200, body
        assert f"backend={site.name} method=POST uri=/cgi-bin/echo" in body
        assert "host=paths.test" in body and "x-forwarded-for=127.0.0.1" in body


# ---------------------------------------------------------------------------- safety


def test_hostile_labels_never_reach_the_file(lab: Lab, tmp_path: Path) -> None:
    with haproxy(lab, tmp_path, "signal") as h:
        hostile_labels_never_reach_the_file(h)
        assert h.metric(CHECK_FAILURES, target=h.target_name) == 0


def bad_haproxy_template() -> str:
    """The builtin template plus a directive HAProxy refuses once 2+ servers exist."""
    builtin = (REPO_ROOT / "templates" / "haproxy.cfg.j2").read_text()
    marker = "\nglobal\n"
    assert builtin.count(marker) == 1, "the builtin template changed shape"
    bogus = (
        "\nglobal\n"
        "{% set ns_bad = namespace(servers=0) %}\n"
        "{% for u in upstreams %}\n"
        "{% set ns_bad.servers = ns_bad.servers + (u.servers | length) %}\n"
        "{% endfor %}\n"
        "{% if ns_bad.servers > 1 %}\n"
        "    bogus_directive on\n"
        "{% endif %}\n"
    )
    return builtin.replace(marker, bogus)


def test_refused_check_keeps_the_last_good_file(lab: Lab, tmp_path: Path) -> None:
    template = tmp_path / "bad-haproxy.cfg.j2"
    template.write_text(bad_haproxy_template())
    with haproxy(lab, tmp_path, "haproxy-master", target={"template": str(template)}) as h:
        pid_before = h.worker_pids()
        first = h.backend("first", host="check.test")
        h.wait_until_routes("check.test", {first.name})
        h.poll(lambda: h.healthz()[0] == 200, 5, "/healthz 200 with a good config")
        good = h.output_bytes()
        assert good is not None and b"bogus_directive" not in good
        assert server_line(first.port) in good.decode()
        reloads = h.metric(RELOADS, target=h.target_name)
        workers = h.worker_pids()
        assert workers != pid_before, "the pass that routed `first` reloads through the master"
        assert h.metric(CHECK_FAILURES, target=h.target_name) == 0

        second = h.backend("second", host="check.test")
        h.poll(
            lambda: h.metric(CHECK_FAILURES, target=h.target_name) >= 1,
            10,
            "lbsync_check_failures_total >= 1",
        )
        h.poll(
            lambda: "the proxy's check refused" in h.log_text(),
            5,
            "the refusal is logged (after the last good file is back)",
        )
        assert h.output_bytes() == good, "the refused file must be replaced by the last good one"
        assert h.metric(RELOADS, target=h.target_name) == reloads
        assert h.worker_pids() == workers, "HAProxy must not have reloaded"
        h.wait_until_routes("check.test", {first.name})  # the old routing, not `second`

        code, body = h.healthz()
        assert code == 503, body
        assert "check" in body, body
        assert "bogus_directive" in h.log_text(), "the checker's message belongs in the log"
        assert lab.state(second.id) == "running"

        # Back to one server: the template is valid again, and HAProxy follows.
        lab.stop(first.id)
        h.wait_until_routes("check.test", {second.name})
        h.poll(lambda: h.healthz()[0] == 200, 10, "/healthz 200 once a config passes again")


# ---------------------------------------------------------------------------- runtime API


def runtime_harness(lab: Lab, tmp_path: Path, slots: int = 4) -> LbsyncHarness:
    return haproxy(lab, tmp_path, "haproxy-runtime", target={"slots": slots})


def slot_servers(text: str) -> list[str]:
    """The ``server sN ...`` lines of the written file."""
    return re.findall(r"^\s+server (s\d+ \S+.*)$", text, re.MULTILINE)


def runtime_servers(h: LbsyncHarness) -> dict[str, tuple[int, int]]:
    """``show servers state`` of the lbsync backends: server name -> (port, admin state)."""
    rows: dict[str, tuple[int, int]] = {}
    columns: list[str] = []
    for line in h.runtime("show servers state").splitlines():
        if line.startswith("# be_id"):
            columns = line[2:].split()
        elif columns and line and not line.startswith("#"):
            row = dict(zip(columns, line.split(), strict=False))
            if row["be_name"].startswith("lbsync_"):
                key = f"{row['be_name']}/{row['srv_name']}"
                rows[key] = (int(row["srv_port"]), int(row["srv_admin_state"]))
    return rows


def test_runtime_moves_servers_without_a_reload(lab: Lab, tmp_path: Path) -> None:
    with runtime_harness(lab, tmp_path, slots=4) as h:
        first = h.backend("first", host="rt.test")
        # A new host changes the structure: one reload (through the master socket).
        h.wait_until_routes("rt.test", {first.name})
        h.poll(lambda: h.healthz()[0] == 200, 10, "/healthz 200")
        workers = h.worker_pids()
        assert len(workers) == 1, workers
        reloads = h.metric(RELOADS, target=h.target_name)
        updates = h.metric(RUNTIME_UPDATES, target=h.target_name, result="ok")
        assert len(slot_servers(h.output_text())) == 4, h.output_text()

        second = h.backend("second", host="rt.test")
        h.wait_until_routes("rt.test", {first.name, second.name})
        lab.stop(first.id)
        left_file(h, first.port)
        h.wait_until_routes("rt.test", {second.name})

        h.poll(
            lambda: h.metric(RUNTIME_UPDATES, target=h.target_name, result="ok") >= updates + 2,
            10,
            "two runtime updates",
        )
        assert h.worker_pids() == workers, "the worker must not change: no reload"
        assert h.metric(RELOADS, target=h.target_name) == reloads
        assert h.metric(RUNTIME_UPDATES, target=h.target_name, result="error") == 0
        # The file still tells the truth: `second` holds a slot, `first`'s slot is empty.
        text = h.output_text()
        assert server_line(second.port) in text
        assert server_line(first.port) not in text
        assert len(slot_servers(text)) == 4
        assert "updated through the runtime API" in h.log_text()
        # What the running worker has, through the runtime API: `second` ready in a slot,
        # `first` gone, the other slots in maintenance on the placeholder.
        live = runtime_servers(h)
        assert len(live) == 4, live
        ready = {port for port, admin in live.values() if not admin & MAINT_FLAGS}
        assert ready == {second.port}, live
        assert first.port not in {port for port, _ in live.values()}, live

        # Everything stopped: every slot empty, HAProxy answers 503, still no reload.
        lab.stop(second.id)
        body = h.wait_until_status("rt.test", 503)
        assert HAPROXY_503 in body, body
        assert h.worker_pids() == workers
        assert h.metric(RELOADS, target=h.target_name) == reloads


def test_runtime_more_backends_than_slots_reloads_once(lab: Lab, tmp_path: Path) -> None:
    with runtime_harness(lab, tmp_path, slots=4) as h:
        first = h.backend("first", host="grow.test")
        h.wait_until_routes("grow.test", {first.name})
        h.poll(lambda: h.healthz()[0] == 200, 10, "/healthz 200")
        workers = h.worker_pids()
        reloads = h.metric(RELOADS, target=h.target_name)
        assert len(slot_servers(h.output_text())) == 4

        more = [h.backend(f"more{i}", host="grow.test") for i in range(4)]  # 5 servers > 4
        names = {first.name, *(b.name for b in more)}
        h.wait_until_routes("grow.test", names, timeout=30)
        h.poll(lambda: len(slot_servers(h.output_text())) == 8, 10, "8 slots in the file")
        assert h.metric(RELOADS, target=h.target_name) == reloads + 1, "exactly one reload"
        assert h.metric(RELOADS, target=h.target_name, result="error") == 0
        new_workers = h.worker_pids()
        assert new_workers != workers, "capacity grew by a reload: a new worker"

        # After the growth, churn is runtime-only again.
        updates = h.metric(RUNTIME_UPDATES, target=h.target_name, result="ok")
        lab.stop(more[0].id)
        extra = h.backend("extra", host="grow.test")
        h.wait_until_routes("grow.test", (names - {more[0].name}) | {extra.name}, timeout=30)
        assert h.metric(RUNTIME_UPDATES, target=h.target_name, result="ok") > updates
        assert h.metric(RELOADS, target=h.target_name) == reloads + 1
        assert h.worker_pids() == new_workers


def test_runtime_change_is_checked_before_it_is_written(lab: Lab, tmp_path: Path) -> None:
    template = tmp_path / "bad-haproxy.cfg.j2"
    template.write_text(bad_haproxy_template())
    with haproxy(
        lab, tmp_path, "haproxy-runtime", target={"slots": 4, "template": str(template)}
    ) as h:
        first = h.backend("first", host="rtcheck.test")
        h.wait_until_routes("rtcheck.test", {first.name})
        h.poll(lambda: h.healthz()[0] == 200, 10, "/healthz 200 with a good config")
        good = h.output_bytes()
        assert good is not None and b"bogus_directive" not in good

        # Same structure (one more server in a free slot): a runtime update, but the file
        # this template renders for two servers is refused by `haproxy -c`.
        h.backend("second", host="rtcheck.test")
        # The new bytes are not just slot lines: a checked write, refused, then rolled back.
        h.poll(
            lambda: h.metric(CHECK_FAILURES, target=h.target_name) >= 1,
            15,
            "the check refused the file this template renders for two servers",
        )
        assert h.output_bytes() == good
        h.wait_until_routes("rtcheck.test", {first.name})
