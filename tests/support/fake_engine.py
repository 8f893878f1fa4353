"""A FAKE Docker engine: an aiohttp server on a unix socket, for faults a real engine will not
produce on demand (a stream cut mid-line, garbage JSON, a 500, a newer engine's /_ping).

Everything that a real engine can show is tested against the real engine instead.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import web

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class FakeEngine:
    """Routes are registered per test; `/_ping` answers with a chosen API version."""

    def __init__(self, socket_path: Path, api_version: str = "1.41") -> None:
        self.socket_path = socket_path
        self.api_version = api_version
        self.min_api_version = "1.24"
        self.requests: list[str] = []
        self.app = web.Application()
        self._routes: dict[tuple[str, str], Handler] = {}
        self._prefix_routes: dict[tuple[str, str], Handler] = {}
        self.app.router.add_route("*", "/{tail:.*}", self._dispatch)
        self._runner: web.AppRunner | None = None

    def route(self, method: str, path: str, handler: Handler) -> None:
        """`path` without the version prefix, e.g. `/events`."""
        self._routes[(method, path)] = handler

    def prefix_route(self, method: str, prefix: str, handler: Handler) -> None:
        """Every path starting with `prefix` (e.g. `/containers/`), when no exact route matches."""
        self._prefix_routes[(method, prefix)] = handler

    def json_route(self, method: str, path: str, body: Any, status: int = 200) -> None:
        async def handler(request: web.Request) -> web.StreamResponse:
            return web.json_response(body, status=status)

        self.route(method, path, handler)

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        self.requests.append(f"{request.method} {request.path_qs}")
        path = request.path
        if path == "/_ping":
            return web.Response(
                text="OK", headers={"Api-Version": self.api_version, "Ostype": "linux"}
            )
        if not path.startswith("/v"):
            return web.json_response({"message": "page not found"}, status=404)
        version, _, rest = path[2:].partition("/")
        if _older(version, self.min_api_version):
            return web.json_response(
                {
                    "message": f"client version {version} is too old. Minimum supported API "
                    f"version is {self.min_api_version}, please upgrade your client"
                },
                status=400,
            )
        handler = self._routes.get((request.method, "/" + rest))
        if handler is None:
            for (method, prefix), candidate in self._prefix_routes.items():
                if method == request.method and ("/" + rest).startswith(prefix):
                    handler = candidate
                    break
        if handler is None:
            return web.json_response({"message": f"no fake route for /{rest}"}, status=404)
        return await handler(request)

    async def start(self) -> None:
        self._runner = web.AppRunner(self.app, shutdown_timeout=0.5)
        await self._runner.setup()
        await web.UnixSite(self._runner, str(self.socket_path)).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


def _older(version: str, minimum: str) -> bool:
    def key(text: str) -> tuple[int, int]:
        major, _, minor = text.partition(".")
        return int(major), int(minor)

    return key(version) < key(minimum)


def event_line(action: str, container_id: str = "c" * 64, **attributes: str) -> bytes:
    """One events-stream line as the engine writes it."""
    event = {
        "Type": "container",
        "Action": action,
        "Actor": {"ID": container_id, "Attributes": attributes},
        "scope": "local",
        "time": 1_700_000_000,
        "timeNano": 1_700_000_000_000_000_000,
    }
    return json.dumps(event).encode() + b"\n"
