"""Round time on Flower's Deployment Engine against the Simulation Engine, on the same scenario.

Engines: `simulation` (Ray, `fedfingpt simulate`), `subprocess` (a SuperLink and 3 SuperNodes on loopback with TLS
and node authentication, Flower's default: a fresh `flwr-clientapp` process per message) and `process` (the same
with each bank's long-lived ClientApp worker, `fedfingpt deploy supernode`'s default). Per round: wall time and its
breakdown from the round report: start-up (the slowest bank's process start-up to its handler), bank setup + training
(the slowest bank's time in its handler, of which training), aggregation, transfer + polling (the rest of the train
phase), evaluation (server and banks, after the train phase). Writes STEM.json and STEM.md.

Usage: python benchmarks/deployment.py [--config configs/federated.yaml] [--set KEY=VALUE ...]
           [--engines simulation,subprocess,process] [--rounds 3] [--out benchmarks/results/deployment]
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import time
from pathlib import Path

import yaml

from fedfingpt.common.config import load_config, parse_override
from fedfingpt.common.report import TreeRSS, write_results
from fedfingpt.common.tasks.sentiment_data import data_dir_from_env

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from loopback import LoopbackFederation  # noqa: E402  (tests/loopback.py: the whole federation on 127.0.0.1)

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _shared import benchmark_parser  # noqa: E402  (benchmarks/_shared.py)

HERE = Path(__file__).resolve().parent
log = logging.getLogger("bench")
ENGINES = ("simulation", "subprocess", "process")
COLUMNS = ["engine", "round", "wall_s", "train_phase_s", "startup_s", "handler_s", "train_s", "aggregate_s",
           "transfer_polling_s", "eval_s", "banks", "mb_up_per_bank"]


def round_rows(engine: str, report: dict) -> list[dict]:
    """Per-round breakdown from a federated.json (server-side times; the banks' own times from their metrics)."""
    rows, prev_t = [], None
    for h in report["history"]:
        if h["round"] == 0 or not h.get("train"):
            prev_t = h["t"]
            continue
        tr, banks = h["train"], h["train"]["banks"]
        wall = h["t"] - prev_t
        prev_t = h["t"]
        startup = max((b.get("startup_s") or 0.0 for b in banks), default=0.0)
        handler = max((b.get("handler_s") or b.get("train_s") or 0.0 for b in banks), default=0.0)
        in_banks = max(((b.get("startup_s") or 0.0) + (b.get("handler_s") or b.get("train_s") or 0.0)
                        for b in banks), default=0.0)
        rows.append({
            "engine": engine, "round": h["round"], "wall_s": round(wall, 2), "train_phase_s": tr.get("round_s"),
            "startup_s": round(startup, 2), "handler_s": round(handler, 2),
            "train_s": round(max((b.get("train_s") or 0.0 for b in banks), default=0.0), 2),
            "aggregate_s": tr.get("aggregate_s"),
            "transfer_polling_s": round(max(0.0, (tr.get("round_s") or 0.0) - in_banks - (tr.get("aggregate_s") or 0)),
                                        2),
            "eval_s": round(wall - (tr.get("round_s") or 0.0), 2), "banks": len(banks),
            "mb_up_per_bank": round(banks[0]["bytes_up"] / 1e6, 3) if banks else None,
        })
    return rows


def mean_row(engine: str, rows: list[dict], label: str) -> dict:
    keys = [c for c in COLUMNS if c not in ("engine", "round", "banks", "mb_up_per_bank")]
    out = {"engine": engine, "round": label}
    for k in keys:
        vals = [r[k] for r in rows if r.get(k) is not None]
        out[k] = round(sum(vals) / len(vals), 2) if vals else None
    return out


def run_simulation(cfg, work: Path) -> dict:
    from fedfingpt.simulations.run import simulate

    simulate(cfg, work / "simulation", progress=False)
    return json.loads((work / "simulation" / "federated.json").read_text())


def run_deployment(cfg, work: Path, isolation: str, bank_threads: int, timeout_s: float) -> dict:
    root = work / f"deploy-{isolation}"
    shutil.rmtree(root, ignore_errors=True)
    data_dir = data_dir_from_env(cfg.data.data_dir)
    cfg = cfg.model_copy(update={"output_dir": str(root / "runs"), "name": "bench"})
    scenario = root / "scenario.yaml"
    root.mkdir(parents=True, exist_ok=True)
    scenario.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    env = {"OMP_NUM_THREADS": str(bank_threads)}  # as the simulation gives each bank federation.client_cpus
    with LoopbackFederation(root, cfg.federation.num_banks, data_dir, isolation=isolation, bank_env=env) as fed:
        t0 = time.perf_counter()
        fed.start()
        log.info("%s: SuperLink and %d banks online in %.1f s", isolation, cfg.federation.num_banks,
                 time.perf_counter() - t0)
        code, out = fed.run(scenario, timeout_s=timeout_s)
        if code != 0:
            raise RuntimeError(f"the {isolation} run failed (exit {code}); see {scenario.with_suffix('.log')}")
    return json.loads((root / "runs" / "bench" / "federated.json").read_text())


def main() -> None:
    ap = benchmark_parser("deployment", __doc__, config="federated.yaml")
    ap.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a key of the scenario")
    ap.add_argument("--engines", default=",".join(ENGINES))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--bank-threads", type=int, default=1, help="torch threads per SuperNode's ClientApp")
    ap.add_argument("--timeout-s", type=float, default=3600, help="longest deployment run")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    # FedAvg, as measured; the engines are compared, not strategies (--set federation.strategy=... to change)
    overrides = {"federation.rounds": args.rounds, "federation.resume": False, "federation.strategy": "fedavg"}
    overrides.update(dict(parse_override(x) for x in (args.set or [])))
    cfg = load_config(args.config, overrides)
    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    unknown = set(engines) - set(ENGINES)
    if unknown:
        ap.error(f"unknown engines {sorted(unknown)}; choose from {', '.join(ENGINES)}")
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)

    rows, summary, peaks = [], [], {}
    for engine in engines:
        log.info("engine %s: %d banks, %d rounds x %d local steps", engine, cfg.federation.num_banks,
                 cfg.federation.rounds, cfg.federation.local_steps)
        with TreeRSS() as rss:  # this process and its descendants: Ray workers, or SuperLink, SuperNodes, workers
            t0 = time.perf_counter()
            report = (run_simulation(cfg, work) if engine == "simulation"
                      else run_deployment(cfg, work, engine, args.bank_threads, args.timeout_s))
            total = time.perf_counter() - t0
        peaks[engine] = round(rss.peak / 2**20)
        per_round = round_rows(engine, report)
        if len(per_round) != cfg.federation.rounds:
            raise RuntimeError(f"the {engine} run reported {len(per_round)} of {cfg.federation.rounds} rounds; "
                               f"see the logs under {work}")
        rows += per_round
        summary.append(mean_row(engine, per_round, "mean"))
        if len(per_round) > 1:
            summary.append(mean_row(engine, per_round[1:], "mean after round 1"))
        summary[-1]["total_s"] = round(total, 1)
    base = {r["round"]: r["wall_s"] for r in summary if r["engine"] == "simulation"}
    for r in summary:
        if r["engine"] != "simulation" and base.get(r["round"]):
            r["vs_simulation"] = round(r["wall_s"] / base[r["round"]], 2)
    json_path, md_path = write_results(
        args.out, benchmark="deployment", config=cfg.model_dump(mode="json"), seed=cfg.training.seed,
        rows=summary + rows, columns=[*COLUMNS, "vs_simulation", "total_s"],
        extra={"engines": engines, "bank_threads": args.bank_threads, "peak_rss_mb": peaks},
        title=f"Round time: Deployment Engine (3 SuperNodes on loopback, TLS + node auth) vs Simulation Engine, "
              f"{cfg.model.base}, {cfg.federation.num_banks} banks x {cfg.federation.local_steps} local steps")
    log.info("wrote %s and %s", json_path, md_path)


if __name__ == "__main__":
    main()
