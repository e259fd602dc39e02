"""The inference service under load, and the gate's redaction quality.

1. Latency and throughput: the real gRPC server (TLS, tokens, audit) on 127.0.0.1 with SmolLM2-135M-Instruct and
   a trained adapter; clients (in a process of their own, as callers are) send ClassifySentiment with one headline
   per request at concurrency 1, 8 and 32,
   with the compliance gate on and off, and with the model as trained (adapter unmerged, no prefix cache):
   p50/p95/p99 latency (ms), requests per second, mean batch size. The levels above run one after another, so
   drift on the machine between them shows in their difference; the gate's cost per request is therefore also
   measured paired: the same headline with the gate on and off back to back on one server (--paired headlines).
2. The model alone (no gRPC, no gate), one headline at a time and in batches of 16, as served (fp32, adapter
   merged, instruction cached, only the labels' rows of the output head) and with PyTorch's dynamic int8 weights
   (not served: the quality column says why): latency, weighted F1 on the same FPB test rows, and the arithmetic
   rate reached (2 x decoder parameters x tokens run / time) beside that of one large fp32 matrix product on the
   same cores, which bounds how fast any fp32 forward can be here.
3. Redaction quality on the Presidio research set (1,500 synthetic texts with gold spans): per entity type, recall
   (a gold span counts when a finding of the matching type overlaps it) and precision (a finding counts when it
   overlaps a gold span of the matching type), with the default gate settings (ignored types are reported so).
4. The name lists (gate.person_names) on and off: PERSON recall and precision on the research set, PERSON recall
   on the small finance-flavoured set (a gold name counts when a PERSON finding contains it or lies inside it),
   how many test headlines of FPB, FiQA-SA, TFNS and NWGI the gate changes, and what that costs: the served
   model's weighted F1 on the whole FPB test split as the texts reach it through the gate (only changed
   headlines are scored again; the others keep their prediction on the raw text).

Writes benchmarks/results/serving.{json,md}.
Usage: python benchmarks/serving.py --adapter runs/federated-banks/checkpoints/round-0003 [--requests 64]
       [--model-rows 200]
"""

from __future__ import annotations

import json
import logging
import statistics
import threading
import time
from collections import Counter, defaultdict
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from fedfingpt.api.sdk import InferenceClient
from fedfingpt.common.config import load_config
from fedfingpt.common.report import machine_info, peak_rss_mb, write_results, write_text_atomic
from fedfingpt.common.tasks.sentiment_data import data_dir_from_env, sentiment_splits
from fedfingpt.common.pii.gate import ComplianceGate
from fedfingpt.server.inference.service import InferenceServer

from _shared import benchmark_parser, dev_serving_files  # benchmarks/_shared.py

HERE = Path(__file__).resolve().parent
log = logging.getLogger("bench")
TOKEN = "bench-token-0123456789abcdef"
# the research set's types -> what Presidio (and our recognizers) call them
GOLD_TO_FOUND = {"PERSON": {"PERSON"}, "STREET_ADDRESS": {"STREET_ADDRESS", "LOCATION"}, "GPE": {"LOCATION"},
                 "ORGANIZATION": {"ORGANIZATION"}, "CREDIT_CARD": {"CREDIT_CARD"}, "DATE_TIME": {"DATE_TIME"},
                 "PHONE_NUMBER": {"PHONE_NUMBER", "UK_NHS"}, "EMAIL_ADDRESS": {"EMAIL_ADDRESS"},
                 "IBAN_CODE": {"IBAN_CODE"}, "US_SSN": {"US_SSN"}, "IP_ADDRESS": {"IP_ADDRESS"},
                 "US_DRIVER_LICENSE": {"US_DRIVER_LICENSE"}, "NRP": {"NRP"}, "ZIP_CODE": {"LOCATION"},
                 "TITLE": set(), "AGE": set(), "DOMAIN_NAME": {"URL"}}


def load_level(target: str, ca: str, texts: list[str], concurrency: int, requests: int) -> dict:
    latencies: list[float] = []
    lock = threading.Lock()
    todo = list(range(requests))

    def worker():
        with InferenceClient(target, TOKEN, ca_cert=ca) as client:
            client.classify([texts[0]])  # connection set up outside the measurement
            while True:
                with lock:
                    if not todo:
                        return
                    i = todo.pop()
                t0 = time.perf_counter()
                client.classify([texts[i % len(texts)]])
                dt = (time.perf_counter() - t0) * 1000
                with lock:
                    latencies.append(dt)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    q = np.percentile(latencies, [50, 95, 99])
    return {"p50_ms": round(float(q[0]), 1), "p95_ms": round(float(q[1]), 1), "p99_ms": round(float(q[2]), 1),
            "requests_per_s": round(len(latencies) / wall, 2), "requests": len(latencies), "latencies_ms": latencies}


def paired_gate_overhead(server, callers, target: str, ca: str, texts: list[str], repeats: int = 2) -> dict:
    """The gate's cost per request with drift cancelled: on one server, each headline is sent with the gate on and
    with it off back to back (`repeats` times each, the order alternating from one headline to the next), and the
    overhead is the median over headlines of (median on - median off)."""
    gate = server.gate
    diffs, on_ms, off_ms = [], [], []
    try:
        for k, text in enumerate(texts):
            lat = {}
            for state in ((True, False) if k % 2 == 0 else (False, True)):
                gate.cfg.enabled = state
                lat[state] = statistics.median(callers.submit(load_level, target, ca, [text], 1, repeats).result()
                                               ["latencies_ms"])
            diffs.append(lat[True] - lat[False])
            on_ms.append(lat[True])
            off_ms.append(lat[False])
    finally:
        gate.cfg.enabled = True
    q = np.percentile(diffs, [25, 50, 75])
    return {"headlines": len(texts), "repeats": repeats, "gate_on_p50_ms": round(statistics.median(on_ms), 1),
            "gate_off_p50_ms": round(statistics.median(off_ms), 1), "overhead_p25_ms": round(float(q[0]), 1),
            "overhead_p50_ms": round(float(q[1]), 1), "overhead_p75_ms": round(float(q[2]), 1)}


def matmul_gflops(m: int = 512, k: int = 576, n: int = 1536, reps: int = 50) -> float:
    """fp32 rate of one large matrix product (SmolLM2's MLP shape, 512 rows): about what these cores can reach."""
    import torch

    x, w = torch.randn(m, k), torch.randn(k, n)
    for _ in range(5):
        x @ w
    t0 = time.perf_counter()
    for _ in range(reps):
        x @ w
    return 2 * m * k * n * reps / (time.perf_counter() - t0) / 1e9


def served_model(cfg):
    """The model as the service builds it (adapter folded in), without the service's batcher thread."""
    from fedfingpt.server.inference.model_server import ModelServer

    served = ModelServer(cfg)
    served.close()
    return served


def label_scorer(cfg, model, tokenizer):
    """Sentiment label log-probabilities of prompts, as the service computes them (instruction cached, only the
    labels' rows of the head, normalised over the labels)."""
    from fedfingpt.common.predict import PrefixCache, label_logprobs
    from fedfingpt.common.tasks.sentiment_data import LABELS
    from fedfingpt.common.evaluate import task_openings

    prefix = PrefixCache(model, tokenizer, task_openings())

    def score(prompts: list[str]):
        return label_logprobs(model, tokenizer, prompts, LABELS, max_length=cfg.serving.max_length, batch_size=16,
                              bf16=cfg.serving.bf16_autocast, prefix=prefix, among_labels=True)

    return score


def model_alone(cfg, served, rows) -> list[dict]:
    """The served model without the service around it, and the same with dynamic int8 weights."""
    import copy

    import torch

    from fedfingpt.common.metrics import classification_report
    from fedfingpt.common.prompt import build_prompt, encode_prompt
    from fedfingpt.common.tasks.sentiment import INSTRUCTIONS
    from fedfingpt.common.tasks.sentiment_data import LABELS

    prompts = [build_prompt(INSTRUCTIONS["news"], r.text) for r in rows]
    decoder_params = sum(p.numel() for p in served.model.get_decoder().parameters()) - \
        served.model.get_input_embeddings().weight.numel()
    opening = len(served.tokenizer(build_prompt(INSTRUCTIONS["news"], ""))["input_ids"])
    new_tokens = [max(1, len(encode_prompt(served.tokenizer, p, cfg.serving.max_length)) - opening) for p in prompts]
    int8 = copy.deepcopy(served.model)
    int8.model = torch.ao.quantization.quantize_dynamic(int8.model, {torch.nn.Linear}, dtype=torch.qint8)
    out = []
    for name, model in (("fp32 (served)", served.model), ("dynamic int8 weights (not served)", int8)):
        score = label_scorer(cfg, model, served.tokenizer)
        score(prompts[:4])
        lat, preds = [], []
        for p in prompts:
            t0 = time.perf_counter()
            preds.append(LABELS[int(score([p]).argmax())])
            lat.append((time.perf_counter() - t0) * 1000)
        t0 = time.perf_counter()
        for i in range(0, len(prompts), 16):  # batches of 16 in arrival order, as the micro-batcher forms them
            score(prompts[i: i + 16])
        batched_ms = (time.perf_counter() - t0) * 1000 / len(prompts)
        q = np.percentile(lat, [50, 95, 99])
        report = classification_report([r.label for r in rows], preds, LABELS)
        out.append({"model": name, "rows": len(rows), "p50_ms": round(float(q[0]), 1),
                    "p95_ms": round(float(q[1]), 1), "p99_ms": round(float(q[2]), 1),
                    "batch16_ms_per_item": round(batched_ms, 1), "fpb_weighted_f1": round(report["weighted_f1"], 3),
                    "tokens_mean": round(float(np.mean(new_tokens)), 1),
                    "tokens_p99": int(np.percentile(new_tokens, 99)),
                    "gflops_alone": round(2 * decoder_params * float(np.sum(new_tokens)) / (sum(lat) / 1000) / 1e9, 1),
                    "gflops_batch16": round(2 * decoder_params * float(np.mean(new_tokens)) / (batched_ms / 1000)
                                            / 1e9, 1)})
        log.info("%s", out[-1])
    return out


def nano_person_recall(gate: ComplianceGate, records: list[dict]) -> dict:
    found = total = 0
    for rec in records:
        names = [e["entity"] for e in rec["NER"] if e.get("label") == "PERSON" and e.get("entity") in rec["text"]]
        if not names:
            continue  # 43 of the set's entity strings are not in its text (data/SOURCES.md): those are not counted
        spans = [rec["text"][f.start:f.end] for f in gate.findings(rec["text"]) if f.entity_type == "PERSON"]
        total += len(names)
        found += sum(any(n in f or f in n for f in spans) for n in names)
    return {"found": found, "gold": total, "recall": round(found / total, 3)}


def name_lists_effect(cfg, served, gates: dict[str, ComplianceGate], research: list[dict], nano: list[dict],
                      headlines: list[str], fpb) -> list[dict]:
    """Section 4: each gate's PERSON quality, the headlines it changes, and the served model's FPB F1 through it
    (FPB's texts among `headlines` are scanned once)."""
    from fedfingpt.common.metrics import classification_report
    from fedfingpt.common.prompt import build_prompt
    from fedfingpt.common.tasks.sentiment import INSTRUCTIONS
    from fedfingpt.common.tasks.sentiment_data import LABELS

    score = label_scorer(cfg, served.model, served.tokenizer)

    def predict(texts: list[str]) -> list[str]:
        if not texts:
            return []
        return [LABELS[int(i)] for i in score([build_prompt(INSTRUCTIONS["news"], t) for t in texts]).argmax(-1)]

    raw = [r.text for r in fpb]
    raw_pred = predict(raw)
    gold = [r.label for r in fpb]
    out = [{"gate": "none (raw text)", "fpb_weighted_f1": round(classification_report(gold, raw_pred, LABELS)
                                                                ["weighted_f1"], 4)}]
    for name, gate in gates.items():
        person = next(q for q in redaction_quality(gate, research) if q["entity"] == "PERSON")
        nano_r = nano_person_recall(gate, nano)
        t0 = time.perf_counter()
        scanned = [gate.scan(h, "bench").text for h in headlines]
        scan_ms = (time.perf_counter() - t0) * 1000 / len(headlines)
        changed_heads = sum(a != b for a, b in zip(headlines, scanned))
        as_passed = dict(zip(headlines, scanned))
        passed = [as_passed[t] if t in as_passed else gate.scan(t, "bench").text for t in raw]
        idx = [i for i, (a, b) in enumerate(zip(raw, passed)) if a != b]
        pred = list(raw_pred)
        for i, p in zip(idx, predict([passed[i] for i in idx])):
            pred[i] = p
        out.append({"gate": name, "research_person_recall": round(person["recall"], 3),
                    "research_person_precision": round(person["precision"], 3),
                    "nano_person_recall": nano_r["recall"], "nano_person_gold": nano_r["gold"],
                    "headlines_changed": changed_heads, "headlines": len(headlines),
                    "headlines_changed_share": round(changed_heads / len(headlines), 3),
                    "scan_ms_mean": round(scan_ms, 2), "fpb_rows_changed": len(idx), "fpb_rows": len(raw),
                    "fpb_weighted_f1": round(classification_report(gold, pred, LABELS)["weighted_f1"], 4)})
        log.info("%s", out[-1])
    return out


def gate_scan_times(gate: ComplianceGate, texts: list[str]) -> list[dict]:
    """The gate's scan of one headline in isolation, with its lean spaCy pipeline (as served) and with the spaCy
    model's full pipeline (tagger, parser, lemmatizer too): milliseconds per text."""
    import spacy

    engine = gate.analyzer.nlp_engine
    lean = engine.nlp["en"]
    out = []
    for name, nlp in (("lean pipeline (served)", lean), ("full spaCy pipeline", spacy.load(gate.cfg.spacy_model))):
        engine.nlp["en"] = nlp
        for t in texts[:5]:
            gate.scan(t, "analyst")
        ms = []
        for t in texts:
            t0 = time.perf_counter()
            gate.scan(t, "analyst")
            ms.append((time.perf_counter() - t0) * 1000)
        q = np.percentile(ms, [50, 95, 99])
        out.append({"gate": name, "texts": len(texts), "p50_ms": round(float(q[0]), 2),
                    "p95_ms": round(float(q[1]), 2), "p99_ms": round(float(q[2]), 2)})
        log.info("%s", out[-1])
    engine.nlp["en"] = lean
    return out


def research_records(data_dir: str | None) -> list[dict]:
    """The Presidio research set (1,500 synthetic texts with gold spans) from the data folder."""
    return json.loads((data_dir_from_env(data_dir) / "pii" / "presidio_research" / "synth_dataset_v2.json")
                      .read_text())


def redaction_quality(gate: ComplianceGate, records: list[dict]) -> list[dict]:
    tp_gold, n_gold, tp_found, n_found = Counter(), Counter(), Counter(), Counter()
    active = set(gate.entity_types())
    for rec in records:
        text, gold = rec["full_text"], rec["spans"]
        found = gate.findings(text)
        for g in gold:
            n_gold[g["entity_type"]] += 1
            want = GOLD_TO_FOUND.get(g["entity_type"], set())
            if any(f.entity_type in want and f.start < g["end_position"] and g["start_position"] < f.end
                   for f in found):
                tp_gold[g["entity_type"]] += 1
        for f in found:
            n_found[f.entity_type] += 1
            if any(f.entity_type in GOLD_TO_FOUND.get(g["entity_type"], set()) and f.start < g["end_position"]
                   and g["start_position"] < f.end for g in gold):
                tp_found[f.entity_type] += 1
    rows = []
    for typ in sorted(n_gold, key=lambda t: -n_gold[t]):
        mapped = GOLD_TO_FOUND.get(typ, set())
        rows.append({"entity": typ, "gold": n_gold[typ], "recall": tp_gold[typ] / n_gold[typ],
                     "found_as": "/".join(sorted(mapped)) or "-",
                     "precision": (sum(tp_found[m] for m in mapped) / sum(n_found[m] for m in mapped))
                     if mapped and sum(n_found[m] for m in mapped) else None,
                     "note": "ignored by gate.ignore" if mapped and not mapped & active else
                     ("no recognizer" if not mapped else "")})
    return rows


def main() -> None:
    ap = benchmark_parser("serving", __doc__, config=None)
    ap.add_argument("--adapter", required=True, help="adapter folder (a round checkpoint)")
    ap.add_argument("--requests", type=int, default=64, help="requests per concurrency level")
    ap.add_argument("--levels", default="1,8,32")
    ap.add_argument("--paired", type=int, default=64,
                    help="headlines for the paired gate on/off measurement at concurrency 1 (0: skip)")
    ap.add_argument("--model-rows", type=int, default=200, help="FPB test rows for the model-alone section (0: skip)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    work = Path(args.work)
    certs, tokens = dev_serving_files(work, TOKEN)
    job = load_config(args.config, {"serving.adapter": args.adapter, "serving.port": 0,
                                     "serving.tokens_file": str(tokens), "serving.tls_cert": str(certs["server.pem"]),
                                     "serving.tls_key": str(certs["server.key"]),
                                     "serving.audit_log": str(work / "audit.jsonl"), "serving.max_concurrent": 64})
    base = job.service()  # what the service reads
    headlines = [r.text for r in sentiment_splits(job.data.data_dir)["test"]["fpb"][:200]]
    gate = ComplianceGate(base.gate)
    rows: list[dict] = []
    paired = None
    t_all = time.perf_counter()
    # the served model as it is (adapter folded in, instructions' keys and values cached), with the gate on and off;
    # and the same with the gate on and the model as trained (adapter beside the base, every prompt run in full)
    settings = [("gate on", True, True), ("gate off", False, True), ("gate on, unmerged, no prefix cache", True, False)]
    callers = ProcessPoolExecutor(1, mp_context=get_context("spawn"))  # the load is not the server's to carry
    for setting, gate_on, fast in settings:
        cfg = base.model_copy(deep=True)
        cfg.gate.enabled = gate_on
        cfg.serving.merge_adapter = cfg.serving.prefix_cache = fast
        server = InferenceServer(cfg, gate=ComplianceGate(cfg.gate) if not gate_on else gate).start()
        target = f"127.0.0.1:{server.port}"
        try:
            for level in [int(x) for x in args.levels.split(",")]:
                server.model.batcher.batches.clear()
                r = callers.submit(load_level, target, str(certs["ca.pem"]), headlines, level, args.requests).result()
                r.pop("latencies_ms")
                batches = server.model.batcher.batches
                r.update({"setting": setting, "concurrency": level,
                          "mean_batch": round(statistics.mean(batches), 2) if batches else None})
                rows.append(r)
                log.info("%s", r)
            if setting == "gate on" and args.paired:
                paired = paired_gate_overhead(server, callers, target, str(certs["ca.pem"]), headlines[:args.paired])
                log.info("gate on/off paired: %s", paired)
        finally:
            server.stop(1.0)
    callers.shutdown()
    served = served_model(base)  # sections 2 and 4
    alone = model_alone(base, served, sentiment_splits(job.data.data_dir)["test"]["fpb"][:args.model_rows]) \
        if args.model_rows else []
    scan_times = gate_scan_times(gate, headlines)
    gemm = round(matmul_gflops(), 1)
    log.info("one large fp32 matrix product: %.1f GFLOP/s", gemm)
    records = research_records(job.data.data_dir)
    quality = redaction_quality(gate, records)
    for q in quality:
        log.info("%s", q)
    splits = sentiment_splits(job.data.data_dir)["test"]
    nano = json.loads((data_dir_from_env(job.data.data_dir) / "pii" / "nannigalaxy_pii_nano" /
                       "pii_syn_nano_en.json").read_text())
    without = base.gate.model_copy(update={"person_names": False})
    lists_effect = name_lists_effect(
        base, served, {"name lists on (served)": gate, "name lists off": ComplianceGate(without)}, records, nano,
        [r.text for rows_ in splits.values() for r in rows_], splits["fpb"])
    by = defaultdict(dict)
    for r in rows:
        by[r["setting"]][r["concurrency"]] = r
    write_results(
        Path(args.out), benchmark="serving", config=base.model_dump(mode="json"), seed=job.training.seed,
        rows=rows, columns=["setting", "concurrency", "p50_ms", "p95_ms", "p99_ms", "requests_per_s", "mean_batch",
                            "requests"],
        title=f"Serving {base.model.base} + adapter over gRPC/TLS on 127.0.0.1, one headline per request",
        extra={"redaction": quality, "name_lists": lists_effect, "model_alone": alone, "gate_scan": scan_times, "large_matmul_gflops": gemm, "adapter": args.adapter, "wall_s": round(time.perf_counter() - t_all, 1),
               "peak_rss_mb": peak_rss_mb(), "machine": machine_info(),
               "gate_p50_overhead_ms": round(by["gate on"][1]["p50_ms"] - by["gate off"][1]["p50_ms"], 1)
               if 1 in by["gate on"] and 1 in by["gate off"] else None, "gate_overhead_paired": paired},
    )
    from fedfingpt.common.metrics import format_markdown_table

    md = Path(args.out).with_suffix(".md")
    alone_md = ("\n\nThe model alone, one FPB test headline per call (tokens: those after the cached instruction; "
                f"GFLOP/s: 2 x decoder parameters x tokens / time; one large fp32 matrix product here: {gemm} "
                "GFLOP/s):\n\n" + format_markdown_table(alone, list(alone[0])) if alone else "")
    scan_md = "\n\nThe gate's scan of one FPB test headline, alone:\n\n" + format_markdown_table(scan_times)
    if paired:
        scan_md += ("\n\nThe gate's cost per request, paired (each headline sent with the gate on and off back to back "
                    "on one server, concurrency 1; overhead = on - off per headline):\n\n"
                    + format_markdown_table([paired]))
    write_text_atomic(md, md.read_text() + alone_md + scan_md + "\n\nRedaction on the Presidio research set (1,500 texts):\n\n"
                  + format_markdown_table(quality, ["entity", "gold", "found_as", "recall", "precision", "note"])
                  + "\n\nThe name lists (gate.person_names) on and off: PERSON on the research set and the small "
                  "finance-flavoured set, test headlines of the four sentiment sets the gate changes, and the served "
                  "model's weighted F1 on the FPB test split through the gate:\n\n"
                  + format_markdown_table(lists_effect, list(lists_effect[1])) + "\n")
    log.info("wrote %s.{json,md}", args.out)


if __name__ == "__main__":
    main()
