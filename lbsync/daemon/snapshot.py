"""The daemon's state as the web side sees it: a `StatusSnapshot`, and the web app on it.

The web side (`lbsync.web`) never imports the daemon: `web_app` hands it two callables,
one for the current snapshot and one for the metrics text, each called per request.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

from aiohttp import web

from lbsync.web.server import make_app, start_server
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

if TYPE_CHECKING:
    from lbsync.daemon.daemon import Daemon
    from lbsync.daemon.target import TargetState
    from lbsync.state.registry import Registry


def _target_status(state: TargetState, registry: Registry) -> TargetStatus:
    def health(container_id: str) -> str:
        container = registry.get(container_id)
        return container.health if container is not None else "none"

    config = state.config
    model = state.model
    return TargetStatus(
        name=config.name,
        output=str(config.output),
        template=config.template,
        reload=config.reload,
        waiting_for_proxy=state.waiting_for_proxy,
        last_pass_at=state.last_pass_at,
        last_reload_at=state.last_reload_at,
        last_reload_result=state.last_reload_result,
        last_error=state.last_error,
        hosts=tuple(
            HostStatus(
                host.name,
                tuple(RouteStatus(route.path, route.upstream.name) for route in host.routes),
            )
            for host in (model.hosts if model else ())
        ),
        upstreams=tuple(
            UpstreamStatus(
                upstream.name,
                upstream.balance,
                tuple(
                    BackendStatus(
                        container=server.container.name,
                        container_id=server.container.id,
                        address=server.address,
                        port=server.port,
                        weight=server.weight,
                        health=health(server.container.id),
                    )
                    for server in upstream.servers
                ),
            )
            for upstream in (model.upstreams if model else ())
        ),
        skipped=tuple(
            SkipStatus(skip.container.name, skip.container.id, skip.reason, skip.detail)
            for skip in (model.skips if model else ())
        ),
        proxies_left_out=tuple(
            LeftOutProxy(entry.container, container_id, str(entry.reason), entry.message)
            for container_id, entry in sorted(
                state.left_out.items(), key=lambda item: item[1].container
            )
        ),
    )


def status_snapshot(daemon: Daemon) -> StatusSnapshot:
    """What `/healthz`, `/status` and the page show of `daemon` now."""
    watcher = daemon.watcher
    api = daemon.client.ping_info
    return StatusSnapshot(
        started_at=daemon.started_at,
        engine=EngineStatus(
            endpoint=daemon.client.endpoint.url,
            connected=watcher.connected,
            api_version=f"{api.api_version[0]}.{api.api_version[1]}" if api else None,
            disconnected_since=watcher.disconnected_since,
            last_error=watcher.last_error,
            reconnects=watcher.reconnects,
            events=watcher.events_seen,
        ),
        config=ConfigStatus(
            source=str(daemon.config.source) if daemon.config.source else None,
            error=daemon.config_error,
        ),
        containers=len(daemon.registry),
        targets=tuple(_target_status(state, daemon.registry) for state in daemon.targets),
        recent_changes=tuple(
            ChangeStatus(change.at, change.target, change.change, change.duration_ms)
            for change in daemon.changes
        ),
        problems=tuple(daemon.health_problems()),
    )


def metrics_text(daemon: Daemon) -> bytes:
    """The Prometheus exposition, with the watcher's connection state copied in first."""
    daemon.sync_connection_metrics()
    return daemon.metrics.render_text()


def web_app(daemon: Daemon) -> web.Application:
    """The web side's app, reading `daemon` through snapshots only."""
    return make_app(
        functools.partial(status_snapshot, daemon), functools.partial(metrics_text, daemon)
    )


async def start_web_server(daemon: Daemon, host: str, port: int) -> web.AppRunner:
    return await start_server(web_app(daemon), host, port)
