"""The daemon's pure path keeps nothing of containers that are gone.

A daemon runs for months on hosts where deploys bring new containers (new ids, names and
hosts) all day. Everything it remembers between passes (the registry and its change log,
the label parser's memo, the model builder, the rendered blocks) must be bounded by what
exists now, not by what it has seen. Each test here churns thousands of containers through
the same steps a pass takes (`PassExecutor.sync`: changes since the last pass, the
proxies, the model, the bytes) and measures the Python memory still allocated
(tracemalloc): after a warm-up, more churn must not add to it. The bounded memories trim
in steps (the memo and the change log drop half when they reach their bound), so each
block of churn is long enough to pass through every step, and blocks are compared by
their highest point (looked at after a full collection: cyclic garbage the collector has
not reached yet comes and goes with its timing).

`bench_rss --soak` measures the same for the real process on the real engine.
"""

from __future__ import annotations

import gc
import hashlib
import itertools
import tracemalloc
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType

import pytest

from lbsync.apply.selection import ProxyTracker
from lbsync.config.schema import DiscoveryConfig, TargetConfig
from lbsync.engine.container import Container, NetworkAttachment
from lbsync.model.builder import ModelBuilder
from lbsync.model.entries import ParsedEntries
from lbsync.model.types import RoutingModel
from lbsync.render.fragments import FragmentCache
from lbsync.render.templates import CompiledTemplate, load_template, render_bytes
from lbsync.state.registry import Registry

DISCOVERY = DiscoveryConfig()
LIVE = 40  # containers that stay the whole time
BLOCK = 600  # containers come and gone per block: past every trim of the bounded memories
#: What a block may add to the highest point of the one before: less than 40 bytes per
#: container gone (a kept label set alone is about 600).
SLACK_BYTES = 48 * 1024
LOOK_EVERY = 40  # containers between two looks at the memory (each after a full collection)


@dataclass
class DaemonPass:
    """A pass's steps with the memory a daemon keeps between passes, for one target."""

    registry: Registry
    target: TargetConfig
    template: CompiledTemplate
    entries: ParsedEntries = field(init=False)
    builder: ModelBuilder = field(default_factory=ModelBuilder)
    proxies: ProxyTracker = field(default_factory=ProxyTracker)
    fragments: FragmentCache = field(default_factory=FragmentCache)
    rendered: tuple[RoutingModel | None, bytes] = (None, b"")

    def __post_init__(self) -> None:
        self.entries = ParsedEntries(self.registry)

    def run(self) -> bytes:
        changes = self.entries.since(DISCOVERY, self.builder.epoch)
        found = self.proxies.find(self.target, self.registry)
        networks = frozenset(n.name for n in found[0].networks) if found else frozenset()
        model = self.builder.build(changes, DISCOVERY, self.target, networks)
        if self.rendered[0] is not model:
            data = render_bytes(self.template, model, self.target, fragments=self.fragments)
            self.rendered = (model, data)
        return self.rendered[1]


def app(name: str, host: str, ip: str, extra: dict[str, str] | None = None) -> Container:
    labels = {
        "com.docker.compose.project": "shop",
        "com.docker.compose.service": name,
        "lbsync.enable": "true",
        "lbsync.host": host,
        "lbsync.port": "8080",
        **(extra or {}),
    }
    return Container(
        id=hashlib.sha256(name.encode()).hexdigest(),
        name=name,
        created_ns=1,
        labels=MappingProxyType(labels),
        state="running",
        started_at="2026-01-01T00:00:00.000000001Z",
        networks=(NetworkAttachment("shop_default", "id-shop", ip),),
    )


def new_containers(kind: str) -> Iterator[Container]:
    """Containers nobody has seen: their own id, name and host; `kind` varies the labels."""
    i = 0
    while True:
        i += 1
        name = f"preview-{i}"
        extra = {"lbsync.path": f"/v{i}"} if kind == "paths" else None
        if kind == "upstreams":
            extra = {"lbsync.upstream": f"up{i}"}
        yield app(name, f"pr-{i}.preview.test", f"172.20.{i // 250 % 250}.{i % 250 + 2}", extra)


def highest_per_block(kind: str, template_name: str, blocks: int) -> list[int]:
    """Traced memory's highest point in each block of BLOCK containers come and gone."""
    target = TargetConfig(name="t", template=template_name, output=Path("unused.conf"))
    registry = Registry()
    for i in range(LIVE):
        registry.upsert(app(f"live-{i}", f"live-{i}.test", f"172.30.0.{i + 2}"))
    daemon = DaemonPass(registry, target, load_template(target))
    daemon.run()
    fresh = new_containers(kind)
    looks = itertools.count(1)
    highest: list[int] = []
    gc.collect()
    tracemalloc.start()
    try:
        for _ in range(blocks):
            top = 0
            for _ in range(BLOCK):
                container = next(fresh)
                host = container.labels["lbsync.host"].encode()
                registry.upsert(container)  # start
                assert host in daemon.run()
                registry.mark_stopping(container.id)  # kill: the drain pass
                daemon.run()
                registry.upsert(replace(container, state="exited"))  # die
                daemon.run()
                registry.remove(container.id)  # destroy
                assert host not in daemon.run()
                if next(looks) % LOOK_EVERY == 0:
                    gc.collect()  # what is still referenced, not what the collector has yet to find
                    top = max(top, tracemalloc.get_traced_memory()[0])
            highest.append(top)
    finally:
        tracemalloc.stop()
    return highest


@pytest.mark.parametrize(
    ("kind", "template_name"),
    [
        ("hosts", "builtin:nginx"),
        ("paths", "builtin:nginx"),
        ("upstreams", "builtin:nginx"),
        ("hosts", "builtin:haproxy"),
    ],
)
def test_containers_come_and_gone_leave_nothing_behind(kind: str, template_name: str) -> None:
    highest = highest_per_block(kind, template_name, blocks=3)
    # The first block fills what is bounded; the ones after must not climb above it.
    for before, after in itertools.pairwise(highest):
        assert after <= before + SLACK_BYTES, (
            f"{kind} with {template_name}: traced memory's highest point per block of "
            f"{BLOCK} containers come and gone: {highest} (bytes)"
        )
