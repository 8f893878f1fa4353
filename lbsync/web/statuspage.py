"""The status page at `GET /`: the `/status` document, for a person (SPEC §7).

`lbsync.web.server` serves it; it is rendered here with Jinja2 (autoescaped: container names,
labels and errors are untrusted) from `lbsync/web/status.html.j2`, so it reads fine without
JavaScript. The plain script `lbsync/web/static/status.js` then polls `status` and `healthz`
every 2 s and rebuilds the same tables from the JSON with `textContent` only. No build step,
nothing from the network: the CSP header allows this origin only.

`page_view()` turns the `/status` document into what the template shows (rows of host, path,
upstream and its servers; counts for the overview); `status.js` does the same in the browser,
so keep the two in step when the document grows.
"""

from __future__ import annotations

import calendar
import time
from pathlib import Path
from typing import Any

import jinja2
import jinja2.sandbox
from aiohttp import web
from aiohttp.typedefs import Handler

WEB_DIR = Path(__file__).resolve().parent
STATIC_DIR = WEB_DIR / "static"
TEMPLATE = "status.html.j2"
POLL_INTERVAL_MS = 2000

#: Everything the page loads comes from this origin; no inline script or style at all.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}

#: The colour of each skip reason's badge (status.js has the same table); others: muted.
SKIP_TONES = {
    "invalid_label": "bad",
    "unsupported_host": "bad",
    "no_host": "warn",
    "no_port": "warn",
    "ambiguous_port": "warn",
    "no_service": "warn",
    "no_address": "warn",
    "not_published": "warn",
    "not_healthy": "warn",
    "not_running": "muted",
}

HEALTH_WORDS = {
    "healthy": "healthy",
    "none": "no health check",
    "starting": "starting",
    "unhealthy": "unhealthy",
}

_env: jinja2.Environment | None = None


def environment() -> jinja2.Environment:
    """The page's Jinja2 environment (created once): autoescaped HTML, strict names, and
    sandboxed like every template lbsync renders (SPEC §3a)."""
    global _env
    if _env is None:
        _env = jinja2.sandbox.SandboxedEnvironment(
            loader=jinja2.FileSystemLoader(WEB_DIR),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        _env.filters["ago"] = ago
        _env.globals["health_words"] = health_words
        _env.globals["skip_tone"] = skip_tone
    return _env


def health_words(health: str) -> str:
    return HEALTH_WORDS.get(health, health)


def skip_tone(reason: str) -> str:
    return SKIP_TONES.get(reason, "muted")


def _parse_iso(value: str) -> float | None:
    try:
        return float(calendar.timegm(time.strptime(value, "%Y-%m-%dT%H:%M:%SZ")))
    except (TypeError, ValueError):
        return None


def ago(value: str | None, now: float | None = None) -> str:
    """`2026-01-01T10:00:00Z` -> `12 s ago` (as status.js writes it); `never` for None."""
    if value is None:
        return "never"
    at = _parse_iso(value)
    if at is None:
        return value
    seconds = max(0, int((time.time() if now is None else now) - at))
    if seconds < 5:
        return "just now"
    if seconds < 60:
        return f"{seconds} s ago"
    if seconds < 3600:
        return f"{seconds // 60} min ago"
    if seconds < 86400:
        return f"{seconds // 3600} h ago"
    return f"{seconds // 86400} d ago"


def page_view(document: dict[str, Any], problems: list[str]) -> dict[str, Any]:
    """What the template needs beyond the document: route rows and overview counts."""
    targets = []
    hosts: set[str] = set()
    routes = servers = 0
    skipped: set[tuple[str, str]] = set()
    for target in document["targets"]:
        upstreams = {u["name"]: u for u in target["upstreams"]}
        rows = []
        for host in target["hosts"]:
            hosts.add(host["name"])
            for route in host["routes"]:
                upstream = upstreams.get(
                    route["upstream"], {"name": route["upstream"], "balance": "", "servers": []}
                )
                rows.append({"host": host["name"], "path": route["path"], "upstream": upstream})
                routes += 1
        servers += sum(len(u["servers"]) for u in target["upstreams"])
        skipped |= {(s["container_id"], s["reason"]) for s in target["skipped"]}
        targets.append({"doc": target, "rows": rows})
    return {
        "targets": targets,
        "problems": problems,
        "counts": {
            "hosts": len(hosts),
            "routes": routes,
            "servers": servers,
            "skipped": len(skipped),
            "containers": document["containers"],
        },
    }


def render_page(document: dict[str, Any], problems: list[str]) -> str:
    template = environment().get_template(TEMPLATE)
    return template.render(
        doc=document,
        view=page_view(document, problems),
        poll_interval_ms=POLL_INTERVAL_MS,
    )


@web.middleware
async def static_headers(request: web.Request, handler: Handler) -> web.StreamResponse:
    """`nosniff` on the page's static files too; browsers revalidate them (no stale JS)."""
    response = await handler(request)
    if request.path.startswith("/static/"):
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Cache-Control", "no-cache")
    return response


def add_static_routes(app: web.Application) -> None:
    """`GET /static/...` (never a directory listing, never outside the folder)."""
    app.router.add_static("/static/", STATIC_DIR, show_index=False, follow_symlinks=False)
    app.middlewares.append(static_headers)
