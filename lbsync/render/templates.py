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
"""

from __future__ import annotations

import operator
from collections.abc import Iterable, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field, replace
from itertools import compress
from operator import is_not
from pathlib import Path, PurePath
from types import TracebackType
from typing import Any, NamedTuple

import jinja2
import jinja2.sandbox

import lbsync
from lbsync.config.schema import TargetConfig
from lbsync.model.slots import with_slots
from lbsync.model.types import Host, Route, RoutingModel, Upstream
from lbsync.render.quoting import UnsafeValueError, haproxy_quote, nginx_quote

__all__ = [
    "BUILTIN_TEMPLATES",
    "CompiledTemplate",
    "FragmentCache",
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


class _Site:
    """One `render_each` call site: the items it rendered last and their blocks (texts, or
    their UTF-8 bytes when the cache assembles bytes).

    The joined text is not kept: it would be a second copy of the site's part of the file.
    """

    __slots__ = ("items", "texts")

    def __init__(self, items: tuple[object, ...], texts: list[Any]) -> None:
        self.items = items
        self.texts = texts


# Stands for a call site's blocks in the root text while a FragmentCache assembles bytes:
# NUL never reaches an output (the quoting filters refuse it; a builtin has none).
_MARK = "\x00"


class FragmentCache:
    """What `render_each` rendered in the last render, by model object identity.

    A daemon keeps one per target (`lbsync.model.builder.ModelBuilder` hands back the same objects
    for what did not change), so a pass renders only the blocks that changed. Per call site
    (macro name and call order) it keeps the last items and texts: the same tuple again
    costs nothing, a tuple of the same length is compared item by item in C, anything else
    is matched by identity. Memory stays one output's worth; the items are held, so an id
    is never mistaken for a new object's.
    """

    def __init__(self) -> None:
        self._sites: dict[tuple[str, int], _Site] = {}
        self._calls = 0
        self._made_by: tuple[object, object, bool] | None = None  # (template, target, bytes)
        self._as_bytes = False
        self._marked: list[_Site] = []  # this render's sites, in marker order
        self.rendered = 0  # blocks rendered (misses), for tests and benches
        self.reused = 0  # blocks whose text was reused (hits)

    def prepare(
        self, template: CompiledTemplate, target: TargetConfig, *, as_bytes: bool = False
    ) -> None:
        """Start a render; forget everything when the template or settings are new objects.

        `as_bytes`: keep each block as UTF-8 bytes and put a marker in the root text for
        each call site; `assemble` then builds the file's bytes in one join. Only for
        templates that pass `render_each`'s text on unchanged (the builtins): a filter
        applied to it would be applied to the marker instead.
        """
        made_by = self._made_by
        if (
            made_by is None
            or made_by[0] is not template
            or made_by[1] is not target
            or made_by[2] != as_bytes
        ):
            self._sites.clear()
            self._made_by = (template, target, as_bytes)
        self._as_bytes = as_bytes
        self._marked = []
        self._calls = 0

    def _block(self, macro: jinja2.runtime.Macro, item: object) -> Any:
        text = _render_block(macro, item)
        return text.encode() if self._as_bytes else text

    def _result(self, site: _Site) -> str:
        if self._as_bytes:
            self._marked.append(site)
            return f"{_MARK}{len(self._marked) - 1}{_MARK}"
        return "".join(site.texts)

    def assemble(self, text: str) -> bytes:
        """The root text of an `as_bytes` render with each marker replaced by its site's
        blocks: one join of bytes, not a join per site, one of the whole text and an
        encode (at 1,000 hosts each is a copy of the 0.7 MB file). ValueError when the
        markers did not come through unchanged."""
        parts = text.split(_MARK)
        marked = self._marked
        if len(parts) != 2 * len(marked) + 1:
            raise ValueError("render_each's output was changed by the template")
        pieces: list[bytes] = []
        for index, part in enumerate(parts):
            if index % 2 == 0:
                pieces.append(part.encode())
            elif part == str(index // 2):
                pieces.extend(marked[index // 2].texts)
            else:
                raise ValueError("render_each's output was changed by the template")
        return b"".join(pieces)

    def join(self, items: Iterable[object], macro: jinja2.runtime.Macro) -> str:
        isolation = _isolation.get()
        failed_before = -1 if isolation is None else len(isolation.failures)
        text = self._join(items, macro)
        if isolation is not None and len(isolation.failures) != failed_before:
            # A refused block must be rendered (and refused) again next time, not reused
            # as the empty text it stands for in this attempt.
            self._sites.pop((macro.name, self._calls - 1), None)
        return text

    def _join(self, items: Iterable[object], macro: jinja2.runtime.Macro) -> str:
        key = (macro.name, self._calls)
        self._calls += 1
        now = items if isinstance(items, tuple) else tuple(items)
        site = self._sites.get(key)
        if site is not None and now is site.items:
            self.reused += len(now)
            return self._result(site)
        if site is not None and len(now) == len(site.items):
            texts = site.texts
            moved = list(compress(range(len(now)), map(is_not, now, site.items)))
            for index in moved:
                texts[index] = self._block(macro, now[index])
            self.rendered += len(moved)
            self.reused += len(now) - len(moved)
            site.items = now
            return self._result(site)
        known = {} if site is None else dict(zip(map(id, site.items), site.texts, strict=True))
        texts = []
        for item in now:
            text = known.get(id(item))
            if text is None:
                text = self._block(macro, item)
                self.rendered += 1
            else:
                self.reused += 1
            texts.append(text)
        site = self._sites[key] = _Site(now, texts)
        return self._result(site)


# The cache of the render in progress: render_each is called from inside Jinja2.
_fragments: ContextVar[FragmentCache | None] = ContextVar("lbsync_fragments", default=None)


class _RouteKey(NamedTuple):
    host: str
    path: str


@dataclass(slots=True)
class _Isolation:
    """What one attempt at rendering a builtin template had refused, block by block."""

    failures: list[UnsafeValueError] = field(default_factory=list)
    hosts: dict[str, UnsafeValueError] = field(default_factory=dict)  # refused names
    routes: dict[_RouteKey, UnsafeValueError] = field(default_factory=dict)
    upstreams: dict[str, UnsafeValueError] = field(default_factory=dict)  # by name
    unplaced: UnsafeValueError | None = None  # refused in a block that is no host or upstream

    def refused(self, macro: jinja2.runtime.Macro, item: object, exc: UnsafeValueError) -> None:
        """Find what in `item` the filter refused: for a host, each of its routes alone,
        then its name with no routes; an upstream (or a block built on one) as a whole."""
        self.failures.append(exc)
        if isinstance(item, Host):
            if _refuses(macro, _CANARY_HOST):
                # Any host is refused (a setting the block uses): not this host's doing.
                self.unplaced = self.unplaced or exc
                return
            bad = [r for r in item.routes if _refuses(macro, Host(item.name, (r,)))]
            if not bad or _refuses(macro, Host(item.name, ())):
                self.hosts[item.name] = exc
            for route in bad:
                self.routes[_RouteKey(item.name, route.path)] = exc
            return
        upstream = item if isinstance(item, Upstream) else getattr(item, "upstream", None)
        if isinstance(upstream, Upstream):
            self.upstreams[upstream.name] = exc
        elif self.unplaced is None:
            self.unplaced = exc


# A host every template must accept: `.invalid` is reserved (RFC 2606), and no routes.
_CANARY_HOST = Host("lbsync.invalid", ())

# Set while a builtin template renders: `render_each` leaves a refused block out.
_isolation: ContextVar[_Isolation | None] = ContextVar("lbsync_isolation", default=None)


def _refuses(macro: jinja2.runtime.Macro, item: object) -> bool:
    try:
        str(macro(item))
    except UnsafeValueError:
        return True
    return False


def _render_block(macro: jinja2.runtime.Macro, item: object) -> str:
    """One block's text; while a builtin renders, "" (and the refusal noted) when a quoting
    filter refuses a value in it."""
    isolation = _isolation.get()
    if isolation is None:
        return str(macro(item))
    try:
        return str(macro(item))
    except UnsafeValueError as exc:
        isolation.refused(macro, item, exc)
        return ""


def render_each(items: Iterable[object], macro: jinja2.runtime.Macro) -> str:
    """`{{ upstreams | render_each(upstream_block) }}`: the macro's text for each item, joined.

    Same output as `{% for u in upstreams %}{{ upstream_block(u) }}{% endfor %}`; in the
    daemon each item's text is remembered by the item's identity, so a pass after one
    container changed renders one block, not all. The macro's text must depend only on its
    argument and on `target`, `vars` (constant for a target) - never on other variables.
    """
    if not isinstance(macro, jinja2.runtime.Macro):
        raise TypeError("render_each takes a macro defined in the template")
    cache = _fragments.get()
    if cache is None:
        return "".join([_render_block(macro, item) for item in items])
    return cache.join(items, macro)


def longest(items: Iterable[object], attribute: str | None = None) -> int:
    """`{{ hosts | longest("name") }}`: the length of the longest item (or attribute), 0 if none.

    `hosts | map(attribute="name") | map("length") | max` says the same, one Jinja2 call per
    item: at 1,000 hosts that alone was most of a pass's render.
    """
    values = items if attribute is None else map(operator.attrgetter(attribute), items)
    return max(map(len, values), default=0)  # type: ignore[arg-type]


def match_order(hosts: Iterable[Host]) -> list[Host]:
    """`{{ hosts | match_order }}`: the order a proxy that tries hosts one by one must try
    them in: exact names first (as given), then wildcards (`*.example.com`), longest first
    (names of one length as given). builtin:haproxy's frontend rules come in this order."""
    exact = [h for h in hosts if not h.name.startswith("*.")]
    wildcards = [h for h in hosts if h.name.startswith("*.")]
    wildcards.sort(key=lambda h: -len(h.name))  # stable: equal lengths keep their order
    return exact + wildcards


class _TemplateSandbox(jinja2.sandbox.SandboxedEnvironment):
    """Jinja2's sandbox (SPEC §3a): lbsync holds the Docker socket, so a template must not
    reach Python (`cycler.__init__.__globals__.os` is refused). Not the immutable variant: the
    model is frozen dataclasses already, and it would also refuse a template's own lists.

    Paths in the context (`target.output`, ...) are pure as well: `target.output.name` reads
    fine, but nothing that opens, writes or lists a file (`write_text`, `unlink`, `glob`):
    Jinja2's sandbox would let a template call those public methods.

    The sandbox's checks cost more than the rest of a render (an attribute: a dozen
    isinstance calls), so the verdicts that depend only on the object's type and the
    attribute's name are remembered (below), and a macro, always safe to call, is called
    without asking.
    """

    def getattr(self, obj: Any, attribute: str) -> Any:
        if attribute in _SAFE_ATTRIBUTES.get(type(obj), _NONE):
            try:
                return getattr(obj, attribute)
            except AttributeError:
                pass  # not on this object after all: the sandbox's own path decides
        return super().getattr(obj, attribute)

    def is_safe_attribute(self, obj: Any, attr: str, value: Any) -> bool:
        if isinstance(obj, PurePath) and not hasattr(PurePath, attr):
            return False
        if not super().is_safe_attribute(obj, attr, value):
            return False
        # Jinja2 decides by the name and isinstance checks on the object, never by its
        # value, except for str.format and format_map (wrapped before this is asked).
        if attr not in ("format", "format_map"):
            names = _SAFE_ATTRIBUTES.setdefault(type(obj), set())
            if len(names) < _SAFE_NAMES_MAX:
                names.add(attr)
        return True

    def call(
        __self,  # Jinja2's own signature: a keyword argument may be called `self`
        __context: jinja2.runtime.Context,
        __obj: Any,
        *args: Any,
        **kwargs: Any,
    ) -> Any:
        if type(__obj) is jinja2.runtime.Macro:  # the template's own: nothing to check
            return __context.call(__obj, *args, **kwargs)
        return super().call(__context, __obj, *args, **kwargs)


# type -> names of its attributes the sandbox allowed: a template reads the same few again
# and again. Bounded: the `attr` filter can make names out of label values.
_SAFE_ATTRIBUTES: dict[type, set[str]] = {}
_SAFE_NAMES_MAX = 256
_NONE: frozenset[str] = frozenset()


def _make_environment() -> _TemplateSandbox:
    env = _TemplateSandbox(
        undefined=jinja2.StrictUndefined,
        autoescape=False,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        auto_reload=False,
    )
    env.filters["nginx_quote"] = nginx_quote
    env.filters["haproxy_quote"] = haproxy_quote
    env.filters["render_each"] = render_each
    env.filters["longest"] = longest
    env.filters["match_order"] = match_order
    env.filters["with_slots"] = with_slots
    return env


# One environment for every template: the settings and filters SPEC §3a promises users.
_ENV = _make_environment()


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
        code = _ENV.compile(source, name=name, filename=str(path))
    except jinja2.TemplateSyntaxError as exc:
        raise TemplateError(name, exc.lineno, exc.message or "syntax error") from exc
    return _ENV.template_class.from_code(_ENV, code, _ENV.make_globals(None), None)


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
        isolation = _Isolation()
        text = _render_once(template, model, target, slots, fragments, isolation, as_bytes=as_bytes)
        if not isolation.failures:
            return text
        reduced = None if isolation.unplaced is not None else _leave_out(model, isolation)
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
    isolation: _Isolation | None,
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
    token = _fragments.set(fragments)
    isolating = _isolation.set(isolation)
    try:
        text = template.template.render(context)
    except Exception as exc:
        line = _template_line(exc.__traceback__, template.template.filename)
        raise TemplateError(template.name, line, _describe(exc)) from exc
    finally:
        _isolation.reset(isolating)
        _fragments.reset(token)
    if as_bytes:
        return text  # markers in it: render_bytes adds the newline to the bytes
    return text if text.endswith("\n") else text + "\n"


_SHOWN = 60  # a value longer than this is cut in a sentence


def _shown(value: str) -> str:
    """A value for a one-line message: as is when plain, else quoted (newlines escaped);
    cut when long."""
    cut = value if len(value) <= _SHOWN else value[:_SHOWN]
    if cut.isascii() and cut.isprintable() and " " not in cut:
        return cut if cut is value else cut + "..."
    return repr(cut) if cut is value else repr(cut) + "..."


def _leave_out(model: RoutingModel, isolation: _Isolation) -> tuple[RoutingModel, list[str]] | None:
    """`model` without what `isolation` saw refused, and one sentence per service left out:
    a refused route (or every route of a refused host, or to a refused upstream) goes, a
    host left with no route goes, an upstream no route leads to any more goes. None when
    that leaves out nothing."""
    gone: dict[_RouteKey, UnsafeValueError] = {}
    hosts: list[Host] = []
    for host in model.hosts:
        kept: list[Route] = []
        for route in host.routes:
            key = _RouteKey(host.name, route.path)
            exc = (
                isolation.hosts.get(host.name)
                or isolation.routes.get(key)
                or isolation.upstreams.get(route.upstream.name)
            )
            if exc is None:
                kept.append(route)
            else:
                gone[key] = exc
        if len(kept) == len(host.routes):
            hosts.append(host)
        elif kept:
            hosts.append(Host(host.name, tuple(kept)))
    used_before = {route.upstream.name for host in model.hosts for route in host.routes}
    used = {route.upstream.name for host in hosts for route in host.routes}
    upstreams = tuple(
        u
        for u in model.upstreams
        if u.name not in isolation.upstreams and (u.name in used or u.name not in used_before)
    )
    if not gone and len(upstreams) == len(model.upstreams):
        return None
    sentences = []
    for (host_name, path), exc in sorted(gone.items()):
        containers = sorted(
            c.name
            for c in model.containers
            if any(host_name in s.hosts and s.path == path for s in c.services)
        )
        who = f" (container{'s' if len(containers) > 1 else ''} {', '.join(containers)})"
        who = who if containers else ""
        sentences.append(
            f"service {_shown(host_name + path)}{who} left out: {exc}; "
            "the rest of the file is written"
        )
    return replace(model, hosts=tuple(hosts), upstreams=upstreams), sentences
