"""Every LoRA aggregation strategy side by side on SmolLM2-135M-Instruct, 5 banks, under Dirichlet label skew
(alpha 0.1, 0.5, 1.0) and source skew, with centralized training on the union of the banks' rows as the ceiling.

Every cell trains the same steps (rounds x local steps x banks); the server scores the final global adapter on a
seeded sample of FPB test and TFNS valid. FedSA-LoRA has no global model: its row is the mean over banks of each
bank's own model (shared A + the bank's B) on the same rows. Cells are cached in the run folder, so an interrupted
benchmark continues where it stopped; the result files are rewritten after every cell.
Writes benchmarks/results/aggregation.{json,md,png}.
Usage: python benchmarks/aggregation.py [--partitions dirichlet-0.1,source] [--strategies fedavg,ffa_lora]
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np
import torch
from fedfingpt.client.bank import bank_rows
from fedfingpt.client.train import train
from fedfingpt.common.adapter import get_lora_arrays, set_lora_arrays
from fedfingpt.common.config import STRATEGY_NAMES, load_config
from fedfingpt.common.evaluate import evaluate_sentiment, sample_rows
from fedfingpt.common.report import TreeRSS, machine_info, save_figure, write_results
from fedfingpt.common.tasks.sentiment import encode_sentiment
from fedfingpt.common.tasks.sentiment_data import sentiment_splits
from fedfingpt.server.checkpoint import latest_checkpoint, peft_names_to_ours
from fedfingpt.simulations.run import simulate

from _shared import CellCache, fresh_model  # benchmarks/_shared.py

HERE = Path(__file__).resolve().parent
log = logging.getLogger("bench")
PARTITIONS = {"dirichlet-0.1": {"kind": "dirichlet", "alpha": 0.1}, "dirichlet-0.5": {"kind": "dirichlet", "alpha": 0.5},
              "dirichlet-1.0": {"kind": "dirichlet", "alpha": 1.0}, "source": {"kind": "source"}}
HETLORA_RANKS = {0: 4, 1: 4}  # two banks with small machines train rank 4; the others the global rank 8


def score(model, tok, tests, cfg) -> dict:
    rows = evaluate_sentiment(model, tok, tests, cfg.eval.model_copy(update={"method": "likelihood", "calibrate": False}),
                              max_length=cfg.data.max_length, progress=False)
    return {**{r["dataset"]: r["weighted_f1"] for r in rows}, **{f"{r['dataset']}_macro": r["macro_f1"] for r in rows}}



def centralized(cfg, banks: int, total_steps: int, tests) -> dict:
    model, loaded = fresh_model(cfg)
    rows = [r for b in range(banks) for r in bank_rows(cfg, b, banks)[0]]
    enc = encode_sentiment(loaded.tokenizer, rows, cfg.data.max_length)
    tcfg = cfg.training.model_copy(update={"max_steps": total_steps, "eval_every": None, "warmup_ratio": 0.05})
    t0 = time.perf_counter()
    with TreeRSS() as rss:
        train(model, enc, tcfg, pad_id=loaded.tokenizer.pad_token_id, progress=False)
        s = score(model, loaded.tokenizer, tests, cfg)
    return {**s, "mb_up": 0.0, "mb_down": 0.0, "wall_s": round(time.perf_counter() - t0, 1),
            "peak_rss_mb": round(rss.peak / 2**20)}


def federated(cfg, run_dir: Path, tests) -> dict:
    t0 = time.perf_counter()
    with TreeRSS() as rss:
        out = simulate(cfg, run_dir, progress=False)
    wall = time.perf_counter() - t0
    trains = [h["train"] for h in out["history"] if h.get("train")]
    if not any(t["banks"] for t in trains):
        raise RuntimeError(f"{run_dir}: no bank update was aggregated; see the log above")
    up = np.mean([b["bytes_up"] for t in trains for b in t["banks"]]) / 1e6
    down = np.mean([b["bytes_down"] for t in trains for b in t["banks"]]) / 1e6
    cell = {"mb_up": round(float(up), 3), "mb_down": round(float(down), 3), "wall_s": round(wall, 1),
            "peak_rss_mb": round(rss.peak / 2**20), "dropped": sum(len(t["dropped"]) for t in trains),
            "curve_loss": [round(sum(b["train_loss"] * b["num_examples"] for b in t["banks"])
                                 / sum(b["num_examples"] for b in t["banks"]), 4) if t["banks"] else None
                           for t in trains]}
    last = out["history"][-1]
    if last["eval"]:
        cell.update({e["dataset"]: e["weighted_f1"] for e in last["eval"]})
        cell.update({f"{e['dataset']}_macro": e["macro_f1"] for e in last["eval"]})
    else:  # FedSA-LoRA: each bank's own model, scored on the same rows
        model, loaded = fresh_model(cfg)
        rnd, _, saved = latest_checkpoint(run_dir, loaded.base_sha256)
        set_lora_arrays(model, peft_names_to_ours(saved, list(get_lora_arrays(model))), source=f"round {rnd}")
        per_bank = []
        for b in range(cfg.federation.num_banks):
            z = np.load(run_dir / "banks" / f"bank-{b}" / "local_lora_B.npz")
            set_lora_arrays(model, {k: z[k] for k in z.files if k != "__round"}, source=f"bank {b} B", partial=True)
            per_bank.append(score(model, loaded.tokenizer, tests, cfg))
        cell.update({k: float(np.mean([p[k] for p in per_bank])) for k in ("fpb", "tfns")})
        cell.update({f"{k}_macro": float(np.mean([p[f"{k}_macro"] for p in per_bank])) for k in ("fpb", "tfns")})
        cell["per_bank"] = per_bank
    return cell


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--config", default=str(HERE.parent / "configs" / "federated.yaml"))
    ap.add_argument("--banks", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--local-steps", type=int, default=3)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--eval-rows", type=int, default=150, help="rows of FPB test and TFNS valid (seeded sample)")
    ap.add_argument("--partitions", default=",".join(PARTITIONS))
    ap.add_argument("--strategies", default=",".join(STRATEGY_NAMES))
    ap.add_argument("--client-cpus", type=float, default=2.0, help="2: banks train one at a time with 2 threads")
    ap.add_argument("--work", default="runs/benchmarks/aggregation", help="run folders and the cell cache")
    ap.add_argument("--out", default=str(HERE / "results" / "aggregation"))
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    torch.set_num_threads(2)
    t_all = time.perf_counter()
    base = load_config(args.config, {
        "federation.num_banks": args.banks, "federation.rounds": args.rounds, "federation.local_steps": args.local_steps,
        "federation.client_eval": False, "federation.resume": False, "federation.min_banks": args.banks - 1,
        "federation.server_eval_limit": args.eval_rows, "federation.server_eval_every": 0, "training.lr": args.lr,
        "federation.client_cpus": args.client_cpus,
        "data.tasks": ["sentiment"], "data.max_length": 256,  # the sentiment federation (the default adds AML)
    })
    total_steps = args.banks * args.rounds * args.local_steps
    splits = sentiment_splits(base.data.data_dir)
    tests = {k: sample_rows(splits["test"][k], args.eval_rows, base.data.seed) for k in ("fpb", "tfns")}
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    cache = CellCache(work, {"banks": args.banks, "rounds": args.rounds, "local_steps": args.local_steps,
                             "lr": args.lr, "config": args.config, "eval_rows": args.eval_rows,
                             "client_cpus": args.client_cpus})
    cells = cache.cells

    def save_cell(key: str, cell: dict) -> None:
        cache.save(key, cell)
        write(args, base, cells, total_steps, time.perf_counter() - t_all, work, tests)

    if "centralized" not in cells:
        log.info("centralized: %d steps on the union of the banks' rows", total_steps)
        save_cell("centralized", centralized(base, args.banks, total_steps, tests))
    for part in args.partitions.split(","):
        for strategy in args.strategies.split(","):
            key = f"{part}/{strategy}"
            if key in cells:
                continue
            cfg = base.model_copy(deep=True)
            cfg.name = f"agg-{part}-{strategy}"
            cfg.federation.partition = cfg.federation.partition.model_copy(update=PARTITIONS[part])
            cfg.federation.strategy = strategy
            if strategy == "hetlora":
                cfg.federation.aggregation.bank_ranks = dict(HETLORA_RANKS)
            cfg = type(cfg).model_validate(cfg.model_dump())
            log.info("%s: %d banks x %d rounds x %d local steps", key, args.banks, args.rounds, args.local_steps)
            cell = federated(cfg, work / cfg.name, tests)
            log.info("%s: fpb %.3f tfns %.3f (%.0f s)", key, cell["fpb"], cell["tfns"], cell["wall_s"])
            save_cell(key, cell)
    write(args, base, cells, total_steps, time.perf_counter() - t_all, work, tests)
    log.info("wrote %s.{json,md,png}", args.out)


LABELS = {"fedavg": "FedAvg", "fedprox": "FedProx", "fedavgm": "FedAvgM", "fedadam": "FedAdam", "fedyogi": "FedYogi",
          "ffa_lora": "FFA-LoRA", "fedsa_lora": "FedSA-LoRA (own B)", "fedex_lora": "FedEx-LoRA (exact)",
          "hetlora": "HetLoRA (ranks 4,4,8,8,8)", "median": "Median", "trimmed_mean": "Trimmed mean",
          "norm_bound": "Norm bound"}


def macro(cell: dict, key: str, work: Path, run: str):
    """Macro F1 (cells cached before it was recorded: read back from the run's own report)."""
    if f"{key}_macro" in cell:
        return cell[f"{key}_macro"]
    report = work / run / "federated.json"
    if report.is_file():
        for e in json.loads(report.read_text())["history"][-1]["eval"]:
            if e["dataset"] == key:
                return e["macro_f1"]
    return None


def write(args, base, cells: dict, total_steps: int, wall: float, work: Path, tests: dict) -> None:
    from fedfingpt.common.metrics import classification_report
    from fedfingpt.common.tasks.sentiment_data import LABELS as CLASSES

    rows = []
    # the floor: a model that answers "neutral" to everything (what label-skewed federations collapse to)
    floor = {k: classification_report([r.label for r in v], ["neutral"] * len(v), CLASSES) for k, v in tests.items()}
    rows.append({"strategy": "always 'neutral' (floor)", "partition": "-", "fpb_wf1": floor["fpb"]["weighted_f1"],
                 "tfns_wf1": floor["tfns"]["weighted_f1"], "mean_wf1": (floor["fpb"]["weighted_f1"]
                                                                         + floor["tfns"]["weighted_f1"]) / 2,
                 "fpb_macro": floor["fpb"]["macro_f1"], "tfns_macro": floor["tfns"]["macro_f1"]})
    c = cells.get("centralized")
    if c:
        rows.append({"strategy": "centralized (ceiling)", "partition": "-", "fpb_wf1": c["fpb"], "tfns_wf1": c["tfns"],
                     "mean_wf1": (c["fpb"] + c["tfns"]) / 2, "fpb_macro": c.get("fpb_macro"),
                     "tfns_macro": c.get("tfns_macro"), "mb_up": 0.0, "mb_down": 0.0, "wall_s": c["wall_s"],
                     "peak_rss_mb": c["peak_rss_mb"]})
    for key, cell in cells.items():
        if key == "centralized":
            continue
        part, strategy = key.split("/")
        run = f"agg-{part}-{strategy}"
        rows.append({"strategy": LABELS.get(strategy, strategy), "partition": part, "fpb_wf1": cell["fpb"],
                     "tfns_wf1": cell["tfns"], "mean_wf1": (cell["fpb"] + cell["tfns"]) / 2,
                     "fpb_macro": macro(cell, "fpb", work, run), "tfns_macro": macro(cell, "tfns", work, run),
                     "mb_up": cell["mb_up"],
                     "mb_down": cell["mb_down"], "wall_s": cell["wall_s"], "peak_rss_mb": cell["peak_rss_mb"]})
    order = {p: i for i, p in enumerate(["-", *PARTITIONS])}
    rows.sort(key=lambda r: (order.get(r["partition"], 99), -r["mean_wf1"]))
    out = Path(args.out)
    write_results(
        out, benchmark="aggregation", config=base.model_dump(mode="json"), seed=base.training.seed, rows=rows,
        columns=["partition", "strategy", "fpb_wf1", "tfns_wf1", "mean_wf1", "fpb_macro", "tfns_macro", "mb_up",
                 "mb_down", "wall_s", "peak_rss_mb"],
        title=f"LoRA aggregation strategies, {base.model.base}, {args.banks} banks, {args.rounds} rounds x "
              f"{args.local_steps} local steps x batch {base.training.batch_size} ({total_steps} steps per cell), "
              f"weighted F1 on {args.eval_rows} rows of FPB test and TFNS valid",
        extra={"eval_rows": args.eval_rows, "total_steps": total_steps, "hetlora_bank_ranks": HETLORA_RANKS,
               "cells": cells, "wall_s": round(wall, 1), "machine": machine_info()},
    )
    plot(rows, out.with_suffix(".png"))


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    parts = [p for p in PARTITIONS if any(r["partition"] == p for r in rows)]
    strategies = list(dict.fromkeys(r["strategy"] for r in rows if r["partition"] != "-"))
    if not parts:
        return
    fig, ax = plt.subplots(figsize=(11, 4.2))
    width = 0.8 / len(parts)
    for j, p in enumerate(parts):
        vals = {r["strategy"]: r["mean_wf1"] for r in rows if r["partition"] == p}
        xs = [i + (j - (len(parts) - 1) / 2) * width for i in range(len(strategies))]
        ax.bar(xs, [vals.get(s, np.nan) for s in strategies], width, label=p)
    ceiling = next((r["mean_wf1"] for r in rows if r["strategy"].startswith("centralized")), None)
    if ceiling is not None:
        ax.axhline(ceiling, color="k", ls="--", lw=1, label="centralized")
    floor = next((r["mean_wf1"] for r in rows if r["strategy"].startswith("always")), None)
    if floor is not None:
        ax.axhline(floor, color="grey", ls=":", lw=1, label="always 'neutral'")
    ax.set_xticks(range(len(strategies)), strategies, rotation=30, ha="right", fontsize=8)
    ax.set(ylabel="weighted F1 (mean of FPB, TFNS)", ylim=(0, 1), title="LoRA aggregation under non-IID banks")
    ax.legend(fontsize=8, ncol=len(parts) + 1)
    fig.tight_layout()
    save_figure(fig, path)


if __name__ == "__main__":
    main()
