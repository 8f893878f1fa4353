"""Label parsing (SPEC §1): a table of named cases, then golden files.

Golden files live in tests/testdata/labels/*.txt: an input (discovery settings, labels,
env, exposed ports) and the expected output as stable text. `LBSYNC_UPDATE_GOLDEN=1`
rewrites the expected sections from the current code (review the diff before committing).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest

from lbsync.config.hosts import host_allowed, is_valid_host
from lbsync.config.schema import DiscoveryConfig
from lbsync.engine.container import Container
from lbsync.model.label_grammar import (
    AMBIGUOUS_PORT,
    HOST_NOT_ALLOWED,
    INVALID_LABEL,
    NO_HOST,
    NO_PORT,
    NO_SERVICE,
    UNSUPPORTED_HOST,
)
from lbsync.model.labels import ParsedContainer, label_network, parse_services
from lbsync.model.types import Service

GOLDEN_DIR = Path(__file__).parents[1] / "testdata" / "labels"
UPDATE_GOLDEN = os.environ.get("LBSYNC_UPDATE_GOLDEN") == "1"

LONG_LABEL = "a" * 63
HOST_253 = ".".join([LONG_LABEL, LONG_LABEL, LONG_LABEL, "a" * 61])  # 63*3 + 61 + 3 dots
assert len(HOST_253) == 253
HOST_251 = HOST_253[2:]
HOSTS_100 = ",".join(f"h{i}.test" for i in range(100))
PATH_1024 = "/" + "p" * 1023


def many_services(count: int) -> dict[str, str]:
    """Keyword labels for `on`: services s00, s01, ... each with its own host, port 80."""
    width = len(str(count - 1))
    out: dict[str, str] = {}
    for i in range(count):
        name = f"s{i:0{width}}"
        out[f"{name}__host"] = f"{name}.test"
        out[f"{name}__port"] = "80"
    return out


def make(
    labels: Mapping[str, str],
    *,
    env: Mapping[str, str] | None = None,
    exposed: tuple[int, ...] = (),
    name: str = "web-1",
) -> Container:
    return Container(
        id="c0ffee" + "0" * 58,
        name=name,
        created_ns=1,
        labels=MappingProxyType(dict(labels)),
        env=MappingProxyType(dict(env or {})),
        exposed_ports=exposed,
    )


def service_text(service: Service) -> str:
    """One stable line per service (also the golden files' format)."""
    return (
        f"service {service.name or '(default)'}: hosts={','.join(service.hosts)} "
        f"port={service.port} path={service.path} upstream={service.upstream or '-'} "
        f"weight={service.weight} balance={service.balance}"
    )


def parsed_text(parsed: ParsedContainer) -> str:
    lines = [f"enabled: {str(parsed.enabled).lower()}", f"network: {parsed.network or '-'}"]
    lines += [service_text(s) for s in parsed.services]
    lines += [f"skip {s.reason}: {s.detail}" for s in parsed.skips]
    return "\n".join(lines) + "\n"


# --- the table ------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    labels: Mapping[str, str]
    services: tuple[str, ...] = ()  # service_text lines
    skips: tuple[str, ...] = ()  # reasons
    enabled: bool = True
    env: Mapping[str, str] = field(default_factory=dict)
    exposed: tuple[int, ...] = ()
    discovery: Mapping[str, Any] = field(default_factory=dict)


ON = {"lbsync.enable": "true"}


def on(**labels: str) -> dict[str, str]:
    """Labels with `enable=true`; keyword `web__host` means `lbsync.web.host`."""
    out = dict(ON)
    for key, value in labels.items():
        out["lbsync." + key.replace("__", ".")] = value
    return out


def svc(
    hosts: str,
    port: int = 80,
    path: str = "/",
    upstream: str = "-",
    weight: int = 1,
    balance: str = "round_robin",
    name: str = "(default)",
) -> str:
    return (
        f"service {name}: hosts={hosts} port={port} path={path} upstream={upstream} "
        f"weight={weight} balance={balance}"
    )


def bad(**labels: str) -> Case:
    """An otherwise valid service (host a.test, port 80) with one invalid label."""
    base = {"host": "a.test", "port": "80"}
    base.update(labels)
    return Case(on(**base), skips=(INVALID_LABEL,))


def bad_host(value: str, reason: str = INVALID_LABEL) -> Case:
    return Case(on(host=value, port="80"), skips=(reason,))


NP = {"compat": "nginx-proxy"}
ALLOW = {"hosts": ("a.test", "*.example.com")}

CASES: dict[str, Case] = {
    # enable / exposed_by_default
    "enable-true": Case(on(host="a.test", port="80"), (svc("a.test"),)),
    "enable-true-any-case": Case(
        {"lbsync.enable": "TRUE", "lbsync.host": "a.test", "lbsync.port": "80"}, (svc("a.test"),)
    ),
    "enable-absent-is-off": Case({"lbsync.host": "a.test", "lbsync.port": "80"}, enabled=False),
    "enable-false": Case(
        {"lbsync.enable": "false", "lbsync.host": "a.test", "lbsync.port": "80"}, enabled=False
    ),
    "enable-invalid-yes": Case(
        {"lbsync.enable": "yes", "lbsync.host": "a.test"}, skips=(INVALID_LABEL,), enabled=False
    ),
    "enable-invalid-1": Case({"lbsync.enable": "1"}, skips=(INVALID_LABEL,), enabled=False),
    "enable-invalid-empty": Case({"lbsync.enable": ""}, skips=(INVALID_LABEL,), enabled=False),
    "enable-invalid-injection": Case(
        {"lbsync.enable": "true; rm"}, skips=(INVALID_LABEL,), enabled=False
    ),
    "enable-invalid-with-exposed-by-default": Case(
        {"lbsync.enable": "maybe", "lbsync.host": "a.test", "lbsync.port": "80"},
        skips=(INVALID_LABEL,),
        enabled=False,
        discovery={"exposed_by_default": True},
    ),
    "enable-only-declares-nothing": Case(dict(ON), skips=(NO_SERVICE,)),
    "no-labels-not-enabled": Case({}, enabled=False),
    "exposed-by-default-in": Case(
        {"lbsync.host": "a.test"},
        (svc("a.test", 8080),),
        exposed=(8080,),
        discovery={"exposed_by_default": True},
    ),
    "exposed-by-default-opt-out": Case(
        {"lbsync.enable": "false", "lbsync.host": "a.test"},
        enabled=False,
        discovery={"exposed_by_default": True},
    ),
    "exposed-by-default-no-labels-no-service": Case(
        {}, exposed=(5432,), discovery={"exposed_by_default": True}
    ),
    # host
    "host-lowercased": Case(on(host="App.Example.COM", port="80"), (svc("app.example.com"),)),
    "host-list-trimmed-deduped": Case(
        on(host=" a.test , www.a.test,,A.test, ", port="80"), (svc("a.test,www.a.test"),)
    ),
    "host-wildcard": Case(on(host="*.example.com", port="80"), (svc("*.example.com"),)),
    "host-single-label": Case(on(host="localhost", port="80"), (svc("localhost"),)),
    "host-digits-and-hyphen": Case(on(host="1-a.b2.test", port="80"), (svc("1-a.b2.test"),)),
    "host-label-63": Case(on(host=LONG_LABEL + ".test", port="80"), (svc(LONG_LABEL + ".test"),)),
    "host-total-253": Case(on(host=HOST_253, port="80"), (svc(HOST_253),)),
    # 253 characters with the `*.`: `*.X` matches only names longer than X.
    "host-wildcard-253": Case(on(host="*." + HOST_251, port="80"), (svc("*." + HOST_251),)),
    "host-wildcard-255": bad_host("*." + HOST_253),
    "host-missing": Case(on(port="80"), skips=(NO_HOST,)),
    "host-empty": bad_host("", NO_HOST),
    "host-only-commas": bad_host(" , ,", NO_HOST),
    "host-space": bad_host("a b.test"),
    "host-semicolon": bad_host("a.test;"),
    "host-brace": bad_host("a.test{"),
    "host-close-brace": bad_host("}a.test"),
    "host-quote": bad_host("a'.test"),
    "host-double-quote": bad_host('a".test'),
    "host-newline": bad_host("a.test\nb.test"),
    "host-dollar": bad_host("$host"),
    "host-hash": bad_host("a.test#x"),
    "host-nul": bad_host("a.test\x00"),
    "host-tab-inside": bad_host("a\t.test"),
    "host-unicode": bad_host("bücher.test"),
    "host-kelvin-sign": bad_host("exampl\u212a.com"),
    "host-punycode-ok": Case(
        on(host="xn--bcher-kva.test", port="80"), (svc("xn--bcher-kva.test"),)
    ),
    "host-underscore": bad_host("a_b.test"),
    "host-leading-hyphen": bad_host("-a.test"),
    "host-trailing-hyphen": bad_host("a-.test"),
    "host-label-64": bad_host("a" * 64 + ".test"),
    "host-total-254": bad_host("a" + HOST_253),
    "host-empty-label": bad_host("a..test"),
    "host-trailing-dot": bad_host("a.test."),
    "host-with-port": bad_host("a.test:8080"),
    "host-url": bad_host("http://a.test"),
    "host-ipv6": bad_host("[::1]"),
    "host-mid-wildcard": bad_host("a.*.test"),
    "host-bare-star": bad_host("*"),
    "host-double-wildcard": bad_host("*.*.test"),
    "host-regex": bad_host("~^a\\.test$", UNSUPPORTED_HOST),
    "host-trailing-wildcard": bad_host("app.*", UNSUPPORTED_HOST),
    "host-one-bad-entry-skips-all": bad_host("a.test,b c.test,c.test"),
    "host-overlong": bad_host("a" * 5000),
    "host-overlong-labels": bad_host(".".join(["a" * 63] * 80)),
    "hosts-100": Case(on(host=HOSTS_100, port="80"), (svc(HOSTS_100),)),
    "hosts-101": bad_host(HOSTS_100 + ",h100.test"),
    "hosts-100-with-duplicates": Case(
        on(host=HOSTS_100 + ",h0.test,H1.test, ,", port="80"), (svc(HOSTS_100),)
    ),
    "hosts-10000": bad_host(",".join(f"h{i}.test" for i in range(10_000))),
    # port
    "port-explicit": Case(on(host="a.test", port="8080"), (svc("a.test", 8080),)),
    "port-1": Case(on(host="a.test", port="1"), (svc("a.test", 1),)),
    "port-65535": Case(on(host="a.test", port="65535"), (svc("a.test", 65535),)),
    "port-the-only-exposed": Case(on(host="a.test"), (svc("a.test", 3000),), exposed=(3000,)),
    "port-label-beats-exposed": Case(
        on(host="a.test", port="9000"), (svc("a.test", 9000),), exposed=(80, 443)
    ),
    "port-none-exposed": Case(on(host="a.test"), skips=(NO_PORT,)),
    "port-several-exposed": Case(on(host="a.test"), skips=(AMBIGUOUS_PORT,), exposed=(80, 443)),
    "port-0": bad(port="0"),
    "port-65536": bad(port="65536"),
    "port-trailing-space": bad(port="80 "),
    "port-leading-space": bad(port=" 80"),
    "port-newline": bad(port="80\n"),
    "port-empty": bad(port=""),
    "port-negative": bad(port="-1"),
    "port-plus": bad(port="+80"),
    "port-float": bad(port="80.0"),
    "port-hex": bad(port="0x50"),
    "port-letters": bad(port="http"),
    "port-arabic-digits": bad(port="\u0668\u0660"),
    "port-fullwidth-digits": bad(port="\uff18\uff10"),
    "port-huge": bad(port="9" * 40),
    "port-injection": bad(port="80;"),
    # path
    "path-default": Case(on(host="a.test", port="80"), (svc("a.test"),)),
    "path-prefix": Case(on(host="a.test", port="80", path="/api"), (svc("a.test", path="/api"),)),
    "path-all-allowed-chars": Case(
        on(host="a.test", port="80", path="/A-z_0.9~%2F/x/"),
        (svc("a.test", path="/A-z_0.9~%2F/x/"),),
    ),
    "path-no-slash": bad(path="api"),
    "path-empty": bad(path=""),
    "path-space": bad(path="/a b"),
    "path-semicolon": bad(path="/a;"),
    "path-brace": bad(path="/a{"),
    "path-quote": bad(path="/a'"),
    "path-double-quote": bad(path='/a"'),
    "path-newline": bad(path="/a\n"),
    "path-dollar": bad(path="/$uri"),
    "path-hash": bad(path="/a#b"),
    "path-query": bad(path="/a?b=1"),
    "path-backslash": bad(path="/a\\b"),
    "path-unicode": bad(path="/ä"),
    "path-regex": bad(path="~ ^/api"),
    "path-1024": Case(
        on(host="a.test", port="80", path=PATH_1024), (svc("a.test", path=PATH_1024),)
    ),
    "path-1025": bad(path=PATH_1024 + "x"),
    "path-5001": bad(path="/" + "a" * 5000),
    # upstream
    "upstream-explicit": Case(
        on(host="a.test", port="80", upstream="My.app-1_x"), (svc("a.test", upstream="My.app-1_x"),)
    ),
    "upstream-64": Case(
        on(host="a.test", port="80", upstream="u" * 64), (svc("a.test", upstream="u" * 64),)
    ),
    "upstream-65": bad(upstream="u" * 65),
    "upstream-overlong": bad(upstream="u" * 5000),
    "upstream-leading-hyphen": bad(upstream="-app"),
    "upstream-leading-dot": bad(upstream=".app"),
    "upstream-empty": bad(upstream=""),
    "upstream-space": bad(upstream="my app"),
    "upstream-semicolon": bad(upstream="app;"),
    "upstream-brace": bad(upstream="app{"),
    "upstream-quote": bad(upstream="app'"),
    "upstream-newline": bad(upstream="app\n"),
    "upstream-dollar": bad(upstream="$app"),
    "upstream-unicode": bad(upstream="äpp"),
    # weight
    "weight-1": Case(on(host="a.test", port="80", weight="1"), (svc("a.test"),)),
    "weight-256": Case(on(host="a.test", port="80", weight="256"), (svc("a.test", weight=256),)),
    "weight-0": bad(weight="0"),
    "weight-257": bad(weight="257"),
    "weight-negative": bad(weight="-1"),
    "weight-float": bad(weight="1.5"),
    "weight-space": bad(weight=" 5"),
    "weight-empty": bad(weight=""),
    # balance
    "balance-least-conn": Case(
        on(host="a.test", port="80", balance="least_conn"), (svc("a.test", balance="least_conn"),)
    ),
    "balance-ip-hash": Case(
        on(host="a.test", port="80", balance="ip_hash"), (svc("a.test", balance="ip_hash"),)
    ),
    "balance-round-robin": Case(
        on(host="a.test", port="80", balance="round_robin"), (svc("a.test"),)
    ),
    "balance-unknown": bad(balance="random"),
    "balance-upper-case": bad(balance="LEAST_CONN"),
    "balance-hyphen": bad(balance="round-robin"),
    "balance-trailing-space": bad(balance="ip_hash "),
    "balance-injection": bad(balance="ip_hash;"),
    # network (per container)
    "network-invalid-space": Case(
        on(host="a.test", port="80", network="my net"), skips=(INVALID_LABEL,)
    ),
    "network-invalid-semicolon": Case(
        on(host="a.test", port="80", network="net;"), skips=(INVALID_LABEL,)
    ),
    "network-invalid-leading-hyphen": Case(
        on(host="a.test", port="80", network="-net"), skips=(INVALID_LABEL,)
    ),
    "network-invalid-empty": Case(on(host="a.test", port="80", network=""), skips=(INVALID_LABEL,)),
    # named services
    "named-two": Case(
        on(web__host="a.test", web__port="80", admin__host="admin.a.test", admin__port="9000"),
        (
            svc("admin.a.test", 9000, name="admin"),
            svc("a.test", 80, name="web"),
        ),
    ),
    "named-and-default": Case(
        on(host="a.test", port="80", api__host="api.a.test", api__port="8080"),
        (svc("a.test"), svc("api.a.test", 8080, name="api")),
    ),
    "named-inherits-nothing": Case(
        on(
            host="a.test",
            port="80",
            path="/x",
            weight="5",
            balance="ip_hash",
            upstream="u1",
            web__host="b.test",
        ),
        (
            svc("a.test", path="/x", upstream="u1", weight=5, balance="ip_hash"),
            svc("b.test", 3000, name="web"),
        ),
        exposed=(3000,),
    ),
    "named-name-chars": Case(
        on(**{"a_b-1__host": "a.test", "a_b-1__port": "80"}),
        (svc("a.test", name="a_b-1"),),
    ),
    "named-all-keys": Case(
        on(
            web__host="a.test",
            web__port="81",
            web__path="/w",
            web__upstream="w",
            web__weight="3",
            web__balance="least_conn",
        ),
        (svc("a.test", 81, "/w", "w", 3, "least_conn", name="web"),),
    ),
    "named-without-host": Case(on(web__port="80"), skips=(NO_HOST,)),
    "named-bad-port": Case(on(web__host="a.test", web__port="0"), skips=(INVALID_LABEL,)),
    "named-bad-one-keeps-other": Case(
        on(web__host="a.test", web__port="80", api__host="api test", api__port="80"),
        (svc("a.test", name="web"),),
        skips=(INVALID_LABEL,),
    ),
    "named-unknown-key": Case(
        on(web__host="a.test", web__port="80", web__wieght="2"), skips=(INVALID_LABEL,)
    ),
    "named-enable-per-container": Case(
        on(web__host="a.test", web__port="80", web__enable="true"), skips=(INVALID_LABEL,)
    ),
    "named-network-per-container": Case(
        on(web__host="a.test", web__port="80", web__network="n"), skips=(INVALID_LABEL,)
    ),
    "named-upper-case-name": Case(on(Web__host="a.test", Web__port="80"), skips=(INVALID_LABEL,)),
    "named-unicode-name": Case(on(wéb__host="a.test", wéb__port="80"), skips=(INVALID_LABEL,)),
    "named-hostile-name": Case(
        {"lbsync.enable": "true", "lbsync.w;b.host": "a.test"}, skips=(INVALID_LABEL,)
    ),
    "named-name-64": Case(
        on(**{"n" * 64 + "__host": "a.test", "n" * 64 + "__port": "80"}),
        (svc("a.test", name="n" * 64),),
    ),
    "named-name-65": Case(
        on(**{"n" * 65 + "__host": "a.test", "n" * 65 + "__port": "80"}), skips=(INVALID_LABEL,)
    ),
    "named-name-overlong": Case(
        on(**{"n" * 5000 + "__host": "a.test", "n" * 5000 + "__port": "80"}),
        skips=(INVALID_LABEL,),
    ),
    "services-32": Case(
        on(host="a.test", port="80", **many_services(31)),
        (svc("a.test"), *(svc(f"s{i:02}.test", name=f"s{i:02}") for i in range(31))),
    ),
    "services-33-the-last-skipped": Case(
        on(host="a.test", port="80", **many_services(32)),
        (svc("a.test"), *(svc(f"s{i:02}.test", name=f"s{i:02}") for i in range(31))),
        skips=(INVALID_LABEL,),
    ),
    "services-1000-one-warning": Case(
        on(**many_services(1000)),
        tuple(svc(f"s{i:03}.test", name=f"s{i:03}") for i in range(32)),
        skips=(INVALID_LABEL,),
    ),
    "named-port-ambiguous": Case(
        on(web__host="a.test"), skips=(AMBIGUOUS_PORT,), exposed=(80, 443)
    ),
    # keys that are not ours
    "ignored-single-unknown-key": Case(
        on(host="a.test", port="80", public="true"), (svc("a.test"),)
    ),
    "ignored-proxy-label": Case(on(host="a.test", port="80", proxy="nginx"), (svc("a.test"),)),
    "ignored-proxy-sub-key": Case(on(host="a.test", port="80", proxy__x="1"), (svc("a.test"),)),
    "ignored-reserved-name": Case(on(host="a.test", port="80", host__x="1"), (svc("a.test"),)),
    "ignored-deep-key": Case(on(host="a.test", port="80", a__b__c="1"), (svc("a.test"),)),
    "ignored-other-prefix": Case(
        {"lbsyncx.enable": "true", "traefik.enable": "true", "lbsync": "x"}, enabled=False
    ),
    "custom-prefix": Case(
        {"lb.enable": "true", "lb.host": "a.test", "lb.port": "80", "lbsync.host": "b.test"},
        (svc("a.test"),),
        discovery={"label_prefix": "lb"},
    ),
    "custom-prefix-ignores-default-prefix": Case(
        {"lbsync.enable": "true", "lbsync.host": "a.test"},
        enabled=False,
        discovery={"label_prefix": "lb"},
    ),
    # nginx-proxy compat (SPEC §1)
    "compat-virtual-host-opts-in": Case(
        {}, (svc("a.test", 8080),), env={"VIRTUAL_HOST": "a.test"}, exposed=(8080,), discovery=NP
    ),
    "compat-list-trimmed-empties-dropped": Case(
        {},
        (svc("a.test,b.test", 8080),),
        env={"VIRTUAL_HOST": " a.test , ,B.test,"},
        exposed=(8080,),
        discovery=NP,
    ),
    "compat-no-exposed-port-80": Case(
        {}, (svc("a.test", 80),), env={"VIRTUAL_HOST": "a.test"}, discovery=NP
    ),
    "compat-several-exposed-port-80": Case(
        {},
        (svc("a.test", 80),),
        env={"VIRTUAL_HOST": "a.test"},
        exposed=(443, 8080),
        discovery=NP,
    ),
    "compat-virtual-port": Case(
        {},
        (svc("a.test", 3000),),
        env={"VIRTUAL_HOST": "a.test", "VIRTUAL_PORT": "3000"},
        exposed=(80, 443),
        discovery=NP,
    ),
    "compat-virtual-port-invalid": Case(
        {},
        skips=(INVALID_LABEL,),
        env={"VIRTUAL_HOST": "a.test", "VIRTUAL_PORT": "http"},
        discovery=NP,
    ),
    "compat-virtual-path": Case(
        {},
        (svc("a.test", path="/api"),),
        env={"VIRTUAL_HOST": "a.test", "VIRTUAL_PATH": "/api"},
        discovery=NP,
    ),
    "compat-virtual-path-regex": Case(
        {},
        skips=(INVALID_LABEL,),
        env={"VIRTUAL_HOST": "a.test", "VIRTUAL_PATH": "~ ^/api"},
        discovery=NP,
    ),
    "compat-labels-win": Case(
        {"lbsync.host": "label.test", "lbsync.port": "81", "lbsync.path": "/l"},
        (svc("label.test", 81, "/l"),),
        env={"VIRTUAL_HOST": "env.test", "VIRTUAL_PORT": "82", "VIRTUAL_PATH": "/e"},
        discovery=NP,
    ),
    "compat-label-port-with-env-host": Case(
        {"lbsync.port": "81"},
        (svc("env.test", 81),),
        env={"VIRTUAL_HOST": "env.test"},
        discovery=NP,
    ),
    "compat-env-port-fills-label-service": Case(
        {"lbsync.enable": "true", "lbsync.host": "a.test"},
        (svc("a.test", 3000),),
        env={"VIRTUAL_PORT": "3000"},
        exposed=(80, 443),
        discovery=NP,
    ),
    "compat-no-port-80-without-virtual-host": Case(
        {"lbsync.enable": "true", "lbsync.host": "a.test"},
        skips=(AMBIGUOUS_PORT,),
        exposed=(80, 443),
        discovery=NP,
    ),
    "compat-regex-host": Case(
        {}, skips=(UNSUPPORTED_HOST,), env={"VIRTUAL_HOST": "~^api\\..*\\.test$"}, discovery=NP
    ),
    "compat-trailing-wildcard": Case(
        {}, skips=(UNSUPPORTED_HOST,), env={"VIRTUAL_HOST": "app.*"}, discovery=NP
    ),
    "compat-one-unsupported-entry-skips": Case(
        {}, skips=(UNSUPPORTED_HOST,), env={"VIRTUAL_HOST": "a.test,app.*"}, discovery=NP
    ),
    "compat-leading-wildcard-ok": Case(
        {}, (svc("*.a.test"),), env={"VIRTUAL_HOST": "*.a.test"}, discovery=NP
    ),
    "compat-invalid-host": Case(
        {}, skips=(INVALID_LABEL,), env={"VIRTUAL_HOST": "a b.test"}, discovery=NP
    ),
    "compat-enable-false-wins": Case(
        {"lbsync.enable": "false"}, enabled=False, env={"VIRTUAL_HOST": "a.test"}, discovery=NP
    ),
    "compat-empty-virtual-host-ignored": Case(
        {}, enabled=False, env={"VIRTUAL_HOST": " , "}, discovery=NP
    ),
    "compat-off-env-ignored": Case({}, enabled=False, env={"VIRTUAL_HOST": "a.test"}),
    # discovery.hosts (SPEC §1): one host outside skips the service, others stay
    "allow-exact": Case(on(host="A.test", port="80"), (svc("a.test"),), discovery=ALLOW),
    "allow-wildcard-child": Case(
        on(host="a.example.com,x.y.example.com", port="80"),
        (svc("a.example.com,x.y.example.com"),),
        discovery=ALLOW,
    ),
    "allow-wildcard-itself": Case(
        on(host="*.example.com", port="80"), (svc("*.example.com"),), discovery=ALLOW
    ),
    "allow-narrower-wildcard": Case(
        on(host="*.a.example.com", port="80"), (svc("*.a.example.com"),), discovery=ALLOW
    ),
    "allow-outside": Case(on(host="b.test", port="80"), skips=(HOST_NOT_ALLOWED,), discovery=ALLOW),
    "allow-one-outside-skips-the-service": Case(
        on(host="a.test,b.test", port="80"), skips=(HOST_NOT_ALLOWED,), discovery=ALLOW
    ),
    "allow-parent-of-wildcard-not-allowed": Case(
        on(host="example.com", port="80"), skips=(HOST_NOT_ALLOWED,), discovery=ALLOW
    ),
    "allow-wider-wildcard-not-allowed": Case(
        on(host="*.com", port="80"), skips=(HOST_NOT_ALLOWED,), discovery=ALLOW
    ),
    "allow-suffix-without-dot-not-allowed": Case(
        on(host="evilexample.com", port="80"), skips=(HOST_NOT_ALLOWED,), discovery=ALLOW
    ),
    "allow-exact-has-no-children": Case(
        on(host="x.a.test", port="80"), skips=(HOST_NOT_ALLOWED,), discovery=ALLOW
    ),
    "allow-named-service-alone-skipped": Case(
        on(host="a.test", port="80", web__host="evil.test", web__port="80"),
        (svc("a.test"),),
        skips=(HOST_NOT_ALLOWED,),
        discovery=ALLOW,
    ),
    "allow-compat-env": Case(
        {}, skips=(HOST_NOT_ALLOWED,), env={"VIRTUAL_HOST": "b.test"}, discovery={**NP, **ALLOW}
    ),
    "allow-null-is-any": Case(
        on(host="b.test", port="80"), (svc("b.test"),), discovery={"hosts": None}
    ),
    "compat-named-services-get-no-port-80": Case(
        {"lbsync.web.host": "w.test"},
        (svc("a.test"),),
        skips=(NO_PORT,),
        env={"VIRTUAL_HOST": "a.test"},
        discovery=NP,
    ),
}


@pytest.mark.parametrize("case", list(CASES.values()), ids=list(CASES))
def test_parse_table(case: Case) -> None:
    container = make(case.labels, env=case.env, exposed=case.exposed)
    parsed = parse_services(container, DiscoveryConfig(**case.discovery))
    assert parsed.enabled is case.enabled
    assert tuple(service_text(s) for s in parsed.services) == case.services
    assert tuple(s.reason for s in parsed.skips) == case.skips
    for skip in parsed.skips:
        # One sentence, one line, naming the container and the label or env var.
        assert "\n" not in skip.detail
        assert skip.detail.startswith("container web-1: ")
        assert any(
            where in skip.detail
            for where in ("label lbsync.", "label 'lbsync.", "label lb.", "env VIRTUAL_")
        )
        assert skip.container.name == "web-1"
        assert skip.container.id == container.id
        assert len(skip.detail) < 500, "long values and keys are cut"


HOSTILE = [
    "a b",
    "a;b",
    "a{b",
    "a}b",
    "a'b",
    'a"b',
    "a\nb",
    "a\rb",
    "a$b",
    "a#b",
    "a\x00b",
    "ä",
    "a\u202eb",
    "x" * 300,
]


@pytest.mark.parametrize("key", ["host", "port", "path", "upstream", "weight", "balance"])
@pytest.mark.parametrize("value", HOSTILE, ids=[f"hostile{i}" for i in range(len(HOSTILE))])
def test_hostile_values_never_reach_a_service(key: str, value: str) -> None:
    labels = {"host": "a.test", "port": "80", key: value}
    parsed = parse_services(make(on(**labels)), DiscoveryConfig())
    assert parsed.services == ()
    assert len(parsed.skips) == 1
    detail = parsed.skips[0].detail
    assert f"lbsync.{key}" in detail
    assert "\n" not in detail and "\r" not in detail and "\x00" not in detail
    assert len(detail) < 400  # long values are cut


def test_skip_detail_reads_as_documented() -> None:
    parsed = parse_services(make(on(host="a b.test", port="80")), DiscoveryConfig())
    assert parsed.skips[0].detail == (
        "container web-1: label lbsync.host: 'a b.test' is not a valid host name; service skipped"
    )


def test_named_skip_names_service_and_label() -> None:
    parsed = parse_services(make(on(api__host="a.test", api__port="0")), DiscoveryConfig())
    (skip,) = parsed.skips
    assert skip.detail.startswith("container web-1: label lbsync.api.port: '0' ")
    assert skip.detail.endswith("; service 'api' skipped")


def test_compat_unsupported_host_warning_says_so() -> None:
    parsed = parse_services(
        make({}, env={"VIRTUAL_HOST": "app.*"}), DiscoveryConfig(compat="nginx-proxy")
    )
    (skip,) = parsed.skips
    assert skip.reason == UNSUPPORTED_HOST
    assert "env VIRTUAL_HOST" in skip.detail and "not support" in skip.detail


def test_network_label() -> None:
    discovery = DiscoveryConfig()
    parsed = parse_services(make(on(host="a.test", port="80", network="app_net")), discovery)
    assert parsed.network == "app_net"
    assert label_network(make({"lbsync.network": "app_net"}), discovery) == "app_net"
    assert label_network(make({"lbsync.network": "a b"}), discovery) is None
    assert label_network(make({}), discovery) is None
    custom = DiscoveryConfig(label_prefix="lb")
    assert label_network(make({"lb.network": "n1", "lbsync.network": "n2"}), custom) == "n1"


def test_invalid_network_skips_every_service() -> None:
    parsed = parse_services(
        make(on(host="a.test", port="80", web__host="b.test", web__port="80", network="a;b")),
        DiscoveryConfig(),
    )
    assert parsed.enabled and parsed.services == () and parsed.network is None
    assert [s.reason for s in parsed.skips] == [INVALID_LABEL]
    assert "label lbsync.network" in parsed.skips[0].detail


@pytest.mark.parametrize(
    ("host", "valid"),
    [
        ("a.test", True),
        ("*.a.test", True),
        ("A.test", False),  # callers lowercase first
        ("*", False),
        ("", False),
        ("a" * 63, True),
        ("a" * 64, False),
        (HOST_253, True),
        ("a" + HOST_253, False),
        ("*." + HOST_251, True),
        ("*." + HOST_253, False),  # 255 characters
    ],
)
def test_is_valid_host(host: str, valid: bool) -> None:
    assert is_valid_host(host) is valid


@pytest.mark.parametrize(
    ("host", "allowlist", "allowed"),
    [
        ("a.test", ("a.test",), True),
        ("b.test", ("a.test",), False),
        ("x.a.test", ("a.test",), False),  # an exact entry allows that name only
        ("*.a.test", ("a.test",), False),
        ("a.example.com", ("*.example.com",), True),
        ("a.b.example.com", ("*.example.com",), True),  # any depth, as nginx's *.
        ("*.example.com", ("*.example.com",), True),  # the same set of names
        ("*.b.example.com", ("*.example.com",), True),  # a subset
        ("example.com", ("*.example.com",), False),  # list it too
        ("*.com", ("*.example.com",), False),  # a superset
        ("badexample.com", ("*.example.com",), False),
        ("example.com.evil.test", ("*.example.com",), False),
        ("b.test", ("a.test", "*.example.com", "b.test"), True),
        ("a.test", (), False),
    ],
)
def test_host_allowed(host: str, allowlist: tuple[str, ...], allowed: bool) -> None:
    assert host_allowed(host, allowlist) is allowed


def test_host_not_allowed_warning_reads_as_documented() -> None:
    parsed = parse_services(
        make(on(host="a.test,evil.test", port="80")), DiscoveryConfig(hosts=("a.test",))
    )
    (skip,) = parsed.skips
    assert skip.detail == (
        "container web-1: label lbsync.host: host 'evil.test' is not allowed by "
        "discovery.hosts; service skipped"
    )


def test_a_new_allowlist_is_not_answered_from_the_memo() -> None:
    container = make(on(host="b.test", port="80"))
    assert parse_services(container, DiscoveryConfig()).services
    assert not parse_services(container, DiscoveryConfig(hosts=("a.test",))).services


def test_services_sorted_by_name_default_first() -> None:
    parsed = parse_services(
        make(
            on(
                host="d.test",
                port="80",
                zeta__host="z.test",
                zeta__port="80",
                alpha__host="a.test",
                alpha__port="80",
            )
        ),
        DiscoveryConfig(),
    )
    assert [s.name for s in parsed.services] == ["", "alpha", "zeta"]


def test_replicas_share_one_parse() -> None:
    discovery = DiscoveryConfig()
    labels = on(host="a.test", port="80")
    one = parse_services(make(labels, name="web-1"), discovery)
    two = parse_services(make(labels, name="web-2"), discovery)
    assert one == two
    assert one.services[0] is two.services[0]  # memoized: identical inputs, one result


def test_skips_are_never_shared_between_containers() -> None:
    discovery = DiscoveryConfig()
    labels = on(host="a b", port="80")
    one = parse_services(make(labels, name="web-1"), discovery)
    two = parse_services(make(labels, name="web-2"), discovery)
    assert one.skips[0].detail.startswith("container web-1:")
    assert two.skips[0].detail.startswith("container web-2:")


def test_label_order_does_not_matter() -> None:
    discovery = DiscoveryConfig()
    labels = on(host="a.test", port="80", web__host="w.test", web__port="81")
    reordered = dict(reversed(list(labels.items())))
    assert parse_services(make(labels), discovery) == parse_services(make(reordered), discovery)


# --- golden files ---------------------------------------------------------------------


@dataclass
class GoldenInput:
    discovery: dict[str, Any] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    exposed: tuple[int, ...] = ()
    name: str = "web-1"


EXPECTED = "[expected]"


def _value(raw: str) -> str:
    """A value as written in a golden file: raw to the end of the line, or a JSON string
    when it starts with a double quote (for newlines, NUL and other invisible characters)."""
    if raw.startswith('"'):
        value = json.loads(raw)
        assert isinstance(value, str)
        return value
    return raw


def read_golden(path: Path) -> tuple[GoldenInput, str, str]:
    """(input, the text before [expected], the expected text)."""
    text = path.read_text(encoding="utf-8")
    head, marker, expected = text.partition(EXPECTED + "\n")
    assert marker, f"{path.name}: no {EXPECTED} section"
    data = GoldenInput()
    section = ""
    for line in head.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        if section == "exposed":
            data.exposed = tuple(int(p) for p in line.split())
            continue
        key, sep, raw = line.partition("=")
        assert sep, f"{path.name}: expected key=value in [{section}]: {line!r}"
        if section == "labels":
            data.labels[key] = _value(raw)
        elif section == "env":
            data.env[key] = _value(raw)
        elif section == "container" and key == "name":
            data.name = _value(raw)
        elif section == "discovery":
            data.discovery[key] = json.loads(raw)  # JSON: true, "nginx-proxy", ...
        else:
            raise AssertionError(f"{path.name}: unknown section or key [{section}] {key}")
    return data, head, expected


GOLDEN_FILES = sorted(GOLDEN_DIR.glob("*.txt"))


def test_enough_golden_files() -> None:
    assert len(GOLDEN_FILES) >= 12


@pytest.mark.parametrize("path", GOLDEN_FILES, ids=[p.stem for p in GOLDEN_FILES])
def test_golden(path: Path) -> None:
    data, head, expected = read_golden(path)
    container = make(data.labels, env=data.env, exposed=data.exposed, name=data.name)
    actual = parsed_text(parse_services(container, DiscoveryConfig(**data.discovery)))
    if UPDATE_GOLDEN:
        path.write_text(head + EXPECTED + "\n" + actual, encoding="utf-8")
        return
    assert actual == expected, f"{path.name} differs; LBSYNC_UPDATE_GOLDEN=1 rewrites it"
