"""Which containers are a target's proxies: `find_proxies`, and `ProxyTracker` (the same
answer kept up to date from the registry's change log)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from types import MappingProxyType

from hypothesis import given, settings
from hypothesis import strategies as st

from lbsync.apply.selection import ProxyTracker, find_proxies
from lbsync.config.schema import TargetConfig
from lbsync.config.selectors import LabelSelector, ProxyConfig
from lbsync.engine.container import Container
from lbsync.state.registry import Registry

BY_LABEL = TargetConfig(
    name="nginx",
    template="builtin:nginx",
    output=Path("lbsync.conf"),
    proxy=ProxyConfig(label=LabelSelector("lbsync.proxy", "nginx")),
)
BY_NAME = dataclasses.replace(BY_LABEL, proxy=ProxyConfig(name="edge"))


def container(cid: str, name: str, *, proxy: bool, state: str = "running") -> Container:
    labels = {"lbsync.proxy": "nginx"} if proxy else {"app": "x"}
    return Container(
        id=cid * 64, name=name, created_ns=1, labels=MappingProxyType(labels), state=state
    )


def test_find_proxies_takes_running_ones_by_label_or_name_sorted() -> None:
    found = [
        container("b", "nginx-2", proxy=True),
        container("a", "nginx-1", proxy=True),
        container("c", "nginx-3", proxy=True, state="exited"),
        container("d", "edge", proxy=False),
        container("e", "app", proxy=False),
    ]
    assert [c.name for c in find_proxies(BY_LABEL, found)] == ["nginx-1", "nginx-2"]
    assert [c.name for c in find_proxies(BY_NAME, found)] == ["edge"]


def test_the_tracker_follows_changes_and_starts_over_for_a_new_target() -> None:
    registry = Registry()
    tracker = ProxyTracker()
    registry.upsert(container("a", "app", proxy=False))
    assert tracker.find(BY_LABEL, registry) == []
    registry.upsert(container("b", "nginx-1", proxy=True))
    assert [c.name for c in tracker.find(BY_LABEL, registry)] == ["nginx-1"]
    registry.mark_stopping("b" * 64)
    assert tracker.find(BY_LABEL, registry) == []
    registry.upsert(container("c", "nginx-2", proxy=True))
    registry.upsert(container("e", "edge", proxy=False))
    assert [c.name for c in tracker.find(BY_LABEL, registry)] == ["nginx-2"]
    assert [c.name for c in tracker.find(BY_NAME, registry)] == ["edge"]  # a full scan
    registry.remove("e" * 64)
    assert tracker.find(BY_NAME, registry) == []


ids = st.sampled_from("abcde")
ops = st.one_of(
    st.tuples(
        st.just("upsert"),
        ids,
        st.sampled_from(["nginx-1", "nginx-2", "edge", "app"]),
        st.booleans(),
        st.sampled_from(["running", "running", "exited", "restarting"]),
    ),
    st.tuples(st.just("remove"), ids),
    st.tuples(st.just("stop"), ids),
    st.tuples(st.just("find"), st.sampled_from([BY_LABEL, BY_NAME])),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(ops, max_size=30))
def test_the_tracker_agrees_with_a_full_scan(history: list[tuple[object, ...]]) -> None:
    registry = Registry()
    tracker = ProxyTracker()
    for op in history:
        if op[0] == "upsert":
            _, cid, name, proxy, state = op
            registry.upsert(container(str(cid), str(name), proxy=bool(proxy), state=str(state)))
        elif op[0] == "remove":
            registry.remove(str(op[1]) * 64)
        elif op[0] == "stop":
            registry.mark_stopping(str(op[1]) * 64)
        else:
            target = op[1]
            assert isinstance(target, TargetConfig)
            assert tracker.find(target, registry) == find_proxies(target, registry.containers())
