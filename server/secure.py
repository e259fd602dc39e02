"""The coordinator's side of secure aggregation: Flower's SecAgg+ workflow (legacy API) runs each round, so the
server receives only masked vectors and unmasks nothing but the example-weighted mean of the banks' shared LoRA
arrays. That mean goes to the legacy form of the chosen strategy (FedAvg, or FedAvgM/FedAdam/FedYogi for their
server step), then to the same evaluation, checkpoints and report as the plain path.

What the server never sees here: any bank's update in clear. What it still sees: each bank's example count and
training metrics (loss, time) in the clear metrics of the protocol's last stage.
"""

from __future__ import annotations

import logging
import math
import time
from collections import OrderedDict

from flwr.common import ndarrays_to_parameters
from flwr.server import LegacyContext, ServerConfig
from flwr.server import strategy as legacy
from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow

from ..common.adapter import arrays_nbytes, arrays_to_record
from ..common.config import Config
from .strategies import check_strategy

log = logging.getLogger("fedfingpt.server")


def legacy_strategy(cfg: Config, shared: "OrderedDict", evaluate, rounds_log: list, round_offset: int):
    """The legacy Flower strategy the chosen strategy names (its `legacy_base`), recording each round like
    LoraFedAvg does."""
    f = cfg.federation
    names = list(shared)
    chosen = check_strategy(cfg)
    base = getattr(legacy, chosen.legacy_base)
    extra = chosen.legacy_options(cfg)
    size = arrays_nbytes(shared)

    class Recorded(base):
        def aggregate_fit(self, server_round, results, failures):
            t0 = time.perf_counter()
            entry = {"round": server_round + round_offset, "banks": [], "dropped": [], "secure_aggregation": True}
            for _, res in results:
                m = dict(res.metrics)
                entry["banks"].append({"node_id": None, "bank": m.get("bank-id"), "num_examples": res.num_examples,
                                       "train_loss": m.get("train-loss"), "train_s": m.get("train-s"),
                                       "bytes_down": size, "bytes_up": size})
            for fail in failures:
                reason = f"secure aggregation: {fail!r}"[:300]
                entry["dropped"].append({"node_id": None, "bank": None, "reason": reason})
            entry["aggregated"] = len(results) >= f.min_banks
            out = super().aggregate_fit(server_round, results, failures) if entry["aggregated"] else (None, {})
            entry["round_s"] = round(time.perf_counter() - t0, 2)
            rounds_log.append(entry)
            return out

    def evaluate_fn(server_round, ndarrays, config):
        metrics = evaluate(server_round, arrays_to_record(OrderedDict(zip(names, ndarrays))))
        return (0.0, dict(metrics)) if metrics is not None else None

    def fit_config(server_round: int) -> dict:
        return {"global-round": server_round + round_offset, "server-round": server_round, **chosen.client_config(),
                **chosen.legacy_round_config(cfg)}

    return Recorded(
        fraction_fit=f.fraction_train, fraction_evaluate=0.0, min_fit_clients=max(2, f.min_banks),
        min_available_clients=f.num_banks, evaluate_fn=evaluate_fn, on_fit_config_fn=fit_config,
        initial_parameters=ndarrays_to_parameters(list(shared.values())), accept_failures=True, **extra)


def run_secure_rounds(grid, context, cfg: Config, shared: "OrderedDict", num_rounds: int, evaluate,
                      rounds_log: list, round_offset: int) -> None:
    p = cfg.privacy
    strategy = legacy_strategy(cfg, shared, evaluate, rounds_log, round_offset)
    banks = max(2, int(cfg.federation.num_banks * cfg.federation.fraction_train))
    # SecAgg+ needs fewer shares to unmask than there are (a dropped bank's masks must stay recoverable)
    threshold = min(banks - 1, max(2, math.ceil(p.secagg_threshold * banks)))
    workflow = DefaultWorkflow(fit_workflow=SecAggPlusWorkflow(
        num_shares=banks, reconstruction_threshold=threshold,
        max_weight=p.secagg_max_weight, clipping_range=p.secagg_clipping_range,
        timeout=cfg.federation.round_timeout_s))
    legacy_context = LegacyContext(context=context, config=ServerConfig(num_rounds=num_rounds,
                                                                        round_timeout=cfg.federation.round_timeout_s),
                                   strategy=strategy)
    log.info("secure aggregation (SecAgg+): %d banks per round, %d shares needed to unmask", banks, threshold)
    workflow(grid, legacy_context)
