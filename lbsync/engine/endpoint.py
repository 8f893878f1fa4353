"""Where the engine is and how to reach it, as the docker CLI would pick it."""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final
from urllib.parse import urlsplit

from lbsync.engine.errors import DockerError

DEFAULT_UNIX_SOCKET: Final = "/var/run/docker.sock"


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where the engine is and how to reach it."""

    url: str  # as configured, for messages: unix:///var/run/docker.sock, tcp://h:2376
    base_url: str  # what aiohttp requests go to
    unix_path: str | None = None
    ssl_context: ssl.SSLContext | None = None

    @property
    def is_unix(self) -> bool:
        return self.unix_path is not None


def resolve_endpoint(
    host: str | None,
    environ: Mapping[str, str],
    *,
    tls_ca: Path | None = None,
    tls_cert: Path | None = None,
    tls_key: Path | None = None,
) -> Endpoint:
    """The engine endpoint as the docker CLI would pick it.

    `host` (from the config file) wins over `DOCKER_HOST`; TLS is on for `https://`, for a
    configured client certificate, or when `DOCKER_TLS_VERIFY` is set, with certificates
    from `DOCKER_CERT_PATH` (default `~/.docker`) unless the config names them.
    """
    url = host or environ.get("DOCKER_HOST") or f"unix://{DEFAULT_UNIX_SOCKET}"
    parts = urlsplit(url)
    if parts.scheme == "unix":
        path = parts.path or DEFAULT_UNIX_SOCKET
        return Endpoint(url=url, base_url="http://docker", unix_path=path)
    if parts.scheme not in ("tcp", "http", "https"):
        raise DockerError(
            f"docker host {url!r}: unsupported scheme {parts.scheme!r}; "
            "use unix:///path, tcp://host:port or https://host:port"
        )
    if not parts.hostname:
        raise DockerError(f"docker host {url!r}: no host name in it")
    verify_env = environ.get("DOCKER_TLS_VERIFY", "") not in ("", "0")
    use_tls = parts.scheme == "https" or tls_cert is not None or verify_env
    default_port = 2376 if use_tls else 2375
    netloc = f"{parts.hostname}:{parts.port or default_port}"
    if ":" in parts.hostname:  # IPv6 literal
        netloc = f"[{parts.hostname}]:{parts.port or default_port}"
    if not use_tls:
        return Endpoint(url=url, base_url=f"http://{netloc}")
    cert_dir = Path(environ.get("DOCKER_CERT_PATH") or Path.home() / ".docker")
    ca = tls_ca or (cert_dir / "ca.pem")
    cert = tls_cert or (cert_dir / "cert.pem")
    key = tls_key or (cert_dir / "key.pem")
    try:
        context = ssl.create_default_context(cafile=str(ca) if ca.exists() else None)
        if cert.exists() and key.exists():
            context.load_cert_chain(str(cert), str(key))
        elif tls_cert is not None:
            raise DockerError(f"TLS client certificate {cert} or key {key} does not exist")
    except (OSError, ssl.SSLError) as exc:
        raise DockerError(f"cannot load TLS certificates for {url}: {exc}") from exc
    if not verify_env and parts.scheme != "https" and tls_ca is None:
        # Like the CLI's --tls without --tlsverify: encrypted, server not verified.
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return Endpoint(url=url, base_url=f"https://{netloc}", ssl_context=context)
