"""How a target picks containers: label selectors (`select`, `proxy.label`) and the proxy."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Final

from lbsync.config.errors import describe, join_key
from lbsync.config.reading import Reading
from lbsync.config.values import read_container_name, read_path, read_string

__all__ = [
    "LabelSelector",
    "ProxyConfig",
    "read_label_selector",
    "read_proxy",
    "read_select",
]

_LABEL_KEY_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/-]*")


@dataclass(frozen=True, slots=True)
class LabelSelector:
    """`{label: key=value}` or `{label: key}` (present with any value)."""

    key: str
    value: str | None = None

    def matches(self, labels: Mapping[str, str]) -> bool:
        if self.key not in labels:
            return False
        return self.value is None or labels[self.key] == self.value


@dataclass(frozen=True, slots=True)
class ProxyConfig:
    """How to find the proxy: exactly one of label, name or pid_file is set."""

    label: LabelSelector | None = None
    name: str | None = None
    pid_file: Path | None = None


PROXY_KEYS: Final[tuple[str, ...]] = tuple(f.name for f in fields(ProxyConfig))


def read_label_selector(reading: Reading, value: object, at: str) -> LabelSelector | None:
    """`KEY=VALUE` or `KEY` (a Docker label with any value)."""
    text = read_string(reading, value, at)
    if text is None:
        return None
    key, eq, label_value = text.partition("=")
    if not _LABEL_KEY_RE.fullmatch(key) or "\n" in label_value:
        reading.add(at, f"expected key=value or key (a Docker label), got {describe(text)}")
        return None
    return LabelSelector(key=key, value=label_value if eq else None)


def read_select(reading: Reading, value: object, at: str) -> LabelSelector | None:
    """A target's `select`: `{label: KEY=VALUE}` or `{label: KEY}`."""
    given = reading.mapping(value, at, ("label",))
    if given is None:
        return None
    if "label" not in given:
        reading.add(join_key(at, "label"), "required")
        return None
    return read_label_selector(reading, given["label"], join_key(at, "label"))


def read_proxy(reading: Reading, value: object, at: str) -> ProxyConfig | None:
    """A target's `proxy`: exactly one of `{label: ...}`, `{name: ...}`, `{pid_file: ...}`."""
    given = reading.mapping(value, at, PROXY_KEYS)
    if given is None:
        return None
    keys = [key for key in PROXY_KEYS if key in given]
    if len(keys) != 1:
        got = f", got {', '.join(keys)}" if keys else ""
        reading.add(at, f"expected exactly one of {', '.join(PROXY_KEYS)}{got}")
        return None
    key = keys[0]
    item = given[key]
    item_at = join_key(at, key)
    if key == "label":
        selector = read_label_selector(reading, item, item_at)
        return None if selector is None else ProxyConfig(label=selector)
    if key == "name":
        name = read_container_name(reading, item, item_at)
        return None if name is None else ProxyConfig(name=name)
    pid_file = read_path(reading, item, item_at)
    return None if pid_file is None else ProxyConfig(pid_file=pid_file)
