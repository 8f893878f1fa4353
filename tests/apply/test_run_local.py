"""lbsync.apply.proxy.run_local: the local `check_command`/`reload_command` runner."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from lbsync.apply.proxy import run_local


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead too: only its parent's wait() removes it, maybe while we read.
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
            return stat.read().rpartition(")")[2].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


async def pid_from(path: Path) -> int:
    async with asyncio.timeout(5):
        while not path.exists() or not path.read_text().strip():
            await asyncio.sleep(0.01)
    return int(path.read_text())


async def test_exit_code_and_both_streams() -> None:
    code, output = await run_local(["sh", "-c", "echo out; echo err >&2; exit 3"], 10)
    assert (code, output) == (3, "out\nerr")


async def test_a_missing_binary_is_127_with_its_name() -> None:
    code, output = await run_local(["/nonexistent/lbsync-reload"], 10)
    assert code == 127
    assert "'/nonexistent/lbsync-reload'" in output


async def test_stdin_is_not_the_daemons() -> None:
    code, output = await run_local(["sh", "-c", "cat; echo done"], 10)
    assert (code, output) == (0, "done")  # /dev/null: `cat` ends at once


async def test_a_command_past_its_timeout_is_killed(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    code, output = await run_local(["sh", "-c", f"echo $$ > {pid_file}; exec sleep 30"], 0.3)
    assert code == 124
    assert "did not finish within 0.3 s" in output
    assert not alive(int(pid_file.read_text()))


async def test_cancelling_kills_the_command(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    task = asyncio.create_task(run_local(["sh", "-c", f"echo $$ > {pid_file}; exec sleep 30"], 60))
    pid = await pid_from(pid_file)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    async with asyncio.timeout(5):
        while alive(pid):
            await asyncio.sleep(0.01)
