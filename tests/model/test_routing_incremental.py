"""`ModelBuilder` (the daemon's incremental model) against `build_model` from scratch.

A pass after a few container changes recomputes only those containers and their groups;
these tests hold it to the from-scratch model after every step of random change sequences,
and check that what did not change comes back as the very same objects (templates cache
rendered text by identity). Addresses here are model data only; nothing connects.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import replace
from pathlib import Path
from types import MappingProxyType

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lbsync.config.schema import DiscoveryConfig, TargetConfig
from lbsync.config.selectors import LabelSelector
from lbsync.engine.container import Container, NetworkAttachment, PublishedPort
from lbsync.model.builder import ModelBuilder, build_model
from lbsync.model.entries import EntryChanges, ParsedEntries, ParsedEntry, parse_entry
from lbsync.model.upstream_names import derived_upstream_name
from lbsync.state.registry import Registry

# HYPOTHESIS_PROFILE=long (README: the long hostile-input run) tries 10x more histories.
EXAMPLES = 3000 if os.environ.get("HYPOTHESIS_PROFILE") == "long" else 300
TARGET = TargetConfig(name="nginx", template="builtin:nginx", output=Path("lbsync.conf"))
DISCOVERY = DiscoveryConfig()

# Small pools, so that random containers collide: shared names, hosts, paths, upstreams.
NAMES = ["app-1", "app-2", "web", "api"]
HOSTS = ["a.test", "b.test", "*.c.test"]
# /c23871 and /c57355 of one host give one 8-hex derived name (tests/model/test_routing.py).
PATHS = [None, "/", "/api", "/api/v1", "/c23871", "/c57355"]
# The last ones are written as a.test/'s derived name, and as a.test/c23871's full-hash one.
UPSTREAMS = [
    None,
    None,
    "shared",
    "SHARED",
    derived_upstream_name("a.test", "/").removeprefix("lbsync_"),
    derived_upstream_name("a.test", "/c23871", full_hash=True).removeprefix("lbsync_"),
]
BALANCES = [None, "least_conn", "ip_hash"]
STATES = ["running", "running", "running", "exited", "created"]
HEALTHS = ["none", "healthy", "unhealthy", "starting"]
NETWORKS = [
    (("app_net", "172.20.0.2"),),
    (("app_net", "172.20.0.3"), ("other", "10.9.0.3")),
    (("other", "10.9.0.4"),),
    (("app_net", ""),),
]


def service_labels(prefix: str) -> st.SearchStrategy[dict[str, str]]:
    """The labels of one service (`prefix` is "lbsync." or "lbsync.<name>.")."""
    optional = {
        "path": st.sampled_from(PATHS),
        "upstream": st.sampled_from(UPSTREAMS),
        "balance": st.sampled_from(BALANCES),
        "weight": st.sampled_from([None, "1", "5", "bad"]),
    }

    def assemble(host: str, port: str, extra: dict[str, str | None]) -> dict[str, str]:
        labels = {f"{prefix}host": host, f"{prefix}port": port}
        labels.update({f"{prefix}{k}": v for k, v in extra.items() if v is not None})
        return labels

    return st.builds(
        assemble,
        st.sampled_from([*HOSTS, "a.test,b.test", ""]),
        st.sampled_from(["80", "8080", "9000", "x"]),
        st.fixed_dictionaries(optional),
    )


@st.composite
def containers(draw: st.DrawFn, slot: int) -> Container:
    labels: dict[str, str] = {}
    if draw(st.integers(0, 9)) > 0:
        labels["lbsync.enable"] = draw(st.sampled_from(["true", "true", "true", "false"]))
    labels.update(draw(service_labels("lbsync.")))
    if draw(st.booleans()):
        labels.update(draw(service_labels("lbsync.admin.")))
    if draw(st.integers(0, 4)) == 0:
        labels["lbsync.network"] = draw(st.sampled_from(["app_net", "other", "missing"]))
    if draw(st.booleans()):
        labels["team"] = draw(st.sampled_from(["blue", "red"]))
    mode = draw(st.sampled_from(["default", "default", "host"]))
    return Container(
        id=hashlib.sha256(f"slot{slot}".encode()).hexdigest(),
        name=draw(st.sampled_from(NAMES)),
        created_ns=draw(st.integers(1, 4)),
        labels=MappingProxyType(labels),
        state=draw(st.sampled_from(STATES)),
        health=draw(st.sampled_from(HEALTHS)),
        network_mode=mode,
        networks=tuple(
            NetworkAttachment(n, "id-" + n, ip) for n, ip in draw(st.sampled_from(NETWORKS))
        ),
        exposed_ports=(80,),
        published_ports=draw(
            st.sampled_from([(), (PublishedPort(80, "", 18080), PublishedPort(9000, "::", 19000))])
        ),
    )


# One step: put a container into a slot (a new one or a new version), or empty the slot.
steps = st.integers(0, 5).flatmap(
    lambda slot: st.tuples(st.just(slot), st.none() | containers(slot))
)
contexts = st.sampled_from(
    [
        (DISCOVERY, TARGET, frozenset[str]()),
        (DISCOVERY, TARGET, frozenset({"other"})),
        (replace(DISCOVERY, require_healthy=False), TARGET, frozenset[str]()),
        (replace(DISCOVERY, address="published"), TARGET, frozenset[str]()),
        (DISCOVERY, replace(TARGET, select=LabelSelector("team", "blue")), frozenset[str]()),
    ]
)


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(steps, contexts), min_size=1, max_size=25))
def test_incremental_model_equals_the_model_from_scratch(
    history: list[
        tuple[tuple[int, Container | None], tuple[DiscoveryConfig, TargetConfig, frozenset[str]]]
    ],
) -> None:
    builder = ModelBuilder()
    slots: dict[int, ParsedEntry] = {}
    for (slot, container), (discovery, target, networks) in history:
        if container is None:
            slots.pop(slot, None)
        else:
            slots[slot] = parse_entry(container, discovery, slots.get(slot))
        # Entries parsed with another discovery config are re-parsed, as the registry does.
        entries = [parse_entry(e.container, discovery, e) for e in slots.values()]
        slots = dict(zip(slots, entries, strict=True))
        incremental = builder.build(entries, discovery, target, networks)
        assert incremental == build_model(entries, discovery, target, networks)


def slot_id(slot: int) -> str:
    return hashlib.sha256(f"slot{slot}".encode()).hexdigest()


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(steps, contexts, st.booleans(), st.booleans()), min_size=1, max_size=25))
def test_model_from_the_registrys_changes_equals_the_model_from_scratch(
    history: list[
        tuple[
            tuple[int, Container | None],
            tuple[DiscoveryConfig, TargetConfig, frozenset[str]],
            bool,
            bool,
        ]
    ],
) -> None:
    # The daemon's way: the builder asks the registry what changed since its last model and
    # looks at those ids only; several changes may come between two passes.
    registry = Registry()
    entries = ParsedEntries(registry)
    builder = ModelBuilder()
    for (slot, container), (discovery, target, networks), stop, build_now in history:
        if container is None:
            registry.remove(slot_id(slot))
        else:
            registry.upsert(container)
        if stop:
            registry.mark_stopping(slot_id(slot))
        if not build_now:
            continue
        changes = entries.since(discovery, builder.epoch)
        incremental = builder.build(changes, discovery, target, networks)
        assert builder.epoch == registry.epoch
        assert incremental == build_model(entries.all(discovery), discovery, target, networks)


def test_a_build_from_changes_looks_only_at_the_ids_named() -> None:
    entries = {e.container.id: e for e in
               (entry(f"app{i}", f"h{i}.test", f"172.20.0.{i + 2}") for i in range(3))}  # fmt: skip
    builder = ModelBuilder()
    first = builder.build(EntryChanges(entries, 1, None), DISCOVERY, TARGET, frozenset())
    assert builder.epoch == 1
    moved = entry("app1", "h1.test", "172.20.0.99")
    entries[moved.container.id] = moved
    # Nothing named: the builder trusts the registry's log and keeps its model.
    assert (
        builder.build(EntryChanges(entries, 2, frozenset()), DISCOVERY, TARGET, frozenset())
        is first
    )
    named = EntryChanges(entries, 3, frozenset({moved.container.id}))
    second = builder.build(named, DISCOVERY, TARGET, frozenset())
    assert second == build_model(entries.values(), DISCOVERY, TARGET, frozenset())
    assert builder.epoch == 3
    # Another context starts over, whatever the changes say.
    other = builder.build(
        EntryChanges(entries, 4, frozenset()), DISCOVERY, TARGET, frozenset({"front"})
    )
    assert other is not second and builder.epoch == 4
    # Plain entries say nothing about epochs: the next build compares everything again.
    builder.build(list(entries.values()), DISCOVERY, TARGET, frozenset({"front"}))
    assert builder.epoch is None


def test_a_build_that_fails_half_way_starts_over_next_time(monkeypatch: pytest.MonkeyPatch) -> None:
    entries = [entry(f"app{i}", f"h{i}.test", f"172.20.0.{i + 2}") for i in range(3)]
    builder = ModelBuilder()
    builder.build(entries, DISCOVERY, TARGET, frozenset())
    entries[0] = entry("app0", "h0.test", "172.20.0.50")
    entries[2] = entry("app2", "h2.test", "172.20.0.52")
    calls = 0
    real_add = ModelBuilder._add

    def failing_add(self: ModelBuilder, *args: object) -> bool:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise RuntimeError("a bug")
        return real_add(self, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(ModelBuilder, "_add", failing_add)
    with pytest.raises(RuntimeError):
        builder.build(entries, DISCOVERY, TARGET, frozenset())
    monkeypatch.setattr(ModelBuilder, "_add", real_add)
    assert builder.build(entries, DISCOVERY, TARGET, frozenset()) == build_model(
        entries, DISCOVERY, TARGET, frozenset()
    )


def entry(name: str, host: str, ip: str, *, state: str = "running") -> ParsedEntry:
    labels = {"lbsync.enable": "true", "lbsync.host": host, "lbsync.port": "80"}
    container = Container(
        id=hashlib.sha256(name.encode()).hexdigest(),
        name=name,
        created_ns=1,
        labels=MappingProxyType(labels),
        state=state,
        networks=(NetworkAttachment("net", "id-net", ip),),
    )
    return parse_entry(container, DISCOVERY)


def test_nothing_changed_gives_the_same_model_object() -> None:
    entries = [entry(f"app{i}", f"h{i}.test", f"172.20.0.{i + 2}") for i in range(5)]
    builder = ModelBuilder()
    first = builder.build(entries, DISCOVERY, TARGET, frozenset())
    assert builder.build(list(reversed(entries)), DISCOVERY, TARGET, frozenset()) is first


def test_one_change_keeps_every_other_host_and_upstream_object() -> None:
    entries = [entry(f"app{i}", f"h{i}.test", f"172.20.0.{i + 2}") for i in range(5)]
    builder = ModelBuilder()
    first = builder.build(entries, DISCOVERY, TARGET, frozenset())
    entries[2] = entry("app2", "h2.test", "172.20.0.99")
    second = builder.build(entries, DISCOVERY, TARGET, frozenset())
    assert second == build_model(entries, DISCOVERY, TARGET, frozenset())
    changed = [h.name for h, old in zip(second.hosts, first.hosts, strict=True) if h is not old]
    assert changed == ["h2.test"]
    same = [u is old for u, old in zip(second.upstreams, first.upstreams, strict=True)]
    assert same.count(False) == 1
    # app2's DiscoveredContainer is equal (only its address moved): the tuple is reused.
    assert second.containers is first.containers


def test_a_stopped_container_changes_only_its_upstream() -> None:
    entries = [entry(f"app{i}", "shared.test" if i < 2 else f"h{i}.test", f"172.20.0.{i + 2}")
               for i in range(4)]  # fmt: skip
    builder = ModelBuilder()
    first = builder.build(entries, DISCOVERY, TARGET, frozenset())
    entries[1] = entry("app1", "shared.test", "172.20.0.3", state="exited")
    second = builder.build(entries, DISCOVERY, TARGET, frozenset())
    assert second == build_model(entries, DISCOVERY, TARGET, frozenset())
    by_name = {h.name: h for h in first.hosts}
    for host in second.hosts:
        assert (host is by_name[host.name]) == (host.name != "shared.test")
    assert [s.reason for s in second.skips] == ["not_running"]


def test_clashing_derived_names_incrementally() -> None:
    # Two groups whose 8-hex names clash arrive one pass after the other, then one leaves:
    # at each step both builders agree and no group's route goes to the other's upstream.
    def at(name: str, path: str, ip: str) -> ParsedEntry:
        labels = {"lbsync.enable": "true", "lbsync.host": "a.test", "lbsync.port": "80",
                  "lbsync.path": path}  # fmt: skip
        container = Container(
            id=hashlib.sha256(name.encode()).hexdigest(),
            name=name,
            created_ns=1,
            labels=MappingProxyType(labels),
            networks=(NetworkAttachment("net", "id-net", ip),),
        )
        return parse_entry(container, DISCOVERY)

    victim, other = at("victim", "/c23871", "172.20.0.2"), at("other", "/c57355", "172.20.0.3")
    site = entry("site", "b.test", "172.20.0.4")
    builder = ModelBuilder()
    for entries in ([site, victim], [site, victim, other], [site, other], [site, victim, other]):
        model = builder.build(entries, DISCOVERY, TARGET, frozenset())
        assert model == build_model(entries, DISCOVERY, TARGET, frozenset())
        routed = {
            r.path: [s.container.name for s in r.upstream.servers]
            for h in model.hosts
            for r in h.routes
            if h.name == "a.test"
        }
        want = {e.container.labels["lbsync.path"]: [e.container.name] for e in entries[1:]}
        assert routed == want
        assert len({u.name for u in model.upstreams}) == len(model.upstreams)
