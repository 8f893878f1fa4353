"""The one-shot commands behind the CLI: `events`, `check`, `render`; and the entry to `run`."""

from __future__ import annotations

import asyncio
import difflib
import os
import sys
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO

from lbsync.apply.selection import find_proxies
from lbsync.apply.writer import read_current
from lbsync.config.schema import Config, DiscoveryConfig
from lbsync.daemon.daemon import Daemon
from lbsync.daemon.logs import setup_logging
from lbsync.daemon.memory import fix_mmap_threshold, freeze_startup_objects
from lbsync.engine.client import DockerClient
from lbsync.engine.endpoint import resolve_endpoint
from lbsync.engine.errors import NotFound
from lbsync.engine.events import Event
from lbsync.engine.inspect import container_from_inspect
from lbsync.model.builder import build_model
from lbsync.model.entries import ParsedEntries
from lbsync.model.label_grammar import show_label
from lbsync.model.labels import parse_services
from lbsync.model.types import RoutingModel, Service
from lbsync.render.templates import CompiledTemplate, TemplateError, load_template, render
from lbsync.state.event_plan import CONTAINER_ACTIONS, CONTAINER_EVENTS, REMOVED_ACTIONS
from lbsync.state.registry import Registry
from lbsync.state.subscription import StreamEnd, subscribed_events
from lbsync.state.watcher import Watcher


class UserError(Exception):
    """A mistake the user can fix (unknown target name, bad template): exit 2, one line."""


def client_for(config: Config, environ: Mapping[str, str] | None = None) -> DockerClient:
    tls = config.docker.tls
    endpoint = resolve_endpoint(
        config.docker.host,
        os.environ if environ is None else environ,
        tls_ca=tls.ca,
        tls_cert=tls.cert,
        tls_key=tls.key,
    )
    return DockerClient(endpoint)


def format_service(service: Service) -> str:
    name = service.name or "default"
    extra = []
    if service.upstream:
        extra.append(f"upstream={service.upstream}")
    if service.weight != 1:
        extra.append(f"weight={service.weight}")
    if service.balance != "round_robin":
        extra.append(f"balance={service.balance}")
    tail = (" " + " ".join(extra)) if extra else ""
    hosts = ",".join(service.hosts)
    return f"{name}: {hosts}{service.path} -> :{service.port}{tail}"


def format_event(event: Event, discovery: DiscoveryConfig, details: str = "") -> str:
    """One line per event: time, action, name, short id, our labels, then what we parsed.

    Label keys and values (and the name) are whatever the container's owner set: shown as
    the log shows them, so a newline or an escape sequence in one cannot forge a line."""
    when = datetime.fromtimestamp(event.time_nano / 1e9, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")
    name = event.attributes.get("name", "")
    prefix = discovery.label_prefix + "."
    labels = " ".join(
        f"{show_label(key)}={show_label(value)}"
        for key, value in sorted(event.attributes.items())
        if key.startswith(prefix) or key == discovery.label_prefix
    )
    parts = [when[:-3] + "Z", event.action, show_label(name) if name else "-", event.actor_id[:12]]
    if labels:
        parts.append(labels)
    line = " ".join(parts)
    return f"{line} | {details}" if details else line


async def describe_container(client: DockerClient, container_id: str, config: Config) -> str:
    """What lbsync parses from a container right now: its services, or why it has none."""
    try:
        data = await client.inspect_container(container_id)
    except NotFound:
        return "gone"
    container = container_from_inspect(data)
    parsed = parse_services(container, config.discovery)
    if not parsed.enabled:
        return "not enabled"
    words = [f"state={container.state}", f"health={container.health}"]
    words += [format_service(service) for service in parsed.services]
    words += [f"skipped: {skip.detail}" for skip in parsed.skips]
    return "; ".join(words)


async def follow_events(config: Config, out: TextIO = sys.stdout) -> None:
    """`lbsync events`: follow container events until interrupted."""
    async with (
        client_for(config) as client,
        subscribed_events(client, filters=CONTAINER_EVENTS) as queue,
    ):
        while True:
            item = await queue.get()
            if isinstance(item, StreamEnd):
                raise item.error
            if item.base_action not in CONTAINER_ACTIONS:
                continue  # exec_* of health probes and the like: lbsync ignores them too
            details = ""
            if item.base_action not in REMOVED_ACTIONS:
                details = await describe_container(client, item.actor_id, config)
            print(format_event(item, config.discovery, details), file=out, flush=True)


def load_templates(config: Config) -> dict[str, CompiledTemplate]:
    """Compile every target's template; a broken one is a UserError naming file and line."""
    templates = {}
    for target in config.targets:
        try:
            templates[target.name] = load_template(target)
        except TemplateError as exc:
            raise UserError(f"target {target.name}: {exc}") from exc
    return templates


#: What `check` renders each template with: no containers at all.
NO_CONTAINERS = RoutingModel(hosts=(), upstreams=(), containers=())


def check(config: Config, out: TextIO = sys.stdout) -> int:
    """`lbsync check`: the config parsed already; compile the templates and render each with
    no containers. The render finds what compiling cannot: a name the template misspells or
    an attempt to reach Python (the sandbox refuses it only when the line runs), at least
    outside the loops over hosts and upstreams; it costs a millisecond."""
    templates = load_templates(config)
    for target in config.targets:
        try:
            render(templates[target.name], NO_CONTAINERS, target)
        except TemplateError as exc:
            raise UserError(f"target {target.name}: {exc} (rendered with no containers)") from exc
    where = config.source or "built-in defaults"
    print(f"{where}: ok ({len(config.targets)} target(s))", file=out)
    return 0


async def render_once(
    config: Config, *, target: str | None = None, diff: bool = False, out: TextIO = sys.stdout
) -> None:
    """`lbsync render`: read the engine once, print what each target would get. No writes."""
    targets = [t for t in config.targets if target is None or t.name == target]
    if not targets:
        names = ", ".join(t.name for t in config.targets)
        raise UserError(f"no target named {target!r} (targets: {names})")
    templates = load_templates(config)
    registry = Registry()
    async with client_for(config) as client:
        # The daemon's own listing: containers, and swarm services with discovery.swarm.
        watcher = Watcher(
            client,
            registry,
            lambda change: None,
            swarm=config.discovery.swarm,
            label_prefix=config.discovery.label_prefix,
        )
        await watcher.relist("render")
    containers = registry.containers()
    entries = ParsedEntries(registry).all(config.discovery)
    warned: set[str] = set()
    for spec in targets:
        proxies = find_proxies(spec, containers)
        networks = frozenset(n.name for n in proxies[0].networks) if proxies else frozenset()
        model = build_model(entries, config.discovery, spec, networks)
        for warning in [skip.detail for skip in model.skips] + list(model.warnings):
            if warning not in warned:  # a container several targets select: say it once
                warned.add(warning)
                print(f"lbsync: warning: {warning}", file=sys.stderr)
        left_out: list[str] = []
        try:
            text = render(templates[spec.name], model, spec, left_out=left_out)
        except TemplateError as exc:
            raise UserError(f"target {spec.name}: {exc}") from exc
        for sentence in left_out:
            print(f"lbsync: warning: target {spec.name}: {sentence}", file=sys.stderr)
        if diff:
            current = read_current(spec.output)
            old = (current or b"").decode("utf-8", "replace").splitlines(keepends=True)
            out.writelines(
                difflib.unified_diff(
                    old, text.splitlines(keepends=True), str(spec.output), f"{spec.output} (new)"
                )
            )
            continue
        if len(targets) > 1:
            print(f"# ==> {spec.output} <==", file=out)
        out.write(text)


def run_daemon(config: Config, config_path: Path | None = None) -> int:
    """`lbsync run`: set up logging, run until SIGTERM/SIGINT."""
    setup_logging(config.log)
    fix_mmap_threshold()
    load_templates(config)
    freeze_startup_objects()

    async def main() -> int:
        daemon = Daemon(config, client_for(config), config_path=config_path)
        try:
            return await daemon.run()
        except OSError as exc:
            raise UserError(
                f"cannot listen on {config.server.host}:{config.server.port} "
                f"(server.listen): {exc.strerror or exc}"
            ) from exc

    return asyncio.run(main())
