"""The config file (SPEC §3): parsing, defaults, validation by key path, and the file search."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from lbsync.config.durations import parse_duration
from lbsync.config.errors import ConfigError
from lbsync.config.load import load_config
from lbsync.config.parse import parse_config
from lbsync.config.schema import (
    Config,
    DebounceConfig,
    DiscoveryConfig,
    DockerConfig,
    LogConfig,
    ServerConfig,
    TargetConfig,
    TLSConfig,
)
from lbsync.config.selectors import LabelSelector, ProxyConfig

ROOT = Path(__file__).resolve().parents[2]
SOURCE = Path("/srv/lbsync/lbsync.yaml")  # parse_config never reads it: only its folder is used


def target(**keys: object) -> dict[str, object]:
    """A config with one valid target plus `keys` (a key set to ... is removed)."""
    entry: dict[str, object] = {"name": "web", "output": "web.conf"}
    entry.update(keys)
    return {"targets": [{k: v for k, v in entry.items() if v is not ...}]}


def problems_of(data: object, source: Path | None = SOURCE) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(data, source)
    return info.value.problems


# --------------------------------------------------------------------------------------------
# Defaults

DEFAULT_CONFIG = Config(
    docker=DockerConfig(host=None, tls=TLSConfig(), resync=60.0),
    discovery=DiscoveryConfig(
        label_prefix="lbsync",
        exposed_by_default=False,
        require_healthy=True,
        host_address="127.0.0.1",
        address="container",
        compat=None,
    ),
    debounce=DebounceConfig(quiet=0.2, max=2.0),
    targets=(
        TargetConfig(
            name="nginx",
            template="builtin:nginx",
            output=Path("/etc/nginx/conf.d/lbsync.conf"),
            listen="80",
            default_server=True,
            vars={},
            select=None,
            check="exec",
            check_command=("nginx", "-t"),
            reload="signal",
            signal="HUP",
            reload_command=("nginx", "-s", "reload"),
            master_socket=None,
            runtime_socket=None,
            slots=8,
            proxy=ProxyConfig(label=LabelSelector("lbsync.proxy", "nginx")),
        ),
    ),
    server=ServerConfig(host="127.0.0.1", port=9180),
    log=LogConfig(level="info", format="text"),
    source=None,
)


@pytest.mark.parametrize(
    "data",
    [None, {}, {"docker": None, "discovery": None, "targets": None, "log": {}}],
    ids=["none", "empty-mapping", "empty-sections"],
)
def test_defaults(data: object) -> None:
    assert parse_config(data) == DEFAULT_CONFIG


def test_default_target_follows_label_prefix() -> None:
    config = parse_config({"discovery": {"label_prefix": "edge"}})
    assert config.targets[0].proxy == ProxyConfig(label=LabelSelector("edge.proxy", "nginx"))


def test_source_is_recorded() -> None:
    assert parse_config({}, SOURCE).source == SOURCE


# --------------------------------------------------------------------------------------------
# Durations


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("200ms", 0.2),
        ("2s", 2.0),
        ("1.5s", 1.5),
        ("1m", 60.0),
        ("1h", 3600.0),
        ("1m30s", 90.0),
        ("0", 0.0),
        ("0s", 0.0),
        (" 3s ", 3.0),
        ("5", 5.0),
        (0, 0.0),
        (5, 5.0),
        (0.25, 0.25),
    ],
    ids=[
        "ms",
        "s",
        "fraction",
        "minute",
        "hour",
        "compound",
        "zero-string",
        "zero-s",
        "spaces",
        "bare-number-string",
        "zero-int",
        "int",
        "float",
    ],
)
def test_parse_duration_valid(value: object, seconds: float) -> None:
    assert parse_duration(value, "debounce.quiet") == pytest.approx(seconds)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("abc", "debounce.quiet: expected a duration like 200ms or 2s, got 'abc'"),
        ("2 s", "debounce.quiet: expected a duration like 200ms or 2s, got '2 s'"),
        ("2d", "debounce.quiet: expected a duration like 200ms or 2s, got '2d'"),
        ("", "debounce.quiet: expected a duration like 200ms or 2s, got ''"),
        ("s", "debounce.quiet: expected a duration like 200ms or 2s, got 's'"),
        (True, "debounce.quiet: expected a duration like 200ms or 2s, got true"),
        (None, "debounce.quiet: expected a duration like 200ms or 2s, got null"),
        ([1], "debounce.quiet: expected a duration like 200ms or 2s, got a list"),
        (float("nan"), "debounce.quiet: expected a duration like 200ms or 2s, got nan"),
        (float("inf"), "debounce.quiet: expected a duration like 200ms or 2s, got inf"),
        (-1, "debounce.quiet: a duration cannot be negative, got -1"),
        ("-2s", "debounce.quiet: a duration cannot be negative, got '-2s'"),
    ],
    ids=[
        "garbage",
        "inner-space",
        "unknown-unit",
        "empty",
        "unit-only",
        "bool",
        "null",
        "list",
        "nan",
        "inf",
        "negative-int",
        "negative-string",
    ],
)
def test_parse_duration_invalid(value: object, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_duration(value, "debounce.quiet")
    assert info.value.problems == [message]
    assert str(info.value) == message


# --------------------------------------------------------------------------------------------
# Valid forms of every key

Getter = Callable[[Config], object]


def t0(config: Config) -> TargetConfig:
    return config.targets[0]


VALID: list[tuple[str, object, Getter, object]] = [
    # docker
    ("docker.host-null", {"docker": {"host": None}}, lambda c: c.docker.host, None),
    (
        "docker.host-unix",
        {"docker": {"host": "unix:///run/docker.sock"}},
        lambda c: c.docker.host,
        "unix:///run/docker.sock",
    ),
    (
        "docker.host-tcp",
        {"docker": {"host": "tcp://10.0.0.1:2376"}},
        lambda c: c.docker.host,
        "tcp://10.0.0.1:2376",
    ),
    (
        "docker.host-https",
        {"docker": {"host": "https://docker.example:2376"}},
        lambda c: c.docker.host,
        "https://docker.example:2376",
    ),
    (
        "docker.host-http",
        {"docker": {"host": "http://socket-proxy:2375"}},
        lambda c: c.docker.host,
        "http://socket-proxy:2375",
    ),
    (
        "docker.tls-all",
        {"docker": {"tls": {"ca": "/certs/ca.pem", "cert": "cert.pem", "key": "key.pem"}}},
        lambda c: c.docker.tls,
        TLSConfig(
            ca=Path("/certs/ca.pem"),
            cert=Path("/srv/lbsync/cert.pem"),
            key=Path("/srv/lbsync/key.pem"),
        ),
    ),
    (
        "docker.tls-ca-only",
        {"docker": {"tls": {"ca": "ca.pem"}}},
        lambda c: c.docker.tls,
        TLSConfig(ca=Path("/srv/lbsync/ca.pem")),
    ),
    ("docker.resync-off", {"docker": {"resync": 0}}, lambda c: c.docker.resync, 0.0),
    ("docker.resync-5m", {"docker": {"resync": "5m"}}, lambda c: c.docker.resync, 300.0),
    # discovery
    (
        "discovery.label_prefix",
        {"discovery": {"label_prefix": "com.example.lb"}},
        lambda c: c.discovery.label_prefix,
        "com.example.lb",
    ),
    (
        "discovery.exposed_by_default",
        {"discovery": {"exposed_by_default": True}},
        lambda c: c.discovery.exposed_by_default,
        True,
    ),
    (
        "discovery.require_healthy",
        {"discovery": {"require_healthy": False}},
        lambda c: c.discovery.require_healthy,
        False,
    ),
    (
        "discovery.host_address-v4",
        {"discovery": {"host_address": "172.17.0.1"}},
        lambda c: c.discovery.host_address,
        "172.17.0.1",
    ),
    (
        "discovery.host_address-v6",
        {"discovery": {"host_address": "0:0:0:0:0:0:0:1"}},
        lambda c: c.discovery.host_address,
        "::1",
    ),
    (
        "discovery.address-published",
        {"discovery": {"address": "published"}},
        lambda c: c.discovery.address,
        "published",
    ),
    (
        "discovery.compat",
        {"discovery": {"compat": "nginx-proxy"}},
        lambda c: c.discovery.compat,
        "nginx-proxy",
    ),
    ("discovery.compat-null", {"discovery": {"compat": None}}, lambda c: c.discovery.compat, None),
    ("discovery.hosts-null", {"discovery": {"hosts": None}}, lambda c: c.discovery.hosts, None),
    (
        "discovery.hosts",
        {"discovery": {"hosts": ["app.example.com", "*.apps.example.com"]}},
        lambda c: c.discovery.hosts,
        ("app.example.com", "*.apps.example.com"),
    ),
    (
        "discovery.hosts-trimmed-lowercased-deduplicated",
        {"discovery": {"hosts": [" App.Example.COM ", "app.example.com", "*.X.test"]}},
        lambda c: c.discovery.hosts,
        ("app.example.com", "*.x.test"),
    ),
    # debounce
    (
        "debounce",
        {"debounce": {"quiet": "50ms", "max": "1s"}},
        lambda c: c.debounce,
        DebounceConfig(quiet=0.05, max=1.0),
    ),
    (
        "debounce.max-equals-quiet",
        {"debounce": {"quiet": "1s", "max": 1}},
        lambda c: c.debounce,
        DebounceConfig(quiet=1.0, max=1.0),
    ),
    ("debounce.zero", {"debounce": {"quiet": 0, "max": 0}}, lambda c: c.debounce.max, 0.0),
    # targets
    ("targets.name", target(name="edge_1-a"), lambda c: t0(c).name, "edge_1-a"),
    (
        "targets.template-haproxy",
        target(template="builtin:haproxy"),
        lambda c: t0(c).template,
        "builtin:haproxy",
    ),
    (
        "targets.template-relative",
        target(template="templates/site.conf.j2"),
        lambda c: t0(c).template,
        "/srv/lbsync/templates/site.conf.j2",
    ),
    (
        "targets.template-absolute",
        target(template="/etc/lbsync/site.j2"),
        lambda c: t0(c).template,
        "/etc/lbsync/site.j2",
    ),
    (
        "targets.output-relative",
        target(output="../out/web.conf"),
        lambda c: t0(c).output,
        Path("/srv/out/web.conf"),
    ),
    (
        "targets.output-absolute",
        target(output="/etc/nginx/conf.d/web.conf"),
        lambda c: t0(c).output,
        Path("/etc/nginx/conf.d/web.conf"),
    ),
    ("targets.listen-int", target(listen=8080), lambda c: t0(c).listen, "8080"),
    ("targets.listen-str", target(listen="443"), lambda c: t0(c).listen, "443"),
    ("targets.listen-v4", target(listen="0.0.0.0:80"), lambda c: t0(c).listen, "0.0.0.0:80"),
    ("targets.listen-v6", target(listen="[::]:80"), lambda c: t0(c).listen, "[::]:80"),
    ("targets.listen-star", target(listen="*:8080"), lambda c: t0(c).listen, "*:8080"),
    ("targets.default_server", target(default_server=False), lambda c: t0(c).default_server, False),
    (
        "targets.vars",
        target(vars={"client_max_body_size": "10m", "nested": {"a": [1, 2]}}),
        lambda c: t0(c).vars,
        {"client_max_body_size": "10m", "nested": {"a": [1, 2]}},
    ),
    ("targets.vars-null", target(vars=None), lambda c: t0(c).vars, {}),
    (
        "targets.select-key-value",
        target(select={"label": "lbsync.public=true"}),
        lambda c: t0(c).select,
        LabelSelector("lbsync.public", "true"),
    ),
    (
        "targets.select-key",
        target(select={"label": "lbsync.public"}),
        lambda c: t0(c).select,
        LabelSelector("lbsync.public", None),
    ),
    (
        "targets.select-empty-value",
        target(select={"label": "tier="}),
        lambda c: t0(c).select,
        LabelSelector("tier", ""),
    ),
    ("targets.select-null", target(select=None), lambda c: t0(c).select, None),
    ("targets.check-none", target(check="none"), lambda c: t0(c).check, "none"),
    ("targets.check-command", target(check="command"), lambda c: t0(c).check, "command"),
    (
        "targets.check_command",
        target(check_command=["nginx", "-t", "-q"]),
        lambda c: t0(c).check_command,
        ("nginx", "-t", "-q"),
    ),
    (
        "targets.check_command-empty-with-check-none",
        target(check="none", check_command=[]),
        lambda c: t0(c).check_command,
        (),
    ),
    ("targets.reload-exec", target(reload="exec"), lambda c: t0(c).reload, "exec"),
    ("targets.reload-none", target(reload="none"), lambda c: t0(c).reload, "none"),
    (
        "targets.reload-haproxy-master",
        target(
            template="builtin:haproxy", reload="haproxy-master", master_socket="run/master.sock"
        ),
        lambda c: (t0(c).reload, t0(c).master_socket),
        ("haproxy-master", Path("/srv/lbsync/run/master.sock")),
    ),
    (
        "targets.reload-haproxy-runtime",
        target(
            template="builtin:haproxy",
            reload="haproxy-runtime",
            runtime_socket="/run/haproxy/admin.sock",
        ),
        lambda c: (t0(c).reload, t0(c).runtime_socket),
        ("haproxy-runtime", Path("/run/haproxy/admin.sock")),
    ),
    (
        "targets.reload-haproxy-master-user-template",
        target(template="haproxy.cfg.j2", reload="haproxy-master", master_socket="/m.sock"),
        lambda c: t0(c).reload,
        "haproxy-master",
    ),
    ("targets.signal-bare", target(signal="USR1"), lambda c: t0(c).signal, "USR1"),
    ("targets.signal-sig", target(signal="SIGHUP"), lambda c: t0(c).signal, "HUP"),
    ("targets.signal-lower", target(signal="sigusr2"), lambda c: t0(c).signal, "USR2"),
    (
        "targets.reload_command",
        target(reload="command", reload_command=["docker", "kill", "-s", "HUP", "nginx"]),
        lambda c: t0(c).reload_command,
        ("docker", "kill", "-s", "HUP", "nginx"),
    ),
    ("targets.master_socket-null", target(master_socket=None), lambda c: t0(c).master_socket, None),
    ("targets.slots-min", target(slots=1), lambda c: t0(c).slots, 1),
    ("targets.slots-max", target(slots=1000), lambda c: t0(c).slots, 1000),
    (
        "targets.proxy-default",
        target(name="public"),
        lambda c: t0(c).proxy,
        ProxyConfig(label=LabelSelector("lbsync.proxy", "public")),
    ),
    (
        "targets.proxy-null",
        target(proxy=None),
        lambda c: t0(c).proxy,
        ProxyConfig(label=LabelSelector("lbsync.proxy", "web")),
    ),
    (
        "targets.proxy-label",
        target(proxy={"label": "com.example.role=edge"}),
        lambda c: t0(c).proxy,
        ProxyConfig(label=LabelSelector("com.example.role", "edge")),
    ),
    (
        "targets.proxy-name",
        target(proxy={"name": "my-nginx"}),
        lambda c: t0(c).proxy,
        ProxyConfig(name="my-nginx"),
    ),
    (
        "targets.proxy-name-slash",
        target(proxy={"name": "/my-nginx"}),
        lambda c: t0(c).proxy,
        ProxyConfig(name="my-nginx"),
    ),
    (
        "targets.proxy-pid_file",
        target(proxy={"pid_file": "run/nginx.pid"}, check="none", reload="signal"),
        lambda c: t0(c).proxy,
        ProxyConfig(pid_file=Path("/srv/lbsync/run/nginx.pid")),
    ),
    (
        "targets.proxy-pid_file-check-command",
        target(proxy={"pid_file": "/run/nginx.pid"}, check="command"),
        lambda c: t0(c).check,
        "command",
    ),
    (
        "targets.two",
        {
            "targets": [
                {"name": "public", "output": "/a/public.conf"},
                {"name": "internal", "output": "/a/internal.conf"},
            ]
        },
        lambda c: [t.name for t in c.targets],
        ["public", "internal"],
    ),
    # server
    (
        "server.listen-v4",
        {"server": {"listen": "0.0.0.0:9000"}},
        lambda c: c.server,
        ServerConfig("0.0.0.0", 9000),
    ),
    (
        "server.listen-v6",
        {"server": {"listen": "[::1]:9180"}},
        lambda c: c.server,
        ServerConfig("::1", 9180),
    ),
    (
        "server.listen-name",
        {"server": {"listen": "localhost:9180"}},
        lambda c: c.server,
        ServerConfig("localhost", 9180),
    ),
    # log
    ("log.level", {"log": {"level": "debug"}}, lambda c: c.log.level, "debug"),
    ("log.format", {"log": {"format": "json"}}, lambda c: c.log.format, "json"),
]


@pytest.mark.parametrize(
    ("data", "get", "expected"), [c[1:] for c in VALID], ids=[c[0] for c in VALID]
)
def test_valid(data: object, get: Getter, expected: object) -> None:
    assert get(parse_config(data, SOURCE)) == expected


# --------------------------------------------------------------------------------------------
# Invalid forms: each gives exactly one problem, with its key path

INVALID: list[tuple[str, object, str]] = [
    # top level
    ("top-list", [1, 2], "(top level): expected a mapping, got a list"),
    ("top-string", "docker", "(top level): expected a mapping, got 'docker'"),
    ("top-unknown", {"dockr": {}}, "dockr: unknown key (did you mean docker?)"),
    ("top-unknown-far", {"zzz": 1}, "zzz: unknown key"),
    ("top-int-key", {1: 2}, "1: unknown key"),
    # docker
    ("docker-not-mapping", {"docker": "unix:///x"}, "docker: expected a mapping, got 'unix:///x'"),
    ("docker.unknown", {"docker": {"socket": "x"}}, "docker.socket: unknown key"),
    (
        "docker.host-ssh",
        {"docker": {"host": "ssh://me@host"}},
        "docker.host: expected unix:///path/to/docker.sock, tcp://HOST:PORT, http://HOST:PORT "
        "or https://HOST:PORT, got 'ssh://me@host'",
    ),
    (
        "docker.host-bare-path",
        {"docker": {"host": "/var/run/docker.sock"}},
        "docker.host: expected unix:///path/to/docker.sock, tcp://HOST:PORT, http://HOST:PORT "
        "or https://HOST:PORT, got '/var/run/docker.sock'",
    ),
    (
        "docker.host-unix-relative",
        {"docker": {"host": "unix://docker.sock"}},
        "docker.host: expected unix:///path/to/docker.sock, tcp://HOST:PORT, http://HOST:PORT "
        "or https://HOST:PORT, got 'unix://docker.sock'",
    ),
    (
        "docker.host-scheme-only",
        {"docker": {"host": "tcp://"}},
        "docker.host: expected unix:///path/to/docker.sock, tcp://HOST:PORT, http://HOST:PORT "
        "or https://HOST:PORT, got 'tcp://'",
    ),
    ("docker.host-int", {"docker": {"host": 2375}}, "docker.host: expected a string, got 2375"),
    ("docker.tls-list", {"docker": {"tls": ["a"]}}, "docker.tls: expected a mapping, got a list"),
    ("docker.tls.unknown", {"docker": {"tls": {"verify": True}}}, "docker.tls.verify: unknown key"),
    (
        "docker.tls.ca-int",
        {"docker": {"tls": {"ca": 1}}},
        "docker.tls.ca: expected a string, got 1",
    ),
    (
        "docker.tls.cert-without-key",
        {"docker": {"tls": {"cert": "c.pem"}}},
        "docker.tls.cert: needs docker.tls.key as well",
    ),
    (
        "docker.tls.key-without-cert",
        {"docker": {"tls": {"key": "k.pem", "cert": None}}},
        "docker.tls.key: needs docker.tls.cert as well",
    ),
    (
        "docker.resync-garbage",
        {"docker": {"resync": "often"}},
        "docker.resync: expected a duration like 200ms or 2s, got 'often'",
    ),
    (
        "docker.resync-negative",
        {"docker": {"resync": -5}},
        "docker.resync: a duration cannot be negative, got -5",
    ),
    # discovery
    ("discovery.unknown", {"discovery": {"bogus": 1}}, "discovery.bogus: unknown key"),
    (
        "discovery.unknown-typo",
        {"discovery": {"require_healty": True}},
        "discovery.require_healty: unknown key (did you mean require_healthy?)",
    ),
    (
        "discovery.label_prefix-upper",
        {"discovery": {"label_prefix": "LBSync"}},
        "discovery.label_prefix: expected lower-case letters, digits, '.', '_' or '-' "
        "(starting with a letter or digit), got 'LBSync'",
    ),
    (
        "discovery.label_prefix-leading-dot",
        {"discovery": {"label_prefix": ".lb"}},
        "discovery.label_prefix: expected lower-case letters, digits, '.', '_' or '-' "
        "(starting with a letter or digit), got '.lb'",
    ),
    (
        "discovery.label_prefix-empty",
        {"discovery": {"label_prefix": ""}},
        "discovery.label_prefix: must not be empty",
    ),
    (
        "discovery.label_prefix-null",
        {"discovery": {"label_prefix": None}},
        "discovery.label_prefix: expected a string, got null",
    ),
    (
        "discovery.exposed_by_default-string",
        {"discovery": {"exposed_by_default": "true"}},
        "discovery.exposed_by_default: expected true or false, got 'true'",
    ),
    (
        "discovery.require_healthy-int",
        {"discovery": {"require_healthy": 1}},
        "discovery.require_healthy: expected true or false, got 1",
    ),
    (
        "discovery.host_address-name",
        {"discovery": {"host_address": "localhost"}},
        "discovery.host_address: expected an IPv4 or IPv6 address, got 'localhost'",
    ),
    (
        "discovery.host_address-bad-v4",
        {"discovery": {"host_address": "300.1.1.1"}},
        "discovery.host_address: expected an IPv4 or IPv6 address, got '300.1.1.1'",
    ),
    (
        "discovery.address",
        {"discovery": {"address": "host"}},
        "discovery.address: expected one of container, published, got 'host'",
    ),
    (
        "discovery.compat",
        {"discovery": {"compat": "traefik"}},
        "discovery.compat: expected one of nginx-proxy, got 'traefik'",
    ),
    (
        "discovery.hosts-string",
        {"discovery": {"hosts": "a.test"}},
        "discovery.hosts: expected a list of host names and *. patterns, got 'a.test'",
    ),
    (
        "discovery.hosts-empty",
        {"discovery": {"hosts": []}},
        "discovery.hosts: an empty list allows no host at all; use null to allow any host",
    ),
    (
        "discovery.hosts-bad-entry",
        {"discovery": {"hosts": ["a.test", "b.test", "x y.test"]}},
        "discovery.hosts[2]: expected a host name (app.example.com) or a *. pattern "
        "(*.example.com), got 'x y.test'",
    ),
    (
        "discovery.hosts-number",
        {"discovery": {"hosts": [80]}},
        "discovery.hosts[0]: expected a host name (app.example.com) or a *. pattern "
        "(*.example.com), got 80",
    ),
    (
        "discovery.hosts-trailing-wildcard",
        {"discovery": {"hosts": ["app.*"]}},
        "discovery.hosts[0]: expected a host name (app.example.com) or a *. pattern "
        "(*.example.com), got 'app.*'",
    ),
    (
        "discovery.hosts-bare-star",
        {"discovery": {"hosts": ["*"]}},
        "discovery.hosts[0]: expected a host name (app.example.com) or a *. pattern "
        "(*.example.com), got '*'",
    ),
    (
        "discovery.hosts-mid-wildcard",
        {"discovery": {"hosts": ["a.*.test"]}},
        "discovery.hosts[0]: expected a host name (app.example.com) or a *. pattern "
        "(*.example.com), got 'a.*.test'",
    ),
    (
        "discovery.hosts-too-long",
        {"discovery": {"hosts": ["a" * 60 + "." + "b" * 60 + "." + "c" * 60 + "." + "d" * 80]}},
        "discovery.hosts[0]: expected a host name (app.example.com) or a *. pattern "
        "(*.example.com), got 'aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa...'",
    ),
    (
        "discovery.hosts-null-entry",
        {"discovery": {"hosts": [None]}},
        "discovery.hosts[0]: expected a host name (app.example.com) or a *. pattern "
        "(*.example.com), got null",
    ),
    # debounce
    (
        "debounce.quiet",
        {"debounce": {"quiet": "abc"}},
        "debounce.quiet: expected a duration like 200ms or 2s, got 'abc'",
    ),
    (
        "debounce.max-bool",
        {"debounce": {"max": False}},
        "debounce.max: expected a duration like 200ms or 2s, got false",
    ),
    (
        "debounce.max-below-quiet",
        {"debounce": {"quiet": "3s"}},
        "debounce.max: must be at least debounce.quiet (3s), got 2s",
    ),
    (
        "debounce.max-below-quiet-ms",
        {"debounce": {"quiet": "500ms", "max": "100ms"}},
        "debounce.max: must be at least debounce.quiet (500ms), got 100ms",
    ),
    ("debounce.unknown", {"debounce": {"min": 1}}, "debounce.min: unknown key"),
    # targets
    ("targets-empty", {"targets": []}, "targets: expected at least one target"),
    (
        "targets-mapping",
        {"targets": {"name": "nginx"}},
        "targets: expected a list of targets, got a mapping",
    ),
    ("targets-item-string", {"targets": ["nginx"]}, "targets[0]: expected a mapping, got 'nginx'"),
    ("targets-item-null", {"targets": [None]}, "targets[0]: expected a mapping, got null"),
    ("targets.unknown", target(upstream="x"), "targets[0].upstream: unknown key"),
    ("targets.name-missing", target(name=...), "targets[0].name: required"),
    (
        "targets.name-upper",
        target(name="Web"),
        "targets[0].name: expected lower-case letters, digits, '_' or '-' "
        "(starting with a letter or digit), got 'Web'",
    ),
    (
        "targets.name-dot",
        target(name="a.b"),
        "targets[0].name: expected lower-case letters, digits, '_' or '-' "
        "(starting with a letter or digit), got 'a.b'",
    ),
    ("targets.name-int", target(name=1), "targets[0].name: expected a string, got 1"),
    (
        "targets.name-duplicate",
        {"targets": [{"name": "a", "output": "/1.conf"}, {"name": "a", "output": "/2.conf"}]},
        "targets[1].name: 'a' is already used by targets[0]",
    ),
    ("targets.output-missing", target(output=...), "targets[0].output: required"),
    (
        "targets.output-list",
        target(output=["a"]),
        "targets[0].output: expected a string, got a list",
    ),
    (
        "targets.output-dir",
        target(output="/etc/nginx/conf.d/"),
        "targets[0].output: expected the path of a file, got '/etc/nginx/conf.d/'",
    ),
    (
        "targets.output-duplicate",
        {
            "targets": [
                {"name": "a", "output": "/srv/lbsync/x.conf"},
                {"name": "b", "output": "x.conf"},
            ]
        },
        "targets[1].output: /srv/lbsync/x.conf is already written by targets[0]",
    ),
    (
        "targets.template-unknown-builtin",
        target(template="builtin:caddy"),
        "targets[0].template: expected builtin:nginx, builtin:haproxy or the path of a .j2 file, "
        "got 'builtin:caddy'",
    ),
    (
        "targets.template-not-j2",
        target(template="site.conf"),
        "targets[0].template: expected builtin:nginx, builtin:haproxy or the path of a .j2 file, "
        "got 'site.conf'",
    ),
    (
        "targets.listen-zero",
        target(listen=0),
        "targets[0].listen: expected [addr:]port (port 1..65535; addr an IPv4 address, [IPv6] "
        "or *), got 0",
    ),
    (
        "targets.listen-big",
        target(listen="65536"),
        "targets[0].listen: expected [addr:]port (port 1..65535; addr an IPv4 address, [IPv6] "
        "or *), got '65536'",
    ),
    (
        "targets.listen-hostname",
        target(listen="localhost:80"),
        "targets[0].listen: expected [addr:]port (port 1..65535; addr an IPv4 address, [IPv6] "
        "or *), got 'localhost:80'",
    ),
    (
        "targets.listen-v6-unbracketed",
        target(listen="::1:80"),
        "targets[0].listen: expected [addr:]port (port 1..65535; addr an IPv4 address, [IPv6] "
        "or *), got '::1:80'",
    ),
    (
        "targets.listen-bool",
        target(listen=True),
        "targets[0].listen: expected [addr:]port (port 1..65535; addr an IPv4 address, [IPv6] "
        "or *), got true",
    ),
    (
        "targets.listen-injection",
        target(listen="80; include /etc/passwd"),
        "targets[0].listen: expected [addr:]port (port 1..65535; addr an IPv4 address, [IPv6] "
        "or *), got '80; include /etc/passwd'",
    ),
    (
        "targets.default_server-string",
        target(default_server="yes please"),
        "targets[0].default_server: expected true or false, got 'yes please'",
    ),
    ("targets.vars-list", target(vars=[1]), "targets[0].vars: expected a mapping, got a list"),
    (
        "targets.select-string",
        target(select="lbsync.public=true"),
        "targets[0].select: expected a mapping, got 'lbsync.public=true'",
    ),
    ("targets.select-no-label", target(select={}), "targets[0].select.label: required"),
    (
        "targets.select-unknown",
        target(select={"label": "a", "name": "b"}),
        "targets[0].select.name: unknown key",
    ),
    (
        "targets.select-bad-key",
        target(select={"label": "=true"}),
        "targets[0].select.label: expected key=value or key (a Docker label), got '=true'",
    ),
    (
        "targets.select-space",
        target(select={"label": "a b=c"}),
        "targets[0].select.label: expected key=value or key (a Docker label), got 'a b=c'",
    ),
    (
        "targets.check",
        target(check="http"),
        "targets[0].check: expected one of exec, command, none, got 'http'",
    ),
    (
        "targets.check_command-string",
        target(check_command="nginx -t"),
        "targets[0].check_command: expected a list of strings, got 'nginx -t'",
    ),
    (
        "targets.check_command-item",
        target(check_command=["nginx", 1]),
        "targets[0].check_command[1]: expected a non-empty string, got 1",
    ),
    (
        "targets.reload",
        target(reload="sighup"),
        "targets[0].reload: expected one of signal, exec, command, haproxy-master, "
        "haproxy-runtime, none, got 'sighup'",
    ),
    (
        "targets.signal-unknown",
        target(signal="RELOAD"),
        "targets[0].signal: expected a signal name like HUP or USR2, got 'RELOAD'",
    ),
    (
        "targets.signal-int",
        target(signal=1),
        "targets[0].signal: expected a signal name like HUP or USR2, got 1",
    ),
    (
        "targets.signal-bare-sig",
        target(signal="SIG"),
        "targets[0].signal: expected a signal name like HUP or USR2, got 'SIG'",
    ),
    (
        "targets.reload_command-null",
        target(reload_command=None),
        "targets[0].reload_command: expected a list of strings, got null",
    ),
    (
        "targets.master_socket-int",
        target(master_socket=1),
        "targets[0].master_socket: expected a string, got 1",
    ),
    (
        "targets.runtime_socket-empty",
        target(runtime_socket=""),
        "targets[0].runtime_socket: must not be empty",
    ),
    (
        "targets.slots-zero",
        target(slots=0),
        "targets[0].slots: expected an integer from 1 to 1000, got 0",
    ),
    (
        "targets.slots-big",
        target(slots=1001),
        "targets[0].slots: expected an integer from 1 to 1000, got 1001",
    ),
    (
        "targets.slots-bool",
        target(slots=True),
        "targets[0].slots: expected an integer from 1 to 1000, got true",
    ),
    (
        "targets.slots-string",
        target(slots="8"),
        "targets[0].slots: expected an integer from 1 to 1000, got '8'",
    ),
    (
        "targets.slots-float",
        target(slots=8.0),
        "targets[0].slots: expected an integer from 1 to 1000, got 8.0",
    ),
    (
        "targets.proxy-empty",
        target(proxy={}),
        "targets[0].proxy: expected exactly one of label, name, pid_file",
    ),
    (
        "targets.proxy-two",
        target(proxy={"name": "a", "pid_file": "/p"}),
        "targets[0].proxy: expected exactly one of label, name, pid_file, got name, pid_file",
    ),
    (
        "targets.proxy-string",
        target(proxy="nginx"),
        "targets[0].proxy: expected a mapping, got 'nginx'",
    ),
    (
        "targets.proxy-bad-name",
        target(proxy={"name": "my nginx"}),
        "targets[0].proxy.name: expected a container name or id, got 'my nginx'",
    ),
    (
        "targets.proxy-bad-label",
        target(proxy={"label": ""}),
        "targets[0].proxy.label: must not be empty",
    ),
    # impossible combinations
    (
        "combo.check-exec-pid_file",
        target(proxy={"pid_file": "/run/nginx.pid"}),
        "targets[0].check: exec needs a proxy container; a pid_file proxy has none",
    ),
    (
        "combo.reload-exec-pid_file",
        target(proxy={"pid_file": "/run/nginx.pid"}, check="none", reload="exec"),
        "targets[0].reload: exec needs a proxy container; a pid_file proxy has none",
    ),
    (
        "combo.check-command-empty",
        target(check="command", check_command=[]),
        "targets[0].check: command needs a non-empty check_command",
    ),
    (
        "combo.check-exec-empty",
        target(check_command=[]),
        "targets[0].check: exec needs a non-empty check_command",
    ),
    (
        "combo.reload-command-empty",
        target(reload="command", reload_command=[]),
        "targets[0].reload: command needs a non-empty reload_command",
    ),
    (
        "combo.reload-exec-haproxy-default",
        target(template="builtin:haproxy", reload="exec"),
        "targets[0].reload: exec needs a non-empty reload_command",
    ),
    (
        "combo.haproxy-master-no-socket",
        target(template="builtin:haproxy", reload="haproxy-master"),
        "targets[0].reload: haproxy-master needs master_socket",
    ),
    (
        "combo.haproxy-runtime-no-socket",
        target(template="builtin:haproxy", reload="haproxy-runtime", master_socket="/m.sock"),
        "targets[0].reload: haproxy-runtime needs runtime_socket",
    ),
    (
        "combo.haproxy-master-nginx",
        target(reload="haproxy-master", master_socket="/m.sock"),
        "targets[0].reload: haproxy-master does not work with template builtin:nginx",
    ),
    (
        "combo.haproxy-runtime-nginx",
        target(template="builtin:nginx", reload="haproxy-runtime", runtime_socket="/r.sock"),
        "targets[0].reload: haproxy-runtime does not work with template builtin:nginx",
    ),
    # server
    (
        "server-string",
        {"server": "127.0.0.1:9180"},
        "server: expected a mapping, got '127.0.0.1:9180'",
    ),
    ("server.unknown", {"server": {"port": 9180}}, "server.port: unknown key"),
    (
        "server.listen-port-only",
        {"server": {"listen": 9180}},
        "server.listen: expected host:port (like 127.0.0.1:9180 or [::1]:9180), got 9180",
    ),
    (
        "server.listen-no-host",
        {"server": {"listen": ":9180"}},
        "server.listen: expected host:port (like 127.0.0.1:9180 or [::1]:9180), got ':9180'",
    ),
    (
        "server.listen-bad-port",
        {"server": {"listen": "127.0.0.1:http"}},
        "server.listen: expected host:port (like 127.0.0.1:9180 or [::1]:9180), "
        "got '127.0.0.1:http'",
    ),
    (
        "server.listen-bad-v6",
        {"server": {"listen": "[::g]:9180"}},
        "server.listen: expected host:port (like 127.0.0.1:9180 or [::1]:9180), got '[::g]:9180'",
    ),
    (
        "server.listen-bad-v4",
        {"server": {"listen": "127.0.0.256:9180"}},
        "server.listen: expected host:port (like 127.0.0.1:9180 or [::1]:9180), "
        "got '127.0.0.256:9180'",
    ),
    # log
    (
        "log.level",
        {"log": {"level": "verbose"}},
        "log.level: expected one of debug, info, warning, error, got 'verbose'",
    ),
    (
        "log.level-upper",
        {"log": {"level": "INFO"}},
        "log.level: expected one of debug, info, warning, error, got 'INFO'",
    ),
    ("log.format", {"log": {"format": "xml"}}, "log.format: expected one of text, json, got 'xml'"),
    ("log.unknown", {"log": {"file": "/x"}}, "log.file: unknown key"),
]


@pytest.mark.parametrize(("data", "message"), [c[1:] for c in INVALID], ids=[c[0] for c in INVALID])
def test_invalid(data: object, message: str) -> None:
    assert problems_of(data) == [message]


def test_error_names_the_source() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({"log": {"format": "xml"}}, SOURCE)
    assert info.value.source == SOURCE
    assert str(info.value) == f"{SOURCE}: log.format: expected one of text, json, got 'xml'"


def test_several_problems_reported_together() -> None:
    data = {
        "discovery": {"bogus": 1, "address": "host"},
        "debounce": {"quiet": "abc"},
        "targets": [
            {"name": "web", "output": "a.conf", "reload": "sighup", "slots": 0},
            {"output": "a.conf", "proxy": {"pid_file": "/run/nginx.pid"}},
        ],
        "server": {"listen": "9180"},
        "log": {"level": "loud"},
    }
    assert problems_of(data) == [
        "discovery.bogus: unknown key",
        "discovery.address: expected one of container, published, got 'host'",
        "debounce.quiet: expected a duration like 200ms or 2s, got 'abc'",
        "targets[0].reload: expected one of signal, exec, command, haproxy-master, "
        "haproxy-runtime, none, got 'sighup'",
        "targets[0].slots: expected an integer from 1 to 1000, got 0",
        "targets[1].name: required",
        "targets[1].check: exec needs a proxy container; a pid_file proxy has none",
        "targets[1].output: /srv/lbsync/a.conf is already written by targets[0]",
        "server.listen: expected host:port (like 127.0.0.1:9180 or [::1]:9180), got '9180'",
        "log.level: expected one of debug, info, warning, error, got 'loud'",
    ]


def test_bad_template_does_not_cascade() -> None:
    data = target(template="site.conf", reload="haproxy-master", master_socket="/m.sock")
    assert problems_of(data) == [
        "targets[0].template: expected builtin:nginx, builtin:haproxy or the path of a .j2 file, "
        "got 'site.conf'"
    ]


# --------------------------------------------------------------------------------------------
# Per-template defaults


@pytest.mark.parametrize(
    ("template", "output", "check_command", "signal", "reload_command"),
    [
        ("builtin:nginx", "/o/lb.conf", ("nginx", "-t"), "HUP", ("nginx", "-s", "reload")),
        ("builtin:haproxy", "/o/lb.cfg", ("haproxy", "-c", "-f", "/o/lb.cfg"), "USR2", ()),
        ("builtin:haproxy", "lb.conf", ("haproxy", "-c", "-f", "/srv/lbsync/lb.conf"), "USR2", ()),
        ("mine.j2", "/o/lb.conf", ("nginx", "-t"), "HUP", ("nginx", "-s", "reload")),
        ("mine.j2", "/o/haproxy.cfg", ("haproxy", "-c", "-f", "/o/haproxy.cfg"), "USR2", ()),
        (..., "/o/lb.cfg", ("nginx", "-t"), "HUP", ("nginx", "-s", "reload")),
    ],
    ids=[
        "builtin-nginx",
        "builtin-haproxy",
        "builtin-haproxy-relative-output",
        "user-template-conf",
        "user-template-cfg",
        "no-template-is-nginx",
    ],
)
def test_per_template_defaults(
    template: object,
    output: str,
    check_command: tuple[str, ...],
    signal: str,
    reload_command: tuple[str, ...],
) -> None:
    t = parse_config(target(template=template, output=output), SOURCE).targets[0]
    assert (t.check_command, t.signal, t.reload_command) == (check_command, signal, reload_command)


def test_explicit_values_beat_template_defaults() -> None:
    data = target(
        template="builtin:haproxy",
        check_command=["haproxy", "-c", "-f", "/usr/local/etc/haproxy/haproxy.cfg"],
        signal="HUP",
        reload_command=["kill", "-USR2", "1"],
    )
    t = parse_config(data, SOURCE).targets[0]
    assert t.check_command == ("haproxy", "-c", "-f", "/usr/local/etc/haproxy/haproxy.cfg")
    assert t.signal == "HUP"
    assert t.reload_command == ("kill", "-USR2", "1")


# --------------------------------------------------------------------------------------------
# Relative paths


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        (Path("/etc/lbsync/lbsync.yaml"), Path("/etc/lbsync/conf.d/web.conf")),
        (Path("/etc/lbsync/sub/../lbsync.yaml"), Path("/etc/lbsync/conf.d/web.conf")),
        (None, Path("conf.d/web.conf")),
    ],
    ids=["file-folder", "normalised", "no-source-stays-relative"],
)
def test_relative_output(source: Path | None, expected: Path) -> None:
    assert parse_config(target(output="./conf.d/web.conf"), source).targets[0].output == expected


def test_all_relative_paths_resolve_against_the_file() -> None:
    data: dict[str, Any] = {
        "docker": {"tls": {"ca": "tls/ca.pem", "cert": "tls/cert.pem", "key": "tls/key.pem"}},
        "targets": [
            {
                "name": "ha",
                "template": "tpl/ha.cfg.j2",
                "output": "out/ha.cfg",
                "reload": "haproxy-master",
                "master_socket": "run/master.sock",
                "runtime_socket": "run/admin.sock",
            },
            {
                "name": "pid",
                "output": "out/pid.conf",
                "check": "none",
                "proxy": {"pid_file": "n.pid"},
            },
        ],
    }
    config = parse_config(data, Path("/cfg/lbsync.yaml"))
    assert config.docker.tls == TLSConfig(
        Path("/cfg/tls/ca.pem"), Path("/cfg/tls/cert.pem"), Path("/cfg/tls/key.pem")
    )
    ha, pid = config.targets
    assert ha.template == "/cfg/tpl/ha.cfg.j2"
    assert ha.output == Path("/cfg/out/ha.cfg")
    assert ha.check_command == ("haproxy", "-c", "-f", "/cfg/out/ha.cfg")
    assert ha.master_socket == Path("/cfg/run/master.sock")
    assert ha.runtime_socket == Path("/cfg/run/admin.sock")
    assert pid.proxy == ProxyConfig(pid_file=Path("/cfg/n.pid"))


def test_vars_are_copied() -> None:
    raw: dict[str, Any] = {"list": [1]}
    config = parse_config(target(vars=raw), SOURCE)
    raw["list"].append(2)
    assert config.targets[0].vars == {"list": [1]}


# --------------------------------------------------------------------------------------------
# The file search

CUSTOM = "log: {level: debug}\n"


def write(path: Path, text: str = CUSTOM) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("explicit", "env", "local", "expected"),
    [
        ("a/explicit.yaml", "b/env.yaml", True, "a/explicit.yaml"),
        (None, "b/env.yaml", True, "b/env.yaml"),
        (None, "", True, "lbsync.yaml"),
        (None, None, True, "lbsync.yaml"),
        (None, None, False, None),
    ],
    ids=["explicit-first", "env-second", "empty-env-ignored", "local-third", "defaults-last"],
)
def test_search_order(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    explicit: str | None,
    env: str | None,
    local: bool,
    expected: str | None,
) -> None:
    monkeypatch.chdir(tmp_path)
    write(tmp_path / "a" / "explicit.yaml")
    write(tmp_path / "b" / "env.yaml")
    if local:
        write(tmp_path / "lbsync.yaml")
    environ = {} if env is None else {"LBSYNC_CONFIG": env}
    config = load_config(None if explicit is None else Path(explicit), environ)
    if expected is None:
        assert config == DEFAULT_CONFIG
    else:
        assert config.source == Path.cwd() / expected  # cwd: tmp_path with symlinks resolved
        assert config.log.level == "debug"


def test_relative_paths_follow_the_found_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    write(tmp_path / "etc" / "lb.yaml", "targets: [{name: web, output: out/web.conf}]\n")
    config = load_config(None, {"LBSYNC_CONFIG": "etc/lb.yaml"})
    assert config.targets[0].output == Path.cwd() / "etc" / "out" / "web.conf"


@pytest.mark.parametrize(
    "text", ["", "# only comments\n", "{}\n"], ids=["empty", "comments", "empty-mapping"]
)
def test_empty_file_is_defaults(tmp_path: Path, text: str) -> None:
    path = write(tmp_path / "lbsync.yaml", text)
    assert load_config(path, {}) == dataclasses.replace(DEFAULT_CONFIG, source=path)


@pytest.mark.parametrize(
    ("how", "message"),
    [
        ("explicit", "{path}: no such file"),
        ("env", "{path}: no such file (named by $LBSYNC_CONFIG)"),
        ("directory", "{path}: is a directory, not a file"),
        ("not-utf8", "{path}: cannot read: not UTF-8 text"),
    ],
    ids=["explicit-missing", "env-missing", "directory", "not-utf8"],
)
def test_unreadable_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str, message: str
) -> None:
    monkeypatch.chdir(tmp_path)
    path = Path.cwd() / "missing.yaml"
    environ: dict[str, str] = {}
    explicit: Path | None = path
    if how == "env":
        explicit, environ = None, {"LBSYNC_CONFIG": "missing.yaml"}
    elif how == "directory":
        path.mkdir()
    elif how == "not-utf8":
        path.write_bytes(b"log: {level: \xff}\n")
    with pytest.raises(ConfigError) as info:
        load_config(explicit, environ)
    assert info.value.source == path
    assert str(info.value) == message.format(path=path)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        (
            "log:\n  level: info\n bad: [\n",
            "invalid YAML at line 3, column 2: "
            "expected <block end>, but found '<block mapping start>'",
        ),
        (
            "targets:\n  - name: a\n    output: b: c\n",
            "invalid YAML at line 3, column 14: mapping values are not allowed here",
        ),
        (
            "log: {level: info\n",
            "invalid YAML at line 2, column 1: expected ',' or '}', but got '<stream end>'",
        ),
        ("a: 1\n---\nb: 2\n", "invalid YAML at line 2, column 1: but found another document"),
    ],
    ids=["bad-indent", "colon-in-value", "unclosed-flow", "two-documents"],
)
def test_yaml_syntax_error_names_file_and_line(tmp_path: Path, text: str, problem: str) -> None:
    path = write(tmp_path / "lbsync.yaml", text)
    with pytest.raises(ConfigError) as info:
        load_config(path, {})
    assert info.value.problems == [problem]
    assert str(info.value) == f"{path}: {problem}"


def test_invalid_file_names_file_and_key(tmp_path: Path) -> None:
    path = write(tmp_path / "lbsync.yaml", "discovery:\n  bogus: 1\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, {})
    assert str(info.value) == f"{path}: discovery.bogus: unknown key"


# --------------------------------------------------------------------------------------------
# config.example.yaml


def test_example_parses_to_the_defaults_it_documents() -> None:
    path = ROOT / "config.example.yaml"
    config = load_config(path, {})
    assert config == dataclasses.replace(DEFAULT_CONFIG, source=path)


def test_example_comments_every_key() -> None:
    lines = (ROOT / "config.example.yaml").read_text(encoding="utf-8").splitlines()
    for index, line in enumerate(lines):
        stripped = line.strip().removeprefix("- ")
        if not stripped or stripped.startswith("#") or stripped.endswith(":"):
            continue
        assert lines[index - 1].strip().startswith("#"), f"no comment above line {index + 1}"
