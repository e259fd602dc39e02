"""The default job (`make demo`: 3 banks, sentiment + AML, common/default_job.yaml) timed and scored: per round its
training, server and bank evaluation time, and the final global adapter on the full FPB and TFNS test sets.

    python benchmarks/demo.py                       # runs the default job in runs/benchmarks/demo/run (~30 min, 2 cores)
    python benchmarks/demo.py --from-run DIR --wall-s S   # reports a finished run of the default job (e.g. `make
                                                     # demo` timed by /usr/bin/time); S: its wall time in seconds

Writes benchmarks/results/demo.{json,md}. What counts as evaluation: the server's scoring after each round
(`server_eval_s`) and the banks' scoring of their own held-out rows (`client_eval_s`); a round runs from the end of
the previous round's server evaluation to the end of its own (Flower runs training, the banks' evaluation, then the
server's).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

from _shared import benchmark_parser, finish_results  # benchmarks/_shared.py

from fedfingpt.common.config import load_config
from fedfingpt.common.report import TreeRSS


def round_rows(history: list[dict]) -> list[dict]:
    rows, before = [], 0.0
    for h in history:
        t = h.get("train") or {}
        scores = {r["dataset"]: r for r in h["eval"]}
        end = h["t"]
        client_s = (t.get("client_eval") or {}).get("wall_s") or 0.0
        span = end - before  # Flower's round: train, the banks' evaluation, then the server's (which stamps `t`)
        evals = (h.get("server_eval_s") or 0.0) + client_s
        rows.append({
            "round": h["round"], "banks": len(t.get("banks") or []) or None,
            "train_loss": round(sum(b["train_loss"] * b["num_examples"] for b in t["banks"])
                                / sum(b["num_examples"] for b in t["banks"]), 3) if t.get("banks") else None,
            "fpb_wf1": round(scores["fpb"]["weighted_f1"], 3) if "fpb" in scores else None,
            "fpb_n": scores.get("fpb", {}).get("n"),
            "fpb_ci95": scores.get("fpb", {}).get("weighted_f1_ci95"),
            "tfns_wf1": round(scores["tfns"]["weighted_f1"], 3) if "tfns" in scores else None,
            "tfns_n": scores.get("tfns", {}).get("n"),
            "tfns_ci95": scores.get("tfns", {}).get("weighted_f1_ci95"),
            "aml_f1": round(scores["aml"]["f1"], 3) if "aml" in scores else None,
            "aml_pr_auc": round(scores["aml"]["pr_auc"], 3) if "aml" in scores else None,
            "train_phase_s": t.get("round_s"), "server_eval_s": h.get("server_eval_s"),
            "client_eval_s": client_s or None, "round_s": round(span, 1),
            "eval_share": round(evals / span, 3) if span else None, "minutes_at_end": round(end / 60, 1),
        })
        before = end
    return rows


def main() -> None:
    ap = benchmark_parser("demo", __doc__, config=None)
    ap.add_argument("--from-run", help="a finished run folder of the default job (its federated.json)")
    ap.add_argument("--wall-s", type=float, help="with --from-run: the run's measured wall time")
    args = ap.parse_args()
    cfg = load_config(args.config)  # None: the default job
    peak = None
    if args.from_run:
        run = Path(args.from_run)
        if args.wall_s is None:
            ap.error("--from-run needs --wall-s (the wall time measured around the run)")
        wall, how = args.wall_s, "given (--wall-s): measured around the run"
    else:
        run = Path(args.work) / "run"
        if run.exists():
            shutil.rmtree(run)
        cmd = [sys.executable, "-m", "fedfingpt", "simulate", "--out", str(run)] + \
              ([args.config] if args.config else [])
        with TreeRSS() as rss:  # the Ray workers included
            t0 = time.perf_counter()
            subprocess.run(cmd, check=True)
            wall, how = time.perf_counter() - t0, "measured by this script around `fedfingpt simulate`"
        peak = round(rss.peak / 2**20, 1)
    report = json.loads((run / "federated.json").read_text())
    used = report.get("config") or {}
    if used and used != cfg.model_dump(mode="json"):
        print("note: the run's config differs from the default job; the results say which it used", file=sys.stderr)
    rows = round_rows(report["history"])
    last = rows[-1]
    finish_results(
        Path(args.out), benchmark="demo", config=used or cfg.model_dump(mode="json"), seed=cfg.training.seed,
        rows=rows, title="The default job (`make demo`): rounds, evaluation share, final full-test-set scores",
        columns=["round", "banks", "train_loss", "fpb_wf1", "fpb_n", "tfns_wf1", "tfns_n", "aml_f1", "aml_pr_auc",
                 "train_phase_s", "server_eval_s", "client_eval_s", "round_s", "eval_share", "minutes_at_end"],
        extra={"wall_s": round(wall, 1), "wall_how": how, "peak_rss_mb": peak, "run_dir": str(run),
               "final": {"fpb": [last["fpb_wf1"], last["fpb_ci95"], last["fpb_n"]],
                         "tfns": [last["tfns_wf1"], last["tfns_ci95"], last["tfns_n"]]}},
        md_extra=f"Wall time {wall / 60:.1f} min ({how}). Rounds before the last score seeded samples "
                 f"({cfg.federation.server_eval_limit} rows); the last round scores the full test sets.")
    print(f"wrote {args.out}.json/.md")


if __name__ == "__main__":
    main()
