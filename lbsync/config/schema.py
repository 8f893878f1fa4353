"""The YAML config file (SPEC §3): frozen dataclasses, defaults, and validation by key path."""

from __future__ import annotations

import copy
import difflib
import ipaddress
import math
import os
import re
import signal as _signal
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal, cast

import yaml

from lbsync.config.hosts import is_valid_host

CheckMode = Literal["exec", "command", "none"]
ReloadMode = Literal["signal", "exec", "command", "haproxy-master", "haproxy-runtime", "none"]
AddressMode = Literal["container", "published"]
SwarmMode = Literal["tasks", "vip"]


class ConfigError(Exception):
    """A config that cannot be used; `problems` are lines like `targets[0].reload: ...`."""

    def __init__(self, problems: list[str], source: Path | None = None) -> None:
        self.problems = problems
        self.source = source
        where = f"{source}: " if source else ""
        super().__init__(where + "; ".join(problems))


@dataclass(frozen=True, slots=True)
class TLSConfig:
    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None


@dataclass(frozen=True, slots=True)
class DockerConfig:
    host: str | None = None  # None = $DOCKER_HOST, else unix:///var/run/docker.sock
    tls: TLSConfig = field(default_factory=TLSConfig)
    resync: float = 60.0  # seconds; 0 = off


@dataclass(frozen=True, slots=True)
class DiscoveryConfig:
    label_prefix: str = "lbsync"
    exposed_by_default: bool = False
    require_healthy: bool = True
    host_address: str = "127.0.0.1"
    address: AddressMode = "container"
    compat: Literal["nginx-proxy"] | None = None
    swarm: SwarmMode | None = None  # None = swarm services are not discovered
    # The names and `*.` patterns containers may claim (lowercase); None = any host.
    hosts: tuple[str, ...] | None = None


@dataclass(frozen=True, slots=True)
class DebounceConfig:
    quiet: float = 0.2  # seconds
    max: float = 2.0
    drain: bool = True  # a container leaving the pool starts a pass at once (SPEC §2)


@dataclass(frozen=True, slots=True)
class LabelSelector:
    """`{label: key=value}` or `{label: key}` (present with any value)."""

    key: str
    value: str | None = None

    def matches(self, labels: Mapping[str, str]) -> bool:
        if self.key not in labels:
            return False
        return self.value is None or labels[self.key] == self.value


@dataclass(frozen=True, slots=True)
class ProxyConfig:
    """How to find the proxy: exactly one of label, name or pid_file is set."""

    label: LabelSelector | None = None
    name: str | None = None
    pid_file: Path | None = None


@dataclass(frozen=True, slots=True)
class TargetConfig:
    name: str
    template: str  # "builtin:nginx", "builtin:haproxy", or an absolute path to a .j2 file
    output: Path
    listen: str = "80"
    default_server: bool = True
    vars: Mapping[str, Any] = field(default_factory=dict)
    select: LabelSelector | None = None
    check: CheckMode = "exec"
    check_command: tuple[str, ...] = ("nginx", "-t")
    reload: ReloadMode = "signal"
    signal: str = "HUP"
    reload_command: tuple[str, ...] = ("nginx", "-s", "reload")
    master_socket: Path | None = None
    runtime_socket: Path | None = None
    slots: int = 8
    proxy: ProxyConfig = field(default_factory=ProxyConfig)

    @property
    def is_builtin(self) -> bool:
        return self.template.startswith("builtin:")


@dataclass(frozen=True, slots=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 9180


@dataclass(frozen=True, slots=True)
class LogConfig:
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["text", "json"] = "text"


@dataclass(frozen=True, slots=True)
class Config:
    docker: DockerConfig
    discovery: DiscoveryConfig
    debounce: DebounceConfig
    targets: tuple[TargetConfig, ...]
    server: ServerConfig
    log: LogConfig
    source: Path | None = None  # the file this came from; None = built-in defaults


# --------------------------------------------------------------------------------------------
# Parsing and validation. Everything below turns the YAML-loaded object into a Config, or
# raises one ConfigError listing every problem as `key.path: message`.

CHECK_MODES: Final[tuple[str, ...]] = ("exec", "command", "none")
RELOAD_MODES: Final[tuple[str, ...]] = (
    "signal",
    "exec",
    "command",
    "haproxy-master",
    "haproxy-runtime",
    "none",
)
ADDRESS_MODES: Final[tuple[str, ...]] = ("container", "published")
COMPAT_MODES: Final[tuple[str, ...]] = ("nginx-proxy",)
SWARM_MODES: Final[tuple[str, ...]] = ("tasks", "vip")
LOG_LEVELS: Final[tuple[str, ...]] = ("debug", "info", "warning", "error")
LOG_FORMATS: Final[tuple[str, ...]] = ("text", "json")
BUILTIN_TEMPLATES: Final[tuple[str, ...]] = ("builtin:nginx", "builtin:haproxy")
DOCKER_SCHEMES: Final[tuple[str, ...]] = ("unix://", "tcp://", "http://", "https://")

CONFIG_ENV_VAR: Final = "LBSYNC_CONFIG"
DEFAULT_CONFIG_FILE: Final = "lbsync.yaml"
DEFAULT_TARGET_NAME: Final = "nginx"
DEFAULT_OUTPUT: Final = Path("/etc/nginx/conf.d/lbsync.conf")

NGINX_CHECK_COMMAND: Final[tuple[str, ...]] = ("nginx", "-t")
NGINX_SIGNAL: Final = "HUP"
NGINX_RELOAD_COMMAND: Final[tuple[str, ...]] = ("nginx", "-s", "reload")
HAPROXY_SIGNAL: Final = "USR2"
HAPROXY_RELOAD_COMMAND: Final[tuple[str, ...]] = ()  # haproxy has no CLI reload

_ROOT_KEYS: Final = ("docker", "discovery", "debounce", "targets", "server", "log")
_DOCKER_KEYS: Final = ("host", "tls", "resync")
_TLS_KEYS: Final = ("ca", "cert", "key")
_DISCOVERY_KEYS: Final = (
    "label_prefix",
    "exposed_by_default",
    "require_healthy",
    "host_address",
    "address",
    "compat",
    "swarm",
    "hosts",
)
_DEBOUNCE_KEYS: Final = ("quiet", "max", "drain")
_TARGET_KEYS: Final = (
    "name",
    "template",
    "output",
    "listen",
    "default_server",
    "vars",
    "select",
    "check",
    "check_command",
    "reload",
    "signal",
    "reload_command",
    "master_socket",
    "runtime_socket",
    "slots",
    "proxy",
)
_SELECT_KEYS: Final = ("label",)
_PROXY_KEYS: Final = ("label", "name", "pid_file")
_SERVER_KEYS: Final = ("listen",)
_LOG_KEYS: Final = ("level", "format")

_LABEL_PREFIX_RE: Final = re.compile(r"[a-z0-9][a-z0-9._-]*")
_TARGET_NAME_RE: Final = re.compile(r"[a-z0-9][a-z0-9_-]*")
_CONTAINER_NAME_RE: Final = re.compile(r"/?[A-Za-z0-9][A-Za-z0-9_.-]*")
_LABEL_KEY_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/-]*")
_HOSTNAME_RE: Final = re.compile(
    r"(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*"
)
_PORT_RE: Final = re.compile(r"[0-9]{1,5}")
_PLAIN_NUMBER_RE: Final = re.compile(r"[0-9]+(?:\.[0-9]+)?")
_DURATION_RE: Final = re.compile(r"(?:[0-9]+(?:\.[0-9]+)?(?:ms|s|m|h))+")
_DURATION_PART_RE: Final = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h)")
_DURATION_UNITS: Final[Mapping[str, float]] = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_DURATION_HINT: Final = "expected a duration like 200ms or 2s"


def _describe(value: object) -> str:
    """How a YAML value reads in a message: `'abc'`, `42`, `true`, `null`, `a list`."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        text = value if len(value) <= 60 else value[:57] + "..."
        return repr(text)
    if isinstance(value, list | tuple):
        return "a list"
    if isinstance(value, Mapping):
        return "a mapping"
    return f"a {type(value).__name__}"


def _join(path: str, key: object) -> str:
    return f"{path}.{key}" if path else str(key)


def _where(path: str) -> str:
    return path or "(top level)"


def _parse_duration_text(text: str) -> float | None:
    if _PLAIN_NUMBER_RE.fullmatch(text):
        return float(text)
    if not _DURATION_RE.fullmatch(text):
        return None
    return sum(
        float(number) * _DURATION_UNITS[unit] for number, unit in _DURATION_PART_RE.findall(text)
    )


def parse_duration(value: object, path: str) -> float:
    """Seconds from `200ms`, `2s`, `1.5s`, `1m`, `1h`, `1m30s`, `0`, or a bare number of seconds.

    Raises ConfigError naming `path` for a negative value or anything else.
    """
    seconds: float | None = None
    if isinstance(value, int | float) and not isinstance(value, bool):
        try:
            seconds = float(value)
        except OverflowError:
            seconds = None
    elif isinstance(value, str):
        text = value.strip()
        negative = text.startswith("-")
        seconds = _parse_duration_text(text[1:] if negative else text)
        if seconds is not None and negative and seconds != 0:
            seconds = -seconds
    if seconds is None or not math.isfinite(seconds):
        raise ConfigError([f"{_where(path)}: {_DURATION_HINT}, got {_describe(value)}"])
    if seconds < 0:
        raise ConfigError(
            [f"{_where(path)}: a duration cannot be negative, got {_describe(value)}"]
        )
    return seconds


class _Problems:
    """Collects `key.path: message` lines while parsing goes on with defaults."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def add(self, path: str, message: str) -> None:
        self.lines.append(f"{_where(path)}: {message}")

    def section(
        self, value: object, path: str, allowed: tuple[str, ...], *, null_ok: bool = True
    ) -> dict[str, object] | None:
        """A mapping with only `allowed` keys (unknown ones reported and dropped).

        None for a value that is not a mapping (reported); `{}` for null when `null_ok`.
        """
        if value is None and null_ok:
            return {}
        if not isinstance(value, Mapping):
            self.add(path, f"expected a mapping, got {_describe(value)}")
            return None
        out: dict[str, object] = {}
        for key, item in value.items():
            if isinstance(key, str) and key in allowed:
                out[key] = item
                continue
            hint = ""
            if isinstance(key, str):
                close = difflib.get_close_matches(key, allowed, n=1)
                if close:
                    hint = f" (did you mean {close[0]}?)"
            self.add(_join(path, key), "unknown key" + hint)
        return out

    def string(self, value: object, path: str) -> str | None:
        if isinstance(value, str) and value.strip():
            return value
        if isinstance(value, str):
            self.add(path, "must not be empty")
        else:
            self.add(path, f"expected a string, got {_describe(value)}")
        return None

    def boolean(self, value: object, path: str) -> bool | None:
        if isinstance(value, bool):
            return value
        self.add(path, f"expected true or false, got {_describe(value)}")
        return None

    def choice(self, value: object, path: str, choices: tuple[str, ...]) -> str | None:
        if isinstance(value, str) and value in choices:
            return value
        self.add(path, f"expected one of {', '.join(choices)}, got {_describe(value)}")
        return None

    def integer(self, value: object, path: str, low: int, high: int) -> int | None:
        if isinstance(value, int) and not isinstance(value, bool):
            if low <= value <= high:
                return value
            self.add(path, f"expected an integer from {low} to {high}, got {value}")
            return None
        self.add(path, f"expected an integer from {low} to {high}, got {_describe(value)}")
        return None

    def duration(self, value: object, path: str) -> float | None:
        try:
            return parse_duration(value, path)
        except ConfigError as err:
            self.lines.extend(err.problems)
            return None

    def command(self, value: object, path: str) -> tuple[str, ...] | None:
        if not isinstance(value, list):
            self.add(path, f"expected a list of strings, got {_describe(value)}")
            return None
        ok = True
        for index, item in enumerate(value):
            if not isinstance(item, str) or not item:
                self.add(f"{path}[{index}]", f"expected a non-empty string, got {_describe(item)}")
                ok = False
        return tuple(cast(list[str], value)) if ok else None

    def path(self, value: object, path: str, base: Path | None) -> Path | None:
        text = self.string(value, path)
        if text is None:
            return None
        if "\0" in text:
            self.add(path, "a path cannot contain a NUL character")
            return None
        return _resolve(base, text)


def _resolve(base: Path | None, text: str) -> Path:
    """An absolute path as is; a relative one joined to the config file's folder."""
    raw = Path(text)
    if base is not None and not raw.is_absolute():
        raw = base / raw
    return Path(os.path.normpath(raw))


def _docker_host(p: _Problems, value: object, path: str) -> str | None:
    if value is None:
        return None
    text = p.string(value, path)
    if text is None:
        return None
    scheme = next((s for s in DOCKER_SCHEMES if text.startswith(s)), None)
    rest = text[len(scheme) :] if scheme else ""
    if (
        scheme is None
        or not rest
        or any(ch.isspace() for ch in text)
        or (scheme == "unix://" and not rest.startswith("/"))
    ):
        p.add(
            path,
            "expected unix:///path/to/docker.sock, tcp://HOST:PORT, http://HOST:PORT "
            f"or https://HOST:PORT, got {_describe(value)}",
        )
        return None
    return text


def _docker(p: _Problems, value: object, base: Path | None) -> DockerConfig:
    sec = p.section(value, "docker", _DOCKER_KEYS) or {}
    host = _docker_host(p, sec.get("host"), "docker.host")
    tls_sec = p.section(sec.get("tls"), "docker.tls", _TLS_KEYS) or {}
    paths: dict[str, Path | None] = {}
    for key in _TLS_KEYS:
        item = tls_sec.get(key)
        paths[key] = None if item is None else p.path(item, f"docker.tls.{key}", base)
    cert_given = tls_sec.get("cert") is not None
    key_given = tls_sec.get("key") is not None
    if cert_given and not key_given:
        p.add("docker.tls.cert", "needs docker.tls.key as well")
    if key_given and not cert_given:
        p.add("docker.tls.key", "needs docker.tls.cert as well")
    tls = TLSConfig(ca=paths["ca"], cert=paths["cert"], key=paths["key"])
    resync = DockerConfig().resync
    if "resync" in sec:
        got = p.duration(sec["resync"], "docker.resync")
        resync = resync if got is None else got
    return DockerConfig(host=host, tls=tls, resync=resync)


def _discovery(p: _Problems, value: object) -> DiscoveryConfig:
    sec = p.section(value, "discovery", _DISCOVERY_KEYS) or {}
    d = DiscoveryConfig()
    label_prefix = d.label_prefix
    if "label_prefix" in sec:
        text = p.string(sec["label_prefix"], "discovery.label_prefix")
        if text is not None and not _LABEL_PREFIX_RE.fullmatch(text):
            p.add(
                "discovery.label_prefix",
                "expected lower-case letters, digits, '.', '_' or '-' "
                f"(starting with a letter or digit), got {_describe(text)}",
            )
        elif text is not None:
            label_prefix = text
    exposed = d.exposed_by_default
    if "exposed_by_default" in sec:
        got_bool = p.boolean(sec["exposed_by_default"], "discovery.exposed_by_default")
        exposed = exposed if got_bool is None else got_bool
    healthy = d.require_healthy
    if "require_healthy" in sec:
        got_bool = p.boolean(sec["require_healthy"], "discovery.require_healthy")
        healthy = healthy if got_bool is None else got_bool
    host_address = d.host_address
    if "host_address" in sec:
        text = p.string(sec["host_address"], "discovery.host_address")
        if text is not None:
            try:
                host_address = str(ipaddress.ip_address(text.strip()))
            except ValueError:
                p.add(
                    "discovery.host_address",
                    f"expected an IPv4 or IPv6 address, got {_describe(text)}",
                )
    address = d.address
    if "address" in sec:
        got = p.choice(sec["address"], "discovery.address", ADDRESS_MODES)
        address = address if got is None else cast(AddressMode, got)
    compat = d.compat
    if sec.get("compat") is not None:
        got = p.choice(sec["compat"], "discovery.compat", COMPAT_MODES)
        compat = compat if got is None else cast(Literal["nginx-proxy"], got)
    swarm = d.swarm
    if sec.get("swarm") is not None:
        got = p.choice(sec["swarm"], "discovery.swarm", SWARM_MODES)
        swarm = swarm if got is None else cast(SwarmMode, got)
    return DiscoveryConfig(
        label_prefix=label_prefix,
        exposed_by_default=exposed,
        require_healthy=healthy,
        host_address=host_address,
        address=address,
        compat=compat,
        swarm=swarm,
        hosts=_allowed_hosts(p, sec.get("hosts"), "discovery.hosts"),
    )


def _allowed_hosts(p: _Problems, value: object, path: str) -> tuple[str, ...] | None:
    """`discovery.hosts`: null (any host), or a non-empty list of host names and `*.`
    patterns in the grammar of the `host` label; trimmed, lowercased, duplicates dropped."""
    if value is None:
        return None
    if not isinstance(value, list):
        p.add(path, f"expected a list of host names and *. patterns, got {_describe(value)}")
        return None
    if not value:
        p.add(path, "an empty list allows no host at all; use null to allow any host")
        return None
    hosts: list[str] = []
    for index, item in enumerate(value):
        host = item.strip().lower() if isinstance(item, str) else None
        if host is None or not is_valid_host(host):
            p.add(
                f"{path}[{index}]",
                "expected a host name (app.example.com) or a *. pattern (*.example.com), "
                f"got {_describe(item)}",
            )
        elif host not in hosts:
            hosts.append(host)
    return tuple(hosts)


def _debounce(p: _Problems, value: object) -> DebounceConfig:
    sec = p.section(value, "debounce", _DEBOUNCE_KEYS) or {}
    defaults = DebounceConfig()
    quiet = defaults.quiet
    maximum = defaults.max
    quiet_ok = max_ok = True
    if "quiet" in sec:
        got = p.duration(sec["quiet"], "debounce.quiet")
        quiet_ok = got is not None
        quiet = quiet if got is None else got
    if "max" in sec:
        got = p.duration(sec["max"], "debounce.max")
        max_ok = got is not None
        maximum = maximum if got is None else got
    if quiet_ok and max_ok and maximum < quiet:
        p.add(
            "debounce.max",
            f"must be at least debounce.quiet ({_seconds(quiet)}), got {_seconds(maximum)}",
        )
    drain = defaults.drain
    if "drain" in sec:
        got_drain = p.boolean(sec["drain"], "debounce.drain")
        drain = drain if got_drain is None else got_drain
    return DebounceConfig(quiet=quiet, max=maximum, drain=drain)


def _seconds(value: float) -> str:
    if value and value < 1:
        return f"{round(value * 1000, 3):g}ms"
    return f"{value:g}s"


def _port(text: str) -> int | None:
    if not _PORT_RE.fullmatch(text):
        return None
    port = int(text)
    return port if 1 <= port <= 65535 else None


def _listen(p: _Problems, value: object, path: str) -> str | None:
    """`[addr:]port` normalised: `80`, `0.0.0.0:80`, `[::]:80`, `*:80`."""
    bad = (
        "expected [addr:]port (port 1..65535; addr an IPv4 address, [IPv6] or *), "
        f"got {_describe(value)}"
    )
    if isinstance(value, int) and not isinstance(value, bool):
        if 1 <= value <= 65535:
            return str(value)
        p.add(path, bad)
        return None
    if not isinstance(value, str):
        p.add(path, bad)
        return None
    text = value.strip()
    addr, sep, port_text = text.rpartition(":")
    port = _port(port_text)
    if port is None:
        p.add(path, bad)
        return None
    if not sep:
        return str(port)
    if addr == "*":
        return f"*:{port}"
    try:
        if addr.startswith("[") and addr.endswith("]"):
            v6 = ipaddress.IPv6Address(addr[1:-1])
            return f"[{v6.compressed}]:{port}"
        return f"{ipaddress.IPv4Address(addr)}:{port}"
    except ValueError:
        p.add(path, bad)
        return None


def _selector(p: _Problems, value: object, path: str) -> LabelSelector | None:
    text = p.string(value, path)
    if text is None:
        return None
    key, eq, label_value = text.partition("=")
    if not _LABEL_KEY_RE.fullmatch(key) or "\n" in label_value:
        p.add(path, f"expected key=value or key (a Docker label), got {_describe(text)}")
        return None
    return LabelSelector(key=key, value=label_value if eq else None)


def _select(p: _Problems, value: object, path: str) -> LabelSelector | None:
    if value is None:
        return None
    sec = p.section(value, path, _SELECT_KEYS)
    if sec is None:
        return None
    if "label" not in sec:
        p.add(_join(path, "label"), "required")
        return None
    return _selector(p, sec["label"], _join(path, "label"))


def _proxy(
    p: _Problems, value: object, path: str, base: Path | None, default: ProxyConfig
) -> ProxyConfig:
    sec = p.section(value, path, _PROXY_KEYS)
    if sec is None:
        return default
    if not sec and value is None:
        return default
    given = [key for key in _PROXY_KEYS if key in sec]
    if len(given) != 1:
        got = f", got {', '.join(given)}" if given else ""
        p.add(path, f"expected exactly one of label, name, pid_file{got}")
        return default
    key = given[0]
    item = sec[key]
    item_path = _join(path, key)
    if key == "label":
        selector = _selector(p, item, item_path)
        return default if selector is None else ProxyConfig(label=selector)
    if key == "name":
        name = p.string(item, item_path)
        if name is None:
            return default
        if not _CONTAINER_NAME_RE.fullmatch(name):
            p.add(item_path, f"expected a container name or id, got {_describe(name)}")
            return default
        return ProxyConfig(name=name.removeprefix("/"))
    pid_file = p.path(item, item_path, base)
    return default if pid_file is None else ProxyConfig(pid_file=pid_file)


def _signal_name(p: _Problems, value: object, path: str) -> str | None:
    if isinstance(value, str):
        name = value.strip().upper().removeprefix("SIG")
        if name and f"SIG{name}" in _signal.Signals.__members__:
            return name
    p.add(path, f"expected a signal name like HUP or USR2, got {_describe(value)}")
    return None


def _template(p: _Problems, value: object, path: str, base: Path | None) -> str | None:
    text = p.string(value, path)
    if text is None:
        return None
    if text in BUILTIN_TEMPLATES:
        return text
    if text.startswith("builtin:") or not text.endswith(".j2"):
        p.add(
            path,
            "expected builtin:nginx, builtin:haproxy or the path of a .j2 file, "
            f"got {_describe(text)}",
        )
        return None
    if "\0" in text:
        p.add(path, "a path cannot contain a NUL character")
        return None
    return str(_resolve(base, text))


def _target(
    p: _Problems, value: object, path: str, base: Path | None, label_prefix: str
) -> TargetConfig | None:
    sec = p.section(value, path, _TARGET_KEYS, null_ok=False)
    if sec is None:
        return None

    def at(key: str) -> str:
        return _join(path, key)

    name = ""
    if "name" not in sec:
        p.add(at("name"), "required")
    else:
        got_name = p.string(sec["name"], at("name"))
        if got_name is not None and not _TARGET_NAME_RE.fullmatch(got_name):
            p.add(
                at("name"),
                "expected lower-case letters, digits, '_' or '-' "
                f"(starting with a letter or digit), got {_describe(got_name)}",
            )
        elif got_name is not None:
            name = got_name

    template = "builtin:nginx"
    template_ok = True
    if "template" in sec:
        got_template = _template(p, sec["template"], at("template"), base)
        template_ok = got_template is not None
        template = got_template or template

    output = Path()
    if "output" not in sec:
        p.add(at("output"), "required")
    else:
        raw = sec["output"]
        if isinstance(raw, str) and raw.endswith("/"):
            p.add(at("output"), f"expected the path of a file, got {_describe(raw)}")
        else:
            output = p.path(raw, at("output"), base) or output

    haproxy = template == "builtin:haproxy" or (
        template != "builtin:nginx" and output.name.endswith(".cfg")
    )
    if haproxy:
        check_command: tuple[str, ...] = ("haproxy", "-c", "-f", str(output))
        signal_name = HAPROXY_SIGNAL
        reload_command = HAPROXY_RELOAD_COMMAND
    else:
        check_command = NGINX_CHECK_COMMAND
        signal_name = NGINX_SIGNAL
        reload_command = NGINX_RELOAD_COMMAND

    listen = "80"
    if "listen" in sec:
        listen = _listen(p, sec["listen"], at("listen")) or listen
    default_server = True
    if "default_server" in sec:
        got_bool = p.boolean(sec["default_server"], at("default_server"))
        default_server = default_server if got_bool is None else got_bool
    variables: dict[str, Any] = {}
    if sec.get("vars") is not None:
        raw_vars = sec["vars"]
        if isinstance(raw_vars, Mapping):
            variables = copy.deepcopy(dict(raw_vars))
        else:
            p.add(at("vars"), f"expected a mapping, got {_describe(raw_vars)}")
    select = _select(p, sec.get("select"), at("select"))

    check: CheckMode = "exec"
    if "check" in sec:
        check = cast(CheckMode, p.choice(sec["check"], at("check"), CHECK_MODES) or check)
    if "check_command" in sec:
        got_cmd = p.command(sec["check_command"], at("check_command"))
        check_command = check_command if got_cmd is None else got_cmd
    reload: ReloadMode = "signal"
    if "reload" in sec:
        reload = cast(ReloadMode, p.choice(sec["reload"], at("reload"), RELOAD_MODES) or reload)
    if "signal" in sec:
        signal_name = _signal_name(p, sec["signal"], at("signal")) or signal_name
    if "reload_command" in sec:
        got_cmd = p.command(sec["reload_command"], at("reload_command"))
        reload_command = reload_command if got_cmd is None else got_cmd
    master_socket = None
    if sec.get("master_socket") is not None:
        master_socket = p.path(sec["master_socket"], at("master_socket"), base)
    runtime_socket = None
    if sec.get("runtime_socket") is not None:
        runtime_socket = p.path(sec["runtime_socket"], at("runtime_socket"), base)
    slots = 8
    if "slots" in sec:
        got_int = p.integer(sec["slots"], at("slots"), 1, 1000)
        slots = slots if got_int is None else got_int
    default_proxy = ProxyConfig(
        label=LabelSelector(key=f"{label_prefix}.proxy", value=name or DEFAULT_TARGET_NAME)
    )
    proxy = _proxy(p, sec.get("proxy"), at("proxy"), base, default_proxy)

    # Combinations that cannot work.
    if proxy.pid_file is not None:
        for key, mode in (("check", check), ("reload", reload)):
            if mode == "exec":
                p.add(at(key), "exec needs a proxy container; a pid_file proxy has none")
    if check in ("exec", "command") and not check_command:
        p.add(at("check"), f"{check} needs a non-empty check_command")
    if reload in ("exec", "command") and not reload_command:
        p.add(at("reload"), f"{reload} needs a non-empty reload_command")
    if reload == "haproxy-master" and master_socket is None:
        p.add(at("reload"), "haproxy-master needs master_socket")
    if reload == "haproxy-runtime" and runtime_socket is None:
        p.add(at("reload"), "haproxy-runtime needs runtime_socket")
    haproxy_reload = reload in ("haproxy-master", "haproxy-runtime")
    if haproxy_reload and template_ok and template == "builtin:nginx":
        p.add(at("reload"), f"{reload} does not work with template builtin:nginx")

    return TargetConfig(
        name=name,
        template=template,
        output=output,
        listen=listen,
        default_server=default_server,
        vars=variables,
        select=select,
        check=check,
        check_command=check_command,
        reload=reload,
        signal=signal_name,
        reload_command=reload_command,
        master_socket=master_socket,
        runtime_socket=runtime_socket,
        slots=slots,
        proxy=proxy,
    )


def default_target(label_prefix: str = "lbsync") -> TargetConfig:
    """The target used when the file lists none (SPEC §3's example)."""
    return TargetConfig(
        name=DEFAULT_TARGET_NAME,
        template="builtin:nginx",
        output=DEFAULT_OUTPUT,
        proxy=ProxyConfig(
            label=LabelSelector(key=f"{label_prefix}.proxy", value=DEFAULT_TARGET_NAME)
        ),
    )


def _targets(
    p: _Problems, value: object, base: Path | None, label_prefix: str
) -> tuple[TargetConfig, ...]:
    if value is None:
        return (default_target(label_prefix),)
    if not isinstance(value, list):
        p.add("targets", f"expected a list of targets, got {_describe(value)}")
        return (default_target(label_prefix),)
    if not value:
        p.add("targets", "expected at least one target")
        return (default_target(label_prefix),)
    targets: list[TargetConfig] = []
    names: dict[str, int] = {}
    outputs: dict[Path, int] = {}
    for index, item in enumerate(value):
        path = f"targets[{index}]"
        target = _target(p, item, path, base, label_prefix)
        if target is None:
            continue
        if target.name:
            if target.name in names:
                p.add(
                    f"{path}.name",
                    f"{target.name!r} is already used by targets[{names[target.name]}]",
                )
            else:
                names[target.name] = index
        if target.output != Path():
            if target.output in outputs:
                p.add(
                    f"{path}.output",
                    f"{target.output} is already written by targets[{outputs[target.output]}]",
                )
            else:
                outputs[target.output] = index
        targets.append(target)
    return tuple(targets) or (default_target(label_prefix),)


def _host_port(p: _Problems, value: object, path: str) -> tuple[str, int] | None:
    bad = f"expected host:port (like 127.0.0.1:9180 or [::1]:9180), got {_describe(value)}"
    if not isinstance(value, str):
        p.add(path, bad)
        return None
    host, sep, port_text = value.strip().rpartition(":")
    port = _port(port_text)
    if not sep or port is None or not host:
        p.add(path, bad)
        return None
    if host.startswith("[") and host.endswith("]"):
        try:
            return ipaddress.IPv6Address(host[1:-1]).compressed, port
        except ValueError:
            p.add(path, bad)
            return None
    if re.fullmatch(r"[0-9.]+", host):
        try:
            return str(ipaddress.IPv4Address(host)), port
        except ValueError:
            p.add(path, bad)
            return None
    if _HOSTNAME_RE.fullmatch(host):
        return host, port
    p.add(path, bad)
    return None


def _server(p: _Problems, value: object) -> ServerConfig:
    sec = p.section(value, "server", _SERVER_KEYS) or {}
    if "listen" in sec:
        got = _host_port(p, sec["listen"], "server.listen")
        if got is not None:
            return ServerConfig(host=got[0], port=got[1])
    return ServerConfig()


def _log(p: _Problems, value: object) -> LogConfig:
    sec = p.section(value, "log", _LOG_KEYS) or {}
    log = LogConfig()
    level = log.level
    if "level" in sec:
        got = p.choice(sec["level"], "log.level", LOG_LEVELS)
        level = level if got is None else cast(Literal["debug", "info", "warning", "error"], got)
    fmt = log.format
    if "format" in sec:
        got = p.choice(sec["format"], "log.format", LOG_FORMATS)
        fmt = fmt if got is None else cast(Literal["text", "json"], got)
    return LogConfig(level=level, format=fmt)


def parse_config(data: object, source: Path | None = None) -> Config:
    """Build a Config from what `yaml.safe_load` returned (None or {} = all defaults).

    Pure: reads no files and no environment. Relative paths are joined to `source`'s folder
    (left relative when `source` is None). Every problem found is reported in one ConfigError.
    """
    p = _Problems()
    base = source.parent if source is not None else None
    root = p.section(data, "", _ROOT_KEYS) or {}
    docker = _docker(p, root.get("docker"), base)
    discovery = _discovery(p, root.get("discovery"))
    debounce = _debounce(p, root.get("debounce"))
    targets = _targets(p, root.get("targets"), base, discovery.label_prefix)
    server = _server(p, root.get("server"))
    log = _log(p, root.get("log"))
    if p.lines:
        raise ConfigError(p.lines, source)
    return Config(
        docker=docker,
        discovery=discovery,
        debounce=debounce,
        targets=targets,
        server=server,
        log=log,
        source=source,
    )


def _yaml_problem(err: yaml.YAMLError) -> str:
    mark = getattr(err, "problem_mark", None)
    problem = getattr(err, "problem", None)
    if mark is not None and problem:
        where = f"line {mark.line + 1}, column {mark.column + 1}"
        return f"invalid YAML at {where}: {problem}"
    return "invalid YAML: " + " ".join(str(err).split())


def _load_file(path: Path, named_by: str | None = None) -> Config:
    file = path.absolute()
    suffix = f" (named by {named_by})" if named_by else ""
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError([f"no such file{suffix}"], file) from None
    except IsADirectoryError:
        raise ConfigError([f"is a directory, not a file{suffix}"], file) from None
    except PermissionError:
        raise ConfigError([f"cannot read: permission denied{suffix}"], file) from None
    except OSError as err:
        raise ConfigError([f"cannot read: {err.strerror or err}{suffix}"], file) from None
    except UnicodeDecodeError:
        raise ConfigError(["cannot read: not UTF-8 text"], file) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError([_yaml_problem(err)], file) from None
    return parse_config(data, file)


def load_config(path: Path | None, environ: Mapping[str, str]) -> Config:
    """Find and read the config: `path`, else `$LBSYNC_CONFIG`, else `./lbsync.yaml` if it
    exists, else the built-in defaults (source None). A named file that is missing,
    unreadable or not valid YAML is a ConfigError naming the file."""
    if path is not None:
        return _load_file(Path(path))
    from_env = environ.get(CONFIG_ENV_VAR, "")
    if from_env:
        return _load_file(Path(from_env), named_by=f"${CONFIG_ENV_VAR}")
    local = Path(DEFAULT_CONFIG_FILE)
    if local.exists():
        return _load_file(local)
    return parse_config(None)
