"""`lbsync.engine.inspect`: what lbsync keeps of an inspect answer (pure, no engine)."""

from __future__ import annotations

import copy
from typing import Any

import lbsync.engine.inspect as containers
from lbsync.config.schema import DiscoveryConfig
from lbsync.engine.container import EMPTY_MAPPING
from lbsync.engine.inspect import KEPT_ENV, container_from_inspect, kept_env, shared
from lbsync.model import labels

INSPECT: dict[str, Any] = {
    "Id": "a" * 64,
    "Name": "/web-1",
    "Created": "2026-11-28T08:37:15.975308417Z",
    "State": {"Status": "running", "Running": True, "StartedAt": "2026-11-28T08:37:16Z"},
    "HostConfig": {"NetworkMode": "bridge"},
    "Config": {
        "Env": [
            "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "DATABASE_URL=postgres://app:secret@db/app",
            "VIRTUAL_HOST=a.test",
            "VIRTUAL_PORT=8080",
            "VIRTUAL_PROTO=https",
            "VIRTUAL_PATH",
            "LETSENCRYPT_HOST=a.test",
        ],
        "Labels": {"com.docker.compose.project": "shop", "lbsync.enable": "true"},
        "StopSignal": "SIGTERM",
    },
    "NetworkSettings": {
        "Networks": {"shop_default": {"NetworkID": "f" * 64, "IPAddress": "172.18.0.5"}}
    },
}


def inspect(**config: Any) -> dict[str, Any]:
    data = copy.deepcopy(INSPECT)
    data["Config"].update(config)
    return data


def test_only_the_env_vars_lbsync_reads_are_kept() -> None:
    container = container_from_inspect(inspect())
    # VIRTUAL_PATH without "=" is an empty value, as Docker would set it.
    kept = {"VIRTUAL_HOST": "a.test", "VIRTUAL_PORT": "8080", "VIRTUAL_PATH": ""}
    assert dict(container.env) == kept


def test_kept_env_are_the_ones_the_label_parser_reads() -> None:
    read = {labels._ENV_HOST, labels._ENV_PORT, labels._ENV_PATH}
    read |= {env_key for _, env_key in labels._ENV_KEYS}
    assert read == KEPT_ENV


def test_no_env_to_keep_is_the_shared_empty_mapping() -> None:
    assert container_from_inspect(inspect(Env=["PATH=/bin", "PORT=80"])).env is EMPTY_MAPPING
    assert container_from_inspect(inspect(Env=None)).env is EMPTY_MAPPING
    assert kept_env("VIRTUAL_HOST=a.test") is EMPTY_MAPPING  # not a list: nothing
    assert kept_env([1, None, "VIRTUAL_HOST=a.test"]) == {"VIRTUAL_HOST": "a.test"}


def test_the_last_of_a_repeated_variable_wins() -> None:
    assert kept_env(["VIRTUAL_HOST=a.test", "VIRTUAL_HOST=b.test"]) == {"VIRTUAL_HOST": "b.test"}


def test_nginx_proxy_compat_still_reads_the_env() -> None:
    container = container_from_inspect(inspect(Labels={}))
    parsed = labels.parse_services(container, DiscoveryConfig(compat="nginx-proxy"))
    assert [(s.hosts, s.port, s.path) for s in parsed.services] == [(("a.test",), 8080, "/")]


def test_repeating_strings_are_kept_once() -> None:
    first = container_from_inspect(inspect())
    second = container_from_inspect(inspect())  # a new answer: new, equal strings
    assert first == second
    for a, b in zip(first.labels.items(), second.labels.items(), strict=True):
        assert a[0] is b[0] and a[1] is b[1]
    assert first.networks[0].network_id is second.networks[0].network_id
    assert first.network_mode is second.network_mode
    assert first.state is second.state


def test_the_shared_table_is_bounded() -> None:
    long = "x" * (containers._SHARED_LONGEST + 1)
    assert shared(long) is long
    assert long not in containers._SHARED
    for i in range(containers._SHARED_MAX + 10):
        shared(f"value-{i}")
    assert len(containers._SHARED) <= containers._SHARED_MAX
    text = "".join(["one", "-", "key"])  # not a constant: a fresh string
    assert shared(text) is text
    assert shared("".join(["one", "-", "key"])) is text


# --------------------------------------------------------------------------- listings

#: What Docker lists for INSPECT once it publishes 8080 (and 9000/udp) on the host, in both
#: address families, with port 80 exposed but not published; an `Up ... (healthy)` status.
LISTED: dict[str, Any] = {
    "Id": "a" * 64,
    "Names": ["/web-1"],
    "Labels": {"lbsync.enable": "true"},
    "State": "running",
    "Status": "Up 3 minutes (healthy)",
    "NetworkSettings": {
        "Networks": {
            "shop_default": {"NetworkID": "f" * 64, "EndpointID": "e", "IPAddress": "172.18.0.5"}
        }
    },
    "Ports": [
        {"PrivatePort": 80, "Type": "tcp"},
        {"IP": "0.0.0.0", "PrivatePort": 8080, "PublicPort": 32768, "Type": "tcp"},
        {"IP": "::", "PrivatePort": 8080, "PublicPort": 32768, "Type": "tcp"},
        {"IP": "0.0.0.0", "PrivatePort": 9000, "PublicPort": 9000, "Type": "udp"},
    ],
}


def published_inspect() -> dict[str, Any]:
    data = copy.deepcopy(INSPECT)
    data["State"]["Health"] = {"Status": "healthy"}
    data["NetworkSettings"]["Ports"] = {
        "80/tcp": None,
        "8080/tcp": [
            {"HostIp": "0.0.0.0", "HostPort": "32768"},
            {"HostIp": "::", "HostPort": "32768"},
        ],
        "9000/udp": [{"HostIp": "0.0.0.0", "HostPort": "9000"}],
    }
    return data


def test_a_listing_agrees_with_the_inspect_of_the_same_container() -> None:
    listed = containers.listed_container(LISTED)
    assert listed.published == ((8080, "0.0.0.0", 32768), (8080, "::", 32768))
    assert listed.health == "healthy"
    assert containers.listing_agrees(container_from_inspect(published_inspect()), listed)


def test_a_listing_disagrees_on_what_can_change_while_a_container_exists() -> None:
    stored = container_from_inspect(published_inspect())
    changes: dict[str, Any] = {
        "Names": ["/web-2"],  # renamed
        "State": "exited",
        "Status": "Up 3 minutes (unhealthy)",
        "NetworkSettings": {"Networks": {}},  # disconnected
        "Ports": [{"IP": "0.0.0.0", "PrivatePort": 8080, "PublicPort": 32769, "Type": "tcp"}],
    }
    for key, value in changes.items():
        listed = containers.listed_container({**LISTED, key: value})
        assert not containers.listing_agrees(stored, listed), key


def test_an_unreadable_listing_entry_disagrees() -> None:
    stored = container_from_inspect(published_inspect())
    for entry in ({"Id": "a" * 64, "Names": "web-1"}, {"Id": "a" * 64, "Names": ["/web-1"]}):
        assert not containers.listing_agrees(stored, containers.listed_container(entry))


def test_listed_health_reads_dockers_status_suffixes() -> None:
    assert containers.listed_health("Up 2 seconds (health: starting)") == "starting"
    assert containers.listed_health("Up 2 hours (unhealthy)") == "unhealthy"
    assert containers.listed_health("Exited (0) 5 minutes ago") == "none"
    assert containers.listed_health(None) == "none"
