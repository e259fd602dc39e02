"""A bank's own data folder in fedfingpt's data contract (docs/bank-data.md): what a deployed bank trains on, read
whole, checked row by row, and described on a data card. The simulation writes each simulated bank's folder here too.

    FOLDER/sentiment.csv | sentiment.jsonl | sentiment.parquet   text, label[, kind, source]
    FOLDER/transactions.csv [+ alerts.csv]                        fedfingpt's transaction schema
    FOLDER/amlsim/                                                an AMLSim export (accounts, transactions, alerts)
    FOLDER/amlworld/                                              AMLworld patterns + normal transactions
"""

from __future__ import annotations

import csv
import io
import json
import statistics
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from .report import write_text_atomic
from .tasks.sentiment_data import LABELS, DataFormatError, SentimentExample

SENTIMENT_FILES = ("sentiment.csv", "sentiment.jsonl", "sentiment.parquet")
KINDS = ("news", "tweet")
TRANSACTION_FORMATS = {"transactions.csv": "fedfingpt", "amlsim": "amlsim", "amlworld": "amlworld"}
MAX_TEXT_CHARS = 4000  # a sentiment text longer than this is a document, not a row: refused by name


class BankDataError(DataFormatError):
    """A bank folder that cannot be trained on as it is; the message names the folder or the rows and what to do."""


@dataclass(frozen=True)
class Problem:
    file: str
    line: int
    reason: str
    fix: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.reason}. {self.fix}"


@dataclass
class BankFolder:
    folder: Path
    sentiment: list[SentimentExample] = field(default_factory=list)
    sentiment_lines: list[int] = field(default_factory=list)  # each row's line in its file (the card's duplicates)
    sentiment_file: str | None = None
    aml: object | None = None  # AmlDataset
    aml_format: str | None = None
    problems: list[Problem] = field(default_factory=list)  # sentiment rows left out, by file and line
    aml_problems: list[str] = field(default_factory=list)  # transaction rows left out, by file and line

    @property
    def bad_rows(self) -> int:
        return len(self.problems) + len(self.aml_problems)

    def all_problems(self) -> list[str]:
        return [str(p) for p in self.problems] + list(self.aml_problems)


def parse_label_map(text: str | dict | None, key: str = "label-map") -> dict[str, str]:
    """`bearish=negative,neutral=neutral,bullish=positive` (or a dict) -> {raw label: one of LABELS}."""
    if not text:
        return {}
    pairs = text.items() if isinstance(text, dict) else [p.split("=", 1) for p in str(text).split(",") if p.strip()]
    out = {}
    for pair in pairs:
        if len(pair) != 2 or not str(pair[0]).strip():
            raise BankDataError(f"{key}: {','.join(map(str, pair))!r} is not RAW=LABEL; write e.g. "
                                "'bearish=negative,neutral=neutral,bullish=positive'")
        raw, label = str(pair[0]).strip().lower(), str(pair[1]).strip().lower()
        if label not in LABELS:
            raise BankDataError(f"{key}: {raw}={label}: the label must be one of {'/'.join(LABELS)}")
        out[raw] = label
    return out


def _sentiment_records(path: Path):
    """(line, record) pairs of a sentiment file; a file that cannot be parsed at all raises BankDataError."""
    if path.suffix == ".csv":
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            missing = [c for c in ("text", "label") if c not in (reader.fieldnames or [])]
            if missing:
                raise BankDataError(f"{path}: missing columns {missing}; the first line must name text and label")
            for rec in reader:
                yield reader.line_num, rec
    elif path.suffix == ".jsonl":
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError as err:
                    yield n, {"__error__": f"not JSON ({err.msg})"}
                    continue
                yield n, rec if isinstance(rec, dict) else {"__error__": "not a JSON object"}
    else:
        try:
            import pyarrow.parquet as pq

            table = pq.read_table(path)
        except Exception as err:  # pyarrow raises several kinds for a file that is not Parquet
            raise BankDataError(f"{path}: not a readable Parquet file ({type(err).__name__}); rewrite it or use "
                                "CSV/JSONL") from None
        missing = [c for c in ("text", "label") if c not in table.column_names]
        if missing:
            raise BankDataError(f"{path}: missing columns {missing}; the table needs text and label")
        for n, rec in enumerate(table.to_pylist(), 1):  # Parquet has rows, not lines: n is the row number
            yield n, rec


def _read_sentiment(bf: BankFolder, path: Path, label_map: dict[str, str]) -> None:
    bf.sentiment_file = path.name
    for n, rec in _sentiment_records(path):
        def bad(reason: str, fix: str) -> None:
            bf.problems.append(Problem(path.name, n, reason, fix))

        if "__error__" in rec:
            bad(rec["__error__"], "Write one JSON object per line with text and label")
            continue
        text, raw = rec.get("text"), rec.get("label")
        if not isinstance(text, str) or not text.strip():
            bad("empty or missing text", "Fill in the text or remove the row")
            continue
        if len(text) > MAX_TEXT_CHARS:
            bad(f"text of {len(text)} characters (at most {MAX_TEXT_CHARS})", "Split it or remove the row")
            continue
        key = str(raw).strip().lower() if raw is not None else ""
        label = label_map.get(key) or (key if key in LABELS and not label_map else None)
        if label is None:
            known = sorted(label_map) if label_map else list(LABELS)
            bad(f"unknown label {str(raw)[:20]!r}", f"Use one of {'/'.join(known)}, or give label-map in the node "
                "config (e.g. 'bearish=negative,neutral=neutral,bullish=positive')")
            continue
        kind = str(rec.get("kind") or "news").strip().lower()
        if kind not in KINDS:
            bad(f"unknown kind {kind[:20]!r}", "Use news or tweet (it picks the instruction), or leave it empty")
            continue
        source = str(rec.get("source") or "").strip()[:40] or "bank"  # where the row came from (a simulated bank's
        # rows name their public set)
        bf.sentiment.append(SentimentExample(text, label, source, kind))  # the text as written: a simulated bank's
        # rows stay exactly the simulation's (public rows carry leading spaces and line separators)
        bf.sentiment_lines.append(n)


def read_bank_folder(folder: str | Path, label_map: dict[str, str] | None = None) -> BankFolder:
    """Everything in the folder that the contract names, read whole. Bad rows do not stop the read: they are listed
    (file, line, reason, fix) for `require_usable` and the data card. A folder without any contract file raises."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise BankDataError(f"{folder}: not a folder; give the bank's data folder (docs/bank-data.md)")
    bf = BankFolder(folder)
    sentiment = [folder / n for n in SENTIMENT_FILES if (folder / n).is_file()]
    if len(sentiment) > 1:
        raise BankDataError(f"{folder}: {', '.join(p.name for p in sentiment)}: keep one sentiment file")
    if sentiment:
        _read_sentiment(bf, sentiment[0], label_map or {})
    present = [fmt for name, fmt in TRANSACTION_FORMATS.items() if (folder / name).exists()]
    if len(present) > 1:
        raise BankDataError(f"{folder}: transactions in {', '.join(present)} formats; keep one")
    if present:
        from .tasks.aml_data import load_amlsim_export, load_amlworld, load_bank_transactions

        load = {"fedfingpt": lambda: load_bank_transactions(folder, "skip", bank=folder.name),
                "amlsim": lambda: load_amlsim_export(folder / "amlsim", "skip"),
                "amlworld": lambda: load_amlworld(folder / "amlworld", "skip")}[present[0]]
        bf.aml, bf.aml_format = load(), present[0]
        bf.aml_problems = [p.removeprefix(f"{folder}/") for p in bf.aml.problems]
    if not sentiment and not present:
        raise BankDataError(f"{folder}: none of {', '.join(SENTIMENT_FILES)}, transactions.csv, amlsim/, amlworld/; "
                            "put the bank's files there (docs/bank-data.md)")
    return bf


def require_usable(bf: BankFolder, accept_skips: bool = False) -> None:
    """Refuse a folder with bad rows unless the bank accepts that they are skipped (counted on the card)."""
    if bf.bad_rows and not accept_skips:
        listed = bf.all_problems()
        more = f"\n  ... and {len(listed) - 20} more" if len(listed) > 20 else ""
        raise BankDataError(
            f"{bf.folder}: {len(listed)} bad row(s); fix them, or accept that they are skipped (node config "
            "accept-skips=true, or `fedfingpt data check --accept-skips`):\n  " + "\n  ".join(listed[:20]) + more)


def _norm(text: str) -> str:
    return " ".join(text.lower().split())


def data_card(bf: BankFolder, public_tests: dict[str, list[SentimentExample]] | None = None,
              scrubber=None) -> dict:
    """What the folder holds: counts, lengths, duplicates, overlap with public benchmark test texts, transactions,
    dates, alert rate, and PII found per entity type (counts; never a value)."""
    card: dict = {"folder": str(bf.folder), "bad_rows": bf.bad_rows,
                  "problems": bf.all_problems()[:200], "problems_listed": min(200, bf.bad_rows)}
    rows = bf.sentiment
    if bf.sentiment_file:
        seen: dict[str, str] = {}
        dup = conflict = 0
        for ex in rows:
            k = _norm(ex.text)
            if k in seen:
                dup += 1
                conflict += seen[k] != ex.label
            else:
                seen[k] = ex.label
        lengths = [len(ex.text) for ex in rows] or [0]
        s = {"file": bf.sentiment_file, "rows": len(rows), "labels": dict(Counter(ex.label for ex in rows)),
             "kinds": dict(Counter(ex.kind for ex in rows)), "duplicates": dup, "duplicates_with_other_label": conflict,
             "text_chars": {"min": min(lengths), "median": statistics.median(lengths), "max": max(lengths)}}
        if public_tests is not None:
            overlap = {}
            for name, test in sorted(public_tests.items()):
                texts = {_norm(ex.text) for ex in test}
                overlap[name] = sum(_norm(ex.text) in texts for ex in rows)
            s["equal_to_public_test_text"] = overlap
        else:
            s["equal_to_public_test_text"] = "not checked: no public data folder (FEDFINGPT_DATA_DIR)"
        card["sentiment"] = s
    if bf.aml is not None:
        txs = bf.aml.transactions
        times = [t.time for t in txs]
        flagged = sum(t.laundering for t in txs)
        card["transactions"] = {
            "format": bf.aml_format, "transactions": len(txs), "accounts": len(bf.aml.accounts),
            "date_range": [min(times).isoformat(), max(times).isoformat()] if times else None,
            "laundering_transactions": flagged, "alert_rate": round(flagged / len(txs), 6) if txs else 0.0,
            "alerts": len({t.pattern for t in txs if t.pattern}), "skipped": dict(bf.aml.skipped)}
    if scrubber is not None:
        from .pii.scrub import ScrubReport

        scrubber.report = ScrubReport()
        for ex in rows:
            scrubber.scrub(ex.text)
        names = {a.name for a in (bf.aml.accounts.values() if bf.aml is not None else []) if a.name}
        card["pii_in_sentiment"] = scrubber.report.as_dict()
        card["named_accounts"] = len(names)  # account holder names: always scrubbed from AML narratives
    return card


def card_markdown(card: dict) -> str:
    lines = [f"# Data card: {card['folder']}", ""]
    s = card.get("sentiment")
    if s:
        lines += ["## Sentiment rows", "", f"- file: {s['file']}; rows: {s['rows']}; labels: {s['labels']}; kinds: "
                  f"{s['kinds']}", f"- duplicates: {s['duplicates']} ({s['duplicates_with_other_label']} with another "
                  "label)", f"- text length (characters): {s['text_chars']}",
                  f"- equal to a public benchmark test text: {s['equal_to_public_test_text']}", ""]
    t = card.get("transactions")
    if t:
        lines += ["## Transactions", "", f"- format: {t['format']}; transactions: {t['transactions']}; accounts: "
                  f"{t['accounts']}", f"- dates: {t['date_range']}", f"- laundering transactions: "
                  f"{t['laundering_transactions']} (rate {t['alert_rate']}); alerts: {t['alerts']}", ""]
    if "pii_in_sentiment" in card:
        p = card["pii_in_sentiment"]
        lines += ["## PII (counts per entity type; no value is written)", "",
                  f"- sentiment texts with PII replaced: {p['changed']} of {p['texts']}; rows dropped by policy: "
                  f"{p['dropped']}", f"- found: {p['found'] or 'none'}",
                  f"- named accounts (names scrubbed from AML narratives): {card.get('named_accounts', 0)}", ""]
    lines += [f"## Bad rows: {card['bad_rows']}", ""] + [f"- {p}" for p in card["problems"]]
    if card["bad_rows"] > card["problems_listed"]:
        lines.append(f"- ... {card['bad_rows'] - card['problems_listed']} more (the JSON lists the first 200)")
    return "\n".join(lines) + "\n"


def write_sentiment_rows(folder: str | Path, rows: list[SentimentExample]) -> Path:
    """Rows as FOLDER/sentiment.jsonl in the contract (the simulation writes its banks' folders with it); a row's
    source is written unless it is the default, "bank"."""
    buf = io.StringIO()
    for ex in rows:
        rec = {"text": ex.text, "label": ex.label, "kind": ex.kind}
        if ex.source != "bank":
            rec["source"] = ex.source
        buf.write(json.dumps(rec, ensure_ascii=False) + "\n")
    path = Path(folder) / "sentiment.jsonl"
    write_text_atomic(path, buf.getvalue())
    return path


def pseudonymise(ds, scrubber):
    """The same transactions with every account id replaced by a keyed hash (stable for one gate.hash_key_file) and
    every holder name by the scrub policy's PERSON action: a name or an account number in a transaction export is a
    customer's identity whether or not a recognizer would find it in a sentence."""
    from .tasks.aml import Account, AmlDataset, Transaction

    def alias(aid: str) -> str:
        return "acct-" + scrubber.gate.keyed_digest(aid, 10)

    person = scrubber.action("PERSON")
    person = "redact" if person == "drop" else person  # a holder's name is replaced, never a reason to drop a case
    accounts = {alias(k): Account(alias(k), a.bank, scrubber.gate.replacement(person, "PERSON", a.name) if a.name
                                  else "", a.country, a.laundering) for k, a in ds.accounts.items()}
    txs = [Transaction(t.id, alias(t.src), alias(t.dst), t.amount, t.currency, t.time, t.payment_format,
                       t.laundering, t.typology, t.pattern) for t in ds.transactions]
    return AmlDataset(ds.source, accounts, txs, dict(ds.skipped), list(ds.problems))


def write_transactions(folder: str | Path, ds) -> Path:
    """An AmlDataset as FOLDER/transactions.csv (+ alerts.csv for its laundering patterns) in fedfingpt's schema."""
    from .tasks.aml_data import BANK_ALERT_COLUMNS, BANK_TRANSACTION_COLUMNS, BANK_TRANSACTION_OPTIONAL

    buf, alerts = io.StringIO(), io.StringIO()
    w = csv.writer(buf)
    w.writerow(BANK_TRANSACTION_COLUMNS + BANK_TRANSACTION_OPTIONAL)
    a = csv.writer(alerts)
    a.writerow(BANK_ALERT_COLUMNS)
    for t in ds.transactions:
        src, dst = ds.accounts[t.src], ds.accounts[t.dst]
        w.writerow([t.id, t.time.isoformat(), t.src, t.dst, f"{t.amount:.2f}", t.currency, t.payment_format,
                    src.bank, dst.bank, src.name, dst.name, src.country, dst.country, str(t.laundering).lower()])
        if t.laundering and t.pattern:
            a.writerow([t.pattern, t.id, t.typology or "random"])
    folder = Path(folder)
    write_text_atomic(folder / "transactions.csv", buf.getvalue())
    write_text_atomic(folder / "alerts.csv", alerts.getvalue())
    return folder / "transactions.csv"
