"""The bank's Flower ClientApp: receive the global LoRA adapter, train it with the one loop on the bank's own
partition, send back only the LoRA arrays, the example count and metrics; evaluate on the bank's held-out rows.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from pathlib import Path

import numpy as np
import torch
from flwr.app import Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from ..common.adapter import (arrays_to_record, get_lora_arrays, lora_state, record_to_arrays, select_parts,
                              set_base_residual, set_lora_arrays, truncate_rank)
from ..common.config import Config
from ..common.evaluate import evaluate_aml, evaluate_sentiment, sample_rows
from ..common.nodeconfig import NodeConfig
from ..common.report import show_progress
from ..common.runconfig import config_for_message, train_reply
from ..common.train import DPSpec, train
from .bank import BankState, bank_state
from .plan import RoundPlan
from .privacy import PrivacyLedger, central_dp_mod

LOCAL_B = "fedsa-local-b"  # FedSA-LoRA: the bank's own B, in the node's state and on the bank's disk

log = logging.getLogger("fedfingpt.client")

# When this process began the current message (time.time()): a long-lived worker (client/worker.py) sets it per task;
# otherwise a process's first message counts from the process's start and later ones (a warm actor) from nothing.
task_started: float | None = None
_messages_served = 0


def startup_seconds() -> float:
    """Seconds between the start of this message's handling (process start-up, or the worker taking the task) and
    the handler: the per-message cost of process isolation that the round report shows as `startup_s`."""
    global _messages_served
    t0 = task_started
    if t0 is None and _messages_served == 0:
        import psutil

        t0 = psutil.Process().create_time()
    _messages_served += 1
    return 0.0 if t0 is None else max(0.0, time.time() - t0)


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


def local_state_dir(cfg: Config, context: Context, bank: int) -> Path:
    """Where a bank keeps what never leaves it: node config state-dir, else $FEDFINGPT_BANK_STATE_DIR/bank-<id>
    (set by `fedfingpt simulate` to <run dir>/banks), else <run dir>/banks/bank-<id>."""
    node, rc = NodeConfig.from_flower(context.node_config, cfg.federation.num_banks), dict(context.run_config or {})
    if node.state_dir:
        return Path(node.state_dir)
    if os.environ.get("FEDFINGPT_BANK_STATE_DIR"):
        return Path(os.environ["FEDFINGPT_BANK_STATE_DIR"]) / f"bank-{bank}"
    run_dir = rc.get("run-dir") or Path(cfg.output_dir) / cfg.name
    return Path(str(run_dir)) / "banks" / f"bank-{bank}"


def _local_b(state: BankState, cfg: Config, context: Context, global_round: int | None) -> dict[str, np.ndarray]:
    """FedSA-LoRA: this bank's B from the node state, else from its disk if saved at the previous round (a resumed
    run), else B's initial value (zero): a bank joining late or after a restart starts its B over, and says so."""
    if LOCAL_B in context.state:
        return dict(record_to_arrays(context.state[LOCAL_B]))
    path = local_state_dir(cfg, context, state.bank) / "local_lora_B.npz"
    if path.is_file():
        z = np.load(path)
        if global_round is None or int(z["__round"]) == global_round - 1:
            return {k: z[k] for k in z.files if k != "__round"}
        log.warning("bank %d: local B on disk is from round %d, not %s; starting B over", state.bank,
                    int(z["__round"]), global_round - 1)
    return {k: np.zeros_like(v) for k, v in select_parts(get_lora_arrays(state.model), "B").items()}


def _keep_local_b(state: BankState, cfg: Config, context: Context, global_round: int) -> None:
    b = select_parts(get_lora_arrays(state.model), "B")
    context.state[LOCAL_B] = arrays_to_record(b)
    path = local_state_dir(cfg, context, state.bank) / "local_lora_B.npz"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, __round=global_round, **b)
    tmp.replace(path)  # never a half-written file


def load_global(state: BankState, incoming: dict, residual: dict, cfg: Config, context: Context,
                global_round: int | None, plan: RoundPlan) -> None:
    """Put the global model into the bank's model: the shared LoRA arrays (truncated to the bank's rank), the
    base residual when sent (FedEx-LoRA), and the matrices the bank keeps at home (FedSA-LoRA: its own B)."""
    if state.rank < cfg.lora.r:
        if not plan.any_rank:
            raise ValueError(f"bank {state.bank} trains LoRA rank {state.rank} but the federation's rank is "
                             f"{cfg.lora.r} and its strategy ({cfg.federation.strategy}) needs equal ranks; use a "
                             "strategy that takes lower ranks (hetlora)")
        incoming = truncate_rank(incoming, state.rank)
    set_base_residual(state.model, residual, source="global base residual")
    set_lora_arrays(state.model, incoming, source="global adapter", partial=plan.shared != "AB")
    if plan.local:
        set_lora_arrays(state.model, _local_b(state, cfg, context, global_round), source="local B", partial=True)


def proximal_term(model: torch.nn.Module, mu: float):
    """FedProx: (mu/2)·||w − w_global||² over the trainable LoRA parameters, w_global taken now."""
    anchor = [(p, p.detach().clone()) for p in lora_state(model).values() if p.requires_grad]
    return lambda _m: 0.5 * mu * sum(((p - p0) ** 2).sum() for p, p0 in anchor)


@contextlib.contextmanager
def frozen(model: torch.nn.Module, matrices: str):
    """Keep LoRA matrices fixed while training (FFA-LoRA: "A")."""
    params = [p for k, p in lora_state(model).items() if any(f".lora_{m}." in k for m in matrices)]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


def private_round(state: BankState, cfg: Config, context: Context, global_round: int):
    """Local DP: (DP-SGD settings, the bank's ledger, this round's (noise, rate, steps)), or None without DP.
    Raises PrivacyBudgetExceeded when the round would pass the bank's budget (the bank then skips the round)."""
    p = cfg.privacy
    if p.mode != "local":
        return None
    n = len(state.train)
    if p.delta >= 1 / n:
        raise ValueError(f"bank {state.bank}: privacy.delta {p.delta:g} is not below 1/n = 1/{n} of its training rows; "
                         "a delta that large allows leaking whole records: lower privacy.delta")
    expected = p.expected_batch_size or cfg.training.batch_size
    q = min(1.0, expected / n)
    ledger = PrivacyLedger.open(local_state_dir(cfg, context, state.bank), bank=state.bank,
                                accountant_kind=p.accountant, delta=p.delta)
    steps = cfg.federation.local_steps
    planned = max(1, cfg.federation.rounds - global_round + 1) * steps  # the rest of this run
    budget = bank_budget(cfg, context, state.bank)
    sigma = ledger.plan(str(context.run_id), budget=budget, sample_rate=q, planned_steps=planned,
                        noise_multiplier=p.noise_multiplier)
    step = (sigma, q, steps)
    ledger.check(step, budget, state.bank)
    return DPSpec(sigma, p.max_grad_norm, q, round(q * n), p.physical_batch_size or cfg.training.batch_size), ledger, step


def bank_budget(cfg: Config, context: Context, bank: int) -> float:
    """The bank's privacy budget: node config privacy-epsilon, else privacy.bank_epsilon[bank], else epsilon."""
    node = NodeConfig.from_flower(context.node_config, cfg.federation.num_banks)
    if node.privacy_epsilon is not None:
        return node.privacy_epsilon
    return float(cfg.privacy.bank_epsilon.get(bank, cfg.privacy.epsilon))


def _residual(msg: Message) -> dict:
    return record_to_arrays(msg.content["base-residual"]) if "base-residual" in msg.content.array_records else {}


def handle_train(msg: Message, context: Context, cfg: Config) -> Message:
    startup, t0 = startup_seconds(), time.perf_counter()
    arrays, metrics = bank_round(cfg, context, record_to_arrays(msg.content["arrays"]), dict(msg.content["config"]),
                                 _residual(msg))
    metrics.update({"startup-s": startup, "handler-s": time.perf_counter() - t0})
    return Message(content=train_reply(arrays_to_record(arrays), metrics), reply_to=msg)


def bank_round(cfg: Config, context: Context, incoming: dict, conf: dict, residual: dict) -> tuple[dict, dict]:
    """One round at a bank: load the global model, train it (under DP when asked), return (what the bank shares,
    its metrics). Both the Message API handler and the secure-aggregation client call it."""
    if cfg.federation.console == "banks":
        show_progress(log)
    state = bank_state(cfg, context)
    global_round = int(conf.get("global-round", conf["server-round"]))
    plan = RoundPlan.from_config(conf)
    load_global(state, incoming, residual, cfg, context, global_round, plan)
    mu = plan.proximal_mu
    tcfg = local_training_config(cfg, global_round, state.bank)
    private = private_round(state, cfg, context, global_round)
    t0 = time.perf_counter()
    with frozen(state.model, plan.frozen) if plan.frozen else contextlib.nullcontext():
        result = train(
            state.model, state.train, tcfg, pad_id=state.tokenizer.pad_token_id, progress=False,
            extra_loss=proximal_term(state.model, mu) if mu > 0 else None, dp=private[0] if private else None,
            on_log=lambda s, l: log.info("round %d bank %d step %d/%d loss %.4f", global_round, state.bank, s,
                                         tcfg.max_steps, l),
        )
    if plan.local:
        _keep_local_b(state, cfg, context, global_round)
    dp_metrics = {}
    if private:
        spec, ledger, step = private
        eps = ledger.record(step, run_key=str(context.run_id), round=global_round)
        dp_metrics = {"dp-epsilon": eps, "dp-delta": cfg.privacy.delta, "dp-noise-multiplier": spec.noise_multiplier,
                      "dp-sample-rate": spec.sample_rate}
        log.info("round %d bank %d: privacy spent epsilon=%.3f (delta=%g) of budget %g", global_round, state.bank,
                 eps, cfg.privacy.delta, bank_budget(cfg, context, state.bank))
    metrics = {
        "num-examples": len(state.train),  # FedAvg weights banks by the size of their local data
        "examples-seen": result.examples, "train-loss": float(result.final_loss), "train-s": float(result.wall_s),
        "round-s": float(time.perf_counter() - t0), "tokens": result.tokens, "bank-id": state.bank,
        "lora-rank": state.rank, **dp_metrics,
    }
    return select_parts(get_lora_arrays(state.model), plan.shared), metrics


def handle_evaluate(msg: Message, context: Context, cfg: Config) -> Message:
    startup_seconds()  # counts this message as served
    state = bank_state(cfg, context)
    plan = RoundPlan.from_config(dict(msg.content["config"]) if "config" in msg.content.config_records else {})
    load_global(state, record_to_arrays(msg.content["arrays"]), _residual(msg), cfg, context, None, plan)  # own B
    ecfg = cfg.eval.model_copy(update={"method": "likelihood", "calibrate": False})
    metrics: dict = {"bank-id": state.bank, "num-examples": 0}
    if state.test:
        local = sample_rows(state.test, cfg.federation.client_eval_limit, cfg.data.seed)
        r = evaluate_sentiment(state.model, state.tokenizer, {"local": local}, ecfg, max_length=cfg.data.max_length,
                               progress=False)[0]
        metrics.update({"num-examples": r["n"], "accuracy": r["accuracy"], "weighted-f1": r["weighted_f1"]})
    if state.aml_test:
        cases = sample_rows(state.aml_test, cfg.federation.client_eval_limit, cfg.data.seed)
        a = evaluate_aml(state.model, state.tokenizer, cases, ecfg, max_length=cfg.data.max_length,
                         max_lines=cfg.data.aml.max_lines, threshold=cfg.data.aml.threshold,
                         typology=False)  # banks report F1; the typology read costs nine scored continuations
        metrics.update({"aml-cases": a["n"], "aml-f1": a["f1"]})
    if state.aml_val:  # counts of its validation scores per bin and label, never a case: the calibration's input
        from ..common.evaluate import score_aml
        from ..common.tasks.aml_calibration import score_histogram

        p, _ = score_aml(state.model, state.tokenizer, state.aml_val, ecfg, max_length=cfg.data.max_length,
                         max_lines=cfg.data.aml.max_lines, typology=False)
        h = score_histogram(p, [c.suspicious for c in state.aml_val])
        metrics.update({"aml-val-positive": h["positive"], "aml-val-negative": h["negative"]})
    # the server keeps per-bank scores (LoraFedAvg.aggregate_evaluate)
    return Message(content=RecordDict({"metrics": MetricRecord(metrics)}), reply_to=msg)


def make_client_app(cfg: Config | None = None, outer_mods: list | None = None) -> ClientApp:
    """A ClientApp bound to `cfg`; without one, the config comes from the run config (flwr run). `outer_mods` run
    around everything else (they see what the bank finally sends, after client-side DP clipping)."""
    dp_mod = central_dp_mod(lambda msg, ctx: cfg or config_for_message(msg, ctx))
    app = ClientApp(mods=[*(outer_mods or []), dp_mod])

    @app.train()
    def _train(msg: Message, context: Context) -> Message:
        return handle_train(msg, context, cfg or config_for_message(msg, context))

    @app.evaluate()
    def _evaluate(msg: Message, context: Context) -> Message:
        return handle_evaluate(msg, context, cfg or config_for_message(msg, context))

    return app


app = make_client_app()
