"""FedProx on LoRA: Flower's FedProx sends mu with every round; the bank adds (mu/2)·||w − w_global||² over its
LoRA parameters inside the one training loop (client.app.proximal_term)."""

from __future__ import annotations

from flwr.serverapp.strategy import FedProx

from .fedavg import LoraFedAvg


class LoraFedProx(FedProx, LoraFedAvg):
    """FedAvg aggregation; the proximal weight travels in the train config as `proximal-mu`.

    Parameters
    ----------
    proximal_mu : float (default: federation.aggregation.proximal_mu = 0.01)
        Weight of (mu/2)·||w − w_global||² in every bank's local loss.
    """

    name = "fedprox"
    refuses = {"local_dp": "the proximal term's gradient is not a per-example gradient, so DP-SGD would drop it; "
                           "use fedavg or ffa_lora under DP"}

    @classmethod
    def options(cls, cfg) -> dict:
        return {"proximal_mu": cfg.federation.aggregation.proximal_mu}

    @classmethod
    def legacy_round_config(cls, cfg) -> dict:  # Flower's FedProx sends mu on the Message path, not on the legacy one
        return {"proximal-mu": cfg.federation.aggregation.proximal_mu}

    def settings(self) -> dict:
        return {"proximal_mu": self.proximal_mu}

    def __init__(self, *, proximal_mu: float, min_valid_updates: int = 1, max_examples: float = float("inf"),
                 round_offset: int = 0, **kwargs) -> None:
        FedProx.__init__(self, proximal_mu=proximal_mu, **kwargs)
        self.setup_lora(min_valid_updates=min_valid_updates, max_examples=max_examples, round_offset=round_offset)
