"""Reports of how a simulation split the sentiment pool across banks (label histogram per bank, as a table and a plot).

The split itself is `common/bank_rows.py`: the same code gives a bank process its rows.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from ..common.bank_rows import SOURCE_GROUPS
from ..common.config import PartitionConfig
from ..common.metrics import format_markdown_table
from ..common.tasks.sentiment_data import LABELS, SentimentExample


def partition_table(pool: list[SentimentExample], parts: list[list[int]]) -> list[dict]:
    rows = []
    for b, part in enumerate(parts):
        labels = Counter(pool[i].label for i in part)
        sources = Counter(pool[i].source for i in part)
        rows.append({"bank": b, "rows": len(part), **{lab: labels.get(lab, 0) for lab in LABELS},
                     **{f"src_{s}": sources.get(s, 0) for s in sorted(SOURCE_GROUPS)}})
    return rows


def write_partition_report(pool, parts, cfg: PartitionConfig, out_dir: Path) -> tuple[Path, Path]:
    """Label histogram per bank as a markdown table and a stacked-bar PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..common.report import save_figure, write_text_atomic

    table = partition_table(pool, parts)
    title = f"Partition: {cfg.kind}" + (f" (alpha={cfg.alpha})" if cfg.kind == "dirichlet" else "") + f", seed {cfg.seed}"
    md = out_dir / "partition.md"
    write_text_atomic(md, f"# {title}\n\n{format_markdown_table(table)}\n")
    fig, ax = plt.subplots(figsize=(1.2 + 0.9 * len(parts), 3.4))
    bottom = [0] * len(parts)
    for lab, color in zip(LABELS, ("#d9534f", "#999999", "#5cb85c")):
        vals = [r[lab] for r in table]
        ax.bar([f"bank {r['bank']}" for r in table], vals, bottom=bottom, color=color, label=lab)
        bottom = [a + b for a, b in zip(bottom, vals)]
    ax.set(ylabel="training rows", title=title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return md, save_figure(fig, out_dir / "partition.png")
