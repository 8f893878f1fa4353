"""The grammar of label values, and one service built from its raw values (SPEC §1).

Every label value is untrusted. Each field is checked against a strict ASCII grammar
(`fullmatch`, so a trailing newline never slips through), which also rejects spaces, `;`,
`{`, `}`, quotes, `$`, `#`, control characters and non-ASCII text: a value that passes can be
written into an nginx or HAProxy config file as is. A value outside its grammar is a `Skip`
whose `detail` is one sentence naming the container and the exact label (or env var).
`lbsync.model.labels` finds the values in a container's labels and env.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import NamedTuple

from lbsync.config.hosts import host_allowed, is_valid_host
from lbsync.engine.container import Container
from lbsync.model.types import ContainerRef, Service, Skip

__all__ = [
    "AMBIGUOUS_PORT",
    "BALANCE_MODES",
    "CONTAINER_KEYS",
    "HOST_NOT_ALLOWED",
    "INVALID_LABEL",
    "MAX_HOSTS_PER_SERVICE",
    "MAX_NAME_LEN",
    "MAX_PATH_LEN",
    "MAX_SERVICES_PER_CONTAINER",
    "NAME_RE",
    "NETWORK_RE",
    "NO_HOST",
    "NO_PORT",
    "NO_SERVICE",
    "RESERVED_NAMES",
    "SERVICE_KEYS",
    "SERVICE_KEY_SET",
    "UNSUPPORTED_HOST",
    "ContainerSkips",
    "build_service",
    "clear_host_memo",
    "show_label",
    "show_value",
    "skipped",
]

SERVICE_KEYS: tuple[str, ...] = ("host", "port", "path", "upstream", "weight", "balance")
CONTAINER_KEYS: tuple[str, ...] = ("enable", "network")
RESERVED_NAMES: frozenset[str] = frozenset((*SERVICE_KEYS, *CONTAINER_KEYS, "proxy"))
BALANCE_MODES: tuple[str, ...] = ("round_robin", "least_conn", "ip_hash")

# Skip reasons (stable keys: metrics and the status page group by them).
INVALID_LABEL = "invalid_label"  # a value outside its grammar, an unknown service key, ...
NO_HOST = "no_host"  # a service without a host
NO_PORT = "no_port"  # no port label and no exposed TCP port
AMBIGUOUS_PORT = "ambiguous_port"  # no port label and several exposed TCP ports
UNSUPPORTED_HOST = "unsupported_host"  # nginx-proxy regex (`~...`) or trailing wildcard (`a.*`)
NO_SERVICE = "no_service"  # `enable=true` but nothing declared
HOST_NOT_ALLOWED = "host_not_allowed"  # a host outside `discovery.hosts`

# Bounds (SPEC §1). Every value within them is also within what nginx_quote and
# haproxy_quote accept (nginx's 4,094-byte token; tests/render/test_quoting.py holds them to it),
# so a value that passes here can never fail a render.
MAX_PATH_LEN = 1024
MAX_NAME_LEN = 64  # a service name, an upstream name
MAX_HOSTS_PER_SERVICE = 100
MAX_SERVICES_PER_CONTAINER = 32

SERVICE_KEY_SET = frozenset(SERVICE_KEYS)

_PATH_RE = re.compile(rf"/[A-Za-z0-9._~%/-]{{0,{MAX_PATH_LEN - 1}}}")
_UPSTREAM_RE = re.compile(rf"[A-Za-z0-9][A-Za-z0-9_.-]{{0,{MAX_NAME_LEN - 1}}}")
NETWORK_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
NAME_RE = re.compile(rf"[a-z0-9_-]{{1,{MAX_NAME_LEN}}}")
_NUMBER_RE = re.compile(r"[0-9]{1,10}")  # ASCII digits only: no sign, space or non-ASCII digit
_SHOW_MAX = 80  # longer values are cut in messages
_COMPAT_PORT = 80  # nginx-proxy's default when the exposed ports do not decide

_WHAT: dict[str, str] = {
    "port": "port (1..65535, digits only)",
    "path": (
        "path (it must start with / and use only A-Z a-z 0-9 . _ ~ % / -; "
        f"at most {MAX_PATH_LEN:,} characters)"
    ),
    "upstream": (
        "upstream name (a letter or digit, then letters, digits, _ . -; "
        f"at most {MAX_NAME_LEN} characters)"
    ),
    "weight": "weight (1..256, digits only)",
    "balance": "balance mode (round_robin, least_conn or ip_hash)",
}


def show_value(value: str) -> str:
    """A value quoted for a one-line message: control characters escaped, long ones cut."""
    if len(value) > _SHOW_MAX:
        return repr(value[:_SHOW_MAX]) + "..."
    return repr(value)


def show_label(text: str) -> str:
    """A label key or value for one line of output (a log message, `lbsync events`): as is
    when plain printable ASCII without spaces, else quoted with every control character
    (newline, CR, ESC, U+2028, ...) escaped, and cut when long; it never starts a new line."""
    if len(text) <= _SHOW_MAX and text.isascii() and text.isprintable() and " " not in text:
        return text
    return show_value(text)


class _BadHost(NamedTuple):
    entry: str  # the first bad entry, trimmed ("" when there are too many)
    unsupported: bool  # an nginx-proxy form lbsync does not support (`~regex`, `app.*`)
    too_many: bool = False  # more than MAX_HOSTS_PER_SERVICE distinct hosts


# raw host value -> its hosts or its first bad entry; the same values repeat across replicas.
_HostResult = tuple[str, ...] | _BadHost
_HOST_CACHE: dict[str, _HostResult] = {}
_HOST_CACHE_MAX = 16384


def _parse_hosts(raw: str) -> _HostResult:
    cached = _HOST_CACHE.get(raw)
    if cached is not None:
        return cached
    hosts: list[str] = []
    result: _HostResult | None = None
    for part in raw.split(","):
        entry = part.strip()
        if not entry:
            continue
        host = entry.lower() if entry.isascii() else entry
        if not is_valid_host(host):
            unsupported = host.startswith("~") or host.endswith(".*")
            result = _BadHost(entry, unsupported)
            break
        if host not in hosts:
            if len(hosts) == MAX_HOSTS_PER_SERVICE:
                result = _BadHost("", False, True)
                break
            hosts.append(host)
    if result is None:
        result = tuple(hosts)
    if len(_HOST_CACHE) >= _HOST_CACHE_MAX:
        _HOST_CACHE.clear()
    _HOST_CACHE[raw] = result
    return result


def clear_host_memo() -> None:
    """Forget the parsed raw host values: they serve new parses only, cheap to fill again."""
    _HOST_CACHE.clear()


class ContainerSkips:
    """Message helpers for one container; built only when a service is parsed."""

    __slots__ = ("container", "dot", "ref", "skips")

    def __init__(self, container: Container, dot: str) -> None:
        self.container = container
        self.dot = dot
        self.ref: ContainerRef | None = None
        self.skips: list[Skip] = []

    def skip(self, reason: str, sentence: str) -> None:
        if self.ref is None:
            self.ref = ContainerRef(self.container.id, self.container.name)
        self.skips.append(Skip(self.ref, reason, f"container {self.container.name}: {sentence}"))

    def where(self, name: str, key: str, env: Mapping[str, str] | None) -> str:
        if env is not None and key in env:
            return f"env {env[key]}"
        return f"label {self.dot}{name}.{key}" if name else f"label {self.dot}{key}"


def skipped(name: str) -> str:
    return f"service {show_value(name)} skipped" if name else "service skipped"


def build_service(
    ctx: ContainerSkips,
    name: str,
    values: Mapping[str, str],
    env_src: Mapping[str, str] | None,
    compat_port: bool,
    allowed: tuple[str, ...] | None,
) -> Service | None:
    """One service from its raw values; None (and a skip in `ctx`) when it is invalid.

    `env_src` maps a key to the env var its value came from (nginx-proxy compat), for messages.
    `allowed`: `discovery.hosts` (None: any host).
    """
    raw = values.get("host")
    if raw is None:
        ctx.skip(
            NO_HOST,
            f"{ctx.where(name, 'host', None)} is not set, so the service has no host; "
            f"{skipped(name)}",
        )
        return None
    hosts = _parse_hosts(raw)
    if isinstance(hosts, _BadHost):
        bad = hosts.entry
        where = ctx.where(name, "host", env_src)
        shown = (
            show_value(raw)
            if raw.strip() == bad
            else f"{show_value(raw)} has an entry {show_value(bad)} that"
        )
        if hosts.too_many:
            ctx.skip(
                INVALID_LABEL,
                f"{where}: {show_value(raw)} names more than {MAX_HOSTS_PER_SERVICE} hosts; "
                f"{skipped(name)}",
            )
        elif hosts.unsupported:
            ctx.skip(
                UNSUPPORTED_HOST,
                f"{where}: {shown} is a regex or trailing-wildcard host, which lbsync does not "
                f"support (only a leading *. wildcard); {skipped(name)}",
            )
        else:
            ctx.skip(INVALID_LABEL, f"{where}: {shown} is not a valid host name; {skipped(name)}")
        return None
    if not hosts:
        ctx.skip(
            NO_HOST,
            f"{ctx.where(name, 'host', env_src)}: {show_value(raw)} names no host; {skipped(name)}",
        )
        return None
    if allowed is not None:
        outside = next((host for host in hosts if not host_allowed(host, allowed)), None)
        if outside is not None:
            ctx.skip(
                HOST_NOT_ALLOWED,
                f"{ctx.where(name, 'host', env_src)}: host {show_value(outside)} is not allowed by "
                f"discovery.hosts; {skipped(name)}",
            )
            return None

    raw = values.get("port")
    if raw is not None:
        port = int(raw) if _NUMBER_RE.fullmatch(raw) is not None else 0
        if not 1 <= port <= 65535:
            return _invalid(ctx, name, "port", raw, env_src)
    else:
        exposed = ctx.container.exposed_ports
        if len(exposed) == 1:
            port = exposed[0]
        elif compat_port:
            port = _COMPAT_PORT
        elif not exposed:
            ctx.skip(
                NO_PORT,
                f"{ctx.where(name, 'port', None)} is not set and the container exposes no TCP "
                f"port; {skipped(name)}",
            )
            return None
        else:
            ports = ", ".join(str(p) for p in exposed)
            ctx.skip(
                AMBIGUOUS_PORT,
                f"{ctx.where(name, 'port', None)} is not set and the container exposes several "
                f"TCP ports ({ports}); {skipped(name)}",
            )
            return None

    path = values.get("path", "/")
    if _PATH_RE.fullmatch(path) is None:
        return _invalid(ctx, name, "path", path, env_src)

    upstream = values.get("upstream")
    if upstream is not None and _UPSTREAM_RE.fullmatch(upstream) is None:
        return _invalid(ctx, name, "upstream", upstream, env_src)

    raw = values.get("weight")
    weight = 1
    if raw is not None:
        weight = int(raw) if _NUMBER_RE.fullmatch(raw) is not None else 0
        if not 1 <= weight <= 256:
            return _invalid(ctx, name, "weight", raw, env_src)

    balance = values.get("balance", "round_robin")
    if balance not in BALANCE_MODES:
        return _invalid(ctx, name, "balance", balance, env_src)

    return Service(name, hosts, port, path, upstream, weight, balance)


def _invalid(
    ctx: ContainerSkips, name: str, key: str, raw: str, env_src: Mapping[str, str] | None
) -> Service | None:
    """Record a skip for a value outside its grammar; always None (`return _invalid(...)`)."""
    ctx.skip(
        INVALID_LABEL,
        f"{ctx.where(name, key, env_src)}: {show_value(raw)} is not a valid {_WHAT[key]}; "
        f"{skipped(name)}",
    )
    return None
