"""Every LoRA aggregation strategy side by side on SmolLM2-135M-Instruct, 5 banks, under label skew (iid, Dirichlet
alpha 1.0, 0.5, 0.1) and source skew, with centralized training on the union of the banks' rows as the ceiling, over
one or several seeds, with each strategy's server settings as given (a sweep) or as a sweep chose them (--tuned).

Every cell trains the same budget: rounds x local steps x banks optimizer steps of the same batch (centralized sees
as many examples). A seed moves the partition, the initial adapter and every bank's data order together; the test
rows stay the same, so cells compare row by row. The benchmark scores each final adapter itself and keeps every
prediction: a cell's weighted F1 has a bootstrap 95 % interval over the test rows (seeds averaged inside each
resample), and each strategy is compared with FedAvg under the same partition by a paired bootstrap over the same
rows and seeds (difference, its interval, a two-sided p); an interval that holds 0 is reported as a tie, not ranked.
FedSA-LoRA has no global model: its figures are the mean over banks of each bank's own model (shared A + its B).
`local` (a pseudo-strategy) is every bank alone with its share of the budget: the mean bank's figures. `--splits
5x40,20x10,50x4` runs rounds x local steps at the same budget; `--curve-rows N` has the server score N rows of each
test set after every round (the F1-against-rounds panel).

A strategy is named with optional server settings, `NAME@KEY=VALUE:KEY=VALUE` (keys of
federation.aggregation, e.g. `fedadam@adaptive_lr=1e-3:tau=1e-3`); with several settings of one strategy under one
partition the results name the best (`best` in the JSON), which `--tuned FILE` hands to a later grid. Cells are cached
in the work folder, so an interrupted run continues where it stopped; the result files are rewritten after every cell.
Writes OUT.{json,md,png} (default benchmarks/results/aggregation).

Usage:
  python benchmarks/aggregation.py --partitions dirichlet-0.5 --strategies fedavg,fedadam,fedadam@adaptive_lr=1e-3 \\
      --rounds 5 --local-steps 4 --eval-rows 400 --work runs/benchmarks/aggregation_sweep \\
      --out benchmarks/results/aggregation_sweep
  python benchmarks/aggregation.py --tuned benchmarks/results/aggregation_sweep.json --seeds 0,1,2 --eval-rows 0
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
from fedfingpt.common.config import AggregationConfig, load_config
from fedfingpt.server.strategies import STRATEGY_NAMES
from fedfingpt.common.evaluate import sample_rows
from fedfingpt.common.report import TreeRSS, machine_info, save_figure
from fedfingpt.common.tasks.sentiment import encode_sentiment
from fedfingpt.common.tasks.sentiment_data import LABELS as CLASSES, sentiment_splits
from fedfingpt.server.checkpoint import latest_checkpoint, peft_names_to_ours
from fedfingpt.simulations.run import simulate

from _shared import (BENCH_ROUND_TIMEOUT_S, SEED_BASE, CellCache, benchmark_parser, dropped_updates,  # benchmarks/_shared.py
                     federation_args, finish_results, fresh_model, RowBootstrap, predictions, seeded)

HERE = Path(__file__).resolve().parent
log = logging.getLogger("bench")
PARTITIONS = {"iid": {"kind": "iid"}, "dirichlet-1.0": {"kind": "dirichlet", "alpha": 1.0},
              "dirichlet-0.5": {"kind": "dirichlet", "alpha": 0.5}, "dirichlet-0.1": {"kind": "dirichlet", "alpha": 0.1},
              "source": {"kind": "source"}}
HETLORA_RANKS = {0: 4, 1: 4}  # two banks with small machines train rank 4; the others the global rank 8
SETS = ("fpb", "tfns")
LABELS = {"local": "local only (mean bank)", "fedavg": "FedAvg", "fedprox": "FedProx", "fedavgm": "FedAvgM", "fedadam": "FedAdam", "fedyogi": "FedYogi",
          "ffa_lora": "FFA-LoRA", "fedsa_lora": "FedSA-LoRA (own B)", "fedex_lora": "FedEx-LoRA (exact)",
          "hetlora": "HetLoRA (ranks 4,4,8,8,8)", "median": "Median", "trimmed_mean": "Trimmed mean",
          "norm_bound": "Norm bound"}


# --- naming a strategy with its server settings ------------------------------------------------------------------

def parse_spec(spec: str) -> tuple[str, dict]:
    """'fedadam@adaptive_lr=1e-3:tau=1e-3' -> ('fedadam', {'adaptive_lr': 0.001, 'tau': 0.001}); names and keys are
    checked so that a typo fails before hours of training, not after."""
    name, _, rest = spec.strip().partition("@")
    if name not in STRATEGY_NAMES + ("local",):
        raise SystemExit(f"--strategies: unknown strategy {name!r} in {spec!r}; known: {', '.join(STRATEGY_NAMES)}")
    overrides: dict = {}
    for item in filter(None, rest.split(":")):
        key, eq, value = item.partition("=")
        if not eq or key not in AggregationConfig.model_fields:
            raise SystemExit(f"--strategies: {item!r} in {spec!r} is not KEY=VALUE with KEY one of "
                             f"{', '.join(AggregationConfig.model_fields)}")
        try:
            overrides[key] = getattr(AggregationConfig.model_validate({key: value}), key)
        except ValueError as err:
            why = err.errors()[0]["msg"] if hasattr(err, "errors") else str(err)
            raise SystemExit(f"--strategies: {key}={value!r} in {spec!r}: {why}") from None
    return name, overrides


def show(value) -> str:
    """A setting's value in its shortest form (numbers as %g, words as they are)."""
    return f"{value:g}" if isinstance(value, (int, float)) else str(value)


def spec_key(name: str, overrides: dict) -> str:
    """The canonical cell name: keys sorted, numbers in shortest form."""
    return name + ("@" + ":".join(f"{k}={show(v)}" for k, v in sorted(overrides.items())) if overrides else "")


def spec_label(name: str, overrides: dict, tuned: bool = False) -> str:
    label = LABELS.get(name, name)
    if overrides:
        label += " (" + ", ".join(f"{k} {show(v)}" for k, v in sorted(overrides.items())) + ")"
    return label + (" tuned" if tuned else "")


# --- cells --------------------------------------------------------------------------------------------------------

def centralized(cfg, banks: int, total_steps: int, tests) -> dict:
    model, loaded = fresh_model(cfg)
    rows = [r for b in range(banks) for r in simulated_bank_rows(cfg, b, banks)[0]]
    enc = encode_sentiment(loaded.tokenizer, rows, cfg.data.max_length)
    tcfg = cfg.training.model_copy(update={"max_steps": total_steps, "eval_every": None, "warmup_ratio": 0.05})
    t0 = time.perf_counter()
    with TreeRSS() as rss:
        train(model, enc, tcfg, pad_id=loaded.tokenizer.pad_token_id, progress=False)
        train_s = time.perf_counter() - t0
        s = predictions(model, loaded.tokenizer, tests, cfg)
    return {**s, "mb_up": 0.0, "mb_down": 0.0, "train_s": round(train_s, 1), "wall_s": round(time.perf_counter() - t0, 1),
            "peak_rss_mb": round(rss.peak / 2**20)}


def local_only(cfg, tests) -> dict:
    """Every bank alone: its share of the budget (rounds x local steps) on its own rows, from the same initial
    adapter, the learning rate on one cosine; the cell's F1 is the banks' mean, every bank's predictions kept."""
    f = cfg.federation
    per_bank, t0 = [], time.perf_counter()
    with TreeRSS() as rss:
        for b in range(f.num_banks):
            model, loaded = fresh_model(cfg)
            enc = encode_sentiment(loaded.tokenizer, simulated_bank_rows(cfg, b, f.num_banks)[0], cfg.data.max_length)
            tcfg = cfg.training.model_copy(update={"max_steps": f.rounds * f.local_steps, "eval_every": None,
                                                   "warmup_ratio": 0.05, "seed": cfg.training.seed + b})
            train(model, enc, tcfg, pad_id=loaded.tokenizer.pad_token_id, progress=False)
            per_bank.append(predictions(model, loaded.tokenizer, tests, cfg))
    return {**{k: float(np.mean([p[k] for p in per_bank])) for k in SETS},
            **{f"{k}_pred": [p[f"{k}_pred"] for p in per_bank] for k in SETS},
            "per_bank": [{k: p[k] for k in SETS} for p in per_bank], "mb_up": 0.0, "mb_down": 0.0,
            "train_s": round(time.perf_counter() - t0, 1), "wall_s": round(time.perf_counter() - t0, 1),
            "peak_rss_mb": round(rss.peak / 2**20)}


def federated(cfg, run_dir: Path, tests) -> dict:
    t0 = time.perf_counter()
    cfg = cfg.model_copy(deep=True)
    cfg.federation.round_timeout_s = BENCH_ROUND_TIMEOUT_S
    with TreeRSS() as rss:
        out = simulate(cfg, run_dir, progress=False)
        dropped = dropped_updates(out["history"])
        train_s = time.perf_counter() - t0
        trains = [h["train"] for h in out["history"] if h.get("train")]
        if not any(t["banks"] for t in trains):
            raise RuntimeError(f"{run_dir}: no bank update was aggregated; see the log above")
        model, loaded = fresh_model(cfg)
        rnd, _, saved = latest_checkpoint(run_dir, loaded.base_sha256)
        set_lora_arrays(model, peft_names_to_ours(saved, list(get_lora_arrays(model))), source=f"round {rnd}")
        per_bank = []
        if cfg.federation.strategy != "fedsa_lora":
            scores = predictions(model, loaded.tokenizer, tests, cfg)
        else:  # each bank's own model on the same rows: every bank's predictions kept, the F1 the banks' mean
            for b in range(cfg.federation.num_banks):
                z = np.load(run_dir / "banks" / f"bank-{b}" / "local_lora_B.npz")
                set_lora_arrays(model, {k: z[k] for k in z.files if k != "__round"}, source=f"bank {b} B", partial=True)
                per_bank.append(predictions(model, loaded.tokenizer, tests, cfg))
            scores = {**{k: float(np.mean([p[k] for p in per_bank])) for k in SETS},
                      **{f"{k}_pred": [p[f"{k}_pred"] for p in per_bank] for k in SETS}}
    up = np.mean([b["bytes_up"] for t in trains for b in t["banks"]]) / 1e6
    down = np.mean([b["bytes_down"] for t in trains for b in t["banks"]]) / 1e6
    cell = {**scores, "mb_up": round(float(up), 3), "mb_down": round(float(down), 3), "train_s": round(train_s, 1),
            "wall_s": round(time.perf_counter() - t0, 1), "peak_rss_mb": round(rss.peak / 2**20),
            "dropped": len(dropped),
            "curve_loss": [round(sum(b["train_loss"] * b["num_examples"] for b in t["banks"])
                                 / sum(b["num_examples"] for b in t["banks"]), 4) if t["banks"] else None
                           for t in trains]}
    if per_bank:
        cell["per_bank"] = [{k: p[k] for k in SETS} for p in per_bank]
    curve = [float(np.mean([e["weighted_f1"] for e in h["eval"] if e["dataset"] in SETS]))
             for h in out["history"] if h.get("train") and h.get("eval")]
    if curve:  # the server's per-round scores on --curve-rows samples
        cell["curve_f1"] = [round(x, 4) for x in curve]
    return cell


# --- statistics over rows and seeds ---------------------------------------------------------------------------------

def summarise(cells: dict, stats: RowBootstrap, args, tuned: dict) -> tuple[list[dict], dict]:
    """One row per (partition, strategy setting) over its seeds; the best setting per strategy and partition."""
    groups: dict[tuple[str, str, str], dict[int, dict]] = {}
    default_layout = f"{args.rounds}x{args.local_steps}"
    for key, cell in cells.items():
        part, spec, seed, *layout = key.split("|")
        groups.setdefault((part, spec, layout[0] if layout else default_layout), {})[int(seed.lstrip("s"))] = cell
    rows, best = [], {}
    for (part, spec, layout), by_seed in groups.items():
        seeds = sorted(by_seed)
        name, overrides = parse_spec(spec) if spec != "centralized" else ("centralized", {})
        means = [(by_seed[s]["fpb"] + by_seed[s]["tfns"]) / 2 for s in seeds]
        boot = stats.resampled([by_seed[s] for s in seeds])
        row = {"partition": part, "strategy": "centralized (ceiling)" if spec == "centralized" else
               spec_label(name, overrides, tuned=name in tuned and tuned[name] == overrides and bool(overrides)),
               "spec": spec, "rounds_x_steps": layout if spec not in ("centralized", "local") else "-", "seeds": len(seeds),
               "fpb_wf1": float(np.mean([by_seed[s]["fpb"] for s in seeds])),
               "tfns_wf1": float(np.mean([by_seed[s]["tfns"] for s in seeds])),
               "mean_wf1": float(np.mean(means)), "seed_sd": float(np.std(means, ddof=1)) if len(seeds) > 1 else None,
               "mean_wf1_ci95": [round(float(q), 4) for q in np.quantile(boot, [0.025, 0.975])]}
        ref = groups.get((part, "fedavg", layout)) or groups.get((part, "fedavg", default_layout))
        common = [s for s in seeds if ref and s in ref]
        if spec not in ("fedavg", "centralized") and common:
            d = stats.resampled([by_seed[s] for s in common]) - stats.resampled([ref[s] for s in common])
            lo, hi = np.quantile(d, [0.025, 0.975])
            point = np.mean([(by_seed[s]["fpb"] + by_seed[s]["tfns"] - ref[s]["fpb"] - ref[s]["tfns"]) / 2
                             for s in common])
            row.update({"vs_fedavg": float(point), "vs_fedavg_ci95": [round(float(lo), 4), round(float(hi), 4)],
                        "p_vs_fedavg": float(min(1.0, 2 * (min((d < 0).mean(), (d > 0).mean()) + (d == 0).mean() / 2))),
                        "vs_fedavg_verdict": "tie" if lo <= 0 <= hi else ("better" if lo > 0 else "worse")})
        ceiling = groups.get(("-", "centralized", default_layout), {})
        paired = [s for s in seeds if s in ceiling]
        if spec != "centralized" and paired:  # the targets are per test set: centralized minus this, paired by seed
            for k in stats.truth:
                d = (stats.resampled([ceiling[s] for s in paired], sets=(k,))
                     - stats.resampled([by_seed[s] for s in paired], sets=(k,)))
                row[f"central_gap_{k}"] = float(np.mean([ceiling[s][k] - by_seed[s][k] for s in paired]))
                row[f"central_gap_{k}_ci95"] = [round(float(q), 4) for q in np.quantile(d, [0.025, 0.975])]
        cells0 = [by_seed[s] for s in seeds]
        if all(c.get("curve_f1") for c in cells0):
            row["curve_f1"] = [float(x) for x in np.mean([c["curve_f1"] for c in cells0], axis=0)]
        for k in ("mb_up", "mb_down", "train_s", "wall_s", "peak_rss_mb"):
            row[k] = float(np.mean([c[k] for c in cells0]))
        row["cpu_min"] = row["train_s"] * args.cpus / 60
        rows.append(row)
        settings = {s for p, s, _ in groups if p == part and s.split("@")[0] == name}
        if spec != "centralized" and len(settings) > 1 and layout == default_layout:  # swept: keep its best
            b = best.setdefault(part, {})
            if name not in b or row["mean_wf1"] > b[name]["mean_wf1"]:
                b[name] = {"overrides": overrides, "mean_wf1": row["mean_wf1"], "spec": spec}
    order = {p: i for i, p in enumerate(["-", *PARTITIONS])}
    rows.sort(key=lambda r: (order.get(r["partition"], 99), -r["mean_wf1"]))
    return rows, best


def floor_row(tests: dict) -> dict:
    from fedfingpt.common.metrics import classification_report

    f = {k: classification_report([r.label for r in v], ["neutral"] * len(v), CLASSES)["weighted_f1"]
         for k, v in tests.items()}
    return {"partition": "-", "strategy": "always 'neutral' (floor)", "fpb_wf1": f["fpb"], "tfns_wf1": f["tfns"],
            "mean_wf1": (f["fpb"] + f["tfns"]) / 2}


# --- the run --------------------------------------------------------------------------------------------------------

def main() -> None:
    ap = benchmark_parser("aggregation", __doc__, config="federated.yaml")
    federation_args(ap, banks=5, rounds=4, local_steps=3, eval_rows=400)
    ap.add_argument("--lr", type=float, default=None, help="client learning rate (default: the config's)")
    ap.add_argument("--partitions", default=",".join(PARTITIONS))
    ap.add_argument("--strategies", default=",".join(STRATEGY_NAMES),
                    help="comma-separated NAME or NAME@KEY=VALUE:KEY=VALUE (federation.aggregation keys)")
    ap.add_argument("--seeds", default="0", help="comma-separated seed offsets (partition, adapter, data order)")
    ap.add_argument("--tuned", default=None, help="a sweep's results JSON: plain strategy names take its best "
                    "settings (chosen under the sweep's partition)")
    ap.add_argument("--splits", default=None, help="rounds x local steps at the same budget, e.g. 5x40,20x10,50x4 "
                    "(each its own cells; the product must equal --rounds x --local-steps)")
    ap.add_argument("--curve-rows", type=int, default=0, help="the server also scores this many rows of FPB and "
                    "TFNS test after every round (the F1-against-rounds plot); 0: the final adapter only")
    ap.add_argument("--client-cpus", type=float, default=2.0, help="2: banks train one at a time with 2 threads")
    ap.add_argument("--cpus", type=int, default=2, help="threads each training process uses (CPU-minutes)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    torch.set_num_threads(args.cpus)
    t_all = time.perf_counter()
    overrides = {
        "federation.num_banks": args.banks, "federation.rounds": args.rounds, "federation.local_steps": args.local_steps,
        "federation.client_eval": False, "federation.resume": False, "federation.min_banks": args.banks - 1,
        # the benchmark scores the final adapter itself, keeping predictions; the server only the per-round curve
        "federation.server_eval_sets": ["fpb", "tfns"] if args.curve_rows else [],
        "federation.server_eval_limit": args.curve_rows or None, "federation.final_eval_full": False,
        "federation.client_cpus": args.client_cpus,
        "data.tasks": ["sentiment"], "data.max_length": 256,  # the sentiment federation (the default adds AML)
    }
    if args.lr is not None:
        overrides["training.lr"] = args.lr
    base = load_config(args.config, overrides)
    tuned: dict = {}
    if args.tuned:
        sweep = json.loads(Path(args.tuned).read_text())
        tuned = {name: b["overrides"] for part in sweep.get("best", {}).values() for name, b in part.items()}
    specs = []
    for s in args.strategies.split(","):
        name, ov = parse_spec(s)
        specs.append((name, ov or tuned.get(name, {})))
    seeds = [int(s) for s in args.seeds.split(",")]
    total_steps = args.banks * args.rounds * args.local_steps
    layouts = [(args.rounds, args.local_steps)]
    if args.splits:
        layouts = [tuple(int(x) for x in sp.split("x")) for sp in args.splits.split(",")]
        if any(r * ls != args.rounds * args.local_steps for r, ls in layouts):
            raise SystemExit(f"--splits {args.splits}: every rounds x local steps must equal --rounds x --local-steps "
                             f"= {args.rounds * args.local_steps} (the same budget)")
    splits = sentiment_splits(base.data.data_dir)
    tests = {k: sample_rows(splits["test"][k], args.eval_rows or None, base.data.seed) for k in SETS}
    stats = RowBootstrap(tests)
    work = Path(args.work)
    settings = {"banks": args.banks, "rounds": args.rounds, "local_steps": args.local_steps, "lr": base.training.lr,
                "config": Path(args.config).name, "eval_rows": args.eval_rows, "client_cpus": args.client_cpus}
    if args.curve_rows:  # (caches written before the option hold no such key)
        settings["curve_rows"] = args.curve_rows
    cache = CellCache(work, settings)
    cells = cache.cells

    def save_cell(key: str, cell: dict) -> None:
        cache.save(key, cell)
        write(args, base, cells, stats, tests, total_steps, tuned, time.perf_counter() - t_all)

    for seed in seeds:
        key = f"-|centralized|s{seed}"
        if key not in cells:
            log.info("centralized, seed %d: %d steps on the union of the banks' rows", seed, total_steps)
            save_cell(key, centralized(seeded(base, seed), args.banks, total_steps, tests))
    for seed in seeds:
        for part in args.partitions.split(","):
            if part not in PARTITIONS:
                raise SystemExit(f"--partitions: unknown {part!r}; known: {', '.join(PARTITIONS)}")
            for (rounds, local_steps), (name, ov) in ((lay, sp) for lay in layouts for sp in specs):
                layout = f"|{rounds}x{local_steps}" if args.splits else ""
                key = f"{part}|{spec_key(name, ov)}|s{seed}{layout}"
                if key in cells or (name == "local" and (rounds, local_steps) != layouts[0]):
                    continue  # local only: one cell per budget, whatever its split
                cfg = seeded(base, seed)
                cfg.federation.rounds, cfg.federation.local_steps = rounds, local_steps
                cfg.name = (f"agg-{part}-{spec_key(name, ov).replace('@', '-').replace(':', '-')}-s{seed}"
                            + layout.replace("|", "-"))
                cfg.federation.partition = cfg.federation.partition.model_copy(update=PARTITIONS[part])
                cfg.federation.strategy = "fedavg" if name == "local" else name
                cfg.federation.aggregation = cfg.federation.aggregation.model_copy(update=ov)
                if name == "hetlora":
                    cfg.federation.aggregation.bank_ranks = dict(HETLORA_RANKS)
                cfg = type(cfg).model_validate(cfg.model_dump())
                log.info("%s: %d banks x %d rounds x %d local steps", key, args.banks, rounds, local_steps)
                cell = local_only(cfg, tests) if name == "local" else federated(cfg, work / cfg.name, tests)
                log.info("%s: fpb %.3f tfns %.3f (%.0f s)", key, cell["fpb"], cell["tfns"], cell["wall_s"])
                save_cell(key, cell)
    write(args, base, cells, stats, tests, total_steps, tuned, time.perf_counter() - t_all)
    log.info("wrote %s.{json,md,png}", args.out)


def write(args, base, cells: dict, stats: RowBootstrap, tests: dict, total_steps: int, tuned: dict, wall: float) -> None:
    rows, best = summarise(cells, stats, args, tuned)
    rows.insert(0, floor_row(tests))
    out = Path(args.out)
    examples = total_steps * base.training.batch_size
    n = {k: len(v) for k, v in tests.items()}
    rows_said = ("the full FPB test and TFNS test sets" if not args.eval_rows else
                 f"a seeded sample of {args.eval_rows} rows of FPB test and of TFNS test (a sample)")
    rows_said = rows_said.replace("TFNS test", "TFNS test (its published validation split)", 1)
    best_said = "; ".join(f"{part}: " + ", ".join(
        f"{LABELS.get(k, k)} " + (", ".join(f"{o} {show(v)}" for o, v in sorted(b["overrides"].items())) or "the config's defaults")
        for k, b in chosen.items()) for part, chosen in best.items() if chosen)
    md_extra = "\n".join([
        f"Budget per cell: {total_steps} optimizer steps of batch {base.training.batch_size} ({examples:,} examples; "
        f"{args.banks} banks x {args.rounds} rounds x {args.local_steps} local steps; centralized the same steps on "
        f"the union of the banks' rows); client lr {base.training.lr:g}. `cpu_min` = training wall time x "
        f"{args.cpus} cores.",
        "",
        f"Scored on {rows_said} ({n['fpb']} + {n['tfns']} rows). `mean_wf1` is the mean of the FPB and TFNS weighted "
        "F1 over the seeds; its interval is a 1,000-resample bootstrap over the test rows (seeds averaged inside each "
        "resample); `seed_sd` the standard deviation over seeds. `vs_fedavg` is the paired difference from FedAvg "
        "under the same partition and seeds, with its bootstrap interval and two-sided p: an interval holding 0 is a "
        "tie (`vs_fedavg_verdict`), not a ranking. `central_gap_fpb` / `central_gap_tfns` are centralized minus the "
        "setting on each test set over the seeds both ran (the targets' measure), with a paired bootstrap interval.",
        "",
        *([f"Best setting per swept strategy: {best_said}."] if best_said else []),
    ])
    finish_results(
        out, benchmark="aggregation", config=base.model_dump(mode="json"), seed=base.training.seed, rows=rows,
        columns=["partition", "strategy", "rounds_x_steps", "seeds", "fpb_wf1", "tfns_wf1", "mean_wf1", "mean_wf1_ci95", "seed_sd",
                 "vs_fedavg", "vs_fedavg_ci95", "p_vs_fedavg", "vs_fedavg_verdict", "central_gap_fpb",
                 "central_gap_fpb_ci95", "central_gap_tfns", "central_gap_tfns_ci95", "mb_up", "mb_down", "cpu_min",
                 "peak_rss_mb"],
        title=f"LoRA aggregation strategies, {base.model.base}, {args.banks} banks, {args.rounds} rounds x "
              f"{args.local_steps} local steps x batch {base.training.batch_size} ({total_steps} steps, {examples:,} "
              f"examples per cell), weighted F1 on {rows_said}",
        md_extra=md_extra,
        extra={"eval_rows": n, "total_steps": total_steps, "examples": examples, "hetlora_bank_ranks": HETLORA_RANKS,
               "seed_base": SEED_BASE, "best": best,
               "aggregation_defaults": AggregationConfig().model_dump(mode="json"), "tuned_from": args.tuned, "tuned": tuned,
               "cells": {k: {f: v for f, v in c.items() if not f.endswith("_pred")} for k, c in cells.items()},
               "wall_s": round(wall, 1), "machine": machine_info()},
    )
    plot(rows, out.with_suffix(".png"))


def plot(rows: list[dict], path: Path) -> None:
    """One panel per partition: every strategy setting's mean weighted F1 with its bootstrap interval, FedAvg's
    setting dark, ties with FedAvg hatched grey, better or worse in colour; the centralized ceiling and the
    always-'neutral' floor as lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    parts = [p for p in PARTITIONS if any(r["partition"] == p for r in rows)]
    if not parts:
        return
    ceiling = next((r for r in rows if r["strategy"].startswith("centralized")), None)
    floor = next((r["mean_wf1"] for r in rows if r["strategy"].startswith("always")), None)
    height = max(3.0, 0.32 * max(sum(r["partition"] == p for r in rows) for p in parts) + 1.2)
    curves = [r for r in rows if r.get("curve_f1")]
    fig, axes = plt.subplots(1, len(parts) + bool(curves), figsize=(5.2 * (len(parts) + bool(curves)), height),
                             squeeze=False)
    colour = {"better": "tab:green", "worse": "tab:red", "tie": "0.7", None: "tab:blue"}
    for ax, p in zip(axes[0], parts):
        these = sorted((r for r in rows if r["partition"] == p), key=lambda r: r["mean_wf1"])
        y = np.arange(len(these))
        lo = [r["mean_wf1"] - r["mean_wf1_ci95"][0] for r in these]
        hi = [r["mean_wf1_ci95"][1] - r["mean_wf1"] for r in these]
        ax.barh(y, [r["mean_wf1"] for r in these], xerr=[lo, hi], capsize=2,
                color=["k" if r["spec"] == "fedavg" else colour[r.get("vs_fedavg_verdict")] for r in these],
                hatch=None)
        split = {r.get("rounds_x_steps") for r in these} - {"-"}  # a --splits run: name each bar's rounds x steps
        ax.set_yticks(y, [r["strategy"] + (f" {r['rounds_x_steps']}" if len(split) > 1 and r.get("rounds_x_steps")
                                           in split else "") for r in these], fontsize=7)
        if ceiling:
            ax.axvline(ceiling["mean_wf1"], color="k", ls="--", lw=1, label="centralized")
        if floor is not None:
            ax.axvline(floor, color="grey", ls=":", lw=1, label="always 'neutral'")
        ax.set(xlim=(0, 1), xlabel="weighted F1, mean of FPB and TFNS\n(95 % bootstrap interval)", title=p)
    axes[0][0].legend(fontsize=7, loc="lower right")
    if curves:  # F1 against rounds: FedAvg and the best three other settings of the first partition with curves
        ax = axes[0][-1]
        part = curves[0]["partition"]
        these = sorted((r for r in curves if r["partition"] == part), key=lambda r: -r["mean_wf1"])
        shown = [r for r in these if r["spec"] == "fedavg"][:1] + [r for r in these if r["spec"] != "fedavg"][:3]
        for r in shown:
            ax.plot(range(1, len(r["curve_f1"]) + 1), r["curve_f1"], marker="o", ms=3,
                    label=f"{r['strategy']} {r['rounds_x_steps']}", color="k" if r["spec"] == "fedavg" else None)
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.set(xlabel="round", ylabel="weighted F1 on the per-round samples", ylim=(0, 1),
               title=f"{part}: F1 against rounds (FedAvg and the best three)")
        ax.legend(fontsize=7, loc="lower right")
    fig.suptitle("black: FedAvg; green / red: better / worse than FedAvg\n(paired interval excludes 0); grey: a tie",
                 fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)


if __name__ == "__main__":
    main()
