"""FedAdam on LoRA: Flower's FedAdam (Reddi et al.) applied to the validated mean of the banks' LoRA arrays.

`AdaptiveLora` is what FedAdam and FedYogi (fedyogi.py) share: options, settings and the dtype of the result."""

from __future__ import annotations

from flwr.serverapp.strategy import FedAdam

from .fedavg import LoraFedAvg


class AdaptiveLora(LoraFedAvg):
    """A Flower adaptive strategy (`flower`: FedAdam or FedYogi) over our validated LoRA mean. LoRA updates are
    ~1e-3 per coordinate, so eta is ~1e-3 and tau far below Flower's default 1e-3. The moments live in the server
    process: a resumed run restarts them.

    Parameters
    ----------
    eta : float (default: federation.aggregation.adaptive_lr = 3e-3)
        Server step size.
    beta_1, beta_2 : float (defaults: 0.9, 0.99)
        First- and second-moment decays.
    tau : float (default: 1e-6)
        Adaptivity floor (LoRA updates are ~1e-3 per coordinate).
    """

    flower: type
    # Subclasses list Flower's class first, so that its aggregation runs over LoraFedAvg's checks (Flower's
    # FedOpt -> our LoraFedAvg -> FedAvg); they take these two methods explicitly (see LoraFedAdam).

    @classmethod
    def options(cls, cfg) -> dict:
        a = cfg.federation.aggregation
        return {"eta": a.adaptive_lr, "beta_1": a.beta_1, "beta_2": a.beta_2, "tau": a.tau}

    @classmethod
    def legacy_options(cls, cfg) -> dict:
        return cls.options(cfg)

    def settings(self) -> dict:
        return {"eta": self.eta, "beta_1": self.beta_1, "beta_2": self.beta_2, "tau": self.tau}

    def init_adaptive(self, *, eta: float, beta_1: float, beta_2: float, tau: float, min_valid_updates: int = 1,
                      max_examples: float = float("inf"), round_offset: int = 0, **kwargs) -> None:
        self.flower.__init__(self, eta=eta, beta_1=beta_1, beta_2=beta_2, tau=tau, **kwargs)
        self.setup_lora(min_valid_updates=min_valid_updates, max_examples=max_examples, round_offset=round_offset)

    def adaptive_aggregate_train(self, server_round, replies):
        arrays, metrics = self.flower.aggregate_train(self, server_round, replies)
        return self.in_reference_dtype(arrays), metrics


class LoraFedAdam(FedAdam, AdaptiveLora):
    """Adam on the pseudo-gradient (mean − global); parameters as AdaptiveLora."""

    name = "fedadam"
    legacy_base = "FedAdam"
    flower = FedAdam
    __init__ = AdaptiveLora.init_adaptive
    aggregate_train = AdaptiveLora.adaptive_aggregate_train
