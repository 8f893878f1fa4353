"""HAProxy: server slots for `reload: haproxy-runtime` (pure).

With `reload: haproxy-runtime` the builtin template renders every backend with a fixed
number of `server s<N>` lines, the slots: a filled slot is a real server, an empty one a
`disabled` placeholder. Servers then come and go through the runtime API (`set server`,
`set weight`) without a reload, as long as the structure (hosts, routes, backends, balance
methods and slot counts) stays the same. One pass:

    slots = RuntimeSlots.derive(previous, model, target.slots)  # previous: None at start
    slots.table       # who holds which slot of each backend
    slots.view        # the template's `slots` variable
    slots.structure   # changed -> reload; same -> runtime commands:
    commands = runtime_commands(previous.view, slots.view)

A container keeps its slot while it lives; new servers take the lowest free slots (in the
model's order: container name, then port); a backend that runs out doubles its slot count,
which changes the structure and so costs one reload. The same inputs always give the same
table. `derive` costs what changed since `previous`: an unchanged upstream keeps its slots
and their very objects.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field

from lbsync.model.types import Host, RoutingModel, Server, Upstream

# What an empty slot points at in the template (`server sN 127.0.0.1:1 disabled`).
PLACEHOLDER_ADDRESS = "127.0.0.1"
PLACEHOLDER_PORT = 1


SlotKey = tuple[str, int]  # (container id, port): who holds a slot


# --- slots (pure) ---------------------------------------------------------------------------


def slot_server_name(index: int) -> str:
    """The server name the template gives slot `index` (1-based): `s1`, `s2`, ..."""
    return f"s{index}"


@dataclass(frozen=True, slots=True)
class BackendSlots:
    """One backend's slots: how many there are and which (container id, port) holds which.

    `assigned` is sorted by slot index; indices run from 1 to `capacity`.
    """

    capacity: int
    assigned: tuple[tuple[int, SlotKey], ...] = ()

    def __post_init__(self) -> None:
        if self.capacity < 1:
            raise ValueError(f"a backend needs at least one slot, got {self.capacity}")
        indices = [index for index, _ in self.assigned]
        if indices != sorted(set(indices)):
            raise ValueError(f"slot indices must be unique and sorted, got {indices}")
        if indices and not (indices[0] >= 1 and indices[-1] <= self.capacity):
            raise ValueError(f"slot indices must be within 1..{self.capacity}, got {indices}")
        keys = [key for _, key in self.assigned]
        if len(set(keys)) != len(keys):
            raise ValueError("a server holds more than one slot")

    def as_dict(self) -> dict[int, SlotKey]:
        """slot index -> (container id, port)."""
        return dict(self.assigned)

    def slot_of(self, key: SlotKey) -> int | None:
        for index, holder in self.assigned:
            if holder == key:
                return index
        return None

    def free(self) -> list[int]:
        """The empty slots, lowest first."""
        taken = {index for index, _ in self.assigned}
        return [i for i in range(1, self.capacity + 1) if i not in taken]


@dataclass(frozen=True, slots=True)
class SlotTable:
    """Slots of every backend, by backend (upstream) name; sorted, hashable, comparable."""

    backends: tuple[tuple[str, BackendSlots], ...] = ()
    # By name, for lookups: a pass looks up every backend, and a scan each made that
    # quadratic (80 ms a pass at 1,000 backends).
    _by_name: dict[str, BackendSlots] = field(
        init=False, repr=False, compare=False, hash=False, default_factory=dict
    )

    def __post_init__(self) -> None:
        names = [name for name, _ in self.backends]
        if names != sorted(set(names)):
            raise ValueError("backends must be unique and sorted by name")
        self._by_name.update(self.backends)

    @classmethod
    def of(cls, backends: Mapping[str, BackendSlots]) -> SlotTable:
        return cls(tuple(sorted(backends.items())))

    def get(self, name: str) -> BackendSlots | None:
        return self._by_name.get(name)

    def __getitem__(self, name: str) -> BackendSlots:
        slots = self.get(name)
        if slots is None:
            raise KeyError(name)
        return slots

    def names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.backends)


@dataclass(frozen=True, slots=True)
class Slot:
    """One `server sN` line of a backend: `server` is None for an empty (disabled) slot."""

    index: int
    server: Server | None

    @property
    def name(self) -> str:
        """`s<index>`: what the builtin template writes and runtime commands address."""
        return slot_server_name(self.index)


# The template's `slots` variable: upstream name -> its slots, index 1..capacity.
SlotView = Mapping[str, tuple[Slot, ...]]

HostsKey = tuple[tuple[str, tuple[tuple[str, str], ...]], ...]  # (name, ((path, upstream), ..))
BackendsKey = tuple[tuple[str, str, int], ...]  # (name, balance, slot count)
StructureKey = tuple[HostsKey, BackendsKey]


def _key(server: Server) -> SlotKey:
    return (server.container.id, server.port)


def _unique_servers(servers: Iterable[Server]) -> list[Server]:
    """The servers in model order; a repeated (container, port) keeps its first entry."""
    seen: set[SlotKey] = set()
    unique = []
    for server in servers:
        if _key(server) not in seen:
            seen.add(_key(server))
            unique.append(server)
    return unique


def assign_backend(
    old: BackendSlots | None, upstream: Upstream, slots_per_backend: int
) -> BackendSlots:
    """Give every server of `upstream` a slot: `old` is what the backend had (None: a new
    backend).

    A server, keyed by (container id, port), that held a slot in `old` keeps it (its address
    and weight may change); servers new to the backend take the lowest free slots, in
    arrival order: earlier passes first, and within one pass the model's order (container
    name, then port). When the backend runs out its capacity doubles until everything fits.
    A backend starts with `slots_per_backend` slots and never shrinks while it exists (a
    larger `slots_per_backend` raises it). Deterministic: the same inputs give the same slots.
    """
    capacity = max(slots_per_backend, old.capacity if old is not None else 0)
    servers = _unique_servers(upstream.servers)
    live = {_key(s) for s in servers}
    kept = {index: key for index, key in (old.assigned if old else ()) if key in live}
    held = set(kept.values())
    newcomers = [_key(s) for s in servers if _key(s) not in held]
    while len(kept) + len(newcomers) > capacity:
        capacity *= 2
    free = (i for i in range(1, capacity + 1) if i not in kept)
    assigned = dict(kept)
    for key in newcomers:
        assigned[next(free)] = key
    return BackendSlots(capacity, tuple(sorted(assigned.items())))


def backend_view(slots: BackendSlots, upstream: Upstream) -> tuple[Slot, ...]:
    """The template's slots of one upstream: 1..capacity, each with its Server or None.

    `slots` must hold every server of `upstream` (as `assign_backend` gives them): a server
    without a slot is a ValueError.
    """
    by_key = {_key(s): s for s in reversed(upstream.servers)}  # first entry wins
    holders = slots.as_dict()
    missing = set(by_key) - set(holders.values())
    if missing:
        raise ValueError(f"upstream {upstream.name!r}: servers without a slot: {missing}")
    return tuple(
        Slot(index, by_key.get(holders[index]) if index in holders else None)
        for index in range(1, slots.capacity + 1)
    )


@dataclass(frozen=True, slots=True, eq=False)
class SlottedUpstream:
    """An upstream with its server slots: what `builtin:haproxy` renders one backend from
    (`upstreams | with_slots(slots)`). Kept from pass to pass while neither changed, so
    `render_each` re-renders only the backends whose slots moved."""

    upstream: Upstream
    slots: tuple[Slot, ...]


class SlotMap(Mapping[str, tuple[Slot, ...]]):
    """The template's `slots` (upstream name -> its slots), holding each upstream paired
    with its slots for `with_slots`."""

    __slots__ = ("_pairs",)

    def __init__(self, pairs: Mapping[str, SlottedUpstream]) -> None:
        self._pairs = pairs

    def __getitem__(self, name: str) -> tuple[Slot, ...]:
        return self._pairs[name].slots

    def __iter__(self) -> Iterator[str]:
        return iter(self._pairs)

    def __len__(self) -> int:
        return len(self._pairs)

    def pair(self, name: str) -> SlottedUpstream | None:
        return self._pairs.get(name)

    def paired(self, upstream: Upstream) -> SlottedUpstream:
        pair = self._pairs.get(upstream.name)
        if pair is None or pair.upstream is not upstream:
            return SlottedUpstream(upstream, self[upstream.name])
        return pair


def with_slots(upstreams: Iterable[Upstream], slots: SlotView) -> tuple[SlottedUpstream, ...]:
    """`{{ upstreams | with_slots(slots) }}`: each upstream paired with its slots."""
    if isinstance(slots, SlotMap):
        return tuple(map(slots.paired, upstreams))
    return tuple(SlottedUpstream(u, tuple(slots[u.name])) for u in upstreams)


@dataclass(frozen=True, slots=True)
class RuntimeSlots:
    """One pass's slots: which (container id, port) holds which slot of each backend
    (`table`), the template's `slots` (`view`) and what a runtime update cannot change
    (`structure`), for `model` with `per_backend` slots to start a backend with.

    Equal structures: the servers can move by runtime commands; different ones: the written
    config must be reloaded. The structure holds hosts and their routes (path, upstream
    name), and each backend's name, balance method and slot count. (Target settings such as
    `listen` are not in it: a changed target config needs a reload too.)
    """

    table: SlotTable
    view: SlotMap
    structure: StructureKey
    per_backend: int
    model: RoutingModel  # the model these slots were derived for

    @classmethod
    def derive(
        cls, previous: RuntimeSlots | None, model: RoutingModel, per_backend: int
    ) -> RuntimeSlots:
        """The slots for `model` after `previous` (None: the first pass, an empty table).

        Every backend is `assign_backend` over what it held in `previous`; backends that
        left the model are dropped. At the cost of what changed: an upstream that is the same
        object as last time has the same servers, so it keeps its slots and their very
        objects (`SlottedUpstream`, `Slot` tuple), which `render_each` and
        `runtime_commands` skip; the same model gives back `previous` itself.
        """
        if per_backend < 1:
            raise ValueError(f"slots_per_backend must be at least 1, got {per_backend}")
        same_size = previous is not None and previous.per_backend == per_backend
        if same_size and previous is not None and model is previous.model:
            return previous
        backends: dict[str, BackendSlots] = {}
        fresh: dict[str, SlottedUpstream] = {}
        for upstream in model.upstreams:
            name = upstream.name
            old = previous.table.get(name) if previous is not None else None
            pair = previous.view.pair(name) if same_size and previous is not None else None
            if pair is not None and pair.upstream is upstream and old is not None:
                backends[name], fresh[name] = old, pair
                continue
            slots = assign_backend(old, upstream, per_backend)
            backends[name] = slots
            fresh[name] = SlottedUpstream(upstream, backend_view(slots, upstream))
        table = SlotTable.of(backends)
        if previous is not None and model.hosts is previous.model.hosts:
            hosts_key = previous.structure[0]  # the same hosts: the same routes
        else:
            hosts_key = _hosts_structure(model.hosts)
        backends_key = tuple(
            (u.name, u.balance, backends[u.name].capacity) for u in model.upstreams
        )
        structure = (hosts_key, backends_key)
        return cls(table, SlotMap(fresh), structure, per_backend, model)


def _hosts_structure(hosts: Iterable[Host]) -> HostsKey:
    """The hosts part of the structure: names and routes (path, upstream name)."""
    return tuple(
        (host.name, tuple((route.path, route.upstream.name) for route in host.routes))
        for host in hosts
    )


def _endpoint(server: Server) -> tuple[str, int, int]:
    return (server.address, server.port, server.weight)


def runtime_commands(old_view: SlotView, new_view: SlotView) -> list[str]:
    """The runtime API commands that turn a running HAProxy showing `old_view` into
    `new_view` (both `RuntimeSlots.view`s, with the same structure).

    Emptied slots come first, so a leaving server stops getting new requests before anything
    else happens: `set server B/sN state maint`, then its address back to the placeholder
    the written file shows (`127.0.0.1:1`). Then every slot that is newly filled, changed
    hands, or whose address, port or weight changed: `set server B/sN addr A port P`,
    `set weight B/sN W`, `set server B/sN state ready`.
    A slot whose server is unchanged gets nothing. Backends in sorted order, slots by index.
    Raises ValueError when the two views differ in backends or slot counts (that needs a
    reload, see `RuntimeSlots.structure`).
    """
    if sorted(old_view) != sorted(new_view):
        raise ValueError(
            f"backends differ ({sorted(set(old_view) ^ set(new_view))}): reload instead"
        )
    drains: list[str] = []
    fills: list[str] = []
    for backend in sorted(new_view):
        old_slots, new_slots = old_view[backend], new_view[backend]
        if old_slots is new_slots:
            continue  # kept from the last pass: nothing in it moved
        if [s.index for s in old_slots] != [s.index for s in new_slots]:
            raise ValueError(
                f"backend {backend!r} changed from {len(old_slots)} to {len(new_slots)} "
                "slots: reload instead"
            )
        for old, new in zip(old_slots, new_slots, strict=True):
            target = f"{backend}/{new.name}"
            if new.server is None:
                if old.server is not None:
                    drains.append(f"set server {target} state maint")
                    drains.append(
                        f"set server {target} addr {PLACEHOLDER_ADDRESS} port {PLACEHOLDER_PORT}"
                    )
                continue
            s = new.server
            if old.server is not None and _endpoint(old.server) == _endpoint(s):
                continue
            # An IPv6 address goes without brackets: `addr fd00::2 port 8080`.
            fills.append(f"set server {target} addr {s.address} port {s.port}")
            fills.append(f"set weight {target} {s.weight}")
            fills.append(f"set server {target} state ready")
    return drains + fills
