"""Host names as lbsync accepts them, and the `discovery.hosts` allowlist (SPEC §1, §3).

Pure functions: the label parser (`lbsync.model.labels`) and the config validator
(`lbsync.config.schema`) share one grammar, so a host the config allows is always one a label may
name, and the other way round.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

__all__ = ["MAX_HOST_LEN", "host_allowed", "is_valid_host"]

MAX_HOST_LEN = 253  # a DNS name's limit; a `*.` wildcard counts its two characters too

_DNS_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_HOST_RE = re.compile(rf"(?:\*\.)?{_DNS_LABEL}(?:\.{_DNS_LABEL})*")


def is_valid_host(host: str) -> bool:
    """A lowercase DNS name (labels of 1..63 `[a-z0-9-]`, no leading or trailing `-`, at
    most 253 characters), optionally starting with the `*.` wildcard (the 253 include it:
    `*.X` matches only names longer than X, so a longer one could match no DNS name)."""
    return len(host) <= MAX_HOST_LEN and host.isascii() and _HOST_RE.fullmatch(host) is not None


def host_allowed(host: str, allowlist: Iterable[str]) -> bool:
    """May a container claim `host` (valid, lowercase) under `allowlist` (`discovery.hosts`)?

    An exact entry allows that name only. A `*.example.com` entry allows every name that
    ends in `.example.com`, at any depth (`a.example.com`, `a.b.example.com`), and the
    wildcards inside it (`*.example.com` itself, `*.a.example.com`): the set of names it
    claims is then within the entry's. It does not allow `example.com` (list it too), as
    nginx's `*.example.com` does not match it, nor a wider wildcard like `*.com`.
    """
    for entry in allowlist:
        if entry.startswith("*."):
            if host.endswith(entry[1:]):
                return True
        elif host == entry:
            return True
    return False
