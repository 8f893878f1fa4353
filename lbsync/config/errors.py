"""A config that cannot be used, and how its values read in the messages that say why."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

__all__ = ["ConfigError", "describe", "join_key", "where"]


class ConfigError(Exception):
    """A config that cannot be used; `problems` are lines like `targets[0].reload: ...`."""

    def __init__(self, problems: list[str], source: Path | None = None) -> None:
        self.problems = problems
        self.source = source
        prefix = f"{source}: " if source else ""
        super().__init__(prefix + "; ".join(problems))


def describe(value: object) -> str:
    """How a YAML value reads in a message: `'abc'`, `42`, `true`, `null`, `a list`."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        text = value if len(value) <= 60 else value[:57] + "..."
        return repr(text)
    if isinstance(value, list | tuple):
        return "a list"
    if isinstance(value, Mapping):
        return "a mapping"
    return f"a {type(value).__name__}"


def join_key(at: str, key: object) -> str:
    """The key path of `key` inside the section at `at` (`""` is the top level)."""
    return f"{at}.{key}" if at else str(key)


def where(at: str) -> str:
    """A key path as a message names it."""
    return at or "(top level)"
