"""`python -m lbsync.healthcheck`: the container HEALTHCHECK, a GET of lbsync's own `/livez`.

Slim images have no curl or wget, so the image's HEALTHCHECK runs this module with the
image's own Python. It reads the same config `lbsync run` does (`$LBSYNC_CONFIG`, else
./lbsync.yaml, else built-in defaults) to find `server.listen`, so a changed port needs no
change to the HEALTHCHECK. A wildcard listen address (0.0.0.0, ::) is asked on loopback.
`$LBSYNC_HEALTHCHECK_URL` overrides the URL. A config that no longer validates (edited while
lbsync runs on the last good one) falls back to the default address.

Exit 0 when /livez answers 200, else 1 with one line on stderr (Docker keeps it in the
container's health log). Proxy variables (HTTP_PROXY, ...) are never used.
"""

from __future__ import annotations

import http.client
import os
import sys
from collections.abc import Mapping, Sequence
from urllib.parse import urlsplit

from lbsync.config.errors import ConfigError
from lbsync.config.load import load_config
from lbsync.config.schema import ServerConfig

URL_ENV_VAR = "LBSYNC_HEALTHCHECK_URL"
TIMEOUT = 3.0
_WILDCARDS = {"0.0.0.0": "127.0.0.1", "::": "::1", "*": "127.0.0.1", "": "127.0.0.1"}


def livez_url(environ: Mapping[str, str]) -> str:
    """The URL of /livez: `$LBSYNC_HEALTHCHECK_URL`, else from the config's `server.listen`."""
    override = environ.get(URL_ENV_VAR, "")
    if override:
        return override
    try:
        server = load_config(None, environ).server
    except ConfigError:
        server = ServerConfig()
    host = _WILDCARDS.get(server.host, server.host)
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{server.port}/livez"


def probe(url: str, timeout: float = TIMEOUT) -> str | None:
    """None when `url` answers 200, else why not."""
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        return f"{url}: only http://HOST:PORT/... URLs are supported"
    conn = http.client.HTTPConnection(parts.hostname, parts.port or 80, timeout=timeout)
    try:
        conn.request("GET", parts.path or "/", headers={"User-Agent": "lbsync-healthcheck"})
        response = conn.getresponse()
        body = response.read(200).decode("utf-8", "replace").strip()
    except (OSError, http.client.HTTPException) as exc:
        return f"{url}: {exc}"
    finally:
        conn.close()
    if response.status != 200:
        return f"{url}: HTTP {response.status} {body}".rstrip()
    return None


def main(argv: Sequence[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    url = args[0] if args else livez_url(os.environ)
    problem = probe(url)
    if problem is not None:
        print(f"lbsync-healthcheck: {problem}", file=sys.stderr)
        raise SystemExit(1)
    print(f"lbsync-healthcheck: {url}: ok")


if __name__ == "__main__":
    main()
