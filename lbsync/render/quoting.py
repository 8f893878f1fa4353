"""Quote untrusted values as exactly one token of nginx or HAProxy config syntax.

Both functions turn a value into text that the proxy's config tokenizer reads back as one
argument equal to the original value, byte for byte. A value they cannot represent that way
raises `UnsafeValueError` instead of being emitted subtly different.

nginx (ngx_conf_read_token): inside double quotes only `"` and `\\` are special to the
tokenizer, and the argument is unescaped with `\\"` -> `"`, `\\'` -> `'`, `\\\\` -> `\\`
(`\\t`, `\\r`, `\\n` become control characters; any other backslash pair is kept as is).
`;`, `{`, `}`, `#`, spaces and `'` are plain characters there. `$` is different: many
directives (`return`, `proxy_pass`, `add_header`, ...) expand `$name` even inside quotes and
nginx has no escape for it, so a `$` is refused. A token longer than nginx's 4096-byte
parse buffer is refused too ("too long parameter").

HAProxy (section 2.2 of its configuration manual): single quotes are strong quoting; nothing
inside them is interpreted (no backslash escapes, no `$VAR` expansion, no `#` comment).
Quoted and escaped pieces written back to back form one argument, so a `'` in the value is
written as `'\\''` (close, an escaped quote, reopen), as in a POSIX shell. An empty argument
marks the end of HAProxy's argument list (and is refused by many keywords), so an empty
value is refused.

Both syntaxes: NUL, CR and LF are refused; a value made only of characters that are plain
in both syntaxes is returned bare (`app.example.com`, `/api`, `lbsync_x_1a2b3c4d`).
"""

from __future__ import annotations

import re

__all__ = ["UnsafeValueError", "haproxy_quote", "nginx_quote"]

# Characters that are never special in a bare nginx or HAProxy word. Deliberately small.
_BARE = re.compile(r"[A-Za-z0-9._~%/:*@+=,\[\]-]+")
_NEVER = re.compile(r"[\x00\r\n]")
# nginx reads a config file through a 4096-byte buffer; a longer argument is rejected.
# Measured on nginx 1.22: 4094 bytes between double quotes pass, 4095 fail.
NGINX_MAX_TOKEN_BYTES = 4094


class UnsafeValueError(ValueError):
    """A value that cannot be written as one token of the target config syntax."""

    def __init__(self, value: object, syntax: str, reason: str) -> None:
        self.value = value
        self.syntax = syntax
        self.reason = reason
        shown = repr(value)
        if len(shown) > 80:
            shown = shown[:60] + f"... ({len(shown)} characters)"
        super().__init__(f"cannot quote {shown} for {syntax}: {reason}")


def _as_text(value: object, syntax: str) -> str:
    if value is None:
        raise UnsafeValueError(value, syntax, "None is not a value (a missing setting?)")
    text = value if isinstance(value, str) else str(value)
    bad = _NEVER.search(text)
    if bad is not None:
        names = {"\x00": "a NUL byte", "\r": "a carriage return", "\n": "a newline"}
        raise UnsafeValueError(value, syntax, f"it contains {names[bad.group()]}")
    return text


def nginx_quote(value: object) -> str:
    """Return `value` as one nginx config token (bare when plain, else double-quoted).

    Raises UnsafeValueError for None, NUL, CR, LF, `$` (no escape exists in nginx strings)
    and values longer than nginx's token buffer.
    """
    text = _as_text(value, "nginx")
    if "$" in text:
        raise UnsafeValueError(
            value, "nginx", "it contains '$', which nginx expands as a variable and cannot escape"
        )
    bare = _BARE.fullmatch(text) is not None
    inner = text if bare else text.replace("\\", "\\\\").replace('"', '\\"')
    if len(inner.encode("utf-8")) > NGINX_MAX_TOKEN_BYTES:
        raise UnsafeValueError(
            value, "nginx", f"it is longer than nginx's {NGINX_MAX_TOKEN_BYTES}-byte token limit"
        )
    return inner if bare else f'"{inner}"'


def haproxy_quote(value: object) -> str:
    """Return `value` as one HAProxy config argument (bare when plain, else single-quoted).

    Raises UnsafeValueError for None, the empty string, NUL, CR and LF.
    """
    text = _as_text(value, "haproxy")
    if not text:
        raise UnsafeValueError(value, "haproxy", "an empty argument ends HAProxy's argument list")
    if _BARE.fullmatch(text):
        return text
    return "'" + text.replace("'", "'\\''") + "'"
