"""FedYogi on LoRA: Flower's FedYogi (additive second-moment update) on the validated mean of the LoRA arrays."""

from __future__ import annotations

from flwr.serverapp.strategy import FedYogi

from .fedavg import LoraFedAvg


class LoraFedYogi(FedYogi, LoraFedAvg):
    """As LoraFedAdam with Yogi's v ← v − (1−β2)·Δ²·sign(v − Δ²).

    Parameters
    ----------
    eta : float (default: federation.aggregation.adaptive_lr = 3e-3)
        Server step size.
    beta_1, beta_2 : float (defaults: 0.9, 0.99)
        First- and second-moment decays.
    tau : float (default: 1e-6)
        Adaptivity floor (LoRA updates are ~1e-3 per coordinate).
    """

    name = "fedyogi"
    legacy_base = "FedYogi"

    @classmethod
    def options(cls, cfg) -> dict:
        a = cfg.federation.aggregation
        return {"eta": a.adaptive_lr, "beta_1": a.beta_1, "beta_2": a.beta_2, "tau": a.tau}

    @classmethod
    def legacy_options(cls, cfg) -> dict:
        return cls.options(cfg)

    def settings(self) -> dict:
        return {"eta": self.eta, "beta_1": self.beta_1, "beta_2": self.beta_2, "tau": self.tau}

    def __init__(self, *, eta: float, beta_1: float, beta_2: float, tau: float, min_valid_updates: int = 1,
                 max_examples: float = float("inf"), round_offset: int = 0, **kwargs) -> None:
        FedYogi.__init__(self, eta=eta, beta_1=beta_1, beta_2=beta_2, tau=tau, **kwargs)
        self.setup_lora(min_valid_updates=min_valid_updates, max_examples=max_examples, round_offset=round_offset)

    def aggregate_train(self, server_round, replies):
        arrays, metrics = FedYogi.aggregate_train(self, server_round, replies)
        return self.in_reference_dtype(arrays), metrics
