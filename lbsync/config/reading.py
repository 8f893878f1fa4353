"""One reading of one config: where its relative paths resolve, and the problems found so far.

Parsing never stops at the first problem: a value that cannot be used is reported as
`key.path: message` and its default is used instead, so one ConfigError lists them all.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TypeAlias, TypeVar

from lbsync.config.errors import describe, join_key, where

__all__ = ["Reading", "ValueParser"]

T = TypeVar("T")

# Reads the value written at a key path: the value to use, or None after reporting why not.
ValueParser: TypeAlias = Callable[["Reading", object, str], T | None]


class Reading:
    """Collects `key.path: message` lines while parsing goes on with defaults."""

    def __init__(self, base: Path | None) -> None:
        self.base = base  # the config file's folder; None leaves relative paths relative
        self.problems: list[str] = []

    def add(self, at: str, message: str) -> None:
        self.problems.append(f"{where(at)}: {message}")

    def mapping(
        self, value: object, at: str, allowed: Iterable[str], *, null_ok: bool = True
    ) -> dict[str, object] | None:
        """A mapping with only `allowed` keys (unknown ones reported and dropped).

        None for a value that is not a mapping (reported); `{}` for null when `null_ok`.
        """
        if value is None and null_ok:
            return {}
        if not isinstance(value, Mapping):
            self.add(at, f"expected a mapping, got {describe(value)}")
            return None
        known = tuple(allowed)
        out: dict[str, object] = {}
        for key, item in value.items():
            if isinstance(key, str) and key in known:
                out[key] = item
                continue
            hint = ""
            if isinstance(key, str):
                close = difflib.get_close_matches(key, known, n=1)
                if close:
                    hint = f" (did you mean {close[0]}?)"
            self.add(join_key(at, key), "unknown key" + hint)
        return out

    def resolve(self, text: str) -> Path:
        """An absolute path as is; a relative one joined to the config file's folder."""
        raw = Path(text)
        if self.base is not None and not raw.is_absolute():
            raw = self.base / raw
        return Path(os.path.normpath(raw))
