"""The `/status` JSON document, from a `StatusSnapshot` (SPEC §7).

A public interface: README documents it, tests pin its fields and their order; the status
page is rendered from the same document, and `static/status.js` reads it.
"""

from __future__ import annotations

import time
from typing import Any

from lbsync import __version__
from lbsync.web.snapshot import StatusSnapshot, TargetStatus


def iso(timestamp: float | None) -> str | None:
    """Seconds since the epoch as `2026-01-01T10:00:00Z` (UTC, whole seconds); None stays."""
    if timestamp is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(timestamp))


def _target(target: TargetStatus) -> dict[str, Any]:
    return {
        "name": target.name,
        "output": target.output,
        "template": target.template,
        "reload": target.reload,
        "waiting_for_proxy": target.waiting_for_proxy,
        "last_pass": iso(target.last_pass_at),
        "last_reload": iso(target.last_reload_at),
        "last_reload_result": target.last_reload_result,
        "last_error": target.last_error,
        "hosts": [
            {
                "name": host.name,
                "routes": [
                    {"path": route.path, "upstream": route.upstream} for route in host.routes
                ],
            }
            for host in target.hosts
        ],
        "upstreams": [
            {
                "name": upstream.name,
                "balance": upstream.balance,
                "servers": [
                    {
                        "container": server.container,
                        "container_id": server.container_id,
                        "address": server.address,
                        "port": server.port,
                        "weight": server.weight,
                        "health": server.health,
                    }
                    for server in upstream.servers
                ],
            }
            for upstream in target.upstreams
        ],
        "skipped": [
            {
                "container": skip.container,
                "container_id": skip.container_id,
                "reason": skip.reason,
                "detail": skip.detail,
            }
            for skip in target.skipped
        ],
        # Proxy containers matched by the target's `proxy` but not reloaded (SPEC §1).
        "proxies_left_out": [
            {
                "container": proxy.container,
                "container_id": proxy.container_id,
                "reason": proxy.reason,
                "detail": proxy.detail,
            }
            for proxy in target.proxies_left_out
        ],
    }


def status_document(snapshot: StatusSnapshot) -> dict[str, Any]:
    """The `/status` JSON."""
    engine = snapshot.engine
    return {
        "version": __version__,
        "started_at": iso(snapshot.started_at),
        "engine": {
            "endpoint": engine.endpoint,
            "connected": engine.connected,
            "api_version": engine.api_version,
            "disconnected_since": iso(engine.disconnected_since),
            "last_error": engine.last_error,
            "reconnects": engine.reconnects,
            "events": engine.events,
        },
        "config": {
            "source": snapshot.config.source,
            "error": snapshot.config.error,
        },
        "containers": snapshot.containers,
        "targets": [_target(target) for target in snapshot.targets],
        "recent_changes": [
            {
                "at": iso(change.at),
                "target": change.target,
                "change": change.change,
                "duration_ms": change.duration_ms,
            }
            for change in snapshot.recent_changes
        ],
    }
