"""HAProxy's master CLI and runtime API (lbsync/apply/haproxy.py), against a real local haproxy in
master-worker mode (`-W -db -S master.sock`, plus a `stats socket` from the builtin template)
and against small fake sockets for the faults haproxy won't produce on demand.

Proves: master_reload confirms a new worker and the reload counter; a config made invalid is
reported as a failed reload while the old worker keeps serving; runtime commands move slots
to live backends and to maintenance with the worker pid unchanged.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import re
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from lbsync.apply.haproxy.master import (
    ShowProc,
    master_command,
    master_reload,
    parse_show_proc,
    show_proc,
)
from lbsync.apply.haproxy.runtime import apply_runtime, runtime_command, runtime_query
from lbsync.apply.haproxy.socket import HAProxyCommandError, HAProxySocketError
from lbsync.model.slots import RuntimeSlots, Slot, SlotTable, SlotView, runtime_commands
from lbsync.model.types import RoutingModel, Server
from lbsync.render.templates import CompiledTemplate, load_template
from tests.support.haproxy import (
    haproxy_check,
    http_backends,
    render_cfg,
    run_haproxy,
    runtime_target,
    served_by,
)
from tests.support.lab import free_port
from tests.support.model_builders import host, model, srv, ups

# Captured from Debian 12's HAProxy 2.6.12 (haproxy -W -db -S ...); the header line ends
# in spaces.
HEADER = (
    "#<PID>          <type>          <reloads>       <uptime>        <version>" + " " * 6 + "\n"
)
SHOW_PROC_FRESH = (
    HEADER
    + """\
23094           master          0 [failed: 0]   0d00h00m01s     2.6.12-1+deb12u4
# workers
23108           worker          0               0d00h00m01s     2.6.12-1+deb12u4
# programs

"""
)
SHOW_PROC_AFTER_FAILED_RELOAD = (
    HEADER
    + """\
23094           master          2 [failed: 1]   0d00h00m04s     2.6.12-1+deb12u4
# workers
23322           worker          1               0d00h00m01s     2.6.12-1+deb12u4
# programs

"""
)
SHOW_PROC_OLD_WORKERS = (
    HEADER
    + """\
25737           master          2 [failed: 0]   0d00h00m12s     2.6.12-1+deb12u4
# workers
26736           worker          0               0d00h00m01s     2.6.12-1+deb12u4
# old workers
25796           worker          2               0d00h00m12s     2.6.12-1+deb12u4
# programs

"""
)


# --- show proc --------------------------------------------------------------------------------


def test_parse_show_proc_fresh() -> None:
    proc = parse_show_proc(SHOW_PROC_FRESH)
    assert (proc.master_pid, proc.reloads, proc.failed_reloads) == (23094, 0, 0)
    assert proc.worker_pids == (23108,)
    assert proc.old_workers == () and proc.programs == ()
    assert proc.master.version == "2.6.12-1+deb12u4"
    assert proc.master.uptime_seconds == 1


def test_parse_show_proc_after_a_failed_reload() -> None:
    proc = parse_show_proc(SHOW_PROC_AFTER_FAILED_RELOAD)
    assert (proc.reloads, proc.failed_reloads) == (2, 1)
    worker = proc.workers[0]
    assert (worker.pid, worker.kind, worker.reloads, worker.uptime_seconds) == (
        23322,
        "worker",
        1,
        1,
    )


def test_parse_show_proc_with_old_workers() -> None:
    proc = parse_show_proc(SHOW_PROC_OLD_WORKERS)
    assert proc.worker_pids == (26736,)
    assert [(w.pid, w.reloads) for w in proc.old_workers] == [(25796, 2)]
    assert proc.all_worker_pids == {26736, 25796}
    assert proc.old_workers[0].uptime_seconds == 12


@pytest.mark.parametrize(
    "text",
    ["", "Unknown command.\n", "#<PID> <type>\n# workers\n", "1 master 0\n# workers\nbogus\n"],
)
def test_parse_show_proc_refuses_other_text(text: str) -> None:
    with pytest.raises(ValueError, match="show proc"):
        parse_show_proc(text)


# --- fake sockets -----------------------------------------------------------------------------

Handler = Callable[[str], Awaitable[str | None]]  # command -> answer (None: never answer)


@dataclass
class FakeSocket:
    path: Path
    commands: list[str]
    release: asyncio.Event  # set at the end: lets silent handlers finish


@contextlib.asynccontextmanager
async def fake_socket(path: Path, handler: Handler) -> AsyncIterator[FakeSocket]:
    """A unix socket that, like haproxy's CLI, reads one command to EOF and answers it."""
    fake = FakeSocket(path, [], asyncio.Event())
    handlers: set[asyncio.Task[None]] = set()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        handlers.add(task)
        try:
            data = await reader.read()  # to EOF: only a client's half-close gets an answer
            command = data.decode().rstrip("\n")
            fake.commands.append(command)
            answer = await handler(command)
            if answer is None:
                await fake.release.wait()
            else:
                writer.write(answer.encode())
                await writer.drain()
        finally:
            writer.close()

    server = await asyncio.start_unix_server(serve, path=str(path))
    try:
        yield fake
    finally:
        fake.release.set()
        server.close()
        await server.wait_closed()
        await asyncio.gather(*handlers, return_exceptions=True)


async def test_command_is_sent_with_newline_and_half_close(sock_dir: Path) -> None:
    async def echo(command: str) -> str:
        return f"got {command}\n\n"

    async with fake_socket(sock_dir / "m.sock", echo) as fake:
        assert await master_command(fake.path, "show proc", timeout=2) == "got show proc\n\n"
        assert await runtime_query(fake.path, "show info", timeout=2) == "got show info\n\n"
    assert fake.commands == ["show proc", "show info"]


async def test_silent_socket_times_out(sock_dir: Path) -> None:
    async def silent(command: str) -> None:
        return None

    async with fake_socket(sock_dir / "m.sock", silent) as fake:
        with pytest.raises(HAProxySocketError, match=r"no answer within 0\.2 s") as info:
            await master_command(fake.path, "show proc", timeout=0.2)
    assert info.value.path == str(fake.path) and info.value.command == "show proc"
    assert str(fake.path) in str(info.value) and "'show proc'" in str(info.value)


async def test_missing_and_refusing_sockets(sock_dir: Path) -> None:
    missing = sock_dir / "missing.sock"
    with pytest.raises(HAProxySocketError, match="no such socket") as info:
        await master_command(missing, "show proc")
    assert str(missing) in str(info.value)
    stale = sock_dir / "stale.sock"
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(stale))  # bound, never listening: what a dead haproxy leaves behind
        with pytest.raises(HAProxySocketError, match="connection refused"):
            await runtime_command(stale, "set weight app/s1 1")
    with pytest.raises(HAProxySocketError, match="no such socket"):
        await master_reload(missing, timeout=1)


@pytest.mark.parametrize(
    "command", ["", "set weight a/s1 1; shutdown sessions", "show info\nshow proc", "a\\;b"]
)
async def test_unsafe_commands_are_not_sent(sock_dir: Path, command: str) -> None:
    with pytest.raises(HAProxySocketError, match="refused to send"):
        await runtime_command(sock_dir / "never.sock", command)
    with pytest.raises(HAProxySocketError, match="refused to send"):
        await apply_runtime(sock_dir / "never.sock", ["set weight a/s1 1", command])


async def test_port_out_of_range_is_not_sent(sock_dir: Path) -> None:
    # HAProxy 2.6 wraps a port above 65535 silently (70000 -> 4464).
    with pytest.raises(HAProxySocketError, match="bad port '70000'"):
        await runtime_command(sock_dir / "never.sock", "set server a/s1 addr 10.0.0.1 port 70000")


async def test_batch_answers_must_match_the_commands(sock_dir: Path) -> None:
    async def short(command: str) -> str:
        return "\n"  # one answer for two commands

    async with fake_socket(sock_dir / "a.sock", short) as fake:
        with pytest.raises(HAProxyCommandError, match="1 answers for 2 commands"):
            await apply_runtime(fake.path, ["set weight a/s1 1", "set weight a/s2 1"])
    assert fake.commands == ["set weight a/s1 1; set weight a/s2 1"]


async def test_reload_reported_by_newer_haproxy(sock_dir: Path) -> None:
    """HAProxy 2.7+ answers `reload` itself (Success=0 and the startup log)."""

    async def master(command: str) -> str:
        if command == "show proc":
            return SHOW_PROC_FRESH
        return "Success=0\n--\n[ALERT] config : parsing [h.cfg:13] : unknown keyword 'x'\n"

    async with fake_socket(sock_dir / "m.sock", master):
        outcome = await master_reload(sock_dir / "m.sock", timeout=2)
    assert not outcome.ok
    assert "unknown keyword 'x'" in outcome.message


async def test_reload_without_a_new_worker_times_out(sock_dir: Path) -> None:
    async def master(command: str) -> str:
        return SHOW_PROC_FRESH if command == "show proc" else ""

    async with fake_socket(sock_dir / "m.sock", master) as fake:
        outcome = await master_reload(fake.path, timeout=0.3, poll_interval=0.02)
    assert not outcome.ok
    assert outcome.message.startswith("no new worker within 0.3 s")
    assert "worker 23108" in outcome.message
    assert 0.3 <= outcome.seconds < 2
    assert fake.commands[:2] == ["show proc", "reload"] and len(fake.commands) > 3


# --- a live haproxy ---------------------------------------------------------------------------


@dataclass
class Live:
    """A running haproxy from the builtin template in `reload: haproxy-runtime` shape."""

    port: int
    master: Path
    admin: Path
    config: Path
    template: CompiledTemplate
    slots: RuntimeSlots

    @property
    def table(self) -> SlotTable:
        return self.slots.table

    @property
    def view(self) -> SlotView:
        return self.slots.view

    def write(self, routing: RoutingModel) -> tuple[list[str], bool]:
        """One daemon-like pass: derive the slots, render, write; returns the runtime
        commands and whether the structure is unchanged (commands suffice, no reload)."""
        slots = RuntimeSlots.derive(self.slots, routing, 2)
        same = slots.structure == self.slots.structure
        commands = runtime_commands(self.view, slots.view) if same else []
        tgt = runtime_target(listen=f"127.0.0.1:{self.port}", runtime_socket=self.admin, slots=2)
        self.config.write_text(
            render_cfg(self.template, routing, tgt, slots.view), encoding="utf-8"
        )
        self.slots = slots
        return commands, same

    async def pass_(self, routing: RoutingModel) -> list[str]:
        commands, same = self.write(routing)
        assert same, "a structural change: this pass would need a reload"
        await apply_runtime(self.admin, commands)
        return commands


def app_model(*servers: Server) -> RoutingModel:
    return model(host("app.test", ("/", ups("app", *servers))), host("other.test", ("/", ups("z"))))


@contextlib.contextmanager
def live_haproxy(sock_dir: Path, routing: RoutingModel) -> Iterator[Live]:
    port = free_port()
    tgt = runtime_target(
        listen=f"127.0.0.1:{port}", runtime_socket=sock_dir / "admin.sock", slots=2
    )
    template = load_template(tgt)
    slots = RuntimeSlots.derive(None, routing, 2)
    live = Live(
        port,
        sock_dir / "master.sock",
        sock_dir / "admin.sock",
        sock_dir / "haproxy.cfg",
        template,
        slots,
    )
    live.config.write_text(render_cfg(template, routing, tgt, slots.view), encoding="utf-8")
    haproxy_check(live.config)
    with run_haproxy(live.config, live.master, port, ready=live.admin):
        yield live


async def hits(port: int, host_header: str, n: int = 6) -> collections.Counter[str | int]:
    """Who answered `n` requests (backend names, or haproxy's own status codes)."""
    counter: collections.Counter[str | int] = collections.Counter()
    for _ in range(n):
        counter[await asyncio.to_thread(served_by, port, host_header)] += 1
    return counter


def _server(name: str, port: int, weight: int = 1) -> Server:
    return srv("127.0.0.1", port, weight=weight, name=name)


async def test_master_reload_confirms_a_new_worker(sock_dir: Path) -> None:
    with (
        http_backends("a") as apps,
        live_haproxy(sock_dir, app_model(_server("a", apps["a"].port))) as live,
    ):
        before = await show_proc(live.master)
        assert len(before.workers) == 1 and before.failed_reloads == 0
        assert await hits(live.port, "app.test", 2) == {"a": 2}

        outcome = await master_reload(live.master, timeout=10)

        assert outcome.ok, outcome.message
        assert outcome.before == before
        assert outcome.after is not None
        assert outcome.after.master_pid == before.master_pid
        assert outcome.after.reloads == before.reloads + 1
        assert outcome.after.failed_reloads == 0
        assert len(outcome.new_workers) == 1
        assert outcome.new_workers[0] not in before.worker_pids
        assert f"new worker {outcome.new_workers[0]}" in outcome.message
        assert outcome.seconds < 10
        assert await hits(live.port, "app.test", 2) == {"a": 2}
        # The worker the runtime API now talks to is the new one.
        info = await runtime_query(live.admin, "show info")
        assert re.search(rf"^Pid: {outcome.new_workers[0]}$", info, re.MULTILINE)


async def test_invalid_config_is_a_failed_reload(sock_dir: Path) -> None:
    with (
        http_backends("a") as apps,
        live_haproxy(sock_dir, app_model(_server("a", apps["a"].port))) as live,
    ):
        good = live.config.read_text()
        before = await show_proc(live.master)
        live.config.write_text(good + "\nfrontend broken\n    no-such-keyword here\n")

        outcome = await master_reload(live.master, timeout=10)

        assert not outcome.ok
        assert "refused the new configuration" in outcome.message
        assert outcome.after is not None
        assert outcome.after.reloads == before.reloads + 1
        assert outcome.after.failed_reloads == before.failed_reloads + 1
        assert outcome.after.worker_pids == before.worker_pids  # the old worker keeps serving
        assert outcome.new_workers == ()
        assert await hits(live.port, "app.test", 2) == {"a": 2}

        # Fixed: the next reload succeeds and HAProxy resets its failed counter.
        live.config.write_text(good)
        fixed = await master_reload(live.master, timeout=10)
        assert fixed.ok, fixed.message
        assert fixed.after is not None and fixed.after.failed_reloads == 0
        assert fixed.after.reloads == before.reloads + 2


async def test_runtime_commands_move_slots_without_a_reload(sock_dir: Path) -> None:
    with http_backends("a", "b", "c", "d") as apps, live_haproxy(sock_dir, app_model()) as live:
        port = {name: app.port for name, app in apps.items()}
        first = await show_proc(live.master)
        assert await hits(live.port, "app.test", 2) == {503: 2}  # every slot a placeholder

        # a arrives: slot 1
        commands = await live.pass_(app_model(_server("a", port["a"])))
        assert commands == [
            f"set server app/s1 addr 127.0.0.1 port {port['a']}",
            "set weight app/s1 1",
            "set server app/s1 state ready",
        ]
        assert await hits(live.port, "app.test") == {"a": 6}

        # b arrives: slot 2, round robin over both
        await live.pass_(app_model(_server("a", port["a"]), _server("b", port["b"])))
        assert await hits(live.port, "app.test") == {"a": 3, "b": 3}

        # a leaves: maintenance, requests stop reaching it
        commands = await live.pass_(app_model(_server("b", port["b"])))
        assert commands == [
            "set server app/s1 state maint",
            "set server app/s1 addr 127.0.0.1 port 1",
        ]
        assert await hits(live.port, "app.test") == {"b": 6}
        state = await runtime_query(live.admin, "show servers state app")
        s1 = next(ln.split() for ln in state.splitlines() if re.match(r"\d+ app 1 s1 ", ln))
        assert int(s1[6]) & 1  # srv_admin_state: forced maintenance

        # c arrives and takes the freed slot 1, with weight 2
        await live.pass_(app_model(_server("b", port["b"]), _server("c", port["c"], weight=2)))
        seen = await hits(live.port, "app.test", 9)
        assert set(seen) == {"b", "c"} and seen["c"] > seen["b"]

        # b leaves and d arrives in the same pass: slot 2 changes hands while live
        b_hits = apps["b"].hits
        commands = await live.pass_(
            app_model(_server("c", port["c"], weight=2), _server("d", port["d"]))
        )
        assert commands[0] == f"set server app/s2 addr 127.0.0.1 port {port['d']}"
        seen = await hits(live.port, "app.test", 9)
        assert set(seen) == {"c", "d"}
        assert apps["b"].hits == b_hits  # nothing reached b after it left
        assert apps["a"].hits == 6 + 3

        # everyone leaves: 503 again
        await live.pass_(app_model())
        assert await hits(live.port, "app.test", 2) == {503: 2}
        assert await hits(live.port, "other.test", 1) == {503: 1}

        # No reload happened: same worker, same reload counter.
        last = await show_proc(live.master)
        assert last.worker_pids == first.worker_pids
        assert last.reloads == first.reloads

        # The file written on the way matches the running state: reloading it changes nothing.
        live.write(app_model(_server("c", port["c"])))
        haproxy_check(live.config)
        outcome = await master_reload(live.master)
        assert outcome.ok, outcome.message
        assert await hits(live.port, "app.test", 2) == {"c": 2}


async def test_a_full_backend_needs_a_reload(sock_dir: Path) -> None:
    with http_backends("a", "b", "c") as apps, live_haproxy(sock_dir, app_model()) as live:
        servers = [_server(name, app.port) for name, app in sorted(apps.items())]
        _, same = live.write(app_model(*servers))  # 3 servers, 2 slots: grows to 4
        assert not same
        assert live.table["app"].capacity == 4
        outcome = await master_reload(live.master)
        assert outcome.ok, outcome.message
        assert await hits(live.port, "app.test") == {"a": 2, "b": 2, "c": 2}


async def test_runtime_errors_are_typed(sock_dir: Path) -> None:
    with live_haproxy(sock_dir, app_model()) as live:
        assert await runtime_command(live.admin, "set weight app/s1 3") == ""
        answer = await runtime_command(live.admin, "set server app/s1 addr 127.0.0.2 port 8080")
        assert "IP changed from '127.0.0.1' to '127.0.0.2'" in answer
        with pytest.raises(HAProxyCommandError, match=r"No such server\.") as info:
            await runtime_command(live.admin, "set server app/s9 state ready")
        assert info.value.command == "set server app/s9 state ready"
        assert info.value.path == str(live.admin)
        with pytest.raises(HAProxyCommandError, match="between 0 and 256"):
            await runtime_command(live.admin, "set weight app/s1 300")
        with pytest.raises(HAProxyCommandError, match="Unknown command"):
            await runtime_command(live.admin, "frobnicate app/s1")

        # A batch runs every command; the error lists each refused one.
        with pytest.raises(HAProxyCommandError) as batch:
            await apply_runtime(
                live.admin,
                ["set weight app/s1 5", "set weight nope/s1 1", "set weight app/s2 7"],
            )
        assert batch.value.failures == (("set weight nope/s1 1", "No such backend."),)
        assert (await runtime_query(live.admin, "get weight app/s1")).startswith("5 ")
        assert (await runtime_query(live.admin, "get weight app/s2")).startswith("7 ")


async def test_apply_runtime_batched_and_one_by_one(sock_dir: Path) -> None:
    """Both ways end in the same state; a batch needs one connection (timings in -s output)."""
    with live_haproxy(sock_dir, app_model()) as live:
        empty = {"app": live.view["app"]}
        timings = {}
        for batch in (False, True):
            weight = 3 if batch else 2
            view = {
                "app": tuple(
                    Slot(slot.index, _server(f"x{slot.index}", 9000 + slot.index, weight))
                    for slot in live.view["app"]
                )
            }
            commands = runtime_commands(empty, view)
            assert len(commands) == 6
            report = await apply_runtime(live.admin, commands, batch=batch)
            assert report.commands == 6
            assert report.connections == (1 if batch else 6)
            timings[batch] = report.seconds
            state = await runtime_query(live.admin, "show servers state app")
            rows = [ln.split() for ln in state.splitlines() if re.match(r"\d+ app \d+ s\d ", ln)]
            assert [(r[3], r[5], r[7], r[18]) for r in rows] == [
                ("s1", "2", str(weight), "9001"),
                ("s2", "2", str(weight), "9002"),
            ]
        print(f"apply_runtime 6 commands: one by one {timings[False] * 1000:.2f} ms, "
              f"batched {timings[True] * 1000:.2f} ms")  # fmt: skip


async def test_show_proc_on_a_live_master(sock_dir: Path) -> None:
    with live_haproxy(sock_dir, app_model()) as live:
        proc: ShowProc = await show_proc(live.master)
        assert proc.master.kind == "master" and proc.master.version.startswith("2.")
        assert all(w.kind == "worker" for w in proc.workers)
        text = await master_command(live.master, "show proc")
        assert text.startswith("#<PID>")
        # Worker commands go through the master with @1.
        info = await master_command(live.master, "@1 show info")
        assert f"Pid: {proc.worker_pids[0]}" in info
