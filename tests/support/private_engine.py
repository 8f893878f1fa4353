"""A dockerd (or podman service) of a test's own: start it beside the lab's, clean up after it.

Tests that restart their engine, or turn it into a swarm, use one so the lab's dockerd and
every other test's containers are never touched.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

DAEMON_JSON = {"bridge": "none", "iptables": False, "ip-masq": False, "ip6tables": False}


def start_dockerd(root: Path, host: str) -> subprocess.Popen[bytes]:
    """dockerd with its own socket, config, data root, exec root (and so its own containerd)."""
    config = root / "daemon.json"
    config.write_text(json.dumps(DAEMON_JSON))
    with (root / "dockerd.log").open("ab") as log:
        return subprocess.Popen(
            [
                "dockerd",
                "--host",
                host,
                "--config-file",
                str(config),
                "--data-root",
                str(root / "data"),
                "--exec-root",
                str(root / "exec"),
                "--pidfile",
                str(root / "dockerd.pid"),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def unmount_below(root: Path) -> None:
    """Unmount what an engine left under `root` (netns, overlays), deepest first."""
    mounts = [line.split()[1] for line in Path("/proc/self/mounts").read_text().splitlines()]
    for point in sorted((m for m in mounts if m.startswith(f"{root}/")), reverse=True):
        subprocess.run(["umount", point], capture_output=True, check=False)
