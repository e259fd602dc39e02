"""LoRA-aware Flower strategies, one per file, found by this package and chosen by name (federation.strategy).

Each file holds a subclass of `LoraFedAvg` with its own `name`; it declares what it shares, what it refuses to
compose with, its options and its client behaviour (server/strategies/fedavg.py says how). `check_strategy`
refuses a config that names an unknown strategy or combines one with what it cannot run under; the command line,
the simulation and the ServerApp call it before anything starts.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil

from ...common.config import Config, ConfigError
from .fedavg import LoraFedAvg

# what a strategy may refuse: (the setting, what a strategy that composes with it does)
COMPOSES = {
    "secure_aggregation": ("privacy.secure_aggregation", "needs only the sum"),
    "central_dp": ("privacy.mode central", "aggregates a mean of clipped updates"),
    "local_dp": ("privacy.mode local", "trains with per-example gradients only"),
}


def _discover() -> dict[str, type[LoraFedAvg]]:
    found: dict[str, type[LoraFedAvg]] = {}
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{__name__}.{info.name}")
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if issubclass(cls, LoraFedAvg) and cls.__module__ == module.__name__ and "name" in vars(cls):
                if cls.name in found and found[cls.name] is not cls:
                    raise RuntimeError(f"two strategies are named {cls.name}: {found[cls.name]} and {cls}")
                found[cls.name] = cls
    return found


STRATEGIES: dict[str, type[LoraFedAvg]] = _discover()
STRATEGY_NAMES = tuple(STRATEGIES)


def strategy_class(name: str) -> type[LoraFedAvg]:
    try:
        return STRATEGIES[name]
    except KeyError:
        raise ConfigError(f"federation.strategy {name!r} is not a strategy; choose one of "
                          f"{', '.join(STRATEGY_NAMES)}") from None


def composing(what: str) -> list[str]:
    """The strategies that compose with `what` (a key of COMPOSES)."""
    return [n for n, c in STRATEGIES.items() if what not in c.refuses]


def check_strategy(cfg: Config) -> type[LoraFedAvg]:
    """The config's strategy class, or ConfigError naming what does not compose and what would."""
    f, p = cfg.federation, cfg.privacy
    cls = strategy_class(f.strategy)
    used = {"secure_aggregation": p.secure_aggregation, "central_dp": p.mode == "central", "local_dp": p.mode == "local"}
    for what, on in used.items():
        if on and what in cls.refuses:
            setting, fits = COMPOSES[what]
            raise ConfigError(f"{setting} with federation.strategy {f.strategy}: {cls.refuses[what]}; set "
                              f"federation.strategy to one that {fits}: {', '.join(composing(what))}")
    if p.secure_aggregation and cls.legacy_base is None:
        raise ConfigError(f"privacy.secure_aggregation with federation.strategy {f.strategy}: it has no secure path")
    if p.secure_aggregation and f.aggregation.weighting == "uniform":
        raise ConfigError("federation.aggregation.weighting uniform with privacy.secure_aggregation: SecAgg+ unmasks "
                          "only the example-weighted mean; set weighting to examples, or turn secure aggregation off")
    if f.aggregation.bank_ranks and not cls.lower_rank:
        takers = ", ".join(n for n, c in STRATEGIES.items() if c.lower_rank)
        raise ConfigError("federation.aggregation.bank_ranks gives banks their own LoRA ranks; only strategy "
                          f"{takers} can aggregate those (strategy is {f.strategy})")
    try:
        cls.check(cfg)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    return cls


def build_strategy(cfg: Config, **common) -> LoraFedAvg:
    cls = check_strategy(cfg)
    strategy = cls(**cls.options(cfg), **common)
    strategy.uniform_weights = cfg.federation.aggregation.weighting == "uniform"
    return strategy


__all__ = ["STRATEGIES", "STRATEGY_NAMES", "LoraFedAvg", "build_strategy", "check_strategy", "composing",
           "strategy_class"]
