"""Server slots for `reload: haproxy-runtime` (lbsync/model/slots.py): pure table tests.

RuntimeSlots.derive: its table: a container keeps its slot while it lives, newcomers take the
lowest free slots in model order, a full backend doubles, a removal frees its slot, the result
is deterministic; its view: every slot with its server; its structure: changes only with
hosts, routes, backends, balance or slot counts; derived pass after pass it equals the full
derivation from the previous table. runtime_commands: the runtime API commands between two
slot views.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lbsync.config.schema import TargetConfig
from lbsync.model.slots import (
    BackendSlots,
    RuntimeSlots,
    Slot,
    SlotMap,
    SlotTable,
    backend_view,
    runtime_commands,
    slot_server_name,
)
from lbsync.model.types import ContainerRef, Host, Route, RoutingModel, Server, Upstream
from lbsync.render.fragments import FragmentCache
from lbsync.render.templates import load_template, render

# --- builders -------------------------------------------------------------------------------


def cid(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()


def server(name: str, port: int = 8080, weight: int = 1, address: str | None = None) -> Server:
    """A server for container `name`; its address is derived from the name unless given."""
    if address is None:
        address = f"172.18.0.{int(cid(name)[:2], 16) % 250 + 2}"
    return Server(
        address=address, port=port, weight=weight, container=ContainerRef(cid(name), name)
    )


def upstream(name: str, *servers: Server, balance: str = "round_robin") -> Upstream:
    ordered = sorted(servers, key=lambda s: (s.container.name, s.port))
    return Upstream(name=name, balance=balance, servers=tuple(ordered))


def routing(*upstreams: Upstream, hosts: Sequence[Host] | None = None) -> RoutingModel:
    """A model with one host per upstream (`<name>.test` -> it) unless hosts are given."""
    if hosts is None:
        hosts = [Host(f"{u.name}.test", (Route("/", u),)) for u in upstreams]
    return RoutingModel(
        hosts=tuple(sorted(hosts, key=lambda h: h.name)),
        upstreams=tuple(sorted(upstreams, key=lambda u: u.name)),
        containers=(),
    )


Members = Mapping[int, str | tuple[str, int]]  # slot -> container name, or (name, port)


def table(spec: Mapping[str, tuple[int, Members]]) -> SlotTable:
    """{backend: (capacity, {slot: container name or (name, port)})} -> SlotTable."""
    backends = {}
    for name, (capacity, members) in spec.items():
        assigned = []
        for index, who in sorted(members.items()):
            container, port = (who, 8080) if isinstance(who, str) else who
            assigned.append((index, (cid(container), port)))
        backends[name] = BackendSlots(capacity, tuple(assigned))
    return SlotTable.of(backends)


_NO_MODEL = RoutingModel(hosts=(), upstreams=(), containers=())


def holding(previous: SlotTable | None, per_backend: int = 4) -> RuntimeSlots | None:
    """A previous pass that left `previous` and nothing derive could reuse (no view, no
    model of its own): `derive` from it assigns and views every backend afresh, as the
    full, non-incremental derivation does."""
    if previous is None:
        return None
    return RuntimeSlots(previous, SlotMap({}), ((), ()), per_backend, _NO_MODEL)


def derive(previous: SlotTable | None, model: RoutingModel, per_backend: int) -> RuntimeSlots:
    """The slots for `model` after a pass that left the table `previous` (None: the first)."""
    return RuntimeSlots.derive(holding(previous, per_backend), model, per_backend)


# --- RuntimeSlots.derive: the table -----------------------------------------------------------


@dataclass(frozen=True)
class Case:
    previous: Mapping[str, tuple[int, Members]] | None
    model: Mapping[str, Sequence[str | tuple[str, int]]]  # backend -> containers (or (c, port))
    expected: Mapping[str, tuple[int, Members]]
    slots: int = 4


def _model_of(spec: Mapping[str, Sequence[str | tuple[str, int]]]) -> RoutingModel:
    ups = []
    for name, members in spec.items():
        servers = [server(m) if isinstance(m, str) else server(m[0], port=m[1]) for m in members]
        ups.append(upstream(name, *servers))
    return routing(*ups)


ASSIGN_CASES: dict[str, Case] = {
    "first pass: container name order": Case(
        previous=None,
        model={"web": ["web-b", "web-a", "web-c"]},
        expected={"web": (4, {1: "web-a", 2: "web-b", 3: "web-c"})},
    ),
    "empty backend keeps its slots": Case(
        previous=None,
        model={"down": []},
        expected={"down": (4, {})},
    ),
    "a container keeps its slot": Case(
        previous={"web": (4, {3: "web-a", 1: "web-b"})},
        model={"web": ["web-a", "web-b"]},
        expected={"web": (4, {1: "web-b", 3: "web-a"})},
    ),
    "a newcomer takes the lowest free slot": Case(
        previous={"web": (4, {1: "web-a", 3: "web-c"})},
        model={"web": ["web-a", "web-c", "web-z"]},
        expected={"web": (4, {1: "web-a", 2: "web-z", 3: "web-c"})},
    ),
    "newcomers fill free slots in model order": Case(
        previous={"web": (4, {2: "web-m"})},
        model={"web": ["web-m", "web-y", "web-x", "web-z"]},
        expected={"web": (4, {1: "web-x", 2: "web-m", 3: "web-y", 4: "web-z"})},
    ),
    "a removal frees its slot, others stay": Case(
        previous={"web": (4, {1: "web-a", 2: "web-b", 3: "web-c"})},
        model={"web": ["web-a", "web-c"]},
        expected={"web": (4, {1: "web-a", 3: "web-c"})},
    ),
    "a freed slot goes to the next newcomer": Case(
        previous={"web": (4, {1: "web-a", 2: "web-b", 3: "web-c"})},
        model={"web": ["web-a", "web-c", "web-d"]},
        expected={"web": (4, {1: "web-a", 2: "web-d", 3: "web-c"})},
    ),
    "a full backend doubles": Case(
        previous={"web": (4, {1: "w1", 2: "w2", 3: "w3", 4: "w4"})},
        model={"web": ["w1", "w2", "w3", "w4", "w5"]},
        expected={"web": (8, {1: "w1", 2: "w2", 3: "w3", 4: "w4", 5: "w5"})},
    ),
    "it doubles until everything fits": Case(
        previous=None,
        model={"web": [f"w{i:02}" for i in range(1, 10)]},
        slots=2,
        expected={"web": (16, {i: f"w{i:02}" for i in range(1, 10)})},
    ),
    "capacity never shrinks": Case(
        previous={"web": (8, {5: "w5"})},
        model={"web": ["w5"]},
        expected={"web": (8, {5: "w5"})},
    ),
    "a larger slots setting raises capacity": Case(
        previous={"web": (4, {1: "w1"})},
        model={"web": ["w1"]},
        slots=6,
        expected={"web": (6, {1: "w1"})},
    ),
    "a gone backend is dropped, a new one starts fresh": Case(
        previous={"old": (8, {1: "o1"}), "web": (4, {2: "w2"})},
        model={"web": ["w2"], "new": ["n1"]},
        expected={"new": (4, {1: "n1"}), "web": (4, {2: "w2"})},
    ),
    "same container, two ports: two slots": Case(
        previous={"web": (4, {2: ("w1", 9000)})},
        model={"web": [("w1", 8080), ("w1", 9000)]},
        expected={"web": (4, {1: ("w1", 8080), 2: ("w1", 9000)})},
    ),
    "a container moving to another backend gets a slot there": Case(
        previous={"a": (4, {1: "x"}), "b": (4, {})},
        model={"a": [], "b": ["x"]},
        expected={"a": (4, {}), "b": (4, {1: "x"})},
    ),
}


@pytest.mark.parametrize("name", list(ASSIGN_CASES))
def test_derive_assigns_slots(name: str) -> None:
    case = ASSIGN_CASES[name]
    previous = table(case.previous) if case.previous is not None else None
    got = derive(previous, _model_of(case.model), case.slots).table
    assert got == table(case.expected)


def test_derived_slots_are_deterministic() -> None:
    spec = {"web": [f"w{i}" for i in range(7)], "api": ["a1", "a2"], "down": []}
    previous = table({"web": (4, {4: "w3", 2: "w0"}), "api": (4, {3: "a2"})})
    results = {derive(previous, _model_of(spec), 4).table for _ in range(5)}
    assert len(results) == 1  # hashable and equal every time
    # The servers' order inside the model does not matter, only their names.
    shuffled = routing(
        upstream("web", *reversed([server(f"w{i}") for i in range(7)])),
        upstream("api", server("a2"), server("a1")),
        upstream("down"),
    )
    assert derive(previous, shuffled, 4).table == results.pop()


def test_derive_rejects_zero_slots() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        RuntimeSlots.derive(None, _model_of({"web": ["w1"]}), 0)


def test_a_container_keeps_its_slot_through_churn() -> None:
    """Many passes of arrivals and departures: a survivor never moves."""
    current: RuntimeSlots | None = None
    alive: list[str] = []
    seen: dict[str, int] = {}
    for step in range(40):
        if step % 3 == 2 and alive:
            alive.pop(step % len(alive))
        else:
            alive.append(f"c{step:02}")
        current = RuntimeSlots.derive(current, _model_of({"web": alive}), 2)
        slots = current.table["web"]
        for name in alive:
            index = slots.slot_of((cid(name), 8080))
            assert index is not None
            assert seen.setdefault(name, index) == index, f"{name} moved at step {step}"
        assert len(slots.assigned) == len(alive)


def test_backend_slots_validate() -> None:
    with pytest.raises(ValueError, match="at least one slot"):
        BackendSlots(0)
    with pytest.raises(ValueError, match=r"within 1\.\.2"):
        BackendSlots(2, ((3, ("x", 1)),))
    with pytest.raises(ValueError, match="unique and sorted"):
        BackendSlots(4, ((2, ("x", 1)), (1, ("y", 1))))
    with pytest.raises(ValueError, match="more than one slot"):
        BackendSlots(4, ((1, ("x", 1)), (2, ("x", 1))))
    with pytest.raises(ValueError, match="sorted by name"):
        SlotTable((("b", BackendSlots(1)), ("a", BackendSlots(1))))
    slots = BackendSlots(4, ((1, ("x", 1)), (3, ("y", 1))))
    assert slots.free() == [2, 4]
    assert slots.as_dict() == {1: ("x", 1), 3: ("y", 1)}
    assert slots.slot_of(("y", 1)) == 3 and slots.slot_of(("z", 1)) is None


# --- RuntimeSlots.derive: the view ------------------------------------------------------------


def test_the_view_lists_every_slot_with_its_server() -> None:
    a, b = server("web-a", weight=3), server("web-b", address="fd00::2")
    model = routing(upstream("web", a, b), upstream("down"))
    slots = table({"web": (4, {2: "web-a", 4: "web-b"}), "down": (2, {})})
    derived = derive(slots, model, 2)
    assert derived.table == slots  # kept as it was: the view below is this table's
    view = derived.view
    assert list(view) == ["down", "web"]
    assert view["web"] == (Slot(1, None), Slot(2, a), Slot(3, None), Slot(4, b))
    assert view["down"] == (Slot(1, None), Slot(2, None))
    assert [s.name for s in view["web"]] == ["s1", "s2", "s3", "s4"]
    assert slot_server_name(12) == "s12"


def test_a_backend_view_needs_a_matching_table() -> None:
    web = upstream("web", server("web-a"))
    with pytest.raises(ValueError, match="without a slot"):
        backend_view(table({"web": (4, {1: "web-z"})})["web"], web)


# --- RuntimeSlots.derive: the structure -------------------------------------------------------


def _key_of(model: RoutingModel, previous: SlotTable | None = None, slots: int = 4) -> object:
    return derive(previous, model, slots).structure


def test_the_structure_ignores_servers() -> None:
    base = routing(upstream("web", server("w1")), upstream("api"))
    churned = routing(
        upstream("web", server("w2", weight=7), server("w3", address="10.0.0.9")),
        upstream("api", server("a1", port=9000)),
    )
    assert _key_of(base) == _key_of(churned)


STRUCTURE_CHANGES: dict[str, RoutingModel] = {
    "a host added": routing(
        upstream("web", server("w1")),
        hosts=[
            Host("web.test", (Route("/", upstream("web", server("w1"))),)),
            Host("www.test", (Route("/", upstream("web", server("w1"))),)),
        ],
    ),
    "a route added": routing(
        upstream("web", server("w1")),
        upstream("api"),
        hosts=[
            Host(
                "web.test",
                (Route("/api", upstream("api")), Route("/", upstream("web", server("w1")))),
            ),
        ],
    ),
    "a backend renamed": routing(upstream("site", server("w1"))),
    "balance changed": routing(upstream("web", server("w1"), balance="least_conn")),
    "capacity grew": routing(upstream("web", *(server(f"w{i}") for i in range(5)))),
}


@pytest.mark.parametrize("name", list(STRUCTURE_CHANGES))
def test_the_structure_changes(name: str) -> None:
    base = RuntimeSlots.derive(None, routing(upstream("web", server("w1"))), 4)
    changed = STRUCTURE_CHANGES[name]
    assert base.structure != _key_of(changed, base.table)
    assert base.structure != RuntimeSlots.derive(base, changed, 4).structure


def test_the_structure_is_hashable_and_stable() -> None:
    model = routing(upstream("web", server("w1")), upstream("api", server("a1")))
    assert hash(_key_of(model)) == hash(_key_of(model))


# --- runtime_commands -------------------------------------------------------------------------


def _view(spec: Mapping[str, tuple[int, Mapping[int, Server]]]) -> dict[str, tuple[Slot, ...]]:
    return {
        name: tuple(Slot(i, members.get(i)) for i in range(1, capacity + 1))
        for name, (capacity, members) in spec.items()
    }


A = server("web-a", 8080, weight=2, address="172.18.0.2")
B = server("web-b", 3000, weight=1, address="172.18.0.3")
C6 = server("web-c", 8443, weight=256, address="fd00:dead:beef::2")

RUNTIME_CASES: dict[
    str,
    tuple[
        Mapping[str, tuple[int, Mapping[int, Server]]],
        Mapping[str, tuple[int, Mapping[int, Server]]],
        list[str],
    ],
] = {
    "nothing changed": (
        {"web": (2, {1: A})},
        {"web": (2, {1: A})},
        [],
    ),
    "a server arrives": (
        {"web": (2, {1: A})},
        {"web": (2, {1: A, 2: B})},
        [
            "set server web/s2 addr 172.18.0.3 port 3000",
            "set weight web/s2 1",
            "set server web/s2 state ready",
        ],
    ),
    "a server leaves": (
        {"web": (2, {1: A, 2: B})},
        {"web": (2, {2: B})},
        ["set server web/s1 state maint", "set server web/s1 addr 127.0.0.1 port 1"],
    ),
    "a weight changes": (
        {"web": (2, {1: A})},
        {"web": (2, {1: server("web-a", 8080, weight=9, address="172.18.0.2")})},
        [
            "set server web/s1 addr 172.18.0.2 port 8080",
            "set weight web/s1 9",
            "set server web/s1 state ready",
        ],
    ),
    "a restarted container got a new address": (
        {"web": (2, {1: A})},
        {"web": (2, {1: server("web-a", 8080, weight=2, address="172.18.0.99")})},
        [
            "set server web/s1 addr 172.18.0.99 port 8080",
            "set weight web/s1 2",
            "set server web/s1 state ready",
        ],
    ),
    "a slot changes hands": (
        {"web": (2, {1: A})},
        {"web": (2, {1: B})},
        [
            "set server web/s1 addr 172.18.0.3 port 3000",
            "set weight web/s1 1",
            "set server web/s1 state ready",
        ],
    ),
    "ipv6 without brackets": (
        {"web": (1, {})},
        {"web": (1, {1: C6})},
        [
            "set server web/s1 addr fd00:dead:beef::2 port 8443",
            "set weight web/s1 256",
            "set server web/s1 state ready",
        ],
    ),
    "drains first, across backends, backends sorted": (
        {"b-api": (2, {1: B}), "a-web": (2, {2: A})},
        {"b-api": (2, {2: A}), "a-web": (2, {1: B})},
        [
            "set server a-web/s2 state maint",
            "set server a-web/s2 addr 127.0.0.1 port 1",
            "set server b-api/s1 state maint",
            "set server b-api/s1 addr 127.0.0.1 port 1",
            "set server a-web/s1 addr 172.18.0.3 port 3000",
            "set weight a-web/s1 1",
            "set server a-web/s1 state ready",
            "set server b-api/s2 addr 172.18.0.2 port 8080",
            "set weight b-api/s2 2",
            "set server b-api/s2 state ready",
        ],
    ),
    "the last server leaves": (
        {"web": (1, {1: A})},
        {"web": (1, {})},
        ["set server web/s1 state maint", "set server web/s1 addr 127.0.0.1 port 1"],
    ),
}


@pytest.mark.parametrize("name", list(RUNTIME_CASES))
def test_runtime_commands(name: str) -> None:
    old, new, expected = RUNTIME_CASES[name]
    assert runtime_commands(_view(old), _view(new)) == expected


def test_runtime_commands_refuse_a_structure_change() -> None:
    with pytest.raises(ValueError, match="reload instead"):
        runtime_commands(_view({"web": (2, {})}), _view({"web": (4, {})}))
    with pytest.raises(ValueError, match="reload instead"):
        runtime_commands(_view({"web": (2, {})}), _view({"api": (2, {})}))


def test_runtime_commands_from_derived_slots() -> None:
    """The whole pure flow: two passes, the names the commands use are the template's."""
    first = routing(upstream("web", server("web-a"), server("web-b")))
    s1 = RuntimeSlots.derive(None, first, 4)
    second = routing(upstream("web", server("web-b"), server("web-c")))
    s2 = RuntimeSlots.derive(s1, second, 4)
    assert s1.structure == s2.structure
    c = second.upstreams[0].servers[1]
    # web-a left and web-c took its slot (the lowest free one) in the same pass.
    assert s2.table["web"].as_dict() == {1: (cid("web-c"), 8080), 2: (cid("web-b"), 8080)}
    assert runtime_commands(s1.view, s2.view) == [
        f"set server web/s1 addr {c.address} port 8080",
        "set weight web/s1 1",
        "set server web/s1 state ready",
    ]


# --- RuntimeSlots.derive pass after pass: the full derivation at the cost of what changed -----

BACKENDS = ["a", "b", "c"]
MEMBERS = ["app-1", "app-2", "app-3", "app-4", "app-5"]
step_strategy = st.tuples(
    st.fixed_dictionaries(
        {name: st.none() | st.frozensets(st.sampled_from(MEMBERS), max_size=5) for name in BACKENDS}
    ),
    st.sampled_from([2, 4]),  # slots per backend (a config reload may change it)
    st.booleans(),  # whether the pass succeeded (the daemon then keeps its slots)
)


@settings(max_examples=300, deadline=None)
@given(st.lists(step_strategy, min_size=1, max_size=15))
def test_derive_equals_the_tables_from_scratch(
    history: list[tuple[dict[str, frozenset[str] | None], int, bool]],
) -> None:
    previous: RuntimeSlots | None = None
    objects: dict[str, Upstream] = {}  # reused while equal, as ModelBuilder does
    for members, per_backend, applied in history:
        ups = []
        for name, names in members.items():
            if names is None:
                continue
            fresh = upstream(name, *(server(n) for n in sorted(names)))
            known = objects.get(name)
            ups.append(known if known == fresh else fresh)
        objects = {u.name: u for u in ups}
        model = routing(*ups)
        derived = RuntimeSlots.derive(previous, model, per_backend)
        full = derive(previous.table if previous else None, model, per_backend)
        assert derived.table == full.table
        assert dict(derived.view) == dict(full.view)
        assert derived.structure == full.structure
        if previous is not None and previous.per_backend == per_backend:
            for u in model.upstreams:
                before = previous.view.pair(u.name)
                if before is not None and before.upstream is u:
                    assert derived.view[u.name] is previous.view[u.name]  # kept, not rebuilt
        if applied:
            previous = derived


def test_a_pass_re_renders_only_the_backend_whose_slots_moved() -> None:
    target = TargetConfig(
        name="haproxy",
        template="builtin:haproxy",
        output=Path("haproxy.cfg"),
        reload="haproxy-runtime",
        runtime_socket=Path("/run/haproxy/admin.sock"),
        check="none",
    )
    template = load_template(target)
    ups = [upstream(f"u{i}", server(f"app-{i}")) for i in range(5)]
    first = routing(*ups)
    first_slots = RuntimeSlots.derive(None, first, 4)
    fragments = FragmentCache()
    render(template, first, target, slots=first_slots.view, fragments=fragments)
    ups[2] = upstream("u2", server("app-2"), server("app-9"))
    second = RoutingModel(first.hosts, tuple(ups), ())
    slots = RuntimeSlots.derive(first_slots, second, 4)
    before = fragments.rendered
    text = render(template, second, target, slots=slots.view, fragments=fragments)
    assert fragments.rendered - before == 1
    fresh = dict(derive(first_slots.table, second, 4).view)  # a plain mapping of new objects
    assert text == render(template, second, target, slots=fresh)
