"""Computed features of an AML case: what a reviewer counts before reading the transfers (degrees, counterparties,
time span, amount statistics, near-threshold transfers, cross-border and offshore hops, a cycle back to the focus
account, which rules fired). One function gives them as numbers, for the boosted-trees baseline, and one as a line
of text, for the model's prompt: both read the same case the same way.
"""

from __future__ import annotations

import statistics

from .aml import AmlCase
from .aml_graph import is_offshore
from .aml_rules import FAN_DEGREE, LARGE_AMOUNT, STRUCTURING_COUNT, rule_hits

# the features' order is the boosted trees' column order: append, never reorder
FEATURES = ("transfers", "in_degree", "out_degree", "counterparties", "span_days", "amount_total", "amount_mean",
            "amount_median", "amount_max", "amount_cv", "round_amounts", "near_threshold", "large_in", "large_out",
            "cross_border", "other_bank", "offshore", "cycle", "in_out_ratio", "max_per_day", "rules_fired")
RULES = ("fan_in", "fan_out", "structuring", "cycle", "offshore")


def fired_rules(case: AmlCase, reporting_threshold: float = 10_000.0) -> list[str]:
    """The rules baseline's rules that fire on the case (common/tasks/aml_rules.py)."""
    h = rule_hits(case, reporting_threshold)
    on = {"fan_in": h.fan_in >= FAN_DEGREE, "fan_out": h.fan_out >= FAN_DEGREE,
          "structuring": h.near_threshold >= STRUCTURING_COUNT, "cycle": h.cycle, "offshore": h.offshore > 0}
    return [r for r in RULES if on[r]]


def case_features(case: AmlCase, reporting_threshold: float = 10_000.0) -> dict[str, float]:
    """The case's features as numbers, in FEATURES order (a case with no transfers gives zeros)."""
    a, txs = case.focus, case.transactions
    focus = case.accounts.get(a)
    amounts = [t.amount for t in txs]
    into = [t for t in txs if t.dst == a]
    out = [t for t in txs if t.src == a]
    parties = {x for t in txs for x in (t.src, t.dst)} - {a}
    h = rule_hits(case, reporting_threshold)

    def other(attr: str) -> int:
        n = 0
        for t in txs:
            for x in (t.src, t.dst):
                acct = case.accounts.get(x)
                if x != a and acct and focus and getattr(acct, attr) and getattr(acct, attr) != getattr(focus, attr):
                    n += 1
        return n

    days: dict = {}
    for t in txs:
        days[t.time.date()] = days.get(t.time.date(), 0) + 1
    mean = statistics.fmean(amounts) if amounts else 0.0
    feats = {
        "transfers": len(txs),
        "in_degree": len({t.src for t in into}),
        "out_degree": len({t.dst for t in out}),
        "counterparties": len(parties),
        "span_days": (max(t.time for t in txs) - min(t.time for t in txs)).total_seconds() / 86400 if txs else 0.0,
        "amount_total": sum(amounts),
        "amount_mean": mean,
        "amount_median": statistics.median(amounts) if amounts else 0.0,
        "amount_max": max(amounts, default=0.0),
        "amount_cv": statistics.pstdev(amounts) / mean if len(amounts) > 1 and mean else 0.0,
        "round_amounts": sum(1 for x in amounts if x >= 100 and x % 100 == 0),
        "near_threshold": h.near_threshold,
        "large_in": sum(1 for t in into if t.amount >= LARGE_AMOUNT),
        "large_out": sum(1 for t in out if t.amount >= LARGE_AMOUNT),
        "cross_border": other("country"),
        "other_bank": other("bank"),
        "offshore": sum(1 for t in txs for x in (t.src, t.dst)
                        if x in case.accounts and is_offshore(case.accounts[x].bank)),
        "cycle": float(h.cycle),
        "in_out_ratio": (sum(t.amount for t in into) / sum(t.amount for t in out)) if out and into else 0.0,
        "max_per_day": max(days.values(), default=0),
        "rules_fired": len(fired_rules(case, reporting_threshold)),
    }
    return {k: float(feats[k]) for k in FEATURES}


def facts(case: AmlCase, reporting_threshold: float = 10_000.0) -> list[str]:
    """The case's features as short clauses, each true of the case: the features line of the prompt is these clauses
    joined, and a reason is faithful when every clause it gives is one of them (`reason_problems`)."""
    f = case_features(case, reporting_threshold)
    rules = fired_rules(case, reporting_threshold)
    return [f"{f['transfers']:.0f} transfers over {f['span_days']:.1f} days", f"in-degree {f['in_degree']:.0f}",
            f"out-degree {f['out_degree']:.0f}", f"{f['counterparties']:.0f} counterparties",
            f"amounts total {f['amount_total']:,.0f}", f"median {f['amount_median']:,.0f}",
            f"max {f['amount_max']:,.0f}", f"{f['near_threshold']:.0f} near the reporting threshold",
            f"{f['cross_border']:.0f} cross-border", f"{f['offshore']:.0f} offshore",
            f"cycle: {'yes' if f['cycle'] else 'no'}", f"rules fired: {', '.join(rules) if rules else 'none'}"]


def features_text(case: AmlCase, reporting_threshold: float = 10_000.0) -> str:
    """The features as one line of the prompt, e.g. 'Features: 11 transfers over 8.0 days; in-degree 10; out-degree
    1; 11 counterparties; amounts total 82,300; median 5,831; max 11,066; 2 near the reporting threshold; 2
    cross-border; 0 offshore; cycle: no; rules fired: fan_in.'"""
    return "Features: " + "; ".join(facts(case, reporting_threshold)) + "."


# the names of `facts`' clauses, in order, and the ones a reason for each typology cites: the evidence it leaves
FACT_NAMES = ("span", "in_degree", "out_degree", "counterparties", "total", "median", "max", "near_threshold",
              "cross_border", "offshore", "cycle", "rules")
_EVIDENCE = {"fan_in": ("in_degree", "span"), "fan_out": ("out_degree", "span"), "cycle": ("cycle", "counterparties"),
             "scatter_gather": ("in_degree", "out_degree", "span"), "gather_scatter": ("in_degree", "out_degree", "span"),
             "bipartite": ("in_degree", "out_degree", "counterparties"), "stack": ("counterparties", "span"),
             "random": ("counterparties", "span"), "structuring": ("near_threshold", "span"),
             "none": ("span", "counterparties", "rules")}
REASON_SEPARATOR = "; "


def evidence_reason(case: AmlCase, typology: str, reporting_threshold: float = 10_000.0) -> str:
    """A one-line reason for a decision on the case, made of the case's own facts (`facts`): the ones the typology
    leaves, plus cross-border and offshore hops where there are any (for a suspicious case)."""
    from .aml import NONE

    fs = dict(zip(FACT_NAMES, facts(case, reporting_threshold)))
    picks = list(_EVIDENCE[typology])
    if typology != NONE:
        picks += [k for k in ("cross_border", "offshore") if not fs[k].startswith("0 ")]
    return REASON_SEPARATOR.join(fs[k] for k in picks)


def reason_problems(case: AmlCase, reason: str, reporting_threshold: float = 10_000.0) -> list[str]:
    """Why a reason is not faithful to the case: each clause (split on '; ') that is not one of the case's facts,
    or that the reason gives none. An empty list = faithful. Run on every generated reply."""
    true = set(facts(case, reporting_threshold))
    clauses = [c.strip().rstrip(".") for c in reason.split(REASON_SEPARATOR.strip())]
    clauses = [c for c in clauses if c]
    if not clauses:
        return ["the reason cites no evidence"]
    return [f"{c!r} is not a fact of the case" for c in clauses if c not in true]
