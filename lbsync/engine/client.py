"""A small asyncio client for the Docker Engine API: just what lbsync needs, on aiohttp.

Every HTTP status and connection failure becomes a typed `DockerError` whose message tells
a person what to do; the events stream never ends silently unless `until` was asked for.

The errors it raises are in `lbsync.engine.errors`, the events it yields (and how the stream
is cut into lines) in `lbsync.engine.events`, what an exec returns in `lbsync.engine.exec`,
and where it connects in `lbsync.engine.endpoint`.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Final
from urllib.parse import quote

import aiohttp

from lbsync.engine.endpoint import Endpoint, resolve_endpoint
from lbsync.engine.errors import (
    ApiVersionTooOld,
    Conflict,
    DockerError,
    EngineUnreachable,
    PermissionDenied,
    StreamError,
    api_error,
)
from lbsync.engine.events import MAX_EVENT_LINE, Event, LineSplitter, event_from_line
from lbsync.engine.exec import EXEC_OUTPUT_LIMIT, ExecResult, FrameReader
from lbsync.engine.inspect import ListedContainer, listed_container

__all__ = [
    "MAX_API_VERSION",
    "MIN_API_VERSION",
    "DockerClient",
    "PingInfo",
    "format_version",
    "parse_version",
]

#: The newest API version this client was written against; the engine may speak newer.
MAX_API_VERSION: Final = (1, 47)
#: The oldest version lbsync accepts (Docker 19.03). Docker 29+ refuses below 1.44.
MIN_API_VERSION: Final = (1, 40)
DEFAULT_TIMEOUT: Final = 30.0
# A request timeout meaning "the client's own"; None means none at all (streams).
_CLIENT_TIMEOUT: Final = -1.0
_EXEC_CHUNK: Final = 64 * 1024


def format_version(version: tuple[int, int]) -> str:
    return f"{version[0]}.{version[1]}"


def parse_version(text: str) -> tuple[int, int]:
    major, _, minor = text.strip().partition(".")
    return int(major), int(minor)


@dataclass(frozen=True, slots=True)
class PingInfo:
    api_version: tuple[int, int]
    os_type: str
    is_podman: bool


# --- client -----------------------------------------------------------------------------


class DockerClient:
    """One engine connection pool. Call `connect()` (or use `async with`) before any call."""

    def __init__(self, endpoint: Endpoint, *, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.endpoint = endpoint
        self._timeout = timeout
        self._session: aiohttp.ClientSession | None = None
        self._version: tuple[int, int] | None = None
        self.ping_info: PingInfo | None = None

    @classmethod
    def from_env(
        cls, host: str | None = None, environ: Mapping[str, str] | None = None
    ) -> DockerClient:
        return cls(resolve_endpoint(host, os.environ if environ is None else environ))

    async def __aenter__(self) -> DockerClient:
        try:
            await self.connect()
        except BaseException:
            await self.close()  # __aexit__ does not run when __aenter__ raises
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    @property
    def api_version(self) -> tuple[int, int]:
        if self._version is None:
            raise DockerError("not connected: call connect() first")
        return self._version

    def _new_session(self) -> aiohttp.ClientSession:
        connector: aiohttp.BaseConnector
        if self.endpoint.unix_path is not None:
            connector = aiohttp.UnixConnector(path=self.endpoint.unix_path)
        else:
            connector = aiohttp.TCPConnector(ssl=self.endpoint.ssl_context or False)
        return aiohttp.ClientSession(
            base_url=self.endpoint.base_url,
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=None, connect=10.0),
        )

    def _session_or_new(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = self._new_session()
        return self._session

    async def connect(self) -> PingInfo:
        """Ping the engine and settle on the newest API version both sides speak."""
        info = await self.ping()
        if info.api_version < MIN_API_VERSION:
            raise ApiVersionTooOld(
                f"the engine at {self.endpoint.url} speaks Docker API "
                f"{format_version(info.api_version)}; lbsync needs "
                f"{format_version(MIN_API_VERSION)} or newer (Docker 19.03+, Podman 3+): "
                "upgrade the engine"
            )
        self._version = min(info.api_version, MAX_API_VERSION)
        self.ping_info = info
        return info

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    # -- plumbing --

    def _unreachable(self, exc: BaseException) -> DockerError:
        os_error = getattr(exc, "os_error", None)
        if isinstance(os_error, PermissionError) or (
            isinstance(exc, OSError) and exc.errno in (errno.EACCES, errno.EPERM)
        ):
            where = self.endpoint.unix_path or self.endpoint.url
            return PermissionDenied(
                f"permission denied on the Docker socket {where}: run lbsync as root or as a "
                "user in the socket's group (`ls -ln` shows it; in a container use "
                "`--group-add <gid>`), or point docker.host at a socket proxy"
            )
        reason = str(os_error or exc) or type(exc).__name__
        return EngineUnreachable(
            f"cannot reach the Docker engine at {self.endpoint.url} ({reason}): "
            "is dockerd running? Set docker.host in the config or DOCKER_HOST"
        )

    def _path(self, path: str) -> str:
        return f"/v{format_version(self.api_version)}{path}"

    @contextlib.asynccontextmanager
    async def _request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        json_body: Any = None,
        timeout: float | None = _CLIENT_TIMEOUT,
        versioned: bool = True,
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        full_path = self._path(path) if versioned else path
        total = self._timeout if timeout == _CLIENT_TIMEOUT else timeout
        session = self._session_or_new()
        try:
            async with session.request(
                method,
                full_path,
                params=params,
                json=json_body,
                timeout=aiohttp.ClientTimeout(total=total, connect=10.0),
            ) as response:
                if response.status >= 400:
                    message = await _error_message(response)
                    raise api_error(response.status, message, method, full_path)
                yield response
        except aiohttp.ClientConnectorError as exc:
            raise self._unreachable(exc) from exc
        except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as exc:
            raise self._unreachable(exc) from exc
        except TimeoutError as exc:
            raise EngineUnreachable(
                f"the Docker engine at {self.endpoint.url} did not answer {method} "
                f"{full_path} within {total:g} s"
            ) from exc

    async def _json(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        json_body: Any = None,
        timeout: float | None = _CLIENT_TIMEOUT,
    ) -> Any:
        async with self._request(
            method, path, params=params, json_body=json_body, timeout=timeout
        ) as response:
            try:
                return await response.json(content_type=None)
            except (ValueError, aiohttp.ClientPayloadError) as exc:
                raise DockerError(f"{method} {path}: the engine's answer is not JSON") from exc

    # -- calls --

    async def ping(self) -> PingInfo:
        async with self._request("GET", "/_ping", versioned=False, timeout=10.0) as response:
            header = response.headers.get("Api-Version")
            await response.read()
        if not header:
            raise DockerError(
                f"{self.endpoint.url} answered /_ping without an Api-Version header: "
                "is that a Docker engine?"
            )
        try:
            version = parse_version(header)
        except ValueError as exc:
            raise DockerError(f"unreadable Api-Version {header!r} from /_ping") from exc
        return PingInfo(
            api_version=version,
            os_type=response.headers.get("Ostype", ""),
            is_podman="Libpod-Api-Version" in response.headers,
        )

    async def version(self) -> dict[str, Any]:
        result = await self._json("GET", "/version")
        return dict(result)

    async def _list(
        self,
        path: str,
        filters: Mapping[str, Sequence[str]] | None,
        params: Mapping[str, str] | None = None,
    ) -> list[dict[str, Any]]:
        """A `GET` of a list endpoint, with the engine's JSON-encoded `filters`."""
        query = dict(params or {})
        if filters:
            query["filters"] = json.dumps({k: list(v) for k, v in filters.items()})
        result = await self._json("GET", path, params=query)
        return list(result)

    async def list_containers(
        self, *, all: bool = True, filters: Mapping[str, Sequence[str]] | None = None
    ) -> list[dict[str, Any]]:
        return await self._list("/containers/json", filters, {"all": "1" if all else "0"})

    async def list_container_ids(
        self, *, all: bool = True, filters: Mapping[str, Sequence[str]] | None = None
    ) -> list[str]:
        """The ids `list_containers` would list, without the rest of the listing.

        A listing is about 1 KB of JSON per container (labels, ports, mounts, networks) and
        three times that once parsed; a re-list that inspects every container anyway needs
        the ids only. Each object is cut down to its `Id` as the parser finishes it, so the
        parsed listing never exists: at 1,000 containers, a few MB less at every re-list.
        """
        query = {"all": "1" if all else "0"}
        if filters:
            query["filters"] = json.dumps({k: list(v) for k, v in filters.items()})
        listed = await self._container_listing(query, _only_id)
        return [str(item["Id"]) for item in listed if isinstance(item, dict) and item.get("Id")]

    async def list_containers_brief(self, *, all: bool = True) -> list[ListedContainer]:
        """The listing, each container cut down to what can change while it exists (names,
        state, health, networks, published ports) as the parser finishes it: the parsed
        listing (labels, mounts, ...) never exists at once."""
        listed = await self._container_listing({"all": "1" if all else "0"}, _brief)
        return [item for item in listed if isinstance(item, ListedContainer) and item.id]

    async def _container_listing(
        self, query: Mapping[str, str], hook: Callable[[list[tuple[str, Any]]], Any]
    ) -> list[Any]:
        """`GET /containers/json`, each JSON object made by `hook` as the parser finishes it
        (so that the whole parsed listing never exists at once)."""
        path = "/containers/json"
        async with self._request("GET", path, params=query) as response:
            try:
                body = await response.read()
            except aiohttp.ClientPayloadError as exc:
                raise DockerError(f"GET {path}: the engine's answer is not JSON") from exc
        try:
            listed = json.loads(body, object_pairs_hook=hook)
        except ValueError as exc:
            raise DockerError(f"GET {path}: the engine's answer is not JSON") from exc
        if not isinstance(listed, list):
            raise DockerError(f"GET {path}: the engine's answer is not a list")
        return listed

    async def inspect_container(self, container_id: str) -> dict[str, Any]:
        result = await self._json("GET", f"/containers/{quote(container_id, safe='')}/json")
        return dict(result)

    async def list_networks(
        self, filters: Mapping[str, Sequence[str]] | None = None
    ) -> list[dict[str, Any]]:
        return await self._list("/networks", filters)

    # -- swarm (a manager answers these; any other engine answers 503) --

    async def info(self) -> dict[str, Any]:
        """`GET /info`: `Swarm.LocalNodeState` and `Swarm.ControlAvailable` tell a manager."""
        result = await self._json("GET", "/info")
        return dict(result)

    async def list_services(
        self, filters: Mapping[str, Sequence[str]] | None = None
    ) -> list[dict[str, Any]]:
        """`GET /services`: every swarm service (labels on `Spec.Labels`)."""
        return await self._list("/services", filters)

    async def inspect_service(self, service_id: str) -> dict[str, Any]:
        """`GET /services/{id}`; `NotFound` when the service was removed."""
        result = await self._json("GET", f"/services/{quote(service_id, safe='')}")
        return dict(result)

    async def list_tasks(
        self, filters: Mapping[str, Sequence[str]] | None = None
    ) -> list[dict[str, Any]]:
        """`GET /tasks`, e.g. `filters={"service": [id], "desired-state": ["running"]}`."""
        return await self._list("/tasks", filters)

    async def list_nodes(
        self, filters: Mapping[str, Sequence[str]] | None = None
    ) -> list[dict[str, Any]]:
        """`GET /nodes`: each node's `Status.Addr` is where its host-network tasks listen."""
        return await self._list("/nodes", filters)

    async def top(self, container_id: str, ps_args: str | None = None) -> dict[str, Any]:
        """The processes of a container (`docker top`): used to see new worker pids."""
        path = f"/containers/{quote(container_id, safe='')}/top"
        result = await self._json("GET", path, params={"ps_args": ps_args} if ps_args else None)
        if not isinstance(result, dict):
            # Podman 4 answers 200 with an empty body for a container that is not running
            # (Docker: 409); the same class, so callers need not know the engine.
            raise Conflict(
                200,
                "empty answer: the container is not running",
                method="GET",
                path=self._path(path),
            )
        return result

    async def kill(self, container_id: str, signal: str) -> None:
        async with self._request(
            "POST", f"/containers/{quote(container_id, safe='')}/kill", params={"signal": signal}
        ) as response:
            await response.read()

    async def exec(
        self,
        container_id: str,
        cmd: Sequence[str],
        *,
        timeout: float = 60.0,
        output_limit: int | None = EXEC_OUTPUT_LIMIT,
    ) -> ExecResult:
        """Run `cmd` in the container and wait for it; output demultiplexed, the last
        `output_limit` bytes of each stream kept (None: all)."""
        created = await self._json(
            "POST",
            f"/containers/{quote(container_id, safe='')}/exec",
            json_body={"AttachStdout": True, "AttachStderr": True, "Cmd": list(cmd)},
        )
        exec_id = str(created["Id"])
        async with self._request(
            "POST",
            f"/exec/{exec_id}/start",
            json_body={"Detach": False, "Tty": False},
            timeout=timeout,
        ) as response:
            reader = FrameReader(output_limit)
            try:
                async for chunk in response.content.iter_chunked(_EXEC_CHUNK):
                    reader.feed(chunk)
            except aiohttp.ClientPayloadError as exc:
                raise DockerError(f"exec {list(cmd)}: output stream broke: {exc}") from exc
        stdout, stderr = reader.finish()
        state = await self._json("GET", f"/exec/{exec_id}/json")
        exit_code = state.get("ExitCode")
        if state.get("Running") or exit_code is None:
            raise DockerError(f"exec {list(cmd)}: no exit code after its stream ended")
        return ExecResult(
            exit_code=int(exit_code), stdout=stdout, stderr=stderr, dropped=reader.dropped
        )

    async def events(
        self,
        *,
        since: str | None = None,
        until: str | None = None,
        filters: Mapping[str, Sequence[str]] | None = None,
        subscribed: asyncio.Event | None = None,
    ) -> AsyncGenerator[Event, None]:
        """The engine's events, one parsed `Event` per line.

        Without `until` the stream is endless: its end, a line cut short or a line that is
        not JSON raises `StreamError`, so a caller can never mistake a lost stream for quiet.
        `subscribed` is set once the engine answered the request: from then on it records
        every event for us, which is what list-after-subscribe relies on.
        """
        params: dict[str, str] = {}
        if since is not None:
            params["since"] = since
        if until is not None:
            params["until"] = until
        if filters:
            params["filters"] = json.dumps({k: list(v) for k, v in filters.items()})
        async with self._request("GET", "/events", params=params, timeout=None) as response:
            if subscribed is not None:
                subscribed.set()
            lines = LineSplitter(MAX_EVENT_LINE)
            while True:
                try:
                    chunk = await response.content.readany()
                except aiohttp.ClientPayloadError as exc:
                    raise StreamError(f"the events stream broke: {exc}") from exc
                except (aiohttp.ClientConnectionError, ConnectionError) as exc:
                    raise StreamError(f"the events stream was dropped: {exc}") from exc
                if not chunk:
                    if lines.partial:
                        raise StreamError(
                            f"the events stream was cut mid-line: {lines.partial[:200]!r}"
                        )
                    if until is not None:
                        return
                    raise StreamError("the engine closed the events stream")
                for line in lines.feed(chunk):
                    event = event_from_line(line)
                    if event is not None:
                        yield event


def _only_id(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """`json.loads` hook: an object, cut down to its `Id` (a nested object's is dropped with
    its parent, which keeps only its own)."""
    return {key: value for key, value in pairs if key == "Id"}


def _brief(pairs: list[tuple[str, Any]]) -> dict[str, Any] | ListedContainer:
    """`json.loads` hook for `list_containers_brief`: a container (an object with `Id` and
    `Names`) becomes a `ListedContainer`; the objects inside it stay dicts until then."""
    obj = dict(pairs)
    if "Id" in obj and "Names" in obj:
        return listed_container(obj)
    return obj


async def _error_message(response: aiohttp.ClientResponse) -> str:
    try:
        body = await response.read()
    except aiohttp.ClientError:
        return response.reason or ""
    try:
        data = json.loads(body)
    except ValueError:
        return body.decode("utf-8", "replace").strip()[:500] or (response.reason or "")
    if isinstance(data, dict) and "message" in data:
        return str(data["message"])
    return body.decode("utf-8", "replace").strip()[:500]
