"""How a simulation cuts the public sentiment pool into banks: the pool (unique training rows, seeded), the split
over banks (Flower Datasets partitioners: iid, Dirichlet by label, quantity, source skew; deterministic in the seed),
and the report of it (label histogram per bank, as a table and a plot).

Only simulations partition. Each simulated bank's share is written as a bank folder in the data contract
(simulations/bank_folders.py), and a simulated bank reads that folder as a deployed bank reads its own.
"""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

from ..common.config import PartitionConfig
from ..common.metrics import format_markdown_table
from ..common.tasks.sentiment_data import LABELS, SentimentExample

# Source skew: which data a bank of each kind holds. FPB is news wire, TFNS tweets, FiQA microblog posts/headlines.
SOURCE_GROUPS = {"fpb": "news", "tfns": "tweets", "fiqa": "fiqa-posts"}


class PartitionError(ValueError):
    """A partitioning that cannot be made (too few rows, a bank left empty...)."""


def training_pool(train: dict[str, list[SentimentExample]], cfg: PartitionConfig) -> list[SentimentExample]:
    """The unique training rows of every source (or of `cfg.sources`), shuffled with the seed (optionally a seeded
    sample). Repeated texts (FPB and TFNS hold a few) are kept once, so a bank's local test row is never also a
    training row."""
    seen: set[str] = set()
    pool = []
    for name in sorted(train):
        if cfg.sources is not None and name not in cfg.sources:
            continue
        for ex in train[name]:
            key = " ".join(ex.text.lower().split())
            if key not in seen:
                seen.add(key)
                pool.append(ex)
    rng = random.Random(cfg.seed)
    rng.shuffle(pool)
    return pool[: cfg.max_rows] if cfg.max_rows else pool


def _dataset(pool: list[SentimentExample]):
    from datasets import Dataset

    return Dataset.from_dict({
        "idx": list(range(len(pool))),
        "label": [LABELS.index(ex.label) for ex in pool],
        "group": [SOURCE_GROUPS.get(ex.source, ex.source) for ex in pool],
    })


def _partition_with(partitioner, ds, n: int) -> list[list[int]]:
    partitioner.dataset = ds
    return [list(partitioner.load_partition(i)["idx"]) for i in range(n)]


def partition_pool(pool: list[SentimentExample], num_banks: int, cfg: PartitionConfig) -> list[list[int]]:
    """Index lists into `pool`, one per bank; deterministic for a given seed."""
    from flwr_datasets.partitioner import (
        DirichletPartitioner, ExponentialPartitioner, IidPartitioner, NaturalIdPartitioner,
    )

    if len(pool) < num_banks * 2:
        raise PartitionError(f"{len(pool)} rows cannot be split over {num_banks} banks")
    ds = _dataset(pool)
    if cfg.kind == "iid":
        parts = _partition_with(IidPartitioner(num_partitions=num_banks), ds, num_banks)
    elif cfg.kind == "dirichlet":
        try:
            parts = _partition_with(
                DirichletPartitioner(num_partitions=num_banks, partition_by="label", alpha=cfg.alpha,
                                     min_partition_size=cfg.min_partition_size, self_balancing=False, seed=cfg.seed),
                ds, num_banks,
            )
        except ValueError as err:
            raise PartitionError(
                f"federation.partition: Dirichlet alpha={cfg.alpha} could not give every one of {num_banks} banks "
                f"{cfg.min_partition_size} rows ({err}); lower min_partition_size or raise alpha"
            ) from None
    elif cfg.kind == "quantity":
        parts = _partition_with(ExponentialPartitioner(num_partitions=num_banks), ds, num_banks)
    else:  # source skew: each bank holds one kind of text; banks of the same kind split it evenly
        groups = sorted(set(ds["group"]))
        if num_banks < len(groups):
            raise PartitionError(f"source skew needs at least {len(groups)} banks (one per source: {groups}); "
                                 f"got {num_banks}, which would drop whole sources")
        if num_banks == len(groups):
            parts = _partition_with(NaturalIdPartitioner(partition_by="group"), ds, num_banks)
        else:
            parts = [[] for _ in range(num_banks)]
            for g, group in enumerate(groups):
                banks = [b for b in range(num_banks) if b % len(groups) == g]
                rows = [i for i, grp in enumerate(ds["group"]) if grp == group]
                for k, b in enumerate(banks):
                    parts[b] = rows[k :: len(banks)]
    empty = [b for b, p in enumerate(parts) if len(p) < 2]
    if empty:
        raise PartitionError(f"banks {empty} received fewer than 2 rows under {cfg.kind} partitioning; use fewer banks")
    return parts


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
