"""A bank's state inside a Flower client process: its config, model with LoRA, and its training set from its data
folder (its own, or the one the simulation wrote for a simulated bank).

Built once per process and reused across rounds (simulation actors and long-lived clients serve many messages).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from ..common.adapter import start_from_adapter
from ..common.bank_folder import parse_label_map
from ..common.bank_rows import folder_training_set, simulated_training_set
from ..common.config import Config
from ..common.models import attach_lora, load_base_model
from ..common.nodeconfig import NodeConfig
from ..common.prompt import Encoded
from ..common.tasks.sentiment_data import SentimentExample

log = logging.getLogger("fedfingpt.client")


@dataclass
class BankState:
    bank: int
    model: object
    tokenizer: object
    train: list[Encoded]
    test: list[SentimentExample]
    rank: int  # this bank's LoRA rank (HetLoRA banks may train below the global lora.r)
    aml_test: list = field(default_factory=list)  # this bank's held-out AML cases (data.tasks has aml)
    aml_val: list = field(default_factory=list)  # its AML validation cases (data.aml.val_share): the calibration's


_MODELS: dict[str, tuple] = {}
_BANKS: dict[tuple, BankState] = {}


def _model(cfg: Config, rank: int):
    # alpha scales with the rank so that a bank's first components mean what the global ones do (HetLoRA)
    lora = cfg.lora
    if rank != cfg.lora.r:
        lora = cfg.lora.model_copy(update={"r": rank, "alpha": cfg.lora.alpha * rank / cfg.lora.r})
    start = cfg.federation.initial_adapter
    key = cfg.model.model_dump_json() + lora.model_dump_json() + str(start)
    if key not in _MODELS:
        loaded = load_base_model(cfg.model)
        model = attach_lora(loaded.model, lora, seed=cfg.training.seed)
        if start:  # the federation's starting point, as the server's (server/app.py): matrices the bank never
            # receives (FFA-LoRA's frozen A) must be the server's too
            start_from_adapter(model, start, base_sha256=loaded.base_sha256)
        _MODELS[key] = (model, loaded)
    return _MODELS[key]


def bank_rank(cfg: Config, node: NodeConfig) -> int:
    """node config lora-rank (a SuperNode's own), else federation.aggregation.bank_ranks, else lora.r. Whether the
    strategy takes a lower rank is the server's to say (client/plan.py: lora-any-rank)."""
    bank = node.bank_id
    rank = node.lora_rank or cfg.federation.aggregation.bank_ranks.get(bank, cfg.lora.r)
    if not 1 <= rank <= cfg.lora.r:
        raise ValueError(f"bank {bank}: LoRA rank {rank} must be between 1 and the global lora.r ({cfg.lora.r})")
    return rank


def forget_banks() -> None:
    """Drop every cached model and bank state (a long-lived worker does so when a new run starts)."""
    _MODELS.clear()
    _BANKS.clear()


def bank_state(cfg: Config, context) -> BankState:
    node = NodeConfig.from_flower(context.node_config, cfg.federation.num_banks)
    data = {"scrub": node.scrub_policy(cfg.data.scrub)}
    if node.data_dir:  # the public data sets' folder instead of the scenario's data.data_dir (a simulated bank)
        data["data_dir"] = node.data_dir
    cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update=data)})
    bank, num_banks = node.bank_id, node.num_banks
    rank = bank_rank(cfg, node)
    key = (cfg.model_dump_json(), bank, num_banks, rank, node.bank_data, node.label_map, node.accept_skips)
    if key not in _BANKS:
        model, loaded = _model(cfg, rank)
        if node.bank_data:  # a bank's own folder in the data contract, read whole
            train, test_rows, aml_test, aml_val, _ = folder_training_set(
                cfg, loaded.tokenizer, bank, node.bank_data, parse_label_map(node.label_map, "node config label-map"),
                node.accept_skips, node.extra_train)
        else:  # a simulated bank (the simulation, or a loopback run that mimics it): the folder the simulation
            # wrote for it (simulations/bank_folders.py)
            train, test_rows, aml_test, aml_val = simulated_training_set(cfg, loaded.tokenizer, bank, num_banks,
                                                                         node.extra_train)
        _BANKS[key] = BankState(bank, model, loaded.tokenizer, train, test_rows, rank, aml_test, aml_val)
    return _BANKS[key]
