"""Reads a certificate folder in nginx-proxy's layout (`<name>.crt` + `<name>.key`,
`default.crt`/`default.key`) into the catalogue `lbsync.model.certificates` chooses from.

I/O at the edge: every file is read here, once, bounded in size; a file that cannot be used is
skipped with one warning line naming it and why, and never stops the others. This is the only
module that imports `cryptography` (a well-kept library instead of our own ASN.1): nothing imports
it unless TLS is configured, so lbsync without `tls` neither loads nor pays for it.
"""

from __future__ import annotations

import hashlib
import os
import stat
from datetime import datetime
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes
from cryptography.x509.oid import ExtensionOID, NameOID

from lbsync.state.certificate import CertificateInfo

# A PEM chain of a few certificates is a few KiB; anything near this is not a certificate, and a
# bound keeps a huge (or endless) file from exhausting memory.
MAX_FILE_BYTES = 1024 * 1024
CERT_SUFFIX = ".crt"
KEY_SUFFIX = ".key"


class _Unusable(Exception):
    """Why one certificate is skipped; the message becomes its warning line."""


def read_cert_folder(path: Path, now: datetime) -> tuple[dict[str, CertificateInfo], list[str]]:
    """Every usable certificate in `path` by the name it was found under, and one warning per
    certificate skipped (it does not parse, its key is missing, unreadable or does not match its
    leaf, or it has expired at `now`). A certificate not yet valid is kept: choosing skips it
    until it is. Other files (`dhparam.pem`, `*.chain.pem`, a `.key` alone) are ignored.
    Never raises for what is in the folder; a folder that cannot be listed is one warning.
    """
    catalogue: dict[str, CertificateInfo] = {}
    warnings: list[str] = []
    try:
        entries = sorted(os.listdir(path))
    except OSError as error:
        return catalogue, [f"{path}: cannot list the certificate folder: {_reason(error)}"]
    for entry in entries:
        if not entry.endswith(CERT_SUFFIX) or entry == CERT_SUFFIX:
            continue
        cert_path = path / entry
        name = entry[: -len(CERT_SUFFIX)]
        try:
            if not _is_regular_file(cert_path):
                continue
            info = _read_certificate(name, cert_path, path / f"{name}{KEY_SUFFIX}")
            if info.not_after < now:
                raise _Unusable(f"expired on {info.not_after.isoformat()}")
        except _Unusable as why:
            warnings.append(f"{cert_path}: certificate skipped: {why}")
            continue
        # Hosts are lowercased before they are looked up, so names are too; of two files
        # whose names differ only in case, the first (sorted) is kept.
        key = name.lower()
        if key in catalogue:
            warnings.append(
                f"{cert_path}: certificate skipped: {catalogue[key].name}.crt has the same "
                "name (names are not case-sensitive)"
            )
            continue
        catalogue[key] = info
    return catalogue, warnings


def _read_certificate(name: str, cert_path: Path, key_path: Path) -> CertificateInfo:
    chain_bytes = _read_bounded(cert_path, "certificate")
    try:
        chain = x509.load_pem_x509_certificates(chain_bytes)
    except ValueError as error:
        raise _Unusable(f"does not parse as PEM certificates ({error})") from error
    leaf = chain[0]  # nginx and HAProxy both take the first certificate as the leaf
    if not _is_regular_file(key_path):
        raise _Unusable(f"its key {key_path} is missing or not a regular file")
    key_bytes = _read_bounded(key_path, "key")
    try:
        key = serialization.load_pem_private_key(key_bytes, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as error:
        # TypeError: an encrypted key; the proxy could not read it without a passphrase either.
        raise _Unusable(f"its key {key_path} does not load ({error})") from error
    try:
        matches = _public_der(key.public_key()) == _public_der(leaf.public_key())
    except (ValueError, UnsupportedAlgorithm) as error:
        raise _Unusable(f"its public key is not supported ({error})") from error
    if not matches:
        raise _Unusable(f"its key {key_path} does not match the certificate")
    return CertificateInfo(
        name=name,
        san_names=_dns_names(leaf),
        not_before=leaf.not_valid_before_utc,
        not_after=leaf.not_valid_after_utc,
        fingerprint=hashlib.sha256(leaf.public_bytes(serialization.Encoding.DER)).hexdigest(),
        subject=leaf.subject.rfc4514_string(),
        cert_path=cert_path,
        key_path=key_path,
        chain_length=len(chain),
    )


def _dns_names(leaf: x509.Certificate) -> tuple[str, ...]:
    """The leaf's SAN DNS names, lowercased. Only without a SAN extension at all, the subject's
    CN (old self-made certificates); clients ignore the CN whenever a SAN is present (RFC 6125)."""
    try:
        extension = leaf.extensions.get_extension_for_oid(ExtensionOID.SUBJECT_ALTERNATIVE_NAME)
    except x509.ExtensionNotFound:
        common_names = leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        return tuple(str(attribute.value).lower() for attribute in common_names)
    except ValueError as error:  # a malformed extension
        raise _Unusable(f"its extensions do not parse ({error})") from error
    san = extension.value
    if not isinstance(san, x509.SubjectAlternativeName):
        return ()
    return tuple(name.lower() for name in san.get_values_for_type(x509.DNSName))


def _public_der(public_key: PublicKeyTypes) -> bytes:
    return public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _is_regular_file(file_path: Path) -> bool:
    """Follows symlinks (acme-companion links `<host>.crt` to its own files); a FIFO or device
    is never opened, as reading one could block or never end."""
    try:
        return stat.S_ISREG(os.stat(file_path).st_mode)
    except OSError:
        return False


def _read_bounded(file_path: Path, what: str) -> bytes:
    try:
        with open(file_path, "rb") as handle:
            data = handle.read(MAX_FILE_BYTES + 1)
    except OSError as error:
        raise _Unusable(f"cannot read the {what} {file_path}: {_reason(error)}") from error
    if len(data) > MAX_FILE_BYTES:
        raise _Unusable(f"the {what} {file_path} is over {MAX_FILE_BYTES} bytes")
    return data


def _reason(error: OSError) -> str:
    return error.strerror or str(error)
