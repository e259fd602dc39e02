"""Federated vs centralized vs local-only on SmolLM2-135M-Instruct, 5 banks, Dirichlet alpha 0.5 and 0.1.

Every setting trains the same total number of optimizer steps (rounds x local steps x banks); local-only gives
each bank its federated share of steps. Writes benchmarks/results/federated_sentiment.{json,md,png}.
Usage: python benchmarks/federated_sentiment.py [--rounds 3] [--local-steps 8] [--eval-rows 150]
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch
from fedfingpt.client.app import local_training_config
from fedfingpt.simulations.bank_folders import simulated_bank_rows
from fedfingpt.common.train import train
from fedfingpt.common.adapter import set_lora_arrays
from fedfingpt.common.config import load_config
from fedfingpt.common.evaluate import evaluate_sentiment, sample_rows
from fedfingpt.common.report import TreeRSS, write_results
from fedfingpt.common.tasks.sentiment import encode_sentiment
from fedfingpt.common.tasks.sentiment_data import sentiment_splits
from fedfingpt.server.checkpoint import latest_checkpoint, peft_names_to_ours
from fedfingpt.simulations.run import simulate

from _shared import benchmark_parser, federation_args, federation_overrides, fresh_model  # benchmarks/_shared.py

HERE = Path(__file__).resolve().parent
log = logging.getLogger("bench")



def score(model, tok, tests, cfg) -> dict:
    rows = evaluate_sentiment(model, tok, tests, cfg.eval.model_copy(update={"method": "likelihood"}),
                              max_length=cfg.data.max_length, progress=False)
    return {r["dataset"]: r for r in rows}


def main() -> None:
    ap = benchmark_parser("federated_sentiment", __doc__, config="federated.yaml", work=False)
    federation_args(ap, banks=5, rounds=3, local_steps=8)
    ap.add_argument("--alphas", default="0.5,0.1")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    torch.set_num_threads(2)
    t_all = time.perf_counter()
    base = load_config(args.config, {
        **federation_overrides(args), "federation.server_eval_limit": 100,
        "data.tasks": ["sentiment"], "data.max_length": 256,  # the sentiment federation (the default adds AML)
        "federation.strategy": "fedavg",  # the baseline against local and centralized training
    })
    total_steps = args.banks * args.rounds * args.local_steps
    splits = sentiment_splits(base.data.data_dir)
    tests = {k: sample_rows(splits["test"][k], args.eval_rows, base.data.seed) for k in ("fpb", "tfns")}
    rows: list[dict] = []

    def add(setting: str, alpha, scores: dict, **extra) -> None:
        row = {"setting": setting, "alpha": alpha, "steps": extra.pop("steps", total_steps)}
        for k in ("fpb", "tfns"):
            row[f"{k}_weighted_f1"] = scores[k]["weighted_f1"]
            row[f"{k}_accuracy"] = scores[k]["accuracy"]
        row.update(extra)
        rows.append(row)
        log.info("%s", row)

    # centralized: the same steps on the union of the banks' rows (alpha does not matter: same pool)
    log.info("centralized: %d steps", total_steps)
    model, loaded = fresh_model(base)
    pool_rows = [r for b in range(args.banks) for r in simulated_bank_rows(base, b, args.banks)[0]]
    enc = encode_sentiment(loaded.tokenizer, pool_rows, base.data.max_length)
    tcfg = base.training.model_copy(update={"max_steps": total_steps, "eval_every": None, "warmup_ratio": 0.05})
    t0 = time.perf_counter()
    res = train(model, enc, tcfg, pad_id=loaded.tokenizer.pad_token_id, progress=False)
    add("centralized", None, score(model, loaded.tokenizer, tests, base), wall_s=round(time.perf_counter() - t0, 1),
        train_s=round(res.wall_s, 1), mb_per_round=0.0)
    del model

    for alpha in [float(a) for a in args.alphas.split(",")]:
        cfg = base.model_copy(deep=True)
        cfg.federation.partition.alpha = alpha
        cfg.name = f"bench-fed-alpha{alpha}"
        run_dir = Path("runs/benchmarks") / cfg.name
        log.info("federated alpha=%s: %d banks x %d rounds x %d local steps", alpha, args.banks, args.rounds,
                 args.local_steps)
        t0 = time.perf_counter()
        with TreeRSS() as rss:
            out = simulate(cfg, run_dir)
        wall = time.perf_counter() - t0
        model, loaded = fresh_model(cfg)
        rnd, _, saved = latest_checkpoint(run_dir, loaded.base_sha256)
        set_lora_arrays(model, peft_names_to_ours(saved, [n for n, _ in _lora_names(model)]))
        trains = [h["train"] for h in out["history"] if h.get("train")]
        round_s = [t["round_s"] for t in trains]
        sum_train = [sum(b["train_s"] for b in t["banks"]) for t in trains]
        max_train = [max(b["train_s"] for b in t["banks"]) for t in trains]
        mb = trains[-1]["banks"][0]["bytes_up"] / 1e6
        add("federated", alpha, score(model, loaded.tokenizer, tests, cfg), wall_s=round(wall, 1),
            round_s=round(sum(round_s) / len(round_s), 1), sum_client_train_s=round(sum(sum_train) / len(sum_train), 1),
            max_client_train_s=round(sum(max_train) / len(max_train), 1), mb_per_round=round(mb, 3),
            peak_rss_mb=round(rss.peak / 2**20), curve=[{k: v for k, v in h.items() if k in ("round",)} |
                                                       {e["dataset"]: e["weighted_f1"] for e in h["eval"]}
                                                       for h in out["history"]])
        del model

        # local-only: each bank alone, its federated share of steps, same local settings
        per_bank = []
        for b in range(args.banks):
            model, loaded = fresh_model(cfg)
            train_rows, _ = simulated_bank_rows(cfg, b, args.banks)
            enc = encode_sentiment(loaded.tokenizer, train_rows, cfg.data.max_length)
            lcfg = local_training_config(cfg, 1, b).model_copy(update={"max_steps": args.rounds * args.local_steps})
            t0 = time.perf_counter()
            train(model, enc, lcfg, pad_id=loaded.tokenizer.pad_token_id, progress=False)
            s = score(model, loaded.tokenizer, tests, cfg)
            per_bank.append((b, len(train_rows), s, time.perf_counter() - t0))
            log.info("local-only alpha=%s bank %d (%d rows): fpb %.3f tfns %.3f", alpha, b, len(train_rows),
                     s["fpb"]["weighted_f1"], s["tfns"]["weighted_f1"])
            del model
        mean = {k: {"weighted_f1": sum(p[2][k]["weighted_f1"] for p in per_bank) / len(per_bank),
                    "accuracy": sum(p[2][k]["accuracy"] for p in per_bank) / len(per_bank)} for k in ("fpb", "tfns")}
        worst = min(per_bank, key=lambda p: p[2]["fpb"]["weighted_f1"] + p[2]["tfns"]["weighted_f1"])
        add("local-only (mean of banks)", alpha, mean, steps=args.rounds * args.local_steps, mb_per_round=0.0,
            banks=[{"bank": b, "rows": n, "fpb": s["fpb"]["weighted_f1"], "tfns": s["tfns"]["weighted_f1"]}
                   for b, n, s, _ in per_bank])
        add(f"local-only (worst bank: {worst[0]}, {worst[1]} rows)", alpha, worst[2],
            steps=args.rounds * args.local_steps, mb_per_round=0.0)

    out = Path(args.out)
    write_results(
        out, benchmark="federated_sentiment", config=base.model_dump(mode="json"), seed=base.training.seed, rows=rows,
        columns=["setting", "alpha", "steps", "fpb_weighted_f1", "tfns_weighted_f1", "fpb_accuracy", "tfns_accuracy",
                 "mb_per_round", "round_s", "sum_client_train_s", "max_client_train_s", "wall_s", "peak_rss_mb"],
        title=f"Federated vs centralized vs local-only, {base.model.base}, {args.banks} banks "
              f"({args.rounds} rounds x {args.local_steps} local steps x batch {base.training.batch_size})",
        extra={"eval_rows": args.eval_rows, "total_steps": total_steps, "wall_s": round(time.perf_counter() - t_all, 1)},
    )
    plot(rows, out.with_suffix(".png"))
    log.info("wrote %s.{json,md,png}", out)


def _lora_names(model):
    return [(n.replace(".default", ""), p) for n, p in model.named_parameters() if "lora_" in n]


def plot(rows, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 3.8))
    labels = [f"{r['setting'].split(' (')[0]}\n" + (f"a={r['alpha']}" if r["alpha"] is not None else "") +
              (" worst" if "worst" in r["setting"] else "") for r in rows]
    x = range(len(rows))
    ax.bar([i - 0.2 for i in x], [r["fpb_weighted_f1"] for r in rows], 0.4, label="FPB")
    ax.bar([i + 0.2 for i in x], [r["tfns_weighted_f1"] for r in rows], 0.4, label="TFNS")
    ax.set_xticks(list(x), labels, fontsize=7)
    ax.set(ylim=(0, 1), ylabel="weighted F1", title="same total steps per setting")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
