"""Upstream names: derived from a group's host and path, or written from an `upstream` label.

Every name lbsync writes starts with `lbsync_` (SPEC §1). Derived names are unique among
themselves (a clash takes the full hash); an explicit name shared or contested by several
groups is settled here, with a warning for each group that falls back to its derived name.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable

from lbsync.model.groups import GroupKey, Member, group_label
from lbsync.model.types import Server, Service

__all__ = ["derived_upstream_name", "explicit_upstream_name", "name_upstreams"]

_SLUG_RE = re.compile(r"[^a-z0-9]+")
_SLUG_MAX = 40


def derived_upstream_name(host: str, path: str, *, full_hash: bool = False) -> str:
    """The upstream name of a group without an explicit `upstream` label.

    `lbsync_<slug>_<hash>`: slug is the host with a leading `*.` written as `wildcard_` and
    every run of characters outside `[a-z0-9]` replaced by one `_`, cut to 40 characters;
    hash is the first 8 hex digits of the SHA-1 of the UTF-8 bytes of host + path (for
    example `a.test` + `/api` hashes `a.test/api`). So `*.example.com` with `/` gives
    `lbsync_wildcard_example_com_` followed by 8 hex digits. Hosts never contain `/` and
    paths always start with it, so host + path is unambiguous.

    `full_hash`: all 40 hex digits, for groups whose 8-digit names clash: 32 bits are
    quickly searched for a host and path that give another group's name, 160 are not.
    """
    slug_source = "wildcard_" + host[2:] if host.startswith("*.") else host
    slug = _SLUG_RE.sub("_", slug_source)[:_SLUG_MAX]
    digest = hashlib.sha1((host + path).encode(), usedforsecurity=False).hexdigest()
    return f"lbsync_{slug}_{digest if full_hash else digest[:8]}"


def explicit_upstream_name(value: str) -> str:
    """The upstream name a group's `upstream` label value is written as: `lbsync_<value>`.

    Every name lbsync writes starts with `lbsync_` (SPEC §1), so `upstream=grafana` never
    meets (or captures the `proxy_pass http://grafana` of) the operator's own `grafana`.
    """
    return "lbsync_" + value


def _derived_names(keys: Iterable[GroupKey]) -> tuple[dict[GroupKey, str], bool]:
    """Each group's derived name, unique across `keys`; and whether any clashed.

    8 hex digits of a hash are few: a host and path that give another group's name are
    found in seconds. Groups whose names clash take the full hash instead (both of them, so
    the name depends on the set of groups, never on the order they came in).
    """
    names = {key: derived_upstream_name(*key) for key in keys}
    full: set[GroupKey] = set()
    while True:
        holders: dict[str, list[GroupKey]] = {}
        for key, name in names.items():
            holders.setdefault(name, []).append(key)
        clashing = [k for ks in holders.values() if len(ks) > 1 for k in ks if k not in full]
        if not clashing:
            return names, bool(full)
        for key in clashing:  # a full-hash name may still equal some short one: look again
            names[key] = derived_upstream_name(*key, full_hash=True)
            full.add(key)


def name_upstreams(
    keys: list[GroupKey],
    groups: dict[GroupKey, list[Member]],
    chosen: dict[GroupKey, tuple[Service, tuple[Server, ...]]],
    warnings: list[str],
) -> tuple[dict[GroupKey, str], bool]:
    """Each group's upstream name, unique across groups; and whether derived names clashed.

    An explicit value is written as `lbsync_<value>` (`explicit_upstream_name`). One claimed
    by several groups goes to the first group by (host, path); a later group shares it when
    it has exactly the same members (the same services of the same containers: typically
    one service listing several hosts), else it falls back to its derived name with a
    warning. Names are compared ignoring case. An explicit name equal to the derived name
    of another group (used or not) falls back too, so a label can never pick the name of a
    group it does not belong to; derived names are unique among themselves (see
    `_derived_names`), so no fallback meets another group's name either.
    """
    derived, clashed = _derived_names(keys)
    # Derived names are lowercase: comparing an explicit name folded finds them.
    derived_of = {name: key for key, name in derived.items()}
    names: dict[GroupKey, str] = {}
    # Names are compared ignoring case: nginx does (`App` and `app` are one upstream).
    owners: dict[str, tuple[GroupKey, frozenset[tuple[str, str]], str]] = {}
    for key in keys:
        value = chosen[key][0].upstream
        if value is None:
            names[key] = derived[key]
            continue
        explicit = explicit_upstream_name(value)
        folded = explicit.lower()
        other = derived_of.get(folded)
        if other is not None and other != key:
            names[key] = derived[key]
            warnings.append(
                f"group {group_label(key)}: upstream name {explicit!r} is the derived name of "
                f"group {group_label(other)}; using {names[key]!r}"
            )
            continue
        members = frozenset((m[1], m[2]) for m in groups[key])
        owner = owners.get(folded)
        if owner is None:
            owners[folded] = (key, members, explicit)
            names[key] = explicit
        elif owner[1] == members and owner[2] == explicit:
            names[key] = explicit
        else:
            names[key] = derived[key]
            warnings.append(
                f"group {group_label(key)}: upstream name {explicit!r} is already used by "
                f"group {group_label(owner[0])}; using {names[key]!r}"
            )
    return names, clashed
