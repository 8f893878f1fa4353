"""The one Jinja2 environment every template is compiled in: sandboxed, with lbsync's filters.

SPEC §3a promises users its settings (strict undefined names, no autoescape, trailing
newline kept, trimmed blocks) and its filters: `nginx_quote`, `haproxy_quote`,
`render_each`, `longest`, `match_order` and `with_slots`.
"""

from __future__ import annotations

import operator
from collections.abc import Iterable
from pathlib import PurePath
from typing import Any

import jinja2
import jinja2.sandbox

from lbsync.model.slots import with_slots
from lbsync.model.types import Host
from lbsync.render.fragments import render_each
from lbsync.render.quoting import haproxy_quote, nginx_quote

__all__ = ["ENVIRONMENT", "longest", "match_order"]


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
ENVIRONMENT = _make_environment()
