"""A bank's own data folder: what checking and scrubbing it costs, how much planted PII the scrub removes, what the
scrub costs the model, and whether banks reading their own folders reproduce the simulation.

Sections (each cached in WORK/cells.json, so an interrupted run continues where it stopped):
  cost      a folder of 10,000 sentiment rows (9,000 public training rows + 1,000 bank-style texts with planted PII)
            and 100,000 transactions (the seeded AML generator, holder names included) in the data contract:
            wall time and peak memory of `fedfingpt data check` without and with the PII scan, and of the bank's
            training-set build (read, scrub of every text and AML narrative, tokenisation), each in its own process
  recall    the scrub's default policy over a bank-style PII set (seeded generator, a seed other than the gate
            benchmark's): per planted type, the share of values no longer in the text
  f1        the chosen centralized recipe trained on the same FinGPT-mix rows raw and scrubbed (same order, seed and
            steps), both scored on every row of FPB test and TFNS valid
  loopback  the default scenario's sentiment federation (3 banks, SmolLM2) in the Simulation Engine, and on loopback
            (SuperLink + 3 SuperNodes, TLS, node authentication) with each bank reading its own folder written by
            `fedfingpt data simulate-banks` (scrub off, as the simulation's public rows are not scrubbed): the
            server's scores per round side by side

Writes benchmarks/results/bank_data.{json,md}.
Usage: python benchmarks/bank_data.py [--sections cost,recall,f1,loopback] [--f1-steps 300] [--loop-rounds 2]
       [--seed 42] (f1 with --seed 43, 44: more paired seeds; --sections '' rewrites the results from the cache)
"""

from __future__ import annotations

import json
import logging
import os
import random
import resource
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import yaml

from _shared import CellCache, benchmark_parser, finish_results
from fedfingpt.common.config import load_config, parse_override
from fedfingpt.common.report import cpu_info

HERE = Path(__file__).resolve().parent
log = logging.getLogger("bench")
SECTIONS = ("cost", "recall", "f1", "loopback")
PY = sys.executable


# -- cost ------------------------------------------------------------------------------------------------------------
def build_cost_folder(folder: Path, data_dir: str, rows: int, transactions: int, seed: int) -> dict:
    """9/10 public training rows and 1/10 bank-style PII texts (labelled neutral), and `transactions` generated
    transactions with holder names, written in the contract."""
    from fedfingpt.common.bank_folder import write_sentiment_rows, write_transactions
    from fedfingpt.common.tasks.aml_generator import GeneratorConfig, generate
    from fedfingpt.common.tasks.sentiment_data import SentimentExample, sentiment_splits
    from fedfingpt.simulations.pii_bank_texts import bank_pii_texts

    train = [ex for rows_ in sentiment_splits(data_dir)["train"].values() for ex in rows_]
    rng = random.Random(seed)
    rng.shuffle(train)
    n_pii = rows // 10
    pii = [SentimentExample(t.text, "neutral", "bank", "news") for t in bank_pii_texts(n_pii, seed=seed)]
    write_sentiment_rows(folder, train[: rows - n_pii] + pii)
    accounts = 600
    while True:  # the generator's size is set per account: grow until the world has enough transactions
        ds = generate(GeneratorConfig(num_banks=1, accounts_per_bank=accounts, days=90, tx_per_account=12.0,
                                      seed=seed))
        if len(ds.transactions) >= transactions:
            break
        accounts = int(accounts * 1.3 * transactions / max(1, len(ds.transactions))) + 1
    ds.transactions = ds.transactions[:transactions]
    write_transactions(folder, ds)
    return {"sentiment_rows": rows, "pii_rows": n_pii, "transactions": len(ds.transactions)}


def timed_child(cmd: list[str], env: dict | None = None) -> dict:
    """Wall time and peak RSS of one child process (each phase alone, so its memory is its own)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    t0 = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **(env or {})})
    wall = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    if done.returncode not in (0, 1):
        raise RuntimeError(f"{' '.join(cmd[:6])}... failed ({done.returncode}):\n{done.stderr[-3000:]}")
    lines = done.stdout.strip().splitlines()
    return {"wall_s": round(wall, 1), "peak_rss_mb": round(peak / 1024, 1) if peak > before else None,
            "rc": done.returncode, "last_line": lines[-1] if lines else ""}


def build_training_set(folder: str, config: str | None) -> None:
    """Child process of the cost section: the bank's training-set build from its folder, as its ClientApp does."""
    from fedfingpt.common.bank_rows import folder_training_set
    from fedfingpt.common.models import load_base_model

    cfg = load_config(config, {"data.tasks": ["sentiment", "aml"]})
    tok = load_base_model(cfg.model).tokenizer
    t0 = time.perf_counter()
    train, test, aml_test, _, report = folder_training_set(cfg, tok, 0, folder, accept_skips=True)
    print(json.dumps({"examples": len(train), "test_rows": len(test), "aml_test": len(aml_test),
                      "build_s": round(time.perf_counter() - t0, 1), "scrub": report}))


def section_cost(args, cache: CellCache, work: Path, data_dir: str) -> None:
    """Each phase is saved as it ends (an interrupted section continues with the next phase)."""
    cell = dict(cache.cells.get("cost:partial") or cache.cells.get("cost") or {})
    if "training_set" in cell:
        return
    folder = work / "cost-folder"
    if "sizes" not in cell:
        cell["sizes"] = build_cost_folder(folder, data_dir, args.rows, args.transactions, args.seed)
        cache.save("cost:partial", cell)
    base = [PY, "-m", "fedfingpt", "data", "check", str(folder), "--accept-skips"]
    if "check_no_pii" not in cell:
        cell["check_no_pii"] = timed_child(base + ["--no-pii", "--out", str(work / "card-no-pii")])
        cache.save("cost:partial", cell)
    if "check_with_pii" not in cell:
        cell["check_with_pii"] = timed_child(base + ["--out", str(work / "card")])
        cell["card"] = json.loads((work / "card" / "data-card.json").read_text())
        cell["card"].pop("problems", None)
        cache.save("cost:partial", cell)
    build = timed_child([PY, __file__, "--build-training-set", str(folder)] +
                        (["--config", args.config] if args.config else []))
    cell["training_set"] = {**build, **json.loads(build.pop("last_line"))}
    cache.cells.pop("cost:partial", None)
    cache.save("cost", cell)


# -- recall ----------------------------------------------------------------------------------------------------------
def section_recall(args, cache: CellCache) -> None:
    if "recall" in cache.cells:
        return
    from fedfingpt.common.pii.scrub import Scrubber
    from fedfingpt.simulations.pii_bank_texts import bank_pii_texts

    cfg = load_config(args.config)
    scrub = Scrubber(cfg.gate, cfg.data.scrub)
    texts = bank_pii_texts(args.recall_texts, seed=args.recall_seed)
    planted, removed = Counter(), Counter()
    t0 = time.perf_counter()
    for t in texts:
        out = scrub.scrub(t.text) or ""
        for value, typ in t.values():
            planted[typ] += 1
            removed[typ] += value not in out
    wall = time.perf_counter() - t0
    per_type = {typ: {"planted": planted[typ], "removed": removed[typ], "recall": round(removed[typ] / planted[typ], 4)}
                for typ in sorted(planted)}
    cache.save("recall", {"texts": len(texts), "seed": args.recall_seed, "per_type": per_type,
                          "found": dict(scrub.report.found), "wall_s": round(wall, 1)})


# -- f1 --------------------------------------------------------------------------------------------------------------
# The scrub's engine settings per variant (raw: no scrub): the default, and its two sources of findings in public
# financial text, each left out in turn (the name lists read company names as persons; countries and cities)
F1_VARIANTS = {"raw": None, "scrubbed": {},
               "scrubbed-no-name-lists": {"person_names": False},
               "scrubbed-locations-kept": {"ignore": ["DATE_TIME", "NRP", "URL", "ORGANIZATION", "LOCATION"]}}


def section_f1(args, cache: CellCache, data_dir: str) -> None:
    from dataclasses import replace

    from fedfingpt.common.evaluate import evaluate_sentiment
    from fedfingpt.common.models import attach_lora, load_base_model
    from fedfingpt.common.pii.scrub import Scrubber
    from fedfingpt.common.tasks.sentiment import encode_sentiment
    from fedfingpt.common.tasks.sentiment_data import sentiment_splits, training_mix
    from fedfingpt.common.train import train

    cfg = load_config(HERE.parent / "configs" / "sentiment_benchmark.yaml",
                      {"training.max_steps": args.f1_steps, "training.eval_every": None, "training.seed": args.seed})
    splits = sentiment_splits(data_dir)
    t = cfg.training
    rows = training_mix(splits["train"], dict(cfg.data.train_mix), seed=cfg.data.seed)[: t.max_steps * t.batch_size]
    tests = {"fpb": splits["test"]["fpb"], "tfns": splits["test"]["tfns"]}
    for variant in [v.strip() for v in args.f1_variants.split(",") if v.strip()]:
        key = f"f1:{variant}:{args.f1_steps}:{args.seed}"
        if key in cache.cells:
            continue
        used, report, scrub_s = rows, None, 0.0
        if variant != "raw":
            scrub = Scrubber(cfg.gate.model_copy(update=F1_VARIANTS[variant]), cfg.data.scrub)
            t0 = time.perf_counter()
            used = [replace(ex, text=s) for ex in rows if (s := scrub.scrub(ex.text)) is not None]
            scrub_s = time.perf_counter() - t0
            report = scrub.report.as_dict()
        loaded = load_base_model(cfg.model)
        model = attach_lora(loaded.model, cfg.lora, seed=t.seed)
        examples = encode_sentiment(loaded.tokenizer, used, cfg.data.max_length)
        t0 = time.perf_counter()
        result = train(model, examples, t, pad_id=loaded.tokenizer.pad_token_id, progress=True, desc=variant)
        train_s = time.perf_counter() - t0
        scored = evaluate_sentiment(model, loaded.tokenizer, tests, cfg.eval, max_length=cfg.data.max_length)
        cache.save(key, {"variant": variant, "steps": t.max_steps, "rows": len(used), "train_s": round(train_s, 1),
                         "final_loss": round(float(result.final_loss), 4), "scrub_s": round(scrub_s, 1),
                         "scrub": report, "scores": {r["dataset"]: {"weighted_f1": r["weighted_f1"],
                                                                    "ci95": r["weighted_f1_ci95"], "n": r["n"]}
                                                     for r in scored}})
        del model, loaded


# -- loopback --------------------------------------------------------------------------------------------------------
def section_loopback(args, cache: CellCache, work: Path, data_dir: str) -> None:
    key = f"loopback:{args.loop_rounds}"
    if key in cache.cells:
        return
    sys.path.insert(0, str(HERE.parent / "tests"))
    from loopback import LoopbackFederation

    from fedfingpt.simulations.bank_folders import write_simulated_banks
    from fedfingpt.simulations.run import simulate

    overrides = {"data.tasks": ["sentiment"], "data.max_length": 256, "federation.rounds": args.loop_rounds,
                 "federation.resume": False, "federation.strategy": "fedavg", "federation.final_eval_full": False}
    overrides.update(dict(parse_override(x) for x in (args.set or [])))
    cfg = load_config(None, overrides)
    reports = {}
    t0 = time.perf_counter()
    simulate(cfg.model_copy(update={"output_dir": str(work / "loop-sim"), "name": "sim"}), work / "loop-sim" / "sim",
             progress=False)
    reports["simulation"] = json.loads((work / "loop-sim" / "sim" / "federated.json").read_text())
    sim_s = time.perf_counter() - t0
    folders = write_simulated_banks(cfg, work / "loop-folders")
    root = work / "loop-deploy"
    dcfg = cfg.model_copy(update={"output_dir": str(root / "runs"), "name": "folders"})
    root.mkdir(parents=True, exist_ok=True)
    scenario = root / "scenario.yaml"
    scenario.write_text(yaml.safe_dump(dcfg.model_dump(mode="json")))
    t0 = time.perf_counter()
    with LoopbackFederation(root, cfg.federation.num_banks, data_dir, bank_env={"OMP_NUM_THREADS": "1"},
                            bank_folders=dict(enumerate(folders)), bank_args=["--scrub", "off"]) as fed:
        fed.start()
        code, _ = fed.run(scenario, timeout_s=args.timeout_s)
        if code != 0:
            raise RuntimeError(f"the loopback run failed (exit {code}); see {scenario.with_suffix('.log')}")
    dep_s = time.perf_counter() - t0
    reports["bank folders (loopback)"] = json.loads((root / "runs" / "folders" / "federated.json").read_text())
    per_round = {}
    for engine, rep in reports.items():
        for h in rep["history"]:
            per_round.setdefault(h["round"], {})[engine] = {f"{e['dataset']}_wf1": e["weighted_f1"]
                                                            for e in h.get("eval") or [] if "weighted_f1" in e}
    cache.save(key, {"rounds": args.loop_rounds, "per_round": per_round, "simulation_s": round(sim_s, 1),
                     "loopback_s": round(dep_s, 1), "num_banks": cfg.federation.num_banks,
                     "local_steps": cfg.federation.local_steps, "banks_rows": [sum(1 for _ in open(Path(f, "sentiment.jsonl")))
                                                                               for f in folders]})


# -- report ----------------------------------------------------------------------------------------------------------
def scrub_cost_summary(f1: dict, rows: list) -> list[str]:
    """Each scrubbed variant minus raw, paired by seed (same rows, order and initial adapter), per test set: mean,
    standard deviation and range over the seeds; a summary row per variant and set is appended to `rows`."""
    import statistics

    by_seed: dict[tuple, dict] = {}
    for k, v in f1.items():
        by_seed.setdefault((v["steps"], int(k.rsplit(":", 1)[1])), {})[v["variant"]] = v
    diffs: dict[tuple, dict[str, list]] = {}
    for (steps, seed), p in sorted(by_seed.items()):
        if "raw" not in p:
            continue
        for name, v in p.items():
            if name != "raw":
                for ds in p["raw"]["scores"]:
                    diffs.setdefault((steps, name), {}).setdefault(ds, []).append(
                        (seed, v["scores"][ds]["weighted_f1"] - p["raw"]["scores"][ds]["weighted_f1"]))
    md = []
    for (steps, name), per_ds in sorted(diffs.items()):
        parts = []
        for ds, d in per_ds.items():
            vals = [x for _, x in d]
            mean = statistics.fmean(vals)
            sd = statistics.stdev(vals) if len(vals) > 1 else None
            rows.append({"section": "f1 scrub cost", "what": f"{name} minus raw, {steps} steps", "dataset": ds,
                         "seeds": [s_ for s_, _ in d], "mean_diff": round(mean, 4),
                         "sd_diff": None if sd is None else round(sd, 4),
                         "min_diff": round(min(vals), 4), "max_diff": round(max(vals), 4),
                         "within_1_point": abs(mean) <= 0.01})
            parts.append(f"{ds} {mean:+.4f} (" + (f"sd {sd:.4f}; " if sd is not None else "") + "per seed "
                         + ", ".join(f"{x:+.4f}" for x in vals) + ")")
        label = "one seed: a single paired difference, not an estimate of the mean" if len(vals) == 1 else \
            f"mean over {len(vals)} seeds"
        md.append(f"{name} minus raw, {steps} steps ({label}): " + "; ".join(parts) + ".")
    return md


def report(args, cache: CellCache) -> None:
    rows, md = [], []
    c = cache.cells
    if "cost" in c or "cost:partial" in c:
        cost = c.get("cost") or c["cost:partial"]
        s = cost["sizes"]
        for phase in [p for p in ("check_no_pii", "check_with_pii", "training_set") if p in cost]:
            rows.append({"section": "cost", "what": {"check_no_pii": "data check, no PII scan",
                                                       "check_with_pii": "data check with the PII scan",
                                                       "training_set": "training-set build (read, scrub, tokenise)"}
                         [phase], "rows": s["sentiment_rows"], "transactions": s["transactions"],
                         "wall_s": cost[phase]["wall_s"], "peak_rss_mb": cost[phase]["peak_rss_mb"]})
        ts = cost.get("training_set", {"examples": "-", "test_rows": "-", "aml_test": "-", "scrub": "not yet measured"})
        md.append(f"Training-set build: {ts['examples']} examples, {ts['test_rows']} local test rows, "
                  f"{ts['aml_test']} local AML test cases; scrub counts {ts['scrub']}.")
        md.append(f"Data card PII counts (sentiment rows): {cost.get('card', {}).get('pii_in_sentiment')}.")
    if "recall" in c:
        r = c["recall"]
        for typ, v in r["per_type"].items():
            rows.append({"section": "recall", "what": typ, "planted": v["planted"], "removed": v["removed"],
                         "recall": v["recall"]})
        low = min(r["per_type"].items(), key=lambda kv: kv[1]["recall"])
        md.append(f"Scrub recall over {r['texts']} bank-style texts (seed {r['seed']}): lowest {low[0]} "
                  f"{low[1]['recall']:.4f}; {r['wall_s']} s.")
    f1 = {k: v for k, v in c.items() if k.startswith("f1:")}
    for k, v in sorted(f1.items()):
        seed = int(k.rsplit(":", 1)[1])
        for ds, sc in v["scores"].items():
            rows.append({"section": "f1", "what": f"{v['variant']} rows, {v['steps']} steps", "seed": seed,
                         "dataset": ds, "n": sc["n"], "weighted_f1": sc["weighted_f1"], "weighted_f1_ci95": sc["ci95"],
                         "train_s": v["train_s"], "scrub_s": v["scrub_s"]})
    md.extend(scrub_cost_summary(f1, rows))
    for k, v in sorted(c.items()):
        if not k.startswith("loopback:"):
            continue
        for rnd, engines in sorted(v["per_round"].items(), key=lambda kv: int(kv[0])):
            for engine, scores in engines.items():
                rows.append({"section": "loopback", "what": engine, "round": int(rnd),
                             **{f"{m}": round(x, 4) for m, x in scores.items()}})
        md.append(f"Loopback: {v['num_banks']} banks, {v['rounds']} rounds x {v['local_steps']} local steps; rows "
                  f"per bank folder {v['banks_rows']}; simulation {v['simulation_s']} s, loopback {v['loopback_s']} s.")
    missing = [s for s in SECTIONS if not any(k == s or k.startswith(f"{s}:") for k in c)]
    if missing:
        md.append(f"Not yet measured: {', '.join(missing)} (run the script again with those sections).")
    finish_results(Path(args.out), benchmark="bank_data", config={"args": {k: v for k, v in vars(args).items()
                                                                              if k != "build_training_set"}},
                   seed=args.seed, rows=rows, extra={"cells": c}, md_extra="\n\n".join(md),
                   title=f"A bank's own data folder: cost, scrub recall, scrubbed vs raw F1, loopback "
                         f"({cpu_info()['cpu_model']})")


def main() -> None:
    if "--build-training-set" in sys.argv:  # the cost section's child process
        i = sys.argv.index("--build-training-set")
        config = sys.argv[sys.argv.index("--config") + 1] if "--config" in sys.argv else None
        build_training_set(sys.argv[i + 1], config)
        return
    ap = benchmark_parser("bank_data", __doc__, config=None)
    ap.add_argument("--sections", default=",".join(SECTIONS))
    ap.add_argument("--rows", type=int, default=10_000)
    ap.add_argument("--transactions", type=int, default=100_000)
    ap.add_argument("--recall-texts", type=int, default=2000)
    ap.add_argument("--recall-seed", type=int, default=2, help="the gate benchmark uses seed 1")
    ap.add_argument("--f1-steps", type=int, default=300)
    ap.add_argument("--f1-variants", default="raw,scrubbed", help=f"of {', '.join(F1_VARIANTS)}")
    ap.add_argument("--loop-rounds", type=int, default=2)
    ap.add_argument("--timeout-s", type=float, default=3600)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a key of the loopback scenario")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    from fedfingpt.common.tasks.sentiment_data import data_dir_from_env

    data_dir = str(data_dir_from_env(None))
    work = Path(args.work)
    cache = CellCache(work)
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        ap.error(f"unknown sections {sorted(unknown)}; choose from {', '.join(SECTIONS)}")
    for s in sections:
        log.info("section %s", s)
        if s == "cost":
            section_cost(args, cache, work, data_dir)
        elif s == "recall":
            section_recall(args, cache)
        elif s == "f1":
            section_f1(args, cache, data_dir)
        else:
            section_loopback(args, cache, work, data_dir)
        report(args, cache)
    if not sections:  # --sections '': rewrite the results from the cache alone
        report(args, cache)


if __name__ == "__main__":
    main()
