"""The served model's engines side by side (`serving.engine`), and the response cache, on one machine in one run.

For each engine (torch, onnx, onnx-int8), the real gRPC server (TLS, tokens, audit, the compliance gate on) on
127.0.0.1 with SmolLM2-135M-Instruct and a trained adapter:
  latency     ClassifySentiment with one FPB test headline per request from a caller process: --requests at
              concurrency 1 (p50/p95/p99 ms) and --requests-32 at concurrency 32 (requests per second; the ratio to
              concurrency 1's rate)
  quality     the engine's weighted F1 (bootstrap 95 % interval) on the whole FPB test split (1,212 rows) as the
              texts reach the model through the gate, and its agreement with the torch fp32 engine's labels
Where the CPU goes (--cpu-engines): on a fresh server per engine, the cores the whole machine and the server's
process keep busy at concurrency 1 and 32, the CPU seconds a request costs at each, and the gate's own CPU time per
headline; a rate on C cores cannot exceed C / (CPU seconds per request), which bounds what concurrency can give.
The response cache (torch engine, serving.response_cache) under a stream of repeated headlines (drawn Zipf-like
from --cache-pool headlines): hit rate and latency; its answers are the model's by construction (tested).
Each cell is cached in WORK/cells.json, so an interrupted run continues where it stopped.

Writes benchmarks/results/serving_engines.{json,md}.
Usage: python benchmarks/serving_engines.py --adapter runs/benchmarks/sentiment_central/final_adapter
"""

from __future__ import annotations

import logging
import os
import random
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from _shared import CellCache, CpuMeter, benchmark_parser, dev_serving_files, finish_results  # benchmarks/_shared.py
from serving import TOKEN, load_level

from fedfingpt.common.config import load_config
from fedfingpt.common.metrics import bootstrap_interval, classification_report
from fedfingpt.common.prompt import build_prompt
from fedfingpt.common.models import cpu_has_native_bf16, use_bf16
from fedfingpt.common.report import cpu_info, peak_rss_mb
from fedfingpt.common.tasks.sentiment import INSTRUCTIONS
from fedfingpt.common.tasks.sentiment_data import LABELS, sentiment_splits
from fedfingpt.server.inference.engines import ENGINES
from fedfingpt.common.pii.gate import ComplianceGate
from fedfingpt.server.inference.service import InferenceServer

log = logging.getLogger("bench")


def zipf_stream(pool: list[str], n: int, seed: int, s: float = 1.1) -> list[str]:
    """n requests drawn from the pool with probability ~ 1 / rank^s: a few headlines asked often, most rarely."""
    w = 1.0 / np.arange(1, len(pool) + 1) ** s
    rng = np.random.default_rng(seed)
    return [pool[i] for i in rng.choice(len(pool), size=n, p=w / w.sum())]


def engine_cell(base, engine: str, args, callers, ca: str, headlines: list[str], fpb, gated: list[str]) -> dict:
    """One engine measured; `torch-fp32` is the torch engine with bf16 off (the fp32 reference where the CPU has
    native bf16 and `torch` serves bf16); `onnx-int8-bN` is onnx-int8 with weights quantised in blocks of N."""
    cfg = base.model_copy(deep=True)
    if engine.startswith("onnx-int8-b"):
        cfg.serving.engine, cfg.serving.int8_block_size = "onnx-int8", int(engine.removeprefix("onnx-int8-b"))
    else:
        cfg.serving.engine = "torch" if engine == "torch-fp32" else engine
    if engine == "torch-fp32":
        cfg.serving.bf16_autocast = False
    t0 = time.perf_counter()
    server = InferenceServer(cfg).start()
    start_s = time.perf_counter() - t0
    target = f"127.0.0.1:{server.port}"
    try:
        one = callers.submit(load_level, target, ca, headlines, 1, args.requests).result()
        many = callers.submit(load_level, target, ca, headlines, 32, args.requests_32).result()
        prompts = [build_prompt(INSTRUCTIONS["news"], t) for t in gated]
        t0 = time.perf_counter()
        scores = np.concatenate([server.model.engine.score(prompts[i: i + 16], LABELS)
                                 for i in range(0, len(prompts), 16)])
        score_s = time.perf_counter() - t0
    finally:
        server.stop(1.0)
    preds = [LABELS[i] for i in scores.argmax(1)]
    gold = [r.label for r in fpb]
    report = classification_report(gold, preds, LABELS)
    ci = bootstrap_interval(gold, preds, LABELS)
    return {"engine": engine, "start_s": round(start_s, 1), "bf16": use_bf16(cfg.serving.bf16_autocast)
            if cfg.serving.engine == "torch" else False,
            "p50_ms": one["p50_ms"], "p95_ms": one["p95_ms"], "p99_ms": one["p99_ms"],
            "rps_1": one["requests_per_s"], "requests_1": one["requests"],
            "rps_32": many["requests_per_s"], "p99_ms_32": many["p99_ms"], "requests_32": many["requests"],
            "scaling_32": round(many["requests_per_s"] / one["requests_per_s"], 2),
            "fpb_weighted_f1": round(report["weighted_f1"], 4), "fpb_weighted_f1_ci95": [round(c, 4) for c in ci],
            "fpb_rows": len(gold), "fpb_score_s": round(score_s, 1), "preds": preds}


def cpu_cell(base, engine: str, args, callers, ca: str, headlines: list[str], gate) -> dict:
    """Cores busy and CPU seconds per request at concurrency 1 and 32 for one engine, and the gate's CPU per
    request (the scan alone, in this process, on the same headlines)."""
    cfg = base.model_copy(deep=True)
    cfg.serving.engine = engine
    server = InferenceServer(cfg).start()
    target = f"127.0.0.1:{server.port}"
    out: dict = {"engine": engine, "cores": os.cpu_count()}
    try:
        callers.submit(load_level, target, ca, headlines, 1, 20).result()  # warm
        for level, n in ((1, args.cpu_requests), (32, args.cpu_requests_32)):
            with CpuMeter() as m:
                r = callers.submit(load_level, target, ca, headlines, level, n).result()
            out[f"c{level}"] = {"rps": r["requests_per_s"], "p50_ms": r["p50_ms"], "p99_ms": r["p99_ms"],
                                "machine_cores": round(m.machine_cores, 2), "server_cores": round(m.process_cores, 2),
                                "cpu_ms_per_request": round(1000 * m.machine_cores / r["requests_per_s"], 1)}
    finally:
        server.stop(1.0)
    texts = headlines[: args.cpu_requests]
    c0 = time.process_time()
    for t in texts:
        gate.scan(t, "analyst")
    out["gate_cpu_ms"] = round(1000 * (time.process_time() - c0) / len(texts), 1)
    c1 = out["c1"]
    out["gate_share_c1"] = round(out["gate_cpu_ms"] / c1["cpu_ms_per_request"], 3)
    # the most concurrency can give without cutting the work per request: every core busy at c1's cost
    out["scaling_ceiling"] = round(out["cores"] / c1["machine_cores"], 2)
    out["scaling_32"] = round(out["c32"]["rps"] / c1["rps"], 2)
    return out


def cache_cell(base, args, callers, ca: str, pool: list[str]) -> dict:
    out = {}
    stream = zipf_stream(pool, args.cache_requests, seed=1)
    for size in (0, args.cache_size):
        cfg = base.model_copy(deep=True)
        cfg.serving.response_cache = size
        server = InferenceServer(cfg).start()
        try:
            r = callers.submit(load_level, f"127.0.0.1:{server.port}", ca, stream, 1, len(stream)).result()
            hits = server.model.cache.hits
        finally:
            server.stop(1.0)
        out["cache on" if size else "cache off"] = {"p50_ms": r["p50_ms"], "p95_ms": r["p95_ms"], "p99_ms": r["p99_ms"],
                                                    "rps": r["requests_per_s"], "hits": hits, "requests": r["requests"]}
    return {"pool": len(pool), "requests": len(stream), "distinct": len(set(stream)), "size": args.cache_size,
            **out}


def main() -> None:
    ap = benchmark_parser("serving_engines", __doc__, config=None)
    ap.add_argument("--adapter", required=True, help="adapter folder (a round checkpoint or a train output)")
    ap.add_argument("--engines", default=",".join(ENGINES + (("torch-fp32",) if cpu_has_native_bf16() else ())),
                    help="engines to measure; torch-fp32 (torch with bf16 off) is the fp32 reference on a CPU with "
                         "native bf16, where torch serves bf16; onnx-int8-bN: int8 in blocks of N, not 64 ('' none)")
    ap.add_argument("--requests", type=int, default=1000, help="requests at concurrency 1 per engine")
    ap.add_argument("--requests-32", type=int, default=640, help="requests at concurrency 32 per engine")
    ap.add_argument("--cpu-engines", default="onnx-int8,torch", help="engines whose CPU use is accounted ('' none)")
    ap.add_argument("--cpu-requests", type=int, default=300, help="requests at concurrency 1 in the CPU accounting")
    ap.add_argument("--cpu-requests-32", type=int, default=320, help="requests at concurrency 32 in it")
    ap.add_argument("--cache-pool", type=int, default=300, help="distinct headlines the cache stream draws from")
    ap.add_argument("--cache-requests", type=int, default=1000, help="requests of the cache cell (0: no cache cell)")
    ap.add_argument("--cache-size", type=int, default=256)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    import torch

    torch.set_num_threads(2)
    work = Path(args.work)
    cache = CellCache(work, settings={"adapter": args.adapter, "requests": args.requests,
                                      "requests_32": args.requests_32, "cpu": cpu_info()})
    certs, tokens = dev_serving_files(work, TOKEN)
    job = load_config(args.config, {"serving.adapter": args.adapter, "serving.port": 0,
                                    "serving.tokens_file": str(tokens), "serving.tls_cert": str(certs["server.pem"]),
                                    "serving.tls_key": str(certs["server.key"]),
                                    "serving.audit_log": str(work / "audit.jsonl"), "serving.max_concurrent": 64,
                                    "serving.workers": 66})
    base = job.service()
    fpb = sentiment_splits(job.data.data_dir)["test"]["fpb"]
    headlines = [r.text for r in fpb]
    t_all = time.perf_counter()
    gate = ComplianceGate(base.gate)
    gated = [gate.scan(t, "analyst").text for t in headlines]  # the texts as the model sees them
    callers = ProcessPoolExecutor(1, mp_context=get_context("spawn"))  # the load is not the server's to carry
    try:
        for engine in filter(None, args.engines.split(",")):
            if f"engine:{engine}" not in cache.cells:
                cache.save(f"engine:{engine}", engine_cell(base, engine, args, callers, str(certs["ca.pem"]),
                                                           headlines, fpb, gated))
                log.info("%s: %s", engine, {k: v for k, v in cache.cells[f"engine:{engine}"].items() if k != "preds"})
        for engine in filter(None, args.cpu_engines.split(",")):
            if f"cpu:{engine}" not in cache.cells:
                cache.save(f"cpu:{engine}", cpu_cell(base, engine, args, callers, str(certs["ca.pem"]), headlines,
                                                     gate))
                log.info("cpu %s: %s", engine, cache.cells[f"cpu:{engine}"])
        if "cache" not in cache.cells and args.cache_requests:
            pool = random.Random(0).sample(headlines, args.cache_pool)
            cache.save("cache", cache_cell(base, args, callers, str(certs["ca.pem"]), pool))
    finally:
        callers.shutdown()
    # quality is compared with the fp32 model: torch where it serves fp32, torch-fp32 where torch serves bf16
    ref_name = "torch-fp32" if "engine:torch-fp32" in cache.cells else "torch"
    ref = cache.cells.get(f"engine:{ref_name}")
    rows = []
    measured = [k.removeprefix("engine:") for k in cache.cells if k.startswith("engine:")]
    for engine in sorted(measured, key=lambda e: ([*ENGINES, "torch-fp32"] + [e]).index(e)):
        c = cache.cells[f"engine:{engine}"]
        row = {k: v for k, v in c.items() if k != "preds"}
        if ref:
            row["agree_with_fp32"] = round(float(np.mean([a == b for a, b in zip(c["preds"], ref["preds"])])), 4)
            row["f1_ratio_to_fp32"] = round(c["fpb_weighted_f1"] / ref["fpb_weighted_f1"], 4)
        rows.append(row)
    wanted = list(filter(None, args.engines.split(",")))
    missing = [e for e in wanted if f"engine:{e}" not in cache.cells]
    missing += [] if "cache" in cache.cells or not args.cache_requests else ["cache"]
    missing += [f"cpu:{e}" for e in filter(None, args.cpu_engines.split(",")) if f"cpu:{e}" not in cache.cells]
    md = [f"Quality reference (agree_with_fp32, f1_ratio_to_fp32): the {ref_name} engine's fp32 labels."] if ref else []
    if c := cache.cells.get("cache"):
        md.append(f"## Response cache (torch engine, {c['size']} entries)\n\n{c['requests']} requests at concurrency 1 "
                  f"drawn Zipf-like (s = 1.1) from {c['pool']} FPB headlines ({c['distinct']} distinct):\n\n"
                  "| setting | hits | p50 ms | p95 ms | p99 ms | requests/s |\n|---|---|---|---|---|---|")
        for k in ("cache off", "cache on"):
            r = c[k]
            md.append(f"| {k} | {r['hits']} | {r['p50_ms']} | {r['p95_ms']} | {r['p99_ms']} | {r['rps']} |")
    cpu = [c for k, c in cache.cells.items() if k.startswith("cpu:")]
    if cpu:
        md.append(f"\n## Where the CPU goes ({cpu[0]['cores']} cores)\n\nCores busy over the run (machine: every "
                  "process, the callers included; server: the serving process), CPU milliseconds per request "
                  "(machine cores / rate), the gate's scan alone per headline, and the ceiling on what concurrency "
                  "can give while a request costs what it does at concurrency 1 (cores / machine cores busy at 1):\n\n"
                  "| engine | rps c1 | machine / server cores c1 | CPU ms per request c1 | rps c32 | machine / server "
                  "cores c32 | CPU ms per request c32 | gate CPU ms (share at c1) | c32 scaling | ceiling |\n"
                  "|---|---|---|---|---|---|---|---|---|---|")
        for c in cpu:
            a, b = c["c1"], c["c32"]
            md.append(f"| {c['engine']} | {a['rps']} | {a['machine_cores']} / {a['server_cores']} | "
                      f"{a['cpu_ms_per_request']} | {b['rps']} | {b['machine_cores']} / {b['server_cores']} | "
                      f"{b['cpu_ms_per_request']} | {c['gate_cpu_ms']} ({c['gate_share_c1']:.0%}) | "
                      f"{c['scaling_32']}x | {c['scaling_ceiling']}x |")
    if missing:
        md.append("\nNot yet measured: " + ", ".join(missing))
    finish_results(Path(args.out), benchmark="serving_engines", config=base.model_dump(mode="json"),
                   seed=job.training.seed, rows=rows,
                   columns=["engine", "bf16", "p50_ms", "p95_ms", "p99_ms", "rps_1", "rps_32", "scaling_32",
                            "p99_ms_32", "fpb_weighted_f1", "fpb_weighted_f1_ci95", "agree_with_fp32",
                            "f1_ratio_to_fp32", "start_s"],
                   title=f"Serving engines: {base.model.base} + adapter, gate on, gRPC/TLS on 127.0.0.1, one FPB "
                         "headline per request",
                   extra={"cells": {k: v for k, v in cache.cells.items()}, "adapter": args.adapter,
                          "sections_missing": missing, "wall_s": round(time.perf_counter() - t_all, 1),
                          "peak_rss_mb": peak_rss_mb()},
                   md_extra="\n".join(md))
    log.info("wrote %s.{json,md}", args.out)


if __name__ == "__main__":
    main()
