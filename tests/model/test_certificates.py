"""Which file certificate a host gets (lbsync/model/certificates.py): pure table tests.

covers: SAN names against a host, RFC 6125 wildcards (one whole left-most label only), wildcard
hosts only by that exact wildcard. parent_domains: closest first. choose_certificate: SPEC §8's
order (label, `<host>.crt`, parents that cover the host), never outside the validity period,
never `default`.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from lbsync.model.certificates import CertificateInfo, choose_certificate, covers, parent_domains

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)

COVERS: dict[str, tuple[tuple[str, ...], str, bool]] = {
    "exact name": (("app.example.com",), "app.example.com", True),
    "exact name, case-insensitive SAN": (("App.Example.COM",), "app.example.com", True),
    "exact name, case-insensitive host": (("app.example.com",), "APP.example.com", True),
    "trailing dot on the host": (("app.example.com",), "app.example.com.", True),
    "another name": (("api.example.com",), "app.example.com", False),
    "no SANs": ((), "app.example.com", False),
    "wildcard covers one label": (("*.example.com",), "a.example.com", True),
    "wildcard, case-insensitive": (("*.EXAMPLE.com",), "A.example.com", True),
    "wildcard does not cover two labels": (("*.example.com",), "a.b.example.com", False),
    "wildcard does not cover the bare domain": (("*.example.com",), "example.com", False),
    "wildcard does not cover a sibling domain": (("*.example.com",), "a.example.org", False),
    "wildcard does not cover a suffix look-alike": (("*.example.com",), "a.badexample.com", False),
    "wildcard plus bare domain covers the bare domain": (
        ("*.example.com", "example.com"),
        "example.com",
        True,
    ),
    "deeper wildcard covers its level": (("*.b.example.com",), "a.b.example.com", True),
    "deeper wildcard does not cover above it": (("*.b.example.com",), "a.example.com", False),
    "partial wildcard covers nothing": (("a*.example.com",), "ab.example.com", False),
    "wildcard not left-most covers nothing": (("a.*.example.com",), "a.b.example.com", False),
    "single-label host by a wildcard": (("*.localhost",), "localhost", False),
    "wildcard over a single label": (("*.localhost",), "app.localhost", True),
    "single-label host, exact": (("localhost",), "localhost", True),
    "wildcard host by the exact wildcard": (("*.example.com",), "*.example.com", True),
    "wildcard host by the exact wildcard, case-insensitive": (
        ("*.Example.com",),
        "*.example.COM",
        True,
    ),
    "wildcard host not by a broader wildcard": (("*.com",), "*.example.com", False),
    "wildcard host not by a name below it": (("a.example.com",), "*.example.com", False),
    "wildcard host not by the bare domain": (("example.com",), "*.example.com", False),
    "wildcard host not by a deeper wildcard": (("*.a.example.com",), "*.example.com", False),
    "one of many SANs": (("x.org", "y.org", "app.example.com"), "app.example.com", True),
}


@pytest.mark.parametrize(("sans", "host", "expected"), COVERS.values(), ids=COVERS.keys())
def test_covers(sans: tuple[str, ...], host: str, expected: bool) -> None:
    assert covers(sans, host) is expected


PARENTS: dict[str, tuple[str, list[str]]] = {
    "three labels": ("a.b.example.com", ["b.example.com", "example.com", "com"]),
    "two labels": ("example.com", ["com"]),
    "one label": ("localhost", []),
    "wildcard host starts below the star": ("*.example.com", ["example.com", "com"]),
    "lowercased": ("A.Example.COM", ["example.com", "com"]),
}


@pytest.mark.parametrize(("host", "expected"), PARENTS.values(), ids=PARENTS.keys())
def test_parent_domains(host: str, expected: list[str]) -> None:
    assert list(parent_domains(host)) == expected


# --- choose_certificate -------------------------------------------------------------------


def cert(
    name: str,
    *sans: str,
    expired: bool = False,
    not_yet_valid: bool = False,
) -> CertificateInfo:
    """A catalogue entry named `name`, valid at NOW unless told otherwise."""
    not_before = NOW + timedelta(days=1) if not_yet_valid else NOW - timedelta(days=30)
    not_after = NOW - timedelta(seconds=1) if expired else NOW + timedelta(days=60)
    return CertificateInfo(
        name=name,
        san_names=tuple(sans),
        not_before=not_before,
        not_after=not_after,
        fingerprint=f"fp-{name}",
        subject=f"CN={name}",
        cert_path=Path(f"/certs/{name}.crt"),
        key_path=Path(f"/certs/{name}.key"),
    )


def catalogue(*certs: CertificateInfo) -> dict[str, CertificateInfo]:
    return {info.name: info for info in certs}


# case name -> (host, lbsync.cert label, catalogue, name of the expected certificate or None)
CHOOSE: dict[str, tuple[str, str | None, Mapping[str, CertificateInfo], str | None]] = {
    "empty catalogue": ("app.example.com", None, {}, None),
    "exact file": (
        "app.example.com",
        None,
        catalogue(cert("app.example.com", "app.example.com")),
        "app.example.com",
    ),
    "exact file wins over a covering parent": (
        "app.example.com",
        None,
        catalogue(cert("app.example.com", "app.example.com"), cert("example.com", "*.example.com")),
        "app.example.com",
    ),
    "exact file taken whatever its SANs (nginx-proxy)": (
        "app.example.com",
        None,
        catalogue(cert("app.example.com", "other.example.org")),
        "app.example.com",
    ),
    "exact file for an upper-case host": (
        "APP.example.com",
        None,
        catalogue(cert("app.example.com", "app.example.com")),
        "app.example.com",
    ),
    "parent by its wildcard": (
        "app.example.com",
        None,
        catalogue(cert("example.com", "example.com", "*.example.com")),
        "example.com",
    ),
    "parent by its exact SAN": (
        "app.example.com",
        None,
        catalogue(cert("example.com", "example.com", "app.example.com")),
        "example.com",
    ),
    "parent that does not cover the host is not taken": (
        "app.example.com",
        None,
        catalogue(cert("example.com", "example.com")),
        None,
    ),
    "grandparent's wildcard does not cover two labels down": (
        "a.b.example.com",
        None,
        catalogue(cert("example.com", "*.example.com")),
        None,
    ),
    "grandparent covering by an exact SAN": (
        "a.b.example.com",
        None,
        catalogue(cert("example.com", "*.example.com", "a.b.example.com")),
        "example.com",
    ),
    "closest parent first": (
        "a.b.example.com",
        None,
        catalogue(
            cert("example.com", "a.b.example.com"),
            cert("b.example.com", "*.b.example.com"),
        ),
        "b.example.com",
    ),
    "closest parent skipped when it does not cover": (
        "a.b.example.com",
        None,
        catalogue(
            cert("example.com", "a.b.example.com"),
            cert("b.example.com", "b.example.com"),
        ),
        "example.com",
    ),
    "a sibling's file is not a parent": (
        "app.example.com",
        None,
        catalogue(cert("api.example.com", "*.example.com")),
        None,
    ),
    "expired exact file falls through to a parent": (
        "app.example.com",
        None,
        catalogue(
            cert("app.example.com", "app.example.com", expired=True),
            cert("example.com", "*.example.com"),
        ),
        "example.com",
    ),
    "expired exact file and nothing else": (
        "app.example.com",
        None,
        catalogue(cert("app.example.com", "app.example.com", expired=True)),
        None,
    ),
    "not yet valid exact file is not taken": (
        "app.example.com",
        None,
        catalogue(cert("app.example.com", "app.example.com", not_yet_valid=True)),
        None,
    ),
    "expired parent is not taken": (
        "app.example.com",
        None,
        catalogue(cert("example.com", "*.example.com", expired=True)),
        None,
    ),
    "not yet valid parent is not taken": (
        "app.example.com",
        None,
        catalogue(cert("example.com", "*.example.com", not_yet_valid=True)),
        None,
    ),
    "label wins over the exact file": (
        "app.example.com",
        "shared",
        catalogue(cert("shared", "app.example.com"), cert("app.example.com", "app.example.com")),
        "shared",
    ),
    "label taken whatever its SANs (CERT_NAME)": (
        "app.example.com",
        "shared",
        catalogue(cert("shared", "other.example.org"), cert("app.example.com", "app.example.com")),
        "shared",
    ),
    "label not in the catalogue falls through to the exact file": (
        "app.example.com",
        "missing",
        catalogue(cert("app.example.com", "app.example.com")),
        "app.example.com",
    ),
    "label not in the catalogue and nothing else": (
        "app.example.com",
        "missing",
        catalogue(cert("example.com", "example.com")),
        None,
    ),
    "expired label falls through": (
        "app.example.com",
        "shared",
        catalogue(
            cert("shared", "app.example.com", expired=True),
            cert("example.com", "*.example.com"),
        ),
        "example.com",
    ),
    "not yet valid label falls through": (
        "app.example.com",
        "shared",
        catalogue(cert("shared", "app.example.com", not_yet_valid=True)),
        None,
    ),
    "empty label is no label": (
        "app.example.com",
        "",
        catalogue(cert("app.example.com", "app.example.com")),
        "app.example.com",
    ),
    "default is never chosen by SANs": (
        "app.example.com",
        None,
        catalogue(cert("default", "app.example.com", "*.example.com")),
        None,
    ),
    "default is never chosen by label": (
        "app.example.com",
        "default",
        catalogue(cert("default", "app.example.com")),
        None,
    ),
    "a host named default does not get default.crt": (
        "default",
        None,
        catalogue(cert("default", "default")),
        None,
    ),
    "wildcard host by its exact file holding the wildcard": (
        "*.example.com",
        None,
        catalogue(cert("*.example.com", "*.example.com")),
        "*.example.com",
    ),
    "wildcard host not by an exact file without the wildcard": (
        "*.example.com",
        None,
        catalogue(cert("*.example.com", "example.com")),
        None,
    ),
    "wildcard host by its parent holding the wildcard": (
        "*.example.com",
        None,
        catalogue(cert("example.com", "example.com", "*.example.com")),
        "example.com",
    ),
    "wildcard host not by a parent with names only": (
        "*.example.com",
        None,
        catalogue(cert("example.com", "example.com", "a.example.com")),
        None,
    ),
    "wildcard host not by a broader wildcard": (
        "*.example.com",
        None,
        catalogue(cert("com", "*.com")),
        None,
    ),
    "wildcard host by label whatever its SANs": (
        "*.example.com",
        "shared",
        catalogue(cert("shared", "example.com")),
        "shared",
    ),
    "single-label host by its exact file": (
        "localhost",
        None,
        catalogue(cert("localhost", "localhost")),
        "localhost",
    ),
}


@pytest.mark.parametrize(("host", "label", "certs", "expected"), CHOOSE.values(), ids=CHOOSE.keys())
def test_choose_certificate(
    host: str,
    label: str | None,
    certs: Mapping[str, CertificateInfo],
    expected: str | None,
) -> None:
    chosen = choose_certificate(host, label, certs, NOW)
    assert (chosen.name if chosen is not None else None) == expected


VALIDITY_EDGES: dict[str, tuple[timedelta, bool]] = {
    "at not_before": (timedelta(0), True),
    "a second before not_before": (timedelta(seconds=-1), False),
    "at not_after": (timedelta(days=10), True),
    "a second after not_after": (timedelta(days=10, seconds=1), False),
}


@pytest.mark.parametrize(("offset", "chosen"), VALIDITY_EDGES.values(), ids=VALIDITY_EDGES.keys())
def test_validity_period_edges(offset: timedelta, chosen: bool) -> None:
    info = CertificateInfo(
        name="app.example.com",
        san_names=("app.example.com",),
        not_before=NOW,
        not_after=NOW + timedelta(days=10),
        fingerprint="fp",
        subject="CN=app.example.com",
        cert_path=Path("/certs/app.example.com.crt"),
        key_path=Path("/certs/app.example.com.key"),
    )
    result = choose_certificate("app.example.com", None, {info.name: info}, NOW + offset)
    assert (result is info) is chosen


def test_choosing_does_not_import_cryptography() -> None:
    # Only the folder reader needs it; lbsync without `tls` must not load it (issue #20).
    import subprocess
    import sys

    probe = (
        "import sys, lbsync.model.certificates, lbsync.cli.main, lbsync.daemon.daemon; "
        "print('cryptography' in sys.modules)"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.strip() == "False"
