"""What the enclave hook costs: attestation per connection and unsealing the adapter at start-up (software backend;
the Gramine-SGX backend cannot run on this machine, see enclave/gramine.py).

1. Evidence alone: attest (Ed25519 sign) and verify, in process, N times.
2. Per connection over gRPC/TLS on 127.0.0.1: a client that requires attestation (TLS handshake to read the
   server's certificate, GetAttestation with a fresh nonce, verify) against a plain client, up to its first reply.
3. Start-up: sealing the adapter, unsealing it, and building the served model from the sealed archive in memory
   against loading the plain folder (same base model).

Writes benchmarks/results/enclave.{json,md}.
Usage: python benchmarks/enclave.py --adapter runs/federated-banks/checkpoints/round-0003 [--connections 20]
"""

from __future__ import annotations

import logging
import secrets
import statistics
import time
from pathlib import Path

import numpy as np

from fedfingpt.api.sdk import InferenceClient
from fedfingpt.common.adapter import adapter_archive, load_adapter, load_adapter_archive, read_manifest
from fedfingpt.common.config import load_config
from fedfingpt.common.models import load_base_model
from fedfingpt.common.report import machine_info, peak_rss_mb, write_results
from fedfingpt.enclave.base import Policy
from fedfingpt.enclave.serving import make_enclave, seal_adapter_file, serving_measurement
from fedfingpt.server.inference.model_server import SERVED_CODE
from fedfingpt.enclave.software import SoftwareEnclave, verify_software
from fedfingpt.server.inference.service import InferenceServer

from _shared import benchmark_parser, dev_serving_files  # benchmarks/_shared.py

HERE = Path(__file__).resolve().parent
log = logging.getLogger("bench")
TOKEN = "bench-token-0123456789abcdef"


def stats(ms: list[float]) -> dict:
    q = np.percentile(ms, [50, 95])
    return {"mean_ms": round(statistics.mean(ms), 3), "p50_ms": round(float(q[0]), 3),
            "p95_ms": round(float(q[1]), 3), "n": len(ms)}


def main() -> None:
    ap = benchmark_parser("enclave", __doc__, config=None)
    ap.add_argument("--adapter", required=True)
    ap.add_argument("--evidence", type=int, default=200)
    ap.add_argument("--connections", type=int, default=20)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    work = Path(args.work)
    certs, tokens = dev_serving_files(work, TOKEN)
    rows = []

    # 1. evidence in process
    enc = SoftwareEnclave(work / "bench.identity", "m" * 64)
    policy = Policy(("m" * 64,), allow_software=True, trusted_keys=(enc.public_key,))
    cert = b"x" * 600
    att, ver = [], []
    for _ in range(args.evidence):
        nonce = secrets.token_bytes(32)
        t0 = time.perf_counter()
        ev = enc.attest(nonce, cert)
        t1 = time.perf_counter()
        assert verify_software(ev, policy, nonce, cert).ok
        t2 = time.perf_counter()
        att.append((t1 - t0) * 1000)
        ver.append((t2 - t1) * 1000)
    rows.append({"step": "attest (sign evidence)", **stats(att)})
    rows.append({"step": "verify evidence", **stats(ver)})

    # 3 (first, it builds what 2 serves). start-up: seal, unseal, build the served model
    job = load_config(args.config, {
        "serving.port": 0, "serving.tokens_file": str(tokens), "serving.tls_cert": str(certs["server.pem"]),
        "serving.tls_key": str(certs["server.key"]), "serving.audit_log": str(work / "audit.jsonl"),
        "serving.enclave": "software", "serving.enclave_identity": str(work / "serve.identity"),
        "serving.adapter": str(work / "adapter.sealed")})
    base_cfg = job.service()  # what the service reads
    loaded = load_base_model(base_cfg.model)
    server_enclave = make_enclave(base_cfg, loaded.base_sha256, SERVED_CODE)
    t0 = time.perf_counter()
    sealed = seal_adapter_file(server_enclave, args.adapter, work / "adapter.sealed")
    seal_ms = (time.perf_counter() - t0) * 1000
    t0 = time.perf_counter()
    data = server_enclave.unseal(sealed.read_bytes(), "adapter")
    unseal_ms = (time.perf_counter() - t0) * 1000
    t0 = time.perf_counter()
    load_adapter_archive(load_base_model(base_cfg.model).model, data, base_sha256=loaded.base_sha256)
    build_sealed_ms = (time.perf_counter() - t0) * 1000
    t0 = time.perf_counter()
    load_adapter(load_base_model(base_cfg.model).model, Path(args.adapter), base_sha256=loaded.base_sha256)
    build_plain_ms = (time.perf_counter() - t0) * 1000
    size_mb = len(adapter_archive(args.adapter)) / 1e6
    rows += [{"step": f"seal adapter archive ({size_mb:.1f} MB)", "mean_ms": round(seal_ms, 1), "n": 1},
             {"step": "unseal adapter archive", "mean_ms": round(unseal_ms, 1), "n": 1},
             {"step": "attach adapter from the unsealed archive (in memory)", "mean_ms": round(build_sealed_ms, 1),
              "n": 1},
             {"step": "attach adapter from the plain folder", "mean_ms": round(build_plain_ms, 1), "n": 1}]

    # 2. per connection over gRPC/TLS
    server = InferenceServer(base_cfg).start()
    target = f"127.0.0.1:{server.port}"
    expected = serving_measurement(base_cfg, loaded.base_sha256, read_manifest(args.adapter)["weights_sha256"],
                                   SERVED_CODE)
    key = SoftwareEnclave(work / "serve.identity", "").public_key
    pol = Policy((expected.combined,), allow_software=True, trusted_keys=(key,))
    plain, attested = [], []
    try:
        for _ in range(args.connections):
            t0 = time.perf_counter()
            with InferenceClient(target, TOKEN, ca_cert=str(certs["ca.pem"])) as c:
                c.model_info()
            plain.append((time.perf_counter() - t0) * 1000)
            t0 = time.perf_counter()
            with InferenceClient(target, TOKEN, ca_cert=str(certs["ca.pem"]), require_attestation=pol) as c:
                c.model_info()
            attested.append((time.perf_counter() - t0) * 1000)
    finally:
        server.stop(1.0)
    rows.append({"step": "new TLS connection + first call (plain)", **stats(plain)})
    rows.append({"step": "new TLS connection + attestation + first call", **stats(attested)})
    for r in rows:
        log.info("%s", r)
    write_results(Path(args.out), benchmark="enclave", config=base_cfg.model_dump(mode="json"),
                  seed=job.training.seed, rows=rows, columns=["step", "mean_ms", "p50_ms", "p95_ms", "n"],
                  title=f"Enclave hook costs (software backend), {base_cfg.model.base} adapter",
                  extra={"adapter": args.adapter, "attestation_overhead_ms_p50": round(
                      stats(attested)["p50_ms"] - stats(plain)["p50_ms"], 2), "peak_rss_mb": peak_rss_mb(),
                      "machine": machine_info()})
    log.info("wrote %s.{json,md}", args.out)


if __name__ == "__main__":
    main()
