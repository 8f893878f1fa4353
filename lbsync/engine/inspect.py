"""The boundary: an engine's inspect answer becomes a `Container`, once, here.

Everything after this module reads `Container` fields and never the engine's JSON, so an
engine quirk (Podman's empty host networks, a missing `Health`) is absorbed in one place.

It is also where lbsync decides what it keeps of a container, for as long as the container
exists: of the environment only the variables it reads (`KEPT_ENV`), and of the strings that
repeat from one container to the next (label keys, most label values, network ids, states)
one copy for all (`shared`).
"""

from __future__ import annotations

import re
import signal
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from types import MappingProxyType
from typing import Any, Final

from lbsync.engine.container import EMPTY_MAPPING, Container, NetworkAttachment, PublishedPort

_FRACTION = re.compile(r"\.(\d+)")

#: The environment variables lbsync reads: nginx-proxy's, for `discovery.compat:
#: nginx-proxy` (`lbsync.model.labels`). A container's environment is often the biggest part of
#: its inspect answer (dozens of settings, secrets among them); the rest is never kept.
KEPT_ENV: Final = frozenset({"VIRTUAL_HOST", "VIRTUAL_PORT", "VIRTUAL_PATH"})
_KEPT_ENV_PREFIX: Final = "VIRTUAL_"

#: See `shared`: one copy of each repeating string, for all containers.
_SHARED: dict[str, str] = {}
_SHARED_MAX: Final = 4096  # strings
_SHARED_LONGEST: Final = 128  # characters: a longer one is seldom repeated, and kept as is


class ContainerParseError(ValueError):
    """An inspect answer lacks what every container has (Id, Name, State)."""


def parse_created(text: str) -> int:
    """RFC 3339 with up to nanosecond precision -> nanoseconds since the epoch (0 if unreadable)."""
    if not text:
        return 0
    nanos = 0
    match = _FRACTION.search(text)
    if match:
        digits = match.group(1)
        nanos = int(digits[:9].ljust(9, "0"))
        text = text[: match.start()] + text[match.end() :]
    if text.endswith("Z"):
        text = text[:-1] + "+00:00"
    try:
        seconds = int(datetime.fromisoformat(text).timestamp())
    except ValueError:
        return 0
    return seconds * 1_000_000_000 + nanos


def shared(text: str) -> str:
    """`text`, or the equal string an earlier container brought.

    Every inspect answer is a new set of strings, yet label keys repeat on every container,
    and most label values on every replica of a service or every container of an image
    (Compose's labels, the image's own), as do network ids, states and stop signals: with one
    copy for all, 1,000 containers of 20 labels hold a few hundred label strings, not 40,000.
    Bounded: the table starts over when full (strings already shared stay shared), and
    strings longer than `_SHARED_LONGEST` are not kept in it.
    """
    kept = _SHARED.get(text)
    if kept is None:
        if len(text) > _SHARED_LONGEST:
            return text
        if len(_SHARED) >= _SHARED_MAX:
            _SHARED.clear()
        _SHARED[text] = kept = text
    return kept


def kept_env(entries: Any) -> Mapping[str, str]:
    """A `Config.Env` list (`["KEY=value", ...]`) -> the `KEPT_ENV` variables in it."""
    env: dict[str, str] = {}
    for entry in entries if isinstance(entries, list) else ():
        if isinstance(entry, str) and entry.startswith(_KEPT_ENV_PREFIX):
            key, _, value = entry.partition("=")
            if key in KEPT_ENV:
                env[shared(key)] = value
    return MappingProxyType(env) if env else EMPTY_MAPPING


def json_object(value: Any) -> dict[str, Any]:
    """`value` if it is a JSON object, else an empty one: a field the engine left out, sent
    as null or as something else reads as no field at all."""
    return value if isinstance(value, dict) else {}


def _port_number(spec: str) -> int | None:
    """`80/tcp` -> 80; UDP/SCTP ports and garbage -> None (we only proxy TCP)."""
    number, _, proto = spec.partition("/")
    if proto not in ("", "tcp") or not number.isdigit():
        return None
    port = int(number)
    return port if 0 < port < 65536 else None


def _health(state: dict[str, Any], config: dict[str, Any]) -> str:
    # Docker and Podman's Docker-compatible API say `Health`; Podman 4's own (libpod) inspect
    # says `Healthcheck`. A container without a check: no key (Docker), Status "" (Podman).
    health = json_object(state.get("Health") or state.get("Healthcheck"))
    status = health.get("Status")
    test = json_object(config.get("Healthcheck")).get("Test")
    if isinstance(test, list) and test[:1] == ["NONE"]:
        return "none"
    if status in ("healthy", "unhealthy", "starting"):
        return str(status)
    return "none"


def _stop_signal(value: Any) -> str:
    """`SIGTERM` as Docker gives it; Podman gives the number (`"15"`): `SIGTERM` too."""
    text = str(value or "SIGTERM").strip()
    if text.isdigit():
        try:
            return signal.Signals(int(text)).name
        except ValueError:
            return text
    return text


def container_from_inspect(data: Mapping[str, Any]) -> Container:
    """Parse `GET /containers/{id}/json` into the narrow type the rest of lbsync uses."""
    container_id = data.get("Id")
    if not isinstance(container_id, str) or not container_id:
        raise ContainerParseError("inspect answer has no Id")
    config = json_object(data.get("Config"))
    state = json_object(data.get("State"))
    host_config = json_object(data.get("HostConfig"))
    settings = json_object(data.get("NetworkSettings"))

    labels = {shared(str(k)): shared(str(v)) for k, v in json_object(config.get("Labels")).items()}

    exposed: set[int] = set()
    for spec in json_object(config.get("ExposedPorts")):
        port = _port_number(spec)
        if port is not None:
            exposed.add(port)
    published: list[PublishedPort] = []
    for spec, bindings in json_object(settings.get("Ports")).items():
        port = _port_number(spec)
        if port is None:
            continue
        exposed.add(port)
        for binding in bindings or ():
            host_port = str(json_object(binding).get("HostPort") or "")
            if host_port.isdigit():
                published.append(
                    PublishedPort(
                        port, str(json_object(binding).get("HostIp") or ""), int(host_port)
                    )
                )

    networks = tuple(
        sorted(
            (
                NetworkAttachment(
                    name=shared(str(name)),
                    network_id=shared(str(json_object(net).get("NetworkID") or "")),
                    ip=str(json_object(net).get("IPAddress") or ""),
                )
                for name, net in json_object(settings.get("Networks")).items()
            ),
            key=lambda n: n.name,
        )
    )
    status = state.get("Status")
    if not isinstance(status, str):
        status = "running" if state.get("Running") else "exited"
    if state.get("Paused"):
        status = "paused"

    return Container(
        id=container_id,
        name=str(data.get("Name") or container_id[:12]).lstrip("/"),
        created_ns=parse_created(str(data.get("Created") or "")),
        labels=MappingProxyType(labels) if labels else EMPTY_MAPPING,
        env=kept_env(config.get("Env")),
        state=shared(status),
        health=shared(_health(state, config)),
        network_mode=shared(str(host_config.get("NetworkMode") or "default")),
        networks=networks,
        exposed_ports=tuple(sorted(exposed)),
        published_ports=tuple(sorted(published, key=lambda p: (p.container_port, p.host_port))),
        stop_signal=shared(_stop_signal(config.get("StopSignal"))),
        started_at=str(state.get("StartedAt") or ""),
    )


#: Docker's `Status` in a listing: "Up 5 minutes (healthy)", "(unhealthy)", "(health: starting)".
_LISTED_HEALTH = (
    ("(healthy)", "healthy"),
    ("(unhealthy)", "unhealthy"),
    ("(health: starting)", "starting"),
)


@dataclass(frozen=True, slots=True)
class ListedContainer:
    """One entry of a container listing (`GET /containers/json`), cut to what can change while
    a container exists. Labels, environment, exposed ports and stop signal are fixed when it
    is created."""

    id: str
    names: tuple[str, ...]  # as listed: "/web-1"
    state: str
    health: str  # from `Status`; "none" when it shows none
    networks: tuple[tuple[str, str, str], ...]  # (name, NetworkID, IPAddress), by name
    published: tuple[tuple[int, str, int], ...]  # TCP: (container port, host IP, host port)


def listed_health(status: object) -> str:
    """The health a listing's `Status` shows; "none" when it shows none."""
    if isinstance(status, str):
        for marker, health in _LISTED_HEALTH:
            if status.endswith(marker):
                return health
    return "none"


def listed_container(item: Mapping[str, Any]) -> ListedContainer:
    """A listing entry as `ListedContainer` (what cannot be read is left empty: it then
    disagrees with the inspect, and the container is inspected)."""
    names = item.get("Names")
    networks = json_object(json_object(item.get("NetworkSettings")).get("Networks"))
    return ListedContainer(
        id=str(item.get("Id") or ""),
        names=tuple(str(n) for n in names) if isinstance(names, list) else (),
        state=str(item.get("State") or ""),
        health=listed_health(item.get("Status")),
        networks=tuple(
            sorted(
                (
                    str(name),
                    str(json_object(net).get("NetworkID") or ""),
                    str(json_object(net).get("IPAddress") or ""),
                )
                for name, net in networks.items()
            )
        ),
        published=tuple(
            sorted(
                (port["PrivatePort"], str(port.get("IP") or ""), port["PublicPort"])
                for port in item.get("Ports") or ()
                if isinstance(port, dict)
                and port.get("Type") == "tcp"
                and isinstance(port.get("PrivatePort"), int)
                and isinstance(port.get("PublicPort"), int)
            )
        ),
    )


def listing_agrees(container: Container, listed: ListedContainer) -> bool:
    """Does the listing show what `container`, from an inspect, says about everything a pass
    reads that can change while a container exists: its name, state, health, networks with
    their addresses, published TCP ports?

    Any doubt (another engine's format, a stopped container whose last health the listing
    does not show, a stop-marked container: state `stopping`) is a disagreement, and the
    caller inspects.
    """
    ports = container.published_ports
    published = sorted((p.container_port, p.host_ip, p.host_port) for p in ports)
    return (
        listed.names == ("/" + container.name,)
        and listed.state == container.state
        and listed.health == container.health
        and listed.networks == tuple((n.name, n.network_id, n.ip) for n in container.networks)
        and listed.published == tuple(published)
    )
