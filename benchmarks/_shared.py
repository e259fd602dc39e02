"""Pieces every benchmark script uses: the federation's seeded initial adapter, dev serving credentials."""

from __future__ import annotations

from pathlib import Path

import torch
import yaml

from fedfingpt.common.certs import make_dev_certs
from fedfingpt.common.models import attach_lora, load_base_model


def fresh_model(cfg):
    """Base model with LoRA at the seeded initialisation every bank and the server start from."""
    loaded = load_base_model(cfg.model)
    torch.manual_seed(cfg.training.seed)
    return attach_lora(loaded.model, cfg.lora), loaded


def dev_serving_files(work: Path, token: str) -> tuple[dict, Path]:
    """Development certificates and a tokens file with one analyst token, under `work`."""
    certs = make_dev_certs(work / "certs")
    tokens = work / "tokens.yaml"
    tokens.write_text(yaml.safe_dump({token: {"caller": "bench", "role": "analyst"}}))
    return certs, tokens
