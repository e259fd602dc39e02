"""Anti-money-laundering as an instruction task: a case (an account's window of transactions) becomes a narrative,
and the answer is strict JSON: {"suspicious": bool, "typology": str, "risk_score": 0-100, "reason": str}.

The data model (accounts, transactions, cases) is shared by the loaders (`aml_data`), the synthetic generator
(`common.tasks.aml_generator`), the rules baseline (`aml_rules`) and training; prompts go through `common.prompt`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

from ..prompt import Encoded, build_answer, build_prompt, encode_example

# AMLworld's typologies, plus structuring (amounts kept just below a reporting threshold).
TYPOLOGIES = ("fan_in", "fan_out", "cycle", "scatter_gather", "gather_scatter", "bipartite", "stack", "random",
              "structuring")
NONE = "none"
INSTRUCTION = ("Screen this account's activity for money laundering. Answer in JSON: suspicious (true or false) "
               "first, then typology (one of " + ", ".join(TYPOLOGIES) + ", or none), risk_score (0-100) and "
               "reason (the features that support the decision, separated by semicolons).")
MAX_LINES = 8  # transactions spelled out in a narrative; the rest are summarised in one line


@dataclass(frozen=True)
class Account:
    id: str
    bank: str
    name: str = ""
    country: str = ""
    laundering: bool = False  # account-level label where the source has one (AMLSim nodes)


@dataclass(frozen=True)
class Transaction:
    id: str
    src: str
    dst: str
    amount: float
    currency: str
    time: datetime
    payment_format: str = ""
    laundering: bool = False
    typology: str | None = None  # of the laundering pattern the transaction belongs to
    pattern: str | None = None  # id of that pattern (a case)


@dataclass
class AmlDataset:
    """What a loader or the generator returns; `skipped` counts rows left out and why (never silently)."""

    source: str
    accounts: dict[str, Account]
    transactions: list[Transaction]
    skipped: dict[str, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)  # each skipped row, by file and line (never a value of it)

    def banks(self) -> list[str]:
        return sorted({a.bank for a in self.accounts.values()})


@dataclass
class AmlCase:
    id: str
    bank: str  # the bank that holds the focus account (the one that would file the report)
    focus: str
    transactions: list[Transaction]
    accounts: dict[str, Account]
    suspicious: bool
    typology: str  # NONE when not suspicious


@dataclass(frozen=True)
class AmlAnswer:
    suspicious: bool
    typology: str
    risk_score: int
    reason: str


# ------------------------------------------------------------------------------------------ narrative

def _alias(i: int) -> str:
    return chr(ord("A") + i) if i < 26 else f"P{i}"


def _party(acct: Account | None, acct_id: str, home: Account | None, full: bool) -> str:
    """'Jane Roe'; the focus (full) also shows its account number and bank; a party at another bank shows that
    bank, and one in another country its country (cross-bank and cross-border hops are what a reviewer looks for)."""
    if acct is None:
        return acct_id
    name = acct.name or "unnamed"
    where = [acct.bank] if full or home is None or acct.bank != home.bank else []
    if acct.country and home is not None and acct.country != home.country:
        where.append(acct.country)
    suffix = f" ({', '.join(where)})" if where else ""
    return f"{acct.id} {name}{suffix}" if full else f"{name}{suffix}"


def narrative(case: AmlCase, max_lines: int = MAX_LINES) -> str:
    """The case as a compact event sequence. Parties get letters (A is the focus account) named once in a legend;
    then one line per transfer, e.g. 'Day 2: B->A EUR 9,521 cash deposit'; days count from the first transfer,
    and transfers past `max_lines` are summarised in one line."""
    txs = sorted(case.transactions, key=lambda t: (t.time, t.id))
    focus = case.accounts.get(case.focus)
    shown, rest = txs[:max_lines], txs[max_lines:]
    alias = {case.focus: "A"}
    for t in shown:
        for a in (t.src, t.dst):
            alias.setdefault(a, _alias(len(alias)))
    legend = "; ".join(f"{al}={_party(case.accounts.get(a), a, focus, a == case.focus)}" for a, al in alias.items())
    lines = [f"Parties: {legend}."]
    if not txs:
        return lines[0] + " No transfers in the window."
    t0 = txs[0].time
    for t in shown:
        how = f" {t.payment_format.lower()}" if t.payment_format else ""
        lines.append(f"Day {(t.time.date() - t0.date()).days + 1}: {alias[t.src]}->{alias[t.dst]} "
                     f"{t.currency} {t.amount:,.0f}{how}")
    if rest:
        parties = len({t.src for t in rest} | {t.dst for t in rest})
        lines.append(f"Then {len(rest)} more transfers by day {(rest[-1].time.date() - t0.date()).days + 1}, "
                     f"{rest[0].currency} {sum(t.amount for t in rest):,.0f} in total among {parties} accounts.")
    return "\n".join(lines)


def case_text(case: AmlCase, max_lines: int = MAX_LINES) -> str:
    """The model's input for a case: the computed features line first (what a reviewer counts; numbers only, no
    names), then the narrative (a long narrative is cut from its end, never the features)."""
    from .aml_features import features_text

    return features_text(case) + "\n" + narrative(case, max_lines)


def aml_prompt(case: AmlCase, max_lines: int = MAX_LINES) -> str:
    return build_prompt(INSTRUCTION, case_text(case, max_lines))


def gold_answer(case: AmlCase) -> AmlAnswer:
    """The training target: the decision first, its typology, a score at the label's end of the scale (served
    replies carry the calibrated probability instead), and a reason made of the case's own facts."""
    from .aml_features import evidence_reason

    typ = case.typology if case.suspicious else NONE
    return AmlAnswer(case.suspicious, typ, 90 if case.suspicious else 5, evidence_reason(case, typ))


def format_answer(answer: AmlAnswer) -> str:
    return json.dumps({"suspicious": answer.suspicious, "typology": answer.typology,
                       "risk_score": answer.risk_score, "reason": answer.reason})


class AnswerError(ValueError):
    """An answer that is not the strict JSON the task asks for (counted as unparseable, never guessed)."""


def parse_answer(text: str) -> AmlAnswer:
    """Strict: one JSON object with exactly the four keys, the right types, a known typology, a score in 0..100,
    and typology 'none' exactly when not suspicious."""
    text = text.strip()
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as err:
        raise AnswerError(f"not JSON ({err.msg})") from None
    if not isinstance(obj, dict):
        raise AnswerError(f"expected a JSON object, got {type(obj).__name__}")
    keys = {"suspicious", "typology", "risk_score", "reason"}
    if set(obj) != keys:
        raise AnswerError(f"keys must be {sorted(keys)}, got {sorted(obj)}")
    sus, typ, score, reason = obj["suspicious"], obj["typology"], obj["risk_score"], obj["reason"]
    if not isinstance(sus, bool):
        raise AnswerError("suspicious must be true or false")
    if typ not in (*TYPOLOGIES, NONE):
        raise AnswerError(f"unknown typology {typ!r}")
    if isinstance(score, bool) or not isinstance(score, int) or not 0 <= score <= 100:
        raise AnswerError(f"risk_score must be an integer 0..100, got {score!r}")
    if not isinstance(reason, str) or not reason.strip() or "\n" in reason:
        raise AnswerError("reason must be one non-empty line")
    if sus != (typ != NONE):
        raise AnswerError(f"suspicious={sus} contradicts typology {typ!r}")
    return AmlAnswer(sus, typ, score, reason)


# Label-likelihood scoring: the answer's opening decides the label, so P(suspicious) is the probability of one
# opening against the other; the risk score is 100 x that probability (as the sentiment task gives a confidence).
DECISION_OPENING = '{"suspicious":'
LABEL_OPENINGS = (f"{DECISION_OPENING} true", f"{DECISION_OPENING} false")
TYPOLOGY_OPENINGS = tuple(f'{{"suspicious": true, "typology": "{t}"' for t in TYPOLOGIES)  # given suspicious


def decision_token(tokenizer) -> int | None:
    """Where the decision (' true' / ' false') sits among the answer's tokens, when it is one token after the same
    opening for both (SmolLM2: yes); None otherwise (the decision then weighs as any answer token)."""
    opening = tokenizer(build_answer(DECISION_OPENING), add_special_tokens=False)["input_ids"]
    for word in ("true", "false"):
        ids = tokenizer(build_answer(f"{DECISION_OPENING} {word}"), add_special_tokens=False)["input_ids"]
        if len(ids) != len(opening) + 1 or ids[: len(opening)] != opening:
            return None
    return len(opening)


def encode_aml(tokenizer, cases: Sequence[AmlCase], max_length: int, max_lines: int = MAX_LINES,
               scrub=None, decision_weight: float = 1.0) -> list[Encoded]:
    """Cases as training examples; `scrub` (text -> text, or None to leave the case out) runs over each case's
    text before tokenisation (a bank's own cases: common/pii/scrub.py); the instruction is ours, never scrubbed.
    `decision_weight`: the loss weight of the decision token against 1 for each other answer token
    (data.aml.decision_weight)."""
    at = decision_token(tokenizer) if decision_weight != 1.0 else None
    out = []
    for c in cases:
        text = case_text(c, max_lines)
        if scrub is not None and (text := scrub(text)) is None:
            continue
        out.append(encode_example(tokenizer, build_prompt(INSTRUCTION, text), format_answer(gold_answer(c)),
                                  max_length, emphasis=None if at is None else (at, decision_weight)))
    return out


__all__ = ["Account", "Transaction", "AmlDataset", "AmlCase", "AmlAnswer", "TYPOLOGIES", "NONE", "INSTRUCTION",
           "narrative", "case_text", "aml_prompt", "decision_token", "gold_answer", "format_answer", "parse_answer", "AnswerError",
           "LABEL_OPENINGS", "TYPOLOGY_OPENINGS", "encode_aml"]
