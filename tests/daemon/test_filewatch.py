"""The config-file watch: inotify (lbsync/filewatch.py) and the daemon loop around it.

No engine: the daemon is built offline (its client points at a socket that does not exist)
and only its file watch runs.
"""

from __future__ import annotations

import asyncio
import os
import select
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from lbsync.config.load import load_config
from lbsync.daemon import daemon as daemon_module
from lbsync.daemon.daemon import Daemon
from lbsync.daemon.filewatch import Inotify, open_change_signal
from lbsync.engine.client import DockerClient
from lbsync.engine.endpoint import resolve_endpoint

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="inotify: Linux")

#: Far longer than any wait below: a change seen in time was seen through inotify.
NEVER = 3600.0
SEEN_WITHIN = 3.0


def readable(fd: int, timeout: float) -> bool:
    return bool(select.select([fd], [], [], timeout)[0])


@pytest.fixture
def inotify() -> Iterator[Inotify]:
    watch = Inotify()
    yield watch
    watch.close()


def settled(inotify: Inotify) -> bool:
    """Drain what is pending; True if any event said something moved."""
    return readable(inotify.fd, 0.5) and inotify.drain()


def test_edit_in_place_is_an_event(tmp_path: Path, inotify: Inotify) -> None:
    config = tmp_path / "lbsync.yaml"
    config.write_text("a: 1\n")
    assert inotify.watch([config]) == [config, tmp_path]
    assert not readable(inotify.fd, 0.05)
    with config.open("a") as f:
        f.write("b: 2\n")
    assert settled(inotify)
    assert not readable(inotify.fd, 0.05)  # all of it read


def test_atomic_save_and_rewatch(tmp_path: Path, inotify: Inotify) -> None:
    config = tmp_path / "lbsync.yaml"
    config.write_text("a: 1\n")
    inotify.watch([config])
    temp = tmp_path / "lbsync.yaml.new"
    temp.write_text("a: 2\n")
    os.replace(temp, config)
    assert settled(inotify)
    # Watching again removes the old watches: the kernel says IN_IGNORED for each, and that
    # must not count as a change (the daemon would wake, watch again, and never rest).
    inotify.watch([config])
    assert not settled(inotify)
    with config.open("a") as f:  # the new inode is watched
        f.write("b: 2\n")
    assert settled(inotify)


def test_missing_file_is_watched_through_its_directory(tmp_path: Path, inotify: Inotify) -> None:
    template = tmp_path / "later.j2"
    assert inotify.watch([template]) == [tmp_path]
    template.write_text("{# new #}\n")
    assert settled(inotify)


def test_kubernetes_configmap_swap(tmp_path: Path, inotify: Inotify) -> None:
    """A ConfigMap volume: lbsync.yaml -> ..data/lbsync.yaml, ..data -> a dated folder, and
    an update makes a new folder and renames a new ..data symlink over the old one."""
    first, second = tmp_path / "..2026_11_28_1", tmp_path / "..2026_11_28_2"
    for folder, text in ((first, "a: 1\n"), (second, "a: 2\n")):
        folder.mkdir()
        (folder / "lbsync.yaml").write_text(text)
    (tmp_path / "..data").symlink_to(first.name)
    config = tmp_path / "lbsync.yaml"
    config.symlink_to("..data/lbsync.yaml")
    inotify.watch([config])
    (tmp_path / "..data_tmp").symlink_to(second.name)
    os.replace(tmp_path / "..data_tmp", tmp_path / "..data")
    assert settled(inotify)
    assert config.read_text() == "a: 2\n"


def test_nothing_watched_in_a_directory_that_is_gone(tmp_path: Path, inotify: Inotify) -> None:
    assert inotify.watch([tmp_path / "gone" / "lbsync.yaml"]) == []


# --------------------------------------------------------------------------- the daemon


def offline_daemon(tmp_path: Path, marker: str) -> Daemon:
    config_path = tmp_path / "lbsync.yaml"
    write_config(config_path, marker)
    config = load_config(config_path, {})
    client = DockerClient(resolve_endpoint(f"unix://{tmp_path / 'no-engine.sock'}", {}))
    return Daemon(config, client, config_path=config_path)


def write_config(path: Path, marker: str) -> None:
    temp = path.with_name(path.name + ".new")
    temp.write_text(
        "targets:\n"
        "  - name: edge\n"
        f"    output: {path.parent / 'conf.d' / 'lbsync.conf'}\n"
        "    check: none\n"
        "    reload: none\n"
        f"    vars: {{marker: {marker}}}\n"
    )
    os.replace(temp, path)


def marker_of(daemon: Daemon) -> object:
    return daemon.targets[0].config.vars.get("marker")


async def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"not within {timeout:g}s: {what}")
        await asyncio.sleep(0.02)


async def test_an_edit_is_read_at_once_without_the_poll(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(daemon_module, "FILE_POLL_FALLBACK", NEVER)
    monkeypatch.setattr(daemon_module, "FILE_POLL_INTERVAL", NEVER)
    daemon = offline_daemon(tmp_path, "one")
    calls: list[str] = []
    reload = daemon.reload_config

    def counted(reason: str) -> bool:
        calls.append(reason)
        return reload(reason)

    monkeypatch.setattr(daemon, "reload_config", counted)
    task = asyncio.create_task(daemon._watch_files())
    try:
        await asyncio.sleep(0.1)
        write_config(tmp_path / "lbsync.yaml", "two")
        await wait_until(lambda: marker_of(daemon) == "two", SEEN_WITHIN, "the edit read")
        write_config(tmp_path / "lbsync.yaml", "three")  # the replaced file is watched again
        await wait_until(lambda: marker_of(daemon) == "three", SEEN_WITHIN, "the 2nd edit")
        # One more settle time: a watch renewed after a change must not wake it again.
        await asyncio.sleep(3 * daemon_module.FILE_SETTLE)
        assert calls == ["a watched file changed"] * 2
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await daemon.client.close()


async def test_without_inotify_the_files_are_polled(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(daemon_module, "open_change_signal", lambda: None)
    monkeypatch.setattr(daemon_module, "FILE_POLL_INTERVAL", 0.05)
    monkeypatch.setattr(daemon_module, "FILE_POLL_FALLBACK", NEVER)
    daemon = offline_daemon(tmp_path, "one")
    task = asyncio.create_task(daemon._watch_files())
    try:
        await asyncio.sleep(0.1)
        write_config(tmp_path / "lbsync.yaml", "two")
        await wait_until(lambda: marker_of(daemon) == "two", SEEN_WITHIN, "the edit polled")
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await daemon.client.close()


async def test_inotify_is_on_the_running_loop() -> None:
    changes = open_change_signal()
    assert changes is not None
    changes.close()
    assert changes.inotify.fd == -1
