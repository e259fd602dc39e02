"""Tests for fedfingpt.common.tasks.sentiment_data on slices of the real files in $FEDFINGPT_DATA_DIR."""

import collections
import csv
import json
import os
import sys
from pathlib import Path

import pytest

from fedfingpt.common.tasks.sentiment_data import (
    LABELS, DataFormatError, MissingDataError, SentimentExample, data_dir_from_env, fingpt_sentiment_splits,
    load_fiqa_pauri32, load_fiqa_raw, load_fpb, load_from_hub, load_instruction_jsonl, load_nwgi, load_tfns,
    split_fpb, training_mix,
)

DATA = Path(os.environ.get("FEDFINGPT_DATA_DIR") or Path(__file__).resolve().parents[1] / ".." / "shared" / "data")
pytestmark = pytest.mark.skipif(not DATA.is_dir(), reason=f"real data folder {DATA} is absent; set FEDFINGPT_DATA_DIR")

FPB50 = DATA / "financial_phrasebank" / "Sentences_50Agree.txt"
TFNS_TRAIN = DATA / "twitter_financial_news" / "sent_train.csv"
FIQA_RAW = DATA / "fiqa_2018" / "raw"
NWGI_JSONL = DATA / "nwgi" / "nwgi_test.jsonl"
FPB_TEST = DATA / "finlora_eval" / "fpb_test.jsonl"
FIQA_TEST = DATA / "finlora_eval" / "fiqa_test.jsonl"


def head_bytes(path: Path, n: int) -> bytes:
    return b"".join(path.read_bytes().splitlines(keepends=True)[:n])


def jsonl_inputs(path: Path) -> list[str]:
    """Input texts read independently of the module (split on the FinGPT prompt markers)."""
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [r["context"].split("\nInput: ", 1)[1].rsplit("\nAnswer: ", 1)[0] for r in rows]


@pytest.fixture(scope="module")
def splits():
    return fingpt_sentiment_splits(DATA)


# ---------------------------------------------------------------- loaders on real slices

def test_fpb_slice_labels_match_file(tmp_path):
    raw = head_bytes(FPB50, 50)
    (tmp_path / "fpb.txt").write_bytes(raw)
    rows = load_fpb(tmp_path / "fpb.txt")
    assert len(rows) == 50
    for ex, line in zip(rows, raw.splitlines()):
        sentence, _, label = line.decode("latin-1").rpartition("@")
        assert (ex.text, ex.label, ex.source, ex.kind) == (sentence, label, "fpb", "news")


@pytest.mark.parametrize("name,counts", [
    ("Sentences_50Agree.txt", (604, 2879, 1363)), ("Sentences_66Agree.txt", (514, 2535, 1168)),
    ("Sentences_75Agree.txt", (420, 2146, 887)), ("Sentences_AllAgree.txt", (303, 1391, 570)),
])
def test_fpb_all_agreement_files(name, counts):
    c = collections.Counter(e.label for e in load_fpb(DATA / "financial_phrasebank" / name))
    assert tuple(c[label] for label in LABELS) == counts


def test_fpb_latin1_characters_decoded(tmp_path):
    line = next(l for l in FPB50.read_bytes().splitlines() if any(b > 127 for b in l))
    (tmp_path / "one.txt").write_bytes(line + b"\n")
    [ex] = load_fpb(tmp_path / "one.txt")
    assert ex.text == line.decode("latin-1").rpartition("@")[0]
    assert any(ord(ch) > 127 for ch in ex.text)
    # FinGPT's published test split was decoded the same way, so non-ASCII sentences must match it verbatim.
    fpb_test = set(jsonl_inputs(FPB_TEST))
    non_ascii = [e.text for e in load_fpb(FPB50) if any(ord(ch) > 127 for ch in e.text)]
    assert non_ascii and any(t in fpb_test for t in non_ascii)


def test_fpb_splits_on_last_at(tmp_path):
    (tmp_path / "f.txt").write_text("Mail ir@corp.fi for details@neutral\n", encoding="latin-1")
    assert load_fpb(tmp_path / "f.txt")[0].text == "Mail ir@corp.fi for details"


def test_tfns_slice_label_map(tmp_path):
    raw = head_bytes(TFNS_TRAIN, 51)
    assert b"\r\n" in raw
    (tmp_path / "t.csv").write_bytes(raw)
    rows = load_tfns(tmp_path / "t.csv")
    assert len(rows) == 50 and all(e.kind == "tweet" and e.source == "tfns" for e in rows)
    independent = {"0": "negative", "1": "positive", "2": "neutral"}
    for ex, line in zip(rows, raw.decode("utf-8").splitlines()[1:]):
        if '"' not in line:
            text, _, label = line.rpartition(",")
            assert (ex.text, ex.label) == (text, independent[label])
    assert any(e.label == "negative" for e in rows)  # the file starts with bearish (0) rows


def test_tfns_full_counts():
    c = collections.Counter(e.label for e in load_tfns(TFNS_TRAIN))
    assert (c["negative"], c["positive"], c["neutral"]) == (1442, 1923, 6178)


def test_fiqa_raw_slice(tmp_path):
    data = json.loads((FIQA_RAW / "task1_headline_ABSA_train.json").read_text(encoding="utf-8"))
    part = dict(list(data.items())[:30])
    p = tmp_path / "task1_headline_ABSA_train.json"
    p.write_text(json.dumps(part, indent=2), encoding="utf-8")
    rows = load_fiqa_raw(p)
    expected = [(item["sentence"], float(info["sentiment_score"])) for item in part.values() for info in item["info"]]
    assert len(rows) == len(expected) > 30  # some headlines carry several targets
    for ex, (sentence, score) in zip(rows, expected):
        assert ex.text == sentence and ex.kind == "news" and ex.source == "fiqa"
        assert ex.label == ("negative" if score < -0.1 else "positive" if score >= 0.1 else "neutral")


def test_fiqa_raw_full_and_kinds():
    rows = load_fiqa_raw([FIQA_RAW / "task1_headline_ABSA_train.json", FIQA_RAW / "task1_post_ABSA_train.json"])
    assert collections.Counter(e.kind for e in rows) == {"news": 503, "tweet": 675}
    # SOURCES.md: > 0.1: 718, < -0.1: 365, in [-0.1, 0.1]: 95; two of those 95 score exactly 0.1 (positive under
    # FinGPT's >= 0.1) and one exactly -0.1 (neutral).
    assert collections.Counter(e.label for e in rows) == {"positive": 720, "negative": 365, "neutral": 93}


def _fiqa_json(path: Path, scores) -> Path:
    items = {str(i): {"sentence": f"s{i}", "info": [{"target": "X", "sentiment_score": str(s)}]}
             for i, s in enumerate(scores)}
    path.write_text(json.dumps(items, indent=2), encoding="utf-8")
    return path


def test_fiqa_score_boundaries(tmp_path):
    scores = [-0.1000001, -0.1, 0.0, 0.0999999, 0.1, 1.0]
    rows = load_fiqa_raw(_fiqa_json(tmp_path / "mine.json", scores), kind="tweet")
    assert [e.label for e in rows] == ["negative", "neutral", "neutral", "neutral", "positive", "positive"]
    assert {e.kind for e in rows} == {"tweet"}
    assert load_fiqa_raw(_fiqa_json(tmp_path / "task1_post_x.json", [0.5]))[0].kind == "tweet"
    with pytest.raises(DataFormatError, match="kind="):
        load_fiqa_raw(tmp_path / "mine.json")


def test_fiqa_test_files_have_no_gold():
    with pytest.raises(DataFormatError, match=r"task1_post_ABSA_test\.json, line 2: .*no gold sentiment_score"):
        load_fiqa_raw(FIQA_RAW / "task1_post_ABSA_test.json")


def test_fiqa_pauri32_splits():
    split = DATA / "fiqa_2018" / "pauri32_splits"
    train = load_fiqa_pauri32(split / "train.csv")
    assert collections.Counter(e.label for e in train) == {"positive": 632, "neutral": 34, "negative": 295}
    assert collections.Counter(e.kind for e in train) == {"tweet": 594, "news": 367}
    with open(split / "train.csv", newline="", encoding="utf-8") as f:
        first = next(csv.DictReader(f))
    assert (train[0].text, train[0].label) == (first["sentence"], {"0": "positive", "2": "negative"}[first["label"]])
    assert (len(load_fiqa_pauri32(split / "validation.csv")), len(load_fiqa_pauri32(split / "test.csv"))) == (102, 150)


def test_nwgi_jsonl_matches_curated_3class_column():
    rows = load_nwgi(NWGI_JSONL)
    with open(DATA / "nwgi" / "nwgi_test.csv", newline="", encoding="utf-8") as f:
        ref = list(csv.DictReader(f))
    assert len(rows) == len(ref) == 4047
    assert [(e.text, e.label) for e in rows] == [(r["text"], r["label3_fingpt"]) for r in ref]
    assert [e.label for e in load_nwgi(DATA / "nwgi" / "nwgi_test.csv")] == [r["label3_fingpt"] for r in ref]
    assert {e.kind for e in rows} == {"news"}


def test_nwgi_seven_to_three_lenient_spelling(tmp_path):
    labels = ["Strong-Negative", "moderately_negative", "MILDLY negative", "Neutral", "mildly-positive",
              "Moderately Positive", "strong_positive"]
    p = tmp_path / "n.csv"
    p.write_text("text,label\n" + "".join(f"t{i},{lab}\n" for i, lab in enumerate(labels)), encoding="utf-8")
    assert [e.label for e in load_nwgi(p)] == ["negative", "negative", "neutral", "neutral", "neutral",
                                               "positive", "positive"]
    p.write_text("text,label\na,neutral\nb,very negative\n", encoding="utf-8")
    with pytest.raises(DataFormatError, match=r"n\.csv, line 3: unknown NWGI label 'very negative'"):
        load_nwgi(p)


def test_instruction_jsonl_real_and_alpaca_format(tmp_path):
    fpb = load_instruction_jsonl(FPB_TEST, "fpb")
    assert collections.Counter(e.label for e in fpb) == {"neutral": 729, "positive": 338, "negative": 145}
    assert [e.text for e in fpb] == jsonl_inputs(FPB_TEST)
    fiqa = load_instruction_jsonl(FIQA_TEST)
    assert collections.Counter(e.kind for e in fiqa) == {"tweet": 128, "news": 107} and fiqa[0].source == "jsonl"
    p = tmp_path / "a.jsonl"
    rows = [{"instruction": "What is the sentiment of this tweet?", "input": "$X up", "output": "Positive"},
            {"instruction": "What is the sentiment of this news?", "input": "Y down", "output": "negative"}]
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert load_instruction_jsonl(p) == [SentimentExample("$X up", "positive", "jsonl", "tweet"),
                                         SentimentExample("Y down", "negative", "jsonl", "news")]


# ---------------------------------------------------------------- bad inputs

LOADERS = {"fpb.txt": load_fpb, "tfns.csv": load_tfns, "task1_post_x.json": load_fiqa_raw,
           "pauri.csv": load_fiqa_pauri32, "nwgi.jsonl": load_nwgi, "inst.jsonl": load_instruction_jsonl}


@pytest.mark.parametrize("name", LOADERS)
def test_missing_file_names_env_var(tmp_path, name):
    with pytest.raises(MissingDataError) as e:
        LOADERS[name](tmp_path / name)
    msg = str(e.value)
    assert name in msg and "FEDFINGPT_DATA_DIR" in msg and "data.data_dir" in msg
    assert isinstance(e.value, FileNotFoundError) and isinstance(e.value, DataFormatError)


@pytest.mark.parametrize("name", LOADERS)
def test_empty_file(tmp_path, name):
    (tmp_path / name).write_text("\n  \n")
    with pytest.raises(DataFormatError, match=f"{name}: file is empty"):
        LOADERS[name](tmp_path / name)


@pytest.mark.parametrize("name,content,pattern", [
    ("fpb.txt", "Good sentence .@positive\nno separator here\n", r"fpb\.txt, line 2: no '@'"),
    ("fpb.txt", "A .@neutral\n\nB .@bullish\n", r"fpb\.txt, line 3: unknown label 'bullish'"),
    ("tfns.csv", "text,label\r\n$A up,1\r\n$B,down,0\r\n", r"tfns\.csv, line 3: expected 2 columns, got 3"),
    ("tfns.csv", "text,label\r\n$A up,1\r\n$B down,3\r\n", r"tfns\.csv, line 3: unknown label '3'"),
    ("tfns.csv", "tweet,label\r\n$A up,1\r\n", r"tfns\.csv, line 1: header .* lacks column"),
    ("pauri.csv", "sentence,format,label\n$A,post,0\n$B,blog,1\n", r"pauri\.csv, line 3: unknown format 'blog'"),
    ("inst.jsonl", '{"context": "Input: a\\nAnswer: ", "target": "neutral"}\n{"context": "x"\n',
     r"inst\.jsonl, line 2: invalid JSON"),
    ("inst.jsonl", '{"context": "Input: a\\nAnswer: ", "target": "neutral"}\n\n'
                   '{"context": "Input: b\\nAnswer: ", "target": "bullish"}\n', r"inst\.jsonl, line 3: unknown label"),
    ("inst.jsonl", '{"text": "a", "label": "neutral"}\n', r"inst\.jsonl, line 1: expected \{context"),
    ("task1_post_x.json", '{\n  "1": {"sentence": "a", "info": [{"sentiment_score": "0.2"}]},\n'
                          '  "2": {"sentence": "b", "info": [{"sentiment_score": "high"}]}\n}',
     r"task1_post_x\.json, line 3: item '2' has a non-numeric score"),
])
def test_malformed_rows_name_file_and_line(tmp_path, name, content, pattern):
    (tmp_path / name).write_bytes(content.encode("utf-8"))
    with pytest.raises(DataFormatError, match=pattern):
        LOADERS[name](tmp_path / name)


def test_tfns_non_utf8_file(tmp_path):
    p = tmp_path / "latin.csv"
    p.write_bytes("text,label\r\n$A up,1\r\nCaf\u00e9 stocks fall,0\r\n".encode("latin-1"))
    with pytest.raises(DataFormatError, match=r"latin\.csv, line 3: not valid UTF-8"):
        load_tfns(p)


# ---------------------------------------------------------------- splits

def test_split_fpb_reproduces_published_split():
    rows = load_fpb(FPB50)
    train, test = split_fpb(rows)
    assert (len(train), len(test)) == (3634, 1212)
    assert collections.Counter(train) + collections.Counter(test) == collections.Counter(rows)  # a partition
    published = load_instruction_jsonl(FPB_TEST, "fpb")
    assert [e.text for e in test] == [e.text for e in published]  # HF train_test_split(seed=42), row for row
    assert [e.label for e in test] == [e.label for e in published]
    assert split_fpb(rows, seed=0)[1] != test


def test_fingpt_splits_counts_and_no_leakage(splits):
    sizes = {part: {k: len(v) for k, v in d.items()} for part, d in splits.items()}
    assert sizes["test"] == {"fpb": 1212, "fiqa": 235, "tfns": 2388, "nwgi": 4047}
    assert sizes["train"]["tfns"] == 9543
    # 50Agree minus the 1210 distinct test sentences (1217 rows, as 8 sentences occur twice).
    assert sizes["train"]["fpb"] == 4846 - 1217
    assert 850 < sizes["train"]["fiqa"] < 1178 - 234

    def key(t):  # FiQA's Royal Mail headline differs only in its quote style between train and test
        return " ".join(t.replace('"', "'").lower().split())

    for src in ("fpb", "fiqa"):
        test_keys = {key(e.text) for e in splits["test"][src]}
        assert not [e for e in splits["train"][src] if key(e.text) in test_keys], src
    # TFNS stays as published (FinGPT's 9543/2388); its texts are disjoint, though 10 differ only in apostrophes.
    assert not {e.text for e in splits["train"]["tfns"]} & {e.text for e in splits["test"]["tfns"]}
    assert {src: {e.source for e in rows} for src, rows in splits["test"].items()} == {s: {s} for s in splits["test"]}


def test_training_mix_counts(splits):
    mix = training_mix(splits["train"])
    tr = splits["train"]
    assert len(mix) == 6 * len(tr["fpb"]) + 21 * len(tr["fiqa"]) + 2 * len(tr["tfns"])
    assert collections.Counter(e.source for e in mix) == {
        "fpb": 6 * len(tr["fpb"]), "fiqa": 21 * len(tr["fiqa"]), "tfns": 2 * len(tr["tfns"])}
    assert mix == training_mix(tr) and mix != training_mix(tr, seed=1)
    assert len({e.source for e in mix[:200]}) == 3  # shuffled, not source blocks
    assert len(training_mix(tr, {"tfns": 1})) == len(tr["tfns"])
    with pytest.raises(ValueError, match="nwgi"):
        training_mix(tr, {"fpb": 1, "nwgi": 1})


# ---------------------------------------------------------------- data dir and hub

def test_data_dir_from_env(monkeypatch, tmp_path):
    monkeypatch.delenv("FEDFINGPT_DATA_DIR", raising=False)
    with pytest.raises(FileNotFoundError, match="FEDFINGPT_DATA_DIR.*data.data_dir"):
        data_dir_from_env()
    monkeypatch.setenv("FEDFINGPT_DATA_DIR", str(DATA))
    assert data_dir_from_env() == DATA
    assert data_dir_from_env(tmp_path) == tmp_path
    with pytest.raises(MissingDataError, match="nope"):
        data_dir_from_env(tmp_path / "nope")


def test_hub_errors_are_clear(monkeypatch):
    with pytest.raises(ValueError, match="takala/financial_phrasebank"):
        load_from_hub("someone/unknown")
    monkeypatch.setitem(sys.modules, "datasets", None)  # makes `from datasets import ...` fail
    with pytest.raises(ImportError, match="pip install datasets"):
        load_from_hub("takala/financial_phrasebank")
