"""A seeded, labelled set of bank-style texts with PII: alerts, KYC notes, payment instructions, call notes.

Every value planted is recorded with its character span and entity type, so a gate's recall and precision can be
measured per type, and a leak check can ask whether the raw value survives redaction. Texts without PII (market
news with dates, amounts and company names) are mixed in to measure what the gate takes that it should not.

    from fedfingpt.simulations.pii_bank_texts import bank_pii_texts
    for item in bank_pii_texts(n=500, seed=0): item.text, item.spans  # [(start, end, entity_type), ...]
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field

from ..common.tasks.aml_generator import iban

FIRST = ["Maria", "James", "Aisha", "Wei", "Olga", "Mateo", "Priya", "Kwame", "Sofia", "Hiroshi", "Fatima", "Lukas",
         "Elena", "Omar", "Chloe", "Dmitri", "Amara", "Jonas", "Ingrid", "Rahul", "Yuki", "Carlos", "Leila", "Piotr",
         "Grace", "Tomasz", "Nadia", "Henrik", "Zanele", "Luca", "Mei", "Kofi", "Anneke", "Santiago", "Hana", "Viktor"]
LAST = ["Garcia", "Okafor", "Nakamura", "Kowalski", "Rahman", "Schmidt", "Rossi", "Haddad", "Lindqvist", "Mensah",
        "Petrov", "Fernandes", "Novak", "Takahashi", "Dubois", "Van der Berg", "Oyelaran", "Moreau", "Jansen",
        "Bianchi", "Kaur", "Andersson", "Popescu", "Yilmaz", "Castillo", "Horvath", "Nguyen", "Fitzgerald",
        "Silva", "Abdullah", "Virtanen", "Kovacs", "Murphy", "Tanaka", "Wojcik", "Achebe"]
CITIES = ["London", "Frankfurt", "Paris", "Madrid", "Milan", "Warsaw", "Vienna", "Zurich", "Rotterdam", "Lisbon",
          "Dublin", "Stockholm", "Helsinki", "Prague", "Budapest", "Athens", "Istanbul", "Dubai", "Lagos", "Nairobi",
          "Johannesburg", "Mumbai", "Singapore", "Hong Kong", "Tokyo", "Seoul", "Sydney", "Toronto", "Chicago",
          "Houston", "Miami", "Boston", "Geneva", "Luxembourg", "Antwerp", "Gdansk", "Porto", "Valencia", "Lyon",
          "Hamburg", "Munich", "Krakow", "Bratislava", "Bucharest", "Sofia", "Riga", "Tallinn", "Vilnius", "Oslo",
          "Copenhagen", "Manchester", "Birmingham", "Glasgow", "Marseille", "Seville", "Naples", "Turin",
          "Casablanca", "Accra", "Karachi", "Jakarta", "Manila", "Bangkok", "Lima", "Bogota", "Santiago",
          "Sao Paulo", "Buenos Aires", "Montreal", "Vancouver", "Auckland", "Doha", "Riyadh", "Cairo", "Tunis"]
STREETS = ["Baker Street", "High Street", "Rue de Rivoli", "Oak Avenue", "King's Road", "Station Road",
           "Maple Drive", "Park Lane", "Via Roma", "Calle Mayor", "Church Lane", "Elm Street", "Victoria Road",
           "Sunset Boulevard", "Harbour Way", "Mill Lane", "Queen Street", "Cedar Court", "Bridge Street",
           "Avenue Louise", "Market Square", "Riverside Drive", "Grove Road", "Hill Crescent"]
STREETS_NUMBER_AFTER = ["Hauptstrasse", "Bahnhofstrasse", "Kastanienallee", "Prinsengracht", "Mariahilfer Strasse",
                        "Karl-Marx-Allee", "Ulica Dluga", "Storgatan"]
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December"]
BIC_COUNTRIES = ["DE", "FR", "GB", "IT", "ES", "NL", "BE", "CH", "AT", "PL", "SE", "IE", "PT", "LU", "US", "SG", "AE"]
IBAN_COUNTRIES = ["DE", "FR", "GB", "IT", "NL", "PL", "IE", "CH", "AE", "CY", "MT"]
COMPANIES = ["Nordea", "Santander", "Siemens", "Unilever", "Volvo", "Nokia", "Heineken", "Danske Bank", "Orange",
             "Repsol", "Philips", "Ericsson", "Adidas", "Renault", "Vodafone", "Barclays", "Ahold", "Fortum"]


@dataclass
class PiiText:
    text: str
    spans: list[tuple[int, int, str]] = field(default_factory=list)  # (start, end, entity type)
    template: str = ""

    def values(self) -> list[tuple[str, str]]:
        return [(self.text[s:e], t) for s, e, t in self.spans]


def _digits(rng: random.Random, n: int) -> str:
    return "".join(rng.choice("0123456789") for _ in range(n))


def _luhn_card(rng: random.Random) -> str:
    body = rng.choice(["4", "51", "52", "53", "54", "55"]) + _digits(rng, 14)
    body = body[:15]
    total = 0
    for i, c in enumerate(reversed(body)):
        d = int(c) * (2 if i % 2 == 0 else 1)
        total += d - 9 if d > 9 else d
    number = body + str((10 - total % 10) % 10)
    return rng.choice([number, " ".join(number[i:i + 4] for i in range(0, 16, 4)),
                       "-".join(number[i:i + 4] for i in range(0, 16, 4))])


def _aba(rng: random.Random) -> str:
    while True:
        d = [int(c) for c in _digits(rng, 9)]
        if (3 * (d[0] + d[3] + d[6]) + 7 * (d[1] + d[4] + d[7]) + d[2] + d[5] + d[8]) % 10 == 0 and d[0] in (0, 1, 2):
            return "".join(map(str, d))


def _bic(rng: random.Random) -> str:
    letters = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    bank = "".join(rng.choice(letters) for _ in range(4))
    loc = rng.choice(letters) + rng.choice(letters + "23456789")
    branch = rng.choice(["", "", "XXX", "".join(rng.choice(letters + "0123456789") for _ in range(3))])
    return bank + rng.choice(BIC_COUNTRIES) + loc + branch


def _phone(rng: random.Random) -> str:
    forms = [
        lambda: f"+44 20 {rng.randint(2000, 8999)} {_digits(rng, 4)}",      # London, some invalid for libphonenumber
        lambda: f"+44 7{_digits(rng, 3)} {_digits(rng, 6)}",
        lambda: f"+1 ({rng.randint(201, 989)}) {rng.randint(200, 999)}-{_digits(rng, 4)}",
        lambda: f"({rng.randint(201, 989)}) {rng.randint(200, 999)}-{_digits(rng, 4)}",
        lambda: f"+49 {rng.randint(30, 89)} {_digits(rng, 7)}",
        lambda: f"+33 {rng.randint(1, 9)} {_digits(rng, 2)} {_digits(rng, 2)} {_digits(rng, 2)} {_digits(rng, 2)}",
        lambda: f"020 {_digits(rng, 4)} {_digits(rng, 4)}",
        lambda: f"+39 0{rng.randint(2, 9)} {_digits(rng, 4)} {_digits(rng, 4)}",
        lambda: f"+48 {_digits(rng, 3)}-{_digits(rng, 3)}-{_digits(rng, 3)}",
        lambda: f"+65 {rng.randint(6, 9)}{_digits(rng, 3)} {_digits(rng, 4)}",
    ]
    return rng.choice(forms)()


def _dob(rng: random.Random) -> str:
    y, m, d = rng.randint(1940, 2004), rng.randint(1, 12), rng.randint(1, 28)
    return rng.choice([f"{d} {MONTHS[m - 1]} {y}", f"{MONTHS[m - 1]} {d}, {y}", f"{y}-{m:02d}-{d:02d}",
                       f"{d:02d}/{m:02d}/{y}", f"{d:02d}.{m:02d}.{y}"])


def _address(rng: random.Random) -> str:
    if rng.random() < 0.25:
        return f"{rng.choice(STREETS_NUMBER_AFTER)} {rng.randint(1, 180)}"
    number = str(rng.randint(1, 2400)) + rng.choice(["", "", "", "B", "a"])
    return f"{number} {rng.choice(STREETS)}"


def _person(rng: random.Random) -> str:
    return f"{rng.choice(FIRST)} {rng.choice(LAST)}" if rng.random() < 0.85 else \
        f"{rng.choice(FIRST)} {rng.choice('ABCDEFGHJKLMNPRST')}. {rng.choice(LAST)}"


def _email(rng: random.Random, person: str | None = None) -> str:
    name = (person or _person(rng)).lower().replace(" ", ".").replace("..", ".")
    name = re.sub(r"[^a-z.]", "", name)
    return f"{name}@{rng.choice(['mail.com', 'example.org', 'bank-client.net', 'post.eu'])}"


def _ip(rng: random.Random) -> str:
    return ".".join(str(rng.randint(1, 254)) for _ in range(4))


def _amount(rng: random.Random) -> str:
    return f"{rng.choice(['EUR', 'USD', 'GBP', 'CHF'])} {rng.randint(500, 250_000):,}"


VALUES = {
    "PERSON": _person, "LOCATION": lambda r: r.choice(CITIES), "IBAN_CODE": lambda r: iban(r.choice(IBAN_COUNTRIES), r),
    "SWIFT_CODE": _bic, "PHONE_NUMBER": _phone, "CREDIT_CARD": _luhn_card, "BANK_ACCOUNT": lambda r: _digits(r, 10),
    "US_SSN": lambda r: f"{r.randint(101, 665)}-{r.randint(10, 99)}-{r.randint(1000, 9999)}",
    "DATE_OF_BIRTH": _dob, "STREET_ADDRESS": _address, "EMAIL_ADDRESS": _email, "IP_ADDRESS": _ip,
    "ABA_ROUTING_NUMBER": _aba, "TAX_ID": lambda r: f"{r.randint(10, 99)}-{_digits(r, 7)}",
}

# {TYPE} is a planted value; {amount}, {company}, {date} are non-PII fillers the gate must leave alone
TEMPLATES = [
    "Alert: {PERSON} in {LOCATION} sent {amount} to IBAN {IBAN_CODE}.",
    "Alert: {PERSON} in {LOCATION} received {amount} from {company}.",
    "Wire {amount} to {IBAN_CODE}, BIC {SWIFT_CODE}, beneficiary {PERSON}.",
    "Beneficiary bank {SWIFT_CODE}; account holder {PERSON}; reference INV-{ref}.",
    "Payment instruction: {amount} to {SWIFT_CODE} / {IBAN_CODE} on {date}.",
    "KYC refresh for {PERSON}, born {DATE_OF_BIRTH}, resident at {STREET_ADDRESS}, {LOCATION}.",
    "Customer {PERSON} (DOB {DATE_OF_BIRTH}) asked to update the phone number to {PHONE_NUMBER}.",
    "Date of birth: {DATE_OF_BIRTH}. Name: {PERSON}. Email: {EMAIL_ADDRESS}.",
    "Call back {PERSON} on {PHONE_NUMBER} about the {amount} transfer of {date}.",
    "Client called from {PHONE_NUMBER} and confirmed the address {STREET_ADDRESS}, {LOCATION}.",
    "Card {CREDIT_CARD} was used from IP {IP_ADDRESS} in {LOCATION} on {date}.",
    "Declined: card ending {CREDIT_CARD}, holder {PERSON}, merchant {company}.",
    "Routing number {ABA_ROUTING_NUMBER}, account {BANK_ACCOUNT}, payee {PERSON}.",
    "ACH debit of {amount} from account {BANK_ACCOUNT} (routing {ABA_ROUTING_NUMBER}).",
    "Employer EIN {TAX_ID} paid {amount} to {PERSON} on {date}.",
    "SSN {US_SSN} on file for {PERSON}; identity check passed.",
    "Login to online banking for {PERSON} from {IP_ADDRESS} at {date}.",
    "Send the statement to {EMAIL_ADDRESS} and post a copy to {STREET_ADDRESS}, {LOCATION}.",
    "{PERSON} of {LOCATION} opened account {BANK_ACCOUNT} with {amount}.",
    "SAR draft: {PERSON}, {STREET_ADDRESS}, {LOCATION}, phone {PHONE_NUMBER}, structured {amount} in cash.",
    "Counterparty {PERSON} moved funds through {LOCATION} and {LOCATION} within two days.",
    "Reminder: {PERSON} (tel. {PHONE_NUMBER}) is travelling to {LOCATION} next week.",
    "{PERSON}'s salary from {company} lands in {IBAN_CODE} every month.",
    "Fraud team: {PERSON} reports card {CREDIT_CARD} stolen in {LOCATION}.",
    "Mortgage applicant {PERSON}, date of birth {DATE_OF_BIRTH}, employer {company}.",
    "Transfer from {PERSON} ({EMAIL_ADDRESS}) flagged: new device, IP {IP_ADDRESS}.",
    "BIC {SWIFT_CODE} rejected the payment of {amount} for {PERSON}.",
    "Standing order to {PERSON}, sort code account {BANK_ACCOUNT}, monthly {amount}.",
    "Please wire to {SWIFT_CODE} ({LOCATION}) for credit of {IBAN_CODE}.",
    "Note: {PERSON} moved to {STREET_ADDRESS} in {LOCATION} on {date}.",
]
NEGATIVES = [
    "{company} shares rose 4% on {date} after quarterly profit beat estimates.",
    "Net interest income at {company} reached {amount} in the third quarter.",
    "The central bank held rates on {date}; {company} said loan demand stayed weak.",
    "{company} will cut 1,200 jobs and book a {amount} restructuring charge.",
    "Quarterly revenue fell to {amount} as {company} lost market share.",
    "{company} agreed to buy a stake in {company} for {amount}, closing on {date}.",
    "Operating profit rose to {amount} from {amount}, the company said on {date}.",
    "Analysts expect {company} to report earnings per share of 1.24 on {date}.",
]


def _fill(template: str, rng: random.Random) -> PiiText:
    out, spans, pos = [], [], 0
    for m in re.finditer(r"\{(\w+)\}", template):
        out.append(template[pos:m.start()])
        key = m.group(1)
        start = sum(map(len, out))
        if key in VALUES:
            value = VALUES[key](rng)
            spans.append((start, start + len(value), key))
        elif key == "amount":
            value = _amount(rng)
        elif key == "company":
            value = rng.choice(COMPANIES)
        elif key == "date":
            value = f"{rng.randint(1, 28)} {rng.choice(MONTHS)} {rng.randint(2019, 2026)}"
        elif key == "ref":
            value = _digits(rng, 6)
        else:
            raise KeyError(key)
        out.append(value)
        pos = m.end()
    out.append(template[pos:])
    return PiiText("".join(out), spans, template)


def bank_pii_texts(n: int = 1000, seed: int = 0, negative_share: float = 0.15) -> list[PiiText]:
    """`n` labelled texts: templates cycled in a seeded order so every entity type is planted many times."""
    rng = random.Random(seed)
    items = []
    for i in range(n):
        if rng.random() < negative_share:
            items.append(_fill(rng.choice(NEGATIVES), rng))
        else:
            items.append(_fill(TEMPLATES[i % len(TEMPLATES)], rng))
    return items


def entity_types() -> list[str]:
    return sorted(VALUES)
