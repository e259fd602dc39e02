"""A bank's state inside a Flower client process: its config, model with LoRA, and its own data partition.

Built once per process and reused across rounds (simulation actors and long-lived clients serve many messages).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
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
    rank: int  # this bank's LoRA rank (HetLoRA banks may train below the global lora.r)
    aml_test: list = field(default_factory=list)  # this bank's held-out AML cases (data.tasks has aml)


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


def _model(cfg: Config, rank: int):
    # alpha scales with the rank so that a bank's first components mean what the global ones do (HetLoRA)
    lora = cfg.lora
    if rank != cfg.lora.r:
        lora = cfg.lora.model_copy(update={"r": rank, "alpha": cfg.lora.alpha * rank / cfg.lora.r})
    key = cfg.model.model_dump_json() + lora.model_dump_json()
    if key not in _MODELS:
        loaded = load_base_model(cfg.model)
        _MODELS[key] = (attach_lora(loaded.model, lora, seed=cfg.training.seed), loaded)
    return _MODELS[key]


def bank_rank(cfg: Config, bank: int, node_config: dict) -> int:
    """node config lora-rank (a SuperNode's own), else federation.aggregation.bank_ranks, else lora.r."""
    rank = int(node_config.get("lora-rank", cfg.federation.aggregation.bank_ranks.get(bank, cfg.lora.r)))
    if rank != cfg.lora.r and cfg.federation.strategy != "hetlora":
        raise ValueError(f"bank {bank} asks for LoRA rank {rank} but the federation's rank is {cfg.lora.r} and its "
                         f"strategy ({cfg.federation.strategy}) needs equal ranks; use strategy hetlora")
    if not 1 <= rank <= cfg.lora.r:
        raise ValueError(f"bank {bank}: LoRA rank {rank} must be between 1 and the global lora.r ({cfg.lora.r})")
    return rank


def bank_rows(cfg: Config, bank: int, num_banks: int,
              extra: str | None = None) -> tuple[list[SentimentExample], list[SentimentExample]]:
    """This bank's local train and test rows under the scenario's partitioning (deterministic in the seed), plus
    its own extra training rows (data.bank_extra_train or node config extra-train), which stay at the bank."""
    from ..simulations.partition import bank_split, partition_pool, training_pool

    key = (cfg.data.model_dump_json(), cfg.federation.partition.model_dump_json(), num_banks)
    if key not in _POOLS:  # one process may serve several banks: partition once
        splits = sentiment_splits(cfg.data.data_dir)
        pool = training_pool(splits["train"], cfg.federation.partition)
        _POOLS[key] = (pool, partition_pool(pool, num_banks, cfg.federation.partition))
    pool, parts = _POOLS[key]
    train, test = bank_split(pool, parts[bank], cfg.federation.partition, bank)
    extra = extra or cfg.data.bank_extra_train.get(bank)
    if extra:
        from ..common.tasks.sentiment_data import load_instruction_jsonl

        rows = load_instruction_jsonl(extra, source="bank")
        log.info("bank %d: %d extra training rows from %s", bank, len(rows), extra)
        train = train + rows
    return train, test


def forget_banks() -> None:
    """Drop every cached model, partition and bank state (a long-lived worker does so when a new run starts)."""
    _MODELS.clear()
    _BANKS.clear()
    _POOLS.clear()


def bank_state(cfg: Config, context) -> BankState:
    nc = dict(context.node_config or {})
    if nc.get("data-dir"):  # a SuperNode's own data folder (node config) instead of the scenario's data.data_dir
        cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"data_dir": str(nc["data-dir"])})})
    bank = int(nc.get("bank-id", nc.get("partition-id", 0)))
    num_banks = int(nc.get("num-partitions", cfg.federation.num_banks))
    rank = bank_rank(cfg, bank, nc)
    key = (cfg.model_dump_json(), bank, num_banks, rank)
    if key not in _BANKS:
        model, loaded = _model(cfg, rank)
        train, test_rows, aml_test = bank_training_set(cfg, loaded.tokenizer, bank, num_banks, nc.get("extra-train"))
        _BANKS[key] = BankState(bank, model, loaded.tokenizer, train, test_rows, rank, aml_test)
    return _BANKS[key]


def bank_training_set(cfg: Config, tokenizer, bank: int, num_banks: int,
                      extra: str | None = None) -> tuple[list[Encoded], list[SentimentExample], list]:
    """The one adapter's training examples for the bank's tasks (data.tasks): its sentiment partition, its AML
    cases (with both tasks, repeated or sampled to make up data.aml.mix of the set); and its local test rows."""
    train: list[Encoded] = []
    test_rows: list[SentimentExample] = []
    aml_test: list = []
    if "sentiment" in cfg.data.tasks:
        train_rows, test_rows = bank_rows(cfg, bank, num_banks, extra)
        train = encode_sentiment(tokenizer, train_rows, cfg.data.max_length)
    if "aml" in cfg.data.tasks:
        from ..common.tasks.aml import encode_aml
        from ..simulations.aml_scenario import aml_split, mix_to_share

        split = aml_split(cfg.data, num_banks)
        cases = split.train[bank]
        aml = encode_aml(tokenizer, cases, cfg.data.max_length, cfg.data.aml.max_lines)
        if train:
            aml = mix_to_share(aml, len(train), cfg.data.aml.mix, cfg.data.seed + bank,
                               repeat=cfg.privacy.mode != "local")
        aml_test = split.bank_test(bank)
        log.info("bank %d (%s): %d AML cases (%d laundering; typologies %s) as %d training examples", bank,
                 split.banks[bank], len(cases), sum(c.suspicious for c in cases),
                 ", ".join(sorted(split.typologies(bank))) or "none", len(aml))
        train = train + aml
    log.info("bank %d of %d: %d training examples (%s), %d local sentiment test rows, %d local AML test cases", bank,
             num_banks, len(train), "+".join(cfg.data.tasks), len(test_rows), len(aml_test))
    return train, test_rows, aml_test
