"""A bank's node config: what one SuperNode says about itself (`fedfingpt deploy supernode` writes it, the bank's
ClientApp reads it). One typed record with one spelling of every key, shared by both sides."""

from __future__ import annotations

from dataclasses import dataclass, fields

# field -> the key in Flower's node config (Flower's simulation names a bank partition-id / num-partitions)
KEYS = {
    "bank_id": "bank-id",
    "num_banks": "num-partitions",
    "data_dir": "data-dir",
    "privacy_epsilon": "privacy-epsilon",
    "lora_rank": "lora-rank",
    "extra_train": "extra-train",
    "state_dir": "state-dir",
}


class NodeConfigError(ValueError):
    """A node config value the bank cannot use (the message names the key)."""


@dataclass(frozen=True)
class NodeConfig:
    bank_id: int = 0
    num_banks: int = 1
    data_dir: str | None = None  # this bank's data folder, instead of the scenario's data.data_dir
    privacy_epsilon: float | None = None  # this bank's DP budget (local DP), instead of privacy.bank_epsilon / epsilon
    lora_rank: int | None = None  # the rank this bank trains (HetLoRA), instead of federation.aggregation.bank_ranks
    extra_train: str | None = None  # this bank's own instruction JSONL, added to its training rows
    state_dir: str | None = None  # what never leaves the bank: privacy ledger, FedSA's B

    def __post_init__(self) -> None:
        if self.num_banks < 1 or not 0 <= self.bank_id < self.num_banks:
            raise NodeConfigError(f"node config {KEYS['bank_id']}={self.bank_id} must be between 0 and "
                                  f"{KEYS['num_banks']} - 1 ({self.num_banks - 1})")
        if self.privacy_epsilon is not None and not 0 < self.privacy_epsilon <= 100:
            raise NodeConfigError(f"node config {KEYS['privacy_epsilon']}={self.privacy_epsilon:g} must be > 0 "
                                  "and at most 100")
        if self.lora_rank is not None and self.lora_rank < 1:
            raise NodeConfigError(f"node config {KEYS['lora_rank']}={self.lora_rank} must be at least 1")

    @classmethod
    def from_flower(cls, node_config: dict | None, num_banks: int) -> "NodeConfig":
        """Read Flower's node config (a deployed SuperNode's, or the simulation's partition-id/num-partitions);
        `num_banks` is the scenario's, for a node config that does not say."""
        nc = dict(node_config or {})
        values: dict = {"bank_id": nc.get("bank-id", nc.get("partition-id", 0)),
                        "num_banks": nc.get(KEYS["num_banks"], num_banks)}
        values |= {f: nc[k] for f, k in KEYS.items() if f not in values and nc.get(k) not in (None, "")}
        typed = {}
        for f in fields(cls):
            if f.name not in values:
                continue
            kind = {"bank_id": int, "num_banks": int, "lora_rank": int, "privacy_epsilon": float}.get(f.name, str)
            try:
                typed[f.name] = kind(values[f.name])
            except (TypeError, ValueError):
                what = {int: "an integer", float: "a number"}.get(kind, "text")
                raise NodeConfigError(f"node config {KEYS[f.name]}={values[f.name]!r} is not {what}") from None
        return cls(**typed)

    def to_flower(self) -> str:
        """The `--node-config` string of flower-supernode: key=value pairs, strings quoted (Flower splits on spaces
        outside quotes)."""
        parts = []
        for f, key in KEYS.items():
            value = getattr(self, f)
            if value is None:
                continue
            if isinstance(value, str):
                if '"' not in value and "\\" not in value:
                    value = f'"{value}"'
                elif "'" not in value:
                    value = f"'{value}'"  # a TOML literal string: backslashes stay as they are
                else:
                    raise NodeConfigError(f"{key} {value!r} holds both quote kinds; use a path without them")
            parts.append(f"{key}={value}")
        return " ".join(parts)
