"""Zero-downtime churn: a steady stream of requests through the proxy while the backends are
replaced one by one, as a rolling deploy does, and not one request may fail.

A replacement: start the new backend (with a Docker HEALTHCHECK), wait until it is healthy and
lbsync routes it, then SIGTERM the old one. The backends are well-behaved apps: after SIGTERM
they keep serving for ``stop_grace`` seconds (finishing what is in flight) and then exit.
lbsync takes a backend out of the pool on the `kill` event, before it exits; the proxy must
never send it a request it cannot answer.

The churn and its load are :func:`tests.support.churn.run_churn`. Through nginx (HUP reloads),
and through HAProxy in ``haproxy-runtime`` mode (servers move between slots with no reload at
all).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.churn import (
    CHURN_HOST,
    ECHO_PATH,
    POOL,
    RATE,
    REPLACEMENTS,
    ChurnReport,
    run_churn,
)
from tests.support.harness import LbsyncHarness
from tests.support.lab import Lab

pytestmark = pytest.mark.engine


def check_no_failures(churn: ChurnReport) -> None:
    load = churn.load
    print(churn.summary())
    assert load.failed == 0, f"{load.failed} failed requests, first ones: {load.failures}"
    assert churn.replacements == REPLACEMENTS
    # The load really ran through the whole churn: at least a third of the paced rate.
    assert load.requests >= RATE * churn.seconds / 3, load.summary()
    assert load.by_method["GET"] and load.by_method["POST"]
    # Every generation of backends got traffic, old and new.
    assert set(load.by_backend) <= set(churn.backends), load.by_backend
    assert len(load.by_backend) >= REPLACEMENTS, sorted(load.by_backend)


# ---------------------------------------------------------------------------- tests


@pytest.mark.timeout(300)
def test_churn_through_nginx_drops_nothing(lab: Lab, tmp_path: Path) -> None:
    with LbsyncHarness(lab, tmp_path) as h:
        churn = run_churn(h, lab)
        check_no_failures(churn)
        assert churn.reloads >= REPLACEMENTS, "nginx reloads for every start and every stop"
        h.wait_until_routes(CHURN_HOST, set(churn.backends[-POOL:]), path=ECHO_PATH)


@pytest.mark.timeout(300)
def test_churn_through_haproxy_runtime_drops_nothing(lab: Lab, tmp_path: Path) -> None:
    with LbsyncHarness(
        lab, tmp_path, proxy_kind="haproxy", haproxy_reload="haproxy-runtime",
        target={"slots": 8},
    ) as h:  # fmt: skip
        churn = run_churn(h, lab)
        check_no_failures(churn)
        assert churn.reloads == 0, "pool + 1 servers fit the slots: no reload at all"
        assert churn.runtime_updates >= REPLACEMENTS
        assert churn.workers_after == churn.workers_before, "the HAProxy worker must stay"
        assert h.metric("lbsync_runtime_updates_total", result="error") == 0
        h.wait_until_routes(CHURN_HOST, set(churn.backends[-POOL:]), path=ECHO_PATH)
