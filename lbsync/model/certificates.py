"""Which file certificate a host gets (SPEC §8, "Which certificate a host gets, first match
wins"): pure functions over the catalogue `lbsync.state.cert_folder.read_cert_folder` returns.

The ACME step of that order is not here: it comes after every file certificate and belongs to
the ACME issue.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from datetime import datetime

from lbsync.state.certificate import CertificateInfo

__all__ = ["DEFAULT_CERT_NAME", "CertificateInfo", "choose_certificate", "covers", "parent_domains"]

# nginx-proxy's name for the certificate that answers TLS for unknown names; never a host's.
DEFAULT_CERT_NAME = "default"


def covers(san_names: Iterable[str], host: str) -> bool:
    """True when a certificate with these SAN DNS names is valid for `host` (RFC 6125 §6.4).

    Names compare case-insensitively. A wildcard SAN is honoured only as the whole left-most
    label (`*.example.com`): it covers exactly one label in its place, so `a.example.com` but
    neither `a.b.example.com` nor `example.com`; partial wildcards (`f*.example.com`) cover
    nothing but their own literal name. A wildcard host (`*.example.com`, which the proxy serves
    for every name below it) is covered only by that exact wildcard among the SANs: a narrower
    name would leave most of its names without a valid certificate.
    """
    host = host.lower().rstrip(".")
    names = {name.lower().rstrip(".") for name in san_names}
    if host in names:
        return True
    if host.startswith("*.") or "." not in host:
        return False
    first, rest = host.split(".", 1)
    return bool(first) and f"*.{rest}" in names


def parent_domains(host: str) -> Iterator[str]:
    """Every parent domain of `host`, closest first: `a.b.example.com` -> `b.example.com`,
    `example.com`, `com`. A wildcard host's parents start below its `*.` label."""
    labels = host.lower().rstrip(".").split(".")
    for start in range(1, len(labels)):
        yield ".".join(labels[start:])


def choose_certificate(
    host: str,
    cert_label: str | None,
    catalogue: Mapping[str, CertificateInfo],
    now: datetime,
) -> CertificateInfo | None:
    """The file certificate `host` gets, first match wins, or None (the host stays on HTTP).

    1. `cert_label` (the `lbsync.cert` label, nginx-proxy's `CERT_NAME`) when that name is in the
       catalogue: taken whatever names its SANs hold, as nginx-proxy does. The operator named
       it on purpose; checking its SANs here would silently undo the choice. A name not in the
       catalogue, or one not valid `now`, falls through to the steps below, as CERT_NAME does
       for a missing file.
    2. `<host>.crt`: the file named after the host, likewise taken whatever its SANs say.
    3. `<parent>.crt` for each parent domain, closest first, only when its SANs cover the host
       (`covers`): a parent's file is often for that parent alone.

    Never a certificate outside its validity period at `now` (expired or not yet valid), and
    never `default.crt`, not even by label: it answers unknown names only. A wildcard host
    (`*.example.com`) takes, in steps 2 and 3, only a certificate whose SANs hold that exact
    wildcard; the label (step 1) still wins as given.
    """
    host = host.lower().rstrip(".")

    def usable(name: str) -> CertificateInfo | None:
        if name == DEFAULT_CERT_NAME:
            return None
        found = catalogue.get(name)
        if found is None or not found.is_valid_at(now):
            return None
        return found

    if cert_label:
        labelled = usable(cert_label)
        if labelled is not None:
            return labelled
    exact = usable(host)
    if exact is not None and (not host.startswith("*.") or covers(exact.san_names, host)):
        return exact
    for parent in parent_domains(host):
        candidate = usable(parent)
        if candidate is not None and covers(candidate.san_names, host):
            return candidate
    return None
