"""Operations (SPEC §6, §7): metrics, the status document, health, live config, logs, --diff.

Each engine test runs a real ``lbsync run`` (see :mod:`tests.support.harness`) beside the lab
nginx, with ``docker.host`` pointing at a :mod:`tests.support.socket_proxy` in front of the
engine, so a test can take the engine away from lbsync without touching dockerd. Every
harness has its own run id: lbsync routes only the containers of its test (others share the
engine), and its target and nginx label are named after that id.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

from lbsync.render.templates import builtin_template_dirs
from tests.support.harness import REPO_ROOT, LbsyncHarness, MetricsSnapshot
from tests.support.lab import Lab, free_port
from tests.support.socket_proxy import ThreadedSocketProxy, short_socket_path

ISO_SECONDS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
ISO_MILLIS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
ENGINE_TIMEOUT = 30.0  # the watcher's reconnect backoff tops out at 10 s (plus jitter)
CONFIG_TIMEOUT = 10.0  # inotify sees an edit at once; the poll is every 10 s (1 s without)

# --------------------------------------------------------------------------- the public names

#: Every metric, its type and its label names: a public interface (dashboards, alerts).
METRICS: dict[str, tuple[str, frozenset[str]]] = {
    "lbsync_events_total": ("counter", frozenset({"type", "action"})),
    "lbsync_passes_total": ("counter", frozenset()),
    "lbsync_renders_total": ("counter", frozenset({"target"})),
    "lbsync_writes_total": ("counter", frozenset({"target", "result"})),
    "lbsync_reloads_total": ("counter", frozenset({"target", "result"})),
    "lbsync_runtime_updates_total": ("counter", frozenset({"target", "result"})),
    "lbsync_check_failures_total": ("counter", frozenset({"target"})),
    "lbsync_proxies_left_out_total": ("counter", frozenset({"target", "reason"})),
    "lbsync_engine_connected": ("gauge", frozenset()),
    "lbsync_engine_reconnects_total": ("counter", frozenset()),
    "lbsync_event_reader_failures_total": ("counter", frozenset()),
    "lbsync_containers_discovered": ("gauge", frozenset({"target"})),
    "lbsync_containers_routed": ("gauge", frozenset({"target"})),
    "lbsync_containers_skipped": ("gauge", frozenset({"target", "reason"})),
    "lbsync_upstreams": ("gauge", frozenset({"target"})),
    "lbsync_servers": ("gauge", frozenset({"target"})),
    "lbsync_event_to_reload_seconds": ("histogram", frozenset({"target"})),
}

#: The fields of `/status`, level by level: a public interface (scripts, the status page).
STATUS_FIELDS = {
    "top": {"version", "started_at", "engine", "config", "containers", "targets",
            "recent_changes"},
    "engine": {"endpoint", "connected", "api_version", "disconnected_since", "last_error",
               "reconnects", "events"},
    "config": {"source", "error"},
    "target": {"name", "output", "template", "reload", "waiting_for_proxy", "last_pass",
               "last_reload", "last_reload_result", "last_error", "hosts", "upstreams",
               "skipped", "proxies_left_out"},
    "host": {"name", "routes"},
    "route": {"path", "upstream"},
    "upstream": {"name", "balance", "servers"},
    "server": {"container", "container_id", "address", "port", "weight", "health"},
    "skipped": {"container", "container_id", "reason", "detail"},
    "recent_change": {"at", "target", "change", "duration_ms"},
}  # fmt: skip

HOSTILE_LABELS = {"lbsync.host": "evil.test;} server { listen 6666; } #", "lbsync.port": "80"}

#: Appended to the builtin nginx template for the live-config tests: a var printed into the
#: file, and a switch that makes nginx -t refuse the result.
TEMPLATE_TAIL = """
# ops marker: {{ vars.marker | default("none") }}
{% if vars.broken | default(false) %}
lbsync_ops_test_unknown_directive on;
{% endif %}
"""


# --------------------------------------------------------------------------- helpers


def exposed_metrics(snapshot: MetricsSnapshot) -> dict[str, tuple[str, frozenset[str], int]]:
    """name -> (type, label names seen, number of samples), as a scraper sees them.

    Counters are named with their `_total` sample name; prometheus_client's `*_created`
    timestamps and a histogram's `le` are left out.
    """
    result = {}
    names = set(snapshot.families)
    for family in snapshot.families.values():
        if family.name.endswith("_created") and family.name.removesuffix("_created") in names:
            continue
        name = family.name + "_total" if family.type == "counter" else family.name
        samples = [s for s in family.samples if not s.name.endswith("_created")]
        labels = frozenset(k for s in samples for k in s.labels if k != "le")
        result[name] = (family.type, labels, len(samples))
    return result


@pytest.fixture
def engine_proxy() -> Iterator[ThreadedSocketProxy]:
    """The engine socket behind a forwarder the test can cut (tests/support/socket_proxy.py)."""
    with ThreadedSocketProxy(short_socket_path()) as proxy:
        yield proxy


def harness(
    lab: Lab,
    tmp_path: Path,
    proxy: ThreadedSocketProxy,
    *,
    config: Mapping[str, Any] | None = None,
    target: Mapping[str, Any] | None = None,
) -> LbsyncHarness:
    return LbsyncHarness(
        lab, tmp_path, config={"docker": {"host": proxy.url}, **(config or {})}, target=target
    )


def user_template(tmp_path: Path) -> Path:
    """The builtin nginx template plus TEMPLATE_TAIL, as a user's own .j2 file."""
    builtin = next(
        d / "nginx.conf.j2" for d in builtin_template_dirs() if (d / "nginx.conf.j2").is_file()
    )
    path = tmp_path / "ops-nginx.conf.j2"
    path.write_text(builtin.read_text() + TEMPLATE_TAIL)
    return path


def write_config(h: LbsyncHarness) -> None:
    """Write ``h.config`` the way an editor that saves atomically does (new file, rename)."""
    temp = h.config_path.with_name(h.config_path.name + ".new")
    temp.write_text(yaml.safe_dump(h.config, sort_keys=False))
    os.replace(temp, h.config_path)


def json_lines(text: str) -> list[dict[str, Any]]:
    """Every line of lbsync's log as a JSON object (fails on a line that is not one)."""
    entries = []
    for number, line in enumerate(text.splitlines(), 1):
        try:
            entry = json.loads(line)
        except ValueError:
            raise AssertionError(f"log line {number} is not JSON: {line!r}") from None
        assert isinstance(entry, dict), f"log line {number} is not an object: {line!r}"
        entries.append(entry)
    return entries


def reload_lines(entries: list[dict[str, Any]], target: str) -> list[str]:
    prefix = f"target {target}: reloaded "
    return [
        e["message"] for e in entries if e["level"] == "info" and e["message"].startswith(prefix)
    ]


# --------------------------------------------------------------------------- metrics


def test_readme_documents_every_metric_with_its_labels() -> None:
    """The names pinned above are the ones README lists (one line each, with its labels)."""
    readme = (REPO_ROOT / "README.md").read_text().splitlines()
    missing = []
    for name, (_, labels) in sorted(METRICS.items()):
        lines = [line for line in readme if re.search(rf"\b{name}\b", line)]
        if not any(all(re.search(rf"\b{label}\b", line) for label in labels) for line in lines):
            missing.append(f"{name}{{{','.join(sorted(labels))}}}")
    assert not missing, "README.md does not document: " + ", ".join(missing)


@pytest.mark.engine
def test_metrics_are_the_documented_ones_and_move(
    lab: Lab, tmp_path: Path, engine_proxy: ThreadedSocketProxy
) -> None:
    template = user_template(tmp_path)
    with harness(lab, tmp_path, engine_proxy, target={"template": str(template)}) as h:
        name = h.target_name
        first = h.backend("first", host="metrics.test")
        hostile = h.backend("hostile", labels=HOSTILE_LABELS)
        h.wait_until_routes("metrics.test", {first.name})
        h.poll(
            lambda: h.metric("lbsync_containers_skipped", reason="invalid_label") == 1,
            10,
            f"{hostile.name} counted as skipped (invalid_label)",
        )
        before = h.metrics()
        assert before.value("lbsync_engine_connected") == 1
        assert before.value("lbsync_servers", target=name) == 1

        # One more backend of a host that exists: exactly one write and one reload.
        second = h.backend("second", host="metrics.test")
        h.wait_until_routes("metrics.test", {first.name, second.name})
        h.poll(lambda: h.metric("lbsync_servers", target=name) == 2, 5, "lbsync_servers 2")
        after = h.metrics()

        def delta(sample: str, **labels: str) -> float:
            return after.value(sample, **labels) - before.value(sample, **labels)

        assert delta("lbsync_reloads_total", target=name, result="ok") == 1
        assert after.value("lbsync_reloads_total", target=name, result="error") == 0
        assert delta("lbsync_writes_total", target=name, result="ok") == 1
        # At least one latency sample for the reload. lbsync takes one per batch of events
        # behind the pass, so `docker run` (create, connect, start) gives one or two.
        assert delta("lbsync_event_to_reload_seconds_count", target=name) >= 1
        assert delta("lbsync_event_to_reload_seconds_sum", target=name) > 0
        assert delta("lbsync_passes_total") >= 1
        assert delta("lbsync_renders_total", target=name) >= 1
        assert after.value("lbsync_servers", target=name) == 2
        assert after.value("lbsync_upstreams", target=name) == 1
        assert after.value("lbsync_containers_routed", target=name) == 2
        assert after.value("lbsync_containers_discovered", target=name) == 3  # 2 + hostile
        assert after.value("lbsync_containers_skipped", target=name, reason="invalid_label") == 1
        assert after.value("lbsync_engine_connected") == 1
        assert after.value("lbsync_engine_reconnects_total") == 0
        assert after.value("lbsync_check_failures_total", target=name) == 0

        # A config nginx -t refuses: counted, the last good file stays, no reload.
        good = h.output_bytes()
        h.config["targets"][0]["vars"] = {"broken": True}
        write_config(h)
        h.poll(
            lambda: h.metric("lbsync_check_failures_total", target=name) == 1,
            CONFIG_TIMEOUT,
            "lbsync_check_failures_total 1 after a refused config",
        )
        refused = h.metrics()
        assert refused.value("lbsync_reloads_total", target=name, result="ok") == after.value(
            "lbsync_reloads_total", target=name, result="ok"
        )
        assert h.output_bytes() == good
        code, body = h.healthz()
        assert code == 503 and "check failed" in body, body
        h.config["targets"][0]["vars"] = {}
        write_config(h)
        h.poll(lambda: h.healthz()[0] == 200, CONFIG_TIMEOUT, "/healthz 200 after the fix")

        # Names, types and label names: exactly the documented set.
        final = h.metrics()
        exposed = exposed_metrics(final)
        assert set(exposed) == set(METRICS), (
            f"undocumented: {sorted(set(exposed) - set(METRICS))}, "
            f"missing: {sorted(set(METRICS) - set(exposed))}"
        )
        for metric, (kind, labels) in METRICS.items():
            got_kind, got_labels, samples = exposed[metric]
            assert got_kind == kind, f"{metric} is a {got_kind}, not a {kind}"
            if samples:
                assert got_labels == labels, f"{metric} has labels {sorted(got_labels)}"
        # Every labelled family has shown its labels by now, except the HAProxy Runtime API
        # counter (an nginx target never uses it), the events counter, which
        # test_events_are_counted_by_type_and_action covers on its own, and the proxy
        # containers left out (one nginx here; test_daemon_e2e's rogue proxy tests move it).
        silent = {m for m, (_, _, n) in exposed.items() if n == 0}
        expected_silent = {
            "lbsync_runtime_updates_total",
            "lbsync_events_total",
            "lbsync_proxies_left_out_total",
        }
        assert silent <= expected_silent, f"no samples for {sorted(silent)}"


@pytest.mark.engine
def test_events_are_counted_by_type_and_action(
    lab: Lab, tmp_path: Path, engine_proxy: ThreadedSocketProxy
) -> None:
    with harness(lab, tmp_path, engine_proxy) as h:
        web = h.backend("web", host="events.test")
        h.wait_until_routes("events.test", {web.name})
        snapshot = h.metrics()
        events = snapshot.families["lbsync_events"]
        assert snapshot.value("lbsync_events_total", type="container", action="start") >= 1, (
            f"lbsync_events_total has no container/start sample: {events.samples}"
        )
        labels = {frozenset(s.labels) for s in events.samples if s.name.endswith("_total")}
        assert labels == {frozenset({"type", "action"})}
        watcher_events = h.status()["engine"]["events"]
        assert snapshot.value("lbsync_events_total") <= watcher_events


# --------------------------------------------------------------------------- /status


@pytest.mark.engine
def test_status_document_fields_and_values(
    lab: Lab, tmp_path: Path, engine_proxy: ThreadedSocketProxy
) -> None:
    with harness(lab, tmp_path, engine_proxy) as h:
        web = h.backend("web", host="status.test", path="/app", paths=["/app"], health=True)
        hostile = h.backend("hostile", labels=HOSTILE_LABELS)
        lab.wait_health(web.id)
        h.wait_until_routes("status.test", {web.name}, path="/app")

        def settled() -> dict[str, Any] | None:
            doc = h.status()
            target = doc["targets"][0]
            if target["skipped"] and target["upstreams"] and target["upstreams"][0]["servers"]:
                return doc
            return None

        h.poll(settled, 10, "/status shows the backend and the skipped container")
        doc = h.status()

        assert set(doc) == STATUS_FIELDS["top"]
        assert set(doc["engine"]) == STATUS_FIELDS["engine"]
        assert set(doc["config"]) == STATUS_FIELDS["config"]
        assert len(doc["targets"]) == 1
        target = doc["targets"][0]
        assert set(target) == STATUS_FIELDS["target"]
        for host in target["hosts"]:
            assert set(host) == STATUS_FIELDS["host"]
            for route in host["routes"]:
                assert set(route) == STATUS_FIELDS["route"]
        for upstream in target["upstreams"]:
            assert set(upstream) == STATUS_FIELDS["upstream"]
            for server in upstream["servers"]:
                assert set(server) == STATUS_FIELDS["server"]
        for skipped in target["skipped"]:
            assert set(skipped) == STATUS_FIELDS["skipped"]
        # One proxy container, and it is nginx (test_daemon_e2e pins the entries' fields).
        assert target["proxies_left_out"] == []
        assert doc["recent_changes"]
        for change in doc["recent_changes"]:
            assert set(change) == STATUS_FIELDS["recent_change"]

        # Values.
        assert isinstance(doc["version"], str) and doc["version"]
        assert ISO_SECONDS.match(doc["started_at"])
        assert isinstance(doc["containers"], int) and doc["containers"] >= 3
        engine = doc["engine"]
        assert engine["endpoint"] == engine_proxy.url
        assert engine["connected"] is True
        assert re.match(r"^\d+\.\d+$", engine["api_version"])
        assert engine["disconnected_since"] is None
        assert engine["last_error"] is None
        assert engine["reconnects"] == 0
        assert isinstance(engine["events"], int) and engine["events"] > 0
        assert doc["config"] == {"source": str(h.config_path), "error": None}

        assert target["name"] == h.target_name
        assert target["output"] == str(h.output)
        assert target["template"] == "builtin:nginx"
        assert target["reload"] == "signal"
        assert target["waiting_for_proxy"] is False
        assert target["last_reload_result"] == "ok"
        assert target["last_error"] is None
        assert ISO_SECONDS.match(target["last_reload"])
        assert ISO_SECONDS.match(target["last_pass"])

        [host] = target["hosts"]
        assert host["name"] == "status.test"
        [route] = host["routes"]
        [upstream] = target["upstreams"]
        assert route == {"path": "/app", "upstream": upstream["name"]}
        assert upstream["name"].startswith("lbsync_status_test_")
        assert upstream["balance"] == "round_robin"
        assert upstream["servers"] == [
            {
                "container": web.name,
                "container_id": web.id,
                "address": "127.0.0.1",
                "port": web.port,
                "weight": 1,
                "health": "healthy",
            }
        ]
        [skipped] = target["skipped"]
        assert skipped["container"] == hostile.name
        assert skipped["container_id"] == hostile.id
        assert skipped["reason"] == "invalid_label"
        assert hostile.name in skipped["detail"]
        assert "lbsync.host" in skipped["detail"]

        latest = doc["recent_changes"][0]
        assert latest["target"] == h.target_name
        assert web.name in latest["change"]
        assert ISO_SECONDS.match(latest["at"])
        assert isinstance(latest["duration_ms"], int | float) and latest["duration_ms"] > 0


# --------------------------------------------------------------------------- engine outage


@pytest.mark.engine
def test_healthz_follows_the_engine_and_livez_never_does(
    lab: Lab, tmp_path: Path, engine_proxy: ThreadedSocketProxy
) -> None:
    with harness(lab, tmp_path, engine_proxy) as h:
        web = h.backend("web", host="outage.test")
        h.wait_until_routes("outage.test", {web.name})
        livez: list[int] = []

        def healthz_is(code: int) -> bool:
            livez.append(h.livez())
            return h.healthz()[0] == code

        engine_proxy.cut()
        h.poll(lambda: healthz_is(503), 10, "/healthz 503 while the engine is away")
        code, body = h.healthz()
        assert code == 503
        assert "engine disconnected since" in body, body
        doc = h.status()
        assert doc["engine"]["connected"] is False
        assert ISO_SECONDS.match(doc["engine"]["disconnected_since"])
        assert doc["engine"]["last_error"]
        h.poll(lambda: h.metric("lbsync_engine_connected") == 0, 5, "engine_connected 0")
        # Routing keeps working on the last config while lbsync cannot see the engine.
        h.wait_until_routes("outage.test", {web.name})
        # A container started during the outage is found after it (the re-list).
        late = h.backend("late", host="outage.test")

        engine_proxy.restore()
        h.poll(lambda: healthz_is(200), ENGINE_TIMEOUT, "/healthz 200 after the engine is back")
        h.wait_until_routes("outage.test", {web.name, late.name})
        doc = h.status()
        assert doc["engine"]["connected"] is True
        assert doc["engine"]["reconnects"] >= 1
        h.poll(lambda: h.metric("lbsync_engine_connected") == 1, 5, "engine_connected 1")
        assert h.metric("lbsync_engine_reconnects_total") >= 1

        assert livez and set(livez) == {200}, f"/livez answered {sorted(set(livez))}"
        assert h.proc is not None and h.proc.poll() is None, "lbsync exited"
        log = h.log_text()
        assert "lost the engine" in log


# --------------------------------------------------------------------------- live config


@pytest.mark.engine
def test_config_edits_apply_live_and_bad_ones_are_refused(
    lab: Lab, tmp_path: Path, engine_proxy: ThreadedSocketProxy
) -> None:
    template = user_template(tmp_path)
    target = {"template": str(template), "vars": {"marker": "alpha01"}}
    with harness(lab, tmp_path, engine_proxy, target=target) as h:
        assert h.proc is not None
        pid = h.proc.pid
        started_at = h.status()["started_at"]
        web = h.backend("web", host="live.test")
        h.wait_until_routes("live.test", {web.name})
        assert "# ops marker: alpha01" in h.output_text()

        # vars: the new file appears without a restart.
        h.config["targets"][0]["vars"] = {"marker": "bravo02"}
        write_config(h)
        h.poll(lambda: "# ops marker: bravo02" in h.output_text(), CONFIG_TIMEOUT,
               "the edited var in the output")  # fmt: skip
        h.wait_until_routes("live.test", {web.name})

        # listen: nginx moves to the new port.
        old_port, new_port = h.listen_port, free_port()
        h.config["targets"][0]["listen"] = f"127.0.0.1:{new_port}"
        write_config(h)
        h.poll(lambda: f"listen 127.0.0.1:{new_port}" in h.output_text(), CONFIG_TIMEOUT,
               "the new listen address in the output")  # fmt: skip
        h.listen_port = new_port
        h.wait_until_routes("live.test", {web.name})
        assert h.try_get("live.test") is not None
        h.listen_port = old_port
        h.poll(lambda: h.try_get("live.test") is None, 5, f"nothing listens on {old_port}")
        h.listen_port = new_port

        # An invalid edit: logged with its key path, /healthz and /status say so,
        # the running config stays (and keeps routing new containers).
        h.config["targets"][0]["bogus_option"] = 1
        write_config(h)
        h.poll(lambda: h.healthz()[0] == 503, CONFIG_TIMEOUT, "/healthz 503 on a bad edit")
        code, body = h.healthz()
        assert code == 503 and "targets[0].bogus_option" in body, body
        error = h.status()["config"]["error"]
        assert error is not None and "targets[0].bogus_option" in error
        assert str(h.config_path) in error
        assert "targets[0].bogus_option" in h.log_text()
        more = h.backend("more", host="live.test")
        h.wait_until_routes("live.test", {web.name, more.name})
        assert "# ops marker: bravo02" in h.output_text()

        # Fixed: healthy again.
        del h.config["targets"][0]["bogus_option"]
        h.config["targets"][0]["vars"] = {"marker": "charl03"}
        write_config(h)
        h.poll(lambda: h.healthz()[0] == 200, CONFIG_TIMEOUT, "/healthz 200 after the fix")
        assert h.status()["config"]["error"] is None
        h.poll(lambda: "# ops marker: charl03" in h.output_text(), CONFIG_TIMEOUT,
               "the fixed config in effect")  # fmt: skip

        # SIGHUP re-reads too: an edit the file poll cannot see (same size, inode and
        # mtime) takes effect on the signal.
        before = h.config_path.stat()
        text = h.config_path.read_text()
        assert "charl03" in text
        fd = os.open(h.config_path, os.O_WRONLY)
        try:
            os.write(fd, text.replace("charl03", "delta04").encode())
        finally:
            os.close(fd)
        os.utime(h.config_path, ns=(before.st_atime_ns, before.st_mtime_ns))
        after = h.config_path.stat()
        assert (after.st_ino, after.st_size, after.st_mtime_ns) == (
            before.st_ino, before.st_size, before.st_mtime_ns
        )  # fmt: skip
        h.proc.send_signal(signal.SIGHUP)
        h.poll(lambda: "# ops marker: delta04" in h.output_text(), CONFIG_TIMEOUT,
               "the config re-read on SIGHUP")  # fmt: skip
        assert "config reloaded (SIGHUP)" in h.log_text()

        h.wait_until_routes("live.test", {web.name, more.name})
        assert h.proc.pid == pid and h.proc.poll() is None
        assert h.status()["started_at"] == started_at


# --------------------------------------------------------------------------- logs


@pytest.mark.engine
def test_json_logs_one_line_per_reload_and_skips_warned_once(
    lab: Lab, tmp_path: Path, engine_proxy: ThreadedSocketProxy
) -> None:
    config = {"log": {"format": "json", "level": "info"}}
    with harness(lab, tmp_path, engine_proxy, config=config) as h:
        name = h.target_name
        hostile = h.backend("hostile", labels=HOSTILE_LABELS)
        h.poll(lambda: hostile.name in h.log_text(), 10, f"a warning about {hostile.name}")
        passes = h.metric("lbsync_passes_total")
        one = h.backend("one", host="logs.test")
        h.wait_until_routes("logs.test", {one.name})
        two = h.backend("two", host="logs.test")
        h.wait_until_routes("logs.test", {one.name, two.name})
        lab.stop(one.id, timeout=0)
        h.wait_until_routes("logs.test", {two.name})
        # nginx itself skips a dead server: wait for lbsync's reload that removes it.
        h.poll(
            lambda: f"/{one.name}:" in h.status()["recent_changes"][0]["change"],
            10,
            f"a reload that removes {one.name}",
        )
        assert h.metric("lbsync_passes_total") >= passes + 3
        # An engine outage logs from the watcher and from aiohttp: JSON lines as well.
        engine_proxy.cut()
        h.poll(lambda: h.healthz()[0] == 503, 10, "/healthz 503 while the engine is away")
        engine_proxy.restore()
        h.poll(lambda: h.healthz()[0] == 200, ENGINE_TIMEOUT, "/healthz 200 again")
        reloads = h.metric("lbsync_reloads_total", target=name, result="ok")
    entries = json_lines(h.log_text())

    for entry in entries:
        assert {"time", "level", "message"} <= set(entry), entry
        assert ISO_MILLIS.match(entry["time"]), entry
        assert entry["level"] in {"debug", "info", "warning", "error", "critical"}, entry

    lines = reload_lines(entries, name)
    assert len(lines) == reloads, lines
    duration = re.compile(r" in \d+ ms: ")
    assert all(duration.search(line) for line in lines), lines
    assert any("hosts +logs.test" in line for line in lines), lines
    assert any("+" in line and f"/{two.name}:{two.port}" in line for line in lines), lines
    removed = [line for line in lines if "-lbsync_logs_test_" in line]
    assert any(f"/{one.name}:{one.port}" in line for line in removed), lines

    warnings = [
        e for e in entries
        if e["level"] == "warning" and hostile.name in e["message"]
    ]  # fmt: skip
    assert len(warnings) == 1, warnings
    assert "lbsync.host" in warnings[0]["message"]


# --------------------------------------------------------------------------- render --diff


@pytest.mark.engine
def test_render_diff_against_the_running_file(
    lab: Lab, tmp_path: Path, engine_proxy: ThreadedSocketProxy
) -> None:
    def render_diff(h: LbsyncHarness) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if k not in ("LBSYNC_CONFIG", "DOCKER_HOST")}
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
        return subprocess.run(
            [sys.executable, "-m", "lbsync.cli", "render", "-c", str(h.config_path), "--diff"],
            capture_output=True, text=True, env=env, cwd=tmp_path, timeout=60, check=False,
        )  # fmt: skip

    with harness(lab, tmp_path, engine_proxy) as h:
        web = h.backend("web", host="diff.test")
        h.wait_until_routes("diff.test", {web.name})
        same = render_diff(h)
        assert same.returncode == 0, same.stderr
        assert same.stdout == "", same.stdout
    on_disk = h.output_bytes()

    # lbsync stopped (the harness removed its backend too); a new backend: the diff shows
    # exactly what a pass would change.
    new = h.backend("new", host="diff.test")
    changed = render_diff(h)
    assert changed.returncode == 0, changed.stderr
    lines = changed.stdout.splitlines()
    assert lines[0] == f"--- {h.output}"
    assert lines[1] == f"+++ {h.output} (new)"
    assert lines[2].startswith("@@ ")
    added = [line for line in lines if line.startswith("+") and not line.startswith("+++")]
    removed = [line for line in lines if line.startswith("-") and not line.startswith("---")]
    assert [line[1:].strip() for line in added] == [f"server 127.0.0.1:{new.port} weight=1;"]
    assert [line[1:].strip() for line in removed] == [f"server 127.0.0.1:{web.port} weight=1;"]
    assert h.output_bytes() == on_disk, "render --diff must not write the file"
