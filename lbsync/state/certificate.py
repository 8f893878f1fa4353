"""What reading the certificate folder found about one certificate (`lbsync.state.cert_folder`):
narrow, frozen and free of I/O.

It lives in `state`, beside the reader that makes it, because the layers import downwards only:
`state.cert_folder` may not import `model`, while `model.certificates` (which chooses among these)
may import `state`. `lbsync.model.certificates` re-exports it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path


@dataclass(frozen=True, slots=True)
class CertificateInfo:
    """One file certificate whose key matched its leaf: what choosing, status and the store need.

    `name` is the name it was found under (`app.example.com` for `app.example.com.crt`,
    `default` for `default.crt`); `san_names` the DNS names it is valid for, lowercased (from the
    SubjectAlternativeName extension, or the subject's CN when the certificate has none);
    `not_before`/`not_after` timezone-aware UTC datetimes; `fingerprint` the SHA-256 of the
    leaf's DER, lowercase hex (it tells a replaced certificate from the one in use).
    """

    name: str
    san_names: tuple[str, ...]
    not_before: datetime
    not_after: datetime
    fingerprint: str
    subject: str
    cert_path: Path
    key_path: Path
    chain_length: int = 1

    def is_valid_at(self, now: datetime) -> bool:
        """True when `now` lies within the certificate's validity period (both ends included)."""
        return self.not_before <= now <= self.not_after
