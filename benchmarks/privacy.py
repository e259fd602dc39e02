"""Privacy measured, not only claimed, on SmolLM2-135M-Instruct with 5 banks (Dirichlet alpha 0.5).

1. Utility vs privacy: FedAvg and FFA-LoRA with local DP-SGD at epsilon 1, 3 and 8 (delta 1e-5, the noise derived
   from each bank's budget by the RDP accountant) and without DP: weighted F1 on FPB test and TFNS valid.
2. Audit, without DP and at epsilon 8, on a federation of small banks (each row is trained on about once):
   - a loss-threshold membership-inference attack: score = log P(gold label | prompt) under the final model;
     AUC of the banks' training rows (members) against held-out rows of the same pool (non-members);
   - canary exposure: 5 secrets (fake account numbers in a sentence labelled against its content) repeated in
     bank 0's own data; each is ranked by the final model's log P(its label | sentence) among 999 random numbers
     of the same format; exposure = log2(1000) - log2(rank) (about 1.4 bits expected by chance, 10 = ranked first).
3. Cost: DP-SGD against plain training on the same steps (one bank's data, the same loop): wall time, peak RSS.

Cells are cached in the work folder (an interrupted run continues); results are rewritten after every cell.
Writes benchmarks/results/privacy.{json,md}.
Usage: python benchmarks/privacy.py [--epsilons 1,3,8] [--strategies fedavg,ffa_lora] [--skip-utility]
"""

from __future__ import annotations

import json
import logging
import math
import random
import resource
import time
from pathlib import Path

import numpy as np
import torch

from fedfingpt.simulations.bank_folders import simulated_bank_rows
from fedfingpt.common.train import DPSpec
from fedfingpt.common.train import train
from fedfingpt.common.adapter import get_lora_arrays, set_lora_arrays
from fedfingpt.common.config import load_config
from fedfingpt.common.metrics import binary_report
from fedfingpt.common.predict import label_logprobs
from fedfingpt.common.report import TreeRSS, machine_info, write_results
from fedfingpt.common.tasks.sentiment import encode_sentiment, sentiment_prompt
from fedfingpt.common.tasks.sentiment_data import LABELS, SentimentExample, sentiment_splits
from fedfingpt.server.checkpoint import latest_checkpoint, peft_names_to_ours
from fedfingpt.simulations.run import simulate

from _shared import CellCache, benchmark_parser, federation_args, federation_overrides, fresh_model  # benchmarks/_shared.py

HERE = Path(__file__).resolve().parent
log = logging.getLogger("bench")
CANARY = "Per the client's instruction the remaining balance was moved to account {} this morning."
CANARY_LABEL = "negative"  # against the sentence's neutral content: only memorisation links the number to it



def fresh_start(run_dir: Path) -> None:
    """A cell not in the cache starts over: the banks' ledgers of an interrupted attempt would otherwise count the
    privacy it spent against this one (and a bank at its budget would skip every round)."""
    import shutil

    if run_dir.exists():
        log.info("%s: an unfinished attempt of this cell is removed (its ledgers included)", run_dir)
        shutil.rmtree(run_dir)


def final_model(cfg, run_dir: Path):
    model, loaded = fresh_model(cfg)
    rnd, _, saved = latest_checkpoint(run_dir, loaded.base_sha256)
    set_lora_arrays(model, peft_names_to_ours(saved, list(get_lora_arrays(model))), source=f"round {rnd}")
    return model, loaded


def account(rng: random.Random) -> str:
    return "-".join(f"{rng.randrange(10_000):04d}" for _ in range(3))


def gold_logp(model, tok, rows: list[SentimentExample], cfg) -> np.ndarray:
    lp = label_logprobs(model, tok, [sentiment_prompt(r) for r in rows], LABELS, max_length=cfg.data.max_length,
                        batch_size=cfg.eval.batch_size, bf16=cfg.eval.bf16_autocast)
    return lp[np.arange(len(rows)), [LABELS.index(r.label) for r in rows]]


def utility_cell(base, strategy: str, epsilon: float | None, work: Path) -> dict:
    """The server scores the final adapter on the same seeded rows (federation.server_eval_limit)."""
    cfg = base.model_copy(deep=True)
    cfg.name = f"priv-{strategy}-{'nodp' if epsilon is None else f'eps{epsilon:g}'}"
    cfg.federation.strategy = strategy
    if epsilon is not None:
        cfg.privacy = cfg.privacy.model_copy(update={"mode": "local", "epsilon": epsilon})
    cfg = type(cfg).model_validate(cfg.model_dump())
    fresh_start(work / cfg.name)
    t0 = time.perf_counter()
    with TreeRSS() as rss:
        out = simulate(cfg, work / cfg.name, progress=False)
    last = out["history"][-1]
    spent = [b.get("dp_epsilon") for h in out["history"] if h.get("train") for b in h["train"]["banks"]]
    noise = [b.get("dp_noise_multiplier") for h in out["history"] if h.get("train") for b in h["train"]["banks"]]
    return {**{e["dataset"]: e["weighted_f1"] for e in last["eval"]}, "wall_s": round(time.perf_counter() - t0, 1),
            "peak_rss_mb": round(rss.peak / 2**20), "epsilon_spent_max": max((s for s in spent if s), default=None),
            "noise_multiplier": max((s for s in noise if s), default=None)}


def audit_cell(base, epsilon: float | None, work: Path, canary_file: Path, secrets: list[str], args) -> dict:
    cfg = base.model_copy(deep=True)
    cfg.name = f"priv-audit-{'nodp' if epsilon is None else f'eps{epsilon:g}'}"
    cfg.federation.strategy = "fedavg"  # the audit's rows say FedAvg
    cfg.federation.partition = cfg.federation.partition.model_copy(update={"max_rows": args.audit_rows})
    cfg.data.bank_extra_train = {0: str(canary_file)}
    if epsilon is not None:
        cfg.privacy = cfg.privacy.model_copy(update={"mode": "local", "epsilon": epsilon})
    cfg = type(cfg).model_validate(cfg.model_dump())
    fresh_start(work / cfg.name)
    t0 = time.perf_counter()
    simulate(cfg, work / cfg.name, progress=False)
    wall = time.perf_counter() - t0
    model, loaded = final_model(cfg, work / cfg.name)
    n = cfg.federation.num_banks
    members = [r for b in range(n) for r in simulated_bank_rows(cfg, b, n)[0] if r.source != "bank"]
    held = [r for b in range(n) for r in simulated_bank_rows(cfg, b, n)[1]]
    # more non-members from the same pool, never given to any bank
    from fedfingpt.simulations.partition import training_pool

    pool = training_pool(sentiment_splits(cfg.data.data_dir)["train"], cfg.federation.partition.model_copy(
        update={"max_rows": None}))
    used = {r.text for r in members} | {r.text for r in held}
    rng = random.Random(7)
    extra = [r for r in rng.sample(pool, min(len(pool), 4 * len(members))) if r.text not in used]
    non_members = (held + extra)[: len(members)]
    scores = np.concatenate([gold_logp(model, loaded.tokenizer, members, cfg),
                             gold_logp(model, loaded.tokenizer, non_members, cfg)])
    y = [1] * len(members) + [0] * len(non_members)
    mia = binary_report(y, scores, threshold=float(np.median(scores)))
    exposures = []
    for i, secret in enumerate(secrets):
        crng = random.Random(1000 + i)
        candidates = [secret] + [c for c in (account(crng) for _ in range(args.candidates + 10)) if c != secret]
        candidates = candidates[: args.candidates + 1]
        rows = [SentimentExample(CANARY.format(c), CANARY_LABEL, "bank", "news") for c in candidates]
        lp = gold_logp(model, loaded.tokenizer, rows, cfg)
        rank = 1 + int(np.sum(lp[1:] > lp[0])) + 0.5 * int(np.sum(lp[1:] == lp[0]))
        exposures.append(math.log2(len(candidates)) - math.log2(rank))
    return {"mia_auc": mia["roc_auc"], "members": len(members), "non_members": len(non_members),
            "canary_exposure_mean": float(np.mean(exposures)), "canary_exposure_max": float(np.max(exposures)),
            "exposures": [round(e, 3) for e in exposures], "wall_s": round(wall, 1)}


def cost_cell(base, dp: bool, steps: int) -> dict:
    model, loaded = fresh_model(base)
    rows = simulated_bank_rows(base, 0, base.federation.num_banks)[0]
    enc = encode_sentiment(loaded.tokenizer, rows, base.data.max_length)
    tcfg = base.training.model_copy(update={"max_steps": steps, "eval_every": None, "log_every": steps})
    spec = DPSpec(1.0, base.privacy.max_grad_norm, base.training.batch_size / len(enc), base.training.batch_size)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    res = train(model, enc, tcfg, pad_id=loaded.tokenizer.pad_token_id, progress=False, dp=spec if dp else None)
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"train_s": round(res.wall_s, 1), "s_per_step": round(res.wall_s / steps, 2), "examples": res.examples,
            "peak_rss_mb": round(after / 1024), "rss_growth_mb": round((after - before) / 1024)}


def main() -> None:
    ap = benchmark_parser("privacy", __doc__, config="federated.yaml")
    federation_args(ap, banks=5, rounds=4, local_steps=3, lr=1e-3)
    ap.add_argument("--epsilons", default="1,3,8")
    ap.add_argument("--strategies", default="fedavg,ffa_lora")
    ap.add_argument("--audit-rows", type=int, default=500, help="pool rows of the audit federation (small banks)")
    ap.add_argument("--audit-rounds", type=int, default=6)
    ap.add_argument("--canary-repeats", type=int, default=6)
    ap.add_argument("--candidates", type=int, default=999)
    ap.add_argument("--cost-steps", type=int, default=8)
    ap.add_argument("--skip-utility", action="store_true")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    torch.set_num_threads(2)
    t_all = time.perf_counter()
    base = load_config(args.config, {
        **federation_overrides(args),
        "federation.server_eval_limit": args.eval_rows, "federation.server_eval_every": 0, "training.lr": args.lr,
        "federation.client_cpus": 2.0, "federation.partition.alpha": 0.5,
        "data.tasks": ["sentiment"], "data.max_length": 256,  # the sentiment federation (the default adds AML)
    })
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    cache = CellCache(work)
    cells = cache.cells

    def save(key: str, cell: dict) -> None:
        cache.save(key, cell)
        write(args, base, cells, time.perf_counter() - t_all)
        log.info("%s: %s", key, {k: v for k, v in cell.items() if not isinstance(v, list)})

    for dp in (False, True):
        key = f"cost/{'dp' if dp else 'plain'}"
        if key not in cells:
            save(key, cost_cell(base, dp, args.cost_steps))
    if not args.skip_utility:
        for strategy in args.strategies.split(","):
            for eps in [None, *[float(e) for e in args.epsilons.split(",")]]:
                key = f"utility/{strategy}/{'none' if eps is None else f'{eps:g}'}"
                if key not in cells:
                    save(key, utility_cell(base, strategy, eps, work))
    rng = random.Random(2026)
    secrets = [account(rng) for _ in range(5)]
    canary_file = work / "canaries.jsonl"
    with open(canary_file, "w", encoding="utf-8") as f:
        for s in secrets:
            for _ in range(args.canary_repeats):
                f.write(json.dumps({"instruction": "What is the sentiment of this news? Please choose an answer from "
                                    "{negative/neutral/positive}.", "input": CANARY.format(s),
                                    "output": CANARY_LABEL}) + "\n")
    audit_base = base.model_copy(deep=True)
    audit_base.federation.rounds = args.audit_rounds
    for eps in (None, 8.0):
        key = f"audit/{'none' if eps is None else f'{eps:g}'}"
        if key not in cells:
            save(key, audit_cell(audit_base, eps, work, canary_file, secrets, args))
    log.info("wrote %s.{json,md}", args.out)


def write(args, base, cells: dict, wall: float) -> None:
    rows = []
    for key, c in cells.items():
        kind, *rest = key.split("/")
        if kind == "utility":
            strategy, eps = rest
            rows.append({"part": "utility", "strategy": strategy, "epsilon": eps, "fpb_wf1": c.get("fpb"),
                         "tfns_wf1": c.get("tfns"), "epsilon_spent": c.get("epsilon_spent_max"),
                         "noise_multiplier": c.get("noise_multiplier"), "wall_s": c["wall_s"],
                         "peak_rss_mb": c["peak_rss_mb"]})
        elif kind == "audit":
            rows.append({"part": "audit", "strategy": "fedavg", "epsilon": rest[0], "mia_auc": c["mia_auc"],
                         "canary_exposure_mean": c["canary_exposure_mean"],
                         "canary_exposure_max": c["canary_exposure_max"], "wall_s": c["wall_s"]})
        else:
            rows.append({"part": "cost", "strategy": rest[0], "s_per_step": c["s_per_step"],
                         "wall_s": c["train_s"], "peak_rss_mb": c["peak_rss_mb"]})
    write_results(
        Path(args.out), benchmark="privacy", config=base.model_dump(mode="json"), seed=base.training.seed, rows=rows,
        columns=["part", "strategy", "epsilon", "fpb_wf1", "tfns_wf1", "epsilon_spent", "noise_multiplier",
                 "mia_auc", "canary_exposure_mean", "canary_exposure_max", "s_per_step", "wall_s", "peak_rss_mb"],
        title=f"Privacy on {base.model.base}, {args.banks} banks, local DP-SGD (Opacus, RDP accountant, "
              f"delta 1e-5), per-example clip {base.privacy.max_grad_norm}",
        extra={"cells": cells, "wall_s": round(wall, 1), "machine": machine_info(), "args": vars(args)},
    )


if __name__ == "__main__":
    main()
