"""LoRA-aware Flower strategies, one per file, chosen by name (federation.strategy)."""

from .fedavg import LoraFedAvg

STRATEGIES = {"fedavg": LoraFedAvg}

__all__ = ["LoraFedAvg", "STRATEGIES"]
