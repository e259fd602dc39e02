"""The money's path in an AML case as a graph: accounts as nodes (the focus account, other banks, other countries and
offshore accounts marked), transfers as edges (amount, currency, date, payment format), drawn to PNG or SVG and
exported as GraphML or Cypher for banks that load cases into a graph database (`fedfingpt aml show CASE`).

Holder names and account numbers stay out unless asked for (`names=True`): a picture or export is shared more
widely than the case file, so by default a party is its letter in the case's narrative plus its bank and country.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

from .aml import AmlCase, Transaction, _alias

FORMATS = ("png", "svg", "graphml", "cypher")


def is_offshore(bank: str) -> bool:
    return bank.lower().startswith("offshore")


def case_key(case: AmlCase, names: bool = False) -> str:
    """The name a case goes by in pictures and exports: its id with `names` (a clean case's id holds its account
    number), else a short digest of it."""
    import hashlib

    return case.id if names else "case-" + hashlib.sha256(case.id.encode()).hexdigest()[:12]


def _ordered(case: AmlCase) -> list[Transaction]:
    return sorted(case.transactions, key=lambda t: (t.time, t.id))


def party_letters(case: AmlCase) -> dict[str, str]:
    """Account id -> its letter, as the narrative names parties (A is the focus, then in order of first transfer)."""
    letters = {case.focus: "A"}
    for t in _ordered(case):
        for a in (t.src, t.dst):
            letters.setdefault(a, _alias(len(letters)))
    return letters


def case_graph(case: AmlCase, names: bool = False):
    """A networkx MultiDiGraph of the case: one node per account (key: its letter, or its account id with
    `names`), one edge per transfer, in time order."""
    import networkx as nx

    letters = party_letters(case)
    focus = case.accounts.get(case.focus)
    g = nx.MultiDiGraph(case=case_key(case, names), bank=case.bank)
    key = (lambda a: a) if names else (lambda a: letters[a])
    t0 = min((t.time for t in case.transactions), default=None)
    for a, letter in letters.items():
        acct = case.accounts.get(a)
        bank = acct.bank if acct else ""
        country = acct.country if acct else ""
        attrs = {"letter": letter, "bank": bank, "country": country, "focus": a == case.focus,
                 "other_bank": bool(focus and bank and bank != focus.bank),
                 "cross_border": bool(focus and country and focus.country and country != focus.country),
                 "offshore": is_offshore(bank)}
        if names:
            attrs |= {"account": a, "name": acct.name if acct else ""}
        g.add_node(key(a), **attrs)
    for seq, t in enumerate(_ordered(case)):
        g.add_edge(key(t.src), key(t.dst), key=seq, seq=seq, amount=float(t.amount), currency=t.currency,
                   time=t.time.isoformat(), day=(t.time.date() - t0.date()).days + 1,
                   payment_format=t.payment_format or "",
                   offshore_hop=is_offshore(g.nodes[key(t.src)]["bank"]) or is_offshore(g.nodes[key(t.dst)]["bank"]))
    return g


def write_graphml(case: AmlCase, path: str | Path, names: bool = False) -> Path:
    import networkx as nx

    from ..report import write_text_atomic

    path = Path(path)
    write_text_atomic(path, "\n".join(nx.generate_graphml(case_graph(case, names))) + "\n")
    return path


def _cypher_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    return json.dumps(str(v))  # a double-quoted string with backslash escapes, which Cypher reads the same way


def _props(d: dict) -> str:
    return "{" + ", ".join(f"{k}: {_cypher_value(v)}" for k, v in d.items()) + "}"


def cypher(case: AmlCase, names: bool = False) -> str:
    """Cypher statements that MERGE the case's accounts and transfers, each carrying the case's key (so a case
    loads twice without duplicates and is deleted by its key)."""
    g = case_graph(case, names)
    ck = g.graph["case"]
    lines = [f"// fedfingpt AML case {ck}: {g.number_of_nodes()} accounts, {g.number_of_edges()} transfers"]
    var = {n: f"a{i}" for i, n in enumerate(g.nodes)}
    for n, attrs in g.nodes(data=True):
        lines.append(f"MERGE ({var[n]}:Account {_props({'case': ck, 'key': n})}) SET {var[n]} += {_props(attrs)}")
    for i, (u, v, attrs) in enumerate(g.edges(data=True)):
        ident = {"case": ck, "seq": attrs["seq"]}
        lines.append(f"MERGE ({var[u]})-[t{i}:TRANSFER {_props(ident)}]->({var[v]}) SET t{i} += {_props(attrs)}")
    return "\n".join(lines) + ";\n"


def write_cypher(case: AmlCase, path: str | Path, names: bool = False) -> Path:
    from ..report import write_text_atomic

    path = Path(path)
    write_text_atomic(path, cypher(case, names))
    return path


def _edge_labels(g) -> dict[tuple, str]:
    """One label per account pair: its transfers as 'day N: EUR 9,521 (cash)', at most three, then a count."""
    per_pair: dict[tuple, list[str]] = defaultdict(list)
    for u, v, a in g.edges(data=True):
        how = f" ({a['payment_format'].lower()})" if a["payment_format"] else ""
        per_pair[(u, v)].append(f"day {a['day']}: {a['currency']} {a['amount']:,.0f}{how}")
    return {pair: "\n".join(items[:3] + ([f"+{len(items) - 3} more"] if len(items) > 3 else []))
            for pair, items in per_pair.items()}


def render(case: AmlCase, path: str | Path, names: bool = False, title: str | None = None) -> Path:
    """The case's transfer graph as PNG or SVG (by `path`'s suffix): the focus account in the middle, accounts at
    other banks outlined, cross-border accounts hatched, offshore accounts and the hops through them in red."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import networkx as nx

    path = Path(path)
    if path.suffix.lower() not in (".png", ".svg"):
        raise ValueError(f"{path}: a case picture is .png or .svg")
    g = case_graph(case, names)
    focus = next(n for n, a in g.nodes(data=True) if a["focus"])
    others = [n for n in g.nodes if n != focus]
    pos = nx.shell_layout(g, nlist=[[focus], others]) if others else {focus: (0.0, 0.0)}
    size = 4 + 0.35 * len(g)
    fig, ax = plt.subplots(figsize=(min(size, 16), min(size * 0.8, 13)))
    for n, a in g.nodes(data=True):
        color = "#f0ad4e" if a["focus"] else "#d9534f" if a["offshore"] else "#9ecae1"
        ax.scatter(*pos[n], s=1400 if a["focus"] else 900, c=color, zorder=3,
                   edgecolors="black" if a["other_bank"] or a["focus"] else "none", linewidths=1.5,
                   hatch="///" if a["cross_border"] else None)
        ax.annotate(a["letter"], pos[n], ha="center", va="center", fontsize=10, weight="bold", zorder=4)
        below = (f"{a['name']}\n" if names and a.get("name") else "") + a["bank"] + \
            (f" ({a['country']})" if a["country"] else "")
        ax.annotate(below, pos[n], xytext=(0, -24), textcoords="offset points", ha="center", va="top", fontsize=7,
                    zorder=4)
    simple = nx.DiGraph()
    simple.add_nodes_from(g.nodes)
    for u, v, a in g.edges(data=True):
        hop = a["offshore_hop"] or simple.get_edge_data(u, v, {}).get("offshore_hop", False)
        simple.add_edge(u, v, offshore_hop=hop)
    colors = ["#d9534f" if a["offshore_hop"] else "#555555" for _, _, a in simple.edges(data=True)]
    nx.draw_networkx_edges(simple, pos, ax=ax, edge_color=colors, arrows=True, arrowsize=14, node_size=1400,
                           connectionstyle="arc3,rad=0.12", width=1.2)
    nx.draw_networkx_edge_labels(simple, pos, edge_labels=_edge_labels(g), ax=ax, font_size=6, label_pos=0.5,
                                 connectionstyle="arc3,rad=0.12", rotate=False,
                                 bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none", "alpha": 0.8})
    verdict = f"{case.typology}" if case.suspicious else "no laundering label"
    ax.set_title(title or f"{g.graph['case']} at {case.bank}: {g.number_of_edges()} transfers, "
                 f"{g.number_of_nodes()} accounts ({verdict})", fontsize=9)
    ax.axis("off")
    ax.margins(0.18)
    fig.text(0.01, 0.01, "orange: the focus account (A); red: offshore account or hop; outlined: another bank; "
             "hatched: another country", fontsize=7, color="#444444")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    from ..report import save_figure

    return save_figure(fig, path, dpi=130)


def export(case: AmlCase, out_dir: str | Path, formats: tuple[str, ...] = FORMATS, names: bool = False) -> list[Path]:
    """The case in each of `formats` under OUT_DIR, named by the case id."""
    bad = [f for f in formats if f not in FORMATS]
    if bad:
        raise ValueError(f"unknown format(s) {', '.join(bad)}; use {', '.join(FORMATS)}")
    out = Path(out_dir)
    stem = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in case_key(case, names))
    written = []
    for f in formats:
        target = out / f"{stem}.{f}"
        if f in ("png", "svg"):
            written.append(render(case, target, names))
        elif f == "graphml":
            written.append(write_graphml(case, target, names))
        else:
            written.append(write_cypher(case, target, names))
    return written
