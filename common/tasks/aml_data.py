"""Loaders for real AML data formats into the task's data model, and cases built from transactions.

Formats (see shared/data/SOURCES.md): IBM AMLSim simulations (nodes.csv + transactions.csv, account labels),
the AMLSim export with four banks (accounts/transactions/alert_transactions), AMLSim alert exports
(accounts.csv + alerts.csv) and IBM AMLworld HI-Small laundering patterns (+ a normal-transaction sample).
A bad row (unknown account, negative or non-numeric amount, unparseable date, unknown currency, duplicated id)
either stops the load with the file, line and fix (`on_bad="error"`) or is skipped and counted by reason
(`on_bad="skip"`, the counts travel in `AmlDataset.skipped` into every report): never dropped silently.
"""

from __future__ import annotations

import csv
import random
from collections import Counter, defaultdict
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Literal

from .aml import NONE, TYPOLOGIES, Account, AmlCase, AmlDataset, Transaction
from .sentiment_data import DataFormatError, MissingDataError

OnBad = Literal["error", "skip"]
# ISO codes, and the currency names AMLworld writes.
CURRENCIES = {
    "USD": "USD", "EUR": "EUR", "GBP": "GBP", "CHF": "CHF", "JPY": "JPY", "CNY": "CNY", "INR": "INR", "CAD": "CAD",
    "AUD": "AUD", "MXN": "MXN", "BRL": "BRL", "SAR": "SAR", "ILS": "ILS", "RUB": "RUB", "AED": "AED", "BTC": "BTC",
    "US Dollar": "USD", "Euro": "EUR", "UK Pound": "GBP", "Swiss Franc": "CHF", "Yen": "JPY", "Yuan": "CNY",
    "Rupee": "INR", "Canadian Dollar": "CAD", "Australian Dollar": "AUD", "Mexican Peso": "MXN",
    "Brazil Real": "BRL", "Saudi Riyal": "SAR", "Shekel": "ILS", "Ruble": "RUB", "Bitcoin": "BTC",
}
AMLWORLD_TYPOLOGY = {"FAN-IN": "fan_in", "FAN-OUT": "fan_out", "CYCLE": "cycle", "SCATTER-GATHER": "scatter_gather",
                     "GATHER-SCATTER": "gather_scatter", "BIPARTITE": "bipartite", "STACK": "stack", "RANDOM": "random"}
AMLSIM_TYPOLOGY = {"fan_in": "fan_in", "fan_out": "fan_out", "cycle": "cycle", "scatter_gather": "scatter_gather",
                   "gather_scatter": "gather_scatter", "bipartite": "bipartite", "stack": "stack", "random": "random"}
SIM_START = datetime(2011, 1, 1)  # AMLSim step 0 (its exports start there)


class _Rows:
    """Reads a CSV with required columns and applies the bad-row policy, counting what it skips."""

    def __init__(self, on_bad: OnBad, skipped: Counter) -> None:
        if on_bad not in ("error", "skip"):
            raise ValueError(f"on_bad must be 'error' or 'skip', got {on_bad!r}")
        self.on_bad, self.skipped = on_bad, skipped
        self.problems: list[str] = []  # each skipped row: "file:line: reason. fix" (a data check lists them)

    def read(self, path: Path, required: tuple[str, ...]) -> Iterator[tuple[int, dict[str, str]]]:
        if not path.is_file():
            raise MissingDataError(f"{path}: file not found; point data.data_dir (FEDFINGPT_DATA_DIR) at the folder "
                                   "that holds aml/")
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            missing = [c for c in required if c not in (reader.fieldnames or [])]
            if missing:
                raise DataFormatError(f"{path}: missing columns {missing}; expected at least {list(required)}")
            for n, row in enumerate(reader, 2):
                yield n, row

    def bad(self, path: Path, line: int, reason: str, fix: str) -> None:
        if self.on_bad == "error":
            raise DataFormatError(f"{path}:{line}: {reason}. {fix}, or load with on_bad='skip' to skip and count "
                                  "such rows")
        self.skipped[reason.split(":")[0]] += 1
        self.problems.append(f"{path}:{line}: {reason}. {fix}")


def _amount(text: str) -> float | None:
    try:
        v = float(text)
    except (TypeError, ValueError):
        return None
    return v if v == v and v >= 0 and v != float("inf") else None


def _transaction(rows: _Rows, path, n, *, tid, src, dst, amount, currency, time, accounts, seen, **extra):
    """A checked Transaction, or None when the row was skipped (counted)."""
    if tid in seen:
        rows.bad(path, n, f"duplicated transaction id: {tid}", "Remove the repeated row")
        return None
    for end in (src, dst):
        if end not in accounts:
            rows.bad(path, n, f"unknown account: {end}", "Add the account to the accounts file")
            return None
    value = _amount(amount)
    if value is None:
        rows.bad(path, n, f"negative or non-numeric amount: {amount!r}", "Fix the amount")
        return None
    if currency not in CURRENCIES:
        rows.bad(path, n, f"currency not in the table: {currency!r}", f"Use one of {sorted(set(CURRENCIES))[:8]}...")
        return None
    if time is None:
        rows.bad(path, n, "unparseable date", "Write dates as ISO 8601 or YYYY/MM/DD HH:MM")
        return None
    seen.add(tid)
    return Transaction(tid, src, dst, value, CURRENCIES[currency], time, **extra)


def _iso(text: str) -> datetime | None:
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).replace(tzinfo=None)
    except (TypeError, ValueError):
        return None


def _step(text: str) -> datetime | None:
    try:
        return SIM_START + timedelta(days=int(float(text)))
    except (TypeError, ValueError):
        return None


def _bool(text: str) -> bool:
    return str(text).strip().lower() in ("true", "1", "yes")


def _read_accounts(rows: _Rows, path: Path, id_col: str, required: tuple[str, ...], make) -> dict[str, Account]:
    """Accounts by id from one file; a repeated id is a bad row (refused or counted, as rows decides)."""
    accounts: dict[str, Account] = {}
    for n, r in rows.read(path, (id_col, *required)):
        aid = r[id_col]
        if aid in accounts:
            rows.bad(path, n, f"duplicated account id: {aid}", "Remove the repeated row")
            continue
        accounts[aid] = make(aid, r)
    return accounts


def _dealt_bank(aid: str, num_banks: int) -> str:
    """Sources without banks: accounts are dealt to num_banks banks by id."""
    return f"bank_{int(aid) % num_banks}" if aid.isdigit() else "bank_0"


# ------------------------------------------------------------------------------------------ loaders

def load_amlsim_export(folder: str | Path, on_bad: OnBad = "error") -> AmlDataset:
    """AMLSim's export with banks: accounts.csv (acct_id, bank_id, names, country), transactions.csv (tran_id,
    orig_acct, bene_acct, tx_type, base_amt, tran_timestamp, is_sar, alert_id), alert_transactions.csv (alert_type)."""
    folder = Path(folder)
    skipped: Counter = Counter()
    rows = _Rows(on_bad, skipped)
    accounts = _read_accounts(rows, folder / "accounts.csv", "acct_id", ("bank_id",), lambda aid, r: Account(
        aid, r["bank_id"], " ".join(x for x in (r.get("first_name", ""), r.get("last_name", "")) if x)
        or r.get("dsply_nm", ""), r.get("country", "")))
    typ: dict[str, str] = {}
    alerts = folder / "alert_transactions.csv"
    if alerts.is_file():
        for _, r in rows.read(alerts, ("alert_id", "alert_type")):
            typ[r["alert_id"]] = AMLSIM_TYPOLOGY.get(r["alert_type"], "random")
    txs, seen = [], set()
    path = folder / "transactions.csv"
    for n, r in rows.read(path, ("tran_id", "orig_acct", "bene_acct", "base_amt", "tran_timestamp", "is_sar")):
        sar = _bool(r["is_sar"])
        alert = r.get("alert_id", "-1")
        t = _transaction(rows, path, n, tid=r["tran_id"], src=r["orig_acct"], dst=r["bene_acct"], amount=r["base_amt"],
                         currency="USD", time=_iso(r["tran_timestamp"]), accounts=accounts, seen=seen,
                         payment_format=r.get("tx_type", ""), laundering=sar,
                         typology=typ.get(alert, "fan_in" if sar else None) if sar else None,
                         pattern=f"alert-{alert}" if sar and alert not in ("", "-1") else None)
        if t:
            txs.append(t)
    return AmlDataset("amlsim_export", accounts, txs, dict(skipped), rows.problems)


def load_amlsim_nodes(folder: str | Path, num_banks: int = 4, typology: str | None = None,
                      on_bad: OnBad = "error") -> AmlDataset:
    """An AMLSim simulation: nodes.csv (nodeid, isFraud, ...) and transactions.csv (sourceNodeId, targetNodeId,
    value, time step). Labels are per account; a transaction counts as laundering when both ends are laundering
    accounts. The simulation has no banks: accounts are dealt to `num_banks` banks by id. The typology comes from
    `typology` or metadata.txt when it names one pattern kind (e.g. '200 cycles')."""
    folder = Path(folder)
    skipped: Counter = Counter()
    rows = _Rows(on_bad, skipped)
    if typology is None and (folder / "metadata.txt").is_file():
        meta = (folder / "metadata.txt").read_text().lower()
        kinds = [k for k, words in (("cycle", ("cycle",)), ("fan_in", ("fan-in", "fanin", "fan_in")))
                 if any(w in meta for w in words)]
        typology = kinds[0] if len(kinds) == 1 else None
    accounts = _read_accounts(rows, folder / "nodes.csv", "nodeid", ("isFraud",), lambda aid, r: Account(
        aid, _dealt_bank(aid, num_banks), laundering=_bool(r["isFraud"])))
    txs, seen = [], set()
    path = folder / "transactions.csv"
    for n, r in rows.read(path, ("sourceNodeId", "targetNodeId", "value", "time")):
        src, dst = r["sourceNodeId"], r["targetNodeId"]
        bad = src in accounts and dst in accounts and accounts[src].laundering and accounts[dst].laundering
        t = _transaction(rows, path, n, tid=f"t{n - 1}", src=src, dst=dst, amount=r["value"], currency="USD",
                         time=_step(r["time"]), accounts=accounts, seen=seen, laundering=bad,
                         typology=(typology or "random") if bad else None)
        if t:
            txs.append(t)
    return AmlDataset(f"amlsim:{folder.name}", accounts, txs, dict(skipped), rows.problems)


def load_amlsim_alerts(folder: str | Path, num_banks: int = 4, on_bad: OnBad = "error") -> AmlDataset:
    """AMLSim's alert export: accounts.csv (ACCOUNT_ID, COUNTRY, IS_FRAUD, ...) and alerts.csv (ALERT_ID,
    ALERT_TYPE, IS_FRAUD, TX_ID, SENDER_ACCOUNT_ID, RECEIVER_ACCOUNT_ID, TX_TYPE, TX_AMOUNT, TIMESTAMP step):
    only the alerted transactions, each alert a case of its type."""
    folder = Path(folder)
    skipped: Counter = Counter()
    rows = _Rows(on_bad, skipped)
    accounts = _read_accounts(rows, folder / "accounts.csv", "ACCOUNT_ID", ("IS_FRAUD",), lambda aid, r: Account(
        aid, _dealt_bank(aid, num_banks), r.get("CUSTOMER_ID", ""), r.get("COUNTRY", ""), _bool(r["IS_FRAUD"])))
    txs, seen = [], set()
    path = folder / "alerts.csv"
    for n, r in rows.read(path, ("ALERT_ID", "ALERT_TYPE", "IS_FRAUD", "TX_ID", "SENDER_ACCOUNT_ID",
                                 "RECEIVER_ACCOUNT_ID", "TX_AMOUNT", "TIMESTAMP")):
        fraud = _bool(r["IS_FRAUD"])
        t = _transaction(rows, path, n, tid=r["TX_ID"], src=r["SENDER_ACCOUNT_ID"], dst=r["RECEIVER_ACCOUNT_ID"],
                         amount=r["TX_AMOUNT"], currency="USD", time=_step(r["TIMESTAMP"]), accounts=accounts,
                         seen=seen, payment_format=r.get("TX_TYPE", ""), laundering=fraud,
                         typology=AMLSIM_TYPOLOGY.get(r["ALERT_TYPE"], "random") if fraud else None,
                         pattern=f"alert-{r['ALERT_ID']}")
        if t:
            txs.append(t)
    return AmlDataset(f"amlsim_alerts:{folder.name}", accounts, txs, dict(skipped), rows.problems)


def _amlworld_time(text: str) -> datetime | None:
    try:
        return datetime.strptime(text.strip(), "%Y/%m/%d %H:%M")
    except (TypeError, ValueError):
        return None


def load_amlworld(folder: str | Path, on_bad: OnBad = "error") -> AmlDataset:
    """IBM AMLworld HI-Small: laundering_patterns.csv (pattern_id, typology, timestamp, from/to bank and account,
    amount_paid, payment_currency, payment_format) and, when present, transactions_sample_normal.csv (the same
    columns as HI-Small_Trans.csv, renamed) and accounts_sample.csv (bank and entity names)."""
    folder = Path(folder)
    skipped: Counter = Counter()
    rows = _Rows(on_bad, skipped)
    names: dict[str, tuple[str, str]] = {}
    if (folder / "accounts_sample.csv").is_file():
        for _, r in rows.read(folder / "accounts_sample.csv", ("account_key", "bank_name", "entity_name")):
            names[r["account_key"]] = (r["bank_name"], r["entity_name"])
    accounts: dict[str, Account] = {}

    def acct(bank: str, number: str) -> str:
        key = f"{int(bank) if bank.isdigit() else bank}:{number}"
        if key not in accounts:
            bank_name, entity = names.get(key, (f"bank {int(bank) if bank.isdigit() else bank}", ""))
            accounts[key] = Account(key, str(int(bank)) if bank.isdigit() else bank, entity)
        return key

    txs, seen = [], set()
    path = folder / "laundering_patterns.csv"
    for n, r in rows.read(path, ("pattern_id", "typology", "timestamp", "from_bank", "from_account", "to_bank",
                                 "to_account", "amount_paid", "payment_currency", "payment_format")):
        typ = AMLWORLD_TYPOLOGY.get(r["typology"].strip().upper())
        if typ is None:
            rows.bad(path, n, f"unknown typology: {r['typology']!r}", f"Use one of {sorted(AMLWORLD_TYPOLOGY)}")
            continue
        t = _transaction(rows, path, n, tid=f"p{n - 1}", src=acct(r["from_bank"], r["from_account"]),
                         dst=acct(r["to_bank"], r["to_account"]), amount=r["amount_paid"],
                         currency=r["payment_currency"], time=_amlworld_time(r["timestamp"]), accounts=accounts,
                         seen=seen, payment_format=r["payment_format"], laundering=True, typology=typ,
                         pattern=f"pattern-{r['pattern_id']}")
        if t:
            txs.append(t)
    normal = folder / "transactions_sample_normal.csv"
    if normal.is_file():
        for n, r in rows.read(normal, ("timestamp", "from_bank_id", "from_account_id", "to_bank_id", "to_account_id",
                                       "amount_paid", "payment_currency", "payment_format", "is_laundering")):
            t = _transaction(rows, normal, n, tid=f"n{n - 1}", src=acct(r["from_bank_id"], r["from_account_id"]),
                             dst=acct(r["to_bank_id"], r["to_account_id"]), amount=r["amount_paid"],
                             currency=r["payment_currency"], time=_amlworld_time(r["timestamp"]), accounts=accounts,
                             seen=seen, payment_format=r["payment_format"], laundering=_bool(r["is_laundering"]))
            if t:
                txs.append(t)
    return AmlDataset("amlworld_hi_small", accounts, txs, dict(skipped), rows.problems)


# ------------------------------------------------------------------------------------------ cases

def assign_banks(ds: AmlDataset, num_banks: int) -> AmlDataset:
    """The same data with its banks dealt into `num_banks` federation members (bank_0 ...) by a stable hash of the
    source's bank id (AMLworld has hundreds of banks; a federation has a few)."""
    import zlib

    mapping = {b: f"bank_{zlib.crc32(b.encode()) % num_banks}" for b in ds.banks()}
    accounts = {k: Account(a.id, mapping[a.bank], a.name, a.country, a.laundering) for k, a in ds.accounts.items()}
    return AmlDataset(ds.source, accounts, ds.transactions, dict(ds.skipped), list(ds.problems))


def build_cases(ds: AmlDataset, *, window_days: int = 30, negatives_per_positive: float = 2.0,
                min_negatives: int = 0, seed: int = 42, max_transactions: int = 60,
                members: set[str] | None = None) -> list[AmlCase]:
    """Cases a bank's analyst would review. Positive: one per laundering pattern (or, without pattern ids, per
    laundering account), focused on its most connected account and holding the pattern's transactions plus the
    focus's own within the window. Negative: one per innocent pattern (transactions with a pattern id and no
    laundering: the generator's look-alikes), built the same way, plus accounts with no laundering in the window,
    their own transactions. With `members` (the federation's banks), the focus is the most connected account held
    at a member bank when the pattern touches one, and clean cases are drawn from member banks' accounts."""
    rng = random.Random(seed)
    by_acct: dict[str, list[Transaction]] = defaultdict(list)
    for t in ds.transactions:
        by_acct[t.src].append(t)
        by_acct[t.dst].append(t)
    groups: dict[str, list[Transaction]] = defaultdict(list)
    innocent: dict[str, list[Transaction]] = defaultdict(list)
    for t in ds.transactions:
        if t.laundering:
            groups[t.pattern or f"acct-{t.src}"].append(t)
        elif t.pattern:
            innocent[t.pattern].append(t)
    cases: list[AmlCase] = []
    for suspicious, patterns in ((True, groups), (False, innocent)):
        for gid, txs in sorted(patterns.items()):
            degree = Counter([t.src for t in txs] + [t.dst for t in txs])
            held = [a for a in sorted(degree) if members is None or ds.accounts[a].bank in members]
            if not suspicious and not held:
                continue  # an innocent pattern at no member bank: nobody there would review it
            focus = max(held or sorted(degree), key=degree.__getitem__)
            start = min(t.time for t in txs)
            end = max(t.time for t in txs) + timedelta(days=window_days)
            own = [t for t in by_acct[focus] if start <= t.time <= end and not t.laundering]
            chosen = sorted({t.id: t for t in txs + own}.values(), key=lambda t: (t.time, t.id))[:max_transactions]
            if suspicious:
                typ = Counter(t.typology for t in txs if t.typology).most_common(1)
                cases.append(_case(ds, gid, focus, chosen, True, typ[0][0] if typ else "random"))
            else:
                cases.append(_case(ds, gid, focus, chosen, False, NONE))
    dirty = {a for txs in groups.values() for t in txs for a in (t.src, t.dst)}
    clean = sorted(a for a, txs in by_acct.items() if a not in dirty and len(txs) >= 2
                   and (members is None or ds.accounts[a].bank in members))
    rng.shuffle(clean)
    for aid in clean[: max(min_negatives, int(round(negatives_per_positive * max(1, len(groups)))))]:
        txs = sorted(by_acct[aid], key=lambda t: (t.time, t.id))
        start = txs[0].time
        window = [t for t in txs if t.time <= start + timedelta(days=window_days)][:max_transactions]
        cases.append(_case(ds, f"clean-{aid}", aid, window, False, NONE))
    return cases


def _case(ds: AmlDataset, cid: str, focus: str, txs: list[Transaction], suspicious: bool, typology: str) -> AmlCase:
    ids = {focus} | {t.src for t in txs} | {t.dst for t in txs}
    if typology not in (*TYPOLOGIES, NONE):
        typology = "random"
    return AmlCase(cid, ds.accounts[focus].bank, focus, txs, {a: ds.accounts[a] for a in ids if a in ds.accounts},
                   suspicious, typology)


# ------------------------------------------------------------------------------------------ a bank's own export

BANK_TRANSACTION_COLUMNS = ("id", "timestamp", "from_account", "to_account", "amount", "currency")
BANK_TRANSACTION_OPTIONAL = ("payment_format", "from_bank", "to_bank", "from_name", "to_name", "from_country",
                             "to_country", "laundering")
BANK_ALERT_COLUMNS = ("alert_id", "transaction_id", "typology")


def load_bank_transactions(folder: str | Path, on_bad: OnBad = "error", bank: str = "bank") -> AmlDataset:
    """A bank's transaction export in fedfingpt's documented schema (docs/bank-data.md): transactions.csv with
    BANK_TRANSACTION_COLUMNS (timestamp ISO 8601, amount >= 0, an ISO currency) and any of BANK_TRANSACTION_OPTIONAL;
    optional alerts.csv (alert_id, transaction_id, typology) marks the transactions of each laundering alert.
    Accounts are the ones the transactions name; an account without from_bank/to_bank is held at `bank`."""
    folder = Path(folder)
    skipped: Counter = Counter()
    rows = _Rows(on_bad, skipped)
    path = folder / "transactions.csv"
    raw = []
    accounts: dict[str, Account] = {}
    for n, r in rows.read(path, BANK_TRANSACTION_COLUMNS):
        for end in ("from", "to"):
            aid = (r.get(f"{end}_account") or "").strip()
            if not aid:
                rows.bad(path, n, f"empty {end}_account", "Fill in the account id")
                break
            if aid not in accounts:
                accounts[aid] = Account(aid, (r.get(f"{end}_bank") or "").strip() or bank,
                                        (r.get(f"{end}_name") or "").strip(), (r.get(f"{end}_country") or "").strip())
        else:
            raw.append((n, r))
    alerts: dict[str, tuple[str, str]] = {}
    apath = folder / "alerts.csv"
    if apath.is_file():
        for n, r in rows.read(apath, BANK_ALERT_COLUMNS):
            typ = r["typology"].strip().lower().replace("-", "_")
            if typ not in TYPOLOGIES:
                rows.bad(apath, n, f"unknown typology: {r['typology']!r}", f"Use one of {', '.join(TYPOLOGIES)}")
                continue
            alerts[r["transaction_id"].strip()] = (r["alert_id"].strip(), typ)
    txs, seen = [], set()
    for n, r in raw:
        tid = r["id"].strip()
        alert = alerts.get(tid)
        flagged = alert is not None or _bool(r.get("laundering") or "")
        t = _transaction(rows, path, n, tid=tid, src=r["from_account"].strip(), dst=r["to_account"].strip(),
                         amount=r["amount"], currency=r["currency"].strip(), time=_iso(r["timestamp"].strip()),
                         accounts=accounts, seen=seen, payment_format=(r.get("payment_format") or "").strip(),
                         laundering=flagged, typology=(alert[1] if alert else "random") if flagged else None,
                         pattern=f"alert-{alert[0]}" if alert else None)
        if t:
            txs.append(t)
    unknown = sorted(set(alerts) - seen)
    for tid in unknown[:1]:
        rows.bad(apath, 0, f"alerts name {len(unknown)} transaction id(s) not in transactions.csv (first: {tid})",
                 "Remove those alert rows or add the transactions")
    return AmlDataset(f"bank:{folder.name}", accounts, txs, dict(skipped), rows.problems)
