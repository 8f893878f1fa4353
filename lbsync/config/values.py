"""The value readers the schema names: each turns what YAML gave at one key path into the
value to use, or reports why not and returns None (the key then keeps its default)."""

from __future__ import annotations

import copy
import ipaddress
import re
import signal as _signal
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final, cast

from lbsync.config.durations import parse_duration
from lbsync.config.errors import ConfigError, describe
from lbsync.config.hosts import is_valid_host
from lbsync.config.reading import Reading, ValueParser

__all__ = [
    "BUILTIN_TEMPLATES",
    "DOCKER_SCHEMES",
    "integer_in",
    "one_of",
    "read_allowed_hosts",
    "read_boolean",
    "read_command",
    "read_container_name",
    "read_docker_host",
    "read_duration",
    "read_host_port",
    "read_ip_address",
    "read_label_prefix",
    "read_listen",
    "read_mapping",
    "read_output_file",
    "read_path",
    "read_signal",
    "read_string",
    "read_target_name",
    "read_template",
]

BUILTIN_TEMPLATES: Final[tuple[str, ...]] = ("builtin:nginx", "builtin:haproxy")
DOCKER_SCHEMES: Final[tuple[str, ...]] = ("unix://", "tcp://", "http://", "https://")

_LABEL_PREFIX_RE: Final = re.compile(r"[a-z0-9][a-z0-9._-]*")
_TARGET_NAME_RE: Final = re.compile(r"[a-z0-9][a-z0-9_-]*")
_CONTAINER_NAME_RE: Final = re.compile(r"/?[A-Za-z0-9][A-Za-z0-9_.-]*")
_HOSTNAME_RE: Final = re.compile(
    r"(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*"
)
_PORT_RE: Final = re.compile(r"[0-9]{1,5}")


# --------------------------------------------------------------------------------------------
# Plain values


def read_string(reading: Reading, value: object, at: str) -> str | None:
    if isinstance(value, str) and value.strip():
        return value
    if isinstance(value, str):
        reading.add(at, "must not be empty")
    else:
        reading.add(at, f"expected a string, got {describe(value)}")
    return None


def read_boolean(reading: Reading, value: object, at: str) -> bool | None:
    if isinstance(value, bool):
        return value
    reading.add(at, f"expected true or false, got {describe(value)}")
    return None


def one_of(choices: tuple[str, ...]) -> ValueParser[str]:
    """A reader of one of `choices` (a Literal type's arguments), exactly as written."""

    def read_choice(reading: Reading, value: object, at: str) -> str | None:
        if isinstance(value, str) and value in choices:
            return value
        reading.add(at, f"expected one of {', '.join(choices)}, got {describe(value)}")
        return None

    return read_choice


def integer_in(low: int, high: int) -> ValueParser[int]:
    """A reader of an integer from `low` to `high` (a bool or `8.0` is not one)."""

    def read_integer(reading: Reading, value: object, at: str) -> int | None:
        if isinstance(value, int) and not isinstance(value, bool):
            if low <= value <= high:
                return value
            reading.add(at, f"expected an integer from {low} to {high}, got {value}")
            return None
        reading.add(at, f"expected an integer from {low} to {high}, got {describe(value)}")
        return None

    return read_integer


def read_duration(reading: Reading, value: object, at: str) -> float | None:
    try:
        return parse_duration(value, at)
    except ConfigError as err:
        reading.problems.extend(err.problems)
        return None


def read_command(reading: Reading, value: object, at: str) -> tuple[str, ...] | None:
    if not isinstance(value, list):
        reading.add(at, f"expected a list of strings, got {describe(value)}")
        return None
    ok = True
    for index, item in enumerate(value):
        if not isinstance(item, str) or not item:
            reading.add(f"{at}[{index}]", f"expected a non-empty string, got {describe(item)}")
            ok = False
    return tuple(cast(list[str], value)) if ok else None


def read_mapping(reading: Reading, value: object, at: str) -> dict[str, Any] | None:
    """A free-form mapping, copied so the caller's later edits do not reach the config."""
    if isinstance(value, Mapping):
        return copy.deepcopy(dict(value))
    reading.add(at, f"expected a mapping, got {describe(value)}")
    return None


# --------------------------------------------------------------------------------------------
# Files


def read_path(reading: Reading, value: object, at: str) -> Path | None:
    """A path; a relative one resolves against the config file's folder."""
    text = read_string(reading, value, at)
    if text is None:
        return None
    if "\0" in text:
        reading.add(at, "a path cannot contain a NUL character")
        return None
    return reading.resolve(text)


def read_output_file(reading: Reading, value: object, at: str) -> Path | None:
    """The path of a file lbsync writes (not of a folder)."""
    if isinstance(value, str) and value.endswith("/"):
        reading.add(at, f"expected the path of a file, got {describe(value)}")
        return None
    return read_path(reading, value, at)


def read_template(reading: Reading, value: object, at: str) -> str | None:
    text = read_string(reading, value, at)
    if text is None:
        return None
    if text in BUILTIN_TEMPLATES:
        return text
    if text.startswith("builtin:") or not text.endswith(".j2"):
        reading.add(
            at,
            "expected builtin:nginx, builtin:haproxy or the path of a .j2 file, "
            f"got {describe(text)}",
        )
        return None
    if "\0" in text:
        reading.add(at, "a path cannot contain a NUL character")
        return None
    return str(reading.resolve(text))


# --------------------------------------------------------------------------------------------
# Names


def read_label_prefix(reading: Reading, value: object, at: str) -> str | None:
    text = read_string(reading, value, at)
    if text is not None and not _LABEL_PREFIX_RE.fullmatch(text):
        reading.add(
            at,
            "expected lower-case letters, digits, '.', '_' or '-' "
            f"(starting with a letter or digit), got {describe(text)}",
        )
        return None
    return text


def read_target_name(reading: Reading, value: object, at: str) -> str | None:
    text = read_string(reading, value, at)
    if text is not None and not _TARGET_NAME_RE.fullmatch(text):
        reading.add(
            at,
            "expected lower-case letters, digits, '_' or '-' "
            f"(starting with a letter or digit), got {describe(text)}",
        )
        return None
    return text


def read_container_name(reading: Reading, value: object, at: str) -> str | None:
    """A container name or id, without the leading `/` the engine shows."""
    name = read_string(reading, value, at)
    if name is None:
        return None
    if not _CONTAINER_NAME_RE.fullmatch(name):
        reading.add(at, f"expected a container name or id, got {describe(name)}")
        return None
    return name.removeprefix("/")


def read_signal(reading: Reading, value: object, at: str) -> str | None:
    """A signal this system knows, as its bare upper-case name (`SIGHUP`, `hup` -> `HUP`)."""
    if isinstance(value, str):
        name = value.strip().upper().removeprefix("SIG")
        if name and f"SIG{name}" in _signal.Signals.__members__:
            return name
    reading.add(at, f"expected a signal name like HUP or USR2, got {describe(value)}")
    return None


def read_allowed_hosts(reading: Reading, value: object, at: str) -> tuple[str, ...] | None:
    """`discovery.hosts`: a non-empty list of host names and `*.` patterns in the grammar of
    the `host` label; trimmed, lowercased, duplicates dropped."""
    if not isinstance(value, list):
        reading.add(at, f"expected a list of host names and *. patterns, got {describe(value)}")
        return None
    if not value:
        reading.add(at, "an empty list allows no host at all; use null to allow any host")
        return None
    hosts: list[str] = []
    for index, item in enumerate(value):
        host = item.strip().lower() if isinstance(item, str) else None
        if host is None or not is_valid_host(host):
            reading.add(
                f"{at}[{index}]",
                "expected a host name (app.example.com) or a *. pattern (*.example.com), "
                f"got {describe(item)}",
            )
        elif host not in hosts:
            hosts.append(host)
    return tuple(hosts)


# --------------------------------------------------------------------------------------------
# Addresses


def read_docker_host(reading: Reading, value: object, at: str) -> str | None:
    text = read_string(reading, value, at)
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
        reading.add(
            at,
            "expected unix:///path/to/docker.sock, tcp://HOST:PORT, http://HOST:PORT "
            f"or https://HOST:PORT, got {describe(value)}",
        )
        return None
    return text


def read_ip_address(reading: Reading, value: object, at: str) -> str | None:
    """An IPv4 or IPv6 address, in its normal form (`0:0:0:0:0:0:0:1` -> `::1`)."""
    text = read_string(reading, value, at)
    if text is None:
        return None
    try:
        return str(ipaddress.ip_address(text.strip()))
    except ValueError:
        reading.add(at, f"expected an IPv4 or IPv6 address, got {describe(text)}")
        return None


def _port(text: str) -> int | None:
    if not _PORT_RE.fullmatch(text):
        return None
    port = int(text)
    return port if 1 <= port <= 65535 else None


def read_listen(reading: Reading, value: object, at: str) -> str | None:
    """Where a proxy listens, `[addr:]port` normalised: `80`, `0.0.0.0:80`, `[::]:80`, `*:80`."""
    bad = (
        "expected [addr:]port (port 1..65535; addr an IPv4 address, [IPv6] or *), "
        f"got {describe(value)}"
    )
    if isinstance(value, int) and not isinstance(value, bool):
        if 1 <= value <= 65535:
            return str(value)
        reading.add(at, bad)
        return None
    if not isinstance(value, str):
        reading.add(at, bad)
        return None
    text = value.strip()
    addr, sep, port_text = text.rpartition(":")
    port = _port(port_text)
    if port is None:
        reading.add(at, bad)
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
        reading.add(at, bad)
        return None


def read_host_port(reading: Reading, value: object, at: str) -> tuple[str, int] | None:
    """`host:port` where host is an IPv4 address, `[IPv6]` or a host name."""
    bad = f"expected host:port (like 127.0.0.1:9180 or [::1]:9180), got {describe(value)}"
    if not isinstance(value, str):
        reading.add(at, bad)
        return None
    host, sep, port_text = value.strip().rpartition(":")
    port = _port(port_text)
    if not sep or port is None or not host:
        reading.add(at, bad)
        return None
    if host.startswith("[") and host.endswith("]"):
        try:
            return ipaddress.IPv6Address(host[1:-1]).compressed, port
        except ValueError:
            reading.add(at, bad)
            return None
    if re.fullmatch(r"[0-9.]+", host):
        try:
            return str(ipaddress.IPv4Address(host)), port
        except ValueError:
            reading.add(at, bad)
            return None
    if _HOSTNAME_RE.fullmatch(host):
        return host, port
    reading.add(at, bad)
    return None
