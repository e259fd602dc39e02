"""The inference service under 10,000 fuzzed requests: does it stay up, give back every slot, and keep its memory?

A real gRPC server (TLS, tokens, audit, the compliance gate with Presidio and spaCy) on 127.0.0.1; a caller process
sends --requests requests from --threads threads, every RPC, each field drawn by a seeded generator from: normal
values, empty ones, strings at and past their limits (up to 2x serving.max_text_chars and max_field_chars), control
and non-BMP characters, PII of the types the policy blocks or redacts, too many items, negative or huge numbers,
unknown kinds, wrong or missing tokens, and raw bytes that are no message at all. Afterwards: every concurrency
slot free, health SERVING, a normal call answered, the audit chain intact, and the server process's resident memory
against its value after the first --warmup requests (target: at most 10 % growth).

The model is --model (default: the tiny random model, because this measures the service, not the model: every
request that passes the checks still runs it). Writes benchmarks/results/serving_fuzz.{json,md}.
Usage: python benchmarks/serving_fuzz.py [--requests 10000] [--model smollm2-135m-instruct]
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import grpc
import psutil

from _shared import benchmark_parser, dev_serving_files, finish_results  # benchmarks/_shared.py

from fedfingpt.api.v1 import inference_pb2 as pb
from fedfingpt.common.config import config_from_dict

log = logging.getLogger("bench")
TOKEN = "fuzz-token-0123456789abcdef"
METHODS = {  # name -> (request type, response type, server streaming)
    "ClassifySentiment": (pb.ClassifySentimentRequest, pb.ClassifySentimentResponse, False),
    "ScreenTransactions": (pb.ScreenTransactionsRequest, pb.ScreenTransactionsResponse, False),
    "Generate": (pb.GenerateRequest, pb.GenerateChunk, True),
    "GetModelInfo": (pb.GetModelInfoRequest, pb.ModelInfo, False),
    "GetAttestation": (pb.AttestationRequest, pb.Attestation, False),
}
PII = ["John Smith", "+44 20 7946 0958", "078-05-1120", "4111 1111 1111 1111", "GB82WEST12345698765432",
       "maria.garcia@example.com", "DEUTDEFF500", "born 4 March 1979", "221B Baker Street, London"]


def text(rng: random.Random, limit: int) -> str:
    kind = rng.randrange(9)
    if kind == 0:
        return ""
    if kind == 1:
        return "x" * rng.choice([limit, limit + 1, 2 * limit])
    if kind == 2:
        return "".join(chr(rng.choice([0, 7, 27, 0x202E, 0xFFFF, 0x1F600, rng.randrange(32, 0x2FFF)]))
                       for _ in range(rng.randrange(1, 64)))
    if kind == 3:
        return f"{rng.choice(PII)} said the bank's profit rose."
    if kind == 4:
        return " ".join(rng.choice(PII) for _ in range(rng.randrange(1, 6)))
    if kind == 5:
        return "   \n\t "
    return rng.choice(["Profits rose 12 % on lending.", "Sales fell.", "The bank cut 200 jobs.",
                       "Shares were unchanged after the meeting."])


def request(rng: random.Random, method: str, limits: dict):
    t, f = limits["text"], limits["field"]
    if method == "ClassifySentiment":
        n = rng.choice([0, 1, 1, 1, 2, 5, limits["items"] + 1])
        return pb.ClassifySentimentRequest(texts=[text(rng, t) for _ in range(n)],
                                           kind=rng.choice(["", "news", "tweet", "poem", text(rng, f)]))
    if method == "ScreenTransactions":
        cases = []
        for _ in range(rng.choice([0, 1, 1, 2, limits["items"] + 1])):
            accts = [pb.Account(id=text(rng, f) or f"A{i}", bank=text(rng, f), name=text(rng, f),
                                country=rng.choice(["GB", "DE", "", text(rng, f)])) for i in range(rng.randrange(0, 4))]
            txs = [pb.Transaction(id=f"T{i}", src=rng.choice([a.id for a in accts] or ["?"]),
                                  dst=rng.choice([a.id for a in accts] or ["?"]),
                                  amount=rng.choice([0.0, -5.0, 1e308, float("nan"), 9500.0]),
                                  currency=rng.choice(["EUR", "", text(rng, f)]),
                                  timestamp=rng.choice(["2026-01-02T10:00:00", "yesterday", text(rng, f)]),
                                  payment_format=text(rng, f)) for i in range(rng.randrange(0, 6))]
            cases.append(pb.AmlCase(focus=rng.choice([a.id for a in accts] or [""]), accounts=accts, transactions=txs))
        return pb.ScreenTransactionsRequest(cases=cases)
    if method == "Generate":
        return pb.GenerateRequest(instruction=text(rng, t), input=text(rng, t),
                                  max_new_tokens=rng.choice([-5, 0, 1, 4, 2 ** 31 - 1]))
    if method == "GetAttestation":
        return pb.AttestationRequest(nonce=os.urandom(rng.choice([0, 8, 16, 64])))
    return pb.GetModelInfoRequest()


def fuzz(target: str, ca: str, requests: int, threads: int, seed: int, limits: dict) -> dict:
    """The caller process: `requests` fuzzed calls from `threads` threads; status codes counted."""
    codes: Counter = Counter()
    lock = threading.Lock()
    todo = list(range(requests))
    creds = grpc.ssl_channel_credentials(root_certificates=Path(ca).read_bytes())

    def worker(k: int) -> None:
        rng = random.Random(seed * 1000 + k)
        with grpc.secure_channel(target, creds) as ch:
            while True:
                with lock:
                    if not todo:
                        return
                    todo.pop()
                method = rng.choice(list(METHODS))
                req_t, resp_t, stream = METHODS[method]
                raw = rng.random() < 0.05  # bytes that are no message at all
                ser = (lambda m: m) if raw else (lambda m: m.SerializeToString())
                path = f"/fedfingpt.v1.Inference/{method}"
                call = (ch.unary_stream if stream else ch.unary_unary)(path, request_serializer=ser,
                                                                      response_deserializer=resp_t.FromString)
                msg = os.urandom(rng.randrange(1, 64)) if raw else request(rng, method, limits)
                who = rng.random()
                meta = () if who < 0.03 else ((("authorization", "Bearer wrong-token-0123456789"),) if who < 0.06
                                              else (("authorization", f"Bearer {TOKEN}"),))
                try:
                    out = call(msg, metadata=meta, timeout=rng.choice([0.05, 5.0, 30.0, 30.0]))
                    if stream:
                        list(out)
                    code = "OK"
                except grpc.RpcError as err:
                    code = err.code().name
                with lock:
                    codes[f"{method}:{code}"] += 1

    ts = [threading.Thread(target=worker, args=(k,)) for k in range(threads)]
    t0 = time.perf_counter()
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return {"codes": dict(codes), "wall_s": round(time.perf_counter() - t0, 1)}


def main() -> None:
    ap = benchmark_parser("serving_fuzz", __doc__, config=None)
    ap.add_argument("--requests", type=int, default=10000)
    ap.add_argument("--warmup", type=int, default=1000, help="requests before the memory baseline")
    ap.add_argument("--threads", type=int, default=8)
    ap.add_argument("--model", default="tiny-random", help="base model (tiny-random: the service, not the model)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("fedfingpt").setLevel(logging.CRITICAL)  # thousands of refusals are expected here
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from fedfingpt.api.sdk import InferenceClient
    from fedfingpt.server.inference.audit import verify
    from fedfingpt.server.inference.service import InferenceServer

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    certs, tokens = dev_serving_files(work, TOKEN)
    tokens.write_text(f"{TOKEN}: {{caller: fuzz, role: developer}}\n")
    audit = work / "audit.jsonl"
    for p in (audit, audit.with_suffix(".head")):
        p.unlink(missing_ok=True)
    model = {"base": args.model, **({"cache_dir": str(work / "models")} if args.model == "tiny-random" else {})}
    cfg = config_from_dict({"model": model, "serving": {
        "port": 0, "tokens_file": str(tokens), "tls_cert": str(certs["server.pem"]), "tls_key": str(certs["server.key"]),
        "audit_log": str(audit), "max_new_tokens": 8, "enclave": "software",
        "enclave_identity": str(work / "enclave.identity")}}).service()
    s = cfg.serving
    limits = {"text": s.max_text_chars, "field": s.max_field_chars, "items": s.max_items}
    t_all = time.perf_counter()
    server = InferenceServer(cfg).start()
    target = f"127.0.0.1:{server.port}"
    me = psutil.Process()
    callers = ProcessPoolExecutor(1, mp_context=get_context("spawn"))
    try:
        warm = callers.submit(fuzz, target, str(certs["ca.pem"]), args.warmup, args.threads, args.seed, limits).result()
        rss0 = me.memory_info().rss
        main_run = callers.submit(fuzz, target, str(certs["ca.pem"]), args.requests, args.threads, args.seed + 1,
                                  limits).result()
        rss1 = me.memory_info().rss
        free = server.servicer._slots._value
        creds = grpc.ssl_channel_credentials(root_certificates=certs["ca.pem"].read_bytes())
        with grpc.secure_channel(target, creds) as ch:
            health = health_pb2_grpc.HealthStub(ch).Check(
                health_pb2.HealthCheckRequest(service="fedfingpt.v1.Inference")).status
        with InferenceClient(target, TOKEN, ca_cert=str(certs["ca.pem"])) as c:
            normal = c.classify(["Profits rose."]).results[0].label
    finally:
        callers.shutdown()
        server.stop(1.0)
    chain = verify(audit)
    codes = Counter()
    for k, v in main_run["codes"].items():
        codes[k.split(":")[1]] += v
    growth = (rss1 - rss0) / rss0
    row = {"requests": args.requests, "threads": args.threads, "model": args.model, "wall_s": main_run["wall_s"],
           "slots_free": f"{free}/{s.max_concurrent}", "health": health_pb2.HealthCheckResponse.ServingStatus.Name(health),
           "normal_call": normal, "audit_chain": "intact" if chain.ok else f"broken: {chain.problem}",
           "audit_lines": chain.lines, "rss_after_warmup_mb": round(rss0 / 2 ** 20, 1),
           "rss_after_mb": round(rss1 / 2 ** 20, 1), "rss_growth": round(growth, 4)}
    log.info("%s", row)
    finish_results(Path(args.out), benchmark="serving_fuzz", config=cfg.model_dump(mode="json"), seed=args.seed,
                   rows=[row], columns=list(row),
                   title=f"The inference service under {args.requests} fuzzed requests ({args.model} model: the "
                         "service is measured, not the model)",
                   extra={"codes": main_run["codes"], "codes_total": dict(codes), "warmup": warm,
                          "total_wall_s": round(time.perf_counter() - t_all, 1)},
                   md_extra="Status codes over the measured requests: " + ", ".join(
                       f"{k} {v}" for k, v in sorted(codes.items(), key=lambda kv: -kv[1])))
    log.info("wrote %s.{json,md}", args.out)


if __name__ == "__main__":
    main()
