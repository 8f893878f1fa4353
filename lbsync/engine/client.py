"""A small asyncio client for the Docker Engine API: just what lbsync needs, on aiohttp.

Every HTTP status and connection failure becomes a typed `DockerError` whose message tells
a person what to do; the events stream never ends silently unless `until` was asked for.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
import re
import ssl
import struct
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType, TracebackType
from typing import Any, Final
from urllib.parse import quote, urlsplit

import aiohttp

from lbsync.engine.inspect import ListedContainer, listed_container

#: The newest API version this client was written against; the engine may speak newer.
MAX_API_VERSION: Final = (1, 47)
#: The oldest version lbsync accepts (Docker 19.03). Docker 29+ refuses below 1.44.
MIN_API_VERSION: Final = (1, 40)
DEFAULT_UNIX_SOCKET: Final = "/var/run/docker.sock"
DEFAULT_TIMEOUT: Final = 30.0
# A request timeout meaning "the client's own"; None means none at all (streams).
_CLIENT_TIMEOUT: Final = -1.0
#: The longest events-stream line that is parsed, in bytes (its newline not counted). The
#: engine puts every label of a container into each of its events, so the length is the
#: container owner's choice; real events are 1-5 KB (a Compose project's labels included).
#: A longer line is never held whole: it is skipped up to its newline, and what its start and
#: end say becomes an `Event` with `oversized` set, which the watcher answers with an inspect.
#: Only the event's attributes are lost that way, so the bound need only be far above real
#: events and cheap to hold: 64 KiB, aiohttp's own read-buffer size.
MAX_EVENT_LINE: Final = 64 * 1024
#: What is kept of a longer line: its start (the engine writes `status`, `id`, `from`, `Type`,
#: `Action` and `Actor.ID` before the attributes) and its end (`scope`, `time`, `timeNano`).
OVERSIZED_HEAD: Final = 4096
OVERSIZED_TAIL: Final = 256
_EXEC_CHUNK: Final = 64 * 1024


def format_version(version: tuple[int, int]) -> str:
    return f"{version[0]}.{version[1]}"


def parse_version(text: str) -> tuple[int, int]:
    major, _, minor = text.strip().partition(".")
    return int(major), int(minor)


# --- errors -----------------------------------------------------------------------------


class DockerError(Exception):
    """Anything that went wrong talking to the engine."""


class EngineUnreachable(DockerError):
    """No connection could be made, or it was lost before an answer."""


class PermissionDenied(DockerError):
    """The socket exists but this user may not open it."""


class ApiVersionTooOld(DockerError):
    """The engine speaks only API versions older than lbsync supports."""


class StreamError(DockerError):
    """The events stream broke: cut mid-line, not JSON, or closed by the engine."""


class ApiError(DockerError):
    """The engine answered with an error status."""

    def __init__(self, status: int, message: str, *, method: str, path: str) -> None:
        self.status = status
        self.engine_message = message
        self.method = method
        self.path = path
        super().__init__(f"{method} {path}: engine answered {status}: {message}")


class BadRequest(ApiError):
    """400: the engine did not accept the request's parameters."""


class NotFound(ApiError):
    """404: no such container, exec or network (often: it was removed meanwhile)."""


class Conflict(ApiError):
    """409: the object is in a state that forbids this (e.g. kill of a stopped container).

    Podman says the same with a 500 "container state improper" (`status` stays 500) and,
    for `top`, with an empty 200.
    """


class ServerError(ApiError):
    """5xx: the engine failed; retry later, and see the engine's log."""


#: Podman answers 500 where Docker answers 4xx; its message ends with the libpod error
#: ("...: container state improper"), which tells the class Docker's status would give.
_PODMAN_500_CAUSES: Final[tuple[tuple[str, type[ApiError]], ...]] = (
    ("container state improper", Conflict),  # kill/exec of a stopped container (Docker: 409)
    ("invalid signal", BadRequest),  # kill with an unknown signal (Docker: 400)
)


def _api_error(status: int, message: str, method: str, path: str) -> ApiError:
    cls: type[ApiError]
    if status == 500:
        # Podman: so callers that treat Conflict as "not running" work on both engines.
        # `status` stays the real one (500).
        for cause, podman_cls in _PODMAN_500_CAUSES:
            if cause in message:
                return podman_cls(status, message, method=method, path=path)
    if status == 400:
        cls = BadRequest
    elif status == 404:
        cls = NotFound
    elif status == 409:
        cls = Conflict
    elif status >= 500:
        cls = ServerError
    else:
        cls = ApiError
    return cls(status, message, method=method, path=path)


# --- endpoint ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where the engine is and how to reach it."""

    url: str  # as configured, for messages: unix:///var/run/docker.sock, tcp://h:2376
    base_url: str  # what aiohttp requests go to
    unix_path: str | None = None
    ssl_context: ssl.SSLContext | None = None

    @property
    def is_unix(self) -> bool:
        return self.unix_path is not None


def resolve_endpoint(
    host: str | None,
    environ: Mapping[str, str],
    *,
    tls_ca: Path | None = None,
    tls_cert: Path | None = None,
    tls_key: Path | None = None,
) -> Endpoint:
    """The engine endpoint as the docker CLI would pick it.

    `host` (from the config file) wins over `DOCKER_HOST`; TLS is on for `https://`, for a
    configured client certificate, or when `DOCKER_TLS_VERIFY` is set, with certificates
    from `DOCKER_CERT_PATH` (default `~/.docker`) unless the config names them.
    """
    url = host or environ.get("DOCKER_HOST") or f"unix://{DEFAULT_UNIX_SOCKET}"
    parts = urlsplit(url)
    if parts.scheme == "unix":
        path = parts.path or DEFAULT_UNIX_SOCKET
        return Endpoint(url=url, base_url="http://docker", unix_path=path)
    if parts.scheme not in ("tcp", "http", "https"):
        raise DockerError(
            f"docker host {url!r}: unsupported scheme {parts.scheme!r}; "
            "use unix:///path, tcp://host:port or https://host:port"
        )
    if not parts.hostname:
        raise DockerError(f"docker host {url!r}: no host name in it")
    verify_env = environ.get("DOCKER_TLS_VERIFY", "") not in ("", "0")
    use_tls = parts.scheme == "https" or tls_cert is not None or verify_env
    default_port = 2376 if use_tls else 2375
    netloc = f"{parts.hostname}:{parts.port or default_port}"
    if ":" in parts.hostname:  # IPv6 literal
        netloc = f"[{parts.hostname}]:{parts.port or default_port}"
    if not use_tls:
        return Endpoint(url=url, base_url=f"http://{netloc}")
    cert_dir = Path(environ.get("DOCKER_CERT_PATH") or Path.home() / ".docker")
    ca = tls_ca or (cert_dir / "ca.pem")
    cert = tls_cert or (cert_dir / "cert.pem")
    key = tls_key or (cert_dir / "key.pem")
    try:
        context = ssl.create_default_context(cafile=str(ca) if ca.exists() else None)
        if cert.exists() and key.exists():
            context.load_cert_chain(str(cert), str(key))
        elif tls_cert is not None:
            raise DockerError(f"TLS client certificate {cert} or key {key} does not exist")
    except (OSError, ssl.SSLError) as exc:
        raise DockerError(f"cannot load TLS certificates for {url}: {exc}") from exc
    if not verify_env and parts.scheme != "https" and tls_ca is None:
        # Like the CLI's --tls without --tlsverify: encrypted, server not verified.
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return Endpoint(url=url, base_url=f"https://{netloc}", ssl_context=context)


# --- results ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PingInfo:
    api_version: tuple[int, int]
    os_type: str
    is_podman: bool


@dataclass(frozen=True, slots=True)
class Event:
    """One engine event, as lbsync reads it."""

    type: str  # container, network, image, service, ...
    action: str  # start, die, health_status: healthy, kill, connect, ...
    actor_id: str
    attributes: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    time_nano: int = 0
    raw: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    #: The length of its line when that was over `MAX_EVENT_LINE`: the line was skipped, only
    #: type, action, actor and time were read (attributes and `raw` are empty). 0 otherwise.
    oversized: int = 0

    @property
    def base_action(self) -> str:
        """The action without its detail: `health_status: healthy` -> `health_status`."""
        return self.action.split(":", 1)[0].strip()

    @classmethod
    def from_json(cls, data: Any) -> Event:
        if not isinstance(data, dict):
            raise ValueError(f"event is not a JSON object: {data!r:.200}")
        actor = data.get("Actor") or {}
        if not isinstance(actor, dict):
            actor = {}
        attributes = actor.get("Attributes") or {}
        if not isinstance(attributes, dict):
            attributes = {}
        actor_id = actor.get("ID") or data.get("id") or ""
        time_nano = data.get("timeNano")
        if not isinstance(time_nano, int):
            seconds = data.get("time")
            time_nano = int(seconds) * 1_000_000_000 if isinstance(seconds, int) else 0
        return cls(
            type=str(data.get("Type") or ""),
            action=str(data.get("Action") or data.get("status") or ""),
            actor_id=str(actor_id),
            attributes=MappingProxyType({str(k): str(v) for k, v in attributes.items()}),
            time_nano=time_nano,
            raw=MappingProxyType(data),
        )


#: What `exec` keeps of each output stream (stdout, stderr): a container may print without
#: end, and an exec must cost lbsync the same memory whatever it prints. The tail is kept,
#: not the head: a checker says its verdict last (nginx's `[emerg] ...` then `test failed`,
#: HAProxy's alerts then `Fatal errors found`), after any number of warnings before it
#: (nginx writes one `conflicting server name` line per duplicate host).
EXEC_OUTPUT_LIMIT: Final = 64 * 1024


@dataclass(frozen=True, slots=True)
class ExecResult:
    exit_code: int
    stdout: bytes
    stderr: bytes
    dropped: int = 0  # bytes of earlier output left out to stay within the limit

    @property
    def output(self) -> str:
        """stdout and stderr as text, for logs and error messages."""
        text = (self.stdout + self.stderr).decode("utf-8", "replace").strip()
        if self.dropped:
            return f"[{self.dropped} bytes of earlier output left out]\n{text}"
        return text


class FrameReader:
    """Docker's multiplexed stream (8-byte frame headers), fed in chunks of any size.

    Keeps the last `limit` bytes of stdout and of stderr (None: all of them) and counts what
    it left out: a frame header may announce up to 4 GiB, and none of it is buffered whole.
    """

    def __init__(self, limit: int | None = None) -> None:
        self._limit = limit
        self._header = bytearray()
        self._left = 0  # payload bytes still due in the current frame
        self.stdout = bytearray()
        self.stderr = bytearray()
        self._into = self.stdout
        self.dropped = 0

    def feed(self, chunk: bytes) -> None:
        view = memoryview(chunk)
        while view:
            if self._left == 0:
                need = 8 - len(self._header)
                self._header += view[:need]
                view = view[need:]
                if len(self._header) < 8:
                    return
                stream, self._left = struct.unpack(">BxxxL", self._header)
                self._header.clear()
                self._into = self.stderr if stream == 2 else self.stdout
                continue
            part = view[: self._left]
            view = view[len(part) :]
            self._left -= len(part)
            self._keep(self._into, part)

    def _keep(self, buffer: bytearray, part: memoryview) -> None:
        limit = self._limit
        if limit is None:
            buffer += part
            return
        if len(part) >= limit:
            self.dropped += len(buffer) + len(part) - limit
            buffer[:] = part[len(part) - limit :]
            return
        buffer += part
        if len(buffer) > limit:
            cut = len(buffer) - limit
            del buffer[:cut]
            self.dropped += cut

    def finish(self) -> tuple[bytes, bytes]:
        """(stdout, stderr); DockerError when the stream ended inside a frame."""
        if self._header or self._left:
            raise DockerError(
                "exec output ends inside a frame "
                f"({len(self._header)} header bytes, {self._left} payload bytes missing)"
            )
        return bytes(self.stdout), bytes(self.stderr)


def demultiplex(data: bytes) -> tuple[bytes, bytes]:
    """Split Docker's multiplexed stream (8-byte frame headers) into stdout and stderr."""
    reader = FrameReader()
    reader.feed(data)
    return reader.finish()


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
                    raise _api_error(response.status, message, method, full_path)
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
                    if isinstance(line, OversizedLine):
                        yield oversized_event(line)
                        continue
                    if not line.strip():
                        continue
                    try:
                        event = Event.from_json(json.loads(line))
                    except ValueError as exc:
                        raise StreamError(
                            f"the events stream sent a line that is not an event: {line[:200]!r}"
                        ) from exc
                    yield event


# --- bounded lines ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class OversizedLine:
    """A line longer than a `LineSplitter`'s bound, which was not held: what is left of it."""

    size: int  # its length in bytes, without the newline
    head: bytes  # its first bytes (up to the splitter's `head`)
    tail: bytes  # its last bytes (up to the splitter's `tail`)


class LineSplitter:
    """Cuts a byte stream, fed in chunks of any size, into lines, holding at most `max_line`
    bytes of a line: a longer one is skipped up to its newline and comes out as an
    `OversizedLine`, however many chunks it spans. Lines come out without their newline."""

    def __init__(
        self, max_line: int, *, head: int = OVERSIZED_HEAD, tail: int = OVERSIZED_TAIL
    ) -> None:
        self.max_line = max_line
        self._head_size = head
        self._tail_size = tail
        self._line = bytearray()
        self._skipped: int | None = None  # bytes of an oversized line so far; None: none
        self._head = b""
        self._tail = b""

    @property
    def partial(self) -> bytes:
        """The start of a line not finished yet; empty between lines."""
        return self._head if self._skipped is not None else bytes(self._line)

    def feed(self, data: bytes) -> list[bytes | OversizedLine]:
        """The lines `data` finishes."""
        lines: list[bytes | OversizedLine] = []
        start = 0
        while True:
            end = data.find(b"\n", start)
            self._take(data[start:] if end < 0 else data[start:end])
            if end < 0:
                return lines
            lines.append(self._finish())
            start = end + 1

    def _take(self, piece: bytes) -> None:
        if self._skipped is None:
            if len(self._line) + len(piece) <= self.max_line:
                self._line += piece
                return
            # Over the bound: keep its start and end, drop the rest, from now to its newline.
            self._skipped = len(self._line)
            self._head = bytes(self._line[: self._head_size])
            self._tail = bytes(self._line[-self._tail_size :])
            self._line = bytearray()
        if len(self._head) < self._head_size:
            self._head += piece[: self._head_size - len(self._head)]
        self._tail = (self._tail + piece[-self._tail_size :])[-self._tail_size :]
        self._skipped += len(piece)

    def _finish(self) -> bytes | OversizedLine:
        if self._skipped is None:
            line = bytes(self._line)
            self._line.clear()
            return line
        oversized = OversizedLine(size=self._skipped, head=self._head, tail=self._tail)
        self._skipped = None
        self._head = self._tail = b""
        return oversized


_JSON_STRING = rb'"(?:[^"\\]|\\.)*"'
#: The start of an event line: the engine's own string fields (`status`, `id`, `from`, `Type`,
#: `Action`), then `"Actor":{"ID":...`, all before the attributes, which hold the labels. Read
#: field by field from the first byte, honouring escapes: a label value can never be taken
#: for one of them.
_EVENT_HEAD = re.compile(
    rb'\{((?:"[A-Za-z]+":' + _JSON_STRING + rb",)*)"
    rb'(?:"Actor":\{"ID":(' + _JSON_STRING + rb"))?"
)
_EVENT_FIELD = re.compile(rb'"([A-Za-z]+)":(' + _JSON_STRING + rb")")
#: The end of an event line: `..."time":1700000000,"timeNano":1700000000123456789}`.
_EVENT_TIME_NANO = re.compile(rb'"timeNano":([0-9]{1,20})\}\s*$')


def _json_string(token: bytes) -> str:
    """A JSON string token's text; "" when it does not decode."""
    try:
        text = json.loads(token)
    except ValueError:
        return ""
    return text if isinstance(text, str) else ""


def oversized_event(line: OversizedLine) -> Event:
    """What can be read of an event whose line was too long to parse: type, action and actor
    from its start, time from its end; "" (0 for the time) where they do not say."""
    fields: dict[str, str] = {}
    actor_id = ""
    head = _EVENT_HEAD.match(line.head)
    if head is not None:
        for key, token in _EVENT_FIELD.findall(head.group(1)):
            fields[key.decode("ascii")] = _json_string(token)
        if head.group(2) is not None:
            actor_id = _json_string(head.group(2))
    end = _EVENT_TIME_NANO.search(line.tail)
    return Event(
        type=fields.get("Type", ""),
        action=fields.get("Action") or fields.get("status", ""),
        actor_id=actor_id or fields.get("id", ""),
        time_nano=int(end.group(1)) if end is not None else 0,
        oversized=line.size,
    )


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
