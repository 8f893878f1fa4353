"""README's configuration reference is held to the schema, key by key.

Each section of the reference (`### \\`docker\\``, ...) has a `| key | type | default | meaning |`
table. Its keys are exactly the schema's, and each default, read by the key's own reader, is the
default a file that leaves the key out gets. The per-template defaults table is held to what a
target of each kind gets.
"""

from __future__ import annotations

import dataclasses
import re
import typing
from dataclasses import MISSING, Field
from pathlib import Path
from typing import Any

import pytest
import yaml

from lbsync.config.parse import parse_config
from lbsync.config.reading import Reading
from lbsync.config.schema import Config, Key, TemplateDefaults, field_default, key_paths, keys_of

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"

# A README default may name other keys: the proxy's is `{label: <label_prefix>.proxy=<name>}`.
# They are filled in with these, and the defaults of `targets` are those of this file.
PLACEHOLDERS = {"<label_prefix>": "edge", "<name>": "web"}
TARGET_FILE: dict[str, Any] = {
    "discovery": {"label_prefix": "edge"},
    "targets": [{"name": "web", "output": "/o/web.conf"}],
}
TEMPLATE_KEYS = tuple(f.name for f in dataclasses.fields(TemplateDefaults))


def _cells(line: str) -> list[str]:
    """A Markdown table row's cells (`\\|` inside a cell is a literal `|`)."""
    inner = line.strip().removeprefix("|").removesuffix("|")
    return [cell.strip().replace("\\|", "|") for cell in re.split(r"(?<!\\)\|", inner)]


def _first_table(text: str, header: list[str]) -> list[list[str]]:
    """The rows of the first table in `text` with this header."""
    lines = text.splitlines()
    for index, line in enumerate(lines):
        if line.startswith("|") and _cells(line) == header:
            rows = []
            for row in lines[index + 2 :]:
                if not row.startswith("|"):
                    break
                rows.append(_cells(row))
            return rows
    raise AssertionError(f"no table {' | '.join(header)}")


def _reference() -> str:
    text = README.read_text(encoding="utf-8")
    return text.split("\n## Configuration reference\n", 1)[1].split("\n## ", 1)[0]


def readme_sections() -> dict[str, dict[str, str]]:
    """{section: {key: default}} from each `### \\`section\\`` of the configuration reference."""
    sections: dict[str, dict[str, str]] = {}
    for part in re.split(r"\n(?=### )", _reference()):
        heading = re.match(r"### `([a-z_]+)`", part)
        if heading is None:
            continue
        rows = _first_table(part, ["key", "type", "default", "meaning"])
        keys = [cell[0].strip("`") for cell in rows]
        assert len(keys) == len(set(keys)), f"{heading[1]}: a key is listed twice"
        sections[heading[1]] = {key: row[2] for key, row in zip(keys, rows, strict=True)}
    return sections


def schema_sections() -> dict[str, type]:
    """{section: its dataclass} for every section of the file."""
    hints = typing.get_type_hints(Config)
    out: dict[str, type] = {}
    for name, f, _ in keys_of(Config):
        cls = hints[f.name]
        out[name] = typing.get_args(cls)[0] if typing.get_origin(cls) is tuple else cls
    return out


SECTIONS = schema_sections()
README_SECTIONS = readme_sections()
CASES = [
    pytest.param(section, path, f, key, id=f"{section}.{path}")
    for section, cls in SECTIONS.items()
    for path, f, key in key_paths(cls)
]


def test_the_reference_has_a_table_for_each_section() -> None:
    assert list(README_SECTIONS) == list(SECTIONS)


@pytest.mark.parametrize("section", list(SECTIONS))
def test_the_reference_lists_the_keys_of_the_schema(section: str) -> None:
    documented = list(README_SECTIONS[section])
    declared = [path for path, _, _ in key_paths(SECTIONS[section])]
    assert [key for key in declared if key not in documented] == [], "missing from README"
    assert [key for key in documented if key not in declared] == [], "not in the schema"
    assert documented == declared  # and in the order the schema reads them


def _default_of_a_file(section: str, path: str, f: Field[Any], key: Key) -> object:
    """What a file that leaves the key out gets: the value of the field(s) it fills."""
    config = parse_config(TARGET_FILE if section == "targets" else None)
    value: Any = getattr(config, section)
    if section == "targets":
        value = value[0]
    for part in path.split(".")[:-1]:  # a nested section's key: `tls.ca`
        value = getattr(value, part)
    if key.fills:
        return tuple(getattr(value, name) for name in key.fills)
    return getattr(value, f.name)


def _declared_default(section: str, path: str, f: Field[Any], key: Key) -> object:
    if not key.fills:
        return field_default(f)
    assert "." not in path, "a key filling several fields sits in a top-level section"
    fields = {g.name: g for g in dataclasses.fields(SECTIONS[section])}
    return tuple(field_default(fields[name]) for name in key.fills)


@pytest.mark.parametrize(("section", "path", "f", "key"), CASES)
def test_the_reference_gives_the_schema_default(
    section: str, path: str, f: Field[Any], key: Key
) -> None:
    cell = README_SECTIONS[section][path]
    if key.required:
        assert cell == "**required**"
        assert f.default is MISSING and f.default_factory is MISSING
        return
    if section == "targets" and path in TEMPLATE_KEYS:
        assert cell == "per template"  # held to the schema by the per-template table below
        return
    assert re.fullmatch(r"`[^`]+`", cell), f"{section}.{path}: default {cell!r}"
    text = cell.strip("`")
    derived = any(name in text for name in PLACEHOLDERS)
    for name, value in PLACEHOLDERS.items():
        text = text.replace(name, value)
    written = yaml.safe_load(text)
    reading = Reading(base=None)
    if written is None:
        assert key.null_is_default, f"{section}.{path}: null is not its default"
        documented: object = None
    else:
        assert key.read is not None
        documented = key.read(reading, written, f"{section}.{path}")
        assert reading.problems == []
    assert documented == _default_of_a_file(section, path, f, key)
    if not derived:  # and it is the default the dataclass declares
        assert documented == _declared_default(section, path, f, key)


# --------------------------------------------------------------------------------------------
# Per-template defaults

# Each row of the table, as a target: (template, output).
TEMPLATE_ROWS = {
    "`builtin:nginx`": ("builtin:nginx", "/o/lb.conf"),
    "`builtin:haproxy`": ("builtin:haproxy", "/o/lb.conf"),
    "a `.j2` file, `output` ending in `.cfg`": ("/t/mine.j2", "/o/lb.cfg"),
    "a `.j2` file, any other `output`": ("/t/mine.j2", "/o/lb.conf"),
}


def _per_template_table() -> dict[str, dict[str, str]]:
    part = _reference().split("\n#### Per-template defaults\n", 1)[1]
    header = ["template", *(f"`{key}`" for key in TEMPLATE_KEYS)]
    return {
        row[0]: dict(zip(TEMPLATE_KEYS, row[1:], strict=True)) for row in _first_table(part, header)
    }


def _documented(table: dict[str, dict[str, str]], row: str, key: str, output: str) -> object:
    cell = table[row][key]
    same_as = re.fullmatch(r"as (`[^`]+`)", cell)
    if same_as:
        return _documented(table, same_as[1], key, output)
    written = yaml.safe_load(re.findall(r"`([^`]*)`", cell)[0].replace("<output>", output))
    return tuple(written) if isinstance(written, list) else written


def test_the_reference_has_a_row_for_each_kind_of_template() -> None:
    assert list(_per_template_table()) == list(TEMPLATE_ROWS)


@pytest.mark.parametrize("row", list(TEMPLATE_ROWS))
@pytest.mark.parametrize("key", TEMPLATE_KEYS)
def test_the_reference_gives_the_per_template_defaults(row: str, key: str) -> None:
    template, output = TEMPLATE_ROWS[row]
    target = {"name": "web", "template": template, "output": output}
    got = getattr(parse_config({"targets": [target]}).targets[0], key)
    assert _documented(_per_template_table(), row, key, output) == got


# --------------------------------------------------------------------------------------------
# config.example.yaml: every key, set to its default (that it parses to the defaults, and has a
# comment on each line, is tested in test_config.py)


def _example_keys(cls: type, written: dict[str, Any], prefix: str = "") -> list[str]:
    nested = {path.split(".")[0] for path, _, _ in key_paths(cls) if "." in path}
    keys: list[str] = []
    for name, value in written.items():
        if name in nested and isinstance(value, dict):
            section = {f.name: f for f in dataclasses.fields(cls)}[name].default_factory
            assert isinstance(section, type)
            keys += _example_keys(section, value, f"{prefix}{name}.")
        else:
            keys.append(prefix + name)
    return keys


def test_the_example_sets_every_key_of_the_schema() -> None:
    data = yaml.safe_load((ROOT / "config.example.yaml").read_text(encoding="utf-8"))
    assert list(data) == list(SECTIONS)
    for section, cls in SECTIONS.items():
        written = data[section][0] if section == "targets" else data[section]
        assert _example_keys(cls, written) == [path for path, _, _ in key_paths(cls)], section
