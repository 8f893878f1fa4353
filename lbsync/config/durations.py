"""Durations as the config file writes them (`200ms`, `2s`, `1m30s`, a bare number of seconds)."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Final

from lbsync.config.errors import ConfigError, describe, where

__all__ = ["format_seconds", "parse_duration"]

_PLAIN_NUMBER_RE: Final = re.compile(r"[0-9]+(?:\.[0-9]+)?")
_DURATION_RE: Final = re.compile(r"(?:[0-9]+(?:\.[0-9]+)?(?:ms|s|m|h))+")
_DURATION_PART_RE: Final = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h)")
_DURATION_UNITS: Final[Mapping[str, float]] = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_DURATION_HINT: Final = "expected a duration like 200ms or 2s"


def _parse_duration_text(text: str) -> float | None:
    if _PLAIN_NUMBER_RE.fullmatch(text):
        return float(text)
    if not _DURATION_RE.fullmatch(text):
        return None
    return sum(
        float(number) * _DURATION_UNITS[unit] for number, unit in _DURATION_PART_RE.findall(text)
    )


def parse_duration(value: object, at: str) -> float:
    """Seconds from `200ms`, `2s`, `1.5s`, `1m`, `1h`, `1m30s`, `0`, or a bare number of seconds.

    Raises ConfigError naming the key path `at` for a negative value or anything else.
    """
    seconds: float | None = None
    if isinstance(value, int | float) and not isinstance(value, bool):
        try:
            seconds = float(value)
        except OverflowError:
            seconds = None
    elif isinstance(value, str):
        text = value.strip()
        negative = text.startswith("-")
        seconds = _parse_duration_text(text[1:] if negative else text)
        if seconds is not None and negative and seconds != 0:
            seconds = -seconds
    if seconds is None or not math.isfinite(seconds):
        raise ConfigError([f"{where(at)}: {_DURATION_HINT}, got {describe(value)}"])
    if seconds < 0:
        raise ConfigError([f"{where(at)}: a duration cannot be negative, got {describe(value)}"])
    return seconds


def format_seconds(value: float) -> str:
    """A duration as the file would write it: `500ms`, `3s`."""
    if value and value < 1:
        return f"{round(value * 1000, 3):g}ms"
    return f"{value:g}s"
