"""The enclave hook: measurement, the software backend (Ed25519 evidence, AES-GCM sealing), the Gramine-SGX
backend's manifest, /dev/attestation file protocol and quote checks (no SGX here: a fixture folder and
constructed quotes stand in, as the backend's docstring states)."""

import hashlib
import json
import secrets
import time
import tomllib

import pytest

from fedfingpt.enclave.base import EnclaveError, EnclaveUnavailable, Evidence, Policy, measure, report_data
from fedfingpt.enclave.gramine import GramineEnclave, build_quote, gramine_manifest, parse_quote, verify_sgx
from fedfingpt.enclave.software import SoftwareEnclave, _signed_bytes, verify_software

CERT = b"server-certificate-der-bytes"
OTHER_CERT = b"another-certificate-der-bytes"


def _tree(tmp_path):
    code, base, adapter = tmp_path / "code", tmp_path / "base", tmp_path / "adapter"
    for d, files in ((code, {"a.py": "x = 1\n", "sub/b.py": "y = 2\n"}), (base, {"model.safetensors": "W"}),
                     (adapter, {"adapter_model.safetensors": "A", "fedfingpt_manifest.json": "{}"})):
        for name, text in files.items():
            (d / name).parent.mkdir(parents=True, exist_ok=True)
            (d / name).write_text(text)
    return code, base, adapter


def test_measurement_changes_with_any_part(tmp_path):
    code, base, adapter = _tree(tmp_path)
    m0 = measure(code, base, adapter, {"port": 1})
    assert m0 == measure(code, base, adapter, {"port": 1})
    (adapter / "adapter_model.safetensors").write_text("B")
    m1 = measure(code, base, adapter, {"port": 1})
    (code / "sub" / "b.py").write_text("y = 3\n")
    m2 = measure(code, base, adapter, {"port": 1})
    m3 = measure(code, base, adapter, {"port": 2})
    assert len({m0.combined, m1.combined, m2.combined, m3.combined}) == 4
    assert m1.adapter != m0.adapter and m2.code != m1.code and m3.config != m2.config


def test_software_evidence_verifies_only_for_its_nonce_certificate_and_measurement(tmp_path):
    enc = SoftwareEnclave(tmp_path / "identity", "m" * 64)
    policy = Policy(measurements=("m" * 64,), allow_software=True, trusted_keys=(enc.public_key,))
    nonce = secrets.token_bytes(32)
    ev = Evidence.from_json(enc.attest(nonce, CERT).to_json())
    assert ev.hardware is False and "no hardware" in ev.body["note"]
    assert verify_software(ev, policy, nonce, CERT).ok
    assert "another nonce" in verify_software(ev, policy, secrets.token_bytes(32), CERT).reason  # replayed
    assert "another TLS certificate" in verify_software(ev, policy, nonce, OTHER_CERT).reason  # relayed
    other = SoftwareEnclave(tmp_path / "identity", "n" * 64)  # same key, another code/adapter measurement
    assert "not one the policy expects" in verify_software(other.attest(nonce, CERT), policy, nonce, CERT).reason
    assert "refuses software evidence" in verify_software(ev, Policy(("m" * 64,)), nonce, CERT).reason
    stranger = SoftwareEnclave(tmp_path / "identity2", "m" * 64)
    assert "does not trust" in verify_software(stranger.attest(nonce, CERT), policy, nonce, CERT).reason
    edited = Evidence.from_json(ev.to_json())
    edited.measurement = "m" * 63 + "n"
    policy2 = Policy(("m" * 63 + "n",), allow_software=True, trusted_keys=(enc.public_key,))
    assert "signature does not verify" in verify_software(edited, policy2, nonce, CERT).reason
    old = enc.attest(nonce, CERT)
    old.issued_at = time.time() - 3600
    old.body["signature"] = enc._signer.sign(_signed_bytes(old)).hex()  # validly signed, just old
    assert "old" in verify_software(old, policy, nonce, CERT).reason
    with pytest.raises(ValueError, match="at least 16"):
        report_data(CERT, b"short")


def test_sealing_is_bound_to_identity_and_measurement(tmp_path):
    enc = SoftwareEnclave(tmp_path / "identity", "m" * 64)
    blob = enc.seal(b"adapter weights", "adapter")
    assert b"adapter weights" not in blob and enc.unseal(blob, "adapter") == b"adapter weights"
    assert (tmp_path / "identity").stat().st_mode & 0o777 == 0o600
    for other in (SoftwareEnclave(tmp_path / "identity2", "m" * 64), SoftwareEnclave(tmp_path / "identity", "x" * 64)):
        with pytest.raises(EnclaveError, match="cannot unseal"):
            other.unseal(blob, "adapter")
    tampered = bytearray(blob)
    tampered[-1] ^= 1
    with pytest.raises(EnclaveError, match="tampered"):
        enc.unseal(bytes(tampered), "adapter")
    with pytest.raises(EnclaveError, match="cannot unseal"):
        enc.unseal(blob, "another label")
    (tmp_path / "bad").write_bytes(b"123")
    with pytest.raises(EnclaveError, match="32 bytes"):
        SoftwareEnclave(tmp_path / "bad", "m")


def _sgx_dir(tmp_path, mrenclave, mrsigner, rd):
    d = tmp_path / "attestation"
    d.mkdir()
    (d / "user_report_data").write_bytes(b"\x00" * 64)
    (d / "quote").write_bytes(build_quote(mrenclave, mrsigner, rd + b"\x00" * 32))
    return d


def test_gramine_attestation_file_protocol_and_quote_checks(tmp_path):
    mre, mrs = hashlib.sha256(b"enclave").digest(), hashlib.sha256(b"signer").digest()
    nonce = secrets.token_bytes(32)
    rd = report_data(CERT, nonce)
    d = _sgx_dir(tmp_path, mre, mrs, rd)  # stands in for /dev/attestation after Gramine wrote the quote
    ev = GramineEnclave(d).attest(nonce, CERT)
    assert (d / "user_report_data").read_bytes()[:32] == rd, "report data written where Gramine reads it"
    assert ev.hardware and ev.measurement == mre.hex()
    q = parse_quote(bytes.fromhex(ev.body["quote"]))
    assert q.mrsigner == mrs.hex() and q.version == 3 and q.report_data[:32] == rd
    strict = Policy((mre.hex(),), mrsigners=(mrs.hex(),))
    assert "not verified" in verify_sgx(ev, strict, nonce, CERT).reason  # no Intel verification here: refused
    lax = Policy((mre.hex(),), mrsigners=(mrs.hex(),), accept_unverified_quote_signature=True)
    assert verify_sgx(ev, lax, nonce, CERT).ok
    assert "another nonce" in verify_sgx(ev, lax, secrets.token_bytes(32), CERT).reason
    assert "MRSIGNER" in verify_sgx(ev, Policy((mre.hex(),), mrsigners=("00" * 32,),
                                               accept_unverified_quote_signature=True), nonce, CERT).reason
    assert "not one the policy expects" in verify_sgx(ev, Policy(("11" * 32,), accept_unverified_quote_signature=True),
                                                      nonce, CERT).reason
    with pytest.raises(EnclaveError, match="stale"):
        GramineEnclave(d).attest(secrets.token_bytes(32), CERT)  # the quote answers another challenge
    with pytest.raises(EnclaveError, match="truncated|at least"):
        parse_quote(build_quote(mre, mrs, rd + b"\x00" * 32)[:-10])


def test_gramine_backend_says_it_cannot_run_without_sgx(tmp_path):
    enc = GramineEnclave(tmp_path / "no-such-dir")
    with pytest.raises(EnclaveUnavailable, match="not running inside Gramine-SGX"):
        enc.attest(secrets.token_bytes(32), CERT)
    with pytest.raises(EnclaveUnavailable):
        enc.seal(b"x")


def test_gramine_manifest_content():
    text = gramine_manifest(python="/usr/bin/python3", entrypoint_args=["-m", "fedfingpt.cli", "serve", "serve.yaml"],
                            trusted=["/app/fedfingpt/", "/models/smollm2/", "serve.yaml"], sealed_dir="/sealed",
                            enclave_size="4G", max_threads=16)
    m = tomllib.loads(text.replace("{{ gramine.libos }}", "/gramine/libsysdb.so")
                      .replace("{{ gramine.runtimedir() }}", "/gramine/runtime"))
    assert m["sgx"]["enclave_size"] == "4G" and m["sgx"]["max_threads"] == 16
    assert m["sgx"]["remote_attestation"] == "dcap" and m["sgx"]["debug"] is False
    assert m["sgx"]["trusted_files"] == ["file:/app/fedfingpt/", "file:/models/smollm2/", "file:serve.yaml"]
    assert m["loader"]["argv"][1:] == ["-m", "fedfingpt.cli", "serve", "serve.yaml"]
    sealed = [x for x in m["fs"]["mounts"] if x.get("type") == "encrypted"]
    assert sealed == [{"type": "encrypted", "path": "/sealed", "uri": "file:/sealed", "key_name": "_sgx_mrenclave"}]
    assert json.dumps(m)  # plain data all the way down


def test_the_code_measured_is_what_the_host_names():
    from fedfingpt.enclave.base import code_digest
    from fedfingpt.server.inference.model_server import SERVED_CODE

    assert code_digest(SERVED_CODE) == code_digest(SERVED_CODE)
    assert code_digest(SERVED_CODE) != code_digest((*SERVED_CODE, "fedfingpt.client"))  # another package: another build
    assert "fedfingpt.client" not in SERVED_CODE and "fedfingpt.simulations" not in SERVED_CODE
    with pytest.raises(EnclaveError, match="name the packages"):
        code_digest(())
