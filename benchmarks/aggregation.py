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

import json
import logging
import time
from pathlib import Path

import numpy as np
import torch
from fedfingpt.simulations.bank_folders import simulated_bank_rows
from fedfingpt.common.train import train
from fedfingpt.common.adapter import get_lora_arrays, set_lora_arrays
from fedfingpt.common.config import load_config
from fedfingpt.server.strategies import STRATEGY_NAMES
from fedfingpt.common.evaluate import evaluate_sentiment, sample_rows
from fedfingpt.common.report import TreeRSS, machine_info, save_figure, write_results
from fedfingpt.common.tasks.sentiment import encode_sentiment
from fedfingpt.common.tasks.sentiment_data import sentiment_splits
from fedfingpt.server.checkpoint import latest_checkpoint, peft_names_to_ours
from fedfingpt.simulations.run import simulate

from _shared import CellCache, benchmark_parser, federation_args, fresh_model# benchmarks/_shared.py

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
    rows = [r for b in range(banks) for r in simulated_bank_rows(cfg, b, banks)[0]]
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
    ap = benchmark_parser("aggregation", __doc__, config="federated.yaml")
    federation_args(ap, banks=5, rounds=4, local_steps=3, lr=1e-3)
    ap.add_argument("--partitions", default=",".join(PARTITIONS))
    ap.add_argument("--strategies", default=",".join(STRATEGY_NAMES))
    ap.add_argument("--client-cpus", type=float, default=2.0, help="2: banks train one at a time with 2 threads")
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
    plot(rows, cells, out.with_suffix(".png"))


def plot(rows: list[dict], cells: dict, path: Path) -> None:
    """Left: every strategy under every partition. Middle: the score against the skew (the curve the alpha 0.1
    target is read from). Right: the banks' local training loss per round, FedAvg under each partition."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    parts = [p for p in PARTITIONS if any(r["partition"] == p for r in rows)]
    strategies = list(dict.fromkeys(r["strategy"] for r in rows if r["partition"] != "-"))
    if not parts:
        return
    ceiling = next((r["mean_wf1"] for r in rows if r["strategy"].startswith("centralized")), None)
    floor = next((r["mean_wf1"] for r in rows if r["strategy"].startswith("always")), None)
    fig, (ax, ax_skew, ax_loss) = plt.subplots(1, 3, figsize=(17, 4.8), gridspec_kw={"width_ratios": [2.6, 1, 1]})
    width = 0.8 / len(parts)
    score = {(r["partition"], r["strategy"]): r["mean_wf1"] for r in rows}
    for j, p in enumerate(parts):
        xs = [i + (j - (len(parts) - 1) / 2) * width for i in range(len(strategies))]
        ax.bar(xs, [score.get((p, s), np.nan) for s in strategies], width, label=p)
    for a in (ax, ax_skew):
        if ceiling is not None:
            a.axhline(ceiling, color="k", ls="--", lw=1, label="centralized")
        if floor is not None:
            a.axhline(floor, color="grey", ls=":", lw=1, label="always 'neutral'")
    ax.set_xticks(range(len(strategies)), strategies, rotation=30, ha="right", fontsize=8)
    ax.set(ylabel="weighted F1 (mean of FPB, TFNS)", ylim=(0, 1), title="LoRA aggregation under non-IID banks")
    ax.legend(fontsize=8, ncol=3, loc="upper right")

    # the curve: score against label skew (alpha, log axis), source skew as a point of its own on the right
    alphas = [(PARTITIONS[p]["alpha"], p) for p in parts if "alpha" in PARTITIONS[p]]
    x_source = 2.0 if len(alphas) else 1.0
    # FedAvg and each partition's best strategy in colour, the others in grey
    best = {max((s for s in strategies if (p, s) in score), key=lambda s: score[(p, s)]) for p in parts}
    shown = [s for s in strategies if s == LABELS["fedavg"] or s in best]
    for s in [s for s in strategies if s not in shown] + shown:
        style = {"marker": "o", "ms": 4, "lw": 1.5, "label": s} if s in shown else {"color": "0.75", "lw": 0.8}
        pts = [(a, score[(p, s)]) for a, p in alphas if (p, s) in score]
        line = ax_skew.plot(*zip(*pts), **style)[0] if pts else None
        if ("source", s) in score:
            ax_skew.plot([x_source], [score[("source", s)]], marker="s", ms=5 if s in shown else 3, ls="",
                         color=line.get_color() if line else "0.75")
    ax_skew.set_xscale("log")
    with_source = ["source"] if "source" in parts else []
    ax_skew.set_xticks([a for a, _ in alphas] + [x_source] * len(with_source),
                       [f"{a:g}" for a, _ in alphas] + with_source)
    ax_skew.minorticks_off()
    ax_skew.set(xlabel="Dirichlet alpha (smaller = more label skew)", ylim=(0, 1),
                title="score against skew (grey: the other strategies)")
    ax_skew.legend(fontsize=7, loc="lower right")

    for p in parts:
        curve = (cells.get(f"{p}/fedavg") or {}).get("curve_loss")
        if curve:
            ax_loss.plot(range(1, len(curve) + 1), curve, marker="o", label=f"FedAvg, {p}")
    ax_loss.xaxis.get_major_locator().set_params(integer=True)
    ax_loss.set(xlabel="round", ylabel="banks' local training loss (row-weighted)",
                title="what the banks fit locally")
    ax_loss.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)

if __name__ == "__main__":
    main()
