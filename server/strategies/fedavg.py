"""FedAvg of LoRA arrays weighted by example counts, on Flower's FedAvg, dropping unusable bank updates.

Flower's FedAvg skips a whole round when one reply is inconsistent; a bank's bad update must cost only that update.
This class is also the base of every other LoRA strategy. A strategy is one file holding one subclass that says:
- its `name` (federation.strategy) and its `options` (constructor arguments read from the config);
- what the federation shares (`parts`), what banks keep fixed (`frozen`) or keep at home (`local`), and whether
  banks may train a lower rank (`lower_rank`); the server sends these in every round's config (`client_config`),
  so the bank needs no knowledge of strategies (client/app.py: `RoundPlan`);
- what it refuses to compose with and why (`refuses`: secure_aggregation, central_dp, local_dp) and any other
  check of the config (`check`); the legacy Flower class the SecAgg+ path wraps (`legacy_base`, `legacy_options`);
- how the usable updates are combined (`combine`) and what travels or is checkpointed beside the adapter
  (`extra_content`, `state_arrays`).
The registry (server/strategies/__init__.py) finds every such subclass in the package: adding a strategy touches
its file and its test only.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Iterable

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from ...common.adapter import arrays_nbytes, arrays_to_record, record_to_arrays
from ...common.runconfig import VERSIONS_KEY, version_mismatch
from ..aggregation import update_problem, weighted_mean

log = logging.getLogger("fedfingpt.server")


class LoraFedAvg(FedAvg):
    """FedAvg over named LoRA arrays (A and B averaged separately, as FedIT does: inexact, mean(B)·mean(A) is not
    mean(B·A)).

    Parameters
    ----------
    min_valid_updates : int (default: 1)
        Fewest usable updates a round needs; with fewer, the global adapter is kept unchanged.
    max_examples : float (default: inf)
        Largest plausible example count a bank may report for one round.
    round_offset : int (default: 0)
        Rounds already done before this run (resume): reported round = Flower's round + offset.
    **kwargs
        Passed to Flower's FedAvg (fraction_train, min_train_nodes, min_available_nodes, ...).
    """

    name = "fedavg"
    parts = "AB"  # the LoRA matrices the federation shares
    frozen = ""  # matrices the banks keep fixed while training (FFA-LoRA: A)
    local = ""  # matrices each bank keeps across rounds instead of taking the global ones (FedSA-LoRA: B)
    lower_rank = False  # accept updates of a lower LoRA rank (HetLoRA)
    personalised = False  # no single global model (FedSA-LoRA): the server does not score one
    refuses: dict[str, str] = {}  # "secure_aggregation" | "central_dp" | "local_dp" -> why it does not compose
    legacy_base = "FedAvg"  # flwr.server.strategy class the SecAgg+ path (server/secure.py) runs

    @classmethod
    def options(cls, cfg) -> dict:
        """Constructor arguments this strategy takes from the config (beyond the common ones)."""
        return {}

    @classmethod
    def legacy_options(cls, cfg) -> dict:
        """Arguments of `legacy_base` under secure aggregation."""
        return {}

    @classmethod
    def legacy_round_config(cls, cfg) -> dict:
        """Keys the SecAgg+ path sends to banks each round beyond `client_config`."""
        return {}

    @classmethod
    def check(cls, cfg) -> None:
        """Refuse a config this strategy cannot run (ValueError naming the key and what to do)."""

    @classmethod
    def client_config(cls) -> dict:
        """What a bank does differently under this strategy, sent in every round's config (client/app.py)."""
        return {"lora-shared": cls.parts, "lora-frozen": cls.frozen, "lora-local": cls.local,
                "lora-any-rank": cls.lower_rank}

    def settings(self) -> dict:
        """This strategy's own settings, logged at start (`summary`)."""
        return {}

    def summary(self) -> None:
        shared = {"AB": "A and B", "A": "A only", "B": "B only"}[self.parts]
        settings = {**self.settings(), **({"weighting": "uniform"} if self.uniform_weights else {})}
        extra = ", ".join(f"{k}={v}" for k, v in settings.items())
        log.info("strategy %s: shares %s%s%s%s", self.name, shared, f", banks keep {self.local}" if self.local else "",
                 f", {self.frozen} frozen" if self.frozen else "", f"; {extra}" if extra else "")
        super().summary()

    def __init__(self, *, min_valid_updates: int = 1, max_examples: float = float("inf"), round_offset: int = 0,
                 **kwargs) -> None:
        super().__init__(**kwargs)
        self.setup_lora(min_valid_updates=min_valid_updates, max_examples=max_examples, round_offset=round_offset)

    def setup_lora(self, *, min_valid_updates: int = 1, max_examples: float = float("inf"), round_offset: int = 0):
        """Our settings; subclasses that also inherit a Flower strategy with a fixed signature call this after it."""
        # every bank counts the same: federation.aggregation.weighting uniform, and central DP (its noise
        # calibration assumes it); set by build_strategy and wrap_central_dp
        self.uniform_weights = False
        self.min_valid_updates = min_valid_updates
        self.max_examples = max_examples
        self.round_offset = round_offset
        self.rounds: list[dict] = []  # one entry per round: per-bank participation, traffic, drops
        self._sent: dict[int, int] = {}
        self._outbox: list[Message] = []
        self._reference: dict[str, np.ndarray] = {}
        self._bank_of: dict[int, int] = {}  # node id -> bank id, learned from replies, to name banks in drop logs
        self._t_round = 0.0
        self._t_eval = 0.0

    # -- what the server sends ------------------------------------------------------------------
    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid):
        self._t_round = time.perf_counter()
        self._reference = record_to_arrays(arrays)
        config["global-round"] = server_round + self.round_offset
        config.update(self.client_config())
        messages = list(super().configure_train(server_round, arrays, config, grid))
        extras = self.extra_content()
        for m in messages:
            for key, record in extras.items():
                m.content[key] = record
        size = arrays_nbytes(self._reference) + sum(arrays_nbytes(record_to_arrays(r)) for r in extras.values())
        self._sent = {m.metadata.dst_node_id: size for m in messages}
        self._outbox = messages  # the Grid gives each its message id when it sends it (see aggregate_train)
        return messages

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid):
        self._t_eval = time.perf_counter()
        config.update(self.client_config())
        messages = list(super().configure_evaluate(server_round, arrays, config, grid))
        extras = self.extra_content()
        for m in messages:  # banks evaluate the model they would train (FedEx-LoRA: with the base residual)
            for key, record in extras.items():
                m.content[key] = record
        return messages

    # -- hooks for the other strategies ---------------------------------------------------------
    def combine(self, updates: list[dict], weights: list[float], entry: dict) -> dict[str, np.ndarray]:
        """The new global arrays from the usable updates (entry: this round's report, for notes)."""
        return weighted_mean(updates, weights)

    def extra_content(self) -> dict[str, ArrayRecord]:
        """Records sent to every bank beside the adapter (FedEx-LoRA's base residual)."""
        return {}

    def prepare_model(self, model) -> None:
        """Make the server's model the served global model (beyond setting the shared LoRA arrays)."""

    def state_arrays(self) -> dict[str, np.ndarray]:
        """Arrays saved with each checkpoint and given back on resume (restore_state)."""
        return {}

    def restore_state(self, arrays: dict[str, np.ndarray]) -> None:
        pass

    def in_reference_dtype(self, record: ArrayRecord | None) -> ArrayRecord | None:
        """Server optimisers compute in float64; the global adapter keeps the banks' dtype (half the traffic)."""
        if record is None:
            return None
        arrays = record_to_arrays(record)
        return arrays_to_record(OrderedDict((k, v.astype(self._reference[k].dtype, copy=False))
                                            for k, v in arrays.items()))

    # -- what the server accepts ----------------------------------------------------------------
    def aggregate_train(self, server_round: int, replies: Iterable[Message]):
        replies = list(replies)
        entry = {"round": server_round + self.round_offset, "banks": [], "dropped": []}
        updates, weights = [], []
        replied = set()
        # an error the SuperLink writes for a bank (e.g. its node stopped sending heartbeats) comes from the SuperLink:
        # name the bank it stands for by the message it answers
        dst_of = {m.metadata.message_id: m.metadata.dst_node_id for m in self._outbox if m.metadata.message_id}
        claimed = _claimed_banks(replies)  # bank id -> the nodes whose replies say they are that bank
        for msg in replies:
            node = msg.metadata.src_node_id
            if msg.has_error():
                node = dst_of.get(msg.metadata.reply_to_message_id, node)
            replied.add(node)
            if msg.has_error():
                # the reason is a whole traceback; its last line names the exception
                lines = [ln.strip() for ln in msg.error.reason.strip().splitlines() if ln.strip()]
                self._drop(entry, node, self._bank_of.get(node), f"client error: {(lines or ['?'])[-1][:300]}")
                continue
            try:
                arrays = record_to_arrays(msg.content.array_records[next(iter(msg.content.array_records))])
                metrics = dict(msg.content.metric_records[next(iter(msg.content.metric_records))])
            except (StopIteration, KeyError, TypeError, ValueError) as err:
                self._drop(entry, node, None, f"malformed reply ({err})")
                continue
            bank = metrics.get("bank-id")
            if bank is not None:
                self._bank_of[node] = bank
            if len(claimed.get(bank, ())) > 1:
                self._drop(entry, node, bank, f"bank id {bank} replied from nodes {sorted(claimed[bank])} in one "
                           "round: every such reply is refused; give each SuperNode its own bank-id")
                continue
            vrec = msg.content.config_records.get(VERSIONS_KEY)
            wrong = version_mismatch(dict(vrec) if vrec is not None else None)
            if wrong:
                self._drop(entry, node, bank, wrong)
                continue
            n = float(metrics.get(self.weighted_by_key, float("nan")))
            problem = update_problem(arrays, self._reference, n, self.max_examples, lower_rank=self.lower_rank)
            if problem:
                self._drop(entry, node, bank, problem)
                continue
            updates.append(arrays)
            weights.append(1.0 if self.uniform_weights else n)
            entry["banks"].append({
                "node_id": node, "bank": bank, "num_examples": int(n),
                "train_loss": metrics.get("train-loss"), "train_s": metrics.get("train-s"),
                "bytes_down": self._sent.get(node, 0), "bytes_up": arrays_nbytes(arrays),
                # per-message process start-up and time in the bank's handler (the deployment benchmark's breakdown)
                **{k.replace("-", "_"): metrics[k] for k in ("startup-s", "handler-s") if k in metrics},
                **({"dp_epsilon": metrics["dp-epsilon"], "dp_noise_multiplier": metrics.get("dp-noise-multiplier"),
                    "dp_sample_rate": metrics.get("dp-sample-rate")} if "dp-epsilon" in metrics else {}),
            })
        for node in set(self._sent) - replied:
            self._drop(entry, node, self._bank_of.get(node), "no reply before the round timeout")

        entry["aggregated"] = len(updates) >= self.min_valid_updates
        agg_arrays, agg_metrics = None, None
        t_agg = time.perf_counter()
        if entry["aggregated"]:
            combined = self.combine(updates, weights, entry)
            agg_arrays = arrays_to_record(OrderedDict((k, combined[k]) for k in self._reference))
            total = sum(b["num_examples"] for b in entry["banks"])
            losses = [(b["train_loss"], b["num_examples"]) for b in entry["banks"] if b["train_loss"] is not None]
            agg_metrics = MetricRecord({
                "train-loss": float(sum(l * w for l, w in losses) / max(1, sum(w for _, w in losses))),
                "num-examples": int(total), "banks": len(updates),
            })
        else:
            log.warning("round %d: %d usable updates < min_banks %d; global adapter kept",
                        entry["round"], len(updates), self.min_valid_updates)
        entry["aggregate_s"] = round(time.perf_counter() - t_agg, 3)
        entry["round_s"] = round(time.perf_counter() - self._t_round, 2)
        self.rounds.append(entry)
        return agg_arrays, agg_metrics

    def _drop(self, entry: dict, node: int, bank, reason: str) -> None:
        who = f"bank {bank} (node {node})" if bank is not None else f"node {node}"
        log.warning("round %d: dropped the update of %s: %s", entry["round"], who, reason)
        entry["dropped"].append({"node_id": node, "bank": bank, "reason": reason})

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]):
        """Per-bank scores on their own held-out rows (sentiment) and cases (AML), kept in the round entry; their
        example-weighted means."""
        banks, histograms = [], []
        for msg in replies:
            if msg.has_error():
                continue
            m = dict(msg.content.metric_records[next(iter(msg.content.metric_records))])
            banks.append({"bank": m.get("bank-id"), "num_examples": m.get("num-examples") or 0,
                          "accuracy": m.get("accuracy"), "weighted_f1": m.get("weighted-f1"),
                          "aml_cases": m.get("aml-cases") or 0, "aml_f1": m.get("aml-f1")})
            if m.get("aml-val-positive") is not None:
                histograms.append(aml_histogram(m))
        banks = [b for b in banks if (b["num_examples"] and b["accuracy"] is not None) or b["aml_cases"]]
        if not banks:
            return None
        mean: dict = {}
        sent = [b for b in banks if b["num_examples"] and b["accuracy"] is not None]
        n = sum(b["num_examples"] for b in sent)
        if sent:
            mean = {k: sum(b[k] * b["num_examples"] for b in sent) / n for k in ("accuracy", "weighted_f1")}
        aml = [b for b in banks if b["aml_cases"] and b["aml_f1"] is not None]
        if aml:
            mean["aml_f1"] = sum(b["aml_f1"] * b["aml_cases"] for b in aml) / sum(b["aml_cases"] for b in aml)
        entry = next((e for e in self.rounds if e["round"] == server_round + self.round_offset), None)
        calibration = fit_aml_calibration(histograms, server_round + self.round_offset) if histograms else None
        if entry is not None:
            entry["client_eval"] = {"banks": banks, **mean, "wall_s": round(time.perf_counter() - self._t_eval, 2),
                                    **({"aml_calibration": calibration} if calibration else {})}
        return MetricRecord({k.replace("_", "-"): v for k, v in mean.items()} | {"num-examples": n})


def aml_histogram(m: dict) -> dict:
    """A bank's validation-score histogram from its evaluate reply (common/tasks/aml_calibration.py)."""
    from ...common.tasks.aml_calibration import BINS, LOGIT_RANGE

    return {"bins": BINS, "range": LOGIT_RANGE, "positive": list(m["aml-val-positive"]),
            "negative": list(m["aml-val-negative"])}


def fit_aml_calibration(histograms: list[dict], rnd: int) -> dict | None:
    """The federation's risk-score calibration from the banks' summed histograms (saved beside the round's
    adapter by the server app); None, with the reason logged, where they cannot give one."""
    from ...common.tasks.aml_calibration import Calibration, CalibrationError

    if any(len(h["positive"]) != h["bins"] or len(h["negative"]) != h["bins"] for h in histograms):
        log.warning("round %d: an AML validation histogram of the wrong length; no calibration this round", rnd)
        return None
    try:
        return Calibration.fit(histograms).__dict__
    except CalibrationError as err:
        log.warning("round %d: no AML calibration: %s", rnd, err)
        return None


def _claimed_banks(replies: list[Message]) -> dict:
    """bank id -> the nodes whose successful replies name it (two SuperNodes started with one bank-id, or none)."""
    out: dict = {}
    for msg in replies:
        if msg.has_error():
            continue
        try:
            metrics = dict(msg.content.metric_records[next(iter(msg.content.metric_records))])
        except (StopIteration, KeyError, TypeError, ValueError):
            continue
        if metrics.get("bank-id") is not None:
            out.setdefault(metrics["bank-id"], set()).add(msg.metadata.src_node_id)
    return out
