"""AML screening across banks on SmolLM2-135M-Instruct: rules baseline, boosted trees on the case features (local
per bank and centralized), and the adapter local-only per bank, federated, centralized.

The scenario is configs/federated_aml.yaml: 4 generated banks whose launderers use different typologies, so a
bank's local model has never seen most typologies. Every setting is scored on the same held-out cases (all banks):
precision, recall, F1, PR-AUC, alert rate at P(suspicious) >= 0.5, and recall per typology. "Unseen recall" is
the recall on the held-out cases whose typology is absent from the chosen bank's (default: bank 3) training cases.

Worlds (--world): easy is the scenario as written (the textbook shapes, tens of cases per bank); medium and hard
set data.aml.generator.difficulty to 0.5 and 1 (innocent look-alikes of every shape the rules look for, and
laundering that hides) with 2,000 accounts per bank (thousands of cases per bank); amlworld reads the IBM
AMLworld HI-Small laundering patterns under data/aml (positives: each pattern around its focus account; negatives:
windows of the 1,000 normal transactions the shared sample holds, which cover 30 minutes: a negative there is
far smaller than a pattern, so that world tells little about look-alikes; its adapter cells train at the hard world's
budget and formulation). Each world has its own work folder and results files (aml, aml_medium, aml_hard,
aml_amlworld).

Budgets match: a local-only bank trains rounds x local_steps steps (what it trains in the federation), the
federation trains banks x rounds x local_steps in all, and centralized training takes that many steps on the pooled
cases. The decision head (--settings head; common/tasks/aml_head.py) is logistic regression on the frozen base
model's hidden states where the answer states its decision: local-only per bank, federated (summed gradients each
round, the same function as pooled training) and centralized; its states are kept in the work folder.
Cells are cached in the work folder (an interrupted run continues); results are rewritten after every cell.
Writes benchmarks/results/aml.{json,md,png}.
Usage: python benchmarks/aml.py [--config configs/federated_aml.yaml] [--world easy|medium|hard|amlworld]
       [--unseen-bank 3] [--settings rules,trees,local,federated,centralized,head]
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import torch

from fedfingpt.common.train import train
from fedfingpt.common.adapter import get_lora_arrays, set_lora_arrays
from fedfingpt.common.config import load_config, parse_override
from fedfingpt.common.metrics import aml_report
from fedfingpt.common.report import TreeRSS, machine_info, save_figure, write_results, write_text_atomic
from fedfingpt.common.tasks.aml import TYPOLOGIES, encode_aml
from fedfingpt.common.tasks.aml_rules import rules_score
from fedfingpt.server.checkpoint import latest_checkpoint, peft_names_to_ours
from fedfingpt.common.tasks.aml_scenario import aml_split, write_aml_report
from fedfingpt.simulations.run import simulate

from _shared import BENCH_ROUND_TIMEOUT_S, CellCache, benchmark_parser, dropped_updates, fresh_model  # benchmarks/_shared.py

HERE = Path(__file__).resolve().parent
log = logging.getLogger("bench")


def scored(report: dict, wall: float, steps: int, peak_mb: float | None) -> dict:
    keep = ("n", "n_positive", "precision", "recall", "f1", "pr_auc", "alert_rate", "typology_accuracy",
            "recall_by_typology", "scores")
    return {**{k: report.get(k) for k in keep}, "wall_s": round(wall, 1), "steps": steps,
            "peak_rss_mb": None if peak_mb is None else round(peak_mb)}


def rules_cell(cfg, test) -> dict:
    t0 = time.perf_counter()
    scores = [rules_score(c, cfg.data.aml.generator.reporting_threshold)[0] for c in test]
    r = aml_report([c.typology for c in test], scores, [None] * len(test), threshold=cfg.data.aml.threshold)
    return scored({**r, "typology_accuracy": None, "scores": scores}, time.perf_counter() - t0, 0, None)


def trees_cell(cfg, cases, test, seed: int) -> dict:
    """LightGBM on the case features (common/tasks/aml_trees.py): threshold tuned on its own validation share."""
    from fedfingpt.common.tasks.aml_trees import train_trees

    t0 = time.perf_counter()
    model = train_trees(cases, seed=seed, reporting_threshold=cfg.data.aml.generator.reporting_threshold)
    scores = [float(x) for x in model.scores(test)]
    r = aml_report([c.typology for c in test], scores, [None] * len(test), threshold=model.threshold)
    return {**scored({**r, "typology_accuracy": None, "scores": scores}, time.perf_counter() - t0, 0, None),
            "threshold": round(model.threshold, 4), "trees": model.booster.num_trees()}


def trained_cell(cfg, cases, val: list, steps: int, test, seed_offset: int, reasons: list,
                 curve: list | None = None) -> dict:
    """The one training loop on `cases` for `steps` steps (cosine from training.lr), then the held-out score with
    the risk score calibrated (and the threshold tuned) on `val`, one list of validation cases per bank. With
    `curve` (validation cases), PR-AUC and ROC-AUC on them every steps/4 steps: whether the decision is being learnt."""
    from fedfingpt.common.evaluate import score_aml
    from fedfingpt.common.metrics import binary_intervals

    points: list[dict] = []

    def periodic(step: int) -> dict:
        p, _ = score_aml(model, loaded.tokenizer, curve, cfg.eval.model_copy(update={"method": "likelihood"}),
                         max_length=cfg.data.max_length, max_lines=cfg.data.aml.max_lines, typology=False)
        r = aml_report([c.typology for c in curve], [float(x) for x in p], [None] * len(curve), threshold=0.5)
        ci = binary_intervals([int(c.suspicious) for c in curve], [float(x) for x in p], 0.5, seed=cfg.training.seed)
        points.append({"step": step, "pr_auc": round(r["pr_auc"], 4), "pr_auc_ci95": _ci(ci["pr_auc"]),
                       "roc_auc": round(r["roc_auc"], 4), "mean_p": round(float(np.mean(p)), 4)})
        log.info("curve step %d: %s", step, points[-1])
        return points[-1]

    t0 = time.perf_counter()
    with TreeRSS() as rss:
        model, loaded = fresh_model(cfg)
        enc = encode_aml(loaded.tokenizer, cases, cfg.data.max_length, cfg.data.aml.max_lines,
                         decision_weight=cfg.data.aml.decision_weight)
        log.info("%d training cases, %.0f tokens each on average (data.max_length %d)", len(enc),
                 np.mean([len(e) for e in enc]), cfg.data.max_length)
        tcfg = cfg.training.model_copy(update={"max_steps": steps, "epochs": None,
                                               "eval_every": max(1, steps // 4) if curve else None,
                                               "warmup_ratio": 0.0, "seed": cfg.training.seed + seed_offset,
                                               "log_every": max(1, steps // 8)})
        result = train(model, enc, tcfg, pad_id=loaded.tokenizer.pad_token_id, progress=False,
                       eval_fn=periodic if curve else None,
                       on_log=lambda s, l: log.info("step %d/%d loss %.4f", s, steps, l))
        train_s = result.wall_s  # without the curve's evaluations
        r = score(model, loaded, cfg, test, val, reasons)
    return {**scored(r, time.perf_counter() - t0, steps, rss.peak / 2**20), **extras(r),
            "s_per_step": round(train_s / steps, 2), "losses": result.losses, **({"curve": points} if curve else {})}


def decision_states_cached(cfg, path: Path, groups: dict[str, list]) -> dict[str, np.ndarray]:
    """The frozen base model's decision states (common/tasks/aml_head.py) of each group of cases, kept by case id
    in `path` (an .npz another run of the same world may share: --states) so a rerun computes only the cases it
    lacks. The file records what the states depend on (model, prompt length and lines, bf16) and is recomputed
    when they differ."""
    from fedfingpt.common.models import load_base_model
    from fedfingpt.common.tasks.aml_head import decision_states

    key = f"{cfg.model.base}|{cfg.data.max_length}|{cfg.data.aml.max_lines}|{cfg.eval.bf16_autocast}"
    known: dict[str, np.ndarray] = {}
    if path.exists():
        with np.load(path) as z:
            if str(z["key"]) == key:
                known = dict(zip((str(i) for i in z["ids"]), z["states"]))
            else:
                log.warning("%s holds states of %s, not %s: recomputing", path, z["key"], key)
    todo = [c for cases in groups.values() for c in cases if c.id not in known]
    todo = list({c.id: c for c in todo}.values())
    if todo:
        loaded = load_base_model(cfg.model)
        done, t0 = 0, time.perf_counter()

        def tick(k: int) -> None:
            nonlocal done
            done += k
            if done % 512 < k or done == len(todo):
                log.info("decision states: %d/%d cases (%.3f s a case)", done, len(todo),
                         (time.perf_counter() - t0) / done)

        states = decision_states(loaded.model, loaded.tokenizer, todo, max_length=cfg.data.max_length,
                                 max_lines=cfg.data.aml.max_lines, bf16=cfg.eval.bf16_autocast, on_batch=tick)
        known.update({c.id: x for c, x in zip(todo, states)})
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.stem + ".tmp.npz")
        np.savez(tmp, key=np.array(key), ids=np.array(list(known)), states=np.stack(list(known.values())))
        tmp.replace(path)  # written whole, then renamed: never half a file
    return {g: np.stack([known[c.id] for c in cases]) if cases else np.zeros((0, 0)) for g, cases in groups.items()}


def head_cells(cfg, split, test: list, states: Path, wanted_banks) -> dict[str, dict]:
    """The decision head (logistic regression on the frozen base model's decision states, common/tasks/aml_head.py):
    local-only per bank (its training and validation cases), federated (the banks' summed gradients each round, the
    penalty and the calibration from their summed validation losses and histograms), centralized (pooled cases).
    The model is not trained; the reasons are not the head's (it gives the decision and the score only)."""
    from fedfingpt.common.tasks.aml_calibration import Calibration, score_histogram
    from fedfingpt.common.tasks.aml_head import fit_head_tuned

    nb = cfg.federation.num_banks
    groups = {"test": test, **{f"train{b}": split.train[b] for b in range(nb)},
              **{f"val{b}": split.val[b] for b in range(nb)}}
    t0 = time.perf_counter()
    st = decision_states_cached(cfg, states, groups)
    states_s = time.perf_counter() - t0
    lab = {g: np.array([c.suspicious for c in cases]) for g, cases in groups.items()}
    tr = [(st[f"train{b}"], lab[f"train{b}"]) for b in range(nb)]
    va = [(st[f"val{b}"], lab[f"val{b}"]) for b in range(nb)]
    pooled = [(np.concatenate([x for x, _ in tr]), np.concatenate([y for _, y in tr]))]
    plans = {**{f"head-local/{b}": ([tr[b]], [va[b]]) for b in wanted_banks},
             "head-federated": (tr, va), "head-central": (pooled, va)}
    out = {}
    for key, (train_sets, val_sets) in plans.items():
        t1 = time.perf_counter()
        head = fit_head_tuned(train_sets, val_sets)
        cal = Calibration.fit([score_histogram(head.scores(x), y) for x, y in val_sets])
        q = np.asarray(cal.probability(head.scores(st["test"])))
        r = aml_report([c.typology for c in test], [float(x) for x in q], [None] * len(test), threshold=cal.threshold)
        out[key] = {**scored({**r, "typology_accuracy": None, "scores": [round(float(x), 5) for x in q]},
                             time.perf_counter() - t1, head.rounds, None),
                    "threshold": cal.threshold, "l2": head.l2,
                    "calibration": {**cal.__dict__, "validation_cases": cal.n_positive + cal.n_negative},
                    "states_s": round(states_s, 1), "train_cases": int(sum(len(y) for _, y in train_sets))}
    return out


def extras(r: dict) -> dict:
    return {k: r[k] for k in ("threshold", "calibration", "raw", "ece_raw", "ece_calibrated", "reasons")}


def score(model, loaded, cfg, test, val: list, reasons: list) -> dict:
    """Scores on the held-out cases: P(suspicious) calibrated on the banks' validation histograms (each bank's
    counts only, summed: common/tasks/aml_calibration.py), flagged at the calibration's F1-best threshold; the
    uncalibrated P at 0.5 beside it; and the generated replies' reasons checked on `reasons`."""
    from fedfingpt.common.evaluate import check_aml_reasons, fit_aml_calibration, score_aml
    from fedfingpt.common.metrics import expected_calibration_error

    ecfg = cfg.eval.model_copy(update={"method": "likelihood"})
    kw = {"max_length": cfg.data.max_length, "max_lines": cfg.data.aml.max_lines}
    cal = fit_aml_calibration(model, loaded.tokenizer, val, cfg.eval, **kw)
    t0 = time.perf_counter()
    p, _ = score_aml(model, loaded.tokenizer, test, ecfg, **kw, typology=False)
    eval_s = time.perf_counter() - t0
    q = np.asarray(cal.probability(p))
    y = [c.suspicious for c in test]
    typs = [c.typology for c in test]
    r = aml_report(typs, [float(x) for x in q], [None] * len(test), threshold=cal.threshold)
    raw = aml_report(typs, [float(x) for x in p], [None] * len(test), threshold=0.5)
    check = check_aml_reasons(model, loaded.tokenizer, reasons, ecfg, max_length=cfg.data.max_length,
                              max_lines=cfg.data.aml.max_lines) if reasons else None
    log.info("calibration %s; reasons %s", cal, check and {k: check[k] for k in ("n", "parsed_rate", "faithful_rate")})
    return {**r, "typology_accuracy": None, "scores": [round(float(x), 5) for x in q], "threshold": cal.threshold,
            "calibration": {**cal.__dict__, "validation_cases": cal.n_positive + cal.n_negative},
            "raw": {k: raw[k] for k in ("precision", "recall", "f1", "alert_rate")},
            "ece_raw": round(expected_calibration_error(p, y), 4),
            "ece_calibrated": round(expected_calibration_error(q, y), 4), "reasons": check,
            "test_s_per_case": round(eval_s / max(1, len(test)), 3)}


def federated_cell(cfg, test, work: Path, val: list, reasons: list) -> dict:
    t0 = time.perf_counter()
    run_dir = work / cfg.name
    cfg = cfg.model_copy(deep=True)
    cfg.federation.round_timeout_s = BENCH_ROUND_TIMEOUT_S
    with TreeRSS() as rss:
        dropped = dropped_updates(simulate(cfg, run_dir, progress=False)["history"])
        train_s = time.perf_counter() - t0
        model, loaded = fresh_model(cfg)
        rnd, _, saved = latest_checkpoint(run_dir, loaded.base_sha256)
        set_lora_arrays(model, peft_names_to_ours(saved, list(get_lora_arrays(model))), source=f"round {rnd}")
        r = score(model, loaded, cfg, test, val, reasons)
    f = cfg.federation
    steps = f.num_banks * f.rounds * f.local_steps
    return {**scored(r, time.perf_counter() - t0, steps, rss.peak / 2**20), **extras(r),
            "s_per_step": round(train_s / steps, 2), "dropped_updates": dropped}


# about 1,000-1,300 training and 170-210 validation cases per bank, 2,300 held out; the adapter's budget per bank
# is rounds x local_steps = 32 steps of 8 cases; narratives spell out 3 transfers (the features line carries the rest)
BIG = {"data.aml.generator.accounts_per_bank": 2000, "data.aml.val_share": 0.1, "data.aml.max_lines": 3,
       "federation.rounds": 4, "federation.local_steps": 8}


def _ci(pair) -> str:
    return f"{pair[0]:.3f}-{pair[1]:.3f}"


WORLDS = {"easy": {}, "medium": {"data.aml.generator.difficulty": 0.5, **BIG},
          "hard": {"data.aml.generator.difficulty": 1.0, **BIG},
          # the adapter's budget, validation share and formulation as in the generated worlds (BIG less the generator)
          "amlworld": {"data.aml.source": "amlworld", "data.aml.path": "aml/ibm_amlworld_hi_small_patterns",
                       **{k: v for k, v in BIG.items() if not k.startswith("data.aml.generator.")}}}


def test_sample(test: list, n: int, seed: int) -> list:
    """A seeded sample of n held-out cases, stratified by typology (each typology keeps its share, at least one)."""
    if n >= len(test):
        return list(test)
    rng = np.random.default_rng(seed)
    by: dict = {}
    for c in test:
        by.setdefault(c.typology, []).append(c)
    out = []
    for t, group in sorted(by.items()):
        k = max(1, round(n * len(group) / len(test)))
        out += [group[i] for i in sorted(rng.choice(len(group), min(k, len(group)), replace=False))]
    return sorted(out, key=lambda c: c.id)


def unseen_recall(cell: dict, test, threshold: float, unseen: set[str]) -> float | None:
    threshold = cell.get("threshold", threshold)  # boosted trees use their tuned threshold
    idx = [i for i, c in enumerate(test) if c.typology in unseen]
    if not idx:
        return None
    return float(np.mean([cell["scores"][i] >= threshold for i in idx]))


def main() -> None:
    ap = benchmark_parser("aml", __doc__, config="federated_aml.yaml")
    ap.add_argument("--unseen-bank", type=int, default=3, help="the bank whose unseen typologies are reported")
    ap.add_argument("--settings", default="rules,trees,local,federated,centralized,head")
    ap.add_argument("--world", choices=list(WORLDS), default="easy", help="which AML world (see above)")
    ap.add_argument("--test-sample", type=int, default=None,
                    help="score a seeded sample of this many held-out cases (stratified by typology; every cell the "
                    "same cases, and the results say it is a sample); default all")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a config key after the world's (e.g. data.aml.decision_weight=50); the cell "
                    "cache refuses a folder of other settings: give --work and --out too")
    ap.add_argument("--local-banks", default=None, help="comma-separated banks whose local-only adapter cells run "
                    "(default all)")
    ap.add_argument("--curve-cases", type=int, default=120, help="validation cases (a seeded sample) scored every "
                    "quarter of the centralized training: the learning curve of the decision (0 = none)")
    ap.add_argument("--states", default=None, help="the decision head's states file (.npz, by case id; default "
                    "WORK/decision_states.npz): another run of the same world's, to reuse its states")
    ap.add_argument("--reasons", type=int, default=40, help="held-out cases whose generated replies are checked "
                    "for faithful reasons, per adapter cell (seeded, half laundering)")
    args = ap.parse_args()
    suffix = ("" if args.world == "easy" else f"_{args.world}") + (f"_s{args.test_sample}" if args.test_sample else "")
    if suffix:  # each world (and sample) keeps its own cell cache and results files
        if args.work == "runs/benchmarks/aml":
            args.work = f"runs/benchmarks/aml{suffix}"
        if args.out == str(HERE / "results" / "aml"):
            args.out = str(HERE / "results" / f"aml{suffix}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    torch.set_num_threads(2)
    t_all = time.perf_counter()
    cfg = load_config(args.config, {"federation.resume": False, "federation.server_eval_every": 0,
                                    "federation.strategy": "fedavg",  # the plain federated baseline
                                    **WORLDS[args.world], **dict(parse_override(o) for o in args.set)})
    f = cfg.federation
    split = aml_split(cfg.data, f.num_banks)
    test = split.test if not args.test_sample else test_sample(split.test, args.test_sample, cfg.data.seed)
    val = split.val
    wanted = args.settings.split(",")
    if not all(val) and set(wanted) & {"local", "federated", "centralized", "head"}:
        raise SystemExit("the adapter cells calibrate on every bank's validation cases: set data.aml.val_share "
                         "(the medium and hard worlds set 0.1)")
    rng = np.random.default_rng(cfg.data.seed)
    pos = [c for c in test if c.suspicious]
    neg = [c for c in test if not c.suspicious]
    k = min(args.reasons // 2, len(pos), len(neg))
    reasons = [pos[i] for i in rng.choice(len(pos), k, replace=False)] + \
        [neg[i] for i in rng.choice(len(neg), k, replace=False)] if k else []
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    write_aml_report(split, work)
    cache = CellCache(work, {"config": cfg.model_dump(mode="json"), "test_ids": [c.id for c in test]}, indent=None)
    cells = cache.cells

    def save(key: str, cell: dict) -> None:
        cache.save(key, cell)
        write(args, cfg, split, test, cells, time.perf_counter() - t_all)
        log.info("%s: %s", key, {k: v for k, v in cell.items() if k not in ("scores", "recall_by_typology")})

    per_bank = f.rounds * f.local_steps
    if "rules" in wanted and "rules" not in cells:
        save("rules", rules_cell(cfg, test))
    if "trees" in wanted:
        for b in range(f.num_banks):
            if f"trees-local/{b}" not in cells:
                try:
                    save(f"trees-local/{b}", trees_cell(cfg, split.train[b] + split.val[b], test, seed=b))
                except ValueError as err:  # a bank whose cases hold one label only
                    log.warning("trees-local/%d: %s", b, err)
        if "trees-central" not in cells:
            save("trees-central", trees_cell(cfg, [c for bank in (*split.train, *split.val) for c in bank], test,
                                             seed=100))
    if "local" in wanted:
        for b in ([int(x) for x in args.local_banks.split(",")] if args.local_banks else range(f.num_banks)):
            if f"local/{b}" not in cells:
                save(f"local/{b}", trained_cell(cfg, split.train[b], [val[b]], per_bank, test, seed_offset=b,
                                                reasons=reasons))
    if "federated" in wanted and "federated" not in cells:
        save("federated", federated_cell(cfg, test, work, val, reasons))
    if "centralized" in wanted and "centralized" not in cells:
        pooled = [c for bank in split.train for c in bank]
        val_all = [c for bank in val for c in bank]
        curve = test_sample(val_all, args.curve_cases, cfg.data.seed) if args.curve_cases else None
        save("centralized", trained_cell(cfg, pooled, val, f.num_banks * per_bank, test, seed_offset=100,
                                         reasons=reasons, curve=curve))
    if "head" in wanted:
        banks = [int(x) for x in args.local_banks.split(",")] if args.local_banks else range(f.num_banks)
        keys = [f"head-local/{b}" for b in banks] + ["head-federated", "head-central"]
        if any(k not in cells for k in keys):
            states = Path(args.states) if args.states else work / "decision_states.npz"
            for key, cell in head_cells(cfg, split, test, states, banks).items():
                if key not in cells:
                    save(key, cell)
    write(args, cfg, split, test, cells, time.perf_counter() - t_all)
    log.info("wrote %s.{json,md,png}", args.out)


def write(args, cfg, split, test: list, cells: dict, wall: float) -> None:
    thr, b = cfg.data.aml.threshold, args.unseen_bank
    unseen = {t for t in TYPOLOGIES if any(c.typology == t for c in test)} - split.typologies(b)
    from fedfingpt.common.metrics import binary_intervals

    rows = []
    y = [int(c.suspicious) for c in test]
    for key, c in cells.items():
        ci = binary_intervals(y, c["scores"], c.get("threshold", thr), seed=cfg.training.seed)
        setting, _, bank = key.partition("/")
        kind = {"trees-local": "trees ", "head-local": "head "}.get(setting, "")
        name = setting if not bank else f"{kind}local-only bank {bank}"
        rows.append({"setting": name, "f1": c["f1"], "f1_ci95": _ci(ci["f1"]), "pr_auc_ci95": _ci(ci["pr_auc"]),
                     "precision": c["precision"], "recall": c["recall"], "pr_auc": c["pr_auc"],
                     "alert_rate": c["alert_rate"], f"unseen_recall_bank{b}": unseen_recall(c, test, thr, unseen),
                     "f1_uncalibrated": (c.get("raw") or {}).get("f1"), "ece": c.get("ece_calibrated"),
                     "ece_uncalibrated": c.get("ece_raw"),
                     "reasons_faithful": (c.get("reasons") or {}).get("faithful_rate"),
                     "replies_parsed": (c.get("reasons") or {}).get("parsed_rate"),
                     "steps": c["steps"], "s_per_step": c.get("s_per_step"), "wall_s": c["wall_s"],
                     "peak_rss_mb": c["peak_rss_mb"],
                     "recall_by_typology": {t: v["recall"] for t, v in c["recall_by_typology"].items()}})
    typ_rows = [{"setting": r["setting"], **r["recall_by_typology"]} for r in rows]
    held = {t: sum(c.typology == t for c in test) for t in TYPOLOGIES}
    write_results(
        Path(args.out), benchmark="aml", config=cfg.model_dump(mode="json"), seed=cfg.training.seed, rows=rows,
        columns=["setting", "f1", "f1_ci95", "precision", "recall", "pr_auc", "pr_auc_ci95", "alert_rate",
                 f"unseen_recall_bank{b}", "f1_uncalibrated", "ece", "ece_uncalibrated", "reasons_faithful",
                 "replies_parsed", "steps", "s_per_step", "wall_s", "peak_rss_mb"],
        title=f"AML screening on {cfg.model.base}, world {args.world} ({split.source}): "
              + (f"a seeded sample (stratified by typology) of {len(test)} of the {len(split.test)} held-out cases "
                 if len(test) < len(split.test) else f"{len(test)} held-out cases ")
              + f"({sum(c.suspicious for c in test)} laundering), {cfg.federation.num_banks} banks; "
              + (f"bank {b} never trained on {', '.join(sorted(unseen))}" if unseen
                 else f"bank {b} trained on every held-out typology"),
        extra={"cells": cells, "unseen_bank": b, "unseen_typologies": sorted(unseen), "held_out_by_typology": held,
               "bank_table": split.table(), "recall_by_typology_rows": typ_rows, "wall_s": round(wall, 1),
               "machine": machine_info(), "args": vars(args)},
    )
    from fedfingpt.common.metrics import format_markdown_table

    md = Path(args.out).with_suffix(".md")
    write_text_atomic(md, md.read_text() + "\nRecall per typology (held-out cases: " +
                  ", ".join(f"{t} {n}" for t, n in held.items() if n) + ")\n\n" +
                  format_markdown_table(typ_rows, ["setting", *[t for t in TYPOLOGIES if held[t]]]) + "\n")
    plot(rows, sorted(unseen), [t for t in TYPOLOGIES if held[t]], Path(args.out).with_suffix(".png"), b)


def plot(rows: list[dict], unseen: list[str], typs: list[str], path: Path, bank: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    show = [r for r in rows if r["setting"] in ("rules", "trees-central", f"local-only bank {bank}", "federated",
                                                "centralized", "head-federated")]
    fig, ax = plt.subplots(figsize=(9, 3.8))
    width = 0.8 / max(1, len(show))
    for i, r in enumerate(show):
        ax.bar(np.arange(len(typs)) + i * width, [r["recall_by_typology"].get(t, 0) for t in typs], width,
               label=f"{r['setting']} (alert rate {r['alert_rate']:.2f})")
    ax.set_xticks(np.arange(len(typs)) + 0.4 - width / 2, [t + ("*" if t in unseen else "") for t in typs],
                  rotation=20, fontsize=8)
    ax.set(ylim=(0, 1.05), ylabel="recall", title=f"AML recall per typology (* = never in bank {bank}'s training); "
           "a high alert rate buys recall")
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)


if __name__ == "__main__":
    main()
