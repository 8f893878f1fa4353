"""Docker Swarm services and tasks -> `Container`s the routing already understands.

Pure functions over the engine's JSON (`GET /services`, `/tasks`, `/nodes`, `/info`): no I/O,
no logging. The watcher fetches, these functions translate, the registry holds the results
beside the real containers, and routing never learns that a "container" was a task.

Two modes (`discovery.swarm`):

* `tasks`: one `Container` per task swarm wants running (id `swarm-task:<task id>`, name
  `<service>.<slot>`, or `<service>.<node id>` for a global service). It is `running` only
  while the task's `Status.State` and its `DesiredState` are both `running`; a task being
  stopped (running, desired `shutdown`) shows as `stopping`; one still starting shows its
  task state (`pending`, `preparing`, `starting`, ...). Its address:

  - on an overlay (or any swarm-scoped) network: the task's IP there, from
    `NetworksAttachments[].Addresses` without the `/prefix`; the `ingress` network is left
    out (no proxy can join it), so `lbsync.network` and the proxy-shared-network rule pick
    among the others exactly as for containers;
  - on the host network: the address of the task's node (`/nodes`: `Status.Addr`), as a
    network named `host`, when that address is one a proxy elsewhere can reach; a node that
    advertises a loopback or unspecified address (a one-node swarm on 127.0.0.1, `0.0.0.0`)
    is reached at `discovery.host_address` instead (the task is then `network_mode: host`,
    which routing maps to `host_address`); a task on a node lbsync does not know gets no
    address (skipped as `no_address` until the next listing of nodes knows it).

  A service with no such task at all keeps one placeholder (id `swarm-service:<id>`, state
  `no-running-task`), so its hosts stay in the config and answer 503 while it is scaled to 0.

* `vip`: one `Container` per service (id `swarm-service:<service id>`, name = the service's
  name) whose networks are the service's virtual IPs (`Endpoint.VirtualIPs`, network ids
  named through its tasks' attachments; `ingress` left out). It is `running` while at least
  one of its tasks is. A service without a virtual IP (the host network, `endpoint_mode:
  dnsrr`) is routed per task, as in `tasks` mode.

Labels are the service's `Spec.Labels` (`deploy.labels` in a stack file), env vars the task's
container spec (only nginx-proxy's, for `discovery.compat: nginx-proxy`). The swarm API does
not show an image's EXPOSE, so exposed ports are the service's endpoint target ports only: set
`lbsync.port`.
Published ports (`discovery.address: published`): a port published through the ingress
routing mesh is reached on `host_address` (the mesh on the proxy's own host); one published
in `host` mode on the task's node address (as above).

Containers that belong to a swarm service (label `com.docker.swarm.service.id`) are the
tasks' own containers on this node: in swarm mode they are never routed as containers
(`mask_task_container`), or every local task would be routed twice; they stay known, so a
proxy that runs as a swarm service is still found by its container label.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Final

from lbsync.engine.container import Container, NetworkAttachment, PublishedPort
from lbsync.engine.inspect import json_object, kept_env, parse_created

SERVICE_ID_LABEL: Final = "com.docker.swarm.service.id"
TASK_ID_LABEL: Final = "com.docker.swarm.task.id"
TASK_ID_PREFIX: Final = "swarm-task:"
SERVICE_ID_PREFIX: Final = "swarm-service:"

#: The state of a service's placeholder (tasks mode) or VIP container with no running task.
NO_RUNNING_TASK: Final = "no-running-task"
#: A task that is running but that swarm is stopping (DesiredState shutdown).
STOPPING: Final = "stopping"
#: network_mode of a host-network task reached at its node's address (a `host` network
#: attachment carries that address); `host` itself means "use discovery.host_address".
NODE_HOST_MODE: Final = "swarm-host"

#: Task states after which a task never runs again.
TERMINAL_STATES: Final = frozenset(
    {"complete", "shutdown", "failed", "rejected", "remove", "orphaned"}
)
#: Task states on the way to `running`.
STARTING_STATES: Final = frozenset(
    {"new", "allocated", "pending", "assigned", "accepted", "preparing", "ready", "starting"}
)
#: `UpdateStatus.State` values while swarm replaces a service's tasks.
UPDATING_STATES: Final = frozenset({"updating", "rollback_started"})


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _str(value: Any) -> str:
    return value if isinstance(value, str) else ""


# --- the engine -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SwarmInfo:
    """The swarm part of `GET /info`."""

    node_id: str
    node_addr: str
    local_node_state: str  # inactive, pending, active, error, locked ("" when absent)
    control_available: bool

    @property
    def is_manager(self) -> bool:
        """Only a manager answers /services, /tasks and /nodes."""
        return self.local_node_state == "active" and self.control_available


def swarm_info(info: Mapping[str, Any]) -> SwarmInfo:
    swarm = json_object(info.get("Swarm"))
    return SwarmInfo(
        node_id=_str(swarm.get("NodeID")),
        node_addr=_str(swarm.get("NodeAddr")),
        local_node_state=_str(swarm.get("LocalNodeState")),
        control_available=swarm.get("ControlAvailable") is True,
    )


def node_addresses(nodes: Iterable[Mapping[str, Any]]) -> dict[str, str]:
    """Node id -> its `Status.Addr` as the engine reports it ("" when it has none)."""
    return {
        _str(node.get("ID")): _str(json_object(node.get("Status")).get("Addr"))
        for node in nodes
        if _str(node.get("ID"))
    }


def node_states(nodes: Iterable[Mapping[str, Any]]) -> dict[str, tuple[str, str, str]]:
    """Node id -> (Status.Addr, Status.State, Spec.Availability): what, when it changes,
    moves tasks or their addresses. (A node's other updates, such as the network
    attachments swarm gives it for every new overlay network, change nothing here.)"""
    return {
        _str(node.get("ID")): (
            _str(json_object(node.get("Status")).get("Addr")),
            _str(json_object(node.get("Status")).get("State")),
            _str(json_object(node.get("Spec")).get("Availability")),
        )
        for node in nodes
        if _str(node.get("ID"))
    }


def reachable_node_address(addr: str) -> str | None:
    """The node's address when a proxy on another host or namespace can reach it: not
    unspecified (`0.0.0.0`, `::`), not loopback (`127.0.0.0/8`, `::1`), not unreadable."""
    try:
        ip = ipaddress.ip_address(addr.strip())
    except ValueError:
        return None
    if ip.is_unspecified or ip.is_loopback:
        return None
    return str(ip)


# --- task containers on this node -----------------------------------------------------------


def is_task_container(container: Container) -> bool:
    """Does this container run a task of a swarm service?"""
    return SERVICE_ID_LABEL in container.labels


def mask_task_container(container: Container, label_prefix: str) -> Container:
    """A swarm task's own container, as swarm mode stores it: `<prefix>.enable=false`, so
    container discovery never routes it (its service does); every other label is kept, so a
    proxy running as a swarm service is still found by its container label."""
    key = f"{label_prefix}.enable"
    if not is_task_container(container) or container.labels.get(key) == "false":
        return container
    labels = dict(container.labels)
    labels[key] = "false"
    return dataclasses.replace(container, labels=MappingProxyType(labels))


def task_container_id(task_id: str) -> str:
    return TASK_ID_PREFIX + task_id


def service_container_id(service_id: str) -> str:
    return SERVICE_ID_PREFIX + service_id


# --- services and tasks ---------------------------------------------------------------------


def service_id(service: Mapping[str, Any]) -> str:
    return _str(service.get("ID"))


def service_name(service: Mapping[str, Any]) -> str:
    return _str(json_object(service.get("Spec")).get("Name")) or service_id(service)[:12]


def _service_labels(service: Mapping[str, Any]) -> Mapping[str, str]:
    labels = json_object(json_object(service.get("Spec")).get("Labels"))
    return MappingProxyType({str(k): str(v) for k, v in labels.items()})


def _container_spec(spec: Mapping[str, Any]) -> dict[str, Any]:
    """`ContainerSpec` of a task spec (a task's `Spec`, a service's `Spec.TaskTemplate`)."""
    return json_object(spec.get("ContainerSpec"))


def _env(container_spec: Mapping[str, Any]) -> Mapping[str, str]:
    """The variables lbsync reads of the spec's `Env` (`lbsync.containers.KEPT_ENV`)."""
    return kept_env(container_spec.get("Env"))


def _endpoint_ports(service: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The service's port configs: the allocated ones (`Endpoint.Ports`, with the published
    port swarm picked), else the spec's."""
    endpoint = json_object(service.get("Endpoint"))
    ports = _list(endpoint.get("Ports"))
    if not ports:
        ports = _list(json_object(endpoint.get("Spec")).get("Ports"))
    if not ports:
        ports = _list(
            json_object(json_object(service.get("Spec")).get("EndpointSpec")).get("Ports")
        )
    return [json_object(p) for p in ports]


def _tcp_port(value: Any) -> int | None:
    return value if isinstance(value, int) and 0 < value < 65536 else None


def _is_tcp(port: Mapping[str, Any]) -> bool:
    return _str(port.get("Protocol")) in ("", "tcp")


def _exposed(service: Mapping[str, Any]) -> tuple[int, ...]:
    found = set()
    for port in _endpoint_ports(service):
        target = _tcp_port(port.get("TargetPort"))
        if target is not None and _is_tcp(port):
            found.add(target)
    return tuple(sorted(found))


def _published(ports: Iterable[Mapping[str, Any]], mode: str, host_ip: str) -> list[PublishedPort]:
    out = []
    for port in ports:
        if not _is_tcp(port) or (_str(port.get("PublishMode")) or "ingress") != mode:
            continue
        target = _tcp_port(port.get("TargetPort"))
        published = _tcp_port(port.get("PublishedPort"))
        if target is not None and published is not None:
            out.append(PublishedPort(target, host_ip, published))
    return out


def _sorted_published(ports: Iterable[PublishedPort]) -> tuple[PublishedPort, ...]:
    return tuple(sorted(set(ports), key=lambda p: (p.container_port, p.host_port, p.host_ip)))


@dataclass(frozen=True, slots=True)
class _Attachment:
    name: str
    network_id: str
    ip: str
    ingress: bool
    host: bool


def _attachments(task: Mapping[str, Any]) -> list[_Attachment]:
    found = []
    for item in _list(task.get("NetworksAttachments")):
        network = json_object(json_object(item).get("Network"))
        spec = json_object(network.get("Spec"))
        name = _str(spec.get("Name"))
        driver = _str(json_object(network.get("DriverState")).get("Name")) or _str(
            json_object(spec.get("DriverConfiguration")).get("Name")
        )
        addresses = [a for a in _list(json_object(item).get("Addresses")) if isinstance(a, str)]
        # The IPv4 address first, like a container's `IPAddress`; else the first one.
        ipv4 = [a for a in addresses if ":" not in a]
        address = (ipv4 or addresses or [""])[0].partition("/")[0]
        found.append(
            _Attachment(
                name=name or _str(network.get("ID")),
                network_id=_str(network.get("ID")),
                ip=address,
                ingress=spec.get("Ingress") is True or name == "ingress",
                host=driver == "host" or name == "host",
            )
        )
    return found


def _is_current(task: Mapping[str, Any]) -> bool:
    """A task swarm wants running, or one still running while swarm stops it. The tasks of
    earlier runs that swarm keeps as history (`TaskHistoryRetentionLimit`) are not."""
    desired = _str(task.get("DesiredState"))
    state = _str(json_object(task.get("Status")).get("State"))
    if desired == "running":
        return True
    return state not in TERMINAL_STATES and state != ""


def task_state(task: Mapping[str, Any]) -> str:
    """`running` only when the task runs and swarm wants it to; `stopping` when it runs and
    swarm is stopping it; else the task's own state (`pending`, `starting`, `failed`, ...)."""
    state = _str(json_object(task.get("Status")).get("State")) or "unknown"
    if state == "running" and _str(task.get("DesiredState")) != "running":
        return STOPPING
    return state


def _is_running(task: Mapping[str, Any]) -> bool:
    return task_state(task) == "running"


def task_name(service: Mapping[str, Any], task: Mapping[str, Any]) -> str:
    """`web.1` for replicated services, `web.<node id>` for global ones (as `docker service
    ps` shows them)."""
    slot = task.get("Slot")
    if isinstance(slot, int) and slot > 0:
        return f"{service_name(service)}.{slot}"
    node = _str(task.get("NodeID"))
    return f"{service_name(service)}.{node or _str(task.get('ID'))[:12]}"


def task_container(
    service: Mapping[str, Any],
    task: Mapping[str, Any],
    nodes: Mapping[str, str],
    container_health: Mapping[str, str] | None = None,
) -> Container:
    """One task as a `Container` (tasks mode). `nodes`: node id -> `Status.Addr`;
    `container_health`: container id -> health of the containers on this node (a task
    here gets its container's health; elsewhere "none": swarm itself holds a task with a
    health check in `starting` until it is healthy, and replaces it when it turns unhealthy).
    """
    task_spec = json_object(task.get("Spec"))
    container_spec = _container_spec(task_spec) or _container_spec(
        json_object(json_object(service.get("Spec")).get("TaskTemplate"))
    )
    status = json_object(task.get("Status"))
    container_id = _str(json_object(status.get("ContainerStatus")).get("ContainerID"))
    health = "none"
    if container_health is not None and container_id in container_health:
        health = container_health[container_id]

    attachments = [a for a in _attachments(task) if not a.ingress]
    host = [a for a in attachments if a.host]
    node_id = _str(task.get("NodeID"))
    node_ip = reachable_node_address(nodes[node_id]) if node_id in nodes else None
    network_mode = "default"
    networks: tuple[NetworkAttachment, ...]
    if host:
        if node_ip is not None:
            network_mode = NODE_HOST_MODE
            networks = (NetworkAttachment("host", host[0].network_id, node_ip),)
        elif node_id in nodes:
            network_mode = "host"  # routing: discovery.host_address
            networks = (NetworkAttachment("host", host[0].network_id, ""),)
        else:
            network_mode = NODE_HOST_MODE  # an unknown node: no address
            networks = (NetworkAttachment("host", host[0].network_id, ""),)
    else:
        networks = tuple(
            sorted(
                (NetworkAttachment(a.name, a.network_id, a.ip) for a in attachments),
                key=lambda n: (n.name, n.network_id),
            )
        )

    ports = _endpoint_ports(service)
    port_status = [
        json_object(p) for p in _list(json_object(status.get("PortStatus")).get("Ports"))
    ]
    published = _published(ports, "ingress", "") + _published(
        port_status or ports, "host", node_ip or ""
    )
    return Container(
        id=task_container_id(_str(task.get("ID"))),
        name=task_name(service, task),
        created_ns=parse_created(_str(task.get("CreatedAt"))),
        labels=_service_labels(service),
        env=_env(container_spec),
        state=task_state(task),
        health=health,
        network_mode=network_mode,
        networks=networks,
        exposed_ports=_exposed(service),
        published_ports=_sorted_published(published),
        stop_signal=_str(container_spec.get("StopSignal")) or "SIGTERM",
    )


def _service_container(
    service: Mapping[str, Any],
    state: str,
    networks: tuple[NetworkAttachment, ...] = (),
) -> Container:
    """The service as one `Container`: its VIP container, or a placeholder."""
    spec = json_object(service.get("Spec"))
    container_spec = _container_spec(json_object(spec.get("TaskTemplate")))
    return Container(
        id=service_container_id(service_id(service)),
        name=service_name(service),
        created_ns=parse_created(_str(service.get("CreatedAt"))),
        labels=_service_labels(service),
        env=_env(container_spec),
        state=state,
        health="none",
        network_mode="default",
        networks=networks,
        exposed_ports=_exposed(service),
        published_ports=_sorted_published(_published(_endpoint_ports(service), "ingress", "")),
        stop_signal=_str(container_spec.get("StopSignal")) or "SIGTERM",
    )


def virtual_ips(
    service: Mapping[str, Any], tasks: Sequence[Mapping[str, Any]]
) -> tuple[NetworkAttachment, ...]:
    """The service's virtual IPs as network attachments, named through its tasks'
    attachments (a network no task names keeps its id as name); `ingress` left out."""
    names: dict[str, _Attachment] = {}
    for task in tasks:
        for attachment in _attachments(task):
            names.setdefault(attachment.network_id, attachment)
    found = []
    for vip in _list(json_object(service.get("Endpoint")).get("VirtualIPs")):
        network_id = _str(json_object(vip).get("NetworkID"))
        address = _str(json_object(vip).get("Addr")).partition("/")[0]
        known = names.get(network_id)
        if not address or (known is not None and (known.ingress or known.host)):
            continue
        found.append(NetworkAttachment(known.name if known else network_id, network_id, address))
    return tuple(sorted(found, key=lambda n: (n.name, n.network_id)))


def service_containers(
    service: Mapping[str, Any],
    tasks: Sequence[Mapping[str, Any]],
    mode: str,
    nodes: Mapping[str, str],
    container_health: Mapping[str, str] | None = None,
) -> list[Container]:
    """Everything lbsync routes for one service (`mode`: `tasks` or `vip`).

    `tasks` may hold other services' tasks and history: only this service's current ones
    count. See the module docstring for the rules.
    """
    sid = service_id(service)
    own = [t for t in tasks if _str(t.get("ServiceID")) == sid and _is_current(t)]
    if mode == "vip":
        vips = virtual_ips(service, own)
        if vips:
            running = any(_is_running(t) for t in own)
            return [_service_container(service, "running" if running else NO_RUNNING_TASK, vips)]
    found = [task_container(service, t, nodes, container_health) for t in own]
    if not found:
        return [_service_container(service, NO_RUNNING_TASK)]
    return sorted(found, key=lambda c: (c.name, c.id))


def tasks_by_service(tasks: Iterable[Mapping[str, Any]]) -> dict[str, list[Mapping[str, Any]]]:
    grouped: dict[str, list[Mapping[str, Any]]] = {}
    for task in tasks:
        grouped.setdefault(_str(task.get("ServiceID")), []).append(task)
    return grouped


def task_nodes(tasks: Iterable[Mapping[str, Any]]) -> set[str]:
    """The node ids the tasks run on (tasks not yet scheduled have none)."""
    return {node for node in (_str(t.get("NodeID")) for t in tasks) if node}


def is_updating(service: Mapping[str, Any]) -> bool:
    """Is a rolling update (or its rollback) replacing the service's tasks?"""
    return _str(json_object(service.get("UpdateStatus")).get("State")) in UPDATING_STATES


def is_settled(service: Mapping[str, Any], tasks: Sequence[Mapping[str, Any]]) -> bool:
    """Has the service converged, so that its tasks will not change without a new event?

    No: while a rolling update (or its rollback) runs, while a task swarm wants running is
    not running yet, while a task is being stopped, or while a replicated service runs fewer
    tasks than its replica count. A global service's task count is not known here.
    """
    spec = json_object(service.get("Spec"))
    if is_updating(service):
        return False
    sid = service_id(service)
    own = [t for t in tasks if _str(t.get("ServiceID")) == sid and _is_current(t)]
    if any(task_state(t) != "running" for t in own):
        return False
    replicas = json_object(json_object(spec.get("Mode")).get("Replicated")).get("Replicas")
    return not (isinstance(replicas, int) and len(own) < replicas)
