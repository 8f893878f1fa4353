"""Prometheus metrics. Names are a public interface: README lists them, a test pins them."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0, 2.0, 5.0, 10.0)


class Metrics:
    """One set per daemon, on its own registry (tests run several daemons in one process)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.events = Counter(
            "lbsync_events", "Engine events received", ["type", "action"], registry=r
        )
        self.passes = Counter("lbsync_passes", "Passes run", registry=r)
        self.renders = Counter("lbsync_renders", "Templates rendered", ["target"], registry=r)
        self.writes = Counter(
            "lbsync_writes", "Output files written, by result", ["target", "result"], registry=r
        )
        self.reloads = Counter(
            "lbsync_reloads",
            "Proxy reloads (one per proxy container), by result",
            ["target", "result"],
            registry=r,
        )
        self.runtime_updates = Counter(
            "lbsync_runtime_updates",
            "Server changes applied through HAProxy's Runtime API instead of a reload",
            ["target", "result"],
            registry=r,
        )
        self.check_failures = Counter(
            "lbsync_check_failures", "Configs refused by the proxy's check", ["target"], registry=r
        )
        self.proxies_left_out = Counter(
            "lbsync_proxies_left_out",
            "Proxy containers not reloaded, by reason: the check could not run in them "
            "(unrunnable), they refused what another accepted (disagreed), or their reload "
            "failed while others worked (reload_failed)",
            ["target", "reason"],
            registry=r,
        )
        self.engine_connected = Gauge(
            "lbsync_engine_connected", "1 while connected to the engine", registry=r
        )
        self.engine_reconnects = Counter(
            "lbsync_engine_reconnects", "Connections to the engine lost and re-made", registry=r
        )
        self.event_reader_failures = Counter(
            "lbsync_event_reader_failures",
            "Ends of the events reader on an unexpected error, each followed by a re-list",
            registry=r,
        )
        self.containers_discovered = Gauge(
            "lbsync_containers_discovered",
            "Containers that opted in (and the target selects)",
            ["target"],
            registry=r,
        )
        self.containers_routed = Gauge(
            "lbsync_containers_routed", "Containers getting traffic", ["target"], registry=r
        )
        self.containers_skipped = Gauge(
            "lbsync_containers_skipped",
            "Containers or services skipped, by reason",
            ["target", "reason"],
            registry=r,
        )
        self.upstreams = Gauge("lbsync_upstreams", "Upstreams rendered", ["target"], registry=r)
        self.servers = Gauge("lbsync_servers", "Servers rendered", ["target"], registry=r)
        self.event_to_reload = Histogram(
            "lbsync_event_to_reload_seconds",
            "From an engine event to the proxy reloaded with its effect",
            ["target"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )

    def render_text(self) -> bytes:
        return generate_latest(self.registry)
