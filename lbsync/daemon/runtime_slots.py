"""haproxy-runtime: the slots the running HAProxy has, derived pass by pass from the model."""

from __future__ import annotations

from dataclasses import dataclass

from lbsync.model.slots import (
    BackendSlots,
    SlotMap,
    SlotTable,
    SlottedUpstream,
    StructureKey,
    assign_backend,
    backend_view,
    hosts_structure,
)
from lbsync.model.types import RoutingModel


@dataclass(frozen=True, slots=True)
class RuntimeSlots:
    """haproxy-runtime: which container holds which server slot of each backend.

    `derive` is `assign_slots` + `slot_view` + `structure_key` at the cost of what changed: an
    upstream that is the same object as last time has the same servers, so it keeps its
    slots (and their very objects, which `render_each` and `runtime_commands` skip).
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
            hosts_key = hosts_structure(model.hosts)
        backends_key = tuple(
            (u.name, u.balance, backends[u.name].capacity) for u in model.upstreams
        )
        structure = (hosts_key, backends_key)
        return cls(table, SlotMap(fresh), structure, per_backend, model)
