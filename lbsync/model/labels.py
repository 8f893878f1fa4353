"""Container labels (and, in nginx-proxy compat mode, env vars) -> declared services (SPEC §1).

Pure functions over plain data: nothing here does I/O or logs. Everything a user can get
wrong comes back as a `Skip` whose `detail` is one sentence naming the container and the
exact label (or env var), so the caller decides how loudly to say it.

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

from collections.abc import Hashable, Iterable
from dataclasses import dataclass
from functools import lru_cache

from lbsync.config.schema import DiscoveryConfig
from lbsync.engine.container import Container
from lbsync.model.label_grammar import (
    CONTAINER_KEYS,
    INVALID_LABEL,
    MAX_NAME_LEN,
    MAX_SERVICES_PER_CONTAINER,
    NAME_RE,
    NETWORK_RE,
    NO_SERVICE,
    RESERVED_NAMES,
    SERVICE_KEY_SET,
    SERVICE_KEYS,
    ContainerSkips,
    build_service,
    clear_host_memo,
    show_label,
    show_value,
    skipped,
)
from lbsync.model.types import Service, Skip

__all__ = [
    "NOT_ENABLED",
    "ParsedContainer",
    "label_network",
    "parse_memo_size",
    "parse_services",
    "trim_parse_memo",
]

_ENV_HOST = "VIRTUAL_HOST"
_ENV_PORT = "VIRTUAL_PORT"
_ENV_PATH = "VIRTUAL_PATH"
_ENV_KEYS = (("host", _ENV_HOST), ("port", _ENV_PORT), ("path", _ENV_PATH))


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


def label_network(container: Container, discovery: DiscoveryConfig) -> str | None:
    """The container's `<prefix>.network` label when set and a valid Docker network name."""
    raw = container.labels.get(_keys(discovery.label_prefix).network)
    if raw is None or NETWORK_RE.fullmatch(raw) is None:
        return None
    return raw


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
    clear_host_memo()  # raw host values, for new parses only: cheap to fill again


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
        if rest in SERVICE_KEY_SET:
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
        if NAME_RE.fullmatch(name) is None:
            problem = (
                f"{show_value(name)} is not a valid service name "
                f"(a-z, 0-9, _ and -; at most {MAX_NAME_LEN} characters)"
            )
        elif sub in SERVICE_KEY_SET:
            values[sub] = value
        elif sub in CONTAINER_KEYS:
            problem = f"{sub} is set per container ({dot}{sub}), not per service"
        else:
            problem = f"{show_value(sub)} is not a service key ({', '.join(SERVICE_KEYS)})"
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
            ctx = ContainerSkips(container, dot)
            ctx.skip(
                INVALID_LABEL,
                f"label {keys.enable}: {show_value(enable_raw)} is not true or false; "
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

    ctx = ContainerSkips(container, dot)
    network: str | None = None
    if network_raw is not None:
        if NETWORK_RE.fullmatch(network_raw) is None:
            ctx.skip(
                INVALID_LABEL,
                f"label {keys.network}: {show_value(network_raw)} is not a valid Docker network "
                "name; all its services skipped",
            )
            return ParsedContainer(True, (), tuple(ctx.skips))
        network = network_raw

    allowed = discovery.hosts
    services: list[Service] = []
    if default is not None:
        service = build_service(ctx, "", default, env_src, compat_port, allowed)
        if service is not None:
            services.append(service)
    if named is not None:
        names = sorted(named)
        room = MAX_SERVICES_PER_CONTAINER - (default is not None)
        if len(names) > room:
            # The first ones (default, then by name) stay: one container's excess costs
            # only itself, and one warning, however many it declares.
            over = names[room:]
            shown = ", ".join(show_value(n) for n in over[:3])
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
                ctx.skip(INVALID_LABEL, f"label {show_label(label)}: {sentence}; {skipped(name)}")
                continue
            service = build_service(ctx, name, named[name], None, False, allowed)
            if service is not None:
                services.append(service)
    if explicit and default is None and named is None:
        ctx.skip(
            NO_SERVICE,
            f"label {keys.enable} is true but no service is declared "
            f"(set {dot}host or {dot}<name>.host)",
        )
    return ParsedContainer(True, tuple(services), tuple(ctx.skips), network)
