"""The Docker API client against a FAKE engine: faults and versions a real engine won't show."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import struct
from pathlib import Path

import pytest
from aiohttp import web

from lbsync.engine.client import MAX_API_VERSION, DockerClient, format_version
from lbsync.engine.endpoint import resolve_endpoint
from lbsync.engine.errors import (
    ApiVersionTooOld,
    Conflict,
    DockerError,
    EngineUnreachable,
    NotFound,
    PermissionDenied,
    ServerError,
    StreamError,
)
from lbsync.engine.events import Event, LineSplitter, OversizedLine, oversized_event
from lbsync.engine.exec import ExecResult, FrameReader, demultiplex
from tests.support.fake_engine import FakeEngine, event_line

# --- version negotiation ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("engine_version", "expected"),
    [
        pytest.param("1.41", "1.41", id="docker-20.10-speaks-1.41"),
        pytest.param("1.43", "1.43", id="docker-24"),
        pytest.param("1.52", format_version(MAX_API_VERSION), id="docker-29-capped-at-ours"),
        pytest.param("1.40", "1.40", id="oldest-accepted"),
    ],
)
async def test_negotiates_newest_common_version(
    fake_engine: FakeEngine, fake_client: DockerClient, engine_version: str, expected: str
) -> None:
    fake_engine.api_version = engine_version
    fake_engine.json_route("GET", "/version", {"ApiVersion": engine_version})
    async with fake_client:
        assert format_version(fake_client.api_version) == expected
        await fake_client.version()
    assert fake_engine.requests[-1] == f"GET /v{expected}/version"


async def test_newer_engine_refusing_old_versions_still_works(
    fake_engine: FakeEngine, fake_client: DockerClient
) -> None:
    # Docker 29 answers 400 to anything below 1.44: our negotiated version must be above it.
    fake_engine.api_version = "1.52"
    fake_engine.min_api_version = "1.44"
    fake_engine.json_route("GET", "/containers/json", [])
    async with fake_client:
        assert await fake_client.list_containers() == []


# --- listing ids only --------------------------------------------------------------------

LISTING = [
    {
        "Id": "a" * 64,
        "Names": ["/web-1"],
        # Nested objects with an `Id` of their own (a hostile label among them) must not count.
        "Labels": {"Id": "not-a-container", "lbsync.host": "a.test"},
        "NetworkSettings": {"Networks": {"bridge": {"NetworkID": "n" * 64, "Id": "x"}}},
        "Mounts": [{"Type": "volume", "Name": "data"}],
    },
    {"Id": "b" * 64, "Names": ["/db-1"], "Labels": {}},
    {"Names": ["/no-id"]},
]


async def test_list_container_ids(fake_engine: FakeEngine, fake_client: DockerClient) -> None:
    seen: list[str] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        seen.append(request.query_string)
        return web.json_response(LISTING)

    fake_engine.route("GET", "/containers/json", handler)
    async with fake_client:
        assert await fake_client.list_container_ids() == ["a" * 64, "b" * 64]
        ids = await fake_client.list_container_ids(all=False, filters={"label": ["k=v"]})
        assert ids == ["a" * 64, "b" * 64]
        # The same ids, in the same order, as the whole listing.
        listed = await fake_client.list_containers()
        assert [item["Id"] for item in listed if item.get("Id")] == ids
    assert seen[0] == "all=1"
    assert "all=0" in seen[1] and "filters=" in seen[1]


@pytest.mark.parametrize("body", [b"{not json", b'{"Id": "a"}', b"", b"\xff\xfe"])
async def test_list_container_ids_refuses_what_is_not_a_listing(
    fake_engine: FakeEngine, fake_client: DockerClient, body: bytes
) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        return web.Response(body=body, content_type="application/json")

    fake_engine.route("GET", "/containers/json", handler)
    async with fake_client:
        with pytest.raises(DockerError, match="containers/json"):
            await fake_client.list_container_ids()


async def test_refuses_engine_older_than_1_40(
    fake_engine: FakeEngine, fake_client: DockerClient
) -> None:
    fake_engine.api_version = "1.39"
    with pytest.raises(ApiVersionTooOld, match=r"1\.39.*needs 1\.40 or newer"):
        await fake_client.connect()
    await fake_client.close()


# --- status codes ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "error"),
    [
        pytest.param(404, NotFound, id="404-not-found"),
        pytest.param(409, Conflict, id="409-conflict"),
        pytest.param(500, ServerError, id="500-server-error"),
        pytest.param(503, ServerError, id="503-server-error"),
    ],
)
async def test_status_becomes_typed_error(
    fake_engine: FakeEngine, fake_client: DockerClient, status: int, error: type[Exception]
) -> None:
    fake_engine.json_route("GET", "/containers/abc/json", {"message": "said the engine"}, status)
    async with fake_client:
        with pytest.raises(error, match="said the engine") as info:
            await fake_client.inspect_container("abc")
    assert str(status) in str(info.value)


async def test_missing_socket_is_engine_unreachable(tmp_path: Path) -> None:
    client = DockerClient(resolve_endpoint(f"unix://{tmp_path}/nothing.sock", {}))
    with pytest.raises(EngineUnreachable, match=r"nothing\.sock.*is dockerd running"):
        await client.connect()
    await client.close()


def _ping_as_nobody(socket_path: str, result: multiprocessing.Queue[str]) -> None:
    os.setgid(65534)
    os.setuid(65534)
    client = DockerClient(resolve_endpoint(f"unix://{socket_path}", {}))

    async def attempt() -> str:
        try:
            await client.connect()
            return "connected"
        except PermissionDenied as exc:
            return f"PermissionDenied: {exc}"
        except DockerError as exc:
            return f"{type(exc).__name__}: {exc}"
        finally:
            await client.close()

    result.put(asyncio.run(attempt()))


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to drop to another user")
async def test_socket_without_permission_is_permission_denied() -> None:
    # A real socket with mode 0600 owned by root, opened by another user: EACCES as in life.
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix="lbsync-perm-"))
    folder.chmod(0o755)
    fake = FakeEngine(folder / "docker.sock")
    await fake.start()
    try:
        (folder / "docker.sock").chmod(0o600)
        context = multiprocessing.get_context("fork")
        queue: multiprocessing.Queue[str] = context.Queue()
        child = context.Process(target=_ping_as_nobody, args=(str(folder / "docker.sock"), queue))
        child.start()
        outcome = await asyncio.get_running_loop().run_in_executor(None, queue.get, True, 20)
        child.join(5)
    finally:
        await fake.stop()
    assert outcome.startswith("PermissionDenied: permission denied on the Docker socket")
    assert "group" in outcome


# --- the events stream -----------------------------------------------------------------


def _stream_route(fake: FakeEngine, chunks: list[bytes], *, end: str) -> None:
    """Serve `chunks` on /events, then end cleanly ('eof'), abort ('abort') or hang ('hang')."""

    async def handler(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        response.content_type = "application/json"
        await response.prepare(request)
        for chunk in chunks:
            await response.write(chunk)
        if end == "abort":
            assert request.transport is not None
            request.transport.close()
        elif end == "hang":
            await asyncio.Event().wait()  # hang until the server shuts down
        else:
            await response.write_eof()
        return response

    fake.route("GET", "/events", handler)


async def _collect(
    client: DockerClient, since: str | None = None, until: str | None = None
) -> list[Event]:
    events = []
    async for event in client.events(since=since, until=until):
        events.append(event)
    return events


async def test_events_parse_lines(fake_engine: FakeEngine, fake_client: DockerClient) -> None:
    _stream_route(
        fake_engine,
        [event_line("start", name="web", **{"lbsync.host": "a.test"}), event_line("die")],
        end="hang",
    )
    async with fake_client:
        stream = fake_client.events()
        first = await anext(stream)
        second = await anext(stream)
        await stream.aclose()
    assert (first.type, first.action, first.attributes["name"]) == ("container", "start", "web")
    assert first.attributes["lbsync.host"] == "a.test"
    assert first.time_nano == 1_700_000_000_000_000_000
    assert second.action == "die"


async def test_events_cut_mid_line_is_an_error(
    fake_engine: FakeEngine, fake_client: DockerClient
) -> None:
    _stream_route(fake_engine, [event_line("start"), b'{"Type": "conta'], end="eof")
    async with fake_client:
        with pytest.raises(StreamError, match="cut mid-line"):
            await _collect(fake_client)


async def test_events_garbage_line_is_an_error(
    fake_engine: FakeEngine, fake_client: DockerClient
) -> None:
    _stream_route(fake_engine, [b"this is not json\n"], end="hang")
    async with fake_client:
        with pytest.raises(StreamError, match="not an event"):
            await _collect(fake_client)


async def test_events_dropped_connection_is_an_error(
    fake_engine: FakeEngine, fake_client: DockerClient
) -> None:
    _stream_route(fake_engine, [event_line("start")], end="abort")
    async with fake_client:
        with pytest.raises(StreamError):
            await _collect(fake_client)


async def test_events_clean_close_without_until_is_an_error(
    fake_engine: FakeEngine, fake_client: DockerClient
) -> None:
    _stream_route(fake_engine, [event_line("start")], end="eof")
    async with fake_client:
        with pytest.raises(StreamError, match="closed the events stream"):
            await _collect(fake_client)


async def test_events_with_until_end_normally(
    fake_engine: FakeEngine, fake_client: DockerClient
) -> None:
    _stream_route(fake_engine, [event_line("start"), event_line("stop")], end="eof")
    async with fake_client:
        events = await _collect(fake_client, since="0", until="1")
    assert [e.action for e in events] == ["start", "stop"]
    assert "until=1" in fake_engine.requests[-1]


async def test_events_500_is_server_error(
    fake_engine: FakeEngine, fake_client: DockerClient
) -> None:
    fake_engine.json_route("GET", "/events", {"message": "boom"}, status=500)
    async with fake_client:
        with pytest.raises(ServerError, match="boom"):
            await _collect(fake_client)


# --- pure helpers ----------------------------------------------------------------------


def _frame(stream: int, payload: bytes) -> bytes:
    return struct.pack(">BxxxL", stream, len(payload)) + payload


def test_demultiplex_splits_stdout_and_stderr() -> None:
    data = _frame(1, b"out1 ") + _frame(2, b"err") + _frame(1, b"out2")
    assert demultiplex(data) == (b"out1 out2", b"err")


def test_demultiplex_rejects_a_truncated_frame() -> None:
    with pytest.raises(DockerError, match="inside a frame"):
        demultiplex(_frame(1, b"ok") + b"\x01\x00\x00")


def _fed(data: bytes, chunk: int, limit: int | None) -> FrameReader:
    reader = FrameReader(limit)
    for start in range(0, len(data), chunk):
        reader.feed(data[start : start + chunk])
    return reader


@pytest.mark.parametrize("chunk", [1, 3, 8, 9, 1000])
def test_frame_reader_takes_frames_split_anywhere(chunk: int) -> None:
    data = _frame(1, b"out1 ") + _frame(2, b"err") + _frame(1, b"") + _frame(1, b"out2")
    reader = _fed(data, chunk, None)
    assert reader.finish() == (b"out1 out2", b"err")
    assert reader.dropped == 0


@pytest.mark.parametrize("chunk", [1, 7, 64, 100_000])
def test_frame_reader_keeps_the_tail_of_each_stream(chunk: int) -> None:
    # A container printing without end: only the last `limit` bytes of each stream stay.
    noise = b"".join(b"warn %05d\n" % i for i in range(2000))  # 22,000 bytes
    data = _frame(1, noise) + _frame(2, noise[:500]) + _frame(1, b"VERDICT\n")
    reader = _fed(data, chunk, 64)
    stdout, stderr = reader.finish()
    assert stdout == (noise + b"VERDICT\n")[-64:]
    assert stderr == noise[:500][-64:]
    assert reader.dropped == len(noise) + 8 - 64 + 500 - 64
    assert len(reader.stdout) <= 64 and len(reader.stderr) <= 64


def test_frame_reader_never_buffers_a_huge_announced_frame() -> None:
    # A header announcing 4 GiB: what arrives is cut as it comes, and the end is an error.
    reader = FrameReader(16)
    reader.feed(struct.pack(">BxxxL", 1, 2**32 - 1))
    for _ in range(100):
        reader.feed(b"x" * 10_000)
    assert len(reader.stdout) == 16
    assert reader.dropped == 1_000_000 - 16
    with pytest.raises(DockerError, match="inside a frame"):
        reader.finish()


def test_exec_result_output_says_what_was_left_out() -> None:
    result = ExecResult(exit_code=1, stdout=b"", stderr=b"test failed\n", dropped=5000)
    assert result.output == "[5000 bytes of earlier output left out]\ntest failed"
    assert ExecResult(exit_code=0, stdout=b" ok \n", stderr=b"").output == "ok"


@pytest.mark.parametrize(
    ("host", "environ", "base_url", "unix_path", "tls"),
    [
        pytest.param(None, {}, "http://docker", "/var/run/docker.sock", False, id="default"),
        pytest.param(
            None,
            {"DOCKER_HOST": "unix:///run/x.sock"},
            "http://docker",
            "/run/x.sock",
            False,
            id="docker-host-env",
        ),
        pytest.param(
            "unix:///a.sock",
            {"DOCKER_HOST": "unix:///b.sock"},
            "http://docker",
            "/a.sock",
            False,
            id="config-beats-env",
        ),
        pytest.param("tcp://127.0.0.1:2375", {}, "http://127.0.0.1:2375", None, False, id="tcp"),
        pytest.param("tcp://127.0.0.1", {}, "http://127.0.0.1:2375", None, False, id="tcp-port"),
        pytest.param(
            "tcp://127.0.0.1:2376",
            {"DOCKER_TLS_VERIFY": "1", "DOCKER_CERT_PATH": "/none"},
            "https://127.0.0.1:2376",
            None,
            True,
            id="tls-verify-env",
        ),
        pytest.param("https://127.0.0.1", {}, "https://127.0.0.1:2376", None, True, id="https"),
    ],
)
def test_resolve_endpoint(
    host: str | None,
    environ: dict[str, str],
    base_url: str,
    unix_path: str | None,
    tls: bool,
) -> None:
    endpoint = resolve_endpoint(host, environ)
    assert endpoint.base_url == base_url
    assert endpoint.unix_path == unix_path
    assert (endpoint.ssl_context is not None) == tls


def test_resolve_endpoint_rejects_unknown_scheme() -> None:
    with pytest.raises(DockerError, match="unsupported scheme 'ssh'"):
        resolve_endpoint("ssh://host", {})


# --- bounded event lines ----------------------------------------------------------------

BOUND = 16  # the table's bound; the reader's is MAX_EVENT_LINE (64 KiB)
HEAD, TAIL = 6, 4


def _over(line: bytes) -> OversizedLine:
    return OversizedLine(size=len(line), head=line[:HEAD], tail=line[-TAIL:])


LONG = b"0123456789abcdefghij"  # 20 bytes: over the bound
AT_BOUND = b"x" * BOUND


@pytest.mark.parametrize(
    ("chunks", "lines", "partial"),
    [
        pytest.param([b"ab\ncd\n"], [b"ab", b"cd"], b"", id="normal-lines-one-chunk"),
        pytest.param([b"a", b"b\nc", b"d\n"], [b"ab", b"cd"], b"", id="normal-lines-split"),
        pytest.param([b"\n\nab\n"], [b"", b"", b"ab"], b"", id="empty-lines"),
        pytest.param([AT_BOUND + b"\n"], [AT_BOUND], b"", id="exactly-at-the-bound"),
        pytest.param(
            [AT_BOUND[:5], AT_BOUND[5:], b"\n"], [AT_BOUND], b"", id="at-the-bound-in-pieces"
        ),
        pytest.param([AT_BOUND + b"y\nok\n"], [_over(AT_BOUND + b"y"), b"ok"], b"", id="one-over"),
        pytest.param(
            [LONG + b"\n" + LONG.upper() + b"\nok\n" + LONG[::-1] + b"\n"],
            [_over(LONG), _over(LONG.upper()), b"ok", _over(LONG[::-1])],
            b"",
            id="several-over",
        ),
        pytest.param(
            [bytes([byte]) for byte in LONG + b"\nok\n"],
            [_over(LONG), b"ok"],
            b"",
            id="over-split-byte-by-byte",
        ),
        pytest.param(
            [b"ok\n" + LONG[:10], LONG[10:15], LONG[15:] + b"\nnext"],
            [b"ok", _over(LONG)],
            b"next",
            id="over-split-across-chunks",
        ),
        pytest.param(
            [b"x" * 1000 + b"\n"],
            [OversizedLine(size=1000, head=b"x" * HEAD, tail=b"x" * TAIL)],
            b"",
            id="far-over-in-one-chunk",
        ),
        pytest.param([b"ab\ncd"], [b"ab"], b"cd", id="unfinished"),
        pytest.param([LONG], [], LONG[:HEAD], id="unfinished-over: only its head is held"),
    ],
)
def test_line_splitter(chunks: list[bytes], lines: list[object], partial: bytes) -> None:
    splitter = LineSplitter(BOUND, head=HEAD, tail=TAIL)
    out: list[object] = []
    for chunk in chunks:
        out += splitter.feed(chunk)
        # Never more held than the bound (or the head of a line being skipped).
        assert len(splitter.partial) <= BOUND
    assert out == lines
    assert splitter.partial == partial


# The start and end of a real line: dockerd 20.10's `start` of a container with a 100 KB label
# (`curl --unix-socket /var/run/docker.sock http://localhost/events`); the attributes, sorted
# by key, hold every label.
CID = "1931f6600bc7d04a47b37c074bd35797f79eea2d05bd405b5195ef62ba812a00"
DOCKERD_HEAD = (
    b'{"status":"start","id":"' + CID.encode() + b'","from":"lbsync-lab/backend:latest",'
    b'"Type":"container","Action":"start","Actor":{"ID":"' + CID.encode() + b'",'
    b'"Attributes":{"aa.small":"1","h17c-probe":"1","image":"lbsync-lab/backend:latest",'
)
DOCKERD_TAIL = b'yyyyy"}},"scope":"local","time":1796684842,"timeNano":1796684842686639507}'


@pytest.mark.parametrize(
    ("head", "tail", "expected"),
    [
        pytest.param(
            DOCKERD_HEAD,
            DOCKERD_TAIL,
            ("container", "start", CID, 1796684842686639507),
            id="dockerd-20.10",
        ),
        pytest.param(
            b'{"Type":"container","Action":"die","Actor":{"ID":"abc","Attributes":{"x":"',
            b'"}},"scope":"local","time":1,"timeNano":1000000001}',
            ("container", "die", "abc", 1000000001),
            id="no-legacy-fields",
        ),
        pytest.param(
            b'{"status":"stop","id":"abc","from":"img","Type":"container","Action":"st',
            b'"}},"scope":"local","time":1}',
            ("container", "stop", "abc", 0),
            id="head-cut-before-the-actor: the legacy id and status",
        ),
        pytest.param(
            b'{"status":"kill","id":"abc","from":"lbsync-lab/backend:lat',
            DOCKERD_TAIL,
            ("", "kill", "abc", 1796684842686639507),
            id="head-cut-in-from: no type",
        ),
        pytest.param(
            b'{"Type":"network","Action":"connect","Actor":{"ID":"net1","Attributes":{"containe',
            b"",
            ("network", "connect", "net1", 0),
            id="network: the actor is the network",
        ),
        pytest.param(
            b'{"status":"a\\",\\"Actor\\":{\\"ID\\":\\"evil","Type":"container",'
            b'"Action":"start","Actor":{"ID":"real",',
            b"",
            ("container", "start", "real", 0),
            id="escaped-quotes-are-not-fields",
        ),
        pytest.param(
            b'{"Actor":{"Attributes":{"fake":"\\"Type\\":\\"container\\""',
            b'"timeNano":5}x"}}}',
            ("", "", "", 0),
            id="attributes-first: nothing read, no time mid-value",
        ),
        pytest.param(b"\x00\xff<html>", b"garbage", ("", "", "", 0), id="garbage"),
    ],
)
def test_oversized_event_reads_the_ends_of_the_line(
    head: bytes, tail: bytes, expected: tuple[str, str, str, int]
) -> None:
    event = oversized_event(OversizedLine(size=700_000, head=head, tail=tail))
    assert (event.type, event.action, event.actor_id, event.time_nano) == expected
    assert event.oversized == 700_000
    assert not event.attributes and not event.raw
