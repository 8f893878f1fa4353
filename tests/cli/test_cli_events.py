"""`lbsync events` as a user runs it: a subprocess, its stdout, stderr and exit code."""

from __future__ import annotations

import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

import pytest

from lbsync.cli.commands import format_event
from lbsync.config.schema import DiscoveryConfig
from lbsync.engine.events import Event
from tests.support.lab import Lab, free_port, try_http_get, wait_for

REPO_ROOT = Path(__file__).resolve().parents[2]
#: How long one expected line may take (the command starts a Python process first).
LINE_DEADLINE = 15.0


def cli_env(**overrides: str) -> dict[str, str]:
    """The user's environment without LBSYNC_CONFIG / DOCKER_HOST, lbsync importable."""
    env = dict(os.environ)
    env.pop("LBSYNC_CONFIG", None)
    env.pop("DOCKER_HOST", None)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    env.update(overrides)
    return env


def lbsync_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "lbsync.cli", *args]


def run_lbsync(cwd: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        lbsync_command(*args),
        cwd=cwd,
        env=cli_env(**env),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


class LineReader:
    """Lines of a pipe, read by a thread, waited for with a deadline."""

    def __init__(self, pipe: IO[str]) -> None:
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._thread = threading.Thread(target=self._pump, args=(pipe,), daemon=True)
        self._thread.start()

    def _pump(self, pipe: IO[str]) -> None:
        for line in pipe:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def wait_line(self, predicate: Callable[[str], bool], timeout: float = LINE_DEADLINE) -> str:
        """The next line for which ``predicate`` is true (earlier ones are kept in ``lines``)."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no matching line within {timeout:g}s; got {self.lines}")
            try:
                line = self._queue.get(timeout=min(remaining, 0.25))
            except queue.Empty:
                continue
            if line is None:
                raise AssertionError(f"stdout closed before a matching line; got {self.lines}")
            self.lines.append(line)
            if predicate(line):
                return line


@pytest.fixture
def events_process(tmp_path: Path) -> Iterator[subprocess.Popen[str]]:
    """`lbsync events` running in an empty directory; terminated (by its Popen) at the end."""
    proc = subprocess.Popen(
        lbsync_command("events"),
        cwd=tmp_path,
        env=cli_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        bufsize=1,
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        for pipe in (proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()


def fields(line: str) -> list[str]:
    """`TIME ACTION NAME SHORT_ID [labels...] | details` -> the words before ` | `."""
    return line.split(" | ", 1)[0].split()


def wait_until_following(lab: Lab, reader: LineReader) -> None:
    """Make sure the command is subscribed before the container under test starts.

    A probe backend (no lbsync labels) is sent SIGHUP, which it ignores, until the command
    prints that `kill` event: from then on no event can be missed.
    """
    port = free_port()
    probe = lab.run_backend(port)
    wait_for(lambda: try_http_get(f"http://127.0.0.1:{port}/"), 10, 0.05, "probe backend")
    short = probe[:12]
    deadline = time.monotonic() + LINE_DEADLINE
    while True:
        lab.kill(probe, "HUP")
        try:
            reader.wait_line(lambda line: fields(line)[1:2] == ["kill"] and short in line, 0.3)
            return
        except TimeoutError:
            if time.monotonic() > deadline:
                raise


@pytest.mark.engine
def test_events_shows_a_labelled_container(lab: Lab, events_process: subprocess.Popen[str]) -> None:
    assert events_process.stdout is not None
    reader = LineReader(events_process.stdout)
    wait_until_following(lab, reader)

    port = free_port()
    labels = {"lbsync.enable": "true", "lbsync.host": "a.test", "lbsync.port": str(port)}
    cid = lab.run_backend(port, labels=labels)
    name = lab.name(cid)
    short = cid[:12]

    start = reader.wait_line(lambda line: fields(line)[1:2] == ["start"] and short in line)
    words = fields(start)
    assert words[1:4] == ["start", name, short]
    assert "lbsync.host=a.test" in words
    assert "lbsync.enable=true" in words
    assert f"lbsync.port={port}" in words
    assert cid not in start  # the short id only
    # What lbsync parses from the container: running, and the service on its port.
    details = start.split(" | ", 1)[1]
    assert "state=running" in details
    assert f"a.test/ -> :{port}" in details

    lab.stop(cid)
    die = reader.wait_line(lambda line: fields(line)[1:2] == ["die"] and short in line)
    assert fields(die)[1:4] == ["die", name, short]

    assert events_process.poll() is None, "lbsync events exited while following"
    events_process.terminate()
    events_process.wait(timeout=10)
    assert events_process.stderr is not None
    assert "Traceback" not in events_process.stderr.read()


def test_events_engine_unreachable(tmp_path: Path) -> None:
    result = run_lbsync(tmp_path, "events", DOCKER_HOST="unix:///nonexistent.sock")
    assert result.returncode == 1, result.stderr
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("lbsync: cannot reach the Docker engine")
    assert "/nonexistent.sock" in lines[0]


@pytest.mark.parametrize(
    ("yaml_text", "key_path"),
    [
        pytest.param("docker:\n  hots: unix:///var/run/docker.sock\n", "docker.hots", id="nested"),
        pytest.param("dockr:\n  host: null\n", "dockr", id="top-level"),
    ],
)
def test_events_bad_config_exits_2(tmp_path: Path, yaml_text: str, key_path: str) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text(yaml_text)
    result = run_lbsync(tmp_path, "events", "-c", str(config))
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    assert f"{key_path}: unknown key" in result.stderr
    assert str(config) in result.stderr


# --------------------------------------------------------------------------- one event, one line

#: Characters that end a line or drive a terminal, each in a label value.
FORGING = {
    "newline": "a.test\n2026-01-01T00:00:00.000Z start forged 000000000000 lbsync.host=bank.test",
    "cr": "a.test\rforged",
    "crlf": "a.test\r\nforged",
    "ansi": "\x1b[2K\x1b[1Ggreen\x1b[32m",
    "csi-c1": "a\x9b31mred",
    "u2028": "a.test\u2028forged",
    "u2029": "a.test\u2029forged",
    "nel": "a.test\x85forged",
    "vt-ff-fs": "a\x0bb\x0cc\x1cd\x1de\x1ef",
    "nul-del-bel-bs": "a\x00b\x7fc\x07d\x08e",
    "tab": "a\tb",
    "bidi": "a\u202egnp.exe",
}


def event_with(labels: dict[str, str], name: str = "web-1") -> Event:
    attributes = {"name": name, "image": "backend", **labels}
    return Event("container", "start", "0123456789ab" * 5, attributes, 1_767_225_600 * 10**9)


def assert_one_clean_line(line: str) -> None:
    assert line.splitlines() == [line], repr(line)
    unprintable = [c for c in line if not c.isprintable()]
    assert unprintable == [], repr(line)


@pytest.mark.parametrize("value", FORGING.values(), ids=FORGING.keys())
def test_a_label_value_cannot_forge_an_events_line(value: str) -> None:
    line = format_event(event_with({"lbsync.host": value}), DiscoveryConfig(), "state=running")
    assert_one_clean_line(line)
    assert line.startswith("2026-01-01T00:00:00.000Z start web-1 0123456789ab lbsync.host=")
    assert line.endswith(" | state=running")
    shown = line.split("lbsync.host=", 1)[1].rsplit(" | ", 1)[0]
    assert shown == repr(value), shown  # quoted, each control character written as an escape


def test_a_label_key_and_a_name_cannot_forge_an_events_line() -> None:
    labels = {"lbsync.host\nforged": "a.test", "lbsync.\x1b[31mweb.host": "b.test"}
    line = format_event(event_with(labels, name="web\r\nforged"), DiscoveryConfig())
    assert_one_clean_line(line)
    assert "'web\\r\\nforged'" in line
    assert "'lbsync.host\\nforged'=a.test" in line
    assert "'lbsync.\\x1b[31mweb.host'=b.test" in line


def test_plain_labels_read_as_they_are_and_long_ones_are_cut() -> None:
    labels = {
        "lbsync.enable": "true",
        "lbsync.host": "a.test,b.test",
        "lbsync.path": "/" + "x" * 99,
    }
    line = format_event(event_with(labels), DiscoveryConfig())
    assert_one_clean_line(line)
    words = line.split(" ")
    assert "lbsync.enable=true" in words and "lbsync.host=a.test,b.test" in words
    assert "image=backend" not in line  # only lbsync's labels
    path = next(w for w in words if w.startswith("lbsync.path="))
    assert path.endswith("'...") and len(path) < 120
