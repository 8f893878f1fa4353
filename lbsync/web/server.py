"""The small HTTP server on `server.listen`: liveness, health, metrics and status (SPEC §7)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from lbsync import __version__
from lbsync.web import statuspage

if TYPE_CHECKING:
    from lbsync.daemon.daemon import Daemon

DAEMON_KEY: web.AppKey[Daemon] = web.AppKey("daemon")


async def livez(request: web.Request) -> web.Response:
    """200 while the process and its loops run: for container HEALTHCHECKs, never the engine."""
    return web.Response(text="ok\n")


async def healthz(request: web.Request) -> web.Response:
    daemon = request.app[DAEMON_KEY]
    problems = daemon.health_problems()
    if problems:
        return web.Response(status=503, text="\n".join(problems) + "\n")
    return web.Response(text="ok\n")


async def metrics(request: web.Request) -> web.Response:
    daemon = request.app[DAEMON_KEY]
    daemon.sync_connection_metrics()
    body = daemon.metrics.render_text()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def _iso(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(timestamp))


def status_document(daemon: Daemon) -> dict[str, Any]:
    """The `/status` JSON. A public interface: README documents it, a test pins its fields."""
    registry = daemon.registry

    def health(container_id: str) -> str:
        container = registry.get(container_id)
        return container.health if container is not None else "none"

    targets = []
    for state in daemon.targets:
        model = state.model
        targets.append(
            {
                "name": state.config.name,
                "output": str(state.config.output),
                "template": state.config.template,
                "reload": state.config.reload,
                "waiting_for_proxy": state.waiting_for_proxy,
                "last_pass": _iso(state.last_pass_at),
                "last_reload": _iso(state.last_reload_at),
                "last_reload_result": state.last_reload_result,
                "last_error": state.last_error,
                "hosts": [
                    {
                        "name": host.name,
                        "routes": [
                            {"path": route.path, "upstream": route.upstream.name}
                            for route in host.routes
                        ],
                    }
                    for host in (model.hosts if model else ())
                ],
                "upstreams": [
                    {
                        "name": upstream.name,
                        "balance": upstream.balance,
                        "servers": [
                            {
                                "container": server.container.name,
                                "container_id": server.container.id,
                                "address": server.address,
                                "port": server.port,
                                "weight": server.weight,
                                "health": health(server.container.id),
                            }
                            for server in upstream.servers
                        ],
                    }
                    for upstream in (model.upstreams if model else ())
                ],
                "skipped": [
                    {
                        "container": skip.container.name,
                        "container_id": skip.container.id,
                        "reason": skip.reason,
                        "detail": skip.detail,
                    }
                    for skip in (model.skips if model else ())
                ],
                # Proxy containers matched by the target's `proxy` but not reloaded (SPEC §1).
                "proxies_left_out": [
                    {
                        "container": entry.container,
                        "container_id": container_id,
                        "reason": str(entry.reason),
                        "detail": entry.message,
                    }
                    for container_id, entry in sorted(
                        state.left_out.items(), key=lambda item: item[1].container
                    )
                ],
            }
        )
    watcher = daemon.watcher
    api = daemon.client.ping_info
    return {
        "version": __version__,
        "started_at": _iso(daemon.started_at),
        "engine": {
            "endpoint": daemon.client.endpoint.url,
            "connected": watcher.connected,
            "api_version": f"{api.api_version[0]}.{api.api_version[1]}" if api else None,
            "disconnected_since": _iso(watcher.disconnected_since),
            "last_error": watcher.last_error,
            "reconnects": watcher.reconnects,
            "events": watcher.events_seen,
        },
        "config": {
            "source": str(daemon.config.source) if daemon.config.source else None,
            "error": daemon.config_error,
        },
        "containers": len(registry),
        "targets": targets,
        "recent_changes": [
            {
                "at": _iso(change.at),
                "target": change.target,
                "change": change.change,
                "duration_ms": change.duration_ms,
            }
            for change in daemon.changes
        ],
    }


async def status(request: web.Request) -> web.Response:
    return web.json_response(status_document(request.app[DAEMON_KEY]))


def make_app(daemon: Daemon) -> web.Application:
    app = web.Application()
    app[DAEMON_KEY] = daemon
    app.router.add_get("/livez", livez)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/status", status)
    statuspage.add_routes(app)  # GET / and /static/...: the status page for a person
    return app


async def start_server(daemon: Daemon, host: str, port: int) -> web.AppRunner:
    runner = web.AppRunner(make_app(daemon), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner
