"""The routing model (SPEC §2, §3a, §5.6): named table cases over plain data.

The IP addresses below are data only: nothing here opens a connection.
"""

from __future__ import annotations

import hashlib
import os
import random
from collections.abc import Mapping, Sequence
from dataclasses import FrozenInstanceError, dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest

from lbsync.config.schema import DiscoveryConfig, TargetConfig
from lbsync.config.selectors import LabelSelector
from lbsync.engine.container import Container, NetworkAttachment, PublishedPort
from lbsync.model import groups
from lbsync.model.builder import build_model
from lbsync.model.entries import ParsedEntry, parse_entry
from lbsync.model.groups import NO_ADDRESS, NOT_HEALTHY, NOT_PUBLISHED, NOT_RUNNING
from lbsync.model.label_grammar import INVALID_LABEL
from lbsync.model.types import ContainerRef, DiscoveredContainer, RoutingModel, Server
from lbsync.model.upstream_names import derived_upstream_name

GOLDEN_DIR = Path(__file__).parents[1] / "testdata" / "routing"
UPDATE_GOLDEN = os.environ.get("LBSYNC_UPDATE_GOLDEN") == "1"

D = DiscoveryConfig()
TARGET = TargetConfig(name="nginx", template="builtin:nginx", output=Path("lbsync.conf"))
NET = "app_net"


def cid(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()


def ctr(
    name: str,
    host: str | None = "a.test",
    *,
    port: str | None = "80",
    path: str | None = None,
    upstream: str | None = None,
    balance: str | None = None,
    weight: str | None = None,
    network: str | None = None,
    labels: Mapping[str, str] | None = None,
    created: int = 1,
    state: str = "running",
    health: str = "none",
    ip: str = "172.20.0.2",
    networks: Sequence[tuple[str, str]] | None = None,
    network_mode: str = "default",
    exposed: tuple[int, ...] = (),
    published: tuple[PublishedPort, ...] = (),
    id: str | None = None,
) -> Container:
    """An opted-in container declaring one default service (pass host=None for none)."""
    all_labels = {"lbsync.enable": "true"}
    for key, value in (
        ("host", host),
        ("port", port),
        ("path", path),
        ("upstream", upstream),
        ("balance", balance),
        ("weight", weight),
        ("network", network),
    ):
        if value is not None:
            all_labels[f"lbsync.{key}"] = value
    all_labels.update(labels or {})
    nets = [(NET, ip)] if networks is None else list(networks)
    return Container(
        id=id or cid(name),
        name=name,
        created_ns=created,
        labels=MappingProxyType(all_labels),
        state=state,
        health=health,
        network_mode=network_mode,
        networks=tuple(NetworkAttachment(n, "id-" + n, a) for n, a in nets),
        exposed_ports=exposed,
        published_ports=published,
    )


def build(
    *containers: Container,
    discovery: DiscoveryConfig = D,
    target: TargetConfig = TARGET,
    proxy_networks: frozenset[str] = frozenset(),
) -> RoutingModel:
    entries = [parse_entry(c, discovery) for c in containers]
    return build_model(entries, discovery, target, proxy_networks)


def servers(model: RoutingModel) -> list[tuple[str, str, int, int]]:
    """(container name, address, port, weight) of every server of every upstream."""
    return [
        (s.container.name, s.address, s.port, s.weight) for u in model.upstreams for s in u.servers
    ]


def reasons(model: RoutingModel) -> list[tuple[str, str]]:
    return [(s.container.name, s.reason) for s in model.skips]


def model_text(model: RoutingModel) -> str:
    """The whole model as stable text (the routing golden files' format)."""
    lines: list[str] = []
    for host in model.hosts:
        lines.append(f"host {host.name}")
        for route in host.routes:
            lines.append(f"  route {route.path} -> {route.upstream.name}")
    for upstream in model.upstreams:
        lines.append(f"upstream {upstream.name} balance={upstream.balance}")
        for s in upstream.servers:
            lines.append(f"  server {s.address}:{s.port} weight={s.weight} ({s.container.name})")
    for c in model.containers:
        names = ",".join(s.name or "(default)" for s in c.services) or "-"
        lines.append(f"container {c.name} health={c.health} services={names}")
    lines += [f"skip {s.reason}: {s.detail}" for s in model.skips]
    lines += [f"warning: {w}" for w in model.warnings]
    return "\n".join(lines) + "\n"


# --- which containers get traffic (SPEC §2) --------------------------------------------


@dataclass(frozen=True)
class Traffic:
    state: str
    health: str
    require_healthy: bool
    gets_traffic: bool
    reason: str | None = None


TRAFFIC = {
    "running-no-healthcheck": Traffic("running", "none", True, True),
    "running-healthy": Traffic("running", "healthy", True, True),
    "running-starting-required": Traffic("running", "starting", True, False, NOT_HEALTHY),
    "running-unhealthy-required": Traffic("running", "unhealthy", True, False, NOT_HEALTHY),
    "running-starting-not-required": Traffic("running", "starting", False, True),
    "running-unhealthy-not-required": Traffic("running", "unhealthy", False, True),
    "running-healthy-not-required": Traffic("running", "healthy", False, True),
    "exited": Traffic("exited", "none", True, False, NOT_RUNNING),
    "exited-was-healthy": Traffic("exited", "healthy", False, False, NOT_RUNNING),
    "paused-healthy": Traffic("paused", "healthy", True, False, NOT_RUNNING),
    "paused-not-required": Traffic("paused", "none", False, False, NOT_RUNNING),
    "created": Traffic("created", "none", True, False, NOT_RUNNING),
    "restarting": Traffic("restarting", "none", True, False, NOT_RUNNING),
    "removing": Traffic("removing", "none", True, False, NOT_RUNNING),
    "dead": Traffic("dead", "none", True, False, NOT_RUNNING),
}


@pytest.mark.parametrize("case", list(TRAFFIC.values()), ids=list(TRAFFIC))
def test_traffic_rules(case: Traffic) -> None:
    discovery = DiscoveryConfig(require_healthy=case.require_healthy)
    model = build(ctr("web-1", state=case.state, health=case.health), discovery=discovery)
    # The host and its route stay whatever the state (SPEC §5.6).
    assert [h.name for h in model.hosts] == ["a.test"]
    (upstream,) = model.upstreams
    assert model.hosts[0].routes[0].upstream is upstream
    if case.gets_traffic:
        assert servers(model) == [("web-1", "172.20.0.2", 80, 1)]
        assert model.skips == ()
    else:
        assert upstream.servers == ()
        assert reasons(model) == [("web-1", case.reason)]
    (discovered,) = model.containers
    assert discovered.health == case.health


def test_stopped_container_keeps_host_with_empty_upstream() -> None:
    model = build(ctr("web-1", state="exited"), ctr("api-1", "api.test", state="running"))
    assert [h.name for h in model.hosts] == ["a.test", "api.test"]
    by_host = {h.name: h.routes[0].upstream for h in model.hosts}
    assert by_host["a.test"].servers == ()
    assert len(by_host["api.test"].servers) == 1
    assert [c.name for c in model.containers] == ["api-1", "web-1"]


def test_stopped_and_running_in_one_group() -> None:
    model = build(ctr("web-1", state="exited"), ctr("web-2", ip="172.20.0.3"))
    assert servers(model) == [("web-2", "172.20.0.3", 80, 1)]
    assert reasons(model) == [("web-1", NOT_RUNNING)]


def test_only_enabled_containers_are_discovered() -> None:
    off = Container(id=cid("db"), name="db", created_ns=1, labels={"lbsync.host": "db.test"})
    model = build(off, ctr("web-1"))
    assert [c.name for c in model.containers] == ["web-1"]
    assert [h.name for h in model.hosts] == ["a.test"]


def test_label_skips_flow_into_the_model() -> None:
    bad_enable = ctr("web-1", labels={"lbsync.enable": "yes"})
    bad_host = ctr("web-2", host="a b")
    model = build(bad_enable, bad_host)
    assert reasons(model) == [("web-1", INVALID_LABEL), ("web-2", INVALID_LABEL)]
    assert [c.name for c in model.containers] == ["web-2"]  # enabled, no valid service
    assert model.containers[0].services == ()
    assert model.hosts == () and model.upstreams == ()


# --- addresses (SPEC §2) ----------------------------------------------------------------


@dataclass(frozen=True)
class Addr:
    container: dict[str, Any]
    expect: tuple[str, int] | None  # (address, port), None = skipped
    reason: str | None = None
    proxy_networks: frozenset[str] = frozenset()
    discovery: dict[str, Any] = field(default_factory=dict)


TWO_NETS = [("front", "172.21.0.5"), ("back", "172.22.0.5")]
PUB = {"published": (PublishedPort(80, "0.0.0.0", 32768),)}

ADDRESSES = {
    "only-network": Addr({}, ("172.20.0.2", 80)),
    "only-network-not-shared-with-proxy": Addr(
        {}, ("172.20.0.2", 80), proxy_networks=frozenset({"x"})
    ),
    "network-label-wins-over-shared": Addr(
        {"networks": TWO_NETS, "network": "back"},
        ("172.22.0.5", 80),
        proxy_networks=frozenset({"front"}),
    ),
    "network-label-single-network": Addr({"network": NET}, ("172.20.0.2", 80)),
    "network-label-not-attached": Addr(
        {"networks": TWO_NETS, "network": "other"}, None, NO_ADDRESS, frozenset({"front"})
    ),
    "network-label-no-ip": Addr(
        {"networks": [("front", ""), ("back", "172.22.0.5")], "network": "front"}, None, NO_ADDRESS
    ),
    "shared-with-proxy": Addr(
        {"networks": TWO_NETS}, ("172.22.0.5", 80), proxy_networks=frozenset({"back", "x"})
    ),
    "several-shared-first-by-name": Addr(
        {"networks": [("zeta", "172.23.0.9"), ("alpha", "172.24.0.9"), ("mid", "172.25.0.9")]},
        ("172.24.0.9", 80),
        proxy_networks=frozenset({"zeta", "alpha"}),
    ),
    "several-none-shared": Addr(
        {"networks": TWO_NETS}, None, NO_ADDRESS, proxy_networks=frozenset({"x"})
    ),
    "several-proxy-unknown": Addr({"networks": TWO_NETS}, None, NO_ADDRESS),
    "only-network-with-ip": Addr(
        {"networks": [("front", ""), ("back", "172.22.0.5")]}, ("172.22.0.5", 80)
    ),
    "shared-network-without-ip-ignored": Addr(
        {"networks": [("front", ""), ("back", "172.22.0.5")]},
        ("172.22.0.5", 80),
        proxy_networks=frozenset({"front"}),
    ),
    "no-networks": Addr({"networks": []}, None, NO_ADDRESS),
    "no-ip": Addr({"networks": [(NET, "")]}, None, NO_ADDRESS),
    "network-mode-none": Addr({"networks": [], "network_mode": "none"}, None, NO_ADDRESS),
    "network-mode-container": Addr(
        {"networks": [], "network_mode": "container:" + "f" * 64}, None, NO_ADDRESS
    ),
    "host-network": Addr(
        {"networks": [("host", "")], "network_mode": "host", "port": "8080"},
        ("127.0.0.1", 8080),
    ),
    "host-network-custom-address": Addr(
        {"networks": [("host", "")], "network_mode": "host"},
        ("10.0.0.7", 80),
        discovery={"host_address": "10.0.0.7"},
    ),
    "host-network-published-mode": Addr(
        {"networks": [("host", "")], "network_mode": "host"},
        ("127.0.0.1", 80),
        discovery={"address": "published"},
    ),
    "published-any-address": Addr(PUB, ("127.0.0.1", 32768), discovery={"address": "published"}),
    "published-empty-host-ip": Addr(
        {"published": (PublishedPort(80, "", 8081),)},
        ("127.0.0.1", 8081),
        discovery={"address": "published"},
    ),
    "published-ipv6-any": Addr(
        {"published": (PublishedPort(80, "::", 8082),)},
        ("192.168.10.2", 8082),
        discovery={"address": "published", "host_address": "192.168.10.2"},
    ),
    "published-specific-ip": Addr(
        {"published": (PublishedPort(80, "192.168.10.5", 8083),)},
        ("192.168.10.5", 8083),
        discovery={"address": "published"},
    ),
    "published-ipv4-before-ipv6": Addr(
        {"published": (PublishedPort(80, "::", 8084), PublishedPort(80, "0.0.0.0", 8084))},
        ("127.0.0.1", 8084),
        discovery={"address": "published"},
    ),
    "published-other-port-only": Addr(
        {"published": (PublishedPort(443, "0.0.0.0", 8443),)},
        None,
        NOT_PUBLISHED,
        discovery={"address": "published"},
    ),
    "published-ignores-networks": Addr(
        {"networks": TWO_NETS, **PUB}, ("127.0.0.1", 32768), discovery={"address": "published"}
    ),
}


@pytest.mark.parametrize("case", list(ADDRESSES.values()), ids=list(ADDRESSES))
def test_address_rules(case: Addr) -> None:
    model = build(
        ctr("web-1", **case.container),
        discovery=DiscoveryConfig(**case.discovery),
        proxy_networks=case.proxy_networks,
    )
    if case.expect is None:
        assert servers(model) == []
        assert reasons(model) == [("web-1", case.reason)]
        detail = model.skips[0].detail
        assert detail.startswith("container web-1: ") and "\n" not in detail
        assert [h.name for h in model.hosts] == ["a.test"]  # the host stays, answering 503
    else:
        assert servers(model) == [("web-1", *case.expect, 1)]
        assert model.skips == ()


def test_no_address_detail_names_the_networks() -> None:
    model = build(ctr("web-1", networks=TWO_NETS))
    (skip,) = model.skips
    assert skip.detail == (
        "container web-1: it is on several networks (back, front), none shared with the proxy; "
        "set label lbsync.network to choose one; no traffic"
    )


def test_not_published_reported_once_per_port() -> None:
    c = ctr(
        "web-1",
        labels={
            "lbsync.web.host": "w.test",
            "lbsync.web.port": "80",
            "lbsync.api.host": "x.test",
            "lbsync.api.port": "9000",
        },
        published=(PublishedPort(9000, "0.0.0.0", 9000),),
    )
    model = build(c, discovery=DiscoveryConfig(address="published"))
    assert reasons(model) == [("web-1", NOT_PUBLISHED)]
    assert servers(model) == [("web-1", "127.0.0.1", 9000, 1)]


# --- select (target.select) --------------------------------------------------------------


@pytest.mark.parametrize(
    ("selector", "expected"),
    [
        pytest.param(None, ["internal", "public", "untagged"], id="no-select"),
        pytest.param(LabelSelector("lbsync.public", "true"), ["public"], id="key-value"),
        pytest.param(LabelSelector("lbsync.public"), ["internal", "public"], id="key-only"),
        pytest.param(LabelSelector("lbsync.public", "nope"), [], id="matches-none"),
    ],
)
def test_select(selector: LabelSelector | None, expected: list[str]) -> None:
    cs = [
        ctr("public", "pub.test", labels={"lbsync.public": "true"}),
        ctr("internal", "int.test", labels={"lbsync.public": "false"}),
        ctr("untagged", "other.test"),
    ]
    target = replace(TARGET, select=selector)
    model = build(*cs, target=target)
    assert [c.name for c in model.containers] == expected
    assert sorted(s[0] for s in servers(model)) == expected


def test_unselected_containers_leave_no_skips() -> None:
    bad = ctr("bad", labels={"lbsync.enable": "maybe"})
    stopped = ctr("stopped", state="exited")
    target = replace(TARGET, select=LabelSelector("lbsync.public", "true"))
    model = build(bad, stopped, target=target)
    assert model == RoutingModel((), (), (), (), ())


# --- groups: conflicts, names --------------------------------------------------------------


def test_group_upstream_conflict_newest_wins() -> None:
    old = ctr("web-1", upstream="old_name", created=100)
    new = ctr("web-2", upstream="new_name", created=200, ip="172.20.0.3")
    model = build(new, old)
    (upstream,) = model.upstreams
    assert upstream.name == "lbsync_new_name"
    assert [s.container.name for s in upstream.servers] == ["web-1", "web-2"]
    (warning,) = model.warnings
    assert warning == (
        "group a.test/: its containers disagree on upstream ('new_name', 'old_name'; "
        "using 'new_name'); the newest container, web-2, wins"
    )


def test_group_conflict_same_created_id_breaks_tie() -> None:
    a = ctr("web-1", upstream="aaa", created=5, id="a" * 64)
    b = ctr("web-2", upstream="bbb", created=5, id="b" * 64, ip="172.20.0.3")
    assert build(a, b).upstreams[0].name == "lbsync_bbb"
    assert build(b, a).upstreams[0].name == "lbsync_bbb"


def test_group_balance_conflict() -> None:
    model = build(
        ctr("web-1", balance="ip_hash", created=2),
        ctr("web-2", balance="least_conn", created=1, ip="172.20.0.3"),
    )
    assert model.upstreams[0].balance == "ip_hash"
    assert model.warnings == (
        "group a.test/: its containers disagree on balance (ip_hash, least_conn; using "
        "ip_hash); the newest container, web-1, wins",
    )


def test_group_upstream_and_balance_conflict_is_one_warning() -> None:
    model = build(
        ctr("web-1", upstream="x", balance="ip_hash", created=1),
        ctr("web-2", created=2, ip="172.20.0.3"),
        ctr("web-3", upstream="x", created=0, ip="172.20.0.4"),
    )
    (upstream,) = model.upstreams
    assert upstream.name == derived_upstream_name("a.test", "/")
    assert upstream.balance == "round_robin"
    assert len(model.warnings) == 1
    assert "upstream ('x', (derived); using the derived name)" in model.warnings[0]
    assert "balance (ip_hash, round_robin; using round_robin)" in model.warnings[0]


def test_newest_wins_even_when_stopped() -> None:
    model = build(
        ctr("web-1", upstream="running_one", created=1),
        ctr("web-2", upstream="next_release", created=2, state="created"),
    )
    assert model.upstreams[0].name == "lbsync_next_release"
    assert servers(model) == [("web-1", "172.20.0.2", 80, 1)]


def test_agreeing_group_has_no_warning() -> None:
    model = build(
        ctr("web-1", upstream="app", balance="least_conn"),
        ctr("web-2", upstream="app", balance="least_conn", ip="172.20.0.3"),
    )
    assert model.warnings == ()
    assert [u.name for u in model.upstreams] == ["lbsync_app"]


def test_derived_upstream_name() -> None:
    digest = hashlib.sha1(b"a.test/api").hexdigest()[:8]
    assert derived_upstream_name("a.test", "/api") == f"lbsync_a_test_{digest}"
    assert derived_upstream_name("a.test", "/") != derived_upstream_name("a.test", "/api")


@pytest.mark.parametrize(
    ("host", "slug"),
    [
        pytest.param("a.test", "a_test", id="dots"),
        pytest.param("my-app.example.com", "my_app_example_com", id="hyphen"),
        pytest.param("*.example.com", "wildcard_example_com", id="wildcard"),
        pytest.param("a--b..c", "a_b_c", id="runs-collapse"),
        pytest.param("x" * 60 + ".test", "x" * 40, id="trimmed-to-40"),
        pytest.param("*." + "y" * 60, "wildcard_" + "y" * 31, id="wildcard-trimmed"),
    ],
)
def test_derived_upstream_slug(host: str, slug: str) -> None:
    name = derived_upstream_name(host, "/")
    digest = hashlib.sha1((host + "/").encode()).hexdigest()[:8]
    assert name == f"lbsync_{slug}_{digest}"


def test_explicit_upstream_used() -> None:
    model = build(ctr("web-1", upstream="shop"))
    assert [u.name for u in model.upstreams] == ["lbsync_shop"]
    assert model.hosts[0].routes[0].upstream.name == "lbsync_shop"


@pytest.mark.parametrize(
    ("value", "name"),
    [
        pytest.param("grafana", "lbsync_grafana", id="plain"),
        pytest.param("My.app-1_x", "lbsync_My.app-1_x", id="every-char-kept"),
        pytest.param("lbsync_x", "lbsync_lbsync_x", id="already-prefixed-still-prefixed"),
        pytest.param("u" * 64, "lbsync_" + "u" * 64, id="longest"),
    ],
)
def test_explicit_upstream_is_written_with_the_lbsync_prefix(value: str, name: str) -> None:
    # SPEC §1: every name lbsync writes starts with lbsync_, so it never meets the
    # operator's own upstreams (nginx) or backends (HAProxy).
    model = build(ctr("web-1", upstream=value))
    assert [u.name for u in model.upstreams] == [name]
    assert model.hosts[0].routes[0].upstream.name == name
    assert model.containers[0].services[0].upstream == value  # templates see the label value


def test_explicit_upstream_claimed_by_two_groups_first_keeps_it() -> None:
    model = build(
        ctr("web-b", "b.test", upstream="shared"),
        ctr("web-a", "a.test", upstream="shared", ip="172.20.0.3"),
    )
    by_host = {h.name: h.routes[0].upstream.name for h in model.hosts}
    assert by_host == {"a.test": "lbsync_shared", "b.test": derived_upstream_name("b.test", "/")}
    (warning,) = model.warnings
    assert warning == (
        f"group b.test/: upstream name 'lbsync_shared' is already used by group a.test/; "
        f"using {derived_upstream_name('b.test', '/')!r}"
    )


def test_explicit_upstream_names_clash_ignoring_case() -> None:
    model = build(ctr("web-a", "a.test", upstream="App"), ctr("web-b", "b.test", upstream="app"))
    names = {h.name: h.routes[0].upstream.name for h in model.hosts}
    assert names == {"a.test": "lbsync_App", "b.test": derived_upstream_name("b.test", "/")}
    assert len(model.warnings) == 1


def test_explicit_upstream_on_one_service_with_several_hosts_is_shared() -> None:
    model = build(
        ctr("web-1", "a.test,www.a.test", upstream="site"),
        ctr("web-2", "a.test,www.a.test", upstream="site", ip="172.20.0.3"),
    )
    assert [u.name for u in model.upstreams] == ["lbsync_site"]
    assert [h.routes[0].upstream.name for h in model.hosts] == ["lbsync_site", "lbsync_site"]
    assert model.warnings == ()


def test_explicit_upstream_equal_to_a_derived_name_falls_back() -> None:
    taken = derived_upstream_name("a.test", "/")
    value = taken.removeprefix("lbsync_")  # written as lbsync_<value>: exactly `taken`
    model = build(ctr("web-1", "a.test"), ctr("web-2", "b.test", upstream=value, ip="172.20.0.3"))
    names = {h.name: h.routes[0].upstream.name for h in model.hosts}
    assert names == {"a.test": taken, "b.test": derived_upstream_name("b.test", "/")}
    assert model.warnings == (
        f"group b.test/: upstream name {taken!r} is the derived name of group a.test/; "
        f"using {derived_upstream_name('b.test', '/')!r}",
    )
    # Upper case too: nginx compares upstream names ignoring case.
    model = build(
        ctr("web-1", "a.test"), ctr("web-2", "b.test", upstream=value.upper(), ip="172.20.0.3")
    )
    assert {h.name: h.routes[0].upstream.name for h in model.hosts} == names


def test_explicit_upstream_equal_to_an_unused_derived_name_falls_back() -> None:
    # a.test/ names its upstream itself, so its derived name is free; b.test's label picks
    # exactly that name anyway. Neither group may end up with the other's name.
    mine = derived_upstream_name("a.test", "/")
    model = build(
        ctr("web-1", "a.test", upstream="site"),
        ctr("web-2", "b.test", upstream=mine.removeprefix("lbsync_"), ip="172.20.0.3"),
    )
    names = {h.name: h.routes[0].upstream.name for h in model.hosts}
    assert names == {"a.test": "lbsync_site", "b.test": derived_upstream_name("b.test", "/")}
    assert len(model.warnings) == 1


def test_explicit_upstream_equal_to_its_own_derived_name_is_kept() -> None:
    own = derived_upstream_name("a.test", "/")
    model = build(ctr("web-1", "a.test", upstream=own.removeprefix("lbsync_")))
    assert [u.name for u in model.upstreams] == [own]
    assert model.warnings == ()


# Two paths of one host whose derived names clash: the first 8 hex digits of SHA-1 of
# "a.test/c23871" and "a.test/c57355" are equal (found by a birthday search in 0.1 s).
CLASH_PATHS = ("/c23871", "/c57355")


def test_clashing_derived_names_take_the_full_hash() -> None:
    one, two = CLASH_PATHS
    assert derived_upstream_name("a.test", one) == derived_upstream_name("a.test", two)
    model = build(
        ctr("victim", path=one), ctr("other", path=two, ip="172.20.0.3"), ctr("site", "b.test")
    )
    (host_a, host_b) = model.hosts
    routes = {r.path: r.upstream for r in host_a.routes}
    assert set(routes) == {one, two}, "each group keeps its route"
    assert routes[one].name == derived_upstream_name("a.test", one, full_hash=True)
    assert routes[two].name == derived_upstream_name("a.test", two, full_hash=True)
    assert len(routes[one].name) == len("lbsync_a_test_") + 40
    assert [s.container.name for s in routes[one].servers] == ["victim"]
    assert [s.container.name for s in routes[two].servers] == ["other"]
    # Groups that clash with nobody keep the short name.
    assert host_b.routes[0].upstream.name == derived_upstream_name("b.test", "/")
    assert len({u.name for u in model.upstreams}) == len(model.upstreams) == 3


def test_explicit_upstream_equal_to_a_full_hash_name_falls_back() -> None:
    one, two = CLASH_PATHS
    full = derived_upstream_name("a.test", one, full_hash=True)
    model = build(
        ctr("victim", path=one),
        ctr("other", path=two, ip="172.20.0.3"),
        ctr("thief", "b.test", upstream=full.removeprefix("lbsync_"), ip="172.20.0.4"),
    )
    by_group = {(h.name, r.path): r.upstream for h in model.hosts for r in h.routes}
    assert by_group[("a.test", one)].name == full
    assert [s.container.name for s in by_group[("a.test", one)].servers] == ["victim"]
    assert by_group[("b.test", "/")].name == derived_upstream_name("b.test", "/")


def test_paths_make_separate_groups() -> None:
    model = build(
        ctr("web-1", path="/"),
        ctr("api-1", path="/api", ip="172.20.0.3"),
        ctr("api-2", path="/api/", ip="172.20.0.4"),
    )
    (host,) = model.hosts
    assert [r.path for r in host.routes] == ["/api/", "/api", "/"]
    assert len(model.upstreams) == 3
    assert [[s.container.name for s in r.upstream.servers] for r in host.routes] == [
        ["api-2"],
        ["api-1"],
        ["web-1"],
    ]


def test_two_services_of_one_container_in_one_group() -> None:
    c = ctr(
        "web-1",
        labels={"lbsync.alt.host": "a.test", "lbsync.alt.port": "8080", "lbsync.alt.weight": "3"},
    )
    model = build(c)
    assert servers(model) == [("web-1", "172.20.0.2", 80, 1), ("web-1", "172.20.0.2", 8080, 3)]


def test_servers_sorted_by_container_name_then_port() -> None:
    multi = ctr(
        "web-a",
        port="9000",
        labels={"lbsync.alt.host": "a.test", "lbsync.alt.port": "80"},
    )
    model = build(ctr("web-b", port="81", ip="172.20.0.3"), multi, ctr("web-0", ip="172.20.0.4"))
    assert [(n, p) for n, _, p, _ in servers(model)] == [
        ("web-0", 80),
        ("web-a", 80),
        ("web-a", 9000),
        ("web-b", 81),
    ]


def test_same_service_port_twice_gives_one_server() -> None:
    c = ctr("web-1", labels={"lbsync.alt.host": "a.test", "lbsync.alt.port": "80"})
    assert servers(build(c)) == [("web-1", "172.20.0.2", 80, 1)]


def test_two_containers_with_one_name_still_sorted() -> None:
    one = ctr("web", port="81", id="2" * 64, ip="172.20.0.3")
    two = ctr("web", port="80", id="1" * 64)
    three = ctr("web", port="80", id="3" * 64, ip="172.20.0.4")
    for order in ([one, two, three], [three, one, two], [two, three, one]):
        model = build(*order)
        assert [(s.port, s.container.id[0]) for s in model.upstreams[0].servers] == [
            (80, "1"),
            (80, "3"),
            (81, "2"),
        ]
        assert [c.id[0] for c in model.containers] == ["1", "2", "3"]


def test_weight_is_per_server() -> None:
    model = build(ctr("web-1", weight="5"), ctr("web-2", weight="1", ip="172.20.0.3"))
    assert servers(model) == [("web-1", "172.20.0.2", 80, 5), ("web-2", "172.20.0.3", 80, 1)]


def test_fast_constructors_match_the_dataclasses() -> None:
    assert groups._SERVER_SET and groups._REF_SET and groups._DISCOVERED_SET
    ref = groups._ref("i" * 64, "web-1")
    assert ref == ContainerRef("i" * 64, "web-1") and hash(ref) == hash(ref)
    assert groups._server("172.20.0.2", 80, 3, ref) == Server("172.20.0.2", 80, 3, ref)
    c = ctr("web-1")
    services = parse_entry(c, D).parsed.services
    assert groups._discovered(c, services) == DiscoveredContainer(
        c.id, c.name, c.labels, c.health, services
    )
    with pytest.raises(FrozenInstanceError):
        ref.name = "x"  # type: ignore[misc]


def test_server_carries_container_ref() -> None:
    model = build(ctr("web-1"))
    server = model.upstreams[0].servers[0]
    assert server == Server("172.20.0.2", 80, 1, server.container)
    assert server.container.id == cid("web-1") and server.container.name == "web-1"


# --- ordering and determinism ----------------------------------------------------------


def fleet() -> list[Container]:
    cs: list[Container] = []
    for i, host in enumerate(["b.test", "a.test", "*.a.test", "c.test"]):
        for r in range(3):
            n = i * 3 + r
            cs.append(
                ctr(
                    f"{host.replace('*.', 'w-')}-{r}",
                    host,
                    port=str(8000 + (r % 2)),
                    path=["/", "/api", "/api/v2"][r],
                    created=n,
                    ip=f"172.20.{i}.{r + 2}",
                    state="exited" if n == 4 else "running",
                    health="starting" if n == 7 else "none",
                    upstream="shared" if r == 1 else None,
                    balance="least_conn" if n % 5 == 0 else None,
                )
            )
    cs.append(ctr("broken", host="bad host"))
    named = {"lbsync.x.host": "x.test", "lbsync.x.port": "81"}
    cs.append(ctr("two-nets", host=None, port=None, labels=named, networks=TWO_NETS))
    return cs


def test_ordering() -> None:
    model = build(*fleet())
    assert [h.name for h in model.hosts] == sorted(h.name for h in model.hosts)
    assert [u.name for u in model.upstreams] == sorted(u.name for u in model.upstreams)
    for host in model.hosts:
        paths = [r.path for r in host.routes]
        assert paths == sorted(paths, key=lambda p: (-len(p), p))
    for upstream in model.upstreams:
        keys = [(s.container.name, s.port) for s in upstream.servers]
        assert keys == sorted(keys)
    assert [(c.name, c.id) for c in model.containers] == sorted(
        (c.name, c.id) for c in model.containers
    )
    assert [(s.container.name, s.reason) for s in model.skips] == sorted(
        (s.container.name, s.reason) for s in model.skips
    )


def test_same_containers_any_order_same_model() -> None:
    cs = fleet()
    expected = build(*cs)
    rng = random.Random(1234)
    for _ in range(30):
        shuffled = cs[:]
        rng.shuffle(shuffled)
        assert build(*shuffled) == expected


def test_containers_sorted_by_name_then_id() -> None:
    model = build(ctr("b", id="2" * 64), ctr("a", id="9" * 64), ctr("b", id="1" * 64))
    assert [(c.name, c.id[0]) for c in model.containers] == [("a", "9"), ("b", "1"), ("b", "2")]


def test_routes_longest_path_first_then_lexicographic() -> None:
    model = build(
        *[
            ctr(f"c{i}", path=p, ip=f"172.20.0.{i + 2}")
            for i, p in enumerate(["/b", "/", "/a", "/ab"])
        ]
    )
    assert [r.path for r in model.hosts[0].routes] == ["/ab", "/a", "/b", "/"]


# --- parse_entry caching --------------------------------------------------------------------


def test_parse_entry_reuses_parse_on_state_change() -> None:
    first = parse_entry(ctr("web-1"), D)
    stopped = replace(first.container, state="exited", health="unhealthy")
    second = parse_entry(stopped, D, first)
    assert second.parsed is first.parsed and second.container is stopped
    assert parse_entry(stopped, D, second) is second


def test_parse_entry_reparses_on_label_or_config_change() -> None:
    first = parse_entry(ctr("web-1"), D)
    relabeled = ctr("web-1", "b.test")
    assert parse_entry(relabeled, D, first).parsed.services[0].hosts == ("b.test",)
    other = DiscoveryConfig(label_prefix="lb")
    assert parse_entry(first.container, other, first).parsed.enabled is False
    unknown = ParsedEntry(first.container, first.parsed)  # discovery unknown: re-parse
    assert parse_entry(first.container, D, unknown).discovery == D


# --- golden scenarios ---------------------------------------------------------------------


def scenario_fleet() -> RoutingModel:
    return build(*fleet(), proxy_networks=frozenset({"front"}))


def scenario_published() -> RoutingModel:
    return build(
        ctr("web-1", published=(PublishedPort(80, "0.0.0.0", 32768),)),
        ctr("web-2", published=(PublishedPort(80, "192.168.10.5", 32769),)),
        ctr("web-3"),
        ctr("host-net", "h.test", network_mode="host", networks=[("host", "")], port="9000"),
        discovery=DiscoveryConfig(address="published", host_address="192.168.10.2"),
    )


SCENARIOS = {"fleet": scenario_fleet, "published": scenario_published}


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_golden_scenario(name: str) -> None:
    path = GOLDEN_DIR / f"{name}.txt"
    actual = model_text(SCENARIOS[name]())
    if UPDATE_GOLDEN:
        path.write_text(actual, encoding="utf-8")
        return
    assert actual == path.read_text(encoding="utf-8"), (
        f"{path.name} differs; LBSYNC_UPDATE_GOLDEN=1 rewrites it"
    )
