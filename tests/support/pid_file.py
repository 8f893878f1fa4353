"""A reload of a proxy named by a `pid_file`, as a pass does it; importable on its own by a
process entered into another PID namespace (no Docker call is made)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from lbsync.apply.proxy import reload
from lbsync.config.schema import TargetConfig
from lbsync.config.selectors import ProxyConfig
from lbsync.engine.client import DockerClient
from lbsync.engine.endpoint import resolve_endpoint


def pid_target(pid_file: Path, signal_name: str = "HUP") -> TargetConfig:
    return TargetConfig(
        name="nginx",
        template="builtin:nginx",
        output=pid_file.parent / "lbsync.conf",
        check="none",
        reload="signal",
        signal=signal_name,
        proxy=ProxyConfig(pid_file=pid_file),
    )


def reload_by_pid_file(pid_file: Path, signal_name: str = "HUP") -> None:
    """What a pass does to reload a `pid_file` proxy (no Docker call is made)."""
    client = DockerClient(resolve_endpoint(f"unix://{pid_file.parent / 'no-engine.sock'}", {}))
    asyncio.run(reload(client, pid_target(pid_file, signal_name)))
