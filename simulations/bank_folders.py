"""Simulated banks in the data contract: the simulation cuts the public sentiment pool (simulations/partition.py) and
writes each bank's share as a bank folder (common/bank_folder.py); a simulated bank then reads its folder as a
deployed bank reads its own (common/bank_rows.py). So the Simulation Engine, `flwr run . local`, a loopback bank
started with --num-banks and a loopback bank given the folder with --bank-data all train on the same rows.

Who writes them: `fedfingpt simulate` in its run folder (bank-data/, named to its banks by $FEDFINGPT_SIMULATED_BANKS);
under `flwr run` and on a SuperNode with num-partitions, the app's client (fedfingpt.app:clientapp) through
`simulated_banks_mod`, once, under the user's cache; `fedfingpt data simulate-banks` anywhere, for a loopback
federation of real processes.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from ..common.bank_folder import write_sentiment_rows
from ..common.bank_rows import MANIFEST, cut_key, simulated_cache, simulated_root, simulated_rows
from ..common.config import Config
from ..common.report import write_text_atomic
from ..common.tasks.sentiment_data import sentiment_splits
from .partition import partition_pool, training_pool

log = logging.getLogger("fedfingpt.data")


def write_simulated_banks(cfg: Config, out: str | Path, num_banks: int | None = None,
                          cut: tuple[list, list[list[int]]] | None = None) -> list[Path]:
    """OUT/bank-<id>/sentiment.jsonl for every simulated bank: its whole share of the pool (each row with its
    public source), and OUT/banks.json saying what was written (last, so a folder with a manifest is complete).
    A bank splits its folder into local train and test itself, with the scenario's seed. AML cases stay generated
    per scenario (data.aml): a bank folder holds only real transaction exports. `cut`: the (pool, parts) already
    made for this scenario, else they are made here."""
    out = Path(out)
    n = num_banks or cfg.federation.num_banks
    if cut is None:
        pool = training_pool(sentiment_splits(cfg.data.data_dir)["train"], cfg.federation.partition)
        cut = pool, partition_pool(pool, n, cfg.federation.partition)
    pool, parts = cut
    folders = []
    for bank, part in enumerate(parts):
        folder = out / f"bank-{bank}"
        write_sentiment_rows(folder, [pool[i] for i in part])
        folders.append(folder)
    write_text_atomic(out / MANIFEST, json.dumps({
        "key": cut_key(cfg, n), "num_banks": n, "partition": cfg.federation.partition.model_dump(mode="json"),
        "rows": [len(p) for p in parts], "folders": [str(f) for f in folders]}, indent=2) + "\n")
    return folders


def ensure_simulated_banks(cfg: Config, num_banks: int) -> Path:
    """The folder holding this scenario's simulated banks, written under the cache if no run folder or earlier
    writer holds it (atomically per file: banks of one run may ask at once)."""
    root = simulated_root(cfg, num_banks)
    if root is None:
        root = simulated_cache() / cut_key(cfg, num_banks)
        log.info("writing the %d simulated banks' folders under %s", num_banks, root)
        write_simulated_banks(cfg, root, num_banks)
    return root


def simulated_bank_rows(cfg: Config, bank: int, num_banks: int, extra: str | None = None):
    """(local train rows, local test rows) of simulated bank `bank`, exactly as the bank reads them (benchmarks
    pool them for their centralized and local-only baselines)."""
    ensure_simulated_banks(cfg, num_banks)
    return simulated_rows(cfg, bank, num_banks, extra)


def simulated_banks_mod(msg, context, call_next):
    """A Flower mod for the app's client: before a simulated bank (node config partition-id or num-partitions, no
    bank-data) handles a message, its scenario's folders exist. A bank with its own folder passes untouched."""
    nc = context.node_config
    if not nc.get("bank-data") and ("partition-id" in nc or nc.get("num-partitions")):
        from ..common.nodeconfig import NodeConfig, NodeConfigError
        from ..common.runconfig import config_for_message

        cfg = config_for_message(msg, context)
        try:
            node = NodeConfig.from_flower(nc, cfg.federation.num_banks)
        except NodeConfigError:
            return call_next(msg, context)  # the bank refuses it by name
        if node.data_dir:
            cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"data_dir": node.data_dir})})
        if "sentiment" in cfg.data.tasks:
            ensure_simulated_banks(cfg, node.num_banks)
    return call_next(msg, context)
