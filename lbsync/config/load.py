"""Find and read the config file (README: Where lbsync looks for the file)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Final

import yaml

from lbsync.config.errors import ConfigError
from lbsync.config.parse import parse_config
from lbsync.config.schema import Config

__all__ = ["CONFIG_ENV_VAR", "DEFAULT_CONFIG_FILE", "load_config"]

CONFIG_ENV_VAR: Final = "LBSYNC_CONFIG"
DEFAULT_CONFIG_FILE: Final = "lbsync.yaml"


def _yaml_problem(err: yaml.YAMLError) -> str:
    mark = getattr(err, "problem_mark", None)
    problem = getattr(err, "problem", None)
    if mark is not None and problem:
        at = f"line {mark.line + 1}, column {mark.column + 1}"
        return f"invalid YAML at {at}: {problem}"
    return "invalid YAML: " + " ".join(str(err).split())


def _load_file(path: Path, named_by: str | None = None) -> Config:
    file = path.absolute()
    suffix = f" (named by {named_by})" if named_by else ""
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError([f"no such file{suffix}"], file) from None
    except IsADirectoryError:
        raise ConfigError([f"is a directory, not a file{suffix}"], file) from None
    except PermissionError:
        raise ConfigError([f"cannot read: permission denied{suffix}"], file) from None
    except OSError as err:
        raise ConfigError([f"cannot read: {err.strerror or err}{suffix}"], file) from None
    except UnicodeDecodeError:
        raise ConfigError(["cannot read: not UTF-8 text"], file) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError([_yaml_problem(err)], file) from None
    return parse_config(data, file)


def load_config(path: Path | None, environ: Mapping[str, str]) -> Config:
    """Find and read the config: `path`, else `$LBSYNC_CONFIG`, else `./lbsync.yaml` if it
    exists, else the built-in defaults (source None). A named file that is missing,
    unreadable or not valid YAML is a ConfigError naming the file."""
    if path is not None:
        return _load_file(Path(path))
    from_env = environ.get(CONFIG_ENV_VAR, "")
    if from_env:
        return _load_file(Path(from_env), named_by=f"${CONFIG_ENV_VAR}")
    local = Path(DEFAULT_CONFIG_FILE)
    if local.exists():
        return _load_file(local)
    return parse_config(None)
