"""What passes tell: their metrics, their log lines (each said once), the recent changes."""

from __future__ import annotations

import collections
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from itertools import chain, compress
from operator import attrgetter, is_not
from typing import TypeVar

from lbsync.apply.proxy import LeftOut, LeftOutReason
from lbsync.daemon.metrics import Metrics
from lbsync.daemon.target import TargetState
from lbsync.engine.container import Container
from lbsync.model.groups import NOT_HEALTHY, NOT_RUNNING
from lbsync.model.types import RoutingModel, Upstream

log = logging.getLogger("lbsync")

STATE_REASONS = frozenset({NOT_RUNNING, NOT_HEALTHY})
_SERVERS_OF = attrgetter("servers")
_CONTAINER_ID_OF = attrgetter("container.id")

#: Why a proxy container is not reloaded, for its log line.
LEFT_OUT_WHY = {
    LeftOutReason.UNRUNNABLE: "the check could not run in it",
    LeftOutReason.DISAGREED: "it refused the config another proxy container accepted",
    LeftOutReason.RELOAD_FAILED: "its reload failed while other proxy containers reloaded",
}

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class RecentChange:
    """One reload, for the status page's "recent changes"."""

    at: float
    target: str
    change: str
    duration_ms: float


class PassReports:
    """The metrics and log lines of every target's passes, and the recent changes."""

    def __init__(self, metrics: Metrics, changes: collections.deque[RecentChange]) -> None:
        self.metrics = metrics
        self.changes = changes
        # Skip reasons seen on any target: each target's gauge of a reason gone is set to 0.
        self._skip_reasons_seen: set[str] = set()

    def model(self, state: TargetState, model: RoutingModel) -> None:
        """The model's gauges, and its skips and warnings logged once each."""
        if model is state.reported:
            return
        name = state.config.name
        reported = state.reported
        if reported is None or model.upstreams is not reported.upstreams:
            # map/chain keep the loop in C: this runs on every pass that changed something.
            servers = list(chain.from_iterable(map(_SERVERS_OF, model.upstreams)))
            self.metrics.upstreams.labels(name).set(len(model.upstreams))
            self.metrics.servers.labels(name).set(len(servers))
            routed = set(map(_CONTAINER_ID_OF, servers))
            self.metrics.containers_routed.labels(name).set(len(routed))
        self.metrics.containers_discovered.labels(name).set(len(model.containers))
        by_reason: dict[str, int] = {}
        current: set[str] = set()
        for skip in model.skips:
            by_reason[skip.reason] = by_reason.get(skip.reason, 0) + 1
            key = f"{skip.container.id}:{skip.reason}"
            current.add(key)
            if key not in state.warned_skips:
                # Once per container and reason, not on every pass. A stopped or unhealthy
                # container is state, not a mistake: worth a line, not a warning.
                level = logging.INFO if skip.reason in STATE_REASONS else logging.WARNING
                log.log(level, "%s", skip.detail)
        for warning in model.warnings:
            current.add(warning)
            if warning not in state.warned_skips:
                log.warning("%s", warning)
        state.warned_skips = current
        for reason in set(by_reason) | self._skip_reasons_seen:
            self.metrics.containers_skipped.labels(name, reason).set(by_reason.get(reason, 0))
        self._skip_reasons_seen |= set(by_reason)
        state.reported = model

    def left_out(
        self,
        state: TargetState,
        proxies: Sequence[Container],
        entries: Sequence[LeftOut],
        stays: Callable[[LeftOut], bool],
    ) -> None:
        """Record the proxy containers left out of a reload: each is counted every time and
        logged once per container and reason (a rogue container is there on every pass).
        Of those recorded before, the ones `stays` picks remain."""
        target = state.config
        ids = {p.name: p.id for p in proxies}
        current = {cid: entry for cid, entry in state.left_out.items() if stays(entry)}
        for entry in entries:
            cid = ids.get(entry.container, entry.container)
            self.metrics.proxies_left_out.labels(target.name, entry.reason).inc()
            before = state.left_out.get(cid)
            level = logging.DEBUG if before and before.reason == entry.reason else logging.WARNING
            log.log(
                level,
                "target %s: proxy container %s is not reloaded: %s: %s",
                target.name,
                entry.container,
                LEFT_OUT_WHY[entry.reason],
                entry.message,
            )
            current[cid] = entry
        state.left_out = current

    def latency(self, target_name: str, event_times: list[int]) -> None:
        """From each event of the pass to now, when the proxy runs what they changed."""
        now = time.time()
        for event_ns in event_times:
            self.metrics.event_to_reload.labels(target_name).observe(max(0.0, now - event_ns / 1e9))

    def change(self, state: TargetState, model: RoutingModel, started: float, how: str) -> None:
        """The proxy runs `model` now: logged, and one of the recent changes."""
        change = describe_change(state.model, model)
        elapsed_ms = (time.monotonic() - started) * 1000
        log.info("target %s: %s in %.0f ms: %s", state.config.name, how, elapsed_ms, change)
        self.changes.appendleft(
            RecentChange(time.time(), state.config.name, change, round(elapsed_ms, 1))
        )
        state.model = model


def _differing(before: tuple[T, ...], after: tuple[T, ...]) -> tuple[list[T], list[T]]:
    """The items of each that are not the very object found in the other.

    Same lengths: position by position (in C). Whatever lies outside the differing positions
    is in both, so differences computed on what is left are the whole differences.
    """
    if len(before) == len(after):
        moved = list(compress(range(len(after)), map(is_not, before, after)))
        return [before[i] for i in moved], [after[i] for i in moved]
    old_ids, new_ids = {id(x) for x in before}, {id(x) for x in after}
    return [x for x in before if id(x) not in new_ids], [x for x in after if id(x) not in old_ids]


def _server_labels(upstream: Upstream) -> Iterator[str]:
    return (f"{upstream.name}/{s.container.name}:{s.port}" for s in upstream.servers)


def describe_change(before: RoutingModel | None, after: RoutingModel) -> str:
    """`hosts +a.test -b.test; servers +web-2 -web-1`, or what is now served on a first pass."""
    if before is None:
        return f"{len(after.hosts)} hosts, {sum(len(u.servers) for u in after.upstreams)} servers"
    # Unchanged hosts and upstreams are the same objects (ModelBuilder): only the others are
    # compared, and at 1,000 hosts a change touches a handful.
    old_host_items, new_host_items = _differing(before.hosts, after.hosts)
    old_hosts = {h.name for h in old_host_items}
    new_hosts = {h.name for h in new_host_items}
    old_upstreams, new_upstreams = _differing(before.upstreams, after.upstreams)
    old_servers = {label for u in old_upstreams for label in _server_labels(u)}
    new_servers = {label for u in new_upstreams for label in _server_labels(u)}
    parts = []
    for label, was, now in (
        ("hosts", old_hosts, new_hosts),
        ("servers", old_servers, new_servers),
    ):
        added = sorted(now - was)
        removed = sorted(was - now)
        if added or removed:
            parts.append(
                label + " " + " ".join([f"+{x}" for x in added] + [f"-{x}" for x in removed])
            )
    return "; ".join(parts) or "no routing change"
