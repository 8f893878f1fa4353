"""Compile a target's Jinja2 template once and render the routing model with it (SPEC §3a).

`load_template(target)` finds and compiles the template (`builtin:nginx`, `builtin:haproxy`,
or a path); `render(compiled, model, target)` turns a `RoutingModel` into the config text.
Both raise `TemplateError` naming the template and, where known, the line.

A builtin template renders each host and upstream as its own block (`render_each`). When a
quoting filter refuses a value in one block, that block's service is left out rather than
the whole file (SPEC §1: one container's bad input never stops the rest of a target): the
route whose path was refused, the host whose name was, or the upstream and its routes; the
file is rendered again without it and the caller gets one sentence per service left out.
The label grammar keeps every value within what the filters accept, so this is a second
line of defence. A user template still fails whole: its blocks may depend on one another
in ways lbsync cannot see.

The sandboxed Jinja2 environment and its filters are `lbsync.render.environment`, the block
texts kept between renders `lbsync.render.fragments`, and what a refused block leaves out
`lbsync.render.isolation`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import jinja2

import lbsync
from lbsync.config.schema import TargetConfig
from lbsync.model.types import RoutingModel
from lbsync.render.environment import ENVIRONMENT
from lbsync.render.fragments import FragmentCache, current_fragments
from lbsync.render.isolation import Isolation, current_isolation, leave_out
from lbsync.render.quoting import UnsafeValueError

__all__ = [
    "BUILTIN_TEMPLATES",
    "CompiledTemplate",
    "TemplateError",
    "builtin_template_dirs",
    "load_template",
    "render",
    "render_bytes",
]

BUILTIN_PREFIX = "builtin:"
# builtin name -> file name inside a templates folder
BUILTIN_TEMPLATES: dict[str, str] = {
    "builtin:nginx": "nginx.conf.j2",
    "builtin:haproxy": "haproxy.cfg.j2",
}


class TemplateError(Exception):
    """A template that cannot be read, compiled or rendered.

    `template` is the builtin name or the path as configured, `line` the template line when
    known, `reason` what went wrong. str() gives "template NAME, line N: REASON".
    """

    def __init__(self, template: str, line: int | None, reason: str) -> None:
        self.template = template
        self.line = line
        self.reason = reason
        where = f"template {template}" + (f", line {line}" if line is not None else "")
        super().__init__(f"{where}: {reason}")


@dataclass(frozen=True, slots=True, eq=False)
class CompiledTemplate:
    """A compiled template, ready to render any number of times without recompiling."""

    name: str  # "builtin:nginx", "builtin:haproxy", or the configured path
    path: Path  # the source file (watch it to reload a user template)
    template: jinja2.Template = field(repr=False)

    @property
    def is_builtin(self) -> bool:
        return self.name.startswith(BUILTIN_PREFIX)


def builtin_template_dirs() -> tuple[Path, Path]:
    """Where builtin templates are looked up: the installed package, then a source checkout."""
    package_dir = Path(lbsync.__file__).resolve().parent
    return (package_dir / "templates", package_dir.parent / "templates")


def _builtin_path(name: str) -> Path:
    file_name = BUILTIN_TEMPLATES.get(name)
    if file_name is None:
        known = ", ".join(sorted(BUILTIN_TEMPLATES))
        raise TemplateError(name, None, f"unknown builtin template (expected one of {known})")
    dirs = builtin_template_dirs()
    for directory in dirs:
        candidate = directory / file_name
        if candidate.is_file():
            return candidate
    looked = " and ".join(str(d) for d in dirs)
    raise TemplateError(name, None, f"{file_name} is not installed (looked in {looked})")


def _read(name: str, path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise TemplateError(name, None, f"no such file: {path}") from exc
    except UnicodeDecodeError as exc:
        raise TemplateError(name, None, f"{path} is not UTF-8 text ({exc.reason})") from exc
    except OSError as exc:
        raise TemplateError(name, None, f"cannot read {path}: {exc.strerror or exc}") from exc


def _compile(name: str, path: Path, source: str) -> jinja2.Template:
    try:
        code = ENVIRONMENT.compile(source, name=name, filename=str(path))
    except jinja2.TemplateSyntaxError as exc:
        raise TemplateError(name, exc.lineno, exc.message or "syntax error") from exc
    return ENVIRONMENT.template_class.from_code(
        ENVIRONMENT, code, ENVIRONMENT.make_globals(None), None
    )


def load_template(target: TargetConfig) -> CompiledTemplate:
    """Find, read and compile the template `target.template` names.

    `builtin:nginx` / `builtin:haproxy` come from the package's `templates/` folder (or the
    repository's, in a source checkout); anything else is a path to a Jinja2 file.
    """
    name = target.template
    path = _builtin_path(name) if name.startswith(BUILTIN_PREFIX) else Path(name)
    source = _read(name, path)
    return CompiledTemplate(name=name, path=path, template=_compile(name, path, source))


def _template_line(tb: TracebackType | None, filename: str | None) -> int | None:
    """The innermost line of the template in a (Jinja-rewritten) traceback."""
    line = None
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == filename:
            line = tb.tb_lineno
        tb = tb.tb_next
    return line


def _describe(exc: Exception) -> str:
    if isinstance(exc, jinja2.exceptions.SecurityError):
        return f"refused by the sandbox: {exc}"
    if isinstance(exc, jinja2.TemplateError | UnsafeValueError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


def render(
    template: CompiledTemplate,
    model: RoutingModel,
    target: TargetConfig,
    *,
    slots: Mapping[str, Sequence[Any]] | None = None,
    fragments: FragmentCache | None = None,
    left_out: list[str] | None = None,
) -> str:
    """Render `model` for `target`; the text always ends with a newline.

    The context is SPEC §3a: `target`, `vars`, `hosts`, `upstreams`, `containers`; plus
    `slots` (upstream name -> server slots) for `reload: haproxy-runtime`.
    `fragments`: where `render_each` keeps block texts from one render to the next (one
    cache per target and template; see `FragmentCache`).
    `left_out`: gets one sentence per service a builtin template left out because a quoting
    filter refused one of its values (see the module's docstring).
    """
    return _render_text(template, model, target, slots, fragments, left_out, as_bytes=False)


def render_bytes(
    template: CompiledTemplate,
    model: RoutingModel,
    target: TargetConfig,
    *,
    slots: Mapping[str, Sequence[Any]] | None = None,
    fragments: FragmentCache | None = None,
    left_out: list[str] | None = None,
) -> bytes:
    """`render(...)` as UTF-8 bytes, what the daemon writes.

    With `fragments` and a builtin template the file is assembled from the blocks' bytes in
    one join (see `FragmentCache.assemble`); a user template's text is encoded whole, as
    it may filter what `render_each` gives it.
    """
    if fragments is None or not template.is_builtin:
        return render(
            template, model, target, slots=slots, fragments=fragments, left_out=left_out
        ).encode()
    text = _render_text(template, model, target, slots, fragments, left_out, as_bytes=True)
    try:
        data = fragments.assemble(text)
    except ValueError as exc:
        raise TemplateError(template.name, None, str(exc)) from exc
    return data if data.endswith(b"\n") else data + b"\n"


def _render_text(
    template: CompiledTemplate,
    model: RoutingModel,
    target: TargetConfig,
    slots: Mapping[str, Sequence[Any]] | None,
    fragments: FragmentCache | None,
    left_out: list[str] | None,
    *,
    as_bytes: bool,
) -> str:
    if not template.is_builtin:
        return _render_once(template, model, target, slots, fragments, None, as_bytes=as_bytes)
    # Each attempt leaves out at least one host, route or upstream more, or raises.
    for _ in range(len(model.hosts) + len(model.upstreams) + 1):
        isolation = Isolation()
        text = _render_once(template, model, target, slots, fragments, isolation, as_bytes=as_bytes)
        if not isolation.failures:
            return text
        reduced = None if isolation.unplaced is not None else leave_out(model, isolation)
        if reduced is None:  # refused outside any host or upstream: not one service's doing
            first = isolation.unplaced or isolation.failures[0]
            raise TemplateError(template.name, None, str(first)) from first
        model, sentences = reduced
        if left_out is not None:
            left_out.extend(sentences)
    first = isolation.failures[0]
    raise TemplateError(template.name, None, str(first)) from first


def _render_once(
    template: CompiledTemplate,
    model: RoutingModel,
    target: TargetConfig,
    slots: Mapping[str, Sequence[Any]] | None,
    fragments: FragmentCache | None,
    isolation: Isolation | None,
    *,
    as_bytes: bool,
) -> str:
    context: dict[str, Any] = {
        "slots": slots,
        "target": target,
        "vars": target.vars,
        "hosts": model.hosts,
        "upstreams": model.upstreams,
        "containers": model.containers,
    }
    if fragments is not None:
        fragments.prepare(template, target, as_bytes=as_bytes)
    token = current_fragments.set(fragments)
    isolating = current_isolation.set(isolation)
    try:
        text = template.template.render(context)
    except Exception as exc:
        line = _template_line(exc.__traceback__, template.template.filename)
        raise TemplateError(template.name, line, _describe(exc)) from exc
    finally:
        current_isolation.reset(isolating)
        current_fragments.reset(token)
    if as_bytes:
        return text  # markers in it: render_bytes adds the newline to the bytes
    return text if text.endswith("\n") else text + "\n"
