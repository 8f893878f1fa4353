"""`lbsync run` end to end: a real daemon, a real nginx, real backends on the lab engine.

Every test drives lbsync only through what users have (labels, the YAML file, signals) and
checks what users see: answers through nginx, the output file, /healthz, /metrics, /status
and the log. Each test has its own run id (see :mod:`tests.support.harness`), so tests
running in parallel on the same engine never route each other's backends.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from tests.support.harness import RUN_LABEL, LbsyncHarness
from tests.support.lab import Lab, free_port
from tests.support.scenarios import (
    health_gates_traffic,
    hostile_labels_never_reach_the_file,
    server_line,
)

pytestmark = pytest.mark.engine

#: How long after a debounced pass may start (debounce.max of the harness) plus slack.
PAST_DEBOUNCE = 0.8


def file_identity(path: Path) -> tuple[int, int, int]:
    st = path.stat()
    return st.st_ino, st.st_mtime_ns, st.st_size


# ---------------------------------------------------------------------------- basics


def test_backends_stop_one_then_all_then_503(lab: Lab, tmp_path: Path) -> None:
    with LbsyncHarness(lab, tmp_path) as h:
        one = h.backend("one", host="app.test")
        two = h.backend("two", host="app.test")
        h.wait_until_routes("app.test", {one.name, two.name})

        lab.stop(one.id)
        h.wait_until_routes("app.test", {two.name})
        assert server_line(one.port) not in h.output_text()

        lab.stop(two.id)
        h.wait_until_status("app.test", 503)
        text = h.output_text()
        assert "server_name app.test;" in text, "the stopped host's server block must stay"
        assert server_line(two.port) not in text

        # A host nobody declares: the catch-all answers 503, never another site.
        status, body = h.get("unknown.test")
        assert status == 503, body
        assert "backend=" not in body


def test_container_started_before_lbsync_is_routed_at_start(lab: Lab, tmp_path: Path) -> None:
    h = LbsyncHarness(lab, tmp_path)
    h.start_nginx()
    early = h.backend("early", host="early.test")  # before lbsync: the start-up listing finds it
    with h:
        # Ready means the first pass has reloaded nginx: the backend is in the file already.
        assert server_line(early.port) in h.output_text()
        h.wait_until_routes("early.test", {early.name}, timeout=5)


def test_healthcheck_gates_traffic(lab: Lab, tmp_path: Path) -> None:
    with LbsyncHarness(lab, tmp_path) as h:
        health_gates_traffic(h, lab, "server_name health.test;")


def test_path_routing_and_named_services(lab: Lab, tmp_path: Path) -> None:
    with LbsyncHarness(lab, tmp_path) as h:
        api = h.backend("api", host="paths.test", path="/api", paths=["/api/x"])
        site = h.backend("site", host="paths.test", path="/", paths=["/other"])
        port = free_port()
        both = h.backend(
            "both",
            port=port,
            labels={
                "lbsync.web.host": "web.test",
                "lbsync.web.port": str(port),
                "lbsync.admin.host": "admin.test",
                "lbsync.admin.port": str(port),
            },
        )
        h.wait_until_routes("paths.test", {api.name}, path="/api/x")
        h.wait_until_routes("paths.test", {site.name}, path="/other")
        h.wait_until_routes("paths.test", {site.name}, path="/")
        status, body = h.get("paths.test", "/api/x")
        assert (status, body.strip()) == (200, f"backend={api.name} path=/api/x")
        status, body = h.get("paths.test", "/other")
        assert (status, body.strip()) == (200, f"backend={site.name} path=/other")

        h.wait_until_routes("web.test", {both.name})
        h.wait_until_routes("admin.test", {both.name})
        assert h.get("admin.test")[1].strip() == f"backend={both.name} path=/"


# ---------------------------------------------------------------------------- safety


def test_hostile_labels_never_reach_the_file(lab: Lab, tmp_path: Path) -> None:
    with LbsyncHarness(lab, tmp_path) as h:
        hostile_labels_never_reach_the_file(h)


def test_upstream_label_never_takes_the_operators_own_upstream(lab: Lab, tmp_path: Path) -> None:
    # The operator's own conf.d file defines `upstream grafana` and proxies ops.test to it.
    # A container labelled lbsync.upstream=grafana gets lbsync_grafana: it is routed under
    # its own host, the operator's server keeps its traffic, and nginx -t keeps passing
    # (issue #17: it was written as `upstream grafana`, a duplicate nginx refuses).
    h = LbsyncHarness(lab, tmp_path)
    operator = h.backend("operator", run_label=False, enable=False)
    (h.conf_dir / "operator.conf").write_text(
        f"upstream grafana {{ server 127.0.0.1:{operator.port}; }}\n"
        "server {\n"
        f"    listen 127.0.0.1:{h.listen_port};\n"
        "    server_name ops.test;\n"
        "    location / { proxy_pass http://grafana; }\n"
        "}\n"
    )
    with h:
        h.wait_until_routes("ops.test", {operator.name})
        graf = h.backend("graf", host="graf.test", labels={"lbsync.upstream": "grafana"})
        h.wait_until_routes("graf.test", {graf.name})
        h.wait_until_routes("ops.test", {operator.name})
        text = h.output_text()
        assert "upstream lbsync_grafana {" in text
        assert "upstream grafana" not in text and "http://grafana;" not in text

        # Later changes still go through: lbsync's passes keep passing the check.
        more = h.backend("graf2", host="graf.test", labels={"lbsync.upstream": "grafana"})
        h.wait_until_routes("graf.test", {graf.name, more.name})
        h.wait_until_routes("ops.test", {operator.name})
        lab.stop(graf.id)
        h.wait_until_routes("graf.test", {more.name})
        assert h.metric("lbsync_check_failures_total", target=h.target_name) == 0
        h.poll(lambda: h.healthz()[0] == 200, 5, "/healthz 200")


def test_overlong_path_label_stops_nothing_else(lab: Lab, tmp_path: Path) -> None:
    # lbsync.path = "/" + 5,000 characters: past nginx's 4,094-byte token (issue #17 made
    # every pass fail from then on). It is skipped with one warning; a backend started
    # after it is routed within seconds, and a stopped one leaves nginx (503).
    with LbsyncHarness(lab, tmp_path) as h:
        long_path = "/" + "a" * 5000
        bad = h.backend("long", host="long.test", path=long_path)
        h.poll(
            lambda: any(s["container"] == bad.name for s in h.status()["targets"][0]["skipped"]),
            10,
            f"{bad.name} reported as skipped",
        )
        after = h.backend("after", host="after.test")
        h.wait_until_routes("after.test", {after.name}, timeout=10)
        text = h.output_text()
        assert "a" * 100 not in text and "long.test" not in text
        assert server_line(bad.port) not in text

        lab.stop(after.id)
        h.wait_until_status("after.test", 503, timeout=10)
        assert server_line(after.port) not in h.output_text()
        h.poll(lambda: h.healthz()[0] == 200, 5, "/healthz 200")
        assert h.metric("lbsync_check_failures_total", target=h.target_name) == 0

        skipped = {s["container"]: s for s in h.status()["targets"][0]["skipped"]}
        assert skipped[bad.name]["reason"] == "invalid_label"
        warnings = [ln for ln in h.log_text().splitlines() if " WARNING " in ln and bad.name in ln]
        assert len(warnings) == 1, warnings
        assert "label lbsync.path" in warnings[0] and "at most 1,024 characters" in warnings[0]
        assert len(warnings[0]) < 600, "the value is cut in the warning"


BAD_TEMPLATE = """\
# generated by lbsync from a test template: invalid once more than one server exists
{% set ns = namespace(servers=0) %}
{% for u in upstreams %}
{% set ns.servers = ns.servers + (u.servers | length) %}
{% endfor %}
{% if ns.servers > 1 %}
bogus_directive on;
{% endif %}
{% for u in upstreams if u.servers %}
upstream {{ u.name | nginx_quote }} {
{% for s in u.servers %}
    server {{ s.address }}:{{ s.port }};
{% endfor %}
}
{% endfor %}
{% for h in hosts %}
server {
    listen {{ target.listen | nginx_quote }};
    server_name {{ h.name | nginx_quote }};
{% for r in h.routes %}
    location {{ r.path | nginx_quote }} {
{% if r.upstream.servers %}
        proxy_pass {{ ("http://" ~ r.upstream.name) | nginx_quote }};
{% else %}
        return 503;
{% endif %}
    }
{% endfor %}
}
{% endfor %}
"""


def test_refused_check_keeps_the_last_good_file(lab: Lab, tmp_path: Path) -> None:
    template = tmp_path / "bad.conf.j2"
    template.write_text(BAD_TEMPLATE)
    with LbsyncHarness(lab, tmp_path, target={"template": str(template)}) as h:
        first = h.backend("first", host="check.test")
        h.wait_until_routes("check.test", {first.name})
        h.poll(lambda: h.healthz()[0] == 200, 5, "/healthz 200 with a good config")
        good = h.output_bytes()
        assert good is not None and b"bogus_directive" not in good
        identity = file_identity(h.output)
        before = h.metrics()
        reloads = before.value("lbsync_reloads_total", target=h.target_name)
        assert before.value("lbsync_check_failures_total", target=h.target_name) == 0

        second = h.backend("second", host="check.test")
        h.poll(
            lambda: h.metric("lbsync_check_failures_total", target=h.target_name) >= 1,
            10,
            "lbsync_check_failures_total >= 1",
        )
        # The counter moves when the check fails; the last good file goes back right after.
        h.poll(
            lambda: "the proxy's check refused" in h.log_text(),
            5,
            "the refusal is logged (after the last good file is back)",
        )
        assert h.output_bytes() == good, "the refused file must be replaced by the last good one"
        assert file_identity(h.output)[2] == identity[2]
        assert h.metric("lbsync_reloads_total", target=h.target_name) == reloads
        h.wait_until_routes("check.test", {first.name})  # the old routing, not `second`

        code, body = h.healthz()
        assert code == 503, body
        assert "check" in body, body
        log = h.log_text()
        assert "bogus_directive" in log, "the checker's message belongs in the log"
        assert lab.state(second.id) == "running"


def test_a_template_reaching_python_keeps_the_last_good_file(lab: Lab, tmp_path: Path) -> None:
    marker = tmp_path / "MARKER"
    escape = f"{{{{ cycler.__init__.__globals__.os.system('touch {marker}') }}}}"
    template = tmp_path / "escape.conf.j2"
    template.write_text(BAD_TEMPLATE.replace("bogus_directive on;", escape))
    with LbsyncHarness(lab, tmp_path, target={"template": str(template)}) as h:
        first = h.backend("first", host="sandbox.test")
        h.wait_until_routes("sandbox.test", {first.name})
        h.poll(lambda: h.healthz()[0] == 200, 5, "/healthz 200 with a good config")
        good = h.output_bytes()
        reloads = h.metric("lbsync_reloads_total", target=h.target_name)

        second = h.backend("second", host="sandbox.test")  # two servers: the escape line runs
        h.poll(lambda: "refused by the sandbox" in h.log_text(), 10, "the refusal logged")
        line = next(x for x in h.log_text().splitlines() if "refused by the sandbox" in x)
        assert f"template {template}, line 7: refused by the sandbox: " in line, line
        assert "ERROR" in line and "Traceback" not in h.log_text()
        assert not marker.exists()
        assert h.output_bytes() == good
        assert h.metric("lbsync_reloads_total", target=h.target_name) == reloads
        code, body = h.healthz()
        assert code == 503 and "sandbox" in body, body
        h.wait_until_routes("sandbox.test", {first.name})  # nginx keeps the last good file
        assert lab.state(second.id) == "running"


def test_unrelated_containers_write_and_reload_nothing(lab: Lab, tmp_path: Path) -> None:
    with LbsyncHarness(lab, tmp_path) as h:
        mine = h.backend("mine", host="mine.test")
        h.wait_until_routes("mine.test", {mine.name})
        identity = file_identity(h.output)
        content = h.output_bytes()
        before = h.metrics()
        reloads = before.value("lbsync_reloads_total")
        writes = before.value("lbsync_writes_total")

        def settle(action_at: float, seen: float) -> None:
            # lbsync saw the events, and the debounce window is over.
            h.poll(
                lambda: (
                    h.metric("lbsync_events_total", type="container") > seen
                    and time.monotonic() - action_at > PAST_DEBOUNCE
                ),
                10,
                "the unrelated events seen, the debounce window over",
            )

        passes = before.value("lbsync_passes_total")
        started_at = time.monotonic()
        seen = h.metric("lbsync_events_total", type="container")
        # No lbsync labels at all; and fully labelled, but for another run (another target).
        plain = h.backend("plain", run_label=False, enable=False)
        other = h.backend(
            "other", host="mine.test", run_label=False, labels={RUN_LABEL: f"{h.run_id}-other"}
        )
        settle(started_at, seen)
        stopped_at = time.monotonic()
        seen = h.metric("lbsync_events_total", type="container")
        lab.stop(plain.id)
        lab.stop(other.id)
        settle(stopped_at, seen)
        # Containers no target selects cost no pass at all, let alone a write or a reload.
        assert h.metric("lbsync_passes_total") == passes

        after = h.metrics()
        assert file_identity(h.output) == identity, "the output file was rewritten"
        assert h.output_bytes() == content
        assert after.value("lbsync_reloads_total") == reloads
        assert after.value("lbsync_writes_total") == writes
        h.wait_until_routes("mine.test", {mine.name})


# ---------------------------------------------------------------------------- the proxy


def test_proxy_missing_then_replaced(lab: Lab, tmp_path: Path) -> None:
    with LbsyncHarness(lab, tmp_path, nginx=False, wait_ready=False) as h:
        one = h.backend("one", host="proxy.test")
        h.poll(lambda: h.metric("lbsync_passes_total") >= 1, 10, "a first pass")
        h.poll(
            lambda: h.healthz()[0] == 503 and "proxy container missing" in h.healthz()[1],
            10,
            "/healthz 503: proxy container missing",
        )
        assert not h.output.exists(), "nothing may be written while no proxy exists"
        assert os.listdir(h.conf_dir) == []
        assert "no running proxy container matches" in h.log_text()

        first_nginx = h.start_nginx()
        h.wait_until_routes("proxy.test", {one.name})
        h.poll(lambda: h.healthz()[0] == 200, 10, "/healthz 200 once nginx exists")

        # Replace the proxy: same label, same mount. The next change must reach the new one.
        h.remove_nginx(first_nginx)
        h.start_nginx()
        h.wait_until_routes("proxy.test", {one.name})  # it read the file on start
        reloads = h.metric("lbsync_reloads_total", target=h.target_name, result="ok")
        two = h.backend("two", host="proxy.test")
        h.wait_until_routes("proxy.test", {one.name, two.name})
        assert h.metric("lbsync_reloads_total", target=h.target_name, result="ok") > reloads
        h.poll(lambda: h.healthz()[0] == 200, 10, "/healthz 200 with the new nginx")


def test_rogue_proxy_container_blocks_nothing(lab: Lab, tmp_path: Path) -> None:
    """Anyone can label a container as the proxy. One with no nginx, whose name sorts first,
    is reported and never reloaded; nginx keeps getting every change (SPEC §1)."""
    with LbsyncHarness(lab, tmp_path) as h:
        rogue_name = f"aaa-{h.run_id}-rogue"
        rogue = lab.run_backend(
            free_port(), name=rogue_name, labels={"lbsync.proxy": h.target_name}
        )
        h.started.append(rogue)

        web = h.backend("web", host="rogue.test")
        started = time.monotonic()
        h.wait_until_routes("rogue.test", {web.name}, timeout=10)
        routed_after = time.monotonic() - started
        other = h.backend("other", host="rogue.test")
        h.wait_until_routes("rogue.test", {web.name, other.name}, timeout=10)
        lab.stop(web.id)
        h.wait_until_routes("rogue.test", {other.name}, timeout=10)
        assert server_line(web.port) not in h.output_text()
        lab.stop(other.id)
        h.wait_until_status("rogue.test", 503, timeout=10)
        assert routed_after < 10, routed_after

        # Reported: /status, one warning naming it, a metric; /healthz stays 200.
        code, body = h.healthz()
        assert code == 200, body
        left_out = h.status()["targets"][0]["proxies_left_out"]
        assert [(e["container"], e["container_id"], e["reason"]) for e in left_out] == [
            (rogue_name, rogue, "unrunnable")
        ], left_out
        assert set(left_out[0]) == {"container", "container_id", "reason", "detail"}
        assert "not found" in left_out[0]["detail"], left_out
        warnings = [
            line for line in h.log_text().splitlines() if " WARNING " in line and rogue_name in line
        ]
        assert len(warnings) == 1, warnings
        assert "the check could not run in it" in warnings[0]
        unrunnable = h.metric(
            "lbsync_proxies_left_out_total", target=h.target_name, reason="unrunnable"
        )
        assert unrunnable >= 4  # each of the four changes checked it
        assert "SIGHUP" not in lab.logs(rogue), "the rogue container was sent a reload"

        # lbsync restarted beside it: the first pass (the same bytes) reloads nginx alone.
        h.stop()
        h.start()
        target = h.status()["targets"][0]
        assert [(e["container"], e["reason"]) for e in target["proxies_left_out"]] == [
            (rogue_name, "unrunnable")
        ], target
        assert "SIGHUP" not in lab.logs(rogue), "the rogue container was sent a reload"
        back = h.backend("back", host="rogue.test")
        h.wait_until_routes("rogue.test", {back.name}, timeout=10)


def test_a_proxy_container_that_never_reloads_holds_back_no_other(lab: Lab, tmp_path: Path) -> None:
    """A labelled container whose `nginx -t` passes but which never reloads: nginx is
    reloaded on its own all the same, the pass counts as done, and the other is reported."""
    with LbsyncHarness(lab, tmp_path) as h:
        liar_name = f"aaa-{h.run_id}-liar"
        liar = lab.run_backend(free_port(), name=liar_name, labels={"lbsync.proxy": h.target_name})
        h.started.append(liar)
        lab.exec(
            liar, "sh", "-c", "printf '#!/bin/sh\\nexit 0\\n' > /bin/nginx; chmod +x /bin/nginx"
        )

        web = h.backend("web", host="liar.test")
        h.wait_until_routes("liar.test", {web.name}, timeout=10)

        def reported() -> bool:
            left_out = h.status()["targets"][0]["proxies_left_out"]
            return [(e["container"], e["reason"]) for e in left_out] == [
                (liar_name, "reload_failed")
            ]

        h.poll(reported, 20, f"/status reports {liar_name} as reload_failed")
        code, body = h.healthz()
        assert code == 200, body
        assert h.status()["targets"][0]["last_reload_result"] == "ok"
        assert h.metric("lbsync_reloads_total", target=h.target_name, result="error") >= 1
        assert "SIGHUP ignored" in lab.logs(liar)  # it was sent the reload, and ignored it

        lab.stop(web.id)
        h.wait_until_status("liar.test", 503, timeout=15)


# ---------------------------------------------------------------------------- lifecycle


def test_sigterm_exits_zero(lab: Lab, tmp_path: Path) -> None:
    with LbsyncHarness(lab, tmp_path) as h:
        web = h.backend("web", host="term.test")
        h.wait_until_routes("term.test", {web.name})
        started = time.monotonic()
        assert h.stop(expect_code=0) == 0
        assert time.monotonic() - started < 10
        log = h.log_text()
        assert "stopping" in log
        assert "Traceback" not in log


def test_stopping_container_leaves_before_the_quiet_window(lab: Lab, tmp_path: Path) -> None:
    h = LbsyncHarness(lab, tmp_path, config={"debounce": {"quiet": "2s", "max": "5s"}})
    h.start_nginx()
    # Started before lbsync, so its first pass already routes both.
    draining = h.backend("draining", host="drain.test", stop_grace=3)
    staying = h.backend("staying", host="drain.test")
    with h:
        h.wait_until_routes("drain.test", {draining.name, staying.name})
        assert server_line(draining.port) in h.output_text()

        errors: list[BaseException] = []

        def stop() -> None:
            try:
                lab.stop(draining.id)  # returns after the 3 s grace
            except BaseException as exc:
                errors.append(exc)

        stopper = threading.Thread(target=stop)
        issued = time.monotonic()
        stopper.start()
        try:
            h.poll(
                lambda: server_line(draining.port) not in h.output_text(),
                2.5,
                "the stopping backend left the output file",
            )
            left_after = time.monotonic() - issued
            still_running = lab.state(draining.id) == "running"
            h.wait_until_routes("drain.test", {staying.name}, timeout=2)
            routed_after = time.monotonic() - issued
        finally:
            stopper.join(30)
        assert not errors, errors
        assert still_running, "the backend should still be in its stop grace when it left"
        assert left_after < 1.0, f"left the file {left_after:.2f} s after the stop (quiet is 2 s)"
        assert routed_after < 1.9, f"nginx still routed it {routed_after:.2f} s after the stop"
