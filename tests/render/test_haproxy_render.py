"""builtin:haproxy: golden files (each checked by a real `haproxy -c`), the promises of the
template (rule order, bind forms, slots), and a live HAProxy routing real requests.

`LBSYNC_UPDATE_GOLDEN=1 python -m pytest tests/render/test_haproxy_render.py` rewrites
tests/testdata/haproxy/. The haproxy helpers (the binary, short socket folders, a running
haproxy, HTTP backends) are in tests/support/haproxy.py.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path

import pytest

from lbsync.config.schema import TargetConfig
from lbsync.model.slots import (
    RuntimeSlots,
    Slot,
    SlotView,
    runtime_commands,
    slot_server_name,
)
from lbsync.model.types import RoutingModel
from lbsync.render.environment import match_order
from lbsync.render.fragments import FragmentCache
from lbsync.render.templates import CompiledTemplate, load_template, render, render_bytes
from tests.support.haproxy import (
    haproxy_check,
    http_backends,
    http_get,
    render_cfg,
    run_haproxy,
    runtime_target,
    served_by,
    target,
)
from tests.support.lab import free_port
from tests.support.model_builders import host, model, srv, ups

GOLDEN_DIR = Path(__file__).parents[1] / "testdata" / "haproxy"
UPDATE_GOLDEN = os.environ.get("LBSYNC_UPDATE_GOLDEN") == "1"

WEB = ups("lbsync_web_example_com_1a2b3c4d", srv("172.18.0.2", name="web-1"))

# --- golden fixtures --------------------------------------------------------------------------

Rendered = tuple[RoutingModel, TargetConfig, SlotView | None]
Fixture = Callable[[], Rendered]


def fx_empty() -> Rendered:
    return model(), target(), None


def fx_one_host() -> Rendered:
    return model(host("web.example.com", ("/", WEB))), target(), None


def fx_two_hosts() -> Rendered:
    shop = ups(
        "lbsync_shop_example_com_5e6f7a8b",
        srv("172.18.0.3", 3000, name="shop-1"),
        srv("172.18.0.4", 3000, name="shop-2"),
    )
    routing = model(host("web.example.com", ("/", WEB)), host("shop.example.com", ("/", shop)))
    return routing, target(), None


def fx_paths_longest_first() -> Rendered:
    v2 = ups("lbsync_api_example_com_api_v2_0c0c0c0c", srv("172.18.0.5", 9000, name="api-v2"))
    api = ups("lbsync_api_example_com_api_0b0b0b0b", srv("172.18.0.6", 9000, name="api-v1"))
    site = ups("lbsync_api_example_com_0a0a0a0a", srv("172.18.0.7", 80, name="site"))
    routing = model(host("api.example.com", ("/", site), ("/api", api), ("/api/v2", v2)))
    return routing, target(), None


def fx_empty_backend_503() -> Rendered:
    down = ups("lbsync_down_example_com_dddddddd")
    half_down = ups("lbsync_mixed_example_com_admin_eeeeeeee")
    routing = model(
        host("down.example.com", ("/", down)),
        host("mixed.example.com", ("/", WEB), ("/admin", half_down)),
    )
    return routing, target(), None


def fx_no_root_path_404() -> Rendered:
    api = ups("lbsync_api_example_com_api_0b0b0b0b", srv("172.18.0.6", 9000, name="api-v1"))
    return model(host("api.example.com", ("/api", api))), target(), None


def fx_weights_and_every_balance() -> Rendered:
    rr = ups(
        "lbsync_rr_example_com_11111111",
        srv("172.18.0.10", weight=1, name="rr-1"),
        srv("172.18.0.11", weight=3, name="rr-2"),
        balance="round_robin",
    )
    lc = ups(
        "lbsync_lc_example_com_22222222",
        srv("172.18.0.12", weight=256, name="lc-1"),
        srv("172.18.0.13", weight=1, name="lc-2"),
        balance="least_conn",
    )
    ih = ups(
        "lbsync_ih_example_com_33333333",
        srv("172.18.0.14", weight=2, name="ih-1"),
        srv("172.18.0.15", weight=7, name="ih-2"),
        balance="ip_hash",
    )
    routing = model(
        host("rr.example.com", ("/", rr)),
        host("lc.example.com", ("/", lc)),
        host("ih.example.com", ("/", ih)),
    )
    return routing, target(), None


def fx_wildcard_and_exact_order() -> Rendered:
    tenants = ups("lbsync_wildcard_example_com_44444444", srv("172.18.0.20", name="tenants"))
    eu = ups("lbsync_wildcard_eu_example_com_55555555", srv("172.18.0.21", name="eu"))
    b = ups("lbsync_wildcard_b_example_com_56565656", srv("172.18.0.22", name="b"))
    eu_api = ups("lbsync_api_eu_example_com_57575757", srv("172.18.0.23", name="eu-api"))
    routing = model(
        host("*.example.com", ("/", tenants)),
        host("*.eu.example.com", ("/", eu), ("/api", eu_api)),
        host("*.b.example.com", ("/", b)),
        host("api.eu.example.com", ("/", eu_api)),
        host("www.example.com", ("/", WEB)),
    )
    return routing, target(), None


def fx_listen_bare_port() -> Rendered:
    return model(host("web.example.com", ("/", WEB))), target(listen="8080"), None


def fx_listen_addr_port() -> Rendered:
    return model(host("web.example.com", ("/", WEB))), target(listen="127.0.0.1:8080"), None


def fx_listen_ipv6_any() -> Rendered:
    return model(host("web.example.com", ("/", WEB))), target(listen="[::]:8080"), None


def fx_listen_star() -> Rendered:
    return model(host("web.example.com", ("/", WEB))), target(listen="*:8080"), None


def fx_default_server_off() -> Rendered:
    return model(host("web.example.com", ("/", WEB))), target(default_server=False), None


def fx_ipv6_server() -> Rendered:
    dual = ups(
        "lbsync_v6_example_com_66666666",
        srv("172.18.0.30", name="v6-1"),
        srv("fd00:dead:beef::2", name="v6-2"),
        srv("2001:db8::1", 8443, name="v6-3"),
    )
    return model(host("v6.example.com", ("/", dual))), target(), None


def _runtime_model() -> RoutingModel:
    web = ups(
        "lbsync_web_example_com_1a2b3c4d",
        srv("172.18.0.2", name="web-1", weight=5),
        srv("fd00::3", 8443, name="web-2"),
    )
    api = ups(
        "lbsync_api_example_com_0b0b0b0b",
        *(srv(f"172.18.0.{10 + i}", 9000, name=f"api-{i}") for i in range(1, 6)),
        balance="least_conn",
    )
    down = ups("lbsync_down_example_com_dddddddd", balance="ip_hash")
    return model(
        host("web.example.com", ("/", web), ("/api", api)), host("down.example.com", ("/", down))
    )


def fx_runtime_slots() -> Rendered:
    """Filled and empty slots: web-2 kept slot 3 from a previous pass, api grew to 8 slots,
    down has only placeholders."""
    earlier = ups(
        "lbsync_web_example_com_1a2b3c4d",
        srv("172.18.0.9", name="web-0"),
        srv("172.18.0.8", name="web-00"),
        srv("fd00::3", 8443, name="web-2"),
    )
    first = RuntimeSlots.derive(None, model(host("web.example.com", ("/", earlier))), 4)
    routing = _runtime_model()
    return routing, runtime_target(), RuntimeSlots.derive(first, routing, 4).view


def fx_stats_socket_without_slots() -> Rendered:
    """A runtime socket (say for `reload: haproxy-master` users' own tooling), no slots."""
    tgt = target(reload="haproxy-master", runtime_socket=Path("/run/haproxy/admin.sock"))
    return model(host("web.example.com", ("/", WEB))), tgt, None


def fx_stats_socket_path_from_vars() -> Rendered:
    """lbsync connects to /srv/lbsync/run/admin.sock; haproxy sees /run/haproxy/admin.sock."""
    tgt = runtime_target(
        runtime_socket=Path("/srv/lbsync/run/admin.sock"),
        vars={"stats_socket": "/run/haproxy/admin.sock"},
    )
    return model(host("web.example.com", ("/", WEB))), tgt, None


def fx_hostile_valid_values() -> Rendered:
    """Odd values the label parser accepts: each stays one token of the config."""
    odd = ups("My.App-1_x", srv("172.18.0.40", 65535, weight=256, name="odd"))
    punycode = ups("lbsync_xn_bcher_kva_example_77777777", srv("172.18.0.41", 1, name="p"))
    long_host = ("a" * 63 + ".") * 3 + "example"
    routing = model(
        host("odd.example.com", ("/a%20b/~user/.x-y_z", odd), ("/", punycode)),
        host("xn--bcher-kva.example", ("/", punycode)),
        host("*.a-b.example", ("/%7e/", odd)),
        host(long_host, ("/", odd)),
    )
    tgt = runtime_target(runtime_socket=Path("/run/lb sync/it's admin.sock"))
    return routing, tgt, None


def fx_hostile_quoted_path() -> Rendered:
    """A path the label parser would refuse: the template still keeps it one argument."""
    odd = ups("lbsync_odd_88888888", srv("172.18.0.42", name="odd"))
    return model(host("odd.example.com", ("/we ird;{}#'\"\\$HOME%[src]", odd))), target(), None


FIXTURES: dict[str, Fixture] = {
    "empty": fx_empty,
    "one_host": fx_one_host,
    "two_hosts": fx_two_hosts,
    "paths_longest_first": fx_paths_longest_first,
    "empty_backend_503": fx_empty_backend_503,
    "no_root_path_404": fx_no_root_path_404,
    "weights_and_every_balance": fx_weights_and_every_balance,
    "wildcard_and_exact_order": fx_wildcard_and_exact_order,
    "listen_bare_port": fx_listen_bare_port,
    "listen_addr_port": fx_listen_addr_port,
    "listen_ipv6_any": fx_listen_ipv6_any,
    "listen_star": fx_listen_star,
    "default_server_off": fx_default_server_off,
    "ipv6_server": fx_ipv6_server,
    "runtime_slots": fx_runtime_slots,
    "stats_socket_without_slots": fx_stats_socket_without_slots,
    "stats_socket_path_from_vars": fx_stats_socket_path_from_vars,
    "hostile_valid_values": fx_hostile_valid_values,
    "hostile_quoted_path": fx_hostile_quoted_path,
}


@pytest.fixture(scope="module")
def haproxy_template() -> CompiledTemplate:
    return load_template(target())


@pytest.mark.parametrize("name", sorted(FIXTURES))
def test_golden(name: str, haproxy_template: CompiledTemplate) -> None:
    routing, tgt, slots = FIXTURES[name]()
    text = render_cfg(haproxy_template, routing, tgt, slots)
    golden = GOLDEN_DIR / f"{name}.cfg"
    if UPDATE_GOLDEN:
        golden.parent.mkdir(parents=True, exist_ok=True)
        golden.write_text(text, encoding="utf-8")
    assert golden.exists(), f"{golden} is missing: run with LBSYNC_UPDATE_GOLDEN=1"
    assert text == golden.read_text(encoding="utf-8")


@pytest.mark.parametrize("name", sorted(FIXTURES))
def test_golden_as_the_daemon_writes_it(name: str, haproxy_template: CompiledTemplate) -> None:
    routing, tgt, slots = FIXTURES[name]()
    golden = (GOLDEN_DIR / f"{name}.cfg").read_bytes()
    cache = FragmentCache()
    for _ in range(2):  # rendered, then reused
        assert render_bytes(haproxy_template, routing, tgt, slots=slots, fragments=cache) == golden


def test_every_golden_file_has_a_fixture() -> None:
    assert sorted(p.stem for p in GOLDEN_DIR.glob("*.cfg")) == sorted(FIXTURES)


@pytest.mark.parametrize("name", sorted(FIXTURES))
def test_golden_passes_haproxy_c(name: str) -> None:
    haproxy_check(GOLDEN_DIR / f"{name}.cfg")


# --- what the builtin template promises -------------------------------------------------------


def _golden(name: str) -> str:
    return (GOLDEN_DIR / f"{name}.cfg").read_text(encoding="utf-8")


def _frontend_rules(text: str) -> list[str]:
    return [ln.strip() for ln in text.splitlines() if ln.strip().startswith("use_backend")]


HOST_MATCH = "{ var(txn.lbsync_host) -m str -- %s }"
WILDCARD_MATCH = "{ var(txn.lbsync_host) -m end -- %s }"


def _rule_host(rule: str) -> str:
    """The host (or wildcard suffix) a frontend rule's anonymous ACL matches."""
    found = re.search(r" if \{ var\(txn\.lbsync_host\) -m (?:str|end) -- (\S+) \}", rule)
    assert found is not None, rule
    return found.group(1)


def _backend_servers(text: str) -> dict[str, list[str]]:
    backends: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in text.splitlines():
        if line.startswith("backend "):
            current = backends.setdefault(line.split(None, 1)[1], [])
        elif line.startswith(("frontend ", "global", "defaults")):
            current = None
        elif current is not None and line.strip().startswith("server "):
            current.append(line.strip())
    return backends


def test_complete_config_shape() -> None:
    text = _golden("one_host")
    assert text.startswith("# Generated by lbsync")
    for section in ("\nglobal\n", "\ndefaults\n", "\nfrontend lbsync\n", "\nbackend "):
        assert section in text
    for line in (
        "master-worker",
        "mode http",
        "option forwardfor",
        "option redispatch",
        "retries 2",
        "timeout connect 5s",
        "timeout client 60s",
        "timeout server 60s",
        "timeout tunnel 1h",
        "default_backend _lbsync_unknown_host",
        "http-request deny deny_status 503",
    ):
        assert f"\n    {line}\n" in text, line
    assert "daemon" not in text.split("\ndefaults")[0].replace("# No `daemon`", "")
    assert "http-server-close" not in text
    assert "stats socket" not in text  # only with target.runtime_socket


def test_stats_socket_line() -> None:
    assert (
        "    stats socket /run/haproxy/admin.sock mode 600 level admin expose-fd listeners\n"
        in _golden("runtime_slots")
    )
    assert "stats socket /run/haproxy/admin.sock mode" in _golden("stats_socket_path_from_vars")
    assert "/srv/lbsync" not in _golden("stats_socket_path_from_vars")
    assert (
        "    stats socket '/run/lb sync/it'\\''s admin.sock' mode 600 level admin "
        "expose-fd listeners\n" in _golden("hostile_valid_values")
    )


@pytest.mark.parametrize(
    ("listen", "bind"),
    [
        ("80", "bind :80"),
        ("8080", "bind :8080"),
        ("127.0.0.1:8080", "bind 127.0.0.1:8080"),
        ("0.0.0.0:80", "bind 0.0.0.0:80"),
        ("[::]:8080", "bind [::]:8080"),
        ("*:8080", "bind *:8080"),
    ],
)
def test_bind_forms(haproxy_template: CompiledTemplate, listen: str, bind: str) -> None:
    text = render_cfg(haproxy_template, model(), target(listen=listen))
    assert [ln.strip() for ln in text.splitlines() if "bind " in ln] == [bind]


def test_exact_hosts_first_then_wildcards_longest_suffix_first() -> None:
    text = _golden("wildcard_and_exact_order")
    order = [_rule_host(rule) for rule in _frontend_rules(text)]
    assert order == [
        "api.eu.example.com",
        "www.example.com",
        ".eu.example.com",  # *.eu.example.com: /api, then /
        ".eu.example.com",
        ".b.example.com",
        ".example.com",
    ]
    assert WILDCARD_MATCH % ".eu.example.com" in text and HOST_MATCH % "www.example.com" in text


def test_paths_longest_first() -> None:
    rules = _frontend_rules(_golden("paths_longest_first"))
    host = HOST_MATCH % "api.example.com"
    assert [r.split(" if ")[1] for r in rules] == [
        f"{host} {{ path -m beg -- /api/v2 }}",
        f"{host} {{ path -m beg -- /api }}",
        host,
    ]


def test_balance_mapping() -> None:
    text = _golden("weights_and_every_balance")
    assert "backend lbsync_rr_example_com_11111111\n    balance roundrobin\n" in text
    assert "backend lbsync_lc_example_com_22222222\n    balance leastconn\n" in text
    assert (
        "backend lbsync_ih_example_com_33333333\n    balance source\n    hash-type consistent\n"
        in text
    )
    assert "server s1 172.18.0.12:8080 weight 256" in text


def test_no_root_path_and_empty_backend() -> None:
    text = _golden("no_root_path_404")
    assert _frontend_rules(text)[-1] == (
        "use_backend _lbsync_no_route if " + HOST_MATCH % "api.example.com"
    )
    assert "backend _lbsync_no_route\n    http-request deny deny_status 404\n" in text
    servers = _backend_servers(_golden("empty_backend_503"))
    assert servers["lbsync_down_example_com_dddddddd"] == []


def test_default_server_off_has_no_catch_all() -> None:
    text = _golden("default_server_off")
    assert "default_backend" not in text and "_lbsync_unknown_host" not in text


def test_runtime_slots_render_one_server_line_per_slot() -> None:
    _, _, view = fx_runtime_slots()
    assert view is not None
    servers = _backend_servers(_golden("runtime_slots"))
    assert servers["lbsync_down_example_com_dddddddd"] == [
        f"server s{i} 127.0.0.1:1 disabled" for i in range(1, 5)
    ]
    assert servers["lbsync_web_example_com_1a2b3c4d"] == [
        "server s1 172.18.0.2:8080 weight 5",
        "server s2 127.0.0.1:1 disabled",
        "server s3 [fd00::3]:8443 weight 1",
        "server s4 127.0.0.1:1 disabled",
    ]
    assert len(servers["lbsync_api_example_com_0b0b0b0b"]) == 8  # grew from 4
    # Every command names a backend and server the template rendered.
    empty = {name: tuple(Slot(s.index, None) for s in slots) for name, slots in view.items()}
    for command in runtime_commands(empty, view):
        backend, server = command.split()[2].split("/")  # set server|weight B/S ...
        assert any(line.startswith(f"server {server} ") for line in servers[backend]), command


def test_server_names_are_slot_server_names(haproxy_template: CompiledTemplate) -> None:
    """The template spells the server names itself (`slot.name`, and `s{{ loop.index }}`
    without slots): in every fixture, each backend's are slot_server_name(1), (2), ...:
    the names runtime_commands address."""
    named = {"slots": 0, "no slots": 0}
    for name in sorted(FIXTURES):
        routing, tgt, slots = FIXTURES[name]()
        servers = _backend_servers(render_cfg(haproxy_template, routing, tgt, slots))
        for backend, lines in servers.items():
            expected = [slot_server_name(i) for i in range(1, len(lines) + 1)]
            assert [line.split()[1] for line in lines] == expected, (name, backend)
            named["no slots" if slots is None else "slots"] += len(lines)
    assert all(named.values()), named  # both macros were seen


def test_slots_none_renders_the_real_servers(haproxy_template: CompiledTemplate) -> None:
    routing = _runtime_model()
    tgt = runtime_target()
    assert render_cfg(haproxy_template, routing, tgt, None) == render(
        haproxy_template, routing, tgt
    )
    explicit = haproxy_template.template.render(
        target=tgt,
        vars={},
        hosts=routing.hosts,
        upstreams=routing.upstreams,
        containers=(),
        slots=None,
    )
    assert explicit == render(haproxy_template, routing, tgt)
    assert "disabled" not in explicit


def test_hostile_path_stays_one_argument() -> None:
    rules = _frontend_rules(_golden("hostile_quoted_path"))
    assert rules[0] == (
        "use_backend lbsync_odd_88888888 if { var(txn.lbsync_host) -m str -- odd.example.com } "
        "{ path -m beg -- '/we ird;{}#'\\''\"\\$HOME%[src]' }"
    )


def test_match_order_exact_then_wildcards_longest_first() -> None:
    names = ["a.test", "*.b.example.com", "*.example.com", "c.test", "*.x.example.com"]
    hosts = [host(name, ("/", ups(f"u{i}"))) for i, name in enumerate(names)]
    assert [h.name for h in match_order(hosts)] == [
        "a.test",
        "c.test",
        "*.b.example.com",  # as long as *.x.example.com: the order given
        "*.x.example.com",
        "*.example.com",
    ]


def test_a_pass_renders_only_the_blocks_of_what_changed(
    haproxy_template: CompiledTemplate,
) -> None:
    """The frontend's rules and the backends are kept per host and per upstream from one
    render to the next (render_each), so one changed container costs two blocks, not all:
    at 1,000 hosts a pass went from 18 ms to 1.2 ms (bench_model)."""

    def fleet(moved: int | None = None) -> RoutingModel:
        upstreams = [
            ups(f"u{i}", srv(f"127.0.0.{i + 1}", 8000 + (i == moved), name=f"app-{i}"))
            for i in range(6)
        ]
        names = [f"h{i}.test" for i in range(4)] + ["*.w.test", "*.long.w.test"]
        return model(*(host(name, ("/", u)) for name, u in zip(names, upstreams, strict=True)))

    tgt = target()
    cache = FragmentCache()
    first = fleet()
    assert render(haproxy_template, first, tgt, fragments=cache) == render(
        haproxy_template, first, tgt
    )
    assert (cache.rendered, cache.reused) == (12, 0)  # 6 hosts' rules, 6 backends

    changed = fleet(moved=4)  # *.w.test's upstream
    hosts = tuple(
        next(h for h in changed.hosts if h.name == old.name) if old.name == "*.w.test" else old
        for old in first.hosts
    )
    upstreams = tuple(changed.upstreams[4] if u.name == "u4" else u for u in first.upstreams)
    second = RoutingModel(hosts, upstreams, ())
    text = render(haproxy_template, second, tgt, fragments=cache)
    assert text == render(haproxy_template, second, tgt)
    assert "127.0.0.5:8001" in text
    assert (cache.rendered, cache.reused) == (14, 10)


def test_refused_host_leaves_out_only_that_host(
    haproxy_template: CompiledTemplate, tmp_path: Path
) -> None:
    # haproxy_quote refuses a newline: that host goes, the rest of the file is written.
    shop = ups("lbsync_shop_example_com_5e6f7a8b", srv("172.18.0.3", 3000, name="shop-1"))
    evil = ups("lbsync_evil_1a1a1a1a", srv("172.18.0.9", 80, name="evil"))
    routing = model(
        host("a.test\nbackend evil", ("/", evil)), host("shop.example.com", ("/", shop))
    )
    left_out: list[str] = []
    text = render(haproxy_template, routing, target(), left_out=left_out)
    cache = FragmentCache()
    assert render_bytes(haproxy_template, routing, target(), fragments=cache).decode() == text
    assert text == render(haproxy_template, model(host("shop.example.com", ("/", shop))), target())
    assert "backend evil" not in text and evil.name not in text
    assert left_out == [
        "service 'a.test\\nbackend evil/' left out: cannot quote 'a.test\\nbackend evil' for "
        "haproxy: it contains a newline; the rest of the file is written"
    ]
    cfg = tmp_path / "haproxy.cfg"
    cfg.write_text(text)
    haproxy_check(cfg)


def test_render_is_deterministic(haproxy_template: CompiledTemplate) -> None:
    routing, tgt, slots = fx_runtime_slots()
    first = render_cfg(haproxy_template, routing, tgt, slots)
    again = render_cfg(load_template(tgt), *fx_runtime_slots())
    assert first == again


# --- the builtin template in a live haproxy ---------------------------------------------------


def test_builtin_haproxy_live(sock_dir: Path) -> None:
    """Host and path routing, wildcard precedence, the 503s and 404, headers: for real."""
    with http_backends("a", "b") as apps:
        a = ups("app_a", srv("127.0.0.1", apps["a"].port, name="a"))
        b = ups("app_b", srv("127.0.0.1", apps["b"].port, name="b"))
        routing = model(
            host("web.test", ("/", a), ("/api", b)),
            host("exact.wild.test", ("/", a)),
            host("*.wild.test", ("/", b)),
            host("down.test", ("/", ups("down"))),
            host("noroot.test", ("/api", a)),
        )
        port = free_port()
        tgt = target(listen=f"127.0.0.1:{port}")
        cfg = sock_dir / "haproxy.cfg"
        cfg.write_text(render(load_template(tgt), routing, tgt), encoding="utf-8")
        haproxy_check(cfg)
        with run_haproxy(cfg, sock_dir / "master.sock", port) as running:
            assert served_by(port, "web.test") == "a"
            assert served_by(port, "web.test", "/api/users?x=1") == "b"
            assert served_by(port, "web.test", "/apix") == "b"  # a raw prefix, as documented
            assert served_by(port, "WEB.test:8080") == "a"  # port stripped, lowercased
            assert served_by(port, "exact.wild.test") == "a"  # exact beats the wildcard
            assert served_by(port, "foo.wild.test") == "b"
            assert served_by(port, "a.b.wild.test") == "b"
            assert served_by(port, "wild.test") == 503  # *.wild.test is not wild.test
            assert served_by(port, "down.test") == 503  # a backend with no servers
            assert served_by(port, "noroot.test", "/api/x") == "a"
            assert served_by(port, "noroot.test", "/") == 404  # known host, unrouted path
            assert served_by(port, "unknown.test") == 503  # the catch-all
            status, body = http_get(port, "web.test", "/some/page")
            assert status == 200 and body["path"] == "/some/page"
            headers = body["headers"]
            assert headers["host"] == "web.test"
            assert headers["x-forwarded-for"] == "127.0.0.1"
            assert headers["x-real-ip"] == "127.0.0.1"
            assert headers["x-forwarded-proto"] == "http"
            assert headers["x-forwarded-host"] == "web.test"
            assert running.proc.poll() is None
