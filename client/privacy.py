"""A bank's differential privacy: the DP-SGD settings for one round and the privacy ledger on the bank's disk.

The ledger records every DP training a bank has done (noise multiplier, sampling rate, steps) across rounds and
runs; the privacy spent is what Opacus's accountant computes over that whole history (composition by the
accountant, never by adding epsilons). A bank refuses to train when a round would take it past its budget.
A ledger that is corrupted, or missing while its journal exists, is an error: spending is never reset silently.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from pathlib import Path

from ..common.privacy import PrivacyBudgetExceeded, epsilon_of, noise_for_budget

log = logging.getLogger("fedfingpt.client")
LEDGER = "privacy_ledger.json"
JOURNAL = "privacy_ledger.journal.jsonl"  # append-only copy of every entry: proves a ledger existed


class LedgerError(RuntimeError):
    """The ledger cannot be trusted (corrupted, edited, missing with its journal present, another accountant)."""


def _digest(payload: dict) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


class PrivacyLedger:
    """What one bank has spent, persisted in `folder` (privacy_ledger.json plus its append-only journal)."""

    def __init__(self, folder: Path, data: dict) -> None:
        self.folder = Path(folder)
        self.data = data

    # -- opening ---------------------------------------------------------------------------------
    @classmethod
    def open(cls, folder: str | Path, *, bank: int, accountant_kind: str, delta: float) -> "PrivacyLedger":
        folder = Path(folder)
        path, journal = folder / LEDGER, folder / JOURNAL
        if not path.is_file():
            if journal.is_file():
                raise LedgerError(f"{path} is missing but its journal {journal} exists: the bank has spent privacy "
                                  "before; restore the ledger from backup (it is never recreated at zero)")
            log.info("bank %d: new privacy ledger at %s (no earlier DP training recorded)", bank, path)
            return cls(folder, {"format": "fedfingpt-privacy-ledger/1", "bank": bank, "accountant": accountant_kind,
                                "delta": delta, "entries": [], "plans": {}})
        data = cls.read(folder).data
        if data.get("accountant") != accountant_kind or data.get("delta") != delta:
            raise LedgerError(f"{path}: kept with accountant {data.get('accountant')} at delta {data.get('delta')}, "
                              f"but this run asks for {accountant_kind} at delta {delta}; spending under one setting "
                              "cannot be carried to another: keep the bank's privacy.accountant and privacy.delta")
        if data.get("bank") != bank:
            raise LedgerError(f"{path}: ledger of bank {data.get('bank')}, not bank {bank}")
        return cls(folder, data)

    @classmethod
    def read(cls, folder: str | Path) -> "PrivacyLedger":
        """An existing ledger, checked against its checksum (its own accountant and delta)."""
        path = Path(folder) / LEDGER
        try:
            outer = json.loads(path.read_text(encoding="utf-8"))
            data, digest = outer["ledger"], outer["sha256"]
        except FileNotFoundError:
            raise LedgerError(f"{path}: no privacy ledger here") from None
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise LedgerError(f"{path}: corrupted privacy ledger ({err}); restore it from backup") from None
        if _digest(data) != digest:
            raise LedgerError(f"{path}: the ledger's checksum does not match its content (edited or damaged); "
                              "restore it from backup")
        return cls(Path(folder), data)

    def summary(self) -> dict:
        return {"bank": self.data["bank"], "accountant": self.data["accountant"], "delta": self.data["delta"],
                "epsilon": self.epsilon(), "entries": self.data["entries"]}

    # -- what has been spent ---------------------------------------------------------------------
    @property
    def history(self) -> list[tuple[float, float, int]]:
        return [(e["noise_multiplier"], e["sample_rate"], e["steps"]) for e in self.data["entries"]]

    def epsilon(self, extra: tuple[float, float, int] | None = None) -> float:
        return epsilon_of(self.data["accountant"], self.history + ([extra] if extra else []), self.data["delta"])

    def plan(self, run_key: str, *, budget: float, sample_rate: float, planned_steps: int,
             noise_multiplier: float | None) -> float:
        """The noise multiplier of this run: the bank's own setting, or derived once per run so that what was
        spent before plus the whole planned run lands on the budget."""
        if noise_multiplier is not None:
            return float(noise_multiplier)
        if run_key not in self.data["plans"]:
            sigma = noise_for_budget(self.data["accountant"], self.history, budget, self.data["delta"], sample_rate,
                                     planned_steps)
            self.data["plans"][run_key] = sigma
            self.save()
        return float(self.data["plans"][run_key])

    def check(self, step: tuple[float, float, int], budget: float, bank: int) -> float:
        """Epsilon after this round; PrivacyBudgetExceeded when it would pass the budget."""
        spent, after = self.epsilon(), self.epsilon(step)
        if after > budget * 1.001:
            raise PrivacyBudgetExceeded(
                f"bank {bank}: this round would bring its privacy spent from epsilon={spent:.3f} to {after:.3f}, past "
                f"its budget {budget:g} (delta={self.data['delta']:g}); the bank skips the round")
        return after

    def record(self, step: tuple[float, float, int], *, run_key: str, round: int) -> float:
        sigma, q, steps = step
        entry = {"run": run_key, "round": round, "noise_multiplier": sigma, "sample_rate": q, "steps": steps,
                 "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        self.data["entries"].append(entry)
        self.folder.mkdir(parents=True, exist_ok=True)
        with open(self.folder / JOURNAL, "a", encoding="utf-8") as f:
            f.write(json.dumps(entry) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self.save()
        return self.epsilon()

    def save(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = self.folder / (LEDGER + ".tmp")
        tmp.write_text(json.dumps({"ledger": self.data, "sha256": _digest(self.data)}, indent=1), encoding="utf-8")
        os.replace(tmp, self.folder / LEDGER)  # never a half-written ledger


def central_dp_mod(get_config):
    """A client mod that clips the bank's update on the bank's side when the scenario asks for client-side
    central DP (Flower's fixedclipping_mod / adaptiveclipping_mod); otherwise it passes the message through."""
    from flwr.app import MessageType
    from flwr.clientapp.mod import adaptiveclipping_mod, fixedclipping_mod

    def mod(msg, ctx, call_next):
        cfg = get_config(msg, ctx)
        p = cfg.privacy
        if p.mode == "central" and p.clipping_side == "client" and msg.metadata.message_type == MessageType.TRAIN:
            return (fixedclipping_mod if p.clipping == "fixed" else adaptiveclipping_mod)(msg, ctx, call_next)
        return call_next(msg, ctx)

    return mod
