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
from types import MappingProxyType
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lbsync.config import DiscoveryConfig, TargetConfig
from lbsync.docker_api import Event, NotFound
from lbsync.model import Container, NetworkAttachment
from lbsync.registry import Registry
from lbsync.render import load_template, render
from lbsync.routing import build_model, parse_entry
from lbsync.watcher import Watcher

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
