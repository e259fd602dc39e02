"""LoRA-aware Flower strategies, one per file, chosen by name (federation.strategy) and built by `build_strategy`.

Composition with the privacy work (README, Aggregation): every strategy whose aggregate is a weighted sum of the
banks' arrays (fedavg, fedprox, fedavgm, fedadam, fedyogi, ffa_lora, fedsa_lora, hetlora) can take its sum from
secure aggregation and central DP noise; median, trimmed_mean and server-side norm_bound need each bank's update
in clear (they cannot run under secure aggregation), and fedex_lora needs the dense products B_i·A_i.
"""

from __future__ import annotations

from ...common.config import Config
from .fedadam import LoraFedAdam
from .fedavg import LoraFedAvg
from .fedavgm import LoraFedAvgM
from .fedex_lora import FedExLora
from .fedprox import LoraFedProx
from .fedsa_lora import FedSaLora
from .fedyogi import LoraFedYogi
from .ffa_lora import FfaLora
from .hetlora import HetLora
from .median import LoraMedian
from .norm_bound import LoraNormBound
from .trimmed_mean import LoraTrimmedMean

STRATEGIES = {
    "fedavg": LoraFedAvg, "fedprox": LoraFedProx, "fedavgm": LoraFedAvgM, "fedadam": LoraFedAdam,
    "fedyogi": LoraFedYogi, "ffa_lora": FfaLora, "fedsa_lora": FedSaLora, "fedex_lora": FedExLora,
    "hetlora": HetLora, "median": LoraMedian, "trimmed_mean": LoraTrimmedMean, "norm_bound": LoraNormBound,
}
SUM_BASED = ("fedavg", "fedprox", "fedavgm", "fedadam", "fedyogi", "ffa_lora", "fedsa_lora", "hetlora")


def strategy_options(cfg: Config) -> dict:
    """The constructor arguments a strategy takes from the config, beyond the common ones."""
    a = cfg.federation.aggregation
    return {
        "fedprox": {"proximal_mu": a.proximal_mu},
        "fedavgm": {"server_lr": a.server_lr, "server_momentum": a.server_momentum},
        "fedadam": {"eta": a.adaptive_lr, "beta_1": a.beta_1, "beta_2": a.beta_2, "tau": a.tau},
        "fedyogi": {"eta": a.adaptive_lr, "beta_1": a.beta_1, "beta_2": a.beta_2, "tau": a.tau},
        "fedex_lora": {"scale": cfg.lora.alpha / cfg.lora.r},
        "trimmed_mean": {"trim_fraction": a.trim_fraction},
        "norm_bound": {"bound": a.norm_bound, "factor": a.norm_bound_factor},
    }.get(cfg.federation.strategy, {})


def build_strategy(cfg: Config, **common) -> LoraFedAvg:
    return STRATEGIES[cfg.federation.strategy](**strategy_options(cfg), **common)


__all__ = ["STRATEGIES", "SUM_BASED", "build_strategy", "strategy_options", *[c.__name__ for c in STRATEGIES.values()]]
