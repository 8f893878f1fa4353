"""HAProxy: server slots for `reload: haproxy-runtime`, and the master CLI and runtime API.

Slots (pure). With `reload: haproxy-runtime` the builtin template renders every backend with
a fixed number of `server s<N>` lines, the slots: a filled slot is a real server, an empty one
a `disabled` placeholder. Servers then come and go through the runtime API (`set server`,
`set weight`) without a reload, as long as the structure (hosts, routes, backends, balance
methods and slot counts) stays the same:

    table = assign_slots(previous_table, model, target.slots)
    view = slot_view(table, model)        # the template's `slots` variable
    key = structure_key(model, table)     # changed -> reload; same -> runtime commands
    commands = runtime_commands(old_view, view)

A container keeps its slot while it lives; new servers take the lowest free slots (in the
model's order: container name, then port); a backend that runs out doubles its slot count,
which changes the structure and so costs one reload. The same inputs always give the same
table.
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


def assign_slots(
    previous: SlotTable | None, model: RoutingModel, slots_per_backend: int
) -> SlotTable:
    """Give every server of every upstream in `model` a slot.

    A server, keyed by (container id, port), that held a slot in `previous` keeps it (its
    address and weight may change); servers new to the backend take the lowest free slots, in
    arrival order: earlier passes first, and within one pass the model's order (container
    name, then port). When a backend runs out its capacity
    doubles until everything fits. A backend starts with `slots_per_backend` slots and never
    shrinks while it exists (a larger `slots_per_backend` raises it). Backends that left the
    model are dropped. Deterministic: the same inputs give the same table.
    """
    if slots_per_backend < 1:
        raise ValueError(f"slots_per_backend must be at least 1, got {slots_per_backend}")
    return SlotTable.of(
        {
            upstream.name: assign_backend(
                previous.get(upstream.name) if previous is not None else None,
                upstream,
                slots_per_backend,
            )
            for upstream in model.upstreams
        }
    )


def assign_backend(
    old: BackendSlots | None, upstream: Upstream, slots_per_backend: int
) -> BackendSlots:
    """One backend's part of `assign_slots`: `old` is what it had (None: a new backend)."""
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


def slot_view(table: SlotTable, model: RoutingModel) -> dict[str, tuple[Slot, ...]]:
    """The template's `slots`: for each upstream, slots 1..capacity with their Server or None.

    `table` must come from `assign_slots(..., model, ...)`: a server of the model without a
    slot, or an upstream missing from the table, is a ValueError.
    """
    view: dict[str, tuple[Slot, ...]] = {}
    for upstream in model.upstreams:
        slots = table.get(upstream.name)
        if slots is None:
            raise ValueError(f"upstream {upstream.name!r} has no slots in the table")
        view[upstream.name] = backend_view(slots, upstream)
    return view


def backend_view(slots: BackendSlots, upstream: Upstream) -> tuple[Slot, ...]:
    """One upstream's part of `slot_view`: its slots 1..capacity."""
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


def structure_key(model: RoutingModel, table: SlotTable) -> StructureKey:
    """What a runtime update cannot change: hosts and their routes, backends, their balance
    methods and slot counts. Equal keys: the servers can move by runtime commands; different
    keys: the written config must be reloaded. (Target settings such as `listen` are not in
    it: a changed target config needs a reload too.)"""
    backends = tuple(
        (upstream.name, upstream.balance, table[upstream.name].capacity)
        for upstream in model.upstreams
    )
    return (hosts_structure(model.hosts), backends)


def hosts_structure(hosts: Iterable[Host]) -> HostsKey:
    """The hosts part of `structure_key`: names and routes (path, upstream name)."""
    return tuple(
        (host.name, tuple((route.path, route.upstream.name) for route in host.routes))
        for host in hosts
    )


def _endpoint(server: Server) -> tuple[str, int, int]:
    return (server.address, server.port, server.weight)


def runtime_commands(old_view: SlotView, new_view: SlotView) -> list[str]:
    """The runtime API commands that turn a running HAProxy showing `old_view` into
    `new_view` (both from `slot_view`, with the same structure).

    Emptied slots come first, so a leaving server stops getting new requests before anything
    else happens: `set server B/sN state maint`, then its address back to the placeholder
    the written file shows (`127.0.0.1:1`). Then every slot that is newly filled, changed
    hands, or whose address, port or weight changed: `set server B/sN addr A port P`,
    `set weight B/sN W`, `set server B/sN state ready`.
    A slot whose server is unchanged gets nothing. Backends in sorted order, slots by index.
    Raises ValueError when the two views differ in backends or slot counts (that needs a
    reload, see structure_key).
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
