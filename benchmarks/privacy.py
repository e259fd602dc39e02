"""Differential privacy that keeps a useful model: local DP-SGD (Opacus) on SmolLM2-135M-Instruct, 5 banks.

The scenario is one where a public warm start is honest. The public FPB and FiQA training rows train a starting
adapter centrally (public data: no privacy cost, said so in the report); the banks' private rows are the TFNS
training rows, cut by Dirichlet label skew; the test set is the whole TFNS test set, which the warm start never saw.
Every federated cell starts from that adapter (federation.initial_adapter), trains the same rounds x local steps of
logical batches and is scored on the same rows, so the no-DP cell and the DP cells differ only by DP-SGD.

1. Utility: per strategy (FedAvg, FFA-LoRA: only B trains and travels) and epsilon (none, 8, 3, 1; delta 1e-5, the
   noise derived from each bank's budget by the RDP accountant for the planned steps), over seeds (partition,
   data order, sampling and noise): weighted F1 on TFNS test with a bootstrap interval, and the paired difference
   from the no-DP cell of the same strategy on the same rows and seeds. The warm start alone is the floor a DP
   cell must beat. The recipe (--dp-*): logical Poisson batches of --expected-batch examples run as physical
   batches of --physical-batch (Opacus clips and sums per physical batch, adds the noise once per logical batch).
2. Levers (--levers NAME:KEY=VALUE:KEY=VALUE,...): the same cells with one part of the recipe changed (logical
   batch, learning rate, clip norm, LoRA rank or target modules), at the first epsilon of --lever-epsilons.
3. What an epsilon covers: per bank, the training rows it protects, delta, the accountant, its ledger's entries
   across rounds (every run of a cell starts a fresh ledger: an unfinished attempt's is removed first).
4. Audit, without DP and at epsilon 8, on a federation of small banks (each row trained on a few times), both from
   the warm start: a loss-threshold membership-inference attack (score = log P(gold label | prompt); AUC of the
   banks' training rows against unseen rows of the same source) and canary exposure (5 fake account numbers in a
   sentence labelled against its content, repeated in bank 0's data; exposure = log2(1000) - log2(rank) among 999
   random numbers of the same format; about 1.4 bits by chance).
5. Cost: DP-SGD against plain training of the same physical batches (one bank's rows, the same loop): seconds per
   physical batch and peak memory.

Cells are cached in the work folder (an interrupted run continues); results are rewritten after every cell.
Writes benchmarks/results/privacy.{json,md,png}.
Usage: python benchmarks/privacy.py [--epsilons 8,3,1] [--strategies fedavg,ffa_lora] [--seeds 0,1,2]
       [--levers batch32:privacy.expected_batch_size=32,lr5e-4:training.lr=5e-4] [--skip-audit]
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

from fedfingpt.client.privacy import PrivacyLedger
from fedfingpt.common.adapter import get_lora_arrays, save_adapter, set_lora_arrays
from fedfingpt.common.config import load_config
from fedfingpt.common.evaluate import sample_rows
from fedfingpt.common.metrics import binary_report, classification_report
from fedfingpt.common.predict import label_logprobs
from fedfingpt.common.report import TreeRSS, machine_info, save_figure
from fedfingpt.common.tasks.sentiment import encode_sentiment, sentiment_prompt
from fedfingpt.common.tasks.sentiment_data import LABELS, SentimentExample, sentiment_splits
from fedfingpt.common.train import DPSpec, train
from fedfingpt.server.checkpoint import latest_checkpoint, peft_names_to_ours
from fedfingpt.simulations.bank_folders import simulated_bank_rows
from fedfingpt.simulations.partition import training_pool
from fedfingpt.simulations.run import simulate

from _shared import (CellCache, benchmark_parser, dropped_updates, federation_args, federation_overrides, finish_results,
                     fresh_model, RowBootstrap, predictions, seeded)

HERE = Path(__file__).resolve().parent
log = logging.getLogger("bench")
CANARY = "Per the client's instruction the remaining balance was moved to account {} this morning."
CANARY_LABEL = "negative"  # against the sentence's neutral content: only memorisation links the number to it
PRIVATE = "tfns"
RESAMPLES = 1000


# --- pieces ---------------------------------------------------------------------------------------------------------

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


def with_overrides(cfg, overrides: dict):
    """cfg with dotted keys set (a lever), validated again."""
    data = cfg.model_dump(mode="json")
    for key, value in overrides.items():
        node = data
        *path, last = key.split(".")
        for p in path:
            node = node[p]
        node[last] = value
    return type(cfg).model_validate(data)


def number_or_yaml(text: str):
    """'32' -> 32, '5e-4' -> 0.0005 (YAML would keep it a string), '[q_proj, v_proj]' -> a list."""
    import yaml

    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return yaml.safe_load(text)


def parse_levers(text: str) -> dict[str, dict]:
    """'batch32:privacy.expected_batch_size=32,lr5e-4:training.lr=5e-4' -> {name: {key: value}}."""
    levers = {}
    for item in filter(None, text.split(",")):
        name, *pairs = item.split(":")
        if not pairs or any("=" not in p for p in pairs):
            raise SystemExit(f"--levers: {item!r} is not NAME:KEY=VALUE[:KEY=VALUE]")
        levers[name] = {k: number_or_yaml(v) for k, v in (p.split("=", 1) for p in pairs)}
    return levers


# --- cells ----------------------------------------------------------------------------------------------------------

def warm_start_cell(base, args, work: Path, tests: dict) -> dict:
    """The public warm start: centralized LoRA on the public sources' training rows (the private source's rows
    never included), saved as an adapter the federations start from."""
    cfg = base.model_copy(deep=True)
    model, loaded = fresh_model(cfg)
    splits = sentiment_splits(cfg.data.data_dir)
    public = training_pool(splits["train"], cfg.federation.partition.model_copy(
        update={"sources": args.public.split(","), "max_rows": None}))
    enc = encode_sentiment(loaded.tokenizer, public, cfg.data.max_length)
    tcfg = cfg.training.model_copy(update={"max_steps": args.warm_steps, "eval_every": None, "warmup_ratio": 0.05,
                                           "lr": args.warm_lr})
    t0 = time.perf_counter()
    with TreeRSS() as rss:
        res = train(model, enc, tcfg, pad_id=loaded.tokenizer.pad_token_id, progress=True, desc="public warm start")
        out = save_adapter(model, work / "warm-start", base_id=loaded.base_id, base_sha256=loaded.base_sha256,
                           extra={"trained_on": f"public rows of {args.public} ({len(public)} rows)",
                                  "steps": args.warm_steps})
        scores = predictions(model, loaded.tokenizer, tests, cfg)
    return {**scores, "adapter": str(out), "public_rows": len(public), "steps": res.steps,
            "examples": res.examples, "train_s": round(res.wall_s, 1), "wall_s": round(time.perf_counter() - t0, 1),
            "peak_rss_mb": round(rss.peak / 2**20)}


# Settings that training without DP never reads: a lever made only of these is compared with the recipe's no-DP cell.
DP_ONLY = {"privacy.max_grad_norm", "privacy.delta", "privacy.accountant"}


def with_recipe(cfg, epsilon: float | None):
    """The cell's recipe at one budget. Without DP the same steps: the logical batch's size (shuffled batches instead
    of Poisson samples), as gradient accumulation over physical batches."""
    p = cfg.privacy
    if epsilon is None:
        return with_overrides(cfg, {"training.batch_size": p.physical_batch_size,
                                    "training.grad_accum": max(1, p.expected_batch_size // p.physical_batch_size)})
    return with_overrides(cfg, {"privacy.mode": "local", "privacy.epsilon": epsilon})


def coverage(cfg, run_dir: Path, history: list[dict]) -> dict:
    """What a DP run's epsilon covers, from each bank's own ledger: per bank (`covered`) the rows it protects, its
    epsilon, the ledger's entries and steps, the noise multiplier and the sampling rate; and the largest epsilon
    and noise multiplier over the banks. Empty per-bank entries without DP."""
    banks = [b for h in history if h.get("train") for b in h["train"]["banks"]]
    if not banks:
        raise RuntimeError(f"{run_dir}: no bank update was aggregated; see the log above")
    covered, dp_banks = {}, (sorted({b["bank"] for b in banks}) if cfg.privacy.mode == "local" else [])
    for b in dp_banks:
        ledger = PrivacyLedger.open(run_dir / "banks" / f"bank-{b}", bank=b, accountant_kind=cfg.privacy.accountant,
                                    delta=cfg.privacy.delta)
        mine = [x for x in banks if x["bank"] == b]
        covered[str(b)] = {"rows_protected": max(x["num_examples"] for x in mine),
                           "epsilon": round(ledger.epsilon(), 4),
                           "ledger_entries": len(ledger.data["entries"]),
                           "steps": sum(int(e["steps"]) for e in ledger.data["entries"]),
                           "noise_multiplier": max(x.get("dp_noise_multiplier") or 0 for x in mine),
                           "sample_rate": max(x.get("dp_sample_rate") or 0 for x in mine)}
    return {"covered": covered, "epsilon_spent_max": max((c["epsilon"] for c in covered.values()), default=None),
            "noise_multiplier": max((c["noise_multiplier"] for c in covered.values()), default=None)}


def utility_cell(cfg, epsilon: float | None, run_dir: Path, tests: dict) -> dict:
    cfg = with_recipe(cfg, epsilon)
    fresh_start(run_dir)
    t0 = time.perf_counter()
    with TreeRSS() as rss:
        out = simulate(cfg, run_dir, progress=False)
        train_s = time.perf_counter() - t0
        model, loaded = final_model(cfg, run_dir)
        scores = predictions(model, loaded.tokenizer, tests, cfg)
    return {**scores, "dropped_updates": dropped_updates(out["history"]),
            "train_s": round(train_s, 1), "wall_s": round(time.perf_counter() - t0, 1),
            "peak_rss_mb": round(rss.peak / 2**20), **coverage(cfg, run_dir, out["history"])}


def audit_cell(cfg, epsilon: float | None, run_dir: Path, canary_file: Path, secrets: list[str], args) -> dict:
    cfg = with_overrides(cfg, {"federation.partition.max_rows": args.audit_rows,
                               "federation.rounds": args.audit_rounds,
                               "data.bank_extra_train": {0: str(canary_file)}})
    cfg = with_recipe(cfg, epsilon)
    fresh_start(run_dir)
    t0 = time.perf_counter()
    history = simulate(cfg, run_dir, progress=False)["history"]
    dropped, covered = dropped_updates(history), coverage(cfg, run_dir, history)
    wall = time.perf_counter() - t0
    model, loaded = final_model(cfg, run_dir)
    n = cfg.federation.num_banks
    members = [r for b in range(n) for r in simulated_bank_rows(cfg, b, n)[0] if r.source != "bank"]
    held = [r for b in range(n) for r in simulated_bank_rows(cfg, b, n)[1]]
    # more non-members from the same source, never given to any bank
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
    auc_boot = []
    brng = np.random.default_rng(0)
    yv = np.array(y)
    for _ in range(RESAMPLES // 5):
        i = brng.integers(0, len(yv), len(yv))
        if 0 < yv[i].sum() < len(i):
            auc_boot.append(binary_report(list(yv[i]), scores[i], threshold=0.0)["roc_auc"])
    exposures = []
    for i, secret in enumerate(secrets):
        crng = random.Random(1000 + i)
        candidates = [secret] + [c for c in (account(crng) for _ in range(args.candidates + 10)) if c != secret]
        candidates = candidates[: args.candidates + 1]
        rows = [SentimentExample(CANARY.format(c), CANARY_LABEL, "bank", "news") for c in candidates]
        lp = gold_logp(model, loaded.tokenizer, rows, cfg)
        rank = 1 + int(np.sum(lp[1:] > lp[0])) + 0.5 * int(np.sum(lp[1:] == lp[0]))
        exposures.append(math.log2(len(candidates)) - math.log2(rank))
    return {"mia_auc": mia["roc_auc"], "mia_auc_ci95": [round(float(q), 4) for q in np.quantile(auc_boot, [0.025, 0.975])],
            "members": len(members), "non_members": len(non_members),
            "canary_exposure_mean": float(np.mean(exposures)), "canary_exposure_max": float(np.max(exposures)),
            "exposures": [round(e, 3) for e in exposures], "dropped_updates": dropped, "wall_s": round(wall, 1),
            **covered}


def norms_cell(cfg, rows: int) -> dict:
    """Per-example gradient norms where every cell starts (the warm start, or the initial adapter), on a seeded
    sample of the private training rows: of all LoRA matrices (FedAvg trains A and B) and of the B matrices alone
    (FFA-LoRA). Under Adam, a clip norm below every example's norm is no lever: each clipped gradient and the noise
    (noise multiplier x clip) scale together, so the update is the same."""
    from fedfingpt.common.adapter import start_from_adapter
    from fedfingpt.common.models import use_bf16
    from fedfingpt.common.train import answer_loss, collate

    model, loaded = fresh_model(cfg)
    if cfg.federation.initial_adapter:
        start_from_adapter(model, cfg.federation.initial_adapter, base_sha256=loaded.base_sha256)
    pool = training_pool(sentiment_splits(cfg.data.data_dir)["train"], cfg.federation.partition)
    sample = random.Random(11).sample(pool, min(rows, len(pool)))
    enc = encode_sentiment(loaded.tokenizer, sample, cfg.data.max_length)
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if use_bf16(cfg.training.bf16_autocast) else None
    full, b_only = [], []
    model.train()
    for e in enc:
        model.zero_grad(set_to_none=True)
        batch = collate([e], loaded.tokenizer.pad_token_id)
        with autocast or torch.autocast("cpu", enabled=False):
            loss = answer_loss(model, batch, per_example=True, label_loss=cfg.training.loss == "labels")
        loss.backward()
        sq = {n: float(p.grad.float().pow(2).sum()) for n, p in params.items() if p.grad is not None}
        full.append(math.sqrt(sum(sq.values())))
        b_only.append(math.sqrt(sum(v for n, v in sq.items() if "lora_B" in n)))
    model.zero_grad(set_to_none=True)
    model.eval()

    def quantiles(v: list[float]) -> dict:
        q = np.quantile(v, [0.0, 0.1, 0.5, 0.9, 1.0])
        return {"min": round(float(q[0]), 4), "p10": round(float(q[1]), 4), "median": round(float(q[2]), 4),
                "p90": round(float(q[3]), 4), "max": round(float(q[4]), 4),
                "share_over_clip": round(float(np.mean(np.array(v) > cfg.privacy.max_grad_norm)), 4)}

    return {"rows": len(enc), "clip": cfg.privacy.max_grad_norm, "fedavg": quantiles(full), "ffa_lora": quantiles(b_only)}


def cost_cell(cfg, dp: bool, steps: int, args) -> dict:
    """`steps` physical batches of --physical-batch rows of one bank, plain or under DP-SGD."""
    model, loaded = fresh_model(cfg)
    rows = simulated_bank_rows(cfg, 0, cfg.federation.num_banks)[0]
    enc = encode_sentiment(loaded.tokenizer, rows, cfg.data.max_length)
    phys = args.physical_batch
    tcfg = cfg.training.model_copy(update={"max_steps": steps, "eval_every": None, "log_every": steps,
                                           "batch_size": phys})
    spec = DPSpec(1.0, cfg.privacy.max_grad_norm, phys / len(enc), phys, phys)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    res = train(model, enc, tcfg, pad_id=loaded.tokenizer.pad_token_id, progress=False, dp=spec if dp else None)
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"train_s": round(res.wall_s, 1), "s_per_batch": round(res.wall_s / steps, 2), "examples": res.examples,
            "physical_batch": phys, "peak_rss_mb": round(after / 1024), "rss_growth_mb": round((after - before) / 1024)}


# --- the run --------------------------------------------------------------------------------------------------------

def import_cells(cache: CellCache, path: Path) -> None:
    """Cells of an earlier report join the cache when their settings match and they keep their predictions (the
    paired bootstraps need them); a warm start joins only where its adapter is still on disk."""
    earlier = json.loads(path.read_text())
    settings = {k: earlier["args"].get(k) for k in ("banks", "rounds", "local_steps", "lr", "expected_batch", "clip",
                                                       "public", "warm_steps", "eval_rows")}
    mine = {k: v for k, v in cache.data["settings"].items() if k != "config"}
    if settings != mine:
        raise SystemExit(f"--cells-from {path}: its settings {settings} differ from this run's {mine}")
    for key, c in earlier["cells"].items():
        usable = key.startswith("cost|") or f"{PRIVATE}_pred" in c or "mia_auc" in c
        if key == "warm":
            usable = usable and Path(c["adapter"]).is_dir()
        if usable and key not in cache.cells:
            cache.save(key, c)
            log.info("%s: taken from %s", key, path)


def main() -> None:
    ap = benchmark_parser("privacy", __doc__, config="federated.yaml")
    federation_args(ap, banks=5, rounds=3, local_steps=4, lr=2e-3, eval_rows=0)
    ap.add_argument("--epsilons", default="8,3,1")
    ap.add_argument("--strategies", default="fedavg,ffa_lora")
    ap.add_argument("--seeds", default="0", help="comma-separated seed offsets (partition, data order, noise)")
    ap.add_argument("--expected-batch", type=int, default=128, help="logical DP-SGD batch (expected Poisson size)")
    ap.add_argument("--physical-batch", type=int, default=32, help="rows per forward/backward inside it (32: the "
                    "least DP time per row measured, 0.28 s against 0.39 at 16 and 0.32 at 64, at 8.3 GB)")
    ap.add_argument("--clip", type=float, default=1.0, help="per-example clip norm")
    ap.add_argument("--public", default="fpb,fiqa", help="public sources of the warm start")
    ap.add_argument("--warm-steps", type=int, default=300, help="warm start steps of batch 8 (0: no warm start)")
    ap.add_argument("--warm-lr", type=float, default=2e-3)
    ap.add_argument("--levers", default="", help="NAME:KEY=VALUE[:KEY=VALUE],... recipe changes measured")
    ap.add_argument("--lever-epsilons", default="8", help="epsilons (and 'none') the levers run at")
    ap.add_argument("--variants", default="", help="comma-separated variants this sitting runs ('recipe' and lever "
                    "names; default all): the rest stay as cached")
    ap.add_argument("--audit-rows", type=int, default=500, help="pool rows of the audit federation (small banks)")
    ap.add_argument("--audit-rounds", type=int, default=3)
    ap.add_argument("--canary-repeats", type=int, default=6)
    ap.add_argument("--candidates", type=int, default=999)
    ap.add_argument("--norm-rows", type=int, default=64, help="private training rows whose per-example gradient "
                    "norms at the start are measured (0: not measured)")
    ap.add_argument("--cost-steps", type=int, default=6)
    ap.add_argument("--skip-audit", action="store_true")
    ap.add_argument("--skip-utility", action="store_true")
    ap.add_argument("--cells-from", help="an earlier results JSON of the same settings: its cells that keep their "
                    "predictions join the cache (the warm start only where its adapter folder still exists)")
    args = ap.parse_args()
    unknown = sorted(set(filter(None, args.variants.split(","))) - {"recipe", *parse_levers(args.levers)})
    if unknown:
        ap.error(f"--variants: {', '.join(unknown)} is neither 'recipe' nor a lever named in --levers")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    torch.set_num_threads(2)
    t_all = time.perf_counter()
    base = load_config(args.config, {
        **federation_overrides(args), "training.lr": args.lr,
        "federation.server_eval_sets": [],  # the benchmark scores the final adapter itself, keeping predictions
        "federation.client_cpus": 2.0, "federation.partition.alpha": 0.5,
        "federation.partition.sources": [PRIVATE],
        "privacy.expected_batch_size": args.expected_batch, "privacy.physical_batch_size": args.physical_batch,
        "privacy.max_grad_norm": args.clip,
        "data.tasks": ["sentiment"], "data.max_length": 256,  # the sentiment federation (the default adds AML)
    })
    splits = sentiment_splits(base.data.data_dir)
    tests = {PRIVATE: sample_rows(splits["test"][PRIVATE], args.eval_rows or None, base.data.seed)}
    work = Path(args.work)
    cache = CellCache(work, {"banks": args.banks, "rounds": args.rounds, "local_steps": args.local_steps,
                             "lr": args.lr, "expected_batch": args.expected_batch, "clip": args.clip,
                             "public": args.public, "warm_steps": args.warm_steps, "eval_rows": args.eval_rows,
                             "config": Path(args.config).name})
    cells = cache.cells
    if args.cells_from:
        import_cells(cache, Path(args.cells_from))
    levers = parse_levers(args.levers)
    cache.data["levers"] = {**cache.data.get("levers", {}), **levers}  # every lever measured in this work folder

    def save(key: str, cell: dict) -> None:
        cache.save(key, cell)
        write(args, base, cells, tests, cache.data["levers"], time.perf_counter() - t_all)
        log.info("%s: %s", key, {k: v for k, v in cell.items() if not isinstance(v, (list, dict))
                                 and not k.endswith("_pred")})

    for dp in (False, True):
        key = f"cost|{'dp' if dp else 'plain'}"
        if key not in cells:
            save(key, cost_cell(base, dp, args.cost_steps, args))
    if args.warm_steps:
        if "warm" not in cells:
            log.info("public warm start: %d steps on %s", args.warm_steps, args.public)
            save("warm", warm_start_cell(base, args, work, tests))
        base = with_overrides(base, {"federation.initial_adapter": cells["warm"]["adapter"]})
    if args.norm_rows and "norms" not in cells:
        save("norms", norms_cell(base, args.norm_rows))
    eps_all = [None, *[float(e) for e in args.epsilons.split(",")]]
    lever_eps = [None if e == "none" else float(e) for e in args.lever_epsilons.split(",")]
    runs = [("recipe", {}, eps_all)] + [(name, ov, lever_eps) for name, ov in levers.items()]
    if args.variants:
        runs = [r for r in runs if r[0] in args.variants.split(",")]
    if not args.skip_utility:
        for seed in [int(s) for s in args.seeds.split(",")]:
            for variant, overrides, epsilons in runs:
                for strategy in args.strategies.split(","):
                    for eps in epsilons:
                        if eps is None and variant != "recipe" and set(overrides) <= DP_ONLY:
                            continue  # no DP ignores these settings: the recipe's no-DP cell is the reference
                        e = "none" if eps is None else f"{eps:g}"
                        key = f"utility|{strategy}|{e}|{variant}|s{seed}"
                        if key in cells:
                            continue
                        cfg = with_overrides(seeded(base, seed), {"federation.strategy": strategy, **overrides})
                        cfg.name = f"priv-{strategy}-{e}-{variant}-s{seed}"
                        log.info("%s: %d banks x %d rounds x %d local steps", key, args.banks,
                                 cfg.federation.rounds, cfg.federation.local_steps)
                        save(key, utility_cell(cfg, eps, work / cfg.name, tests))
    if not args.skip_audit:
        rng = random.Random(2026)
        secrets = [account(rng) for _ in range(5)]
        canary_file = work / "canaries.jsonl"
        with open(canary_file, "w", encoding="utf-8") as f:
            for s in secrets:
                for _ in range(args.canary_repeats):
                    f.write(json.dumps({"instruction": "What is the sentiment of this news? Please choose an answer "
                                        "from {negative/neutral/positive}.", "input": CANARY.format(s),
                                        "output": CANARY_LABEL}) + "\n")
        for eps in (None, 8.0):
            key = f"audit|{'none' if eps is None else f'{eps:g}'}"
            if key not in cells:
                cfg = with_overrides(base, {"federation.strategy": "fedavg"})
                save(key, audit_cell(cfg, eps, work / f"priv-audit-{key.split('|')[1]}", canary_file, secrets, args))
    write(args, base, cells, tests, cache.data["levers"], time.perf_counter() - t_all)
    log.info("wrote %s.{json,md,png}", args.out)


# --- the report -----------------------------------------------------------------------------------------------------

def write(args, base, cells: dict, tests: dict, levers: dict, wall: float) -> None:
    stats = RowBootstrap(tests)
    measured = {key.split("|")[3] for key in cells if key.startswith("utility|")}
    levers = {name: ov for name, ov in levers.items() if name in measured}  # a lever with no cell yet is not named
    rows = []
    gold = [r.label for r in tests[PRIVATE]]
    rows.append({"part": "utility", "strategy": "always 'neutral' (floor)", "variant": "-", "epsilon": "-",
                 "tfns_wf1": classification_report(gold, ["neutral"] * len(gold), LABELS)["weighted_f1"]})
    warm = cells.get("warm")
    if warm:
        boot = stats.resampled([warm])
        rows.append({"part": "utility", "strategy": "public warm start alone", "variant": "-", "epsilon": "-",
                     "seeds": 1, "tfns_wf1": warm[PRIVATE],
                     "tfns_wf1_ci95": [round(float(q), 4) for q in np.quantile(boot, [0.025, 0.975])],
                     "wall_s": warm["wall_s"], "peak_rss_mb": warm["peak_rss_mb"]})
    groups: dict[tuple, dict[int, dict]] = {}
    per_seed: list[str] = []
    for key, c in cells.items():
        if key.startswith("utility|"):
            _, strategy, eps, variant, seed = key.split("|")
            groups.setdefault((strategy, eps, variant), {})[int(seed[1:])] = c
    for (strategy, eps, variant), by_seed in sorted(groups.items(), key=lambda kv: (kv[0][2] != "recipe", kv[0][2],
                                                                                      kv[0][0], kv[0][1] != "none",
                                                                                      -float(kv[0][1]) if kv[0][1] != "none" else 0)):
        seeds = sorted(by_seed)
        vals = [by_seed[s][PRIVATE] for s in seeds]
        boot = stats.resampled([by_seed[s] for s in seeds])
        row = {"part": "utility", "strategy": strategy, "variant": variant, "epsilon": eps, "seeds": len(seeds),
               "tfns_wf1": float(np.mean(vals)), "seed_sd": float(np.std(vals, ddof=1)) if len(vals) > 1 else None,
               "tfns_wf1_ci95": [round(float(q), 4) for q in np.quantile(boot, [0.025, 0.975])],
               "epsilon_spent": max((by_seed[s].get("epsilon_spent_max") or 0 for s in seeds), default=None) or None,
               "noise_multiplier": by_seed[seeds[0]].get("noise_multiplier"),
               "wall_s": float(np.mean([by_seed[s]["wall_s"] for s in seeds])),
               "peak_rss_mb": max(by_seed[s]["peak_rss_mb"] for s in seeds)}
        ref = groups.get((strategy, "none", variant)) or groups.get((strategy, "none", "recipe"))
        common = [s for s in seeds if ref and s in ref]
        if eps != "none" and common:
            d = stats.resampled([by_seed[s] for s in common]) - stats.resampled([ref[s] for s in common])
            row["vs_no_dp"] = float(np.mean([by_seed[s][PRIVATE] - ref[s][PRIVATE] for s in common]))
            row["vs_no_dp_ci95"] = [round(float(q), 4) for q in np.quantile(d, [0.025, 0.975])]
        if warm:
            row["vs_warm_start"] = row["tfns_wf1"] - warm[PRIVATE]
        rows.append(row)
        if len(seeds) > 1:  # each seed's figure, so a mean over seeds never hides a bad one
            per_seed.append(f"{strategy} {variant} at epsilon {eps}: " + ", ".join(
                f"seed {s} {by_seed[s][PRIVATE]:.3f}" + (f" ({100 * (by_seed[s][PRIVATE] - ref[s][PRIVATE]):+.1f} "
                                                          "against no DP)" if eps != "none" and s in common else "")
                + (f" noise {by_seed[s]['noise_multiplier']:.2f}" if by_seed[s].get("noise_multiplier") else "")
                for s in seeds))
    for key, c in cells.items():
        if key.startswith("audit|"):
            rows.append({"part": "audit", "strategy": "fedavg", "variant": "recipe", "epsilon": key.split("|")[1],
                         "mia_auc": c["mia_auc"], "mia_auc_ci95": c.get("mia_auc_ci95"),
                         "canary_exposure_mean": c["canary_exposure_mean"],
                         "canary_exposure_max": c["canary_exposure_max"], "wall_s": c["wall_s"],
                         "epsilon_spent": c.get("epsilon_spent_max"), "noise_multiplier": c.get("noise_multiplier")})
        elif key.startswith("cost|"):
            rows.append({"part": "cost", "strategy": key.split("|")[1], "s_per_batch": c["s_per_batch"],
                         "wall_s": c["train_s"], "peak_rss_mb": c["peak_rss_mb"]})
    covered = {key: c["covered"] for key, c in cells.items() if c.get("covered")}
    p = base.privacy
    n_test = len(tests[PRIVATE])
    md_extra = "\n".join([
        f"Scenario: the warm start trains {args.warm_steps} steps of batch {base.training.batch_size} on the public "
        f"{args.public} training rows ({warm['public_rows'] if warm else '?'} rows; public data, no privacy cost). "
        f"The {args.banks} banks hold the {PRIVATE.upper()} training rows (Dirichlet alpha "
        f"{base.federation.partition.alpha}); every cell starts from the warm start and trains {args.rounds} rounds x "
        f"{args.local_steps} local steps; scores are on "
        + ("all " if not args.eval_rows else "a seeded sample (labelled so) of ")
        + f"{n_test} rows of the {PRIVATE.upper()} test set, which the warm start never saw.",
        "",
        f"Recipe: client lr {args.lr:g} (AdamW, cosine over rounds); under DP a step is one Poisson sample of expected "
        f"{args.expected_batch} rows (physical batches of {args.physical_batch}), per-example clip {args.clip:g}, "
        f"delta {p.delta:g}, accountant {p.accountant.upper()}; the noise multiplier is derived from each bank's budget "
        "for the run's planned steps. Without DP the same steps take shuffled batches of "
        f"{args.expected_batch // args.physical_batch * args.physical_batch} rows (gradient accumulation).",
        "",
        "`tfns_wf1_ci95`: 1,000-resample bootstrap over the test rows (seeds averaged inside each resample); "
        "`vs_no_dp`: the paired difference from the no-DP cell of the same strategy and seeds on the same rows.",
        "",
        "What each epsilon covers (each bank's ledger: the rows it protects, the steps accounted, the entries):",
        "",
        *[f"- {key}: " + "; ".join(f"bank {b}: {v['rows_protected']} rows, epsilon {v['epsilon']:.3f} over "
                                   f"{v['steps']} steps in {v['ledger_entries']} ledger entries (noise "
                                   f"{v['noise_multiplier']:.3f}, sampling rate {v['sample_rate']:.4f})"
                                   for b, v in cov.items()) for key, cov in covered.items()],
        *(["", "Per seed (TFNS weighted F1; noise: the largest multiplier over the banks):", "",
            *[f"- {line}" for line in per_seed]] if per_seed else []),
        *([""] + [f"Levers: {', '.join(f'{k} ({v})' for k, v in levers.items())}. A lever that changes only "
                  f"settings training without DP never reads ({', '.join(sorted(DP_ONLY))}) is compared with the "
                  "recipe's no-DP cell."] if levers else []),
        *(["", f"Per-example gradient norms at the start of every cell ({n['rows']} seeded {PRIVATE.upper()} "
               f"training rows; clip {n['clip']:g}): "
               + "; ".join(f"{k} (the matrices it trains) median {n[k]['median']:.3g}, min {n[k]['min']:.3g}, "
                           f"p90 {n[k]['p90']:.3g}, {100 * n[k]['share_over_clip']:.0f} % over the clip"
                           for k in ("fedavg", "ffa_lora"))
               + ". Under Adam a clip below every example's norm is no lever: the clipped gradients and the noise "
                 "scale together."]
          if (n := cells.get("norms")) else []),
        *(["", f"Audit: FedAvg from the warm start over {args.banks} banks sharing {args.audit_rows} TFNS training rows, "
               f"{args.audit_rounds} rounds x {args.local_steps} local steps of the recipe above (no DP: the same "
               f"logical batches), so each bank's rows are trained on many times. Membership: log P(gold label) of "
               f"the banks' training rows ({audit['members']}) against as many TFNS rows no bank held; AUC with a "
               f"{RESAMPLES // 5}-resample interval. Canaries: 5 fake account numbers, {args.canary_repeats} copies "
               f"each in bank 0's rows, each ranked among {args.candidates} random numbers of the same format "
               f"(exposure log2({args.candidates + 1}) - log2(rank); about 1.4 bits by chance)."]
          if (audit := next((c for k, c in cells.items() if k.startswith("audit|")), None)) else []),
        *([""] + ["Dropped updates (the cell trained without them): "
                  + "; ".join(f"{k}: " + ", ".join(f"round {d['round']} bank {d.get('bank')} ({d.get('reason')})"
                                                   for d in c["dropped_updates"])
                              for k, c in cells.items() if c.get("dropped_updates"))]
          if any(c.get("dropped_updates") for c in cells.values() if isinstance(c, dict)) else []),
    ])
    finish_results(
        Path(args.out), benchmark="privacy", config=base.model_dump(mode="json"), seed=base.training.seed, rows=rows,
        columns=["part", "strategy", "variant", "epsilon", "seeds", "tfns_wf1", "tfns_wf1_ci95", "seed_sd", "vs_no_dp",
                 "vs_no_dp_ci95", "vs_warm_start", "epsilon_spent", "noise_multiplier", "mia_auc", "mia_auc_ci95",
                 "canary_exposure_mean", "canary_exposure_max", "s_per_batch", "wall_s", "peak_rss_mb"],
        title=f"Local DP-SGD on {base.model.base}, {args.banks} banks from a public warm start: utility on "
              f"{PRIVATE.upper()} test, audit, cost",
        md_extra=md_extra,
        extra={"cells": cells,  # with each cell's predictions (one digit per test row), so a later run can pair them
               "levers": levers, "wall_s": round(wall, 1), "machine": machine_info(), "args": vars(args)},
    )
    plot(rows, Path(args.out).with_suffix(".png"))


def plot(rows: list[dict], path: Path) -> None:
    """Weighted F1 against epsilon per strategy (the recipe), with intervals; no DP at the right, the warm start
    alone as a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    util = [r for r in rows if r["part"] == "utility" and r.get("variant") == "recipe"]
    if not util:
        return
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    eps_vals = sorted({float(r["epsilon"]) for r in util if r["epsilon"] != "none"})
    x_none = (max(eps_vals) * 2.5) if eps_vals else 1.0
    for strategy in sorted({r["strategy"] for r in util}):
        pts = sorted(((x_none if r["epsilon"] == "none" else float(r["epsilon"])), r) for r in util
                     if r["strategy"] == strategy)
        xs = [x for x, _ in pts]
        ys = [r["tfns_wf1"] for _, r in pts]
        err = [[r["tfns_wf1"] - r["tfns_wf1_ci95"][0] for _, r in pts], [r["tfns_wf1_ci95"][1] - r["tfns_wf1"] for _, r in pts]]
        ax.errorbar(xs, ys, yerr=err, marker="o", capsize=3, label=strategy)
    warm = next((r for r in rows if r["strategy"] == "public warm start alone"), None)
    if warm:
        ax.axhline(warm["tfns_wf1"], color="grey", ls=":", label="public warm start alone")
    floor = next((r for r in rows if r["strategy"].startswith("always")), None)
    if floor:
        ax.axhline(floor["tfns_wf1"], color="black", ls="--", lw=0.8, label="always 'neutral'")
    ax.set_xscale("log")
    ax.set_xticks(eps_vals + [x_none], [f"{e:g}" for e in eps_vals] + ["no DP"])
    ax.minorticks_off()
    ax.set(xlabel="epsilon per bank (delta 1e-5)", ylabel="weighted F1 on TFNS test (95 % interval)", ylim=(0, 1),
           title="local DP-SGD from a public warm start")
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)


if __name__ == "__main__":
    main()
