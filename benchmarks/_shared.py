"""Pieces every benchmark script uses: its command line, the federation's seeded initial adapter, dev serving
credentials, the cell cache and the results files."""

from __future__ import annotations

import argparse
import logging
import os
import time
from pathlib import Path

import yaml

from fedfingpt.common.certs import make_dev_certs
from fedfingpt.common.models import attach_lora, load_base_model


HERE = Path(__file__).resolve().parent
log = logging.getLogger("bench")


def benchmark_parser(name: str, doc: str | None, config: str | None = "federated.yaml",
                     work: bool = True) -> argparse.ArgumentParser:
    """The arguments every benchmark takes: --config (a file under configs/, or none: the script's own settings),
    --work (run folders and the resumable cell cache under runs/benchmarks/NAME) and --out (the results files,
    benchmarks/results/NAME.json and .md)."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=str(HERE.parent / "configs" / config) if config else None,
                    help="YAML config the benchmark starts from")
    if work:
        ap.add_argument("--work", default=f"runs/benchmarks/{name}", help="run folders and the cell cache")
    ap.add_argument("--out", default=str(HERE / "results" / name), help="results path without suffix")
    return ap


def federation_args(ap: argparse.ArgumentParser, *, banks: int, rounds: int, local_steps: int,
                    lr: float | None = None, eval_rows: int = 150) -> None:
    """The federation a benchmark runs: --banks, --rounds, --local-steps, --eval-rows (seeded rows of FPB test and
    TFNS valid the server scores) and, where the benchmark sets it, --lr."""
    ap.add_argument("--banks", type=int, default=banks)
    ap.add_argument("--rounds", type=int, default=rounds)
    ap.add_argument("--local-steps", type=int, default=local_steps)
    if lr is not None:
        ap.add_argument("--lr", type=float, default=lr)
    ap.add_argument("--eval-rows", type=int, default=eval_rows, help="rows of FPB test and TFNS valid (seeded sample)")


# A simulated round runs its banks one after another on a machine shared with other work: a deployment's round
# timeout (federation.round_timeout_s, 30 minutes) would drop the last bank of a slow round and change the cell
BENCH_ROUND_TIMEOUT_S = 12 * 3600


def federation_overrides(args) -> dict:
    """Config overrides for the federation of `federation_args`: banks, rounds and local steps as given, one bank
    may be missing from a round (a failure, never slowness: see BENCH_ROUND_TIMEOUT_S), no client-side evaluation,
    a fresh run (never a resume of an older one)."""
    return {"federation.num_banks": args.banks, "federation.rounds": args.rounds,
            "federation.local_steps": args.local_steps, "federation.client_eval": False, "federation.resume": False,
            "federation.min_banks": max(1, args.banks - 1), "federation.round_timeout_s": BENCH_ROUND_TIMEOUT_S}


def dropped_updates(history: list[dict]) -> list[dict]:
    """Every update a simulated federation's server dropped (round, bank, reason), from its report's history: a
    cell states them rather than pass for one in which every bank took part."""
    out = [{"round": h.get("round"), **d} for h in history for d in ((h.get("train") or {}).get("dropped") or [])]
    for d in out:
        log.warning("round %s: an update of bank %s was dropped (%s)", d["round"], d.get("bank"), d.get("reason"))
    return out


def fresh_model(cfg):
    """Base model with LoRA at the seeded initialisation every bank and the server start from."""
    loaded = load_base_model(cfg.model)
    return attach_lora(loaded.model, cfg.lora, seed=cfg.training.seed), loaded


SEED_BASE = 42  # a benchmark's seed s: partition seed and training seed (initial adapter, data order) 42 + s


def seeded(cfg, seed: int):
    """cfg for seed offset `seed`: the partition, the initial adapter, the banks' data order and DP's sampling and
    noise move together; the test rows (data.seed) stay, so seeds compare row by row."""
    cfg = cfg.model_copy(deep=True)
    cfg.federation.partition.seed = SEED_BASE + seed
    cfg.training.seed = SEED_BASE + seed
    return cfg


def predictions(model, tok, tests: dict, cfg) -> dict:
    """Each test set's weighted F1 and every predicted class as a string of indices into the sentiment LABELS
    ('0' negative, '1' neutral, '2' positive): what paired bootstrap comparisons between cells resample."""
    from fedfingpt.common.evaluate import evaluate_sentiment
    from fedfingpt.common.tasks.sentiment_data import LABELS

    rows = evaluate_sentiment(model, tok, tests, cfg.eval.model_copy(update={"method": "likelihood", "calibrate": False}),
                              max_length=cfg.data.max_length, progress=False, keep_predictions=True)
    out = {}
    for r in rows:
        out[r["dataset"]] = r["weighted_f1"]
        out[f"{r['dataset']}_pred"] = "".join(str(LABELS.index(p)) for p in r["predictions"])
    return out


class RowBootstrap:
    """Bootstrap resamples of the test rows, one seeded draw shared by every cell, so that cells compare paired."""

    def __init__(self, tests: dict, resamples: int = 1000) -> None:
        import numpy as np
        from fedfingpt.common.tasks.sentiment_data import LABELS

        rng = np.random.default_rng(0)
        self.resamples, self.classes = resamples, len(LABELS)
        self.truth = {k: np.array([LABELS.index(r.label) for r in v]) for k, v in tests.items()}
        self.rows = {k: rng.integers(0, len(t), size=(resamples, len(t))) for k, t in self.truth.items()}

    def resampled(self, cells: list[dict], sets: tuple[str, ...] | None = None):
        """Per resample: the mean over the given cells (seeds) of the mean over the test sets (`sets`, default all)
        of the weighted F1, from each cell's `<set>_pred` strings (a personalised cell, one string per bank: the
        banks' mean)."""
        import numpy as np
        from fedfingpt.common.metrics import weighted_f1_from_indices

        chosen = {k: v for k, v in self.truth.items() if sets is None or k in sets}
        if not chosen:
            raise ValueError(f"sets {sets!r}: none of the scored test sets ({', '.join(self.truth)})")
        out = np.zeros(self.resamples)
        for k, truth in chosen.items():
            t = truth[self.rows[k]]
            for c in cells:
                preds = c[f"{k}_pred"] if isinstance(c[f"{k}_pred"], list) else [c[f"{k}_pred"]]
                for p in preds:
                    pred = np.frombuffer(p.encode(), dtype=np.uint8) - ord("0")
                    if len(pred) != len(truth):
                        raise SystemExit(f"a cached cell scored {len(pred)} {k} rows, this run {len(truth)}: "
                                         "its test rows differ; use another --work")
                    out += weighted_f1_from_indices(t, pred[self.rows[k]], self.classes) / len(preds)
        return out / (len(chosen) * len(cells))


def dev_serving_files(work: Path, token: str) -> tuple[dict, Path]:
    """Development certificates and a tokens file with one analyst token, under `work`."""
    certs = make_dev_certs(work / "certs")
    tokens = work / "tokens.yaml"
    tokens.write_text(yaml.safe_dump({token: {"caller": "bench", "role": "analyst"}}))
    return certs, tokens


class CellCache:
    """A benchmark's finished cells in WORK/cells.json, so that an interrupted run continues where it stopped.

    With `settings`, a cache written under other settings is refused (its cells would not compare); each `save`
    writes the whole file to a temporary name and renames it, so a crash never leaves half a cache.
    """

    def __init__(self, work: Path, settings: dict | None = None, indent: int | None = 1) -> None:
        import json

        self.path = Path(work) / "cells.json"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.indent = indent
        self.data = json.loads(self.path.read_text()) if self.path.is_file() else {}
        if settings is not None:
            if self.data.get("settings") not in (None, settings):
                raise SystemExit(f"{self.path} holds cells of other settings {self.data['settings']}; "
                                 "use another --work")
            self.data["settings"] = settings
        self.cells: dict = self.data.setdefault("cells", {})

    def save(self, key: str, cell: dict) -> None:
        import json

        self.cells[key] = cell
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=self.indent))
        tmp.replace(self.path)


class CpuMeter:
    """Cores kept busy over an interval: the whole machine's (from /proc/stat, every process) and this process's
    (every thread of it). `with CpuMeter() as m: ...` then `m.machine_cores`, `m.process_cores`, `m.wall_s`."""

    @staticmethod
    def _machine_busy_s() -> float:
        with open("/proc/stat", encoding="ascii") as f:
            ticks = [int(x) for x in f.readline().split()[1:]]
        idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)  # idle + iowait
        return (sum(ticks[:8]) - idle) / os.sysconf("SC_CLK_TCK")

    def __enter__(self) -> "CpuMeter":
        self._t, self._p, self._m = time.perf_counter(), time.process_time(), self._machine_busy_s()
        return self

    def __exit__(self, *exc) -> None:
        self.wall_s = time.perf_counter() - self._t
        self.process_cores = (time.process_time() - self._p) / self.wall_s
        self.machine_cores = (self._machine_busy_s() - self._m) / self.wall_s


def finish_results(out: Path, *, md_extra: str = "", **kwargs) -> None:
    """write_results (JSON with the machine block, markdown table) plus sections of prose under the table."""
    from fedfingpt.common.report import write_results, write_text_atomic

    _, md = write_results(out, **kwargs)
    if md_extra:
        write_text_atomic(md, md.read_text() + "\n" + md_extra + "\n")
