"""nginx_quote / haproxy_quote: table tests, then real nginx and HAProxy reading the tokens back."""

from __future__ import annotations

import shutil
import string
import subprocess
import urllib.request
from collections.abc import Callable
from pathlib import Path
from types import MappingProxyType

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lbsync.config.schema import DiscoveryConfig
from lbsync.engine.container import Container
from lbsync.model.labels import parse_services
from lbsync.model.upstream_names import derived_upstream_name, explicit_upstream_name
from lbsync.render.quoting import (
    NGINX_MAX_TOKEN_BYTES,
    UnsafeValueError,
    haproxy_quote,
    nginx_quote,
)
from tests.support.lab import free_port
from tests.support.nginx import nginx_prefix_config, nginx_test, require_nginx, running

# --- table tests -------------------------------------------------------------------------

NGINX_CASES = [
    pytest.param("app.example.com", "app.example.com", id="plain-host-bare"),
    pytest.param("*.example.com", "*.example.com", id="wildcard-host-bare"),
    pytest.param("/api/v1", "/api/v1", id="path-bare"),
    pytest.param("/a%20b~x", "/a%20b~x", id="percent-tilde-bare"),
    pytest.param("127.0.0.1:8080", "127.0.0.1:8080", id="listen-bare"),
    pytest.param("[::]:80", "[::]:80", id="ipv6-listen-bare"),
    pytest.param("http://lbsync_app_1a2b3c4d", "http://lbsync_app_1a2b3c4d", id="url-bare"),
    pytest.param(8080, "8080", id="int"),
    pytest.param("", '""', id="empty"),
    pytest.param("a b", '"a b"', id="space"),
    pytest.param("a\tb", '"a\tb"', id="tab-literal"),
    pytest.param("a;b", '"a;b"', id="semicolon"),
    pytest.param("a{b}", '"a{b}"', id="braces"),
    pytest.param("#x", '"#x"', id="hash"),
    pytest.param("it's", '"it\'s"', id="single-quote-plain-inside-double"),
    pytest.param('say "hi"', '"say \\"hi\\""', id="double-quote-escaped"),
    pytest.param("a\\b", '"a\\\\b"', id="backslash-doubled"),
    pytest.param("x\\n", '"x\\\\n"', id="backslash-n-stays-two-chars"),
    pytest.param("trail\\", '"trail\\\\"', id="trailing-backslash"),
    pytest.param('\\"', '"\\\\\\""', id="backslash-quote"),
    pytest.param("ünï✓", '"ünï✓"', id="non-ascii"),
    pytest.param("';} server { #", '"\';} server { #"', id="block-injection"),
]

NGINX_UNSAFE = [
    pytest.param(None, "None", id="none"),
    pytest.param("a\nb", "newline", id="newline"),
    pytest.param("a\rb", "carriage return", id="carriage-return"),
    pytest.param("a\x00b", "NUL", id="nul"),
    pytest.param("$host", "'$'", id="variable"),
    pytest.param("${x}", "'$'", id="braced-variable"),
    pytest.param("a$", "'$'", id="trailing-dollar"),
    pytest.param("a" * (NGINX_MAX_TOKEN_BYTES + 1), "token limit", id="too-long"),
    pytest.param("\\" * (NGINX_MAX_TOKEN_BYTES // 2 + 1), "token limit", id="too-long-escaped"),
]

HAPROXY_CASES = [
    pytest.param("app.example.com", "app.example.com", id="plain-host-bare"),
    pytest.param("*.example.com", "*.example.com", id="wildcard-host-bare"),
    pytest.param("/api", "/api", id="path-bare"),
    pytest.param("10.0.0.2:8080", "10.0.0.2:8080", id="address-bare"),
    pytest.param(256, "256", id="int"),
    pytest.param("a b", "'a b'", id="space"),
    pytest.param("#x", "'#x'", id="hash"),
    pytest.param("$HOME", "'$HOME'", id="dollar-not-expanded"),
    pytest.param('"${HOME}"', "'\"${HOME}\"'", id="double-quoted-env"),
    pytest.param("a\\b", "'a\\b'", id="backslash-literal-in-single-quotes"),
    pytest.param("it's", "'it'\\''s'", id="single-quote-concatenated"),
    pytest.param("'", "''\\'''", id="only-a-single-quote"),
    pytest.param('say "hi"', "'say \"hi\"'", id="double-quote"),
    pytest.param("a;b{c}", "'a;b{c}'", id="nginx-specials"),
    pytest.param("ünï✓", "'ünï✓'", id="non-ascii"),
]

HAPROXY_UNSAFE = [
    pytest.param(None, "None", id="none"),
    pytest.param("", "empty argument", id="empty"),
    pytest.param("a\nb", "newline", id="newline"),
    pytest.param("a\rb", "carriage return", id="carriage-return"),
    pytest.param("a\x00b", "NUL", id="nul"),
]


@pytest.mark.parametrize(("value", "expected"), NGINX_CASES)
def test_nginx_quote(value: object, expected: str) -> None:
    assert nginx_quote(value) == expected


@pytest.mark.parametrize(("value", "reason"), NGINX_UNSAFE)
def test_nginx_quote_refuses(value: object, reason: str) -> None:
    with pytest.raises(UnsafeValueError, match="nginx") as info:
        nginx_quote(value)
    assert reason in str(info.value)
    assert info.value.value == value
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize(("value", "expected"), HAPROXY_CASES)
def test_haproxy_quote(value: object, expected: str) -> None:
    assert haproxy_quote(value) == expected


@pytest.mark.parametrize(("value", "reason"), HAPROXY_UNSAFE)
def test_haproxy_quote_refuses(value: object, reason: str) -> None:
    with pytest.raises(UnsafeValueError, match="haproxy") as info:
        haproxy_quote(value)
    assert reason in str(info.value)


def test_error_names_the_value_and_shortens_long_ones() -> None:
    with pytest.raises(UnsafeValueError, match=r"'evil\\n;'"):
        nginx_quote("evil\n;")
    with pytest.raises(UnsafeValueError) as info:
        nginx_quote("x" * 10_000 + "$")
    assert len(str(info.value)) < 200


def test_longest_nginx_token_is_accepted() -> None:
    assert nginx_quote("a" * NGINX_MAX_TOKEN_BYTES) == "a" * NGINX_MAX_TOKEN_BYTES
    assert nginx_quote("\\" * (NGINX_MAX_TOKEN_BYTES // 2)).startswith('"\\\\')


# --- every value the label grammar accepts, the quoting filters accept -------------------
#
# So a builtin template never leaves out a service (lbsync.render) for a value that passed
# the labels: the grammar's bounds (SPEC §1) keep each within the filters' limits.

DNS_LABEL = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=63)
grammar_hosts = st.builds(
    lambda star, labels: ("*." if star else "") + ".".join(labels),
    st.booleans(),
    st.lists(DNS_LABEL | st.just("a" * 63), min_size=1, max_size=6),
)
grammar_paths = st.builds(
    lambda rest: "/" + rest,
    st.text(alphabet=string.ascii_letters + string.digits + "._~%/-", max_size=1100)
    | st.just("%" * 1023),
)
grammar_names = st.text(
    alphabet=string.ascii_letters + string.digits + "_.-", min_size=1, max_size=70
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(grammar_hosts, min_size=1, max_size=3),
    grammar_paths,
    grammar_names,
    st.text(alphabet=string.ascii_lowercase + string.digits + "_-", min_size=1, max_size=70),
)
def test_every_value_the_grammar_accepts_is_quotable(
    hosts: list[str], path: str, upstream: str, service: str
) -> None:
    labels = {
        "lbsync.enable": "true",
        "lbsync.host": ",".join(hosts),
        "lbsync.port": "80",
        "lbsync.path": path,
        "lbsync.upstream": upstream,
        f"lbsync.{service}.host": hosts[0],
        f"lbsync.{service}.port": "81",
        f"lbsync.{service}.path": path,
    }
    container = Container("c" * 64, "web-1", 1, MappingProxyType(labels))
    parsed = parse_services(container, DiscoveryConfig())
    for found in parsed.services:
        names = [derived_upstream_name(h, found.path) for h in found.hosts]
        names += [derived_upstream_name(h, found.path, full_hash=True) for h in found.hosts]
        if found.upstream is not None:
            names.append(explicit_upstream_name(found.upstream))
        values = [*found.hosts, found.path, found.name or "x", *names]
        values += ["http://" + name for name in names]  # builtin:nginx's proxy_pass
        values += [h[1:] for h in found.hosts if h.startswith("*.")]  # builtin:haproxy's -m end
        for value in values:
            nginx_quote(value)  # raises UnsafeValueError if not
            haproxy_quote(value)


def test_the_longest_values_the_grammar_accepts_are_quotable() -> None:
    host = "*." + ".".join(["a" * 63, "b" * 63, "c" * 63, "d" * 59])  # 253 characters
    path = "/" + "%" * 1023
    upstream = "U" * 64
    labels = {
        "lbsync.enable": "true",
        "lbsync.host": host,
        "lbsync.port": "80",
        "lbsync.path": path,
        "lbsync.upstream": upstream,
        f"lbsync.{'n' * 64}.host": host,
        f"lbsync.{'n' * 64}.port": "80",
    }
    container = Container("c" * 64, "web-1", 1, MappingProxyType(labels))
    parsed = parse_services(container, DiscoveryConfig())
    assert parsed.skips == ()
    assert [(s.name, s.hosts, s.path, s.upstream) for s in parsed.services] == [
        ("", (host,), path, upstream),
        ("n" * 64, (host,), "/", None),
    ]
    for value in (host, path, "http://" + explicit_upstream_name(upstream), "n" * 64):
        assert nginx_quote(value) == value  # bare: every grammar character is plain
        assert haproxy_quote(value) == value


# --- the real parsers --------------------------------------------------------------------

# Hostile strings every quoter must carry through as one token, byte for byte.
HOSTILE = [
    "",
    "plain",
    "a b",
    "tab\there",
    "semi;colon",
    "brace{open",
    "close}brace",
    "}",
    "# comment",
    "x #not-a-comment",
    "single'quote",
    'double"quote',
    "back\\slash",
    "trailing\\",
    '\\"',
    "x\\ny",
    "\\t\\r",
    "mixed '\"\\ ;{}#",
    "'; } server { listen 8081; } #",
    'default_type x; return 200 "pwned"',
    "include /etc/passwd;",
    "{{ jinja }}",
    "%[src] %{+Q}o",
    "ünïcödé ✓",
    "a" * NGINX_MAX_TOKEN_BYTES,
    "\\" * (NGINX_MAX_TOKEN_BYTES // 2),
]
HAPROXY_HOSTILE = [
    *(v for v in HOSTILE if v),
    "$HOME",
    "${HOME}",
    '"$HOME"',
    "\\$HOME",
    "'$HOME'",
]


def _fetch_all(port: int, count: int) -> list[bytes]:
    bodies = []
    for i in range(count):
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/case/{i}", timeout=5) as response:
            bodies.append(response.read())
    return bodies


def test_nginx_t_reads_each_quoted_value_as_one_argument(tmp_path: Path) -> None:
    """`default_type` takes exactly one argument: a split, a `;`, `{`, `}` or `#` fails -t."""
    require_nginx()
    lines = [f"default_type {nginx_quote(v)};" for v in HOSTILE]
    lines += [
        f"location {nginx_quote('/p/' + v)} {{ return 204; }}" for v in HOSTILE if len(v) < 1000
    ]
    body = "server {\n    listen 127.0.0.1:9;\n    " + "\n    ".join(
        # default_type may appear once per block: give each its own location
        f"location = /t{i} {{ {line} }}" if line.startswith("default_type") else line
        for i, line in enumerate(lines)
    )
    include = tmp_path / "quoted.conf"
    include.write_text(body + "\n}\n", encoding="utf-8")
    nginx_test(tmp_path, include)


def test_nginx_serves_each_quoted_value_byte_for_byte(tmp_path: Path) -> None:
    """A live nginx returns `return 200 <quoted>` bodies equal to the original strings."""
    nginx = require_nginx()
    port = free_port()
    locations = "\n".join(
        f"    location = /case/{i} {{ default_type text/plain; return 200 {nginx_quote(v)}; }}"
        for i, v in enumerate(HOSTILE)
    )
    include = tmp_path / "serve.conf"
    include.write_text(
        f"server {{\n    listen 127.0.0.1:{port};\n{locations}\n}}\n", encoding="utf-8"
    )
    conf = nginx_prefix_config(tmp_path, include, extra_main="daemon off;\nmaster_process off;")
    argv = [nginx, "-e", str(tmp_path / "error.log"), "-p", str(tmp_path), "-c", str(conf)]
    with running(argv, tmp_path / "nginx.out", port):
        bodies = _fetch_all(port, len(HOSTILE))
    assert [b.decode("utf-8") for b in bodies] == HOSTILE


def _require_haproxy() -> str:
    found = shutil.which("haproxy") or (
        "/usr/sbin/haproxy" if Path("/usr/sbin/haproxy").exists() else None
    )
    if found is None:
        pytest.skip("haproxy is not installed")
    return found


def _haproxy_config(port: int, quote: Callable[[object], str]) -> str:
    rules = "\n".join(
        f"    http-request return status 200 content-type text/plain string {quote(v)}"
        f" if {{ path /case/{i} }}"
        for i, v in enumerate(HAPROXY_HOSTILE)
    )
    return (
        "global\n    log stderr format raw local0 err\n"
        "defaults\n    mode http\n    timeout client 5s\n    timeout server 5s\n"
        "    timeout connect 5s\n"
        f"frontend lbsync_test\n    bind 127.0.0.1:{port}\n{rules}\n"
    )


def test_haproxy_serves_each_quoted_value_byte_for_byte(tmp_path: Path) -> None:
    """`string <arg>` takes one argument; a live HAProxy returns it unchanged (no $ expansion)."""
    haproxy = _require_haproxy()
    port = free_port()
    cfg = tmp_path / "haproxy.cfg"
    cfg.write_text(_haproxy_config(port, haproxy_quote), encoding="utf-8")
    check = subprocess.run(
        [haproxy, "-c", "-f", str(cfg)], capture_output=True, text=True, timeout=30
    )
    assert check.returncode == 0, check.stdout + check.stderr
    assert "WARNING" not in check.stdout + check.stderr
    with running([haproxy, "-db", "-f", str(cfg)], tmp_path / "haproxy.out", port):
        bodies = _fetch_all(port, len(HAPROXY_HOSTILE))
    assert [b.decode("utf-8") for b in bodies] == HAPROXY_HOSTILE
