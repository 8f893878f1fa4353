"""Property tests: hostile label values and event JSON.

No rendered config ever holds a value outside its field's grammar, and no exception escapes
the watcher's event handling. The default run is quick; `HYPOTHESIS_PROFILE=long` (10,000
examples each) is the long run: `HYPOTHESIS_PROFILE=long python -m pytest -m hostile`.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lbsync.config.schema import DiscoveryConfig, TargetConfig
from lbsync.engine.container import Container, NetworkAttachment
from lbsync.engine.errors import NotFound
from lbsync.engine.events import Event
from lbsync.model.builder import build_model
from lbsync.model.entries import parse_entry
from lbsync.model.types import Service
from lbsync.render.templates import load_template, render
from lbsync.state.registry import Registry
from lbsync.state.watcher import Watcher
from tests.support.haproxy import haproxy_check
from tests.support.nginx import nginx_test

pytestmark = pytest.mark.hostile

settings.register_profile(
    "long", max_examples=10_000, deadline=None, suppress_health_check=list(HealthCheck)
)
settings.register_profile("quick", max_examples=150, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "quick"))

HOST = re.compile(
    r"(?:\*\.)?[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)*"
)
PATH = re.compile(r"/[A-Za-z0-9._~%/-]*")
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
ADDRESS = re.compile(r"\[?[0-9a-fA-F.:]+\]?:[0-9]{1,5}")

INJECTION = re.compile(r"[A-Za-z0-9][;{}#$\"'\\\n\r\x00`]+[A-Za-z0-9]")
NGINX = TargetConfig(name="t", template="builtin:nginx", output="/x/lbsync.conf")  # type: ignore[arg-type]
NGINX_TEMPLATE = load_template(NGINX)

# Values a hostile or careless user might put in a label: config syntax, control characters,
# unicode look-alikes, very long strings, and plausible valid values to mix with them.
hostile_text = st.one_of(
    st.text(max_size=40),
    st.text(alphabet=";{}#$\"'\\ \n\r\t\x00`|&<>*~", max_size=12),
    st.sampled_from(
        [
            "a.test",
            "*.a.test",
            "/api",
            "80",
            "8080",
            "3",
            "web",
            "round_robin",
            "a.test;evil",
            "a.test\n",
            "/x{",
            "80 ",
            "app.*",
            "~^re$",
            "K.test",
        ]
    ),
    st.builds(lambda a, b: a + b, st.sampled_from(["a.test", "/p", "80"]), st.text(max_size=8)),
)
label_keys = st.sampled_from(
    [
        "host",
        "port",
        "path",
        "upstream",
        "weight",
        "balance",
        "network",
        "web.host",
        "web.port",
        "web.path",
        "admin.host",
        "admin.port",
        "enable",
    ]
)


def container(index: int, labels: dict[str, str]) -> Container:
    return Container(
        id=f"{index:064x}",
        name=f"c{index}",
        created_ns=index,
        labels=MappingProxyType(labels),
        network_mode="bridge",
        networks=(NetworkAttachment("front", "n1", f"172.20.0.{index % 250 + 2}"),),
        exposed_ports=(8080,),
    )


def rendered_tokens(text: str) -> dict[str, list[str]]:
    """The label-derived tokens of a builtin nginx file, unquoted."""

    def unquote(token: str) -> str:
        if token.startswith('"') and token.endswith('"'):
            return token[1:-1].replace('\\"', '"').replace("\\\\", "\\")
        return token

    return {
        "server_name": [unquote(m) for m in re.findall(r"server_name (.+);", text)],
        "location": [unquote(m) for m in re.findall(r"location (.+) \{", text)],
        "upstream": [unquote(m) for m in re.findall(r"^upstream (.+) \{", text, re.M)],
        "server": re.findall(r"^\s+server (\S+) weight=\d+;", text, re.M),
    }


@given(st.lists(st.dictionaries(label_keys, hostile_text, max_size=6), min_size=1, max_size=6))
def test_rendered_nginx_holds_only_grammatical_values(label_sets: list[dict[str, str]]) -> None:
    discovery = DiscoveryConfig(exposed_by_default=True)
    entries = [
        parse_entry(container(i, {f"lbsync.{k}": v for k, v in labels.items()}), discovery)
        for i, labels in enumerate(label_sets)
    ]
    model = build_model(entries, discovery, NGINX, frozenset({"front"}))
    text = render(NGINX_TEMPLATE, model, NGINX)
    tokens = rendered_tokens(text)
    assert all(name == "_" or HOST.fullmatch(name) for name in tokens["server_name"]), tokens
    assert all(PATH.fullmatch(path) for path in tokens["location"]), tokens
    assert all(NAME.fullmatch(name) for name in tokens["upstream"]), tokens
    assert all(ADDRESS.fullmatch(server) for server in tokens["server"]), tokens
    # A value that smuggles config syntax between words ("a.test;evil") never shows up, even
    # inside a line. A breaker at an edge proves nothing: "a.test;" is in `server_name a.test;`.
    for labels in label_sets:
        for value in labels.values():
            if INJECTION.search(value):
                assert value not in text


# --- over-long values of every field (issue #17) -------------------------------------------

HAPROXY = TargetConfig(name="t", template="builtin:haproxy", output="/x/haproxy.cfg")  # type: ignore[arg-type]
HAPROXY_TEMPLATE = load_template(HAPROXY)
GOOD_PORT = 8080  # every container here exposes 8080
LABEL_63 = "a" * 63


def repeated(units: list[str], low: int, high: int) -> st.SearchStrategy[str]:
    return st.builds(lambda unit, n: unit * n, st.sampled_from(units), st.integers(low, high))


def near(limit: int) -> st.SearchStrategy[int]:
    """Lengths at and around a bound, and far past it."""
    return st.sampled_from([5000, limit + 1, limit, 4 * limit, limit - 1, limit + 2])


long_hosts = st.one_of(
    near(100).map(lambda n: ",".join(f"h{i}.test" for i in range(n))),
    near(253).map(lambda n: ("x." * n)[: n - 4] + "test" if n > 4 else "test"),
    near(253).map(lambda n: ("*." + ".".join([LABEL_63] * 5))[:n].rstrip(".")),
    st.integers(1, 12).map(lambda k: ".".join([LABEL_63] * k)),
    near(100).map(lambda n: ",".join(["same.test"] * n)),  # duplicates count once
    repeated(["a", ",", "a,", " ,", "*.", "-"], 60, 6000),
)
long_paths = st.one_of(
    near(1024).map(lambda n: "/" + "p" * (n - 1)),
    near(1024).map(lambda n: "/" + "%" * (n - 1)),
    repeated(["/", "a", "/a", "$", "%"], 1000, 6000),
)
long_names = st.one_of(near(64).map(lambda n: "u" * n), repeated(["u", ".", "-", "_"], 60, 6000))
long_numbers = repeated(["9", "1", "0"], 5, 5000)
long_balances = repeated(["round_robin", "ip_hash", "x"], 2, 500)
over_long = {
    "host": long_hosts,
    "path": long_paths,
    "upstream": long_names,
    "port": long_numbers,
    "weight": long_numbers,
    "balance": long_balances,
}


@st.composite
def over_long_labels(draw: st.DrawFn) -> dict[str, str]:
    """One container's labels: a valid service with one or more over-long fields, maybe
    under an over-long service name, maybe beside a great many other services."""
    prefix = draw(
        st.sampled_from(["lbsync.", "lbsync.web."]) | near(64).map(lambda n: f"lbsync.{'n' * n}.")
    )
    labels = {"lbsync.enable": "true", f"{prefix}host": "ok.test", f"{prefix}port": "8080"}
    keys = st.sampled_from(sorted(over_long))
    for key in draw(st.lists(keys, min_size=1, max_size=2, unique=True)):
        labels[f"{prefix}{key}"] = draw(over_long[key])
    count = draw(st.sampled_from([0, 0, 30, 31, 32, 33, 200]))
    for i in range(count):
        labels[f"lbsync.s{i:03}.host"] = f"s{i}.many.test"
        labels[f"lbsync.s{i:03}.port"] = "8080"
    return labels


def bounded(service: Service) -> bool:
    return (
        1 <= len(service.hosts) <= 100
        and all(len(h) <= 253 and HOST.fullmatch(h) for h in service.hosts)
        and len(service.path) <= 1024
        and PATH.fullmatch(service.path) is not None
        and (service.upstream is None or len(service.upstream) <= 64)
        and len(service.name) <= 64
    )


@settings(suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.lists(over_long_labels(), min_size=1, max_size=4))
def test_over_long_values_never_stop_the_rest(label_sets: list[dict[str, str]]) -> None:
    discovery = DiscoveryConfig()
    good = container(0, {"lbsync.enable": "true", "lbsync.host": "good.test"})
    entries = [parse_entry(good, discovery)]
    entries += [
        parse_entry(container(i + 1, labels), discovery) for i, labels in enumerate(label_sets)
    ]
    for entry in entries[1:]:
        parsed = entry.parsed
        assert all(bounded(service) for service in parsed.services), parsed.services
        assert len(parsed.services) <= 32
        for skip in parsed.skips:  # one line each, of bounded length
            assert "\n" not in skip.detail and len(skip.detail) < 600, skip.detail
    model = build_model(entries, discovery, NGINX, frozenset({"front"}))
    good_server = f"{good.networks[0].ip}:{GOOD_PORT}"
    for template, target in ((NGINX_TEMPLATE, NGINX), (HAPROXY_TEMPLATE, HAPROXY)):
        left_out: list[str] = []
        text = render(template, model, target, left_out=left_out)
        assert left_out == [], "a value the grammar accepted was refused at render time"
        assert good_server in text, "the good container must still be routed"
        assert "good.test" in text
    tokens = rendered_tokens(render(NGINX_TEMPLATE, model, NGINX))
    assert all(name == "_" or len(name) <= 253 for name in tokens["server_name"]), tokens
    assert all(len(path) <= 1024 and PATH.fullmatch(path) for path in tokens["location"])
    # lbsync_ and a label's 64 characters, or a derived name (its full hash: 88 at most)
    assert all(NAME.fullmatch(n) and len(n) <= 88 for n in tokens["upstream"]), tokens


def longest_valid_labels(index: int) -> dict[str, str]:
    """Every bound at its limit: 32 services, the default one with 100 hosts of 253
    characters (wildcards among them), a 1,024-character path and a 64-character upstream
    name; the others under 64-character names."""

    def host(i: int) -> str:
        tail = f"{index}x{i}.test"
        name = ".".join([LABEL_63, LABEL_63, LABEL_63, "b" * (253 - 3 * 64 - len(tail) - 1)])
        full = f"{name}.{tail}"
        return "*." + full[2:] if i % 10 == 0 else full

    labels = {
        "lbsync.enable": "true",
        "lbsync.host": ",".join(host(i) for i in range(100)),
        "lbsync.port": "8080",
        "lbsync.path": "/" + "%" * 1023,
        "lbsync.upstream": f"{index}" + "U" * 63,
    }
    for i in range(31):
        name = f"{i:02}" + "n" * 62
        labels[f"lbsync.{name}.host"] = f"s{i}.c{index}.test"
        labels[f"lbsync.{name}.port"] = "8080"
        labels[f"lbsync.{name}.path"] = "/" + "p" * 1023
    return labels


def test_the_longest_valid_values_pass_nginx_t_and_haproxy_c(tmp_path: Path) -> None:
    discovery = DiscoveryConfig()
    good = container(0, {"lbsync.enable": "true", "lbsync.host": "good.test"})
    entries = [parse_entry(good, discovery)]
    entries += [parse_entry(container(i, longest_valid_labels(i)), discovery) for i in (1, 2)]
    for entry in entries:
        assert entry.parsed.skips == ()
        assert all(len(h) in (9, 253) for h in entry.parsed.services[0].hosts)
    assert [len(e.parsed.services) for e in entries] == [1, 32, 32]
    model = build_model(entries, discovery, NGINX, frozenset({"front"}))
    assert len(model.hosts) == 1 + 2 * (100 + 31)
    nginx_dir, haproxy_dir = tmp_path / "nginx", tmp_path / "haproxy"
    for folder, template, target in (
        (nginx_dir, NGINX_TEMPLATE, NGINX),
        (haproxy_dir, HAPROXY_TEMPLATE, HAPROXY),
    ):
        left_out: list[str] = []
        text = render(template, model, target, left_out=left_out)
        assert left_out == []
        folder.mkdir()
        (folder / "out.conf").write_text(text)
    nginx_test(nginx_dir, nginx_dir / "out.conf")
    haproxy_check(haproxy_dir / "out.conf")


scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
json_values = (
    scalars
    | st.lists(scalars, max_size=4)
    | st.dictionaries(st.text(max_size=10), scalars, max_size=4)
)
event_objects = st.one_of(
    json_values,
    st.fixed_dictionaries(
        {
            "Type": st.sampled_from(["container", "network", "image", "plugin", 3, None]),
            "Action": st.one_of(
                st.sampled_from(
                    [
                        "start",
                        "kill",
                        "die",
                        "destroy",
                        "remove",
                        "health_status: healthy",
                        "connect",
                        "exec_start: x",
                    ]
                ),
                json_values,
            ),
            "Actor": st.one_of(
                json_values,
                st.fixed_dictionaries(
                    {
                        "ID": st.one_of(st.text(max_size=64), json_values),
                        "Attributes": st.one_of(
                            json_values,
                            st.dictionaries(
                                st.sampled_from(["signal", "name", "container"]), json_values
                            ),
                        ),
                    }
                ),
            ),
            "timeNano": json_values,
            "time": json_values,
        }
    ),
)


class StubClient:
    """Not an engine: just enough for `Watcher.apply`, whose inspects find nothing."""

    async def inspect_container(self, container_id: str) -> dict[str, Any]:
        raise NotFound(404, f"No such container: {container_id}", method="GET", path="/x")


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(event_objects, min_size=1, max_size=8))
def test_no_exception_escapes_event_handling(objects: list[Any]) -> None:
    registry = Registry()
    registry.upsert(container(1, {"lbsync.host": "a.test"}))
    watcher = Watcher(StubClient(), registry, lambda change: None)  # type: ignore[arg-type]
    events = []
    for obj in objects:
        line = json.dumps(obj)
        try:
            events.append(Event.from_json(json.loads(line)))
        except ValueError:
            continue  # the stream turns this into a StreamError and reconnects
    asyncio.run(watcher.apply(events))
