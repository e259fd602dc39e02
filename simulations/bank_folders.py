"""Each simulated bank's rows written as a bank folder in the data contract (common/bank_folder.py), so that a
loopback federation whose banks read their own folders trains on exactly the simulation's rows (`fedfingpt data
simulate-banks`; `fedfingpt simulate` also leaves them in its run folder, under bank-data/)."""

from __future__ import annotations

import json
from pathlib import Path

from ..common.bank_folder import write_atomic, write_sentiment_rows
from ..common.bank_rows import partition_pool, training_pool
from ..common.config import Config
from ..common.tasks.sentiment_data import sentiment_splits


def write_simulated_banks(cfg: Config, out: str | Path) -> list[Path]:
    """OUT/bank-<id>/sentiment.jsonl for every bank of the scenario: its whole partition (train and local test, in
    the order the simulation splits them), and OUT/banks.json saying what was written. The bank splits the folder
    with the same seed as the simulation splits the partition, so the local train and test rows are the same.
    AML cases stay generated per scenario (data.aml): a bank folder holds only real transaction exports."""
    out = Path(out)
    n = cfg.federation.num_banks
    splits = sentiment_splits(cfg.data.data_dir)
    pool = training_pool(splits["train"], cfg.federation.partition)
    parts = partition_pool(pool, n, cfg.federation.partition)
    folders = []
    for bank, part in enumerate(parts):
        folder = out / f"bank-{bank}"
        write_sentiment_rows(folder, [pool[i] for i in part])
        folders.append(folder)
    write_atomic(out / "banks.json", json.dumps({
        "num_banks": n, "partition": cfg.federation.partition.model_dump(mode="json"),
        "rows": [len(p) for p in parts], "folders": [str(f) for f in folders]}, indent=2) + "\n")
    return folders
