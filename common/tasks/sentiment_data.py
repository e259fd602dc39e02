"""Loaders and FinGPT-style splits for the financial sentiment sets (FPB, FiQA, TFNS, NWGI).
Every loader returns 3-class SentimentExample rows and fails with a message naming file, line and fix.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Union

log = logging.getLogger(__name__)
PathLike = Union[Path, str]

LABELS = ("negative", "neutral", "positive")
ENV_VAR = "FEDFINGPT_DATA_DIR"
CONFIG_KEY = "data.data_dir"

# Layout of /work/shared/data (see its SOURCES.md); paths are relative to the data dir.
FPB_50AGREE = "financial_phrasebank/Sentences_50Agree.txt"
FPB_TEST = "finlora_eval/fpb_test.jsonl"
FIQA_TEST = "finlora_eval/fiqa_test.jsonl"
FIQA_RAW_TRAIN = ("fiqa_2018/raw/task1_headline_ABSA_train.json", "fiqa_2018/raw/task1_post_ABSA_train.json")
TFNS_TRAIN = "twitter_financial_news/sent_train.csv"
TFNS_TEST = "twitter_financial_news/sent_valid.csv"
NWGI_TEST = "nwgi/nwgi_test.jsonl"

TFNS_LABELS = {"0": "negative", "1": "positive", "2": "neutral"}  # 0 bearish, 1 bullish, 2 neutral
PAURI32_LABELS = {"0": "positive", "1": "neutral", "2": "negative"}
NWGI_TO_3 = {
    "strong negative": "negative", "moderately negative": "negative",
    "mildly negative": "neutral", "neutral": "neutral", "mildly positive": "neutral",
    "moderately positive": "positive", "strong positive": "positive",
}


@dataclass(frozen=True)
class SentimentExample:
    text: str
    label: str   # one of LABELS
    source: str  # "fpb" | "fiqa" | "tfns" | "nwgi" | "jsonl"
    # "news" or "tweet": picks FinGPT's instruction (news: FPB, NWGI, FiQA headlines; tweet: TFNS, FiQA posts)
    kind: str


class DataFormatError(ValueError):
    """A data file is missing, empty or malformed; the message names file, line and what to do."""


class MissingDataError(DataFormatError, FileNotFoundError):
    """A data file or the data directory is absent (also a FileNotFoundError, so both kinds of handler work)."""


def _err(path, line: int | None, problem: str, fix: str) -> DataFormatError:
    where = f"{path}" if line is None else f"{path}, line {line}"
    return DataFormatError(f"{where}: {problem}. {fix}")


def _missing(path) -> MissingDataError:
    return MissingDataError(
        f"{path}: file not found. Set the env var {ENV_VAR} (e.g. to ../shared/data) or the config key "
        f"{CONFIG_KEY} to the folder holding the data, or load the set from the hub with load_from_hub().")


def _read_text(path, encoding: str) -> str:
    path = Path(path)
    if not path.is_file():
        raise _missing(path)
    raw = path.read_bytes()
    try:
        text = raw.decode(encoding)
    except UnicodeDecodeError as e:  # only UTF-8 can fail: latin-1 decodes any byte
        line = raw[: e.start].count(b"\n") + 1
        raise _err(path, line, f"not valid UTF-8 (byte {raw[e.start]:#04x} at offset {e.start})",
                   "Re-save the file as UTF-8 (e.g. `iconv -f latin1 -t utf-8`)") from None
    if not text.strip():
        raise _err(path, None, "file is empty", "Re-copy it from the source listed in SOURCES.md")
    return text


def _label(value: str, path, line: int) -> str:
    label = value.strip().lower()
    if label not in LABELS:
        raise _err(path, line, f"unknown label {value!r}", f"Use one of {'/'.join(LABELS)} or remove the row")
    return label


def _csv_rows(path, required: tuple[str, ...]) -> Iterator[tuple[int, dict[str, str]]]:
    # utf-8-sig: a BOM written by spreadsheet tools would otherwise corrupt the first column name.
    reader = csv.reader(io.StringIO(_read_text(path, "utf-8-sig"), newline=""))
    header = [h.strip() for h in next(reader)]
    missing = [c for c in required if c not in header]
    if missing:
        raise _err(path, 1, f"header {header} lacks column(s) {missing}",
                   f"The header must contain {','.join(required)}")
    for row in reader:
        if not any(cell.strip() for cell in row):
            continue
        if len(row) != len(header):
            raise _err(path, reader.line_num, f"expected {len(header)} columns, got {len(row)}",
                       "Fix or remove the row (quote texts that contain commas)")
        yield reader.line_num, dict(zip(header, row))


def _nonempty(text: str, path, line: int) -> str:
    if not text.strip():
        raise _err(path, line, "empty text", "Fix or remove the row")
    return text


# ---------------------------------------------------------------- loaders

def load_fpb(path: PathLike) -> list[SentimentExample]:
    """Financial PhraseBank `sentence@label` lines (any of the four agreement files).

    The release is ISO-8859-1, so the file is decoded as latin-1. Latin-1 maps every byte to a character,
    so decoding never fails: a file re-encoded to UTF-8 still loads, but its non-ASCII characters come out
    as two-character mojibake and no longer match FinGPT's texts (convert it back with `iconv -t latin1`).
    """
    out = []
    for n, line in enumerate(_read_text(path, "latin-1").split("\n"), 1):
        line = line.rstrip("\r")
        if not line.strip():
            continue
        # Sentences may contain '@' themselves; the label is always after the last one.
        text, sep, label = line.rpartition("@")
        if not sep:
            raise _err(path, n, "no '@' separating sentence and label", "Each line must be `sentence@label`")
        out.append(SentimentExample(_nonempty(text, path, n), _label(label, path, n), "fpb", "news"))
    return out


def load_tfns(path: PathLike) -> list[SentimentExample]:
    """Twitter Financial News Sentiment CSV `text,label` (UTF-8); 0 bearish, 1 bullish, 2 neutral."""
    out = []
    for n, row in _csv_rows(path, ("text", "label")):
        label = TFNS_LABELS.get(row["label"].strip())
        if label is None:
            raise _err(path, n, f"unknown label {row['label']!r}",
                       "TFNS labels are 0 (bearish), 1 (bullish), 2 (neutral)")
        out.append(SentimentExample(_nonempty(row["text"], path, n), label, "tfns", "tweet"))
    return out


def fiqa_score_to_label(score: float) -> str:
    """FinGPT's FiQA thresholds: < -0.1 negative, [-0.1, 0.1) neutral, >= 0.1 positive."""
    return "negative" if score < -0.1 else "neutral" if score < 0.1 else "positive"


def _item_err(path, text: str, key: str, problem: str, fix: str) -> DataFormatError:
    # The line is looked up only when failing: scanning the text for every item doubles the load time.
    i = text.find(f"{json.dumps(key)}:")
    return _err(path, None if i < 0 else text.count("\n", 0, i) + 1, f"item {key!r} {problem}", fix)


def load_fiqa_raw(paths: PathLike | Iterable[PathLike], kind: str | None = None) -> list[SentimentExample]:
    """Official FiQA-2018 task 1 JSON files; one example per (sentence, info item).

    `kind` defaults from the file name: "headline" -> news, "post" -> tweet.
    """
    out = []
    for path in [paths] if isinstance(paths, (str, Path)) else paths:
        path = Path(path)
        k = kind or ("news" if "headline" in path.name else "tweet" if "post" in path.name else None)
        if k not in ("news", "tweet"):
            raise _err(path, None, "cannot tell headlines from posts by the file name",
                       "Pass kind='news' or kind='tweet'")
        text = _read_text(path, "utf-8-sig")
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise _err(path, e.lineno, f"invalid JSON ({e.msg})", "Re-copy the file from the FiQA release") from None
        if not isinstance(data, dict):
            raise _err(path, 1, "top level is not an object keyed by id", "Use the official task1_*_ABSA_*.json files")
        for key, item in data.items():
            info = item.get("info") if isinstance(item, dict) else None
            if not isinstance(info, list) or not isinstance(item.get("sentence"), str) or not item["sentence"].strip():
                raise _item_err(path, text, key, "lacks a 'sentence' or an 'info' list", "Fix or remove the item")
            for it in info:
                if not isinstance(it, dict) or "sentiment_score" not in it:
                    raise _item_err(path, text, key, "has no gold sentiment_score (the challenge test files have none)",
                                    "Use task1_headline_ABSA_train.json / task1_post_ABSA_train.json")
                try:
                    score = float(it["sentiment_score"])
                except (TypeError, ValueError):
                    raise _item_err(path, text, key, f"has a non-numeric score {it['sentiment_score']!r}",
                                    "Fix the score (a number in [-1, 1])") from None
                out.append(SentimentExample(item["sentence"], fiqa_score_to_label(score), "fiqa", k))
    return out


def load_fiqa_pauri32(path: PathLike) -> list[SentimentExample]:
    """pauri32/fiqa-2018 CSV splits; label 0 positive, 1 neutral, 2 negative; `format` gives the kind."""
    out = []
    for n, row in _csv_rows(path, ("sentence", "format", "label")):
        label = PAURI32_LABELS.get(row["label"].strip())
        if label is None:
            raise _err(path, n, f"unknown label {row['label']!r}",
                       "pauri32 labels are 0 (positive), 1 (neutral), 2 (negative)")
        fmt = row["format"].strip()
        if fmt not in ("post", "headline"):
            raise _err(path, n, f"unknown format {fmt!r}", "format must be 'post' or 'headline'")
        kind = "tweet" if fmt == "post" else "news"
        out.append(SentimentExample(_nonempty(row["sentence"], path, n), label, "fiqa", kind))
    return out


def _jsonl_rows(path) -> Iterator[tuple[int, str, str, str]]:
    """Yield (line, instruction, input text, target) from FinGPT/FinLoRA instruction JSONL."""
    for n, line in enumerate(_read_text(path, "utf-8-sig").split("\n"), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise _err(path, n, f"invalid JSON ({e.msg})", "Fix or remove the line") from None
        if isinstance(row, dict) and isinstance(row.get("context"), str) and "Input: " in row["context"]:
            instruction, _, text = row["context"].partition("Input: ")
            # The input can itself contain newlines; the answer slot is the last "\nAnswer:".
            cut = text.rfind("\nAnswer:")
            text, target = text[:cut] if cut >= 0 else text, row.get("target")
        elif isinstance(row, dict) and all(isinstance(row.get(k), str) for k in ("instruction", "input")):
            instruction, text, target = row["instruction"], row["input"], row.get("output")
        else:
            raise _err(path, n, "expected {context: '...Input: <text>\\nAnswer: ', target} or "
                       "{instruction, input, output}", "Fix or remove the line")
        if not isinstance(target, str):
            raise _err(path, n, "missing or non-string target/output", "Add the gold label")
        yield n, instruction, _nonempty(text, path, n), target


def load_instruction_jsonl(path: PathLike, source: str = "jsonl") -> list[SentimentExample]:
    """FinGPT/FinLoRA instruction JSONL with 3-class targets (e.g. finlora_eval/fpb_test.jsonl, fiqa_test.jsonl)."""
    return [SentimentExample(text, _label(target, path, n), source, "tweet" if "tweet" in instr.lower() else "news")
            for n, instr, text, target in _jsonl_rows(path)]


def nwgi_to_label3(label7: str) -> str | None:
    """Map an NWGI 7-class label (any case, '-', '_' or spaces) to 3 classes; None if unknown."""
    return NWGI_TO_3.get(" ".join(re.split(r"[\s_\-]+", label7.strip().lower())))


def load_nwgi(path: PathLike) -> list[SentimentExample]:
    """NWGI test set as FinLoRA `.jsonl` (context/target) or derived `.csv` (text,label,...); 7 -> 3 classes."""
    path = Path(path)
    if path.suffix == ".csv":
        rows: Iterable[tuple[int, str, str]] = (
            (n, r["text"], r["label"]) for n, r in _csv_rows(path, ("text", "label")))
    else:
        rows = ((n, text, target) for n, _, text, target in _jsonl_rows(path))
    out = []
    for n, text, label7 in rows:
        label = nwgi_to_label3(label7)
        if label is None:
            raise _err(path, n, f"unknown NWGI label {label7!r}", f"Use one of {'/'.join(NWGI_TO_3)}")
        out.append(SentimentExample(_nonempty(text, path, n), label, "nwgi", "news"))
    return out


# ---------------------------------------------------------------- splits

def split_fpb(examples: list[SentimentExample], test_size: float = 0.25, seed: int = 42):
    """(train, test) exactly as HF `Dataset.train_test_split(test_size, seed)`, FinGPT's FPB split.

    HF: n_test = ceil(test_size * n), perm = default_rng(seed).permutation(n), test = perm[:n_test].
    On Sentences_50Agree this reproduces finlora_eval/fpb_test.jsonl row for row.
    """
    import numpy as np  # lazy: loaders stay usable and cheap to import without numpy

    n_test = math.ceil(test_size * len(examples))
    perm = np.random.default_rng(seed).permutation(len(examples))
    return [examples[i] for i in perm[n_test:]], [examples[i] for i in perm[:n_test]]


def _text_key(text: str) -> str:
    # Copies of the same sentence differ in case, quote style and spacing (FiQA's Royal Mail headline has
    # "..." in the raw file and '...' in fiqa_test.jsonl), so leakage checks compare a normalised key.
    return " ".join(re.sub(r"[\"'`\u2018\u2019\u201c\u201d]", "'", text).casefold().split())


def _without(rows: list[SentimentExample], test: list[SentimentExample], name: str) -> list[SentimentExample]:
    keys = {_text_key(e.text) for e in test}
    kept = [e for e in rows if _text_key(e.text) not in keys]
    log.info("%s train: dropped %d of %d rows whose text is in the test set", name, len(rows) - len(kept), len(rows))
    return kept


def data_dir_from_env(explicit: PathLike | None = None) -> Path:
    """The data folder: `explicit`, else $FEDFINGPT_DATA_DIR; raises MissingDataError if unset or absent."""
    value, origin = (explicit, "the explicit data_dir") if explicit else (os.environ.get(ENV_VAR), f"${ENV_VAR}")
    if not value:
        raise MissingDataError(f"no data directory given. Set {ENV_VAR} (e.g. to ../shared/data), the config key "
                               f"{CONFIG_KEY}, or use hub ids with load_from_hub()")
    path = Path(value).expanduser()
    if not path.is_dir():
        raise MissingDataError(f"{path} (from {origin}): directory not found. Point {ENV_VAR} or {CONFIG_KEY} "
                               "at the folder holding financial_phrasebank/, finlora_eval/, ... (e.g. ../shared/data)")
    return path


def fingpt_sentiment_splits(data_dir: PathLike | None = None) -> dict[str, dict[str, list[SentimentExample]]]:
    """FinGPT's train/test sets from the local copies; train rows never share a text with any test row.

    FPB test is the published split (finlora_eval/fpb_test.jsonl) and FPB train is the rest of
    Sentences_50Agree; FiQA test is finlora_eval/fiqa_test.jsonl, FiQA train the raw train JSON minus those
    texts; TFNS train/valid; NWGI test only (its train split is not available).
    TFNS is kept as published so counts match FinGPT: 10 train tweets equal valid tweets up to apostrophe
    style or a no-break space (all but one with the same label).
    """
    d = data_dir_from_env(data_dir)
    test = {
        "fpb": load_instruction_jsonl(d / FPB_TEST, "fpb"),
        "fiqa": load_instruction_jsonl(d / FIQA_TEST, "fiqa"),
        "tfns": load_tfns(d / TFNS_TEST),
        "nwgi": load_nwgi(d / NWGI_TEST),
    }
    train = {
        "fpb": _without(load_fpb(d / FPB_50AGREE), test["fpb"], "fpb"),
        "fiqa": _without(load_fiqa_raw([d / p for p in FIQA_RAW_TRAIN]), test["fiqa"], "fiqa"),
        "tfns": load_tfns(d / TFNS_TRAIN),
    }
    return {"train": train, "test": test}


def training_mix(train: dict[str, list[SentimentExample]], weights: dict[str, int] | None = None,
                 seed: int = 42) -> list[SentimentExample]:
    """FinGPT's repetition mix: each source repeated `weight` times, then shuffled with `seed`.

    FinGPT's 76.8K rows are FPB x6 + FiQA x21 + TFNS x2 + NWGI train x1; NWGI train is not available,
    so the default weights give the closest mix. Sources in `train` but not in `weights` are left out.
    """
    import numpy as np

    weights = {"fpb": 6, "fiqa": 21, "tfns": 2} if weights is None else weights
    missing = [s for s in weights if s not in train]
    if missing:
        raise ValueError(f"training_mix: no train rows for {missing}; pass weights only for sources in {sorted(train)}")
    rows = [e for s, w in weights.items() for e in train[s] * int(w)]
    return [rows[i] for i in np.random.default_rng(seed).permutation(len(rows))]


# ---------------------------------------------------------------- hub (needs `datasets` and network)

# id -> (config, text column, label mapper(row) -> label, source, kind mapper(row) -> kind)
_HUB: dict[str, tuple[str | None, str, Callable[[dict], str | None], str, Callable[[dict], str]]] = {
    "takala/financial_phrasebank": ("sentences_50agree", "sentence",
                                    lambda r: LABELS[r["label"]], "fpb", lambda r: "news"),
    "zeroshot/twitter-financial-news-sentiment": (None, "text",
                                                  lambda r: TFNS_LABELS[str(r["label"])], "tfns", lambda r: "tweet"),
    "pauri32/fiqa-2018": (None, "sentence", lambda r: PAURI32_LABELS[str(r["label"])], "fiqa",
                          lambda r: "tweet" if r["format"] == "post" else "news"),
    "oliverwang15/news_with_gpt_instructions": (None, "news", lambda r: nwgi_to_label3(str(r["label"])), "nwgi",
                                                lambda r: "news"),
}


def load_from_hub(dataset_id: str, split: str = "train", source: str | None = None,
                  kind: str | None = None) -> list[SentimentExample]:
    """Load one of the known hub sets (see `_HUB`) into SentimentExample rows; `source`/`kind` override."""
    if dataset_id not in _HUB:
        raise ValueError(f"unknown hub dataset {dataset_id!r}; known: {', '.join(_HUB)}")
    try:
        from datasets import load_dataset
    except ImportError:
        raise ImportError("load_from_hub needs the `datasets` package (pip install datasets); "
                          f"without it, use local files via {ENV_VAR} or {CONFIG_KEY}") from None
    config, text_col, to_label, src, to_kind = _HUB[dataset_id]
    try:
        ds = load_dataset(dataset_id, config, split=split)
    except Exception as e:  # offline, gated, renamed: all end the same way for the user
        raise RuntimeError(f"could not load {dataset_id!r} split {split!r} from the hub ({e}). If offline, set "
                           f"{ENV_VAR} or {CONFIG_KEY} to local copies") from e
    out = []
    for n, row in enumerate(ds, 1):
        label = to_label(row)
        if label is None:
            raise _err(dataset_id, n, f"unknown label {row.get('label')!r}", "Check the dataset version")
        out.append(SentimentExample(row[text_col], label, source or src, kind or to_kind(row)))
    return out


def hub_sentiment_splits() -> dict[str, dict[str, list[SentimentExample]]]:
    """The same train/test structure from the public hub sets (for users with a hub and no local copies).
    FiQA uses pauri32's train/test split (150 test rows) instead of FinLoRA's 235-row test file."""
    fpb_train, fpb_test = split_fpb(load_from_hub("takala/financial_phrasebank", "train"))
    tfns = "zeroshot/twitter-financial-news-sentiment"
    return {
        "train": {"fpb": fpb_train, "fiqa": load_from_hub("pauri32/fiqa-2018", "train"),
                  "tfns": load_from_hub(tfns, "train")},
        "test": {"fpb": fpb_test, "fiqa": load_from_hub("pauri32/fiqa-2018", "test"),
                 "tfns": load_from_hub(tfns, "validation"),
                 "nwgi": load_from_hub("oliverwang15/news_with_gpt_instructions", "test")},
    }


def sentiment_splits(data_dir: PathLike | None = None) -> dict[str, dict[str, list[SentimentExample]]]:
    """Local copies when a data folder is configured (argument or $FEDFINGPT_DATA_DIR), else the public hub."""
    if data_dir or os.environ.get(ENV_VAR):
        return fingpt_sentiment_splits(data_dir)
    log.info("no data folder configured: fetching the public data sets from the hub")
    try:
        return hub_sentiment_splits()
    except (RuntimeError, ImportError) as err:
        raise MissingDataError(f"no data folder and no hub ({str(err).splitlines()[0][:200]}). Set {ENV_VAR} "
                               f"(e.g. to ../shared/data) or {CONFIG_KEY}") from None
