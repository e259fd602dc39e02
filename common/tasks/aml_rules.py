"""A transparent rules baseline for AML cases, the bar the model has to clear: each rule is a count over the
case's transfers with a stated threshold, and the strongest rule names the typology.

Rules (focus account A, within the case's window; "large" = at least LARGE_AMOUNT):
- fan-in: at least FAN_DEGREE distinct accounts made large payments to A; fan-out: A made large payments to at
  least FAN_DEGREE distinct accounts; both: gather-scatter;
- structuring: at least STRUCTURING_COUNT transfers between 90 % and 100 % of the reporting threshold;
- cycle: large transfers lead from A through at least two other accounts back to A;
- offshore: a transfer with an offshore account (a bank named offshore_*).
The risk score is the share of the rule weights that fire; suspicious when it reaches 0.5.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from .aml import NONE, AmlAnswer, AmlCase

FAN_DEGREE = 5
STRUCTURING_COUNT = 3
LARGE_AMOUNT = 1_000.0
WEIGHTS = {"fan_in": 0.6, "fan_out": 0.6, "structuring": 0.8, "cycle": 0.7, "offshore": 0.3}


@dataclass(frozen=True)
class RuleHits:
    fan_in: int
    fan_out: int
    near_threshold: int
    cycle: bool
    offshore: int


def rule_hits(case: AmlCase, reporting_threshold: float = 10_000.0) -> RuleHits:
    a = case.focus
    large = [t for t in case.transactions if t.amount >= LARGE_AMOUNT]
    senders = {t.src for t in large if t.dst == a}
    receivers = {t.dst for t in large if t.src == a}
    near = sum(1 for t in case.transactions if 0.9 * reporting_threshold <= t.amount < reporting_threshold)
    graph: dict[str, set[str]] = defaultdict(set)
    for t in large:
        graph[t.src].add(t.dst)
    cycle = False
    stack = [(b, 1) for b in graph[a] if b != a]
    seen: set[str] = set()
    while stack and not cycle:  # depth-first search for a path of 3+ hops back to A
        node, hops = stack.pop()
        for nxt in graph[node]:
            if nxt == a and hops >= 2:
                cycle = True
            elif nxt != a and nxt not in seen:
                seen.add(nxt)
                stack.append((nxt, hops + 1))
    offshore = sum(1 for t in case.transactions
                   for x in (t.src, t.dst) if x in case.accounts and case.accounts[x].bank.startswith("offshore"))
    return RuleHits(len(senders), len(receivers), near, cycle, offshore)


def rules_score(case: AmlCase, reporting_threshold: float = 10_000.0) -> tuple[float, str]:
    """(risk score in [0, 1], typology the strongest firing rule points to, or 'none')."""
    h = rule_hits(case, reporting_threshold)
    fired = {"fan_in": h.fan_in >= FAN_DEGREE, "fan_out": h.fan_out >= FAN_DEGREE,
             "structuring": h.near_threshold >= STRUCTURING_COUNT, "cycle": h.cycle, "offshore": h.offshore > 0}
    score = min(1.0, sum(WEIGHTS[k] for k, on in fired.items() if on))
    if fired["structuring"]:
        typ = "structuring"
    elif fired["fan_in"] and fired["fan_out"]:
        typ = "gather_scatter"
    elif fired["cycle"]:
        typ = "cycle"
    elif fired["fan_in"]:
        typ = "fan_in"
    elif fired["fan_out"]:
        typ = "fan_out"
    else:
        typ = "random" if score >= 0.5 else NONE
    return score, typ


def rules_answer(case: AmlCase, reporting_threshold: float = 10_000.0) -> AmlAnswer:
    score, typ = rules_score(case, reporting_threshold)
    suspicious = score >= 0.5
    return AmlAnswer(suspicious, typ if suspicious else NONE, int(round(100 * score)),
                     f"rules fired for {typ}" if suspicious else "no rule fired strongly enough")
