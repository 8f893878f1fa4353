"""Scenarios run through more than one proxy (nginx and HAProxy): written once, here."""

from __future__ import annotations

from tests.support.harness import LbsyncHarness
from tests.support.lab import Lab, free_port


def server_line(port: int) -> str:
    return f"127.0.0.1:{port}"


def left_file(h: LbsyncHarness, port: int, timeout: float = 15.0) -> None:
    """Wait until the output file no longer has a server on ``port``."""
    h.poll(
        lambda: server_line(port) not in h.output_text(),
        timeout,
        f"{server_line(port)} left {h.output}",
    )


def health_gates_traffic(h: LbsyncHarness, lab: Lab, host_declared: str) -> None:
    """A HEALTHCHECK backend gets no traffic while `starting`, gets it once `healthy`, and
    loses it when `unhealthy`. `host_declared`: the text showing the host is in the file."""
    # A 2 s interval (overriding the lab's 1 s) keeps it `starting` long enough to look.
    web = h.backend("web", host="health.test", health=True, extra=["--health-interval", "2s"])

    def seen_starting() -> bool:
        skipped = h.status()["targets"][0]["skipped"]
        return any(s["container"] == web.name and s["reason"] == "not_healthy" for s in skipped)

    h.poll(seen_starting, 10, f"lbsync reports {web.name} as not healthy yet")
    status, body = h.get("health.test")
    assert lab.health(web.id) == "starting", "healthy before we looked: test inconclusive"
    assert status == 503, f"a starting container got traffic: {status} {body!r}"
    assert "backend=" not in body
    text = h.output_text()
    assert host_declared in text
    assert server_line(web.port) not in text

    lab.wait_health(web.id, "healthy", timeout=10)
    h.wait_until_routes("health.test", {web.name})

    lab.set_healthy(web.id, False)
    # The backend itself answers 503 now too ("backend=... unhealthy"): only a 503 that no
    # backend wrote shows that lbsync took it out of the proxy.
    h.wait_until_status("health.test", 503, from_backend=False, timeout=15)
    assert lab.health(web.id) == "unhealthy"
    left_file(h, web.port)


#: Label values that would end a directive, open a block or inject a line if they got through.
HOSTILE_LABELS: dict[str, dict[str, str]] = {
    "semicolon": {"lbsync.host": "semi.test;evil_semicolon"},
    "space": {"lbsync.host": "space evil_space.test"},
    "brace": {"lbsync.host": "brace.test", "lbsync.path": "/x{"},
    "newline": {"lbsync.host": "newline.test\nevil_newline on;"},
    "quote": {"lbsync.host": "quote.test", "lbsync.path": "/a'evil_quote"},
    "upstream": {"lbsync.host": "up.test", "lbsync.upstream": "x\n    evil_upstream 1"},
}
#: What must never show in the output file, whatever the proxy.
HOSTILE_NEEDLES = ("evil", "semi.test", "space", "brace.test", "/x{", "newline.test", "'a")


def hostile_labels_never_reach_the_file(h: LbsyncHarness) -> None:
    """Hostile containers are skipped with one warning each; a good one beside them works."""
    bad = {}
    for what, labels in HOSTILE_LABELS.items():
        port = free_port()
        bad[what] = h.backend(what, port=port, labels={**labels, "lbsync.port": str(port)})
    # Started last: the pass that routes it has seen every hostile container before it.
    good = h.backend("good", host="good.test")
    h.wait_until_routes("good.test", {good.name})

    text = h.output_text()
    for needle in HOSTILE_NEEDLES:
        assert needle not in text, f"{needle!r} reached the output file:\n{text}"
    for backend in bad.values():
        assert server_line(backend.port) not in text

    skipped = h.status()["targets"][0]["skipped"]
    reasons = {s["container"]: s["reason"] for s in skipped}
    for what, backend in bad.items():
        assert reasons.get(backend.name) == "invalid_label", (what, skipped)

    # One clear warning per hostile container, naming it and the label.
    warnings = [line for line in h.log_text().splitlines() if " WARNING " in line]
    for what, backend in bad.items():
        named = [line for line in warnings if backend.name in line]
        assert len(named) == 1, (what, named)
        label = {"brace": "lbsync.path", "quote": "lbsync.path", "upstream": "lbsync.upstream"}
        assert label.get(what, "lbsync.host") in named[0], (what, named[0])
