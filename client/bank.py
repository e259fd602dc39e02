"""A bank's state inside a Flower client process: its config, model with LoRA, and its own data partition.

Built once per process and reused across rounds (simulation actors and long-lived clients serve many messages).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from ..common.config import Config, config_from_dict, load_config
from ..common.models import attach_lora, load_base_model
from ..common.prompt import Encoded
from ..common.tasks.sentiment import encode_sentiment
from ..common.tasks.sentiment_data import SentimentExample, sentiment_splits

log = logging.getLogger("fedfingpt.client")
REPO = Path(__file__).resolve().parents[1]


@dataclass
class BankState:
    bank: int
    model: object
    tokenizer: object
    train: list[Encoded]
    test: list[SentimentExample]


_MODELS: dict[str, tuple] = {}
_BANKS: dict[tuple, BankState] = {}
_POOLS: dict[tuple, tuple] = {}


def config_from_context(context) -> Config:
    """The run's config: `config-json` (set by fedfingpt) or `config-file` from the Flower run config."""
    rc = dict(context.run_config or {})
    if rc.get("config-json"):
        return config_from_dict(json.loads(rc["config-json"]), "run_config.config-json")
    path = rc.get("config-file") or os.environ.get("FEDFINGPT_CONFIG")
    if path:
        p = Path(path)
        return load_config(p if p.is_absolute() or p.exists() else REPO / p)
    return load_config(None)


def _model(cfg: Config):
    key = cfg.model.model_dump_json() + cfg.lora.model_dump_json()
    if key not in _MODELS:
        import torch

        loaded = load_base_model(cfg.model)
        torch.manual_seed(cfg.training.seed)  # every party starts from the same LoRA init
        _MODELS[key] = (attach_lora(loaded.model, cfg.lora), loaded)
    return _MODELS[key]


def bank_rows(cfg: Config, bank: int, num_banks: int) -> tuple[list[SentimentExample], list[SentimentExample]]:
    """This bank's local train and test rows under the scenario's partitioning (deterministic in the seed)."""
    from ..simulations.partition import bank_split, partition_pool, training_pool

    key = (cfg.data.model_dump_json(), cfg.federation.partition.model_dump_json(), num_banks)
    if key not in _POOLS:  # one process may serve several banks: partition once
        splits = sentiment_splits(cfg.data.data_dir)
        pool = training_pool(splits["train"], cfg.federation.partition)
        _POOLS[key] = (pool, partition_pool(pool, num_banks, cfg.federation.partition))
    pool, parts = _POOLS[key]
    return bank_split(pool, parts[bank], cfg.federation.partition, bank)


def bank_state(cfg: Config, context) -> BankState:
    nc = dict(context.node_config or {})
    bank = int(nc.get("bank-id", nc.get("partition-id", 0)))
    num_banks = int(nc.get("num-partitions", cfg.federation.num_banks))
    key = (cfg.model_dump_json(), bank, num_banks)
    if key not in _BANKS:
        model, loaded = _model(cfg)
        train_rows, test_rows = bank_rows(cfg, bank, num_banks)
        log.info("bank %d of %d: %d training rows, %d local test rows", bank, num_banks, len(train_rows), len(test_rows))
        _BANKS[key] = BankState(bank, model, loaded.tokenizer,
                                encode_sentiment(loaded.tokenizer, train_rows, cfg.data.max_length), test_rows)
    return _BANKS[key]
