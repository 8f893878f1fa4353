"""The small HTTP server on `server.listen`: liveness, health, metrics and status (SPEC §7).

It reads nothing but what it is given: a callable for the current `StatusSnapshot` (for
`/healthz`, `/status` and the page) and one for the metrics text (for `/metrics`). The
daemon builds both (`lbsync.daemon.snapshot`); the web side never imports it.
"""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from lbsync.web import statuspage
from lbsync.web.document import status_document
from lbsync.web.snapshot import StatusSnapshot

#: Returns the state to show now; called once per request.
SnapshotSource = Callable[[], StatusSnapshot]
#: Returns the Prometheus text exposition, brought up to date; called once per scrape.
MetricsSource = Callable[[], bytes]

SNAPSHOT_KEY: web.AppKey[SnapshotSource] = web.AppKey("snapshot")
METRICS_KEY: web.AppKey[MetricsSource] = web.AppKey("metrics")


async def livez(request: web.Request) -> web.Response:
    """200 while the process and its loops run: for container HEALTHCHECKs, never the engine."""
    return web.Response(text="ok\n")


async def healthz(request: web.Request) -> web.Response:
    problems = request.app[SNAPSHOT_KEY]().problems
    if problems:
        return web.Response(status=503, text="\n".join(problems) + "\n")
    return web.Response(text="ok\n")


async def metrics(request: web.Request) -> web.Response:
    body = request.app[METRICS_KEY]()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def status(request: web.Request) -> web.Response:
    return web.json_response(status_document(request.app[SNAPSHOT_KEY]()))


async def index(request: web.Request) -> web.Response:
    """`GET /`: the status page, rendered from the same document `/status` serves."""
    snapshot = request.app[SNAPSHOT_KEY]()
    html = statuspage.render_page(status_document(snapshot), list(snapshot.problems))
    return web.Response(text=html, content_type="text/html", headers=statuspage.SECURITY_HEADERS)


def make_app(snapshot: SnapshotSource, metrics_text: MetricsSource) -> web.Application:
    app = web.Application()
    app[SNAPSHOT_KEY] = snapshot
    app[METRICS_KEY] = metrics_text
    app.router.add_get("/livez", livez)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/status", status)
    app.router.add_get("/", index)  # the status page for a person
    statuspage.add_static_routes(app)  # GET /static/...: its script, style and icon
    return app


async def start_server(app: web.Application, host: str, port: int) -> web.AppRunner:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner
