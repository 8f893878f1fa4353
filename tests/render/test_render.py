"""Rendering: golden files for builtin:nginx (each checked by a real `nginx -t`), user templates,
errors that name the template and line, determinism and speed.

`LBSYNC_UPDATE_GOLDEN=1 python -m pytest tests/render/test_render.py` rewrites
tests/testdata/render/.
"""

from __future__ import annotations

import json
import os
import threading
import urllib.error
import urllib.request
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jinja2
import pytest

import lbsync.render.environment
import lbsync.render.templates
from lbsync.config.schema import TargetConfig
from lbsync.model.types import DiscoveredContainer, RoutingModel, Service
from lbsync.render.fragments import FragmentCache
from lbsync.render.quoting import UnsafeValueError
from lbsync.render.templates import (
    CompiledTemplate,
    TemplateError,
    load_template,
    render,
    render_bytes,
)
from tests.support.lab import free_port
from tests.support.model_builders import host, model, ref, srv, ups
from tests.support.nginx import nginx_prefix_config, nginx_test, require_nginx, running

GOLDEN_DIR = Path(__file__).parents[1] / "testdata" / "render"
UPDATE_GOLDEN = os.environ.get("LBSYNC_UPDATE_GOLDEN") == "1"

# --- model builders -------------------------------------------------------------------


def target(**overrides: Any) -> TargetConfig:
    values: dict[str, Any] = {
        "name": "nginx",
        "template": "builtin:nginx",
        "output": Path("/etc/nginx/conf.d/lbsync.conf"),
    }
    values.update(overrides)
    return TargetConfig(**values)


WEB = ups("lbsync_web_example_com_1a2b3c4d", srv("172.18.0.2", name="web-1"))

# --- golden fixtures --------------------------------------------------------------------

Fixture = Callable[[], tuple[RoutingModel, TargetConfig]]


def fx_empty() -> tuple[RoutingModel, TargetConfig]:
    return model(), target()


def fx_one_host() -> tuple[RoutingModel, TargetConfig]:
    return model(host("web.example.com", ("/", WEB))), target()


def fx_two_hosts() -> tuple[RoutingModel, TargetConfig]:
    shop = ups(
        "lbsync_shop_example_com_5e6f7a8b",
        srv("172.18.0.3", 3000, name="shop-1"),
        srv("172.18.0.4", 3000, name="shop-2"),
    )
    return model(
        host("web.example.com", ("/", WEB)), host("shop.example.com", ("/", shop))
    ), target()


def fx_paths_longest_first() -> tuple[RoutingModel, TargetConfig]:
    v2 = ups("lbsync_api_example_com_api_v2_0c0c0c0c", srv("172.18.0.5", 9000, name="api-v2"))
    api = ups("lbsync_api_example_com_api_0b0b0b0b", srv("172.18.0.6", 9000, name="api-v1"))
    site = ups("lbsync_api_example_com_0a0a0a0a", srv("172.18.0.7", 80, name="site"))
    return model(host("api.example.com", ("/", site), ("/api", api), ("/api/v2", v2))), target()


def fx_empty_upstream_503() -> tuple[RoutingModel, TargetConfig]:
    down = ups("lbsync_down_example_com_dddddddd")
    half_down = ups("lbsync_mixed_example_com_admin_eeeeeeee")
    return (
        model(
            host("down.example.com", ("/", down)),
            host("mixed.example.com", ("/", WEB), ("/admin", half_down)),
        ),
        target(),
    )


def fx_no_root_path_404() -> tuple[RoutingModel, TargetConfig]:
    api = ups("lbsync_api_example_com_api_0b0b0b0b", srv("172.18.0.6", 9000, name="api-v1"))
    return model(host("api.example.com", ("/api", api))), target()


def fx_weights_and_balance() -> tuple[RoutingModel, TargetConfig]:
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
    return (
        model(
            host("rr.example.com", ("/", rr)),
            host("lc.example.com", ("/", lc)),
            host("ih.example.com", ("/", ih)),
        ),
        target(),
    )


def fx_wildcard_host() -> tuple[RoutingModel, TargetConfig]:
    tenants = ups("lbsync_x_example_com_44444444", srv("172.18.0.20", name="tenants"))
    return (
        model(host("*.example.com", ("/", tenants)), host("www.example.com", ("/", WEB))),
        target(),
    )


def fx_default_server_off() -> tuple[RoutingModel, TargetConfig]:
    return model(host("web.example.com", ("/", WEB))), target(default_server=False)


def fx_ipv6_server() -> tuple[RoutingModel, TargetConfig]:
    dual = ups(
        "lbsync_v6_example_com_66666666",
        srv("172.18.0.30", name="v6-1"),
        srv("fd00:dead:beef::2", name="v6-2"),
        srv("2001:db8::1", 8443, name="v6-3"),
    )
    return model(host("v6.example.com", ("/", dual))), target()


def fx_listen_loopback_8080() -> tuple[RoutingModel, TargetConfig]:
    return model(host("web.example.com", ("/", WEB))), target(listen="127.0.0.1:8080")


def fx_hostile_path_quoted() -> tuple[RoutingModel, TargetConfig]:
    """Values the label parser would refuse: the template still keeps each one a token."""
    odd = ups("lbsync odd;name", srv("172.18.0.40", name="odd"))
    return model(host("odd.example.com", ("/we ird;{}#'\"\\", odd))), target()


def fx_long_host_name() -> tuple[RoutingModel, TargetConfig]:
    """Over 46 characters: nginx's default 64-byte server_names hash bucket is too small."""
    name = "a-rather-long-service-name.staging.eu-west-1.example.com"
    assert len(name) > 46
    return model(host(name, ("/", WEB)), host("web.example.com", ("/", WEB))), target()


FIXTURES: dict[str, Fixture] = {
    "empty": fx_empty,
    "one_host": fx_one_host,
    "two_hosts": fx_two_hosts,
    "paths_longest_first": fx_paths_longest_first,
    "empty_upstream_503": fx_empty_upstream_503,
    "no_root_path_404": fx_no_root_path_404,
    "weights_and_balance": fx_weights_and_balance,
    "wildcard_host": fx_wildcard_host,
    "default_server_off": fx_default_server_off,
    "ipv6_server": fx_ipv6_server,
    "listen_loopback_8080": fx_listen_loopback_8080,
    "hostile_path_quoted": fx_hostile_path_quoted,
    "long_host_name": fx_long_host_name,
}


@pytest.fixture(scope="module")
def nginx_template() -> CompiledTemplate:
    return load_template(target())


@pytest.mark.parametrize("name", sorted(FIXTURES))
def test_golden(name: str, nginx_template: CompiledTemplate) -> None:
    routing, tgt = FIXTURES[name]()
    text = render(nginx_template, routing, tgt)
    golden = GOLDEN_DIR / f"{name}.conf"
    if UPDATE_GOLDEN:
        golden.parent.mkdir(parents=True, exist_ok=True)
        golden.write_text(text, encoding="utf-8")
    assert golden.exists(), f"{golden} is missing: run with LBSYNC_UPDATE_GOLDEN=1"
    assert text == golden.read_text(encoding="utf-8")


@pytest.mark.parametrize("name", sorted(FIXTURES))
def test_golden_as_the_daemon_writes_it(name: str, nginx_template: CompiledTemplate) -> None:
    # The daemon assembles the file from its blocks' bytes (render_bytes): the same bytes.
    routing, tgt = FIXTURES[name]()
    golden = (GOLDEN_DIR / f"{name}.conf").read_bytes()
    cache = FragmentCache()
    assert render_bytes(nginx_template, routing, tgt, fragments=cache) == golden
    assert render_bytes(nginx_template, routing, tgt, fragments=cache) == golden  # reused


def test_every_golden_file_has_a_fixture() -> None:
    assert sorted(p.stem for p in GOLDEN_DIR.glob("*.conf")) == sorted(FIXTURES)


@pytest.mark.parametrize("name", sorted(FIXTURES))
def test_golden_passes_nginx_t(name: str, tmp_path: Path) -> None:
    nginx_test(tmp_path, GOLDEN_DIR / f"{name}.conf")


# --- what the builtin template promises ----------------------------------------------------


def test_builtin_template_shape(nginx_template: CompiledTemplate) -> None:
    text = (GOLDEN_DIR / "empty_upstream_503.conf").read_text(encoding="utf-8")
    assert text.startswith("# Generated by lbsync")
    assert "upstream lbsync_down_example_com_dddddddd" not in text  # nginx refuses empty ones
    assert "return 503;" in text
    assert "non_idempotent" not in text
    assert text.count("default_server") == 1
    # every name the template itself defines starts with lbsync_
    assert "$lbsync_connection_upgrade" in text


@pytest.mark.parametrize(
    ("setting", "expected"),
    [
        pytest.param(None, "server_names_hash_bucket_size 128;", id="auto"),
        pytest.param(256, "server_names_hash_bucket_size 256;", id="fixed"),
        pytest.param(False, None, id="off"),
    ],
)
def test_server_names_hash_bucket_size(
    nginx_template: CompiledTemplate, setting: object, expected: str | None
) -> None:
    routing, _ = fx_long_host_name()
    tgt = target() if setting is None else target(vars={"server_names_hash_bucket_size": setting})
    lines = [ln for ln in render(nginx_template, routing, tgt).splitlines() if "bucket_size" in ln]
    assert lines == ([expected] if expected else [])
    # 46 characters still fit the default bucket: nothing is emitted
    short = model(host("a" * 38 + ".example", ("/", WEB)))
    assert "bucket_size" not in render(nginx_template, short, target())


# --- a value a quoting filter refuses: builtins leave that service out, not the file ------

SHOP = ups("lbsync_shop_example_com_5e6f7a8b", srv("172.18.0.3", 3000, name="shop-1"))
EVIL = ups("lbsync_evil_1a1a1a1a", srv("172.18.0.9", 80, name="evil"))


def declares(name: str, hosts: tuple[str, ...], path: str = "/") -> DiscoveredContainer:
    service = Service(name="", hosts=hosts, port=80, path=path)
    return DiscoveredContainer(ref(name).id, name, {}, "none", (service,))


def renders_as_daemon_and_cli(
    template: CompiledTemplate, routing: RoutingModel, tgt: TargetConfig
) -> tuple[str, list[str]]:
    """`render` (the CLI) and `render_bytes` with a FragmentCache, twice (the daemon):
    the same text each time, and the same services left out each time."""
    left_out: list[str] = []
    text = render(template, routing, tgt, left_out=left_out)
    cache = FragmentCache()
    for _ in range(2):  # a refused block is never reused as the empty text it stood for
        again: list[str] = []
        data = render_bytes(template, routing, tgt, fragments=cache, left_out=again)
        assert data.decode() == text
        assert again == left_out
    return text, left_out


def test_refused_path_leaves_out_only_its_route(
    nginx_template: CompiledTemplate, tmp_path: Path
) -> None:
    routing = model(
        host("web.example.com", ("/", WEB), ("/$uri", EVIL)),
        host("shop.example.com", ("/", SHOP)),
        containers=(declares("evil", ("web.example.com",), "/$uri"),),
    )
    text, left_out = renders_as_daemon_and_cli(nginx_template, routing, target())
    without = model(host("web.example.com", ("/", WEB)), host("shop.example.com", ("/", SHOP)))
    assert text == render(nginx_template, without, target())
    assert "$uri" not in text and EVIL.name not in text
    assert left_out == [
        "service web.example.com/$uri (container evil) left out: cannot quote '/$uri' for "
        "nginx: it contains '$', which nginx expands as a variable and cannot escape; the "
        "rest of the file is written"
    ]
    out = tmp_path / "lbsync.conf"
    out.write_text(text)
    nginx_test(tmp_path, out)


def test_overlong_path_leaves_out_only_its_route(nginx_template: CompiledTemplate) -> None:
    # A path past nginx's 4,094-byte token limit (issue #17): the grammar stops it at 1,024
    # characters; should one get through, its route goes and the target is still written.
    long_path = "/" + "a" * 5000
    routing = model(
        host("web.example.com", ("/", WEB), (long_path, EVIL)),
        containers=(declares("evil", ("web.example.com",), long_path),),
    )
    text, left_out = renders_as_daemon_and_cli(nginx_template, routing, target())
    assert text == render(nginx_template, model(host("web.example.com", ("/", WEB))), target())
    (sentence,) = left_out
    assert sentence.startswith("service web.example.com/aaaa")
    assert "(container evil) left out: " in sentence and "4094-byte token limit" in sentence
    assert len(sentence) < 400


def test_refused_host_name_leaves_out_the_host(nginx_template: CompiledTemplate) -> None:
    bad_name = "a.test;\n}\nserver {"
    routing = model(host(bad_name, ("/", EVIL)), host("shop.example.com", ("/", SHOP)))
    text, left_out = renders_as_daemon_and_cli(nginx_template, routing, target())
    assert text == render(nginx_template, model(host("shop.example.com", ("/", SHOP))), target())
    assert left_out == [
        "service 'a.test;\\n}\\nserver {/' left out: cannot quote 'a.test;\\n}\\nserver {' for "
        "nginx: it contains a newline; the rest of the file is written"
    ]


def test_refused_upstream_leaves_out_every_route_to_it(nginx_template: CompiledTemplate) -> None:
    shared = ups("lbsync_$shared", srv("172.18.0.9", 80, name="evil"))
    routing = model(
        host("a.example.com", ("/", shared)),
        host("b.example.com", ("/", WEB), ("/x", shared)),
        host("shop.example.com", ("/", SHOP)),
    )
    text, left_out = renders_as_daemon_and_cli(nginx_template, routing, target())
    without = model(host("b.example.com", ("/", WEB)), host("shop.example.com", ("/", SHOP)))
    assert text == render(nginx_template, without, target())
    assert [s.split(" left out")[0] for s in left_out] == [
        "service a.example.com/",
        "service b.example.com/x",
    ]


def test_refusal_of_a_setting_fails_the_render(nginx_template: CompiledTemplate) -> None:
    # Not one service's doing (the config validator refuses such a listen): every host
    # would be refused, so the render fails and the last good file stays.
    tgt = target(listen="80\nevil", default_server=False)
    with pytest.raises(TemplateError, match="newline") as info:
        render(nginx_template, model(host("shop.example.com", ("/", SHOP))), tgt)
    assert isinstance(info.value.__cause__, UnsafeValueError)


def test_user_template_refusal_fails_the_whole_render(tmp_path: Path) -> None:
    # A user template's blocks may depend on one another: no block is left out for it.
    source = (
        "# mine\n{% for h in hosts %}{% for r in h.routes %}\n"
        "location {{ r.path | nginx_quote }};\n{% endfor %}{% endfor %}\n"
    )
    tgt = _user(tmp_path, source)
    routing = model(host("web.example.com", ("/", WEB), ("/$uri", EVIL)))
    with pytest.raises(TemplateError, match=r"user\.j2, line 3: .*'\$'") as info:
        render(load_template(tgt), routing, tgt, left_out=[])
    assert isinstance(info.value.__cause__, UnsafeValueError)


def test_render_is_deterministic(nginx_template: CompiledTemplate) -> None:
    routing, tgt = fx_weights_and_balance()
    first = render(nginx_template, routing, tgt).encode()
    again = render(load_template(tgt), *fx_weights_and_balance()).encode()
    assert first == again


def test_rendering_never_recompiles(
    nginx_template: CompiledTemplate, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_compile(*args: object, **kwargs: object) -> None:
        raise AssertionError("compiled during render")

    monkeypatch.setattr(jinja2.Environment, "compile", no_compile)
    routing, tgt = fx_two_hosts()
    assert render(nginx_template, routing, tgt) == render(nginx_template, routing, tgt)


# --- user templates and errors -----------------------------------------------------------


def _user(tmp_path: Path, source: str, name: str = "user.j2") -> TargetConfig:
    path = tmp_path / name
    path.write_text(source, encoding="utf-8")
    return target(template=str(path), vars={"greeting": "hello"})


CONTEXT_TEMPLATE = """\
{{ target.name }} {{ target.listen }} {{ target.default_server }} {{ vars.greeting }}
{% for h in hosts %}
host {{ h.name|nginx_quote }}{% for r in h.routes %} {{ r.path }}->{{ r.upstream.name }}{% endfor %}

{% endfor %}
{% for u in upstreams %}
upstream {{ u.name }} {{ u.balance }}
{% for s in u.servers %}
  {{ s.address }}:{{ s.port }} w={{ s.weight }} {{ s.container.name }} {{ s.container.id[:12] }}
{% endfor %}
{% endfor %}
{% for c in containers %}
container {{ c.name }} {{ c.id[:12] }} {{ c.health }} {{ c.labels["lbsync.host"] | haproxy_quote }}
{% for svc in c.services %}
  service {{ svc.name or "(default)" }} {{ svc.hosts | join(",") }}:{{ svc.port }}{{ svc.path }}
{% endfor %}
{% endfor %}
{{ upstreams | length }} upstreams"""


def test_user_template_gets_the_full_context(tmp_path: Path) -> None:
    web = ref("web-1")
    container = DiscoveredContainer(
        id=web.id,
        name="web-1",
        labels={"lbsync.enable": "true", "lbsync.host": "web.example.com"},
        health="healthy",
        services=(Service(name="", hosts=("web.example.com",), port=8080),),
    )
    routing = model(host("web.example.com", ("/", WEB)), containers=(container,))
    tgt = _user(tmp_path, CONTEXT_TEMPLATE)
    compiled = load_template(tgt)
    assert compiled.name == str(tmp_path / "user.j2")
    assert compiled.path == tmp_path / "user.j2"
    assert not compiled.is_builtin
    assert render(compiled, routing, tgt) == (
        "nginx 80 True hello\n"
        "host web.example.com /->lbsync_web_example_com_1a2b3c4d\n"
        "upstream lbsync_web_example_com_1a2b3c4d round_robin\n"
        f"  172.18.0.2:8080 w=1 web-1 {web.id[:12]}\n"
        f"container web-1 {web.id[:12]} healthy web.example.com\n"
        "  service (default) web.example.com:8080/\n"
        "1 upstreams\n"  # render adds the final newline the template lacks
    )


def test_typo_in_user_template_names_file_and_line(tmp_path: Path) -> None:
    tgt = _user(tmp_path, "# ok\n{% for h in hosts %}\nserver_name {{ h.nmae }};\n{% endfor %}\n")
    compiled = load_template(tgt)
    with pytest.raises(TemplateError) as info:
        render(compiled, model(host("web.example.com", ("/", WEB))), tgt)
    err = info.value
    assert str(tmp_path / "user.j2") in str(err)
    assert err.line == 3
    assert "line 3" in str(err) and "nmae" in str(err)
    assert isinstance(err.__cause__, jinja2.UndefinedError)


def test_undefined_variable_names_file_and_line(tmp_path: Path) -> None:
    tgt = _user(tmp_path, "a\nb\n{{ vars.missing }}\n")
    with pytest.raises(TemplateError, match=r"user\.j2, line 3: .*missing"):
        render(load_template(tgt), model(), tgt)


def test_python_error_in_template_is_a_template_error(tmp_path: Path) -> None:
    tgt = _user(tmp_path, "{{ 1 // 0 }}\n")
    with pytest.raises(TemplateError, match=r"line 1: ZeroDivisionError") as info:
        render(load_template(tgt), model(), tgt)
    assert isinstance(info.value.__cause__, ZeroDivisionError)


#: Ways out of a template into Python, each of which would create MARKER if it got through.
ESCAPES = {
    "cycler globals": "{{ cycler.__init__.__globals__.os.system('touch MARKER') }}",
    "lipsum globals": "{{ lipsum.__globals__['os'].system('touch MARKER') }}",
    "str subclasses": "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "model class": "{% for h in hosts %}{{ h.__class__.__init__.__globals__ }}{% endfor %}",
    "attr filter": "{{ (target | attr('__class__')).__init__.__globals__ }}",
    "format": "{{ '{0.__class__.__init__.__globals__}'.format(target) }}",
    "template reference": "{{ self._TemplateReference__context.environment }}",
    "path write": "{{ target.output.with_name('MARKER').write_text('x') }}",
    "path unlink": "{{ target.output.unlink() }}",
    "path listing": "{{ target.output.parent.glob('*') | list }}",
    "path open": "{{ target.output.open('w') }}",
}


@pytest.mark.parametrize("source", ESCAPES.values(), ids=ESCAPES.keys())
def test_a_template_cannot_reach_python(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, source: str
) -> None:
    monkeypatch.chdir(tmp_path)  # where `touch MARKER` would land
    output = tmp_path / "out.conf"
    output.write_text("keep me\n")
    (tmp_path / "user.j2").write_text(f"# one\n{source}\n")
    tgt = target(template=str(tmp_path / "user.j2"), output=output)
    compiled = load_template(tgt)  # it compiles: the sandbox acts when the line runs
    with pytest.raises(TemplateError) as info:
        render(compiled, model(host("web.example.com", ("/", WEB))), tgt)
    err = info.value
    assert isinstance(err.__cause__, jinja2.exceptions.SecurityError)
    assert err.line == 2
    assert str(err).startswith(f"template {tmp_path / 'user.j2'}, line 2: refused by the sandbox: ")
    assert "\n" not in str(err)
    assert not (tmp_path / "MARKER").exists()
    assert output.read_text() == "keep me\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.conf", "user.j2"]


def test_the_sandbox_keeps_what_templates_use(tmp_path: Path) -> None:
    source = (
        "{{ target.output.name }} {{ target.output.parent.name }} {{ target.output.suffix }}"
        " {{ target.output.with_suffix('.bak').name }}\n"
        "{% set seen = [] %}{% for h in hosts %}{{ seen.append(h.name) or '' }}{% endfor %}"
        "{{ seen | join(',') }} {{ vars.items() | list | length }} {{ '%s-%d' % ('a', 1) }}"
        " {{ '{}:{}'.format('b', 2) }} {{ range(3) | list }}\n"
    )
    tgt = _user(tmp_path, source)
    text = render(load_template(tgt), model(host("web.example.com", ("/", WEB))), tgt)
    assert text == "lbsync.conf conf.d .conf lbsync.bak\nweb.example.com 1 a-1 b:2 [0, 1, 2]\n"


def test_remembered_verdicts_never_widen_the_sandbox(tmp_path: Path) -> None:
    """The sandbox remembers which (type, name) it allowed; that never lets through another
    name of the same type, nor the same name where it would be unsafe, and stays bounded."""
    routing = model(host("web.example.com", ("/", WEB)))
    safe = _user(tmp_path, "{% for h in hosts %}{{ h.name }}{% endfor %} {{ target.output.name }}")
    for _ in range(2):
        assert render(load_template(safe), routing, safe) == "web.example.com lbsync.conf\n"
    for source in (
        "{{ target.output.unlink() }}",
        "{% for h in hosts %}{{ h.__class__ }}{% endfor %}",
        "{{ '{0.__class__}'.format(target) }}",
        "{% for h in hosts %}{{ h.routes | attr('__len__') }}{% endfor %}",
    ):
        tgt = _user(tmp_path, source, "escape.j2")
        with pytest.raises(TemplateError, match="refused by the sandbox"):
            render(load_template(tgt), routing, tgt)

    names = {f"n{i}": i for i in range(1000)}
    many = target(template=str(tmp_path / "many.j2"), vars={"names": names})
    (tmp_path / "many.j2").write_text(
        "{% set ns = namespace(**vars.names) %}{% set t = namespace(sum=0) %}"
        "{% for n in vars.names %}{% set t.sum = t.sum + (ns | attr(n)) %}{% endfor %}{{ t.sum }}"
    )
    assert render(load_template(many), routing, many) == f"{sum(range(1000))}\n"
    assert max(map(len, lbsync.render.environment._SAFE_ATTRIBUTES.values())) <= 256


def test_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    tgt = _user(tmp_path, "one\ntwo\n{% for h in hosts %}\n{{ h.name }}\n")
    with pytest.raises(TemplateError, match=r"user\.j2, line \d+: .*endfor") as info:
        load_template(tgt)
    assert isinstance(info.value.__cause__, jinja2.TemplateSyntaxError)


def test_unknown_filter_is_found_at_load(tmp_path: Path) -> None:
    tgt = _user(tmp_path, "\n{{ hosts | caddy_quote }}\n")
    with pytest.raises(TemplateError, match=r"line 2: .*caddy_quote"):
        load_template(tgt)


def test_missing_user_template(tmp_path: Path) -> None:
    tgt = target(template=str(tmp_path / "nope.j2"))
    with pytest.raises(TemplateError, match=r"nope\.j2: no such file") as info:
        load_template(tgt)
    assert info.value.line is None
    assert isinstance(info.value.__cause__, FileNotFoundError)


def test_template_that_is_a_directory(tmp_path: Path) -> None:
    with pytest.raises(TemplateError, match="cannot read"):
        load_template(target(template=str(tmp_path)))


def test_template_that_is_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin1.j2"
    path.write_bytes(b"caf\xe9\n")
    with pytest.raises(TemplateError, match="not UTF-8"):
        load_template(target(template=str(path)))


def test_unknown_builtin() -> None:
    with pytest.raises(TemplateError, match=r"builtin:caddy: unknown builtin template"):
        load_template(target(template="builtin:caddy"))


def test_builtin_lookup_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    installed, checkout = tmp_path / "pkg", tmp_path / "repo"
    monkeypatch.setattr(
        lbsync.render.templates, "builtin_template_dirs", lambda: (installed, checkout)
    )
    haproxy = target(template="builtin:haproxy")
    with pytest.raises(TemplateError, match=r"builtin:haproxy: haproxy\.cfg\.j2 is not installed"):
        load_template(haproxy)
    checkout.mkdir()
    (checkout / "haproxy.cfg.j2").write_text("from checkout\n")
    assert render(load_template(haproxy), model(), haproxy) == "from checkout\n"
    installed.mkdir()
    (installed / "haproxy.cfg.j2").write_text("from package\n")
    compiled = load_template(haproxy)
    assert compiled.is_builtin and compiled.path == installed / "haproxy.cfg.j2"
    assert render(compiled, model(), haproxy) == "from package\n"


def test_builtin_dirs_are_the_package_then_the_checkout() -> None:
    package_dir = Path(lbsync.__file__).resolve().parent
    assert lbsync.render.templates.builtin_template_dirs() == (
        package_dir / "templates",
        package_dir.parent / "templates",
    )
    assert load_template(target()).path.name == "nginx.conf.j2"


# --- the builtin template in a live nginx ------------------------------------------------------


class _EchoHandler(BaseHTTPRequestHandler):
    """Answers with the request's headers and the client (nginx) port, as JSON."""

    protocol_version = "HTTP/1.1"  # keeps connections open: lets nginx reuse them

    def do_GET(self) -> None:
        body = json.dumps(
            {"headers": dict(self.headers.items()), "peer_port": self.client_address[1]}
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def _get(port: int, host_header: str, path: str = "/", **headers: str) -> tuple[int, bytes]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}", headers={"Host": host_header, **headers}
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def test_builtin_nginx_live(tmp_path: Path) -> None:
    """Routing, forwarded headers, upstream keepalive, WebSocket headers and the 503s, for real."""
    nginx = require_nginx()
    app = ThreadingHTTPServer(("127.0.0.1", 0), _EchoHandler)
    worker = threading.Thread(target=app.serve_forever, daemon=True)
    worker.start()
    try:
        echo = ups("lbsync_echo_test_0e0e0e0e", srv("127.0.0.1", app.server_address[1]))
        routing = model(
            host("echo.test", ("/", echo)),
            host("down.test", ("/", ups("lbsync_down_test_0d0d0d0d"))),
            host("api.test", ("/api", echo)),
        )
        port = free_port()
        tgt = target(listen=f"127.0.0.1:{port}")
        include = tmp_path / "lbsync.conf"
        include.write_text(render(load_template(tgt), routing, tgt), encoding="utf-8")
        conf = nginx_prefix_config(tmp_path, include, extra_main="daemon off;\nmaster_process off;")
        argv = [nginx, "-e", str(tmp_path / "error.log"), "-p", f"{tmp_path}/", "-c", str(conf)]
        with running(argv, tmp_path / "nginx.out", port):
            seen = []
            for _ in range(3):
                status, body = _get(port, "echo.test", "/some/page?q=1")
                assert status == 200
                seen.append(json.loads(body))
            headers = seen[0]["headers"]
            assert headers["Host"] == "echo.test"
            assert headers["X-Real-IP"] == "127.0.0.1"
            assert headers["X-Forwarded-For"] == "127.0.0.1"
            assert headers["X-Forwarded-Proto"] == "http"
            assert headers["X-Forwarded-Host"] == "echo.test"
            assert "Connection" not in headers  # no "close": the upstream connection is kept
            assert len({s["peer_port"] for s in seen}) == 1  # ... and reused (keepalive)

            status, body = _get(port, "echo.test", "/ws", Connection="Upgrade", Upgrade="websocket")
            ws_headers = json.loads(body)["headers"]
            assert (ws_headers["Connection"], ws_headers["Upgrade"]) == ("upgrade", "websocket")

            assert _get(port, "api.test", "/apix")[0] == 200  # a raw prefix, as documented
            assert _get(port, "api.test", "/")[0] == 404  # an unrouted path: not the nginx root
            assert _get(port, "down.test")[0] == 503  # no servers left
            assert _get(port, "unknown.test")[0] == 503  # the catch-all default server
    finally:
        app.shutdown()
        app.server_close()


# --------------------------------------------------------------------------- render_each

EACH_TEMPLATE = """\
{% macro block(u) %}
{{ u.name }}:{% for s in u.servers %} {{ s.address }}:{{ s.port }}{% endfor %}

{% endmacro %}
{{ upstreams | render_each(block) -}}
--
{% for u in upstreams %}{{ block(u) }}{% endfor %}
"""


def fleet_model(count: int, moved: int | None = None) -> RoutingModel:
    upstreams = [
        ups(f"u{i}", srv(f"127.0.0.{i + 1}", 8000 + (1 if i == moved else 0), name=f"app-{i}"))
        for i in range(count)
    ]
    return model(*(host(f"h{i}.test", ("/", u)) for i, u in enumerate(upstreams)))


def test_render_each_writes_what_a_for_loop_writes(tmp_path: Path) -> None:
    path = tmp_path / "each.j2"
    path.write_text(EACH_TEMPLATE, encoding="utf-8")
    tgt = target(template=str(path))
    text = render(load_template(tgt), fleet_model(3), tgt)
    each_text, _, loop_text = text.partition("--\n")
    assert each_text == loop_text
    assert each_text.splitlines() == [
        "u0: 127.0.0.1:8000",
        "u1: 127.0.0.2:8000",
        "u2: 127.0.0.3:8000",
    ]


def test_render_each_renders_only_the_blocks_of_new_objects() -> None:
    tgt = target()
    template = load_template(tgt)
    cache = FragmentCache()
    first = fleet_model(5)
    assert render(template, first, tgt, fragments=cache) == render(template, first, tgt)
    assert (cache.rendered, cache.reused) == (10, 0)  # 5 upstreams and 5 servers

    # Host 2's upstream moved; the other hosts and upstreams stay the same objects.
    changed = fleet_model(5, moved=2)
    hosts = tuple(changed.hosts[2] if i == 2 else h for i, h in enumerate(first.hosts))
    upstreams = tuple(changed.upstreams[2] if i == 2 else u for i, u in enumerate(first.upstreams))
    second = RoutingModel(hosts, upstreams, ())
    text = render(template, second, tgt, fragments=cache)
    assert text == render(template, second, tgt)
    assert "127.0.0.3:8001" in text
    assert (cache.rendered, cache.reused) == (12, 8)

    # The same model again reuses everything; a new target (a config reload) forgets it all.
    render(template, second, tgt, fragments=cache)
    assert (cache.rendered, cache.reused) == (12, 18)
    moved_listen = target(listen="127.0.0.1:8081")
    text = render(template, second, moved_listen, fragments=cache)
    assert cache.rendered == 22
    assert "listen 127.0.0.1:8081;" in text and "listen 127.0.0.1:80;" not in text


def test_render_bytes_follows_changes_as_render_does() -> None:
    tgt = target()
    template = load_template(tgt)
    cache = FragmentCache()
    first = fleet_model(5)
    assert (
        render_bytes(template, first, tgt, fragments=cache) == render(template, first, tgt).encode()
    )
    changed = fleet_model(5, moved=2)
    hosts = tuple(changed.hosts[2] if i == 2 else h for i, h in enumerate(first.hosts))
    upstreams = tuple(changed.upstreams[2] if i == 2 else u for i, u in enumerate(first.upstreams))
    second = RoutingModel(hosts, upstreams, ())
    data = render_bytes(template, second, tgt, fragments=cache)
    assert data == render(template, second, tgt).encode()
    assert b"127.0.0.3:8001" in data
    assert (cache.rendered, cache.reused) == (12, 8)  # as render's cache: two blocks again
    fewer = RoutingModel(hosts[:3], upstreams[:3], ())
    assert (
        render_bytes(template, fewer, tgt, fragments=cache) == render(template, fewer, tgt).encode()
    )
    # A text render with the same cache starts over (blocks kept as text, not bytes).
    assert render(template, fewer, tgt, fragments=cache) == render(template, fewer, tgt)


def test_a_user_template_may_filter_what_render_each_gives(tmp_path: Path) -> None:
    path = tmp_path / "upper.j2"
    path.write_text(
        EACH_TEMPLATE.replace("render_each(block) -}}", "render_each(block) | upper -}}")
    )
    tgt = target(template=str(path))
    template = load_template(tgt)
    data = render_bytes(template, fleet_model(2), tgt, fragments=FragmentCache())
    assert data.startswith(b"U0: 127.0.0.1:8000")
    assert data == render(template, fleet_model(2), tgt).encode()


def test_assemble_refuses_markers_a_template_changed() -> None:
    cache = FragmentCache()
    cache.prepare(load_template(target()), target(), as_bytes=True)
    with pytest.raises(ValueError, match="changed by the template"):
        cache.assemble("no marker\x00")


def test_render_each_wants_a_macro(tmp_path: Path) -> None:
    path = tmp_path / "bad.j2"
    path.write_text("{{ upstreams | render_each('block') }}\n", encoding="utf-8")
    tgt = target(template=str(path))
    with pytest.raises(TemplateError, match="render_each takes a macro"):
        render(load_template(tgt), fleet_model(1), tgt)
