"""The software backend: Ed25519-signed evidence and AES-256-GCM sealing, with `cryptography`.

Honest about itself: its evidence says `hardware: false`, and a verifier refuses it unless the policy allows
software evidence and trusts its signing key. It proves which measurement a process holding the key reported; it
does not prove that the key sits in protected memory. Use it for tests, demos and as the reference of the protocol.

Identity: a 32-byte secret in `identity_file` (mode 0600). The signing key and the sealing key are derived from it
with HKDF; the sealing key also binds the measurement, so a blob sealed by one build of the service does not open
in another (like SGX's MRENCLAVE sealing policy).
"""

from __future__ import annotations

import os
import secrets
import time
from pathlib import Path

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from .base import Enclave, EnclaveError, Evidence, Policy, VerifyResult, check_common, report_data

MAGIC = b"FFGSEAL1"


def _derive(secret: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=b"fedfingpt-enclave", info=info).derive(secret)


def _signed_bytes(ev: Evidence) -> bytes:
    return "|".join((ev.backend, str(ev.hardware), ev.measurement, ev.report_data, repr(ev.issued_at))).encode()


class SoftwareEnclave(Enclave):
    name = "software"

    def __init__(self, identity_file: str | Path, measurement: str, seal_binding: str | None = None) -> None:
        """seal_binding: what sealed data is bound to (default: the measurement); the inference service binds
        to its code and base model, so the adapter it unseals may itself be part of the measurement."""
        path = Path(identity_file)
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(secrets.token_bytes(32))
        secret = path.read_bytes()
        if len(secret) != 32:
            raise EnclaveError(f"{path}: an enclave identity is 32 bytes, found {len(secret)}")
        self.measurement = measurement
        self._signer = Ed25519PrivateKey.from_private_bytes(_derive(secret, b"sign"))
        self._seal_key = _derive(secret, b"seal|" + (seal_binding or measurement).encode())

    @property
    def public_key(self) -> str:
        return self._signer.public_key().public_bytes(serialization.Encoding.Raw,
                                                      serialization.PublicFormat.Raw).hex()

    def attest(self, nonce: bytes, tls_cert_der: bytes) -> Evidence:
        ev = Evidence("software", False, self.measurement, report_data(tls_cert_der, nonce).hex(), time.time(),
                      {"public_key": self.public_key,
                       "note": "software evidence: no hardware protects the key or the measurement"})
        ev.body["signature"] = self._signer.sign(_signed_bytes(ev)).hex()
        return ev

    def seal(self, data: bytes, label: str = "") -> bytes:
        nonce = secrets.token_bytes(12)
        return MAGIC + nonce + AESGCM(self._seal_key).encrypt(nonce, data, label.encode())

    def unseal(self, blob: bytes, label: str = "") -> bytes:
        if not blob.startswith(MAGIC) or len(blob) < len(MAGIC) + 12 + 16:
            raise EnclaveError("not a sealed blob of this backend")
        nonce = blob[len(MAGIC): len(MAGIC) + 12]
        try:
            return AESGCM(self._seal_key).decrypt(nonce, blob[len(MAGIC) + 12:], label.encode())
        except InvalidTag:
            raise EnclaveError("cannot unseal: sealed by another enclave identity or measurement, or tampered "
                               "with") from None


def verify_software(ev: Evidence, policy: Policy, nonce: bytes, tls_cert_der: bytes) -> VerifyResult:
    if ev.backend != "software":
        return VerifyResult(False, f"expected software evidence, got {ev.backend}")
    if not policy.allow_software:
        return VerifyResult(False, "the policy refuses software evidence (it carries no hardware guarantee)")
    key = ev.body.get("public_key", "")
    if key not in policy.trusted_keys:
        return VerifyResult(False, "evidence signed by a key the policy does not trust")
    try:
        Ed25519PublicKey.from_public_bytes(bytes.fromhex(key)).verify(bytes.fromhex(ev.body.get("signature", "")),
                                                                       _signed_bytes(ev))
    except (InvalidSignature, ValueError):
        return VerifyResult(False, "the evidence signature does not verify (edited evidence)")
    return check_common(ev, policy, nonce, tls_cert_der) or VerifyResult(True)
