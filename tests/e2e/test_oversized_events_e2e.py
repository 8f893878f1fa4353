"""Issue #17 item 4, end to end: a container whose labels make every one of its events ~600 KB
long (the engine copies each label into them) must not stop lbsync from following the
engine. Was: aiohttp's readline raised LineTooLong, the reader task died silently, /healthz
stayed 200, and only the next re-list (never, with `docker.resync: 0`) brought changes in.

A real `lbsync run`, a real nginx and real backends on the lab engine; resync is off, so
whatever reaches nginx came through the events stream.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from lbsync.engine.events import MAX_EVENT_LINE
from tests.support.harness import LbsyncHarness
from tests.support.lab import Lab, bulky_labels
from tests.support.scenarios import server_line

pytestmark = pytest.mark.engine

#: "Within a few seconds": a pass is debounced by at most 0.5 s in the harness.
ROUTED_WITHIN = 5.0


def test_a_600_kb_event_line_does_not_stop_the_events_stream(lab: Lab, tmp_path: Path) -> None:
    with LbsyncHarness(lab, tmp_path, config={"docker": {"resync": 0}}) as h:
        bulky = h.backend("bulky", host="bulky.test", labels=bulky_labels())
        # Its own events were skipped; the inspect each one asked for routes it.
        h.wait_until_routes("bulky.test", {bulky.name}, timeout=ROUTED_WITHIN)

        # The next container is routed by its own event: the stream was followed past the
        # ~600 KB lines, with no reconnect (no re-list) in between.
        web = h.backend("web", host="app.test")
        h.wait_until_routes("app.test", {web.name}, timeout=ROUTED_WITHIN)
        assert server_line(web.port) in h.output_text()
        assert h.metric("lbsync_engine_reconnects_total") == 0
        assert h.metric("lbsync_event_reader_failures_total") == 0
        assert h.healthz()[0] == 200

        log = h.log_text()
        assert f"skipped the 'start' event of container {bulky.id[:12]}" in log
        assert f"over the {MAX_EVENT_LINE}-byte limit" in log
        assert "Traceback" not in log

        # Its stop (kill, die, stop: each skipped too) still takes it out of nginx.
        lab.stop(bulky.id)
        h.wait_until_status("bulky.test", 503, timeout=ROUTED_WITHIN)
        h.wait_until_routes("app.test", {web.name}, timeout=ROUTED_WITHIN)
