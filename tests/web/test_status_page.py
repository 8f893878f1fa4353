"""The status page at `GET /` (SPEC §7): served, escaped, and live in a real browser.

The first tests need no engine: a daemon that never connects, with a routing model set by
hand, behind the real aiohttp app. The browser test drives Debian's `chromium` with
Playwright against a real `lbsync run` and a real engine: the page must show a backend
started after it was opened, without a reload, and must read well 375 px wide. Screenshots
land in `artifacts/` at the repository root (ignored by git).

Playwright never downloads a browser here: it launches `/usr/bin/chromium` (apt package
`chromium`). With `CI=true` a missing chromium or playwright fails the test; elsewhere it
is skipped with the reason.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

import lbsync
from lbsync.apply.proxy import LeftOut, LeftOutReason
from lbsync.config.load import load_config
from lbsync.daemon.daemon import Daemon
from lbsync.daemon.snapshot import web_app
from lbsync.engine.client import DockerClient
from lbsync.engine.endpoint import resolve_endpoint
from lbsync.model.types import ContainerRef, Host, Route, RoutingModel, Server, Skip, Upstream
from lbsync.web.server import make_app
from lbsync.web.snapshot import (
    BackendStatus,
    ChangeStatus,
    ConfigStatus,
    EngineStatus,
    HostStatus,
    LeftOutProxy,
    RouteStatus,
    SkipStatus,
    StatusSnapshot,
    TargetStatus,
    UpstreamStatus,
)
from lbsync.web.statuspage import STATIC_DIR, WEB_DIR
from tests.support.harness import REPO_ROOT, LbsyncHarness
from tests.support.lab import Lab
from tests.support.prerequisites import IN_CI

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = REPO_ROOT / "artifacts"
#: A host label that would run script if the page ever put data into HTML.
XSS_HOST = "evil.test<img src=x onerror=window.__lbsyncXss=1>"
LIVE_TIMEOUT_MS = 15_000

AiohttpClient = Callable[..., Any]


# --------------------------------------------------------------------------- offline daemon


def _daemon(tmp_path: Path) -> Daemon:
    config_path = tmp_path / "lbsync.yaml"
    config_path.write_text(
        "targets:\n"
        "  - name: edge\n"
        f"    output: {tmp_path / 'conf.d' / 'lbsync.conf'}\n"
        "    check: none\n"
        "    reload: none\n"
        "    proxy: {pid_file: /nonexistent/nginx.pid}\n"
    )
    config = load_config(config_path, {})
    client = DockerClient(resolve_endpoint(f"unix://{tmp_path / 'no-engine.sock'}", {}))
    daemon = Daemon(config, client, config_path=config_path)
    web1 = ContainerRef(id="a" * 64, name="web-1")
    web2 = ContainerRef(id="c" * 64, name="web-2")
    bad = ContainerRef(id="b" * 64, name="bad-<b>1</b>")
    app = Upstream(
        name="lbsync_app_test_12345678",
        balance="least_conn",
        servers=(
            Server(address="127.0.0.1", port=8080, weight=1, container=web1),
            Server(address="fd00::2", port=8081, weight=3, container=web2),
        ),
    )
    empty = Upstream(name="lbsync_old_test_87654321", balance="round_robin", servers=())
    daemon.targets[0].model = RoutingModel(
        hosts=(
            Host(name="app.test", routes=(Route(path="/", upstream=app),)),
            Host(name="old.test", routes=(Route(path="/", upstream=empty),)),
        ),
        upstreams=(app, empty),
        containers=(),
        skips=(
            Skip(
                container=bad,
                reason="invalid_label",
                detail=f"container {bad.name}: label lbsync.host: {XSS_HOST!r} is not a valid "
                "host name; service skipped",
            ),
        ),
    )
    daemon.targets[0].left_out = {
        "d" * 64: LeftOut(
            "aaa-rogue", LeftOutReason.UNRUNNABLE, 'exec: "nginx": not found <b>hostile</b>'
        )
    }
    daemon.targets[0].last_reload_result = "ok"
    daemon.targets[0].last_reload_at = daemon.started_at
    return daemon


@pytest.fixture
async def page_client(tmp_path: Path, aiohttp_client: AiohttpClient) -> TestClient[Any, Any]:
    client: TestClient[Any, Any] = await aiohttp_client(web_app(_daemon(tmp_path)))
    return client


async def test_page_is_rendered_on_the_server_with_everything_escaped(
    page_client: TestClient[Any, Any],
) -> None:
    resp = await page_client.get("/")
    assert resp.status == 200
    assert resp.content_type == "text/html"
    csp = resp.headers["Content-Security-Policy"]
    assert "default-src 'none'" in csp
    assert "script-src 'self'" in csp
    assert resp.headers["X-Content-Type-Options"] == "nosniff"
    html = await resp.text()

    # Routes: host, path -> upstream -> backends with their health.
    for text in ("app.test", "lbsync_app_test_12345678", "least conn", "web-1", "web-2",
                 "127.0.0.1:8080", "[fd00::2]:8081", "weight 3", "no health check"):  # fmt: skip
        assert text in html, text
    assert "no backends: answers 503" in html  # old.test: an upstream with no servers
    # Target, last reload, engine, config.
    assert "edge" in html
    assert "reload ok" in html
    assert "Disconnected" in html  # this daemon never reached an engine
    assert "no-engine.sock" in html
    # The problems banner is /healthz's answer.
    assert "Needs attention" in html
    assert "engine disconnected since" in html

    # A container labelled as the proxy that is not reloaded, and why.
    assert "Proxy containers not reloaded" in html
    assert "aaa-rogue" in html
    assert "unrunnable" in html
    assert "d" * 12 in html

    # Untrusted values are text, never markup.
    assert "<b>hostile</b>" not in html
    assert "&lt;b&gt;hostile&lt;/b&gt;" in html
    assert "<img" not in html
    assert "<b>1</b>" not in html
    assert "bad-&lt;b&gt;1&lt;/b&gt;" in html
    assert "&lt;img src=x onerror=window.__lbsyncXss=1&gt;" in html
    # No inline script or style anywhere: the CSP would block them.
    assert re.search(r"<script(?![^>]*\bsrc=)", html) is None
    assert "style=" not in html
    assert "<style" not in html


async def test_static_files_are_served_and_nothing_else(
    page_client: TestClient[Any, Any],
) -> None:
    for name, content_type in (
        ("status.css", "text/css"),
        ("status.js", "javascript"),
        ("favicon.svg", "image/svg+xml"),
    ):
        resp = await page_client.get(f"/static/{name}")
        assert resp.status == 200, name
        assert content_type in resp.headers["Content-Type"], name
        assert resp.headers["X-Content-Type-Options"] == "nosniff"
        assert await resp.read() == (STATIC_DIR / name).read_bytes()
    for path in ("/static/", "/static/../status.html.j2", "/static/%2e%2e/status.html.j2",
                 "/static/nope.js"):  # fmt: skip
        resp = await page_client.get(path)
        assert resp.status in (403, 404), path
    # The other endpoints are unchanged by the page.
    assert (await page_client.get("/livez")).status == 200
    assert (await page_client.get("/healthz")).status == 503


def test_page_files_ship_inside_the_package() -> None:
    """hatchling ships everything under lbsync/; the page loads nothing from the network."""
    assert Path(__file__).resolve().parents[2] / "lbsync" / "web" == WEB_DIR
    files = {
        "status.html.j2": WEB_DIR / "status.html.j2",
        "status.js": STATIC_DIR / "status.js",
        "status.css": STATIC_DIR / "status.css",
    }
    for name, path in files.items():
        text = path.read_text()
        assert not re.search(r"https?://|//cdn|@import|url\(\s*['\"]?(https?:)?//", text), name
    script = re.sub(r"^\s*//.*$", "", files["status.js"].read_text(), flags=re.MULTILINE)
    # Data reaches the page as text nodes only.
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(",
                 "new Function", "setAttribute(\"on", "setAttribute(\"href"):  # fmt: skip
        assert sink not in script, sink
    # Every element the script rebuilds exists in the server-rendered page.
    template = files["status.html.j2"].read_text()
    ids = set(re.findall(r'(?:replace|getElementById)\("([a-z-]+)"', script))
    assert ids >= {"problems", "problem-list", "overview", "targets", "engine", "config",
                   "changes", "changes-count", "live", "live-text", "filter"}  # fmt: skip
    for element_id in ids:
        assert f'id="{element_id}"' in template, element_id


# --------------------------------------------------------------------------- a snapshot alone


def _snapshot(problems: tuple[str, ...]) -> StatusSnapshot:
    backend = BackendStatus("web-1", "a" * 64, "127.0.0.1", 8080, 2, "healthy")
    return StatusSnapshot(
        started_at=1_700_000_000.0,
        engine=EngineStatus("unix:///run/docker.sock", True, "1.44", None, None, 1, 42),
        config=ConfigStatus("/etc/lbsync.yaml", None),
        containers=3,
        targets=(
            TargetStatus(
                name="edge",
                output="/etc/nginx/conf.d/lbsync.conf",
                template="builtin:nginx",
                reload="signal",
                waiting_for_proxy=False,
                last_pass_at=1_700_000_060.0,
                last_reload_at=None,
                last_reload_result=None,
                last_error=None,
                hosts=(HostStatus("app.test", (RouteStatus("/", "lbsync_app"),)),),
                upstreams=(UpstreamStatus("lbsync_app", "round_robin", (backend,)),),
                skipped=(SkipStatus("bad", "b" * 64, "no_port", "container bad: no port"),),
                proxies_left_out=(LeftOutProxy("rogue", "d" * 64, "unrunnable", "no nginx"),),
            ),
        ),
        recent_changes=(ChangeStatus(1_700_000_120.0, "edge", "hosts +app.test", 1.5),),
        problems=problems,
    )


async def test_the_web_side_serves_a_snapshot_it_is_handed(aiohttp_client: AiohttpClient) -> None:
    """No daemon: /status, /healthz, /metrics and the page read only the callables given."""
    snapshots = [_snapshot(()), _snapshot(("target edge: reload failed",))]
    client: TestClient[Any, Any] = await aiohttp_client(
        make_app(lambda: snapshots[0], lambda: b"lbsync_up 1.0\n")
    )
    assert await (await client.get("/status")).json() == {
        "version": lbsync.__version__,
        "started_at": "2023-11-14T22:13:20Z",
        "engine": {
            "endpoint": "unix:///run/docker.sock",
            "connected": True,
            "api_version": "1.44",
            "disconnected_since": None,
            "last_error": None,
            "reconnects": 1,
            "events": 42,
        },
        "config": {"source": "/etc/lbsync.yaml", "error": None},
        "containers": 3,
        "targets": [
            {
                "name": "edge",
                "output": "/etc/nginx/conf.d/lbsync.conf",
                "template": "builtin:nginx",
                "reload": "signal",
                "waiting_for_proxy": False,
                "last_pass": "2023-11-14T22:14:20Z",
                "last_reload": None,
                "last_reload_result": None,
                "last_error": None,
                "hosts": [
                    {"name": "app.test", "routes": [{"path": "/", "upstream": "lbsync_app"}]}
                ],
                "upstreams": [
                    {
                        "name": "lbsync_app",
                        "balance": "round_robin",
                        "servers": [
                            {
                                "container": "web-1",
                                "container_id": "a" * 64,
                                "address": "127.0.0.1",
                                "port": 8080,
                                "weight": 2,
                                "health": "healthy",
                            }
                        ],
                    },
                ],
                "skipped": [
                    {
                        "container": "bad",
                        "container_id": "b" * 64,
                        "reason": "no_port",
                        "detail": "container bad: no port",
                    }
                ],
                "proxies_left_out": [
                    {
                        "container": "rogue",
                        "container_id": "d" * 64,
                        "reason": "unrunnable",
                        "detail": "no nginx",
                    }
                ],
            }
        ],
        "recent_changes": [
            {
                "at": "2023-11-14T22:15:20Z",
                "target": "edge",
                "change": "hosts +app.test",
                "duration_ms": 1.5,
            }
        ],
    }
    resp = await client.get("/healthz")
    assert (resp.status, await resp.text()) == (200, "ok\n")
    metrics = await client.get("/metrics")
    assert await metrics.read() == b"lbsync_up 1.0\n"
    assert metrics.headers["Content-Type"].startswith("text/plain")
    page = await (await client.get("/")).text()
    assert "web-1" in page and "reload failed" not in page

    snapshots.reverse()  # the next snapshot: a problem
    resp = await client.get("/healthz")
    assert (resp.status, await resp.text()) == (503, "target edge: reload failed\n")
    page = await (await client.get("/")).text()
    assert "<li>target edge: reload failed</li>" in page


# --------------------------------------------------------------------------- real browser


def require_browser() -> None:
    """CI must run the browser test; elsewhere a missing chromium or playwright skips it."""
    problems = []
    if shutil.which(CHROMIUM) is None:
        problems.append(f"{CHROMIUM} is missing (apt-get install -y chromium)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        problems.append("the playwright package is missing (pip install playwright)")
    if not problems:
        return
    if IN_CI:
        pytest.fail("CI=true but " + "; ".join(problems))
    pytest.skip("; ".join(problems))


@pytest.fixture
def browser_page(tmp_path: Path) -> Iterator[Any]:
    """A page in a fresh headless chromium profile (never a downloaded browser)."""
    require_browser()
    from playwright.sync_api import sync_playwright

    profile = tmp_path / "chromium-profile"
    profile.mkdir()
    with sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(profile),
            executable_path=CHROMIUM,
            headless=True,
            args=CHROMIUM_ARGS,  # the profile folder is passed as --user-data-dir
            viewport={"width": 1280, "height": 900},
            color_scheme="light",
        )
        try:
            yield context.new_page()
        finally:
            context.close()


def _texts(page: Any, selector: str) -> list[str]:
    texts: list[str] = page.eval_on_selector_all(selector, "els => els.map(e => e.textContent)")
    return texts


@pytest.mark.engine
def test_page_updates_live_and_fits_a_phone(lab: Lab, tmp_path: Path, browser_page: Any) -> None:
    page = browser_page
    errors: list[str] = []
    requests: list[str] = []
    navigations: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("request", lambda request: requests.append(request.url))
    page.on(
        "framenavigated",
        lambda frame: navigations.append(frame.url) if frame == page.main_frame else None,
    )

    with LbsyncHarness(lab, tmp_path) as h:
        first = h.backend("first", host="page.test", health=True)
        hostile = h.backend("hostile", labels={"lbsync.host": XSS_HOST, "lbsync.port": "80"})
        lab.wait_health(first.id)
        h.wait_until_routes("page.test", {first.name})
        base = f"http://127.0.0.1:{h.server_port}/"

        page.goto(base)
        # Server-rendered: the routed backend is there before any script ran.
        assert first.name in _texts(page, "table.routes .backend-name")
        page.wait_for_function("Number(document.body.dataset.polls) >= 1")
        assert page.get_attribute("#live", "data-state") == "live"
        page.evaluate("window.__lbsyncSamePage = true")

        # A backend started now appears without reloading the page.
        second = h.backend("second", host="page.test")
        page.wait_for_function(
            """name => Array.from(document.querySelectorAll("table.routes .backend-name"))
                   .some(el => el.textContent === name)""",
            arg=second.name,
            timeout=LIVE_TIMEOUT_MS,
        )
        assert page.evaluate("window.__lbsyncSamePage") is True, "the page was reloaded"
        assert navigations == [base]
        backends = _texts(page, "table.routes .backend")
        row = next(text for text in backends if first.name in text)
        assert f"127.0.0.1:{first.port}" in row
        assert "healthy" in row

        # The hostile label is shown as text in the skipped table and never runs.
        skipped = " ".join(_texts(page, "table.skipped tbody tr"))
        assert hostile.name in skipped
        assert "invalid_label" in skipped
        assert XSS_HOST in skipped
        assert page.evaluate("window.__lbsyncXss") is None
        assert not [url for url in requests if not url.startswith(base)], requests
        assert not errors, errors

        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "status-page.png"), full_page=True)

        # 375 px wide: tables turn into cards, nothing scrolls sideways.
        page.set_viewport_size({"width": 375, "height": 812})
        page.wait_for_function(
            """() => getComputedStyle(document.querySelector("table.routes tr.route"))
                   .display === "block" """
        )
        widths = page.evaluate(
            """() => ({doc: document.documentElement.scrollWidth,
                       body: document.body.scrollWidth,
                       viewport: window.innerWidth})"""
        )
        assert widths["viewport"] == 375
        assert widths["doc"] <= widths["viewport"], widths
        assert widths["body"] <= widths["viewport"], widths
        page.screenshot(path=str(ARTIFACTS / "status-page-375.png"), full_page=True)

        # lbsync gone: the page says it is no longer live (and keeps the last data).
        h.stop()
        page.wait_for_function(
            """() => document.getElementById("live").dataset.state === "stale" """,
            timeout=LIVE_TIMEOUT_MS,
        )
        assert second.name in _texts(page, "table.routes .backend-name")
    assert not errors, errors
