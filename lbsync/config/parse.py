"""Turn what `yaml.safe_load` returned into a Config, by the declarations in `schema`.

Each section is read key by key in the order its dataclass declares them: a key left out (or
null, where null means so) keeps its default, a bad value is reported and keeps its default,
and the few rules across keys run where they always have. Every problem found is reported in
one ConfigError, as `key.path: message` lines.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, TypeVar, cast

from lbsync.config.durations import format_seconds
from lbsync.config.errors import ConfigError, describe, join_key
from lbsync.config.reading import Reading
from lbsync.config.schema import (
    DEFAULT_TARGET_NAME,
    Config,
    DebounceConfig,
    DiscoveryConfig,
    DockerConfig,
    LogConfig,
    ServerConfig,
    TargetConfig,
    TemplateDefaults,
    TLSConfig,
    default_proxy,
    default_target,
    keys_of,
    template_defaults,
)

__all__ = ["parse_config"]

S = TypeVar("S")


@dataclass(slots=True)
class _Section:
    """One section as read so far."""

    given: dict[str, object]  # the known keys the file sets, as written
    values: dict[str, Any] = field(default_factory=dict)  # by field, each value read fine
    failed: set[str] = field(default_factory=set)  # the keys set to a value that was refused


# A rule across keys, checked once a given key of a section is read (set or not).
_Rule = Callable[[Reading, _Section, str], None]


def _read(
    reading: Reading, cls: type, value: object, at: str, *, null_ok: bool = True
) -> _Section | None:
    """The section `cls` as written at `at`; None (reported) if it is not a mapping."""
    given = reading.mapping(value, at, [name for name, _, _ in keys_of(cls)], null_ok=null_ok)
    if given is None:
        return None
    section = _Section(given)
    for name, f, key in keys_of(cls):
        key_at = join_key(at, name)
        if name not in given:
            if key.required:
                reading.add(key_at, "required")
        elif given[name] is None and key.null_is_default:
            pass  # as if left out
        elif key.read is None:
            section.values[f.name] = _build(
                reading, cast(type, f.default_factory), given[name], key_at
            )
        else:
            got = key.read(reading, given[name], key_at)
            if got is None:
                section.failed.add(name)
            elif key.fills:
                section.values.update(zip(key.fills, got, strict=True))
            else:
                section.values[f.name] = got
        rule = _RULES.get((cls, name))
        if rule is not None:
            rule(reading, section, at)
    return section


def _build(reading: Reading, cls: type[S], value: object, at: str) -> S:
    """The section `cls` as written at `at`, its defaults where it says nothing usable."""
    section = _read(reading, cls, value, at)
    return cls() if section is None else cls(**section.values)


# --------------------------------------------------------------------------------------------
# Rules across keys


def _cert_and_key_together(reading: Reading, section: _Section, at: str) -> None:
    cert_given = section.given.get("cert") is not None
    key_given = section.given.get("key") is not None
    if cert_given and not key_given:
        reading.add(join_key(at, "cert"), f"needs {join_key(at, 'key')} as well")
    if key_given and not cert_given:
        reading.add(join_key(at, "key"), f"needs {join_key(at, 'cert')} as well")


def _max_at_least_quiet(reading: Reading, section: _Section, at: str) -> None:
    if section.failed & {"quiet", "max"}:
        return  # already reported
    defaults = DebounceConfig()
    quiet = section.values.get("quiet", defaults.quiet)
    maximum = section.values.get("max", defaults.max)
    if maximum < quiet:
        reading.add(
            join_key(at, "max"),
            f"must be at least {join_key(at, 'quiet')} ({format_seconds(quiet)}), "
            f"got {format_seconds(maximum)}",
        )


_RULES: Final[dict[tuple[type, str], _Rule]] = {
    (TLSConfig, "key"): _cert_and_key_together,
    (DebounceConfig, "max"): _max_at_least_quiet,
}

_TEMPLATE_KEYS: Final = tuple(f.name for f in dataclasses.fields(TemplateDefaults))


def _refuse_combinations(
    reading: Reading, target: TargetConfig, at: str, *, template_ok: bool
) -> None:
    """Combinations of a target's keys that cannot work (README: Combinations that are refused)."""
    if target.proxy.pid_file is not None:
        for key, mode in (("check", target.check), ("reload", target.reload)):
            if mode == "exec":
                reading.add(
                    join_key(at, key), "exec needs a proxy container; a pid_file proxy has none"
                )
    if target.check in ("exec", "command") and not target.check_command:
        reading.add(join_key(at, "check"), f"{target.check} needs a non-empty check_command")
    if target.reload in ("exec", "command") and not target.reload_command:
        reading.add(join_key(at, "reload"), f"{target.reload} needs a non-empty reload_command")
    if target.reload == "haproxy-master" and target.master_socket is None:
        reading.add(join_key(at, "reload"), "haproxy-master needs master_socket")
    if target.reload == "haproxy-runtime" and target.runtime_socket is None:
        reading.add(join_key(at, "reload"), "haproxy-runtime needs runtime_socket")
    haproxy_reload = target.reload in ("haproxy-master", "haproxy-runtime")
    if haproxy_reload and template_ok and target.template == "builtin:nginx":
        reading.add(
            join_key(at, "reload"), f"{target.reload} does not work with template builtin:nginx"
        )


# --------------------------------------------------------------------------------------------
# Targets


def _target(reading: Reading, value: object, at: str, label_prefix: str) -> TargetConfig | None:
    section = _read(reading, TargetConfig, value, at, null_ok=False)
    if section is None:
        return None
    # A required key that is missing or bad is reported; these stand in for it meanwhile.
    target = TargetConfig(**{"name": "", "output": Path(), **section.values})
    # The defaults that follow other keys.
    follows = template_defaults(target.template, target.output)
    derived = {key: getattr(follows, key) for key in _TEMPLATE_KEYS if key not in section.values}
    if "proxy" not in section.values:
        derived["proxy"] = default_proxy(label_prefix, target.name or DEFAULT_TARGET_NAME)
    target = dataclasses.replace(target, **derived)
    _refuse_combinations(reading, target, at, template_ok="template" not in section.failed)
    return target


def _targets(reading: Reading, value: object, label_prefix: str) -> tuple[TargetConfig, ...]:
    if value is None:
        return (default_target(label_prefix),)
    if not isinstance(value, list):
        reading.add("targets", f"expected a list of targets, got {describe(value)}")
        return (default_target(label_prefix),)
    if not value:
        reading.add("targets", "expected at least one target")
        return (default_target(label_prefix),)
    targets: list[TargetConfig] = []
    names: dict[str, int] = {}
    outputs: dict[Path, int] = {}
    for index, item in enumerate(value):
        at = f"targets[{index}]"
        target = _target(reading, item, at, label_prefix)
        if target is None:
            continue
        if target.name:
            if target.name in names:
                reading.add(
                    f"{at}.name",
                    f"{target.name!r} is already used by targets[{names[target.name]}]",
                )
            else:
                names[target.name] = index
        if target.output != Path():
            if target.output in outputs:
                reading.add(
                    f"{at}.output",
                    f"{target.output} is already written by targets[{outputs[target.output]}]",
                )
            else:
                outputs[target.output] = index
        targets.append(target)
    return tuple(targets) or (default_target(label_prefix),)


# --------------------------------------------------------------------------------------------
# The file


def parse_config(data: object, source: Path | None = None) -> Config:
    """Build a Config from what `yaml.safe_load` returned (None or {} = all defaults).

    Pure: reads no files and no environment. Relative paths are joined to `source`'s folder
    (left relative when `source` is None). Every problem found is reported in one ConfigError.
    """
    reading = Reading(source.parent if source is not None else None)
    root = reading.mapping(data, "", [name for name, _, _ in keys_of(Config)]) or {}
    docker = _build(reading, DockerConfig, root.get("docker"), "docker")
    discovery = _build(reading, DiscoveryConfig, root.get("discovery"), "discovery")
    debounce = _build(reading, DebounceConfig, root.get("debounce"), "debounce")
    targets = _targets(reading, root.get("targets"), discovery.label_prefix)
    server = _build(reading, ServerConfig, root.get("server"), "server")
    log = _build(reading, LogConfig, root.get("log"), "log")
    if reading.problems:
        raise ConfigError(reading.problems, source)
    return Config(
        docker=docker,
        discovery=discovery,
        debounce=debounce,
        targets=targets,
        server=server,
        log=log,
        source=source,
    )
