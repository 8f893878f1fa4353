"""Reading a certificate folder in nginx-proxy's layout (lbsync/state/cert_folder.py).

Certificates are made here with `cryptography`: a CA, leaves with SANs, a wildcard, a chain
file, an expired one, a mismatched key, a missing key, garbage, an oversized file. Each bad file
is skipped with one warning naming it, and never stops the others.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from lbsync.state.cert_folder import MAX_FILE_BYTES, read_cert_folder

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


@dataclass(frozen=True)
class Issued:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey


def make_ca() -> Issued:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "lbsync test CA")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - timedelta(days=365))
        .not_valid_after(NOW + timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return Issued(cert, key)


@pytest.fixture(scope="module")
def ca() -> Issued:
    return make_ca()


def issue(
    ca: Issued,
    *sans: str,
    common_name: str = "leaf",
    not_before: datetime = NOW - timedelta(days=1),
    not_after: datetime = NOW + timedelta(days=90),
    with_san_extension: bool = True,
) -> Issued:
    key = ec.generate_private_key(ec.SECP256R1())
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
    )
    if with_san_extension:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName(name) for name in sans]), critical=False
        )
    return Issued(builder.sign(ca.key, hashes.SHA256()), key)


def pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def write_pair(
    folder: Path, name: str, issued: Issued, *, chain: tuple[x509.Certificate, ...] = ()
) -> None:
    (folder / f"{name}.crt").write_bytes(pem(issued.cert) + b"".join(pem(c) for c in chain))
    (folder / f"{name}.key").write_bytes(key_pem(issued.key))


def test_reads_exact_wildcard_chain_and_default(tmp_path: Path, ca: Issued) -> None:
    app = issue(ca, "App.Example.com", "www.example.com", common_name="app.example.com")
    wildcard = issue(ca, "example.com", "*.example.com")
    default = issue(ca, "default.invalid")
    write_pair(tmp_path, "app.example.com", app, chain=(ca.cert,))
    write_pair(tmp_path, "example.com", wildcard)
    write_pair(tmp_path, "default", default)
    (tmp_path / "dhparam.pem").write_bytes(b"not a certificate, and not ours to read")
    (tmp_path / "orphan.key").write_bytes(key_pem(app.key))

    catalogue, warnings = read_cert_folder(tmp_path, NOW)

    assert warnings == []
    assert sorted(catalogue) == ["app.example.com", "default", "example.com"]
    info = catalogue["app.example.com"]
    assert info.name == "app.example.com"
    assert info.san_names == ("app.example.com", "www.example.com")
    assert info.chain_length == 2
    assert info.not_before == app.cert.not_valid_before_utc
    assert info.not_after == app.cert.not_valid_after_utc
    assert info.not_after.tzinfo is not None
    assert (
        info.fingerprint
        == hashlib.sha256(app.cert.public_bytes(serialization.Encoding.DER)).hexdigest()
    )
    assert info.subject == "CN=app.example.com"
    assert info.cert_path == tmp_path / "app.example.com.crt"
    assert info.key_path == tmp_path / "app.example.com.key"
    assert catalogue["example.com"].san_names == ("example.com", "*.example.com")
    assert catalogue["default"].san_names == ("default.invalid",)


def test_cn_only_without_a_san_extension(tmp_path: Path, ca: Issued) -> None:
    old = issue(ca, common_name="Old.Example.com", with_san_extension=False)
    write_pair(tmp_path, "old.example.com", old)
    catalogue, warnings = read_cert_folder(tmp_path, NOW)
    assert warnings == []
    assert catalogue["old.example.com"].san_names == ("old.example.com",)


def test_cn_ignored_when_a_san_extension_exists(tmp_path: Path, ca: Issued) -> None:
    leaf = issue(ca, "san.example.com", common_name="cn.example.com")
    write_pair(tmp_path, "san.example.com", leaf)
    catalogue, _ = read_cert_folder(tmp_path, NOW)
    assert catalogue["san.example.com"].san_names == ("san.example.com",)


def test_not_yet_valid_is_kept_for_choosing_to_skip(tmp_path: Path, ca: Issued) -> None:
    future = issue(ca, "soon.example.com", not_before=NOW + timedelta(days=1))
    write_pair(tmp_path, "soon.example.com", future)
    catalogue, warnings = read_cert_folder(tmp_path, NOW)
    assert warnings == []
    assert not catalogue["soon.example.com"].is_valid_at(NOW)


def bad_expired(folder: Path, ca: Issued) -> None:
    expired = issue(
        ca, "bad.example.com", not_before=NOW - timedelta(days=90), not_after=NOW - timedelta(1)
    )
    write_pair(folder, "bad.example.com", expired)


def bad_mismatched_key(folder: Path, ca: Issued) -> None:
    leaf = issue(ca, "bad.example.com")
    other = issue(ca, "bad.example.com")
    (folder / "bad.example.com.crt").write_bytes(pem(leaf.cert))
    (folder / "bad.example.com.key").write_bytes(key_pem(other.key))


def bad_missing_key(folder: Path, ca: Issued) -> None:
    (folder / "bad.example.com.crt").write_bytes(pem(issue(ca, "bad.example.com").cert))


def bad_garbage_certificate(folder: Path, ca: Issued) -> None:
    (folder / "bad.example.com.crt").write_bytes(b"-----BEGIN CERTIFICATE-----\nnope\n")
    (folder / "bad.example.com.key").write_bytes(key_pem(issue(ca, "x").key))


def bad_empty_certificate(folder: Path, ca: Issued) -> None:
    (folder / "bad.example.com.crt").write_bytes(b"")
    (folder / "bad.example.com.key").write_bytes(key_pem(issue(ca, "x").key))


def bad_garbage_key(folder: Path, ca: Issued) -> None:
    (folder / "bad.example.com.crt").write_bytes(pem(issue(ca, "bad.example.com").cert))
    (folder / "bad.example.com.key").write_bytes(b"\x00\xff garbage")


def bad_encrypted_key(folder: Path, ca: Issued) -> None:
    leaf = issue(ca, "bad.example.com")
    (folder / "bad.example.com.crt").write_bytes(pem(leaf.cert))
    (folder / "bad.example.com.key").write_bytes(
        leaf.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )


def bad_key_is_a_folder(folder: Path, ca: Issued) -> None:
    (folder / "bad.example.com.crt").write_bytes(pem(issue(ca, "bad.example.com").cert))
    (folder / "bad.example.com.key").mkdir()


def bad_oversized_certificate(folder: Path, ca: Issued) -> None:
    leaf = issue(ca, "bad.example.com")
    write_pair(folder, "bad.example.com", leaf)
    with open(folder / "bad.example.com.crt", "ab") as handle:
        handle.write(b"\n" * MAX_FILE_BYTES)


def bad_oversized_key(folder: Path, ca: Issued) -> None:
    leaf = issue(ca, "bad.example.com")
    write_pair(folder, "bad.example.com", leaf)
    with open(folder / "bad.example.com.key", "ab") as handle:
        handle.write(b"\n" * MAX_FILE_BYTES)


def bad_chain_with_the_leaf_last(folder: Path, ca: Issued) -> None:
    # The key is the leaf's, but the file starts with the CA: the proxy would serve the CA.
    leaf = issue(ca, "bad.example.com")
    (folder / "bad.example.com.crt").write_bytes(pem(ca.cert) + pem(leaf.cert))
    (folder / "bad.example.com.key").write_bytes(key_pem(leaf.key))


MakeBad = Callable[[Path, Issued], None]

# case name -> (how to make the bad file, words its warning must hold)
BAD: dict[str, tuple[MakeBad, str]] = {
    "expired": (bad_expired, "expired"),
    "mismatched key": (bad_mismatched_key, "does not match"),
    "missing key": (bad_missing_key, "missing"),
    "garbage certificate": (bad_garbage_certificate, "does not parse"),
    "empty certificate": (bad_empty_certificate, "does not parse"),
    "garbage key": (bad_garbage_key, "does not load"),
    "encrypted key": (bad_encrypted_key, "does not load"),
    "key is a folder": (bad_key_is_a_folder, "missing or not a regular file"),
    "oversized certificate": (bad_oversized_certificate, f"over {MAX_FILE_BYTES} bytes"),
    "oversized key": (bad_oversized_key, f"over {MAX_FILE_BYTES} bytes"),
    "chain with the leaf last": (bad_chain_with_the_leaf_last, "does not match"),
}


@pytest.mark.parametrize(("make_bad", "why"), BAD.values(), ids=BAD.keys())
def test_a_bad_certificate_is_skipped_with_one_warning(
    tmp_path: Path, ca: Issued, make_bad: MakeBad, why: str
) -> None:
    write_pair(tmp_path, "a.example.com", issue(ca, "a.example.com"))
    make_bad(tmp_path, ca)
    write_pair(tmp_path, "z.example.com", issue(ca, "z.example.com"))

    catalogue, warnings = read_cert_folder(tmp_path, NOW)

    assert sorted(catalogue) == ["a.example.com", "z.example.com"]
    assert len(warnings) == 1
    (warning,) = warnings
    assert "\n" not in warning
    assert warning.startswith(f"{tmp_path / 'bad.example.com.crt'}: certificate skipped: ")
    assert why in warning


def test_many_bad_files_one_warning_each(tmp_path: Path, ca: Issued) -> None:
    good = issue(ca, "good.example.com")
    write_pair(tmp_path, "good.example.com", good)
    for number, make_bad in enumerate(BAD.values()):
        sub = tmp_path / f"case{number}"
        sub.mkdir()
        make_bad[0](sub, ca)
        for produced in sub.iterdir():
            produced.rename(tmp_path / produced.name.replace("bad", f"bad{number}"))
        sub.rmdir()
    catalogue, warnings = read_cert_folder(tmp_path, NOW)
    assert sorted(catalogue) == ["good.example.com"]
    assert len(warnings) == len(BAD)


def test_symlinked_pair_is_followed(tmp_path: Path, ca: Issued) -> None:
    # acme-companion links <host>.crt and <host>.key to files in a folder of their own.
    leaf = issue(ca, "linked.example.com")
    store = tmp_path / "linked.example.com"
    store.mkdir()
    (store / "fullchain.pem").write_bytes(pem(leaf.cert) + pem(ca.cert))
    (store / "key.pem").write_bytes(key_pem(leaf.key))
    (tmp_path / "linked.example.com.crt").symlink_to(store / "fullchain.pem")
    (tmp_path / "linked.example.com.key").symlink_to(store / "key.pem")
    catalogue, warnings = read_cert_folder(tmp_path, NOW)
    assert warnings == []
    assert catalogue["linked.example.com"].chain_length == 2


def test_non_regular_crt_entries_are_ignored(tmp_path: Path, ca: Issued) -> None:
    (tmp_path / "dir.example.com.crt").mkdir()
    os.mkfifo(tmp_path / "fifo.example.com.crt")  # opening it for reading would block
    (tmp_path / "dangling.example.com.crt").symlink_to(tmp_path / "nowhere")
    (tmp_path / ".crt").write_bytes(pem(ca.cert))
    write_pair(tmp_path, "ok.example.com", issue(ca, "ok.example.com"))
    catalogue, warnings = read_cert_folder(tmp_path, NOW)
    assert sorted(catalogue) == ["ok.example.com"]
    assert warnings == []


def test_unreadable_certificate_is_one_warning(tmp_path: Path, ca: Issued) -> None:
    if os.geteuid() == 0:
        pytest.skip("root reads a 0000 file")
    write_pair(tmp_path, "locked.example.com", issue(ca, "locked.example.com"))
    (tmp_path / "locked.example.com.crt").chmod(0)
    catalogue, warnings = read_cert_folder(tmp_path, NOW)
    assert catalogue == {}
    assert len(warnings) == 1
    assert "cannot read the certificate" in warnings[0]


def test_missing_folder_is_one_warning(tmp_path: Path) -> None:
    catalogue, warnings = read_cert_folder(tmp_path / "absent", NOW)
    assert catalogue == {}
    assert len(warnings) == 1
    assert warnings[0].startswith(f"{tmp_path / 'absent'}: cannot list the certificate folder")


def test_empty_folder(tmp_path: Path) -> None:
    assert read_cert_folder(tmp_path, NOW) == ({}, [])


def test_rsa_key_matches_too(tmp_path: Path, ca: Issued) -> None:
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "rsa")]))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - timedelta(days=1))
        .not_valid_after(NOW + timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("rsa.example.com")]), False)
        .sign(ca.key, hashes.SHA256())
    )
    (tmp_path / "rsa.example.com.crt").write_bytes(pem(cert))
    (tmp_path / "rsa.example.com.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )
    catalogue, warnings = read_cert_folder(tmp_path, NOW)
    assert warnings == []
    assert catalogue["rsa.example.com"].san_names == ("rsa.example.com",)


def test_names_are_found_whatever_their_case(tmp_path: Path, ca: Issued) -> None:
    write_pair(tmp_path, "App.Example.com", issue(ca, "app.example.com"))
    write_pair(tmp_path, "app.example.com", issue(ca, "app.example.com"))
    catalogue, warnings = read_cert_folder(tmp_path, NOW)
    assert list(catalogue) == ["app.example.com"]
    assert catalogue["app.example.com"].name == "App.Example.com"  # sorted: upper case first
    assert len(warnings) == 1
    assert (
        "app.example.com.crt: certificate skipped: App.Example.com.crt has the same name"
        in (warnings[0])
    )
