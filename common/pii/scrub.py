"""A bank's training texts scrubbed of PII before tokenisation, by the serving gate's engine under a training-side
policy (redact, mask, hash, or drop the row). What a scrub reports is entity types and counts, never the values."""

from __future__ import annotations

import logging
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

from ..config import GateConfig, ScrubConfig

log = logging.getLogger("fedfingpt.scrub")
# what a scrub or a pseudonymisation already put in: left as it is by a later scrub of the same text
PLACEHOLDER = re.compile(r"<[A-Z_]+(?::[0-9a-f]+)?>|\bacct-[0-9a-f]{10}\b")


@dataclass
class ScrubReport:
    """What one scrub did over many texts: counts only."""

    texts: int = 0
    changed: int = 0
    dropped: int = 0
    found: Counter = field(default_factory=Counter)  # entity type -> values replaced or causing a drop

    def as_dict(self) -> dict:
        return {"texts": self.texts, "changed": self.changed, "dropped": self.dropped,
                "found": dict(sorted(self.found.items()))}


class Scrubber:
    """`scrub(text)` -> the text with every finding replaced by its policy's action, or None when a finding's action
    is drop. One engine per process (loading spaCy and the name lists takes seconds)."""

    def __init__(self, gate: GateConfig, policy: ScrubConfig) -> None:
        from .gate import ComplianceGate

        self.policy = policy
        self.gate = ComplianceGate(gate.model_copy(update={"enabled": True}))
        self.report = ScrubReport()

    def action(self, entity: str) -> str:
        return self.policy.entities.get(entity) or self.policy.default

    def scrub(self, text: str, keep: Iterable[str] = ()) -> str | None:
        """`keep`: literal values that are known not to be anyone's identity in this text (a case narrative's bank
        names and country codes); they and earlier replacements (<TYPE>, acct-<hash>) are never rewritten."""
        self.report.texts += 1
        if not text:
            return text
        protected = [m.span() for m in PLACEHOLDER.finditer(text)]
        for value in keep:
            if value:
                protected += [m.span() for m in re.finditer(rf"(?<!\w){re.escape(value)}(?!\w)", text)]
        results = [r for r in self.gate.findings(text)
                   if not any(r.start < e and s < r.end for s, e in protected)]
        if not results:
            return text
        found = Counter(r.entity_type for r in results)
        self.report.found.update(found)
        if any(self.action(e) == "drop" for e in found):
            self.report.dropped += 1
            return None
        out = text
        for r in sorted(results, key=lambda r: r.start, reverse=True):  # right to left keeps offsets valid
            out = out[: r.start] + self.gate.replacement(self.action(r.entity_type), r.entity_type,
                                                         text[r.start: r.end]) + out[r.end:]
        self.report.changed += 1
        return out


_SCRUBBERS: dict[str, Scrubber] = {}


def scrubber(gate: GateConfig, policy: ScrubConfig) -> Scrubber:
    """The process's scrubber for these settings (built once; its report counts from the first use)."""
    key = gate.model_dump_json() + policy.model_dump_json()
    if key not in _SCRUBBERS:
        _SCRUBBERS[key] = Scrubber(gate, policy)
    return _SCRUBBERS[key]
