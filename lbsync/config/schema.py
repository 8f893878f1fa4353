"""The YAML config file (SPEC §3), stated once: every section a frozen dataclass, every key a
field carrying its default and a `Key` (its one-line doc and its reader).

`lbsync.config.parse` reads a file by these declarations (the known keys, the defaults and the
readers all come from here); the README's configuration reference is held to them by a test.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import MISSING, Field, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, Final, Literal, get_args

from lbsync.config.reading import ValueParser
from lbsync.config.selectors import LabelSelector, ProxyConfig, read_proxy, read_select
from lbsync.config.values import (
    integer_in,
    one_of,
    read_allowed_hosts,
    read_boolean,
    read_command,
    read_docker_host,
    read_duration,
    read_host_port,
    read_ip_address,
    read_label_prefix,
    read_listen,
    read_mapping,
    read_output_file,
    read_path,
    read_signal,
    read_target_name,
    read_template,
)

__all__ = [
    "ADDRESS_MODES",
    "CHECK_MODES",
    "COMPAT_MODES",
    "DEFAULT_OUTPUT",
    "DEFAULT_TARGET_NAME",
    "LOG_FORMATS",
    "LOG_LEVELS",
    "NGINX_DEFAULTS",
    "RELOAD_MODES",
    "SWARM_MODES",
    "AddressMode",
    "CheckMode",
    "CompatMode",
    "Config",
    "DebounceConfig",
    "DiscoveryConfig",
    "DockerConfig",
    "Key",
    "LogConfig",
    "LogFormat",
    "LogLevel",
    "ReloadMode",
    "ServerConfig",
    "SwarmMode",
    "TLSConfig",
    "TargetConfig",
    "TemplateDefaults",
    "default_proxy",
    "default_target",
    "field_default",
    "key_paths",
    "keys_of",
    "template_defaults",
]

CheckMode = Literal["exec", "command", "none"]
ReloadMode = Literal["signal", "exec", "command", "haproxy-master", "haproxy-runtime", "none"]
AddressMode = Literal["container", "published"]
CompatMode = Literal["nginx-proxy"]
SwarmMode = Literal["tasks", "vip"]
LogLevel = Literal["debug", "info", "warning", "error"]
LogFormat = Literal["text", "json"]

CHECK_MODES: Final[tuple[str, ...]] = get_args(CheckMode)
RELOAD_MODES: Final[tuple[str, ...]] = get_args(ReloadMode)
ADDRESS_MODES: Final[tuple[str, ...]] = get_args(AddressMode)
COMPAT_MODES: Final[tuple[str, ...]] = get_args(CompatMode)
SWARM_MODES: Final[tuple[str, ...]] = get_args(SwarmMode)
LOG_LEVELS: Final[tuple[str, ...]] = get_args(LogLevel)
LOG_FORMATS: Final[tuple[str, ...]] = get_args(LogFormat)


# --------------------------------------------------------------------------------------------
# What a key is

_KEY: Final = "lbsync.config.key"  # where a field's metadata holds its Key


@dataclass(frozen=True, slots=True)
class Key:
    """One key of the YAML file, declared on the dataclass field it fills."""

    doc: str  # one line: what the key means
    # Reads the value written; None for a section, read key by key from its own dataclass
    # (a nested one is the field's default_factory).
    read: ValueParser[Any] | None = None
    null_is_default: bool = False  # `key: null` is the key left out
    required: bool = False  # no default: leaving it out is an error
    name: str | None = None  # the key's name in the file, when it is not the field's
    fills: tuple[str, ...] = ()  # the fields its value fills, one each, when more than its own


def _key(
    read: ValueParser[Any],
    doc: str,
    *,
    null_is_default: bool = False,
    required: bool = False,
    name: str | None = None,
    fills: tuple[str, ...] = (),
) -> Mapping[str, Key]:
    """A field's metadata declaring it a key of the file."""
    return {_KEY: Key(doc, read, null_is_default, required, name, fills)}


def _section(doc: str) -> Mapping[str, Key]:
    """A field's metadata declaring it a section of the file."""
    return {_KEY: Key(doc)}


def keys_of(cls: type) -> Iterator[tuple[str, Field[Any], Key]]:
    """The keys of the section `cls` in the order they are read: (name in the file, field, Key)."""
    for f in fields(cls):
        declared = f.metadata.get(_KEY)
        if isinstance(declared, Key):
            yield declared.name or f.name, f, declared


def key_paths(cls: type, prefix: str = "") -> Iterator[tuple[str, Field[Any], Key]]:
    """Every key of the section `cls`, a nested section's as `tls.ca`; sections themselves
    are not listed."""
    for name, f, declared in keys_of(cls):
        nested = f.default_factory
        if declared.read is None and isinstance(nested, type) and is_dataclass(nested):
            yield from key_paths(nested, f"{prefix}{name}.")
        else:
            yield prefix + name, f, declared


def field_default(f: Field[Any]) -> Any:
    """A field's default value (MISSING for a required one)."""
    if f.default_factory is not MISSING:
        return f.default_factory()
    return f.default


# --------------------------------------------------------------------------------------------
# The sections


@dataclass(frozen=True, slots=True)
class TLSConfig:
    ca: Path | None = field(
        default=None,
        metadata=_key(
            read_path, "CA bundle that signs the engine's certificate.", null_is_default=True
        ),
    )
    cert: Path | None = field(
        default=None,
        metadata=_key(read_path, "Client certificate; needs tls.key.", null_is_default=True),
    )
    key: Path | None = field(
        default=None,
        metadata=_key(read_path, "Client private key; needs tls.cert.", null_is_default=True),
    )


@dataclass(frozen=True, slots=True)
class DockerConfig:
    host: str | None = field(
        default=None,
        metadata=_key(
            read_docker_host,
            "The engine's address; null = $DOCKER_HOST, else unix:///var/run/docker.sock.",
            null_is_default=True,
        ),
    )
    tls: TLSConfig = field(
        default_factory=TLSConfig, metadata=_section("TLS to a tcp:// or https:// engine.")
    )
    resync: float = field(
        default=60.0,
        metadata=_key(read_duration, "Re-list all containers this often (seconds; 0 = off)."),
    )


@dataclass(frozen=True, slots=True)
class DiscoveryConfig:
    label_prefix: str = field(
        default="lbsync", metadata=_key(read_label_prefix, "Prefix of the labels lbsync reads.")
    )
    exposed_by_default: bool = field(
        default=False,
        metadata=_key(read_boolean, "Expose every container with a host label unless disabled."),
    )
    require_healthy: bool = field(
        default=True,
        metadata=_key(read_boolean, "A container with a HEALTHCHECK gets traffic only healthy."),
    )
    host_address: str = field(
        default="127.0.0.1",
        metadata=_key(read_ip_address, "Address of host-network and published containers."),
    )
    address: AddressMode = field(
        default="container",
        metadata=_key(one_of(ADDRESS_MODES), "The container's IP and port, or the published port."),
    )
    compat: CompatMode | None = field(
        default=None,
        metadata=_key(
            one_of(COMPAT_MODES), "nginx-proxy: also read VIRTUAL_HOST & co.", null_is_default=True
        ),
    )
    swarm: SwarmMode | None = field(
        default=None,
        metadata=_key(
            one_of(SWARM_MODES),
            "Route swarm services by task or by VIP; null = not discovered.",
            null_is_default=True,
        ),
    )
    hosts: tuple[str, ...] | None = field(
        default=None,
        metadata=_key(
            read_allowed_hosts,
            "The names and `*.` patterns containers may claim (lowercase); null = any host.",
            null_is_default=True,
        ),
    )


@dataclass(frozen=True, slots=True)
class DebounceConfig:
    quiet: float = field(
        default=0.2, metadata=_key(read_duration, "How long a lone change waits for its pass.")
    )
    max: float = field(
        default=2.0,
        metadata=_key(read_duration, "Never delay a pass longer than this after the first change."),
    )
    drain: bool = field(
        default=True,
        metadata=_key(read_boolean, "A container leaving the pool starts a pass at once (§2)."),
    )


@dataclass(frozen=True, slots=True)
class TemplateDefaults:
    """The keys whose default follows the template (and, for a user's template, `output`)."""

    check_command: tuple[str, ...]
    signal: str
    reload_command: tuple[str, ...]


NGINX_DEFAULTS: Final = TemplateDefaults(
    check_command=("nginx", "-t"), signal="HUP", reload_command=("nginx", "-s", "reload")
)


def template_defaults(template: str, output: Path) -> TemplateDefaults:
    """builtin:haproxy's, or a user template's writing a `.cfg` file; else nginx's."""
    if template == "builtin:haproxy" or (
        template != "builtin:nginx" and output.name.endswith(".cfg")
    ):
        # haproxy has no CLI reload; its check reads the file written.
        return TemplateDefaults(
            check_command=("haproxy", "-c", "-f", str(output)), signal="USR2", reload_command=()
        )
    return NGINX_DEFAULTS


@dataclass(frozen=True, slots=True, kw_only=True)
class TargetConfig:
    name: str = field(metadata=_key(read_target_name, "Unique name of the target.", required=True))
    template: str = field(
        default="builtin:nginx",
        metadata=_key(read_template, "builtin:nginx, builtin:haproxy, or the path of a .j2 file."),
    )
    output: Path = field(metadata=_key(read_output_file, "The file lbsync writes.", required=True))
    listen: str = field(
        default="80", metadata=_key(read_listen, "Where the proxy listens: [addr:]port.")
    )
    default_server: bool = field(
        default=True,
        metadata=_key(read_boolean, "Render a catch-all answering 503 for unknown hosts."),
    )
    vars: Mapping[str, Any] = field(
        default_factory=dict,
        metadata=_key(read_mapping, "Free-form values for the template.", null_is_default=True),
    )
    select: LabelSelector | None = field(
        default=None,
        metadata=_key(
            read_select,
            "Only containers with this label; null = every service.",
            null_is_default=True,
        ),
    )
    check: CheckMode = field(
        default="exec",
        metadata=_key(one_of(CHECK_MODES), "How the written file is tested before a reload."),
    )
    check_command: tuple[str, ...] = field(
        default=NGINX_DEFAULTS.check_command,
        metadata=_key(read_command, "The checker; its default follows the template."),
    )
    reload: ReloadMode = field(
        default="signal", metadata=_key(one_of(RELOAD_MODES), "How the proxy is reloaded.")
    )
    signal: str = field(
        default=NGINX_DEFAULTS.signal,
        metadata=_key(read_signal, "For reload: signal; its default follows the template."),
    )
    reload_command: tuple[str, ...] = field(
        default=NGINX_DEFAULTS.reload_command,
        metadata=_key(read_command, "For reload: exec|command; its default follows the template."),
    )
    master_socket: Path | None = field(
        default=None,
        metadata=_key(
            read_path, "HAProxy master CLI socket (haproxy-master).", null_is_default=True
        ),
    )
    runtime_socket: Path | None = field(
        default=None,
        metadata=_key(
            read_path, "HAProxy runtime API socket (haproxy-runtime).", null_is_default=True
        ),
    )
    slots: int = field(
        default=8,
        metadata=_key(integer_in(1, 1000), "haproxy-runtime: server slots per backend."),
    )
    # Read from a file, the default is `default_proxy(label_prefix, name)`.
    proxy: ProxyConfig = field(
        default_factory=ProxyConfig,
        metadata=_key(
            read_proxy,
            "How the proxy is found: a label, a name or a pid file.",
            null_is_default=True,
        ),
    )

    @property
    def is_builtin(self) -> bool:
        return self.template.startswith("builtin:")


DEFAULT_TARGET_NAME: Final = "nginx"
DEFAULT_OUTPUT: Final = Path("/etc/nginx/conf.d/lbsync.conf")


def default_proxy(label_prefix: str, target_name: str) -> ProxyConfig:
    """A target's proxy when the file names none: containers labelled `<prefix>.proxy=<name>`."""
    return ProxyConfig(label=LabelSelector(key=f"{label_prefix}.proxy", value=target_name))


def default_target(label_prefix: str = "lbsync") -> TargetConfig:
    """The target used when the file lists none (SPEC §3's example)."""
    return TargetConfig(
        name=DEFAULT_TARGET_NAME,
        output=DEFAULT_OUTPUT,
        proxy=default_proxy(label_prefix, DEFAULT_TARGET_NAME),
    )


@dataclass(frozen=True, slots=True)
class ServerConfig:
    # One key in the file, `listen: host:port`, fills both fields.
    host: str = field(
        default="127.0.0.1",
        metadata=_key(
            read_host_port,
            "Address of /livez, /healthz, /metrics, /status and the status page.",
            name="listen",
            fills=("host", "port"),
        ),
    )
    port: int = 9180


@dataclass(frozen=True, slots=True)
class LogConfig:
    level: LogLevel = field(
        default="info", metadata=_key(one_of(LOG_LEVELS), "Lowest level logged.")
    )
    format: LogFormat = field(
        default="text", metadata=_key(one_of(LOG_FORMATS), "One line per record: text or JSON.")
    )


@dataclass(frozen=True, slots=True)
class Config:
    docker: DockerConfig = field(metadata=_section("How to reach the Docker engine."))
    discovery: DiscoveryConfig = field(metadata=_section("Which containers are routed, and how."))
    debounce: DebounceConfig = field(metadata=_section("How changes are batched into passes."))
    targets: tuple[TargetConfig, ...] = field(
        metadata=_section("The proxies kept in step (a non-empty list).")
    )
    server: ServerConfig = field(metadata=_section("lbsync's own HTTP endpoints."))
    log: LogConfig = field(metadata=_section("Logging."))
    source: Path | None = None  # the file this came from; None = built-in defaults
