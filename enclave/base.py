"""One interface for a trusted execution environment: measure what serves, attest to it bound to a caller's nonce
and the server's TLS certificate, seal and unseal bytes to the enclave's identity, verify evidence against a policy.

report_data = SHA-256(TLS certificate DER || nonce): evidence answers one caller's challenge on one connection's
certificate, so it cannot be replayed later or relayed by a server holding another certificate.
"""

from __future__ import annotations

import hashlib
import json
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path


class EnclaveError(RuntimeError):
    """Sealing, unsealing or attestation failed (the message says what)."""


class EnclaveUnavailable(EnclaveError):
    """The backend cannot run here (e.g. no SGX): said when called, never faked."""


def report_data(tls_cert_der: bytes, nonce: bytes) -> bytes:
    if len(nonce) < 16:
        raise ValueError("the nonce must be at least 16 random bytes")
    return hashlib.sha256(tls_cert_der + nonce).digest()


def _hash_files(paths: list[Path]) -> str:
    h = hashlib.sha256()
    for p in sorted(paths):
        h.update(p.name.encode() + b"\0")
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


@dataclass(frozen=True)
class Measurement:
    """What serves: a digest per part and one over all of them."""

    code: str
    base_model: str
    adapter: str
    config: str

    @property
    def combined(self) -> str:
        return hashlib.sha256("|".join((self.code, self.base_model, self.adapter, self.config)).encode()).hexdigest()


def code_digest(packages: Sequence[str]) -> str:
    """SHA-256 over every .py file of the given installed packages: the host names what it runs (the inference
    service: server/inference/model_server.py SERVED_CODE)."""
    import importlib

    if not packages:
        raise EnclaveError("code_digest: name the packages the enclave runs (an empty list would measure no code)")
    files = []
    for mod in packages:
        root = Path(importlib.import_module(mod).__file__).parent
        files += [p for p in root.rglob("*.py") if "__pycache__" not in p.parts]
    h = hashlib.sha256()
    for p in sorted(set(files), key=lambda p: (p.parent.name, str(p))):
        h.update(p.name.encode() + b"\0" + p.read_bytes())
    return h.hexdigest()


def config_digest(config: dict) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()


def measure(code_dir: str | Path, base_model_dir: str | Path, adapter_dir: str | Path | None,
            serving_config: dict) -> Measurement:
    """SHA-256 over the serving code (every .py under code_dir), the base model's files, the adapter's files and the
    serving config (canonical JSON). Any changed byte in any of them changes the combined measurement."""
    code = sorted(Path(code_dir).rglob("*.py"))
    base = sorted(p for p in Path(base_model_dir).iterdir() if p.is_file())
    adapter = sorted(p for p in Path(adapter_dir).iterdir() if p.is_file()) if adapter_dir else []
    cfg = hashlib.sha256(json.dumps(serving_config, sort_keys=True, default=str).encode()).hexdigest()
    return Measurement(_hash_files(code), _hash_files(base), _hash_files(adapter) if adapter else "none", cfg)


@dataclass
class Evidence:
    backend: str  # "software" or "gramine-sgx"
    hardware: bool  # False: no hardware guarantee at all
    measurement: str  # software: Measurement.combined; SGX: MRENCLAVE (hex)
    report_data: str  # hex of SHA-256(cert || nonce)
    issued_at: float
    body: dict = field(default_factory=dict)  # backend-specific: signature and key, or the quote

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "Evidence":
        try:
            return cls(**json.loads(text))
        except (TypeError, ValueError) as err:
            raise EnclaveError(f"malformed evidence ({err})") from None


@dataclass(frozen=True)
class Policy:
    """What a verifier accepts."""

    measurements: tuple[str, ...]  # expected measurements (software: combined; SGX: MRENCLAVE hex)
    allow_software: bool = False  # software evidence proves nothing about hardware: refused unless allowed
    trusted_keys: tuple[str, ...] = ()  # software backend: Ed25519 public keys (hex) whose evidence is accepted
    mrsigners: tuple[str, ...] = ()  # SGX: accepted MRSIGNER values (empty: any)
    max_age_s: float = 300.0
    accept_unverified_quote_signature: bool = False  # SGX without Intel's quote verification: refused by default


@dataclass
class VerifyResult:
    ok: bool
    reason: str = ""


def check_common(ev: Evidence, policy: Policy, nonce: bytes, tls_cert_der: bytes) -> VerifyResult | None:
    """The checks every backend shares; None when they pass."""
    if ev.report_data != report_data(tls_cert_der, nonce).hex():
        return VerifyResult(False, "evidence is bound to another nonce or another TLS certificate (replayed or "
                                   "relayed)")
    if ev.measurement not in policy.measurements:
        return VerifyResult(False, f"measurement {ev.measurement[:16]}... is not one the policy expects (other "
                                   "code, model, adapter or config)")
    age = time.time() - ev.issued_at
    if age > policy.max_age_s or age < -60:
        return VerifyResult(False, f"evidence is {age:.0f} s old; the policy accepts {policy.max_age_s:.0f} s")
    return None


class Enclave(ABC):
    """A backend: software (tests, demos; no hardware guarantee) or gramine-sgx (inside an SGX enclave)."""

    name: str

    @abstractmethod
    def attest(self, nonce: bytes, tls_cert_der: bytes) -> Evidence: ...

    @abstractmethod
    def seal(self, data: bytes, label: str = "") -> bytes: ...

    @abstractmethod
    def unseal(self, blob: bytes, label: str = "") -> bytes: ...
