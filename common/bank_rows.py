"""A bank's training set from its data folder (the data contract, common/bank_folder.py): its sentiment rows split
into local train and test, its own extra rows, its AML cases, PII scrubbed before tokenisation, and the one way the
two tasks are mixed into one adapter's training set.

Every bank reads a folder: a deployed bank its own, a simulated bank the one the simulation wrote for it
(simulations/bank_folders.py). Partitioning public data sets is the simulation's, never a bank's: a simulated bank
only finds its folder, under $FEDFINGPT_SIMULATED_BANKS (a `fedfingpt simulate` run folder's bank-data/) or the
user's cache, where the folder's manifest says it holds this scenario's cut.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
from pathlib import Path

from .config import Config, PartitionConfig
from .prompt import Encoded
from .tasks.sentiment import encode_sentiment
from .tasks.sentiment_data import SentimentExample

log = logging.getLogger("fedfingpt.data")


def local_split(rows: list[SentimentExample], cfg: PartitionConfig, bank: int):
    """A bank's rows split into local train and local test (seeded per bank: the same rows give the same split)."""
    rows = list(rows)
    random.Random(cfg.seed * 1000 + bank).shuffle(rows)
    n_test = max(1, int(round(len(rows) * cfg.local_test_share)))
    return rows[n_test:], rows[:n_test]


def sentiment_rows(cfg: Config, bank: int, rows: list[SentimentExample], extra: str | None = None, scrub=None,
                   scrub_rows: bool = True, where: str = "the bank folder"):
    """The bank's local train and test rows from its folder's rows, plus its own extra training rows (node config
    extra-train, or data.bank_extra_train), which only ever train. `scrub` (a Scrubber) runs over the folder's rows
    when `scrub_rows` and over the extra rows always."""
    from .bank_folder import BankDataError

    if scrub is not None and scrub_rows:
        rows = _scrubbed(rows, scrub)
    if len(rows) < 2:
        raise BankDataError(f"{where}: {len(rows)} usable sentiment row(s) (after bad rows and the scrub's drops); a "
                            "bank training sentiment needs at least 2, or leave sentiment out of data.tasks")
    train, test = local_split(rows, cfg.federation.partition, bank)
    extra = extra or cfg.data.bank_extra_train.get(bank)
    if extra:
        own = load_extra(extra)
        if scrub is not None:
            own = _scrubbed(own, scrub)
        log.info("bank %d: %d extra training rows from %s", bank, len(own), extra)
        train = train + own
    return train, test


def bank_scrubber(cfg: Config, bank: int):
    """The scrub a bank's rows go through before tokenisation (data.scrub), with a fresh count; None when off."""
    if not cfg.data.scrub.enabled:
        log.warning("bank %d: data.scrub is off: the bank's own rows are trained on as they are", bank)
        return None
    from .pii.scrub import ScrubReport, scrubber

    scrub = scrubber(cfg.gate, cfg.data.scrub)
    scrub.report = ScrubReport()
    return scrub


SIMULATED_ENV = "FEDFINGPT_SIMULATED_BANKS"  # a folder holding bank-<id>/ and banks.json for this run's banks
MANIFEST = "banks.json"


def cut_key(cfg: Config, num_banks: int) -> str:
    """What decides a simulated bank's rows, as a short digest: the data folder, the partitioning, the bank count."""
    from .tasks.sentiment_data import data_dir_from_env

    partition = cfg.federation.partition.model_dump(mode="json")
    if partition.get("sources") is None:  # all sources: the digest cuts made before the setting existed have
        partition.pop("sources", None)
    what = json.dumps({"data_dir": str(data_dir_from_env(cfg.data.data_dir).resolve()),
                       "partition": partition, "num_banks": num_banks},
                      sort_keys=True)
    return hashlib.sha256(what.encode()).hexdigest()[:16]


def simulated_cache() -> Path:
    """Where simulated banks' folders are written when no run folder holds them (one folder per cut)."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "fedfingpt" / "simulated-banks"


def simulated_root(cfg: Config, num_banks: int) -> Path | None:
    """The folder holding this scenario's simulated banks (bank-<id>/), or None when none is written yet."""
    key = cut_key(cfg, num_banks)
    for root in [Path(r) for r in [os.environ.get(SIMULATED_ENV)] if r] + [simulated_cache() / key]:
        try:
            if json.loads((root / MANIFEST).read_text()).get("key") == key:
                return root
        except (OSError, ValueError):
            continue
    return None


def simulated_rows(cfg: Config, bank: int, num_banks: int, extra: str | None = None):
    """(local train rows, local test rows) of simulated bank `bank`, read from its folder as any bank reads its
    own. Its rows are public data sets, not customers': the scrub runs over the bank's extra rows only."""
    from .bank_folder import BankDataError, read_bank_folder

    if not 0 <= bank < num_banks:
        raise BankDataError(f"bank id {bank} is not one of the {num_banks} simulated banks (0..{num_banks - 1})")
    root = simulated_root(cfg, num_banks)
    if root is None:
        raise BankDataError(
            f"simulated bank {bank} of {num_banks}: no folder written for this scenario's partitioning (looked in "
            f"${SIMULATED_ENV} and {simulated_cache()}); the simulation writes them: run it with `fedfingpt "
            "simulate`, or under `flwr run` / a SuperNode with num-partitions use the app's client "
            "(fedfingpt.app:clientapp), or write them with `fedfingpt data simulate-banks`")
    rows = read_bank_folder(root / f"bank-{bank}").sentiment
    scrub = bank_scrubber(cfg, bank) if (extra or cfg.data.bank_extra_train.get(bank)) else None
    return sentiment_rows(cfg, bank, rows, extra, scrub, scrub_rows=False, where=f"simulated bank {bank}")


def simulated_training_set(cfg: Config, tokenizer, bank: int, num_banks: int,
                           extra: str | None = None) -> tuple[list[Encoded], list[SentimentExample], list, list]:
    """A simulated bank's training examples for the scenario's tasks (data.tasks): its folder's sentiment rows and
    its share of the scenario's generated AML cases (with both tasks, repeated or sampled to make up data.aml.mix of
    the set); and its local test rows, AML test cases and AML validation cases (data.aml.val_share)."""
    train: list[Encoded] = []
    test_rows: list[SentimentExample] = []
    aml_test: list = []
    aml_val: list = []
    if "sentiment" in cfg.data.tasks:
        train_rows, test_rows = simulated_rows(cfg, bank, num_banks, extra)
        train = encode_sentiment(tokenizer, train_rows, cfg.data.max_length)
    if "aml" in cfg.data.tasks:
        from .tasks.aml_scenario import aml_split

        split = aml_split(cfg.data, num_banks)
        cases = split.train[bank]
        aml = aml_examples(cfg, tokenizer, cases, len(train), cfg.data.seed + bank)
        aml_test, aml_val = split.bank_test(bank), split.val[bank]
        log.info("bank %d (%s): %d AML cases (%d laundering; typologies %s) as %d training examples", bank,
                 split.banks[bank], len(cases), sum(c.suspicious for c in cases),
                 ", ".join(sorted(split.typologies(bank))) or "none", len(aml))
        train = train + aml
    log.info("simulated bank %d of %d: %d training examples (%s), %d local sentiment test rows, %d local AML test "
             "cases, %d AML validation cases", bank, num_banks, len(train), "+".join(cfg.data.tasks), len(test_rows),
             len(aml_test), len(aml_val))
    return train, test_rows, aml_test, aml_val


def aml_examples(cfg: Config, tokenizer, cases: list, others: int, seed: int) -> list[Encoded]:
    """AML cases as training examples; beside `others` sentiment examples, repeated or sampled to make up
    data.aml.mix of the set (only sampled under local DP, which accounts per example)."""
    from .tasks.aml import encode_aml
    from .tasks.aml_scenario import mix_to_share

    aml = encode_aml(tokenizer, cases, cfg.data.max_length, cfg.data.aml.max_lines,
                     decision_weight=cfg.data.aml.decision_weight)
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
    """A bank's training set from its data folder (the data contract, common/bank_folder.py), read whole: bad rows
    refuse the folder unless accepted, PII is scrubbed before tokenisation (data.scrub), rows are split into local
    train and test (seeded per bank). Returns (training examples, local sentiment test rows, local AML test cases,
    what the scrub did)."""
    from .bank_folder import BankDataError, pseudonymise, read_bank_folder, require_usable

    bf = read_bank_folder(folder, label_map)
    require_usable(bf, accept_skips)
    scrub = bank_scrubber(cfg, bank)
    train: list[Encoded] = []
    test_rows: list[SentimentExample] = []
    aml_test: list = []
    aml_val: list = []
    if "sentiment" in cfg.data.tasks:
        train_rows, test_rows = sentiment_rows(cfg, bank, bf.sentiment, extra, scrub, where=str(folder))
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
            v = int(round(cfg.data.aml.val_share * len(group))) if len(group) - k > 1 else 0
            aml_test.extend(group[:k])
            aml_val.extend(group[k:k + v])
            cases_train.extend(group[k + v:])
        from .tasks.aml import encode_aml
        from .tasks.aml_scenario import mix_to_share

        # banks, countries and currencies are the case's evidence (cross-bank and cross-border hops, amounts),
        # nobody's identity: the name lists read "EUR 635" or "offshore_li" as a person otherwise
        keep = ({a.bank for a in ds.accounts.values()} | {a.country for a in ds.accounts.values()}
                | {t.currency for t in ds.transactions})
        aml = encode_aml(tokenizer, cases_train, cfg.data.max_length, cfg.data.aml.max_lines,
                         scrub=(lambda text: scrub.scrub(text, keep)) if scrub is not None else None,
                         decision_weight=cfg.data.aml.decision_weight)
        if train:
            aml = mix_to_share(aml, len(train), cfg.data.aml.mix, cfg.data.seed + bank,
                               repeat=cfg.privacy.mode != "local")
        train = train + aml
    if not train:
        raise BankDataError(f"{folder}: nothing to train for data.tasks={cfg.data.tasks} (sentiment rows: "
                            f"{len(bf.sentiment)}, transactions: {'yes' if bf.aml is not None else 'none'})")
    report = scrub.report.as_dict() if scrub is not None else None
    log.info("bank %d: %d training examples from its folder (%d sentiment rows, %d bad rows skipped), %d local "
             "test rows, %d local AML test cases, %d AML validation cases; scrub: %s", bank, len(train),
             len(bf.sentiment), bf.bad_rows, len(test_rows), len(aml_test), len(aml_val), report or "off")
    return train, test_rows, aml_test, aml_val, report


def load_extra(path: str) -> list[SentimentExample]:
    from .tasks.sentiment_data import load_instruction_jsonl

    return load_instruction_jsonl(path, source="bank")
