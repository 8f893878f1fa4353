"""In-process bench of the pure part of a pass: labels -> routing model -> rendered text.

    python -m bench.bench_model [--runs 7] [--scenario 1000x10] [--json] [--profile 1000x10]
                                [--template builtin:haproxy]

Synthetic `lbsync.model.Container`s, shaped like what `container_from_inspect` returns for
a compose replica (a dozen compose labels, three lbsync labels, one bridge network, one
exposed port), in two layouts: 10,000 containers in 1,000 hosts (10 replicas each) and
10,000 containers in 10,000 hosts (one each). Each scenario runs in a fresh subprocess, so
the peak RSS it reports (`ru_maxrss`) is that scenario's alone.

Phases, each timed over `--runs` runs (best and median, `gc.collect()` before each run):

* `registry load`: `Registry.upsert` of every container (what a relist adds to the HTTP).
* `parse (cold)`: the proxies and `ParsedEntries.since` on a fresh registry with the
  label parser's memo cleared: `parse_services` for every container (replicas with equal
  labels still share one parse within the run, as they do in the daemon).
* `build_model`, `render + encode` (builtin:nginx, or the `--template` builtin, to bytes
  as the daemon does: `render_bytes` joins the blocks' bytes once), `compare` (with
  the previous output).
* `cold pass`: the four above, back to back: the first pass after start.
* `steady pass`: a second pass over the same registry with the daemon's memory (its
  `ModelBuilder` and `FragmentCache`): nothing changed, so the builder hands back the same
  model and nothing is rendered or encoded (the proxies from the registry's change log
  (`ProxyTracker`), `ParsedEntries.since`, the model, compare: each looks only at
  what changed since the last pass).
* `pass after 1 change`: one container re-upserted with a new health, then a pass: its
  groups are re-settled and only its blocks re-rendered.

Only figures are printed; nothing is asserted. Targets from the issue: 10,000 containers in
1,000 hosts < 100 ms; RSS < 60 MB.
"""

from __future__ import annotations

import argparse
import cProfile
import dataclasses
import gc
import hashlib
import io
import json
import os
import pstats
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

import lbsync.model.labels
from lbsync.apply.selection import ProxyTracker
from lbsync.config.parse import parse_config
from lbsync.config.schema import Config, DiscoveryConfig, TargetConfig
from lbsync.engine.container import Container, NetworkAttachment
from lbsync.model.builder import ModelBuilder
from lbsync.model.entries import ParsedEntries
from lbsync.model.types import RoutingModel
from lbsync.render.fragments import FragmentCache
from lbsync.render.templates import CompiledTemplate, load_template, render_bytes
from lbsync.state.registry import Registry

#: name -> (hosts, containers per host)
SCENARIOS: dict[str, tuple[int, int]] = {
    "1000x10": (1000, 10),
    "10000x1": (10000, 1),
    "1000x1": (1000, 1),  # the daemon bench at N=1,000: one host per container
}
PHASES: tuple[str, ...] = (
    "registry load",
    "parse (cold)",
    "build_model",
    "render + encode",
    "compare",
    "cold pass",
    "steady pass",
    "  entries since the last pass",
    "  find proxies",
    "  build_model",
    "  render + encode",
    "  compare",
    "pass after 1 change",
)
TARGET_MS = 100.0
TARGET_RSS_MB = 60.0
BASE_NS = 1_700_000_000 * 1_000_000_000


# --------------------------------------------------------------------------- data


def make_containers(hosts: int, per_host: int) -> list[Container]:
    """`hosts * per_host` running compose replicas; replica r of host h is `bench-app<h>-<r>`."""
    containers: list[Container] = []
    network_id = hashlib.sha256(b"bench_default").hexdigest()
    env = MappingProxyType(
        {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}
    )
    for h in range(hosts):
        service = f"app{h}"
        config_hash = hashlib.sha256(service.encode()).hexdigest()
        for r in range(per_host):
            i = h * per_host + r
            name = f"bench-{service}-{r + 1}"
            labels = {
                "com.docker.compose.config-hash": config_hash,
                "com.docker.compose.container-number": str(r + 1),
                "com.docker.compose.depends_on": "",
                "com.docker.compose.image": "sha256:" + config_hash,
                "com.docker.compose.oneoff": "False",
                "com.docker.compose.project": "bench",
                "com.docker.compose.project.config_files": "/srv/bench/compose.yaml",
                "com.docker.compose.project.working_dir": "/srv/bench",
                "com.docker.compose.service": service,
                "com.docker.compose.version": "2.24.6",
                "lbsync.enable": "true",
                "lbsync.host": f"{service}.bench.example.com",
                "lbsync.port": "8080",
            }
            ip = f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}"
            containers.append(
                Container(
                    id=hashlib.sha256(name.encode()).hexdigest(),
                    name=name,
                    created_ns=BASE_NS + i * 1000,
                    labels=MappingProxyType(labels),
                    env=env,
                    state="running",
                    health="none",
                    network_mode="bench_default",
                    networks=(NetworkAttachment("bench_default", network_id, ip),),
                    exposed_ports=(8080,),
                    started_at=f"2024-01-01T00:00:{i % 60:02d}.{i:09d}Z",
                )
            )
    return containers


TEMPLATES = ("builtin:nginx", "builtin:haproxy")


def make_config(output_dir: Path, template: str = "builtin:nginx") -> Config:
    return parse_config(
        {
            "targets": [
                {
                    "name": "bench",
                    "template": template,
                    "output": str(output_dir / "lbsync.conf"),
                    "check": "none",
                    "reload": "none",
                }
            ]
        }
    )


def clear_parse_memo() -> None:
    """Forget `parse_services` results memoized by earlier runs (a private memo of
    lbsync.model.labels; absent in other versions, then nothing to clear)."""
    memo = getattr(lbsync.model.labels, "_PARSE_CACHE", None)
    if isinstance(memo, dict):
        memo.clear()


# --------------------------------------------------------------------------- passes


@dataclasses.dataclass
class Pass:
    """The pure steps of `PassExecutor.sync`, timed one by one, with the daemon's memory
    between passes: its `ModelBuilder`, its `FragmentCache`, and no render for a model that
    is the same object as the last one rendered."""

    registry: Registry
    discovery: DiscoveryConfig
    target: TargetConfig
    template: CompiledTemplate
    entries: ParsedEntries = dataclasses.field(init=False)
    previous: bytes | None = None
    builder: ModelBuilder = dataclasses.field(default_factory=ModelBuilder)
    proxies: ProxyTracker = dataclasses.field(default_factory=ProxyTracker)
    fragments: FragmentCache = dataclasses.field(default_factory=FragmentCache)
    rendered: tuple[RoutingModel | None, bytes] = (None, b"")

    def __post_init__(self) -> None:
        self.entries = ParsedEntries(self.registry)

    def steady(self, times: dict[str, float]) -> bytes:
        t0 = time.perf_counter()
        entries = self.entries.since(self.discovery, self.builder.epoch)
        t1 = time.perf_counter()
        proxies = self.proxies.find(self.target, self.registry)
        networks = frozenset(n.name for n in proxies[0].networks) if proxies else frozenset()
        t2 = time.perf_counter()
        model = self.builder.build(entries, self.discovery, self.target, networks)
        t3 = time.perf_counter()
        data = self._render(model)
        t4 = time.perf_counter()
        _changed = data != self.previous
        self.previous = data
        t5 = time.perf_counter()
        times["  entries since the last pass"] = t1 - t0
        times["  find proxies"] = t2 - t1
        times["  build_model"] = t3 - t2
        times["  render + encode"] = t4 - t3
        times["  compare"] = t5 - t4
        times["steady pass"] = t5 - t0
        return data

    def _render(self, model: RoutingModel) -> bytes:
        """The file's bytes, kept with the model they were rendered from (as the daemon)."""
        if self.rendered[0] is not model:
            data = render_bytes(self.template, model, self.target, fragments=self.fragments)
            self.rendered = (model, data)
        return self.rendered[1]


def cold_run(
    containers: list[Container],
    discovery: DiscoveryConfig,
    target: TargetConfig,
    template: CompiledTemplate,
    times: dict[str, float],
) -> tuple[Pass, bytes]:
    clear_parse_memo()
    t0 = time.perf_counter()
    registry = Registry()
    for container in containers:
        registry.upsert(container)
    daemon_pass = Pass(registry, discovery, target, template)
    t1 = time.perf_counter()
    entries = daemon_pass.entries.since(discovery, None)
    proxies = daemon_pass.proxies.find(target, registry)
    networks = frozenset(n.name for n in proxies[0].networks) if proxies else frozenset()
    t2 = time.perf_counter()
    model = daemon_pass.builder.build(entries, discovery, target, networks)
    t3 = time.perf_counter()
    data = daemon_pass._render(model)
    t4 = time.perf_counter()
    _changed = data != b""
    daemon_pass.previous = data
    t5 = time.perf_counter()
    times["registry load"] = t1 - t0
    times["parse (cold)"] = t2 - t1
    times["build_model"] = t3 - t2
    times["render + encode"] = t4 - t3
    times["compare"] = t5 - t4
    times["cold pass"] = t5 - t1
    return daemon_pass, data


def rss_mb() -> float:
    """Peak RSS of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def current_rss_mb() -> float:
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def run_scenario(name: str, runs: int, template_name: str = "builtin:nginx") -> dict[str, Any]:
    hosts, per_host = SCENARIOS[name]
    rss_imports = rss_mb()
    with tempfile.TemporaryDirectory(prefix="lbsync-bench-") as tmp:
        config = make_config(Path(tmp), template_name)
        target = config.targets[0]
        discovery = config.discovery
        template = load_template(target)

        t0 = time.perf_counter()
        containers = make_containers(hosts, per_host)
        build_s = time.perf_counter() - t0
        rss_containers = rss_mb()

        samples: dict[str, list[float]] = {phase: [] for phase in PHASES}
        size = 0
        rss_first = 0.0
        for run in range(runs):
            times: dict[str, float] = {}
            gc.collect()
            daemon_pass, data = cold_run(containers, discovery, target, template, times)
            registry = daemon_pass.registry
            size = len(data)
            del data
            gc.collect()
            daemon_pass.steady(times)
            # One change that keeps the labels: a container's health check starts.
            victim = containers[(run * 7919) % len(containers)]
            registry.upsert(dataclasses.replace(victim, health="starting"))
            gc.collect()
            change_times: dict[str, float] = {}
            daemon_pass.steady(change_times)
            times["pass after 1 change"] = change_times["steady pass"]
            for phase, seconds in times.items():
                samples[phase].append(seconds)
            if run == 0:
                # What a daemon holds after its first passes: nothing left from other runs.
                rss_first = rss_mb()
            del registry, daemon_pass

    return {
        "scenario": name,
        "hosts": hosts,
        "per_host": per_host,
        "containers": hosts * per_host,
        "runs": runs,
        "build_containers_s": build_s,
        "output_bytes": size,
        "times": samples,
        "rss_after_imports_mb": rss_imports,
        "rss_after_containers_mb": rss_containers,
        "rss_after_first_passes_mb": rss_first,
        "rss_peak_mb": rss_mb(),
        "rss_now_mb": current_rss_mb(),
    }


# --------------------------------------------------------------------------- profile


def profile(name: str) -> str:
    """cProfile of one cold pass and one steady pass; the top functions by own time."""
    hosts, per_host = SCENARIOS[name]
    out = io.StringIO()

    def report(label: str, profiler: cProfile.Profile) -> None:
        out.write(f"\n=== {name}: {label} (cProfile; times inflated by profiling) ===\n")
        stats = pstats.Stats(profiler, stream=out)
        stats.sort_stats("tottime").print_stats(20)
        stats.sort_stats("cumulative").print_stats(25)

    with tempfile.TemporaryDirectory(prefix="lbsync-bench-") as tmp:
        config = make_config(Path(tmp))
        target = config.targets[0]
        template = load_template(target)
        containers = make_containers(hosts, per_host)

        gc.collect()
        profiler = cProfile.Profile()
        profiler.enable()
        daemon_pass, _ = cold_run(containers, config.discovery, target, template, {})
        profiler.disable()
        report("cold pass", profiler)

        daemon_pass.steady({})  # warm
        gc.collect()
        profiler = cProfile.Profile()
        profiler.enable()
        daemon_pass.steady({})
        profiler.disable()
        report("steady pass", profiler)
    return out.getvalue()


# --------------------------------------------------------------------------- report


def ms(seconds: float) -> str:
    return f"{seconds * 1000:8.1f}"


def table(results: list[Mapping[str, Any]]) -> str:
    names = [str(r["scenario"]) for r in results]
    head = f"{'phase (ms: best / median)':<28}" + "".join(f"{n:>24}" for n in names)
    lines = [head, "-" * len(head)]
    for phase in PHASES:
        row = f"{phase:<28}"
        for result in results:
            values: list[float] = result["times"][phase]
            cell = f"{ms(min(values))} / {ms(statistics.median(values))}"
            row += f"{cell:>24}"
        lines.append(row)
    lines.append("-" * len(head))
    extra: tuple[tuple[str, str, Callable[[Mapping[str, Any]], str]], ...] = (
        ("containers", "", lambda r: f"{r['containers']:,} in {r['hosts']:,} hosts"),
        ("output size", "", lambda r: f"{r['output_bytes'] / 1024:,.0f} KiB"),
        ("RSS after imports", "MB", lambda r: f"{r['rss_after_imports_mb']:.1f}"),
        ("RSS with containers", "MB", lambda r: f"{r['rss_after_containers_mb']:.1f}"),
        ("peak RSS, run 1 only", "MB", lambda r: f"{r['rss_after_first_passes_mb']:.1f}"),
        ("peak RSS, all runs", "MB", lambda r: f"{r['rss_peak_mb']:.1f}"),
        ("RSS at the end (VmRSS)", "MB", lambda r: f"{r['rss_now_mb']:.1f}"),
    )
    for label, unit, fmt in extra:
        title = f"{label} ({unit})" if unit else label
        lines.append(f"{title:<28}" + "".join(f"{fmt(r):>24}" for r in results))
    return "\n".join(lines)


def verdicts(results: list[Mapping[str, Any]]) -> str:
    lines = []
    for r in results:
        cold = min(r["times"]["cold pass"]) * 1000
        steady = min(r["times"]["steady pass"]) * 1000
        rss = r["rss_after_first_passes_mb"]
        line = f"{r['scenario']}: cold pass {cold:.1f} ms, steady pass {steady:.1f} ms (best)"
        if r["scenario"] == "1000x10":
            line += (
                f"; target < {TARGET_MS:.0f} ms: cold {'met' if cold < TARGET_MS else 'MISSED'}, "
                f"steady {'met' if steady < TARGET_MS else 'MISSED'}"
            )
        line += (
            f"; peak RSS {rss:.1f} MB after the first passes, "
            f"{r['rss_after_imports_mb']:.1f} MB of it the imports "
            f"(target < {TARGET_RSS_MB:.0f} MB: {'met' if rss < TARGET_RSS_MB else 'MISSED'})"
        )
        lines.append(line)
    return "\n".join(lines)


def machine() -> str:
    cpu = "unknown CPU"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            for line in info:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return (
        f"Python {sys.version.split()[0]} on {os.uname().sysname} {os.uname().release}, "
        f"{os.cpu_count()} CPU(s): {cpu}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_model", description=__doc__)
    parser.add_argument("--runs", type=int, default=7, help="runs per scenario (default 7)")
    parser.add_argument(
        "--scenario", choices=sorted(SCENARIOS), action="append", help="only this one (repeat)"
    )
    parser.add_argument("--json", action="store_true", help="also print the raw figures")
    parser.add_argument(
        "--profile", choices=sorted(SCENARIOS), help="print a cProfile of that scenario instead"
    )
    parser.add_argument(
        "--template", choices=TEMPLATES, default=TEMPLATES[0], help="(default builtin:nginx)"
    )
    parser.add_argument("--child", choices=sorted(SCENARIOS), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child:
        print(json.dumps(run_scenario(args.child, args.runs, args.template)))
        return 0
    if args.profile:
        print(profile(args.profile))
        return 0

    results = []
    for name in args.scenario or list(SCENARIOS):
        child = ["--child", name, "--runs", str(args.runs), "--template", args.template]
        proc = subprocess.run(
            [sys.executable, "-m", "bench.bench_model", *child],
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0:
            print(f"scenario {name} failed:\n{proc.stderr}", file=sys.stderr)
            return 1
        results.append(json.loads(proc.stdout))
    print(f"lbsync model bench: {machine()}; {args.template}; {args.runs} runs per scenario\n")
    print(table(results))
    print()
    print(verdicts(results))
    if args.json:
        print(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
