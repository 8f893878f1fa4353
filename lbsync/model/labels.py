"""Container labels (and, in nginx-proxy compat mode, env vars) -> declared services (SPEC §1).

Pure functions over plain data: nothing here does I/O or logs. Everything a user can get
wrong comes back as a `Skip` whose `detail` is one sentence naming the container and the
exact label (or env var), so the caller decides how loudly to say it.

Every label value is untrusted. Each field is checked against a strict ASCII grammar
(`fullmatch`, so a trailing newline never slips through), which also rejects spaces, `;`,
`{`, `}`, quotes, `$`, `#`, control characters and non-ASCII text: a value that passes can be
written into an nginx or HAProxy config file as is.

Label keys under the prefix (`lbsync` by default):

* `<prefix>.<key>` for the default service (`name == ""`), `<key>` one of `SERVICE_KEYS`;
* `<prefix>.<name>.<key>` for named services, `<name>` matching `[a-z0-9_-]+` and not one of
  `RESERVED_NAMES`; named services inherit nothing from the default one;
* `<prefix>.enable` and `<prefix>.network`, per container;
* any other key under the prefix with one part (`lbsync.public`, `lbsync.apply.proxy`) or three and
  more parts is not ours and is ignored; `<prefix>.<name>.<unknown>` is a typo and skips
  service `<name>`.

`enable` is `true` or `false` (any case, surrounding spaces ignored); any other value is an
invalid label and the container is not enabled. With `discovery.compat == "nginx-proxy"`,
`VIRTUAL_HOST`, `VIRTUAL_PORT` and `VIRTUAL_PATH` stand in for the default service's absent
host, port and path labels; a non-empty `VIRTUAL_HOST` opts the container in (an explicit
`enable=false` still wins), and such a container with neither a port label, `VIRTUAL_PORT`
nor a single exposed port gets port 80. Regex (`~...`) and trailing-wildcard (`app.*`) hosts
are skipped as `unsupported_host`, from env vars and labels alike.
"""

from __future__ import annotations

import re
from collections.abc import Hashable, Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import NamedTuple

from lbsync.config.hosts import host_allowed, is_valid_host
from lbsync.config.schema import DiscoveryConfig
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
    "NO_HOST",
    "NO_PORT",
    "NO_SERVICE",
    "RESERVED_NAMES",
    "SERVICE_KEYS",
    "UNSUPPORTED_HOST",
    "ParsedContainer",
    "is_valid_host",
    "label_network",
    "parse_services",
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
# haproxy_quote accept (nginx's 4,094-byte token; tests/test_quoting.py holds them to it),
# so a value that passes here can never fail a render.
MAX_PATH_LEN = 1024
MAX_NAME_LEN = 64  # a service name, an upstream name
MAX_HOSTS_PER_SERVICE = 100
MAX_SERVICES_PER_CONTAINER = 32

_SERVICE_KEY_SET = frozenset(SERVICE_KEYS)

_PATH_RE = re.compile(rf"/[A-Za-z0-9._~%/-]{{0,{MAX_PATH_LEN - 1}}}")
_UPSTREAM_RE = re.compile(rf"[A-Za-z0-9][A-Za-z0-9_.-]{{0,{MAX_NAME_LEN - 1}}}")
_NETWORK_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_NAME_RE = re.compile(rf"[a-z0-9_-]{{1,{MAX_NAME_LEN}}}")
_NUMBER_RE = re.compile(r"[0-9]{1,10}")  # ASCII digits only: no sign, space or non-ASCII digit
_SHOW_MAX = 80  # longer values are cut in messages

_ENV_HOST = "VIRTUAL_HOST"
_ENV_PORT = "VIRTUAL_PORT"
_ENV_PATH = "VIRTUAL_PATH"
_ENV_KEYS = (("host", _ENV_HOST), ("port", _ENV_PORT), ("path", _ENV_PATH))
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


@dataclass(frozen=True, slots=True)
class ParsedContainer:
    """What one container declares, parsed once (it depends only on the container's id,
    name, labels, env and exposed ports, and on the discovery config).

    `enabled`: the container opted in (or `exposed_by_default` and it did not opt out).
    `services`: the valid services, sorted by name (the default service is named "").
    `skips`: one per invalid service or label. `network`: the valid `<prefix>.network`
    label, else None.
    """

    enabled: bool
    services: tuple[Service, ...] = ()
    skips: tuple[Skip, ...] = ()
    network: str | None = None


NOT_ENABLED = ParsedContainer(enabled=False)


@dataclass(frozen=True, slots=True)
class _Keys:
    dot: str  # "lbsync."
    enable: str  # "lbsync.enable"
    network: str  # "lbsync.network"


@lru_cache(maxsize=16)
def _keys(prefix: str) -> _Keys:
    return _Keys(prefix + ".", prefix + ".enable", prefix + ".network")


def _show(value: str) -> str:
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
    return _show(text)


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


def label_network(container: Container, discovery: DiscoveryConfig) -> str | None:
    """The container's `<prefix>.network` label when set and a valid Docker network name."""
    raw = container.labels.get(_keys(discovery.label_prefix).network)
    if raw is None or _NETWORK_RE.fullmatch(raw) is None:
        return None
    return raw


class _Ctx:
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


def _skipped(name: str) -> str:
    return f"service {_show(name)} skipped" if name else "service skipped"


def _build_service(
    ctx: _Ctx,
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
            f"{_skipped(name)}",
        )
        return None
    hosts = _parse_hosts(raw)
    if isinstance(hosts, _BadHost):
        bad = hosts.entry
        where = ctx.where(name, "host", env_src)
        shown = _show(raw) if raw.strip() == bad else f"{_show(raw)} has an entry {_show(bad)} that"
        if hosts.too_many:
            ctx.skip(
                INVALID_LABEL,
                f"{where}: {_show(raw)} names more than {MAX_HOSTS_PER_SERVICE} hosts; "
                f"{_skipped(name)}",
            )
        elif hosts.unsupported:
            ctx.skip(
                UNSUPPORTED_HOST,
                f"{where}: {shown} is a regex or trailing-wildcard host, which lbsync does not "
                f"support (only a leading *. wildcard); {_skipped(name)}",
            )
        else:
            ctx.skip(INVALID_LABEL, f"{where}: {shown} is not a valid host name; {_skipped(name)}")
        return None
    if not hosts:
        ctx.skip(
            NO_HOST,
            f"{ctx.where(name, 'host', env_src)}: {_show(raw)} names no host; {_skipped(name)}",
        )
        return None
    if allowed is not None:
        outside = next((host for host in hosts if not host_allowed(host, allowed)), None)
        if outside is not None:
            ctx.skip(
                HOST_NOT_ALLOWED,
                f"{ctx.where(name, 'host', env_src)}: host {_show(outside)} is not allowed by "
                f"discovery.hosts; {_skipped(name)}",
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
                f"port; {_skipped(name)}",
            )
            return None
        else:
            ports = ", ".join(str(p) for p in exposed)
            ctx.skip(
                AMBIGUOUS_PORT,
                f"{ctx.where(name, 'port', None)} is not set and the container exposes several "
                f"TCP ports ({ports}); {_skipped(name)}",
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
    ctx: _Ctx, name: str, key: str, raw: str, env_src: Mapping[str, str] | None
) -> Service | None:
    """Record a skip for a value outside its grammar; always None (`return _invalid(...)`)."""
    ctx.skip(
        INVALID_LABEL,
        f"{ctx.where(name, key, env_src)}: {_show(raw)} is not a valid {_WHAT[key]}; "
        f"{_skipped(name)}",
    )
    return None


def _has_entry(value: str) -> bool:
    return any(part.strip() for part in value.split(","))


def parse_services(container: Container, discovery: DiscoveryConfig) -> ParsedContainer:
    """Parse a container's labels (and nginx-proxy env vars) into its services (SPEC §1).

    A container that is not enabled yields no services and no skips, except one for an
    `enable` label that is neither true nor false (the container is then not enabled).
    Results without skips do not depend on the container's identity and are memoized on
    the inputs that decide them (replicas of one service share one result).
    """
    dot = _keys(discovery.label_prefix).dot
    mine = tuple([item for item in container.labels.items() if item[0].startswith(dot)])
    compat = discovery.compat
    if not mine and compat is None and not discovery.exposed_by_default:
        return NOT_ENABLED
    env = container.env
    cache_key = (
        mine,
        container.exposed_ports,
        dot,
        discovery.exposed_by_default,
        compat,
        None if compat is None else (env.get(_ENV_HOST), env.get(_ENV_PORT), env.get(_ENV_PATH)),
        discovery.hosts,
    )
    cached = _PARSE_CACHE.get(cache_key)
    if cached is not None:
        return cached
    result = _parse(container, discovery, mine)
    if not result.skips:
        if len(_PARSE_CACHE) >= _PARSE_CACHE_MAX:
            _PARSE_CACHE.clear()
        _PARSE_CACHE[cache_key] = result
    return result


_PARSE_CACHE: dict[Hashable, ParsedContainer] = {}
_PARSE_CACHE_MAX = 65536  # a last bound; a registry trims it long before (trim_parse_memo)


def parse_memo_size() -> int:
    return len(_PARSE_CACHE)


def trim_parse_memo(in_use: Iterable[ParsedContainer]) -> None:
    """Forget the memoized results no container has any more.

    Hosts come and go (preview environments, one host per CI run): without this the memo
    would keep every label set the daemon ever saw, up to its last bound.
    """
    keep = {id(parsed) for parsed in in_use}
    for key in [key for key, parsed in _PARSE_CACHE.items() if id(parsed) not in keep]:
        del _PARSE_CACHE[key]
    _HOST_CACHE.clear()  # raw host values, for new parses only: cheap to fill again


def _parse(
    container: Container, discovery: DiscoveryConfig, mine: tuple[tuple[str, str], ...]
) -> ParsedContainer:
    keys = _keys(discovery.label_prefix)
    dot = keys.dot
    cut = len(dot)
    default: dict[str, str] | None = None
    named: dict[str, dict[str, str]] | None = None
    problems: dict[str, list[tuple[str, str]]] | None = None  # service -> (label, sentence)
    enable_raw: str | None = None
    network_raw: str | None = None

    for key, value in mine:
        rest = key[cut:]
        if rest in _SERVICE_KEY_SET:
            if default is None:
                default = {rest: value}
            else:
                default[rest] = value
            continue
        if rest == "enable":
            enable_raw = value
            continue
        if rest == "network":
            network_raw = value
            continue
        name, sep, sub = rest.partition(".")
        if not sep or "." in sub or name in RESERVED_NAMES:
            continue  # not a service label: lbsync.public, lbsync.proxy, lbsync.a.b.c, ...
        if named is None:
            named = {}
        values = named.get(name)
        if values is None:
            values = named[name] = {}
        problem: str | None = None
        if _NAME_RE.fullmatch(name) is None:
            problem = (
                f"{_show(name)} is not a valid service name "
                f"(a-z, 0-9, _ and -; at most {MAX_NAME_LEN} characters)"
            )
        elif sub in _SERVICE_KEY_SET:
            values[sub] = value
        elif sub in CONTAINER_KEYS:
            problem = f"{sub} is set per container ({dot}{sub}), not per service"
        else:
            problem = f"{_show(sub)} is not a service key ({', '.join(SERVICE_KEYS)})"
        if problem is not None:
            if problems is None:
                problems = {}
            problems.setdefault(name, []).append((key, problem))

    enabled = discovery.exposed_by_default
    explicit = False
    if enable_raw is not None:
        flag = enable_raw.strip().lower()
        if flag == "true":
            enabled = explicit = True
        elif flag == "false":
            return NOT_ENABLED
        else:
            ctx = _Ctx(container, dot)
            ctx.skip(
                INVALID_LABEL,
                f"label {keys.enable}: {_show(enable_raw)} is not true or false; "
                "container not enabled",
            )
            return ParsedContainer(False, (), tuple(ctx.skips))

    env_src: dict[str, str] | None = None
    compat_port = False
    if discovery.compat == "nginx-proxy":
        # The env vars stand in for absent default-service labels. VIRTUAL_HOST opts the
        # container in and makes it an nginx-proxy container: port 80 when neither
        # VIRTUAL_PORT (nor the port label) nor a single exposed port decides.
        env = container.env
        vhost = env.get(_ENV_HOST)
        is_virtual = vhost is not None and _has_entry(vhost)
        if is_virtual:
            enabled = True
            if default is None:
                default = {}
        if default is not None:
            env_src = {}
            for label_key, env_key in _ENV_KEYS:
                env_value = env.get(env_key)
                if label_key not in default and env_value is not None and env_value.strip():
                    default[label_key] = env_value.strip() if label_key != "host" else env_value
                    env_src[label_key] = env_key
            compat_port = is_virtual and "port" not in default

    if not enabled:
        return NOT_ENABLED

    ctx = _Ctx(container, dot)
    network: str | None = None
    if network_raw is not None:
        if _NETWORK_RE.fullmatch(network_raw) is None:
            ctx.skip(
                INVALID_LABEL,
                f"label {keys.network}: {_show(network_raw)} is not a valid Docker network "
                "name; all its services skipped",
            )
            return ParsedContainer(True, (), tuple(ctx.skips))
        network = network_raw

    allowed = discovery.hosts
    services: list[Service] = []
    if default is not None:
        service = _build_service(ctx, "", default, env_src, compat_port, allowed)
        if service is not None:
            services.append(service)
    if named is not None:
        names = sorted(named)
        room = MAX_SERVICES_PER_CONTAINER - (default is not None)
        if len(names) > room:
            # The first ones (default, then by name) stay: one container's excess costs
            # only itself, and one warning, however many it declares.
            over = names[room:]
            shown = ", ".join(_show(n) for n in over[:3])
            more = f" and {len(over) - 3} more" if len(over) > 3 else ""
            ctx.skip(
                INVALID_LABEL,
                f"label {show_label(dot + over[0])}.*: more than {MAX_SERVICES_PER_CONTAINER} "
                f"services on one container ({len(names) + (default is not None)} declared); "
                f"services {shown}{more} skipped",
            )
            names = names[:room]
        for name in names:
            found = problems.get(name) if problems is not None else None
            if found:
                label, sentence = min(found)
                ctx.skip(INVALID_LABEL, f"label {show_label(label)}: {sentence}; {_skipped(name)}")
                continue
            service = _build_service(ctx, name, named[name], None, False, allowed)
            if service is not None:
                services.append(service)
    if explicit and default is None and named is None:
        ctx.skip(
            NO_SERVICE,
            f"label {keys.enable} is true but no service is declared "
            f"(set {dot}host or {dot}<name>.host)",
        )
    return ParsedContainer(True, tuple(services), tuple(ctx.skips), network)
