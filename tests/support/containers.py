"""A container as the registry holds it, with the fields a test changes."""

from __future__ import annotations

import dataclasses
from types import MappingProxyType

from lbsync.engine.container import Container


def make(cid: str = "a" * 64, **changes: object) -> Container:
    base = Container(
        id=cid,
        name="web",
        created_ns=1,
        labels=MappingProxyType(
            {"lbsync.enable": "true", "lbsync.host": "a.test", "lbsync.port": "80"}
        ),
        started_at="2026-01-01T00:00:00Z",
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]
