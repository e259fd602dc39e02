"""A tamper-evident audit trail: one JSON line per request, each line carrying the hash of the line before it,
and a head file naming the last line's sequence number and hash (so cutting lines off the end shows too).

A record holds who asked what and what the gate decided (entity types and counts), never a request's text.
`verify(path)` recomputes the chain: an edited, removed, inserted or reordered line breaks it at that line.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

GENESIS = "0" * 64
FIELDS = {"request_id", "caller", "role", "method", "entities", "decision", "model_sha256", "adapter_sha256",
          "latency_ms", "status", "cache_hits"}


def _digest(prev: str, record: dict) -> str:
    return hashlib.sha256((prev + json.dumps(record, sort_keys=True, separators=(",", ":"))).encode()).hexdigest()


def head_path(path: Path) -> Path:
    return Path(str(path) + ".head")


class AuditLog:
    """Appends hash-chained records; safe for the server's threads; continues an existing, intact chain."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self.seq, self.prev = 0, GENESIS
        if self.path.exists() and self.path.stat().st_size:
            report = verify(self.path)
            if not report.ok:
                raise AuditError(f"{self.path}: the existing audit trail is broken ({report.problem}); keep it as "
                                 "evidence and start a new file (serving.audit_log)")
            self.seq, self.prev = report.lines, report.last_hash

    def append(self, **fields) -> dict:
        unknown = set(fields) - FIELDS
        if unknown:
            raise ValueError(f"audit records take only {sorted(FIELDS)}; got {sorted(unknown)}")
        with self._lock:
            record = {"seq": self.seq + 1, "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                      "prev": self.prev, **fields}
            record["hash"] = _digest(self.prev, record)
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(json.dumps(record, sort_keys=True) + "\n")
                f.flush()
                os.fsync(f.fileno())
            self.seq, self.prev = record["seq"], record["hash"]
            tmp = head_path(self.path).with_suffix(".tmp")
            tmp.write_text(json.dumps({"seq": self.seq, "hash": self.prev}), encoding="utf-8")
            os.replace(tmp, head_path(self.path))
            return record


class AuditError(RuntimeError):
    pass


@dataclass
class VerifyReport:
    ok: bool
    lines: int
    last_hash: str
    problem: str = ""


def verify(path: str | Path) -> VerifyReport:
    path = Path(path)
    prev, seq = GENESIS, 0
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            try:
                record = json.loads(line)
                stated = record.pop("hash")
            except (json.JSONDecodeError, KeyError, AttributeError):
                return VerifyReport(False, seq, prev, f"line {n} is not an audit record")
            if record.get("seq") != seq + 1:
                return VerifyReport(False, seq, prev, f"line {n} has sequence number {record.get('seq')}, expected "
                                    f"{seq + 1} (a line was removed, inserted or moved)")
            if record.get("prev") != prev:
                return VerifyReport(False, seq, prev, f"line {n} does not follow the line before it (removed, "
                                    "inserted or reordered lines)")
            if _digest(prev, record) != stated:
                return VerifyReport(False, seq, prev, f"line {n} was edited (its hash does not match its content)")
            prev, seq = stated, seq + 1
    head = head_path(path)
    if head.exists():
        try:
            h = json.loads(head.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            return VerifyReport(False, seq, prev, f"{head} is not readable")
        if h.get("seq") != seq or h.get("hash") != prev:
            return VerifyReport(False, seq, prev, f"the trail ends at line {seq} but its head file names line "
                                f"{h.get('seq')}: lines were cut off the end")
    return VerifyReport(True, seq, prev)
