"""The bank's Flower ClientApp: receive the global LoRA adapter, train it with the one loop on the bank's own
partition, send back only the LoRA arrays, the example count and metrics; evaluate on the bank's held-out rows.
"""

from __future__ import annotations

import logging
import math
import time

from flwr.app import Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from ..common.adapter import arrays_to_record, get_lora_arrays, record_to_arrays, set_lora_arrays
from ..common.config import Config
from ..common.evaluate import evaluate_sentiment, sample_rows
from ..common.report import show_progress
from .bank import bank_state, config_from_context
from .train import train

log = logging.getLogger("fedfingpt.client")


def local_training_config(cfg: Config, global_round: int, bank: int):
    """Each round trains `local_steps` at a constant rate; the rate follows a cosine over rounds (to 10 %)."""
    f = cfg.federation
    progress = (global_round - 1) / max(1, f.rounds - 1)
    lr = cfg.training.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))
    return cfg.training.model_copy(update={
        "max_steps": f.local_steps, "epochs": None, "lr": lr, "schedule": "constant", "warmup_ratio": 0.0,
        "eval_every": None, "seed": cfg.training.seed + 1000 * global_round + bank,
        "log_every": max(1, f.local_steps // 2),
    })


def handle_train(msg: Message, context: Context, cfg: Config) -> Message:
    show_progress(log)
    state = bank_state(cfg, context)
    set_lora_arrays(state.model, record_to_arrays(msg.content["arrays"]), source="global adapter")
    global_round = int(msg.content["config"].get("global-round", msg.content["config"]["server-round"]))
    tcfg = local_training_config(cfg, global_round, state.bank)
    t0 = time.perf_counter()
    result = train(
        state.model, state.train, tcfg, pad_id=state.tokenizer.pad_token_id, progress=False,
        on_log=lambda s, l: log.info("round %d bank %d step %d/%d loss %.4f", global_round, state.bank, s,
                                     tcfg.max_steps, l),
    )
    metrics = MetricRecord({
        "num-examples": len(state.train),  # FedAvg weights banks by the size of their local data
        "examples-seen": result.examples, "train-loss": float(result.final_loss), "train-s": float(result.wall_s),
        "round-s": float(time.perf_counter() - t0), "tokens": result.tokens, "bank-id": state.bank,
    })
    content = RecordDict({"arrays": arrays_to_record(get_lora_arrays(state.model)), "metrics": metrics})
    return Message(content=content, reply_to=msg)


def handle_evaluate(msg: Message, context: Context, cfg: Config) -> Message:
    state = bank_state(cfg, context)
    set_lora_arrays(state.model, record_to_arrays(msg.content["arrays"]), source="global adapter")
    local = sample_rows(state.test, cfg.federation.client_eval_limit, cfg.data.seed)
    rows = evaluate_sentiment(state.model, state.tokenizer, {"local": local},
                              cfg.eval.model_copy(update={"method": "likelihood", "calibrate": False}),
                              max_length=cfg.data.max_length, progress=False)
    r = rows[0]
    metrics = MetricRecord({"num-examples": r["n"], "accuracy": r["accuracy"], "weighted-f1": r["weighted_f1"],
                            "bank-id": state.bank})  # the server keeps per-bank scores (LoraFedAvg.aggregate_evaluate)
    return Message(content=RecordDict({"metrics": metrics}), reply_to=msg)


def make_client_app(cfg: Config | None = None) -> ClientApp:
    """A ClientApp bound to `cfg`; without one, the config comes from the run config (flwr run)."""
    app = ClientApp()

    @app.train()
    def _train(msg: Message, context: Context) -> Message:
        return handle_train(msg, context, cfg or config_from_context(context))

    @app.evaluate()
    def _evaluate(msg: Message, context: Context) -> Message:
        return handle_evaluate(msg, context, cfg or config_from_context(context))

    return app


app = make_client_app()
