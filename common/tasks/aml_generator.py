"""A seeded synthetic multi-bank AML world: ordinary customers and businesses, plus laundering patterns of the
AMLworld typologies and structuring, with a per-bank typology mix (non-IID banks).

What it generates (all synthetic; names and IBANs look real, so PII redaction has something to find):
- accounts: `accounts_per_bank` per bank, each with a person's or company's name and an IBAN of the bank's
  country with valid check digits; a few foreign "offshore" accounts (CY, LI, MT, AE) for cross-border hops;
- ordinary activity: each account makes about `tx_per_account` payments over `days` days to other customers
  (mostly at its own bank), amounts log-normal (median about 240), times in business hours;
- laundering: patterns drawn from each bank's typology mix until laundering transactions make up
  `laundering_rate` of all transactions. Shapes: fan_in (k senders -> 1), fan_out (1 -> k), cycle (a chain back
  to its start, a small fee taken at each hop), scatter_gather (1 -> k -> 1), gather_scatter (k -> 1 -> k),
  bipartite (a group pays another group densely), stack (layers of intermediaries), random (a random walk) and
  structuring (k deposits between 90 % and 99.9 % of `reporting_threshold`). A share `cross_border` of the
  counterparties sit at other banks or offshore. Laundering moves larger sums (log-normal, median about 9,000)
  within a few days.

The `difficulty` knob (0 to 1, seeded like the rest) makes the world one where the rules are wrong:
- innocent look-alikes, `lookalikes` of them per laundering pattern (default 1.5 x difficulty), each shaped like
  a typology the rules look for: payroll fan-out (a company pays its staff similar sums on one day, monthly),
  merchant and marketplace fan-in (many customers pay one seller in a few days), loan repayment and cash-pooling
  cycles (a group's companies pass round sums around), rent and invoice runs of round amounts just under the
  reporting threshold, and cash-heavy small businesses depositing just under it weekly. Their transactions are
  not laundering; their pattern id (BANK/KIND-NNNNN) lets `build_cases` make them negative cases.
- laundering that hides: each of four disguises is applied to a pattern with probability `difficulty`: amounts that
  mimic ordinary spending (and, for structuring, sit well under the threshold band), a time span of weeks, mixed
  payment formats, and a partial pattern (fewer counterparties than a fan rule needs).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from .aml import TYPOLOGIES, Account, AmlDataset, Transaction

FIRST = ["James", "Maria", "Wei", "Fatima", "Olga", "Carlos", "Aisha", "Liam", "Sofia", "Hiroshi", "Elena", "Omar",
         "Priya", "Lucas", "Anna", "Mateo", "Chloe", "Ivan", "Leila", "Noah", "Grace", "Ahmed", "Mia", "Jonas"]
LAST = ["Smith", "Garcia", "Chen", "Khan", "Petrova", "Rossi", "Okafor", "Müller", "Dubois", "Tanaka", "Novak",
        "Haddad", "Sharma", "Silva", "Johansson", "Lopez", "Martin", "Ivanov", "Nasser", "Brown", "Kowalski"]
COMPANY = ["Holdings", "Trading", "Logistics", "Consulting", "Imports", "Capital", "Ventures", "Supplies"]
# BBAN shapes of the IBAN registry (n digit, a letter), so that every generated IBAN has its country's real length
# and form: what a PII recognizer that validates IBANs expects to see.
COUNTRIES = {"DE": "18n", "GB": "4a14n", "FR": "23n", "NL": "4a10n", "PL": "24n", "IT": "1a22n", "CH": "17n",
             "IE": "4a14n", "AE": "19n", "CY": "24n", "LI": "17n", "MT": "4a23n"}
OFFSHORE = ["CY", "LI", "MT", "AE"]
FORMATS = ["wire", "ach", "card", "cash deposit", "cheque"]
LOOKALIKES = ("payroll", "marketplace", "loan_cycle", "invoice_run", "cash_business")


def iban(country: str, rng: random.Random) -> str:
    """An IBAN of the country's length and form with valid ISO 13616 check digits (mod 97 == 1)."""
    import re

    bban = ""
    for count, kind in re.findall(r"(\d+)([na])", COUNTRIES[country]):
        pool = "0123456789" if kind == "n" else "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
        bban += "".join(rng.choice(pool) for _ in range(int(count)))
    digits = "".join(str(int(c, 36)) for c in bban + country + "00")
    check = 98 - int(digits) % 97
    return f"{country}{check:02d}{bban}"


def iban_valid(number: str) -> bool:
    s = number[4:] + number[:4]
    return int("".join(str(int(c, 36)) for c in s)) % 97 == 1


@dataclass
class BankSpec:
    name: str
    country: str
    typology_mix: dict[str, float]  # relative weights of the typologies this bank's launderers use


@dataclass
class GeneratorConfig:
    num_banks: int = 4
    accounts_per_bank: int = 150
    days: int = 60
    tx_per_account: float = 8.0
    laundering_rate: float = 0.05
    reporting_threshold: float = 10_000.0
    cross_border: float = 0.3
    offshore_accounts: int = 12
    banks: list[BankSpec] = field(default_factory=list)  # empty: default non-IID mixes
    seed: int = 7
    difficulty: float = 0.0  # 0: textbook shapes only; 1: look-alikes everywhere and every disguise on every pattern
    lookalikes: float | None = None  # innocent look-alike patterns per laundering pattern (None: 1.5 x difficulty)


def default_banks(n: int) -> list[BankSpec]:
    """Non-IID by default: each bank sees mostly three typologies, a different three for each bank, and the last
    typology in the rotation only at one bank (so a typology one bank has never seen exists)."""
    countries = ["DE", "GB", "FR", "NL", "PL", "IT", "CH", "IE"]
    specs = []
    for b in range(n):
        main = [TYPOLOGIES[(3 * b + j) % len(TYPOLOGIES)] for j in range(3)]
        mix = {t: 1.0 for t in main}
        for t in TYPOLOGIES:
            mix.setdefault(t, 0.0)
        specs.append(BankSpec(f"bank_{b}", countries[b % len(countries)], mix))
    return specs


def generate(cfg: GeneratorConfig | None = None) -> AmlDataset:
    cfg = cfg or GeneratorConfig()
    if not 0 <= cfg.laundering_rate < 1:
        raise ValueError(f"laundering_rate must be in [0, 1), got {cfg.laundering_rate}")
    if not 0 <= cfg.difficulty <= 1:
        raise ValueError(f"difficulty must be in [0, 1], got {cfg.difficulty}")
    rng = random.Random(cfg.seed)
    banks = cfg.banks or default_banks(cfg.num_banks)
    start = datetime(2025, 1, 1)
    accounts: dict[str, Account] = {}
    by_bank: dict[str, list[str]] = {}
    for spec in banks:
        ids = []
        for _ in range(cfg.accounts_per_bank):
            number = iban(spec.country, rng)
            if rng.random() < 0.25:
                name = f"{rng.choice(LAST)} {rng.choice(COMPANY)} Ltd"
            else:
                name = f"{rng.choice(FIRST)} {rng.choice(LAST)}"
            accounts[number] = Account(number, spec.name, name, spec.country)
            ids.append(number)
        by_bank[spec.name] = ids
    offshore = []
    for _ in range(cfg.offshore_accounts):
        country = rng.choice(OFFSHORE)
        number = iban(country, rng)
        accounts[number] = Account(number, f"offshore_{country.lower()}", f"{rng.choice(LAST)} {rng.choice(COMPANY)} "
                                   "SA", country)
        offshore.append(number)
    all_customers = [a for ids in by_bank.values() for a in ids]
    txs: list[Transaction] = []

    def when(day0: float, spread_days: float) -> datetime:
        day = min(cfg.days - 1, max(0.0, day0 + rng.random() * spread_days))
        return start + timedelta(days=int(day), hours=rng.randint(8, 18), minutes=rng.randrange(60))

    def add(src, dst, amount, time, fmt, laundering=False, typology=None, pattern=None):
        txs.append(Transaction(f"tx{len(txs):07d}", src, dst, round(amount, 2), "EUR", time, fmt, laundering,
                               typology, pattern))

    # ordinary activity
    for spec in banks:
        own = by_bank[spec.name]
        for a in own:
            for _ in range(max(1, int(rng.expovariate(1 / cfg.tx_per_account)))):
                dst = rng.choice(own if rng.random() > 0.15 else all_customers)
                if dst != a:
                    add(a, dst, rng.lognormvariate(math.log(240), 1.1), when(rng.random() * cfg.days, 0),
                        rng.choice(FORMATS))
    normal = len(txs)
    target = int(round(cfg.laundering_rate * normal / (1 - cfg.laundering_rate)))

    def counterpart(home: str) -> str:
        r = rng.random()
        if r < cfg.cross_border / 2 and offshore:
            return rng.choice(offshore)
        if r < cfg.cross_border:
            return rng.choice(by_bank[rng.choice([b.name for b in banks if b.name != home] or [home])])
        return rng.choice(by_bank[home])

    laundered = 0
    pattern_no = 0
    weights = [(spec, t, w) for spec in banks for t, w in spec.typology_mix.items() if w > 0]
    while laundered < target and weights:
        spec, typ, _ = rng.choices(weights, weights=[w for _, _, w in weights])[0]
        pid = f"{spec.name}/p{pattern_no:05d}"  # the bank whose customers run the pattern
        pattern_no += 1
        before = len(txs)
        d0 = rng.random() * (cfg.days - 6)
        focus = rng.choice(by_bank[spec.name])
        k = rng.randint(4, 10)
        # disguises, each with probability `difficulty` (drawn only when it is above 0: a difficulty-0 world is
        # the same as before the knob existed, seed for seed)
        mimic, slow, mixed, partial = ([rng.random() < cfg.difficulty for _ in range(4)] if cfg.difficulty > 0
                                       else [False] * 4)
        spread0 = rng.uniform(12, 30) if slow else 3.0
        if partial:
            k = rng.randint(2, 4)

        def L(src, dst, amount, fmt="wire", spread=None):  # noqa: N802 - one laundering hop of this pattern
            if src != dst:
                add(src, dst, amount, when(d0 if not slow else rng.random() * (cfg.days - spread0), spread or spread0),
                    rng.choice(FORMATS) if mixed else fmt, True, typ, pid)

        def big() -> float:  # this pattern's sums: large, or like the account's ordinary spending
            return rng.lognormvariate(math.log(240 * rng.uniform(2, 4)), 0.5) if mimic else \
                rng.lognormvariate(math.log(9000), 0.6)

        if typ == "fan_in":
            for _ in range(k):
                L(counterpart(spec.name), focus, big())
        elif typ == "fan_out":
            for _ in range(k):
                L(focus, counterpart(spec.name), big())
        elif typ == "cycle":
            chain = [focus] + [counterpart(spec.name) for _ in range(rng.randint(2, 6))]
            amount = big() * 3
            for i, src in enumerate(chain):
                L(src, chain[(i + 1) % len(chain)], amount)
                amount *= rng.uniform(0.95, 0.99)
        elif typ == "scatter_gather":
            sink = counterpart(spec.name)
            for mid in [counterpart(spec.name) for _ in range(k)]:
                amount = big()
                L(focus, mid, amount)
                L(mid, sink, amount * 0.98)
        elif typ == "gather_scatter":
            for _ in range(k):
                L(counterpart(spec.name), focus, big())
            for _ in range(k):
                L(focus, counterpart(spec.name), big())
        elif typ == "bipartite":
            left = [focus] + [counterpart(spec.name) for _ in range(rng.randint(1, 3))]
            right = [counterpart(spec.name) for _ in range(rng.randint(2, 4))]
            for a in left:
                for b in right:
                    L(a, b, big())
        elif typ == "stack":
            layer = [focus]
            for _ in range(rng.randint(2, 3)):
                nxt = [counterpart(spec.name) for _ in range(rng.randint(2, 4))]
                for a in layer:
                    for b in nxt:
                        L(a, b, big())
                layer = nxt
        elif typ == "random":
            cur = focus
            for _ in range(k):
                nxt = counterpart(spec.name)
                L(cur, nxt, big())
                cur = nxt
        elif typ == "structuring":
            depositor = rng.choice(by_bank[spec.name])
            band = (0.55, 0.88) if mimic else (0.9, 0.999)
            for _ in range(max(k, 3) if partial else k):
                L(depositor, focus, rng.uniform(*band) * cfg.reporting_threshold, "cash deposit",
                  spread=None if slow else 5.0)
        laundered += len(txs) - before
    n_look = int(round((cfg.lookalikes if cfg.lookalikes is not None else 1.5 * cfg.difficulty) * pattern_no))
    for n in range(n_look):
        spec = banks[n % len(banks)]
        _lookalike(LOOKALIKES[(n // len(banks)) % len(LOOKALIKES)], spec, n, by_bank, accounts, rng, cfg, add, when)
    txs.sort(key=lambda t: (t.time, t.id))
    source = f"generated(seed={cfg.seed})" if not cfg.difficulty else \
        f"generated(seed={cfg.seed}, difficulty={cfg.difficulty:g})"
    return AmlDataset(source, accounts, txs, {})


def _lookalike(kind: str, spec: BankSpec, n: int, by_bank: dict, accounts: dict, rng: random.Random,
               cfg: GeneratorConfig, add, when) -> None:
    """One innocent pattern of `kind` at bank `spec`: transactions that are not laundering, with pattern id
    BANK/KIND-NNNNN."""
    own = by_bank[spec.name]
    companies = [a for a in own if accounts[a].name.endswith("Ltd")] or own
    pid = f"{spec.name}/{kind}-{n:05d}"
    focus = rng.choice(companies)
    others = [a for a in own if a != focus]
    everyone = [a for ids in by_bank.values() for a in ids if a != focus]
    d0 = rng.random() * max(1, cfg.days - 35)

    def pay(src, dst, amount, day, fmt):
        add(src, dst, amount, when(day, 0), fmt, False, None, pid)

    if kind == "payroll":  # a company pays its staff similar sums on one day, each month
        staff = rng.sample(others, min(len(others), rng.randint(6, 15)))
        salary = {a: rng.uniform(1500, 4500) for a in staff}
        for month in range(1 + (d0 + 30 < cfg.days)):
            for a in staff:
                pay(focus, a, salary[a] * rng.uniform(0.98, 1.02), d0 + 30 * month, "ach")
    elif kind == "marketplace":  # many buyers pay one seller within days
        for a in rng.sample(everyone, min(len(everyone), rng.randint(8, 20))):
            pay(a, focus, rng.lognormvariate(math.log(1600), 0.4), d0 + rng.random() * 5, rng.choice(["card", "ach"]))
    elif kind == "loan_cycle":  # a group's companies pass round sums around: cash pooling, loan and repayment
        pool = [a for a in companies if a != focus]
        pool = pool if len(pool) >= 2 else others
        group = [focus] + rng.sample(pool, min(len(pool), rng.randint(2, 3)))
        amount = rng.choice([10_000, 20_000, 25_000, 50_000])
        for i, src in enumerate(group):
            pay(src, group[(i + 1) % len(group)], amount, d0 + 2 * i + rng.random(), "wire")
    elif kind == "invoice_run":  # rent and invoices of round amounts just under the threshold
        payee = rng.choice(everyone)
        amount = rng.choice([9_000, 9_200, 9_500, 9_750, 9_800, 9_900]) * cfg.reporting_threshold / 10_000
        for i in range(rng.randint(3, 5)):
            pay(focus, payee if rng.random() < 0.7 else rng.choice(everyone), amount, d0 + 7 * i + rng.random(),
                rng.choice(["wire", "ach"]))
    else:  # cash_business: a shop's takings deposited weekly, often just under the threshold
        owner = rng.choice(others) if others else focus
        for week in range(min(8, int((cfg.days - d0) // 7))):
            pay(owner, focus, rng.uniform(0.85, 0.995) * cfg.reporting_threshold, d0 + 7 * week, "cash deposit")
