"""The enclave hook applied to the inference service: which backend, what it measures, and the adapter sealed at
rest (a .sealed file that only the serving enclave can open, unsealed in memory and never written out in clear).

Measurement = code (every .py of the packages the host names: the service passes SERVED_CODE) | base model (weights hash) | adapter (weights hash) |
config (model, LoRA, gate and serving sections). Sealing binds to code + base model, like SGX's MRENCLAVE policy
binds to the enclave build: the same build can open the adapter, another build or another identity cannot.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path

from ..common.config import SERVICE_SECTIONS, ServiceConfig
from .base import Enclave, EnclaveError, Measurement, code_digest, config_digest

SEALED_SUFFIX = ".sealed"


def seal_binding(base_sha256: str, code: Sequence[str]) -> str:
    return hashlib.sha256(f"{code_digest(code)}|{base_sha256}".encode()).hexdigest()


def serving_config_digest(cfg: ServiceConfig) -> str:
    return config_digest({k: cfg.model_dump(mode="json")[k] for k in SERVICE_SECTIONS})


def serving_measurement(cfg: ServiceConfig, base_sha256: str, adapter_sha256: str, code: Sequence[str]) -> Measurement:
    """What the service attests to; `code`: the packages it runs."""
    return Measurement(code_digest(code), base_sha256, adapter_sha256 or "none", serving_config_digest(cfg))


def make_enclave(cfg: ServiceConfig, base_sha256: str, code: Sequence[str]) -> Enclave | None:
    s = cfg.serving
    if s.enclave == "none":
        return None
    if s.enclave == "software":
        from .software import SoftwareEnclave

        return SoftwareEnclave(s.enclave_identity, measurement="", seal_binding=seal_binding(base_sha256, code))
    from .gramine import GramineEnclave

    return GramineEnclave(s.attestation_dir)


def is_sealed(path: str | Path) -> bool:
    return str(path).endswith(SEALED_SUFFIX)


def seal_adapter_file(enclave: Enclave, adapter_dir: str | Path, out: str | Path) -> Path:
    """Seal an adapter folder into one file (temporary name, then rename)."""
    from ..common.adapter import adapter_archive

    out = Path(out)
    if not is_sealed(out):
        raise EnclaveError(f"{out}: a sealed adapter's name ends in {SEALED_SUFFIX}")
    blob = enclave.seal(adapter_archive(adapter_dir), "adapter")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(blob)
    os.replace(tmp, out)
    return out


def unseal_adapter_file(enclave: Enclave | None, path: str | Path) -> bytes:
    if enclave is None:
        raise EnclaveError(f"serving.adapter {path} is sealed: set serving.enclave to the backend that sealed it")
    return enclave.unseal(Path(path).read_bytes(), "adapter")
