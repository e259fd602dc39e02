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
    "bank_data": "bank-data",
    "label_map": "label-map",
    "accept_skips": "accept-skips",
    "scrub": "scrub",
}
SCRUB_ACTIONS = ("redact", "mask", "hash", "drop")
REQUIRED_HINT = ("start the SuperNode with e.g. --node-config 'bank-id=0 bank-data=\"/srv/bank/data\"' "
                 "(docs/deploy.md)")


def _flag(value) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text not in ("true", "false", "1", "0", "yes", "no"):
        raise ValueError(text)
    return text in ("true", "1", "yes")


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
    bank_data: str | None = None  # the bank's own data folder (the data contract): read whole, no partitioning
    label_map: str | None = None  # the bank's label names -> negative/neutral/positive, e.g. "bearish=negative,..."
    accept_skips: bool = False  # train although the folder has bad rows (they are skipped and counted)
    scrub: str | None = None  # the scrub policy: off, an action (redact/mask/hash/drop), or "default=redact,US_SSN=drop"

    def __post_init__(self) -> None:
        if self.num_banks < 1 or not 0 <= self.bank_id < self.num_banks:
            raise NodeConfigError(f"node config {KEYS['bank_id']}={self.bank_id} must be between 0 and "
                                  f"{KEYS['num_banks']} - 1 ({self.num_banks - 1})")
        if self.privacy_epsilon is not None and not 0 < self.privacy_epsilon <= 100:
            raise NodeConfigError(f"node config {KEYS['privacy_epsilon']}={self.privacy_epsilon:g} must be > 0 "
                                  "and at most 100")
        if self.lora_rank is not None and self.lora_rank < 1:
            raise NodeConfigError(f"node config {KEYS['lora_rank']}={self.lora_rank} must be at least 1")
        if self.label_map:
            from .bank_folder import BankDataError, parse_label_map

            try:
                parse_label_map(self.label_map, "node config label-map")
            except BankDataError as err:
                raise NodeConfigError(str(err)) from None
        self.scrub_policy()  # refuses a bad policy now, not at the first round

    def scrub_policy(self, default=None):
        """The ScrubConfig this node's `scrub` key gives (over `default`, the scenario's data.scrub)."""
        from .config import ScrubConfig

        base = default or ScrubConfig()
        if not self.scrub:
            return base
        if self.scrub == "off":
            return base.model_copy(update={"enabled": False})
        values = {"default": base.default, "entities": dict(base.entities)}
        for part in self.scrub.split(","):
            entity, _, action = part.strip().rpartition("=")
            if action not in SCRUB_ACTIONS or (entity and not entity.replace("_", "").isalnum()):
                raise NodeConfigError(f"node config scrub={self.scrub!r}: {part.strip()!r} is not an action "
                                      f"({'/'.join(SCRUB_ACTIONS)}) or TYPE=action; write e.g. "
                                      "'default=redact,US_SSN=drop', or off")
            if entity in ("", "default"):
                values["default"] = action
            else:
                values["entities"][entity.upper()] = action
        return base.model_copy(update={"enabled": True, **values})

    @classmethod
    def from_flower(cls, node_config: dict | None, num_banks: int) -> "NodeConfig":
        """Read Flower's node config (a deployed SuperNode's, or the simulation's partition-id/num-partitions);
        `num_banks` is the scenario's, for a node config that does not say."""
        nc = dict(node_config or {})
        if "partition-id" not in nc:  # not Flower's simulation: a SuperNode must say who it is and what it reads
            missing = [k for k in ("bank-id",) if nc.get(k) in (None, "")]
            if not any(nc.get(k) not in (None, "") for k in ("bank-data", "num-partitions")):
                missing.append("bank-data")
            if missing:
                raise NodeConfigError(f"node config lacks {' and '.join(missing)}: a bank refuses to train without "
                                      f"knowing which bank it is and which folder it reads; {REQUIRED_HINT}")
        values: dict = {"bank_id": nc.get("bank-id", nc.get("partition-id", 0)),
                        "num_banks": nc.get(KEYS["num_banks"], num_banks)}
        values |= {f: nc[k] for f, k in KEYS.items() if f not in values and nc.get(k) not in (None, "")}
        typed = {}
        for f in fields(cls):
            if f.name not in values:
                continue
            kind = {"bank_id": int, "num_banks": int, "lora_rank": int, "privacy_epsilon": float,
                    "accept_skips": _flag}.get(f.name, str)
            try:
                typed[f.name] = kind(values[f.name])
            except (TypeError, ValueError):
                what = {int: "an integer", float: "a number", _flag: "true or false"}.get(kind, "text")
                raise NodeConfigError(f"node config {KEYS[f.name]}={values[f.name]!r} is not {what}") from None
        return cls(**typed)

    def to_flower(self) -> str:
        """The `--node-config` string of flower-supernode: key=value pairs, strings quoted (Flower splits on spaces
        outside quotes)."""
        parts = []
        for f, key in KEYS.items():
            value = getattr(self, f)
            if value is None or (f == "accept_skips" and not value) or (f == "num_banks" and self.bank_data):
                continue  # a bank with its own folder is no partition: it needs no num-partitions
            if isinstance(value, bool):
                value = "true" if value else "false"
                parts.append(f"{key}={value}")
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
