"""The bank's rows: its share of the sentiment pool (Flower Datasets partitioners, deterministic in the seed), its
own extra rows, its AML cases, and the one way the two tasks are mixed into one adapter's training set.

A bank process (client/), the centralized job and the benchmarks all read their rows here; simulations/ only
reports on them.
"""

from __future__ import annotations

import logging
import random

from .config import Config, PartitionConfig
from .prompt import Encoded
from .tasks.sentiment import encode_sentiment
from .tasks.sentiment_data import LABELS, SentimentExample, sentiment_splits

log = logging.getLogger("fedfingpt.data")
_POOLS: dict[tuple, tuple] = {}

# Source skew: which data a bank of each kind holds. FPB is news wire, TFNS tweets, FiQA microblog posts/headlines.
SOURCE_GROUPS = {"fpb": "news", "tfns": "tweets", "fiqa": "fiqa-posts"}


class PartitionError(ValueError):
    """A partitioning that cannot be made (too few rows, a bank left empty...)."""


def training_pool(train: dict[str, list[SentimentExample]], cfg: PartitionConfig) -> list[SentimentExample]:
    """The unique training rows of every source, shuffled with the seed (optionally a seeded sample). Repeated
    texts (FPB and TFNS hold a few) are kept once, so a bank's local test row is never also a training row."""
    seen: set[str] = set()
    pool = []
    for name in sorted(train):
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


def bank_split(pool: list[SentimentExample], part: list[int], cfg: PartitionConfig, bank: int):
    """A bank's own rows split into local train and local test (seeded per bank)."""
    rows = [pool[i] for i in part]
    random.Random(cfg.seed * 1000 + bank).shuffle(rows)
    n_test = max(1, int(round(len(rows) * cfg.local_test_share)))
    return rows[n_test:], rows[:n_test]


def forget_pools() -> None:
    """Drop the cached partitions (a long-lived worker does so when a new run starts)."""
    _POOLS.clear()


def bank_rows(cfg: Config, bank: int, num_banks: int,
              extra: str | None = None) -> tuple[list[SentimentExample], list[SentimentExample]]:
    """This bank's local train and test rows under the scenario's partitioning (deterministic in the seed), plus
    its own extra training rows (data.bank_extra_train or node config extra-train), which stay at the bank."""
    key = (cfg.data.model_dump_json(), cfg.federation.partition.model_dump_json(), num_banks)
    if key not in _POOLS:  # one process may serve several banks: partition once
        splits = sentiment_splits(cfg.data.data_dir)
        pool = training_pool(splits["train"], cfg.federation.partition)
        _POOLS[key] = (pool, partition_pool(pool, num_banks, cfg.federation.partition))
    pool, parts = _POOLS[key]
    train, test = bank_split(pool, parts[bank], cfg.federation.partition, bank)
    extra = extra or cfg.data.bank_extra_train.get(bank)
    if extra:
        rows = load_extra(extra)
        if cfg.data.scrub.enabled:  # the bank's own rows: scrubbed as a bank folder's are
            from .pii.scrub import scrubber

            rows = _scrubbed(rows, scrubber(cfg.gate, cfg.data.scrub))
        log.info("bank %d: %d extra training rows from %s", bank, len(rows), extra)
        train = train + rows
    return train, test


def bank_training_set(cfg: Config, tokenizer, bank: int, num_banks: int,
                      extra: str | None = None) -> tuple[list[Encoded], list[SentimentExample], list]:
    """The one adapter's training examples for the bank's tasks (data.tasks): its sentiment partition, its AML
    cases (with both tasks, repeated or sampled to make up data.aml.mix of the set); and its local test rows."""
    train: list[Encoded] = []
    test_rows: list[SentimentExample] = []
    aml_test: list = []
    if "sentiment" in cfg.data.tasks:
        train_rows, test_rows = bank_rows(cfg, bank, num_banks, extra)
        train = encode_sentiment(tokenizer, train_rows, cfg.data.max_length)
    if "aml" in cfg.data.tasks:
        from .tasks.aml_scenario import aml_split

        split = aml_split(cfg.data, num_banks)
        cases = split.train[bank]
        aml = aml_examples(cfg, tokenizer, cases, len(train), cfg.data.seed + bank)
        aml_test = split.bank_test(bank)
        log.info("bank %d (%s): %d AML cases (%d laundering; typologies %s) as %d training examples", bank,
                 split.banks[bank], len(cases), sum(c.suspicious for c in cases),
                 ", ".join(sorted(split.typologies(bank))) or "none", len(aml))
        train = train + aml
    log.info("bank %d of %d: %d training examples (%s), %d local sentiment test rows, %d local AML test cases", bank,
             num_banks, len(train), "+".join(cfg.data.tasks), len(test_rows), len(aml_test))
    return train, test_rows, aml_test


def aml_examples(cfg: Config, tokenizer, cases: list, others: int, seed: int) -> list[Encoded]:
    """AML cases as training examples; beside `others` sentiment examples, repeated or sampled to make up
    data.aml.mix of the set (only sampled under local DP, which accounts per example)."""
    from .tasks.aml import encode_aml
    from .tasks.aml_scenario import mix_to_share

    aml = encode_aml(tokenizer, cases, cfg.data.max_length, cfg.data.aml.max_lines)
    if others:
        aml = mix_to_share(aml, others, cfg.data.aml.mix, seed, repeat=cfg.privacy.mode != "local")
    return aml


def _scrubbed(rows: list[SentimentExample], scrub) -> list[SentimentExample]:
    from dataclasses import replace

    out = []
    for ex in rows:
        text = scrub.scrub(ex.text)
        if text is not None:
            out.append(replace(ex, text=text))
    return out


def folder_training_set(cfg: Config, tokenizer, bank: int, folder: str, label_map: dict[str, str] | None = None,
                        accept_skips: bool = False, extra: str | None = None):
    """A deployed bank's training set from its own data folder (the data contract, common/bank_folder.py), read
    whole: bad rows refuse the folder unless accepted, PII is scrubbed before tokenisation (data.scrub), rows are
    split into local train and test as the simulation splits a partition (same seed, same rows: same split).
    Returns (training examples, local sentiment test rows, local AML test cases, what the scrub did)."""
    from .bank_folder import BankDataError, pseudonymise, read_bank_folder, require_usable

    bf = read_bank_folder(folder, label_map)
    require_usable(bf, accept_skips)
    scrub = None
    if cfg.data.scrub.enabled:
        from .pii.scrub import ScrubReport, scrubber

        scrub = scrubber(cfg.gate, cfg.data.scrub)
        scrub.report = ScrubReport()
    else:
        log.warning("bank %d: data.scrub is off: the bank's own rows are trained on as they are", bank)
    train: list[Encoded] = []
    test_rows: list[SentimentExample] = []
    aml_test: list = []
    if "sentiment" in cfg.data.tasks:
        rows = bf.sentiment + (load_extra(extra) if extra else [])
        if scrub is not None:
            rows = _scrubbed(rows, scrub)
        if len(rows) < 2:
            raise BankDataError(f"{folder}: {len(rows)} usable sentiment row(s) (after bad rows and the scrub's "
                                "drops); a bank training sentiment needs at least 2, or leave sentiment out of "
                                "data.tasks")
        train_rows, test_rows = bank_split(rows, list(range(len(rows))), cfg.federation.partition, bank)
        train = encode_sentiment(tokenizer, train_rows, cfg.data.max_length)
    if "aml" in cfg.data.tasks and bf.aml is not None:
        from .tasks.aml_scenario import build

        ds = pseudonymise(bf.aml, scrub) if scrub is not None else bf.aml
        cases = build(ds, cfg.data.aml, cfg.data.seed + bank, None)
        rng = random.Random(cfg.data.seed * 1000 + bank)
        by_typ: dict[str, list] = {}
        for c in sorted(cases, key=lambda c: c.id):
            by_typ.setdefault(c.typology, []).append(c)
        cases_train = []
        for _, group in sorted(by_typ.items()):
            rng.shuffle(group)
            k = int(round(cfg.data.aml.test_share * len(group))) if len(group) > 1 else 0
            aml_test.extend(group[:k])
            cases_train.extend(group[k:])
        from .tasks.aml import encode_aml
        from .tasks.aml_scenario import mix_to_share

        # banks, countries and currencies are the case's evidence (cross-bank and cross-border hops, amounts),
        # nobody's identity: the name lists read "EUR 635" or "offshore_li" as a person otherwise
        keep = ({a.bank for a in ds.accounts.values()} | {a.country for a in ds.accounts.values()}
                | {t.currency for t in ds.transactions})
        aml = encode_aml(tokenizer, cases_train, cfg.data.max_length, cfg.data.aml.max_lines,
                         scrub=(lambda text: scrub.scrub(text, keep)) if scrub is not None else None)
        if train:
            aml = mix_to_share(aml, len(train), cfg.data.aml.mix, cfg.data.seed + bank,
                               repeat=cfg.privacy.mode != "local")
        train = train + aml
    if not train:
        raise BankDataError(f"{folder}: nothing to train for data.tasks={cfg.data.tasks} (sentiment rows: "
                            f"{len(bf.sentiment)}, transactions: {'yes' if bf.aml is not None else 'none'})")
    report = scrub.report.as_dict() if scrub is not None else None
    log.info("bank %d: %d training examples from its folder (%d sentiment rows, %d bad rows skipped), %d local "
             "test rows, %d local AML test cases; scrub: %s", bank, len(train), len(bf.sentiment), bf.bad_rows,
             len(test_rows), len(aml_test), report or "off")
    return train, test_rows, aml_test, report


def load_extra(path: str) -> list[SentimentExample]:
    from .tasks.sentiment_data import load_instruction_jsonl

    return load_instruction_jsonl(path, source="bank")
