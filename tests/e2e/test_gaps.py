"""A gap in the engine connection: what happened during it is reconciled on reconnect.

The connection is cut by a forwarding proxy on a unix socket (tests/support/socket_proxy.py),
so dockerd and its containers carry on; one container starts and another stops meanwhile.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.support.harness import LbsyncHarness
from tests.support.lab import Lab
from tests.support.socket_proxy import ThreadedSocketProxy, short_socket_path

pytestmark = pytest.mark.engine

RECONCILE_WITHIN = 1.0  # seconds from the reconnect to the new file (the bound)


def test_start_and_stop_during_a_gap_are_reconciled_within_a_second(
    lab: Lab, tmp_path: Path
) -> None:
    with ThreadedSocketProxy(short_socket_path()) as engine:
        h = LbsyncHarness(lab, tmp_path, config={"docker": {"host": engine.url}})
        with h:
            stays = h.backend("stays", host="gap.test")
            goes = h.backend("goes", host="gap.test")
            h.wait_until_routes("gap.test", {stays.name, goes.name})

            engine.cut()
            h.poll(lambda: h.status()["engine"]["connected"] is False, 15, "lbsync sees the cut")
            comes = h.backend("comes", host="gap.test")
            lab.stop(goes.id)
            engine.restore()

            # Note the moment lbsync is connected again, then when the file reflects the gap.
            deadline = time.monotonic() + 30
            while h.status()["engine"]["connected"] is not True:
                assert time.monotonic() < deadline, "lbsync did not reconnect in 30 s"
                time.sleep(0.02)
            connected_at = time.monotonic()

            def reconciled() -> bool:
                text = h.output_text()
                return f":{comes.port} " in text and f":{goes.port} " not in text

            while not reconciled():
                assert time.monotonic() < connected_at + 10, "the gap was never reconciled"
                time.sleep(0.02)
            took = time.monotonic() - connected_at
            assert took <= RECONCILE_WITHIN, f"reconciled {took:.2f} s after reconnecting"
            h.wait_until_routes("gap.test", {stays.name, comes.name})
