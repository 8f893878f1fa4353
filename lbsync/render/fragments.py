"""Block texts kept from one render to the next, by model object identity (`render_each`).

A pass after one container changed renders the blocks of what changed, not the whole file:
`render_each` (a filter) looks each item up in the `FragmentCache` of the render in
progress, and a builtin's blocks are joined as bytes once (`FragmentCache.assemble`).
"""

from __future__ import annotations

from collections.abc import Iterable
from contextvars import ContextVar
from itertools import compress
from operator import is_not
from typing import TYPE_CHECKING, Any

import jinja2

from lbsync.config.schema import TargetConfig
from lbsync.render.isolation import current_isolation, render_block

if TYPE_CHECKING:  # for its type only: templates.py renders with this cache
    from lbsync.render.templates import CompiledTemplate

__all__ = ["FragmentCache", "current_fragments", "render_each"]


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
        text = render_block(macro, item)
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
        isolation = current_isolation.get()
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
current_fragments: ContextVar[FragmentCache | None] = ContextVar("lbsync_fragments", default=None)


def render_each(items: Iterable[object], macro: jinja2.runtime.Macro) -> str:
    """`{{ upstreams | render_each(upstream_block) }}`: the macro's text for each item, joined.

    Same output as `{% for u in upstreams %}{{ upstream_block(u) }}{% endfor %}`; in the
    daemon each item's text is remembered by the item's identity, so a pass after one
    container changed renders one block, not all. The macro's text must depend only on its
    argument and on `target`, `vars` (constant for a target) - never on other variables.
    """
    if not isinstance(macro, jinja2.runtime.Macro):
        raise TypeError("render_each takes a macro defined in the template")
    cache = current_fragments.get()
    if cache is None:
        return "".join([render_block(macro, item) for item in items])
    return cache.join(items, macro)
