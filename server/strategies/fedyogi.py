"""FedYogi on LoRA: Flower's FedYogi (additive second-moment update) on the validated mean of the LoRA arrays."""

from __future__ import annotations

from flwr.serverapp.strategy import FedYogi

from .fedadam import AdaptiveLora


class LoraFedYogi(FedYogi, AdaptiveLora):
    """As LoraFedAdam with Yogi's v ← v − (1−β2)·Δ²·sign(v − Δ²); parameters as AdaptiveLora."""

    name = "fedyogi"
    legacy_base = "FedYogi"
    flower = FedYogi
    __init__ = AdaptiveLora.init_adaptive
    aggregate_train = AdaptiveLora.adaptive_aggregate_train
