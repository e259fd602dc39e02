"""FedAvgM on LoRA: Flower's FedAvgM (server momentum on the averaged update) over our validated LoRA mean."""

from __future__ import annotations

from flwr.serverapp.strategy import FedAvgM

from .fedavg import LoraFedAvg


class LoraFedAvgM(FedAvgM, LoraFedAvg):
    """x ← x − lr·m, m ← momentum·m + (x − mean of the banks' arrays); Flower's arithmetic, our update checks.

    The momentum lives in the server process: a resumed run starts it again from zero.

    Parameters
    ----------
    server_lr : float (default: federation.aggregation.server_lr = 1.0)
        Server learning rate on the averaged update.
    server_momentum : float (default: federation.aggregation.server_momentum = 0.9)
        Momentum of the server's update.
    """

    name = "fedavgm"
    legacy_base = "FedAvgM"

    @classmethod
    def options(cls, cfg) -> dict:
        a = cfg.federation.aggregation
        return {"server_lr": a.server_lr, "server_momentum": a.server_momentum}

    @classmethod
    def legacy_options(cls, cfg) -> dict:
        a = cfg.federation.aggregation
        return {"server_learning_rate": a.server_lr, "server_momentum": a.server_momentum}

    def settings(self) -> dict:
        return {"server_lr": self.server_learning_rate, "server_momentum": self.server_momentum}

    def __init__(self, *, server_lr: float, server_momentum: float, min_valid_updates: int = 1,
                 max_examples: float = float("inf"), round_offset: int = 0, **kwargs) -> None:
        FedAvgM.__init__(self, server_learning_rate=server_lr, server_momentum=server_momentum, **kwargs)
        self.setup_lora(min_valid_updates=min_valid_updates, max_examples=max_examples, round_offset=round_offset)
