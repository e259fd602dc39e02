"""The Gramine-SGX backend: the manifest that runs the inference server in an SGX enclave, attestation through
Gramine's /dev/attestation files, and parsing of the SGX DCAP quote to check MRENCLAVE, MRSIGNER and report_data.

What runs here and what does not (this machine has no SGX):
- manifest generation, the /dev/attestation file protocol (against a folder laid out like it) and quote parsing
  and checking (against constructed quotes) are real and tested;
- inside a real enclave, `GramineEnclave(attestation_dir="/dev/attestation")` writes user_report_data and reads
  the quote Gramine produces; outside one, it raises EnclaveUnavailable when called;
- the quote's ECDSA signature chain (QE report, PCK certificate to Intel's root) is NOT verified here: that needs
  Intel's DCAP quote verification library and collateral. `verify_sgx` refuses a quote for that reason unless the
  policy explicitly sets accept_unverified_quote_signature;
- sealing uses Gramine's encrypted files: the adapter lives in an encrypted mount keyed to MRENCLAVE
  (`_sgx_mrenclave`), written and read as a normal path inside the enclave and unreadable outside it;
  `seal`/`unseal` on bytes raise EnclaveUnavailable.
"""

from __future__ import annotations

import struct
import time
from dataclasses import dataclass
from pathlib import Path

from .base import (Enclave, EnclaveError, EnclaveUnavailable, Evidence, Policy, VerifyResult, check_common,
                   report_data)

HEADER = 48
BODY = 384
MRENCLAVE_AT = HEADER + 64
MRSIGNER_AT = HEADER + 128
ISV_PROD_AT = HEADER + 256
REPORT_DATA_AT = HEADER + 320


@dataclass(frozen=True)
class SgxQuote:
    version: int
    tee_type: int
    mrenclave: str
    mrsigner: str
    isv_prod_id: int
    isv_svn: int
    report_data: bytes
    signature_len: int


def parse_quote(quote: bytes) -> SgxQuote:
    """An SGX DCAP quote (version 3, ECDSA-256): the 48-byte header, the 384-byte report body, the signature length."""
    if len(quote) < HEADER + BODY + 4:
        raise EnclaveError(f"an SGX quote is at least {HEADER + BODY + 4} bytes, got {len(quote)}")
    version, key_type, tee_type = struct.unpack_from("<HHI", quote, 0)
    if version not in (3, 4):
        raise EnclaveError(f"unsupported quote version {version} (expected 3 or 4)")
    if tee_type != 0:
        raise EnclaveError(f"tee_type {tee_type:#x} is not SGX")
    isv_prod_id, isv_svn = struct.unpack_from("<HH", quote, ISV_PROD_AT)
    (sig_len,) = struct.unpack_from("<I", quote, HEADER + BODY)
    if len(quote) < HEADER + BODY + 4 + sig_len:
        raise EnclaveError("the quote is shorter than its signature length says (truncated)")
    return SgxQuote(version, tee_type, quote[MRENCLAVE_AT: MRENCLAVE_AT + 32].hex(),
                    quote[MRSIGNER_AT: MRSIGNER_AT + 32].hex(), isv_prod_id, isv_svn,
                    quote[REPORT_DATA_AT: REPORT_DATA_AT + 64], sig_len)


def build_quote(mrenclave: bytes, mrsigner: bytes, report_data_64: bytes, isv_prod_id: int = 1, isv_svn: int = 1,
                signature: bytes = b"\x00" * 64) -> bytes:
    """A quote with this layout (for fixtures and tests; a real one comes from the quoting enclave)."""
    if len(mrenclave) != 32 or len(mrsigner) != 32 or len(report_data_64) != 64:
        raise ValueError("mrenclave and mrsigner are 32 bytes, report_data 64")
    header = struct.pack("<HHI", 3, 2, 0) + b"\x00" * (HEADER - 8)
    body = bytearray(BODY)
    body[64:96], body[128:160], body[320:384] = mrenclave, mrsigner, report_data_64
    struct.pack_into("<HH", body, 256, isv_prod_id, isv_svn)
    return header + bytes(body) + struct.pack("<I", len(signature)) + signature


class GramineEnclave(Enclave):
    """Inside Gramine-SGX: attestation through the /dev/attestation files."""

    name = "gramine-sgx"

    def __init__(self, attestation_dir: str | Path = "/dev/attestation") -> None:
        self.dir = Path(attestation_dir)

    def _require(self) -> None:
        if not (self.dir / "user_report_data").exists() or not (self.dir / "quote").exists():
            raise EnclaveUnavailable(f"{self.dir} has no user_report_data/quote: not running inside Gramine-SGX "
                                     "(start the server with gramine-sgx and the manifest from gramine_manifest)")

    def attest(self, nonce: bytes, tls_cert_der: bytes) -> Evidence:
        self._require()
        rd = report_data(tls_cert_der, nonce)
        (self.dir / "user_report_data").write_bytes(rd + b"\x00" * 32)
        quote = (self.dir / "quote").read_bytes()
        q = parse_quote(quote)
        if q.report_data[:32] != rd:
            raise EnclaveError("the quote does not carry the report data just written (stale /dev/attestation?)")
        return Evidence(self.name, True, q.mrenclave, rd.hex(), time.time(),
                        {"quote": quote.hex(), "mrsigner": q.mrsigner})

    def seal(self, data: bytes, label: str = "") -> bytes:
        raise EnclaveUnavailable("Gramine seals files, not bytes: keep the adapter in the manifest's encrypted mount")

    def unseal(self, blob: bytes, label: str = "") -> bytes:
        raise EnclaveUnavailable("Gramine unseals protected files transparently inside the enclave")


def verify_sgx(ev: Evidence, policy: Policy, nonce: bytes, tls_cert_der: bytes) -> VerifyResult:
    if ev.backend != "gramine-sgx":
        return VerifyResult(False, f"expected gramine-sgx evidence, got {ev.backend}")
    try:
        q = parse_quote(bytes.fromhex(ev.body.get("quote", "")))
    except (EnclaveError, ValueError) as err:
        return VerifyResult(False, f"unreadable quote ({err})")
    if q.mrenclave != ev.measurement or q.report_data[:32].hex() != ev.report_data:
        return VerifyResult(False, "the evidence fields do not match its quote")
    if policy.mrsigners and q.mrsigner not in policy.mrsigners:
        return VerifyResult(False, f"MRSIGNER {q.mrsigner[:16]}... is not one the policy accepts")
    if not policy.accept_unverified_quote_signature:
        return VerifyResult(False, "the quote's signature chain to Intel is not verified by this build (needs "
                                   "Intel's DCAP quote verification); refused by policy")
    return check_common(ev, policy, nonce, tls_cert_der) or VerifyResult(True)


def gramine_manifest(*, python: str, entrypoint_args: list[str], trusted: list[str], sealed_dir: str,
                     enclave_size: str = "8G", max_threads: int = 32, remote_attestation: str = "dcap") -> str:
    """A Gramine manifest (TOML) for the inference server: the code, the base model and the serving config as
    trusted files (hashed into MRENCLAVE at signing), the adapter in an encrypted mount at `sealed_dir` keyed to
    MRENCLAVE, DCAP remote attestation on, and the enclave size and threads from the caller's config."""
    def arr(items):
        return "[\n" + "".join(f'  "file:{i}",\n' for i in items) + "]"

    args = ", ".join(f'"{a}"' for a in [python, *entrypoint_args])
    return f"""# generated by fedfingpt.enclave.gramine.gramine_manifest
libos.entrypoint = "{python}"
loader.entrypoint.uri = "file:{{{{ gramine.libos }}}}"
loader.log_level = "error"
loader.argv = [{args}]
loader.env.LD_LIBRARY_PATH = "/lib:/usr/lib:/usr/lib/x86_64-linux-gnu"
loader.env.OMP_NUM_THREADS = "2"
loader.env.HF_HUB_OFFLINE = "1"

fs.mounts = [
  {{ uri = "file:{{{{ gramine.runtimedir() }}}}", path = "/lib" }},
  {{ type = "encrypted", path = "{sealed_dir}", uri = "file:{sealed_dir}", key_name = "_sgx_mrenclave" }},
]

sgx.enclave_size = "{enclave_size}"
sgx.max_threads = {max_threads}
sgx.remote_attestation = "{remote_attestation}"
sgx.debug = false
sgx.trusted_files = {arr(trusted)}
"""
