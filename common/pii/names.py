"""PERSON names from name lists, beside spaCy's NER.

The small English spaCy model (the only one the registry offers) misses many names: non-English ones above all,
and a lone first name ("Why is Natasja so impulsive?"). This recognizer adds what name lists know, in Presidio's
shape, from three PyPI packages:

- curated first names: the dictionary inside `gender-guesser` (about 46,000 names, many countries);
- first names of `names-dataset` ranked within `max_rank` in at least one country (gathered from public profiles,
  so noisier: "Apple" and "Sales" are there, which is why English words are set apart);
- last names: those of `names-dataset` ranked within `max_rank` in at least one country;
- `english-words` (web2, lower-case entries): a name that is also an English word ("Will", "Grant", "Crystal")
  counts only as the first word of a full name, never alone.

What it reports, on title-case words (and lower-case ones where both words of a full name are known names that are
not English words: "naomi ryan"):
- a full name, a known name then another (or a curated first name then any capitalised word that is not an English
  word: "Jouni Hahli"), an initial allowed between: score `FULL_NAME_SCORE`;
- a lone known name: `SINGLE_NAME_SCORE`;
- a lone capitalised word the lists do not know: `UNKNOWN_SCORE`, below the gate's threshold, so it counts only
  when a person word ("name", "Mr", "daughter"...) stands just before it (Presidio's context enhancement).
A lone curated first name that spaCy reads as a one-word place counts as a name unless it is a city, country or
state, or a place word ("in", "from"...) stands before it; a lone lower-case known name scores `UNKNOWN_SCORE` (a person word must
raise it). Never inside what spaCy calls a date or number; never right before a street word
("Lahtinen Road") or a company word ("Saarelainen Oy", "Amanda Capital").

names-dataset takes 10 s and about 2 GB to load, so the lists the recognizer needs are derived once, in a child
process, and cached as JSON under the model cache ($FEDFINGPT_CACHE or ~/.cache/fedfingpt).
"""

from __future__ import annotations

import functools
import json
import logging
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

log = logging.getLogger("fedfingpt.gate")

FULL_NAME_SCORE = 0.6
SINGLE_NAME_SCORE = 0.5
UNKNOWN_SCORE = 0.2
CACHE_FORMAT = 1
PACKAGES = ("names-dataset", "gender-guesser", "english-words")

# Presidio matches context words as substrings of the words around a finding, and of the finding itself, so short
# ones would fire everywhere ("dr" in "Drummelow" and "address", "ms" in "terms", "son" in "Johnson", "call" in
# "recall"): only words that rarely sit inside others
PERSON_CONTEXT = ["name", "called", "mr", "mrs", "mister", "madam", "maiden", "surname", "daughter", "wife",
                  "husband"]
# spaCy labels under which a capitalised word is not a person's name
NOT_A_PERSON = {"DATE", "TIME", "MONEY", "PERCENT", "CARDINAL", "ORDINAL", "QUANTITY", "GPE", "LOC", "FAC", "NORP",
                "LANGUAGE", "EVENT", "LAW"}
PLACES = {"GPE", "LOC", "NORP", "FAC"}  # spaCy readings a first name + surname pair outweighs
STREET_WORDS = {"street", "st", "road", "rd", "avenue", "ave", "lane", "ln", "drive", "dr", "boulevard", "blvd",
                "way", "court", "ct", "place", "pl", "square", "terrace", "parkway", "highway", "hwy", "turnpike",
                "plaza", "alley", "crescent", "close", "row", "walk", "ridge", "hill", "park", "gata", "vej",
                "strasse", "straße", "via", "rue"}
COMPANY_WORDS = {"oy", "oyj", "ab", "ag", "co", "corp", "corporation", "inc", "ltd", "llc", "plc", "sa", "nv", "bv",
                 "gmbh", "se", "asa", "as", "bank", "bancorp", "group", "holding", "holdings", "capital", "securities",
                 "partners", "financial", "fund", "funds", "research", "management", "advisors", "associates",
                 "company", "industries", "international", "technologies", "therapeutics", "pharmaceuticals",
                 "motors", "energy", "foods", "airlines", "trust", "insurance", "media", "mining", "resources",
                 "systems", "labs", "ventures", "investments", "markets", "mortgage"}
PLACE_WORDS = {"in", "from", "at", "near", "via", "into", "across", "outside", "inside"}  # not "to", "of": "said
# Maslin to Antonio", "the true gender of Mette"
LIST_WORDS = {",", "and", "or", "&"}
CALENDAR = {"january", "february", "march", "april", "may", "june", "july", "august", "september", "october",
            "november", "december", "jan", "feb", "mar", "apr", "jun", "jul", "aug", "sep", "sept", "oct", "nov",
            "dec", "monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday", "mon", "tue",
            "wed", "thu", "fri", "sat", "sun"}
_WORD = re.compile(r"[^\W\d_]+(?:['’-][^\W\d_]+)*")
_INITIAL = re.compile(r"[A-Z]\.?")
_SPEAKER = re.compile(r"([A-Z][^\W\d_]+):[\"“'‘]")  # a speaker's name glued to a quote: 'Alice:"I'm


class NameListsError(RuntimeError):
    pass


@dataclass(frozen=True)
class NameLists:
    curated: frozenset[str]  # gender-guesser's first names
    first: frozenset[str]  # names-dataset's first names within the rank
    last: frozenset[str]  # names-dataset's last names within the rank
    words: frozenset[str]  # lower-case English dictionary words

    def is_word(self, token: str) -> bool:
        low = token.lower()
        if low in self.words or low in CALENDAR:
            return True
        return any(low.endswith(s) and low[: -len(s)] in self.words for s in ("s", "es", "ed", "ing", "er", "ers"))

    def known(self, token: str) -> bool:
        """A name of any list that is not also an English word."""
        return any(t in s for t in (token, token.title()) for s in (self.curated, self.first, self.last)) \
            and not self.is_word(token)

    def opens_full_name(self, token: str) -> bool:
        """A curated first name (an English word too: "Crystal"), or any other known name."""
        return token in self.curated or self.known(token)


def _versions() -> str:
    try:
        return "-".join(f"{p}{metadata.version(p)}" for p in PACKAGES)
    except metadata.PackageNotFoundError as err:
        raise NameListsError(f"gate.person_names needs the package {err.name!r}: pip install {' '.join(PACKAGES)} "
                             "(scripts/setup.sh does), or set gate.person_names: false") from None


def cache_path(max_rank: int, root: Path | None = None) -> Path:
    from ...common.models import cache_root

    return (root or cache_root()) / "names" / f"names-v{CACHE_FORMAT}-r{max_rank}-{_versions()}.json"


def build(max_rank: int, out: Path) -> None:
    """Derive the name lists from the packages and write them to `out` (write, then rename)."""
    import gzip
    import pickle
    from importlib import resources

    curated, first, last = set(), set(), set()
    for line in resources.files("gender_guesser").joinpath("data/nam_dict.txt").read_text("utf-8").splitlines():
        if line[:1] in "#=" or len(line) < 30:
            continue
        name = line.split()[1]
        curated.update({name.replace("+", r) for r in ("", " ", "-")} if "+" in name else {name})
    nd = resources.files("names_dataset").joinpath("v3")
    for kind, into in (("first", first), ("last", last)):
        with gzip.open(nd.joinpath(f"{kind}_names.pkl.gz").open("rb")) as f:
            table = pickle.load(f)  # the package's own data file, read as its own loader reads it
        into.update(name for name, info in table.items() if info.get("rank") and min(info["rank"].values())
                    <= max_rank)
        del table
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=out.name, suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump({"format": CACHE_FORMAT, "max_rank": max_rank, "curated": sorted(curated), "first": sorted(first),
                   "last": sorted(last)}, f)
    os.replace(tmp, out)


def load_name_lists(max_rank: int, root: Path | None = None) -> NameLists:
    """The cached lists, derived first (in a child process: the source tables need about 2 GB) if not cached."""
    path = cache_path(max_rank, root)
    if not path.exists():
        log.info("deriving the person-name lists (rank <= %d) into %s, once (about 20 s)", max_rank, path)
        done = subprocess.run([sys.executable, "-m", __name__, str(max_rank), str(path)], capture_output=True,
                              text=True)
        if done.returncode != 0 or not path.exists():
            raise NameListsError(f"could not derive the person-name lists into {path}: {done.stderr.strip()[-800:]}")
    try:
        data = json.loads(path.read_text("utf-8"))
        if data.get("format") != CACHE_FORMAT or data.get("max_rank") != max_rank:
            raise ValueError("another format or rank")
        tables = [frozenset(data[k]) for k in ("curated", "first", "last")]
    except (ValueError, KeyError, TypeError) as err:
        raise NameListsError(f"{path} is not a name-list cache of this version ({err}); delete it and it is "
                             "derived again") from None
    from english_words import get_english_words_set

    words = frozenset(w for w in get_english_words_set(["web2"]) if w.islower())
    return NameLists(*tables, words)


@functools.lru_cache(maxsize=None)
def _shared_lists(max_rank: int) -> NameLists:
    return load_name_lists(max_rank)


def person_name_recognizer(max_rank: int):
    """A Presidio recognizer of PERSON built on the name lists (derived and cached on first use; read once per
    process, as every gate in it uses the same lists)."""
    from presidio_analyzer import AnalysisExplanation, EntityRecognizer, RecognizerResult

    lists = _shared_lists(max_rank)

    class PersonNameRecognizer(EntityRecognizer):
        def __init__(self) -> None:
            super().__init__(supported_entities=["PERSON"], name="PersonNameRecognizer", context=PERSON_CONTEXT)

        def load(self) -> None:
            pass

        def _result(self, start: int, end: int, score: float):
            return RecognizerResult(
                "PERSON", start, end, score,
                analysis_explanation=AnalysisExplanation(recognizer=self.name, original_score=score),
                recognition_metadata={RecognizerResult.RECOGNIZER_NAME_KEY: self.name,
                                      RecognizerResult.RECOGNIZER_IDENTIFIER_KEY: self.id})

        def analyze(self, text, entities, nlp_artifacts):
            if "PERSON" not in entities or nlp_artifacts is None:
                return []
            return [self._result(s, e, sc) for s, e, sc in find_names(nlp_artifacts.tokens, lists)]

    return PersonNameRecognizer()


def _capitalised(text: str) -> bool:
    return len(text) > 1 and text[0].isupper() and not text.isupper() and _WORD.fullmatch(text) is not None


def find_names(doc, lists: NameLists) -> list[tuple[int, int, float]]:
    """(start, end, score) of the names in a spaCy Doc, by the rules in this module's docstring."""
    blocked = {i for ent in doc.ents if ent.label_ in NOT_A_PERSON - PLACES for i in range(ent.start, ent.end)}
    places = {i for ent in doc.ents if ent.label_ in PLACES for i in range(ent.start, ent.end)}
    lone_places = {ent.start for ent in doc.ents if ent.label_ in PLACES and ent.end - ent.start == 1}
    n = len(doc)
    from .recognizers import _city_names, region_names

    cities = _city_names(50_000)
    regions = region_names()

    def usable(i: int, place_ok: bool = False) -> bool:
        return (i < n and i not in blocked and (place_ok or i not in places) and _capitalised(doc[i].text)
                and doc[i].lower_ not in COMPANY_WORDS)

    def ends_here(i: int) -> bool:  # no street or company word right after (a company word is capitalised:
        # "Saarelainen Oy", "Nordic AS", never "as" in "add Irenke Soros as a beneficiary")
        return i >= n or (doc[i].lower_ not in STREET_WORDS and not (doc[i].text[:1].isupper()
                                                                      and doc[i].lower_.rstrip(".") in COMPANY_WORDS))

    def after_place_word(i: int) -> bool:
        return i > 0 and doc[i - 1].lower_ in PLACE_WORDS

    def lower_name(i: int) -> bool:
        return i < n and i not in blocked and doc[i].text.islower() and len(doc[i].text) > 2 \
            and _WORD.fullmatch(doc[i].text) is not None and lists.known(doc[i].text)

    out: list[list] = []  # [first token, last token, start, end, score or None (a candidate only)]
    i = 0
    while i < n:
        # a first name and a surname outweigh spaCy's reading of the pair as a place or a nationality, unless the
        # pair is a city
        if usable(i, True) and lists.opens_full_name(doc[i].text):
            j = i + 1
            if j + 1 < n and _INITIAL.fullmatch(doc[j].text):
                j += 1
            if usable(j, True) and (lists.known(doc[j].text) or (doc[i].text in lists.curated
                                                                and not lists.is_word(doc[j].text))) \
                    and f"{doc[i].text} {doc[j].text}" not in cities:
                if ends_here(j + 1):
                    out.append([i, j, doc[i].idx, doc[j].idx + len(doc[j].text), FULL_NAME_SCORE])
                i = j + 1
                continue
        speaker = _SPEAKER.match(doc[i].text)  # 'Alice:"I'm' is one token to spaCy
        if speaker and lists.known(speaker.group(1)):  # spaCy labels such a token anything (CARDINAL)
            out.append([i, i, doc[i].idx, doc[i].idx + len(speaker.group(1)), SINGLE_NAME_SCORE])
        elif usable(i) and ends_here(i + 1) and (not lists.is_word(doc[i].text) or doc[i].text in lists.curated):
            # a first name that is also an English word ("Martin", "Key") only where a person word raises it
            out.append([i, i, doc[i].idx, doc[i].idx + len(doc[i].text),
                        UNKNOWN_SCORE if lists.is_word(doc[i].text) else
                        SINGLE_NAME_SCORE if lists.known(doc[i].text) else UNKNOWN_SCORE])
        # a lone curated first name that spaCy reads as a one-word place ("Why is Rebecca so impulsive?") is the
        # person's, unless it is a city, a country or a state, or a place word stands before it ("flew in from
        # Ariana"); surnames are left to spaCy there ("Frankfurt", "Seville" are known surnames and GeoNames spells
        # them "Frankfurt am Main", "Sevilla")
        elif i in lone_places and usable(i, True) and doc[i].text in lists.curated and not lists.is_word(doc[i].text) \
                and doc[i].text not in cities and doc[i].text not in regions and not after_place_word(i) \
                and ends_here(i + 1):
            out.append([i, i, doc[i].idx, doc[i].idx + len(doc[i].text), SINGLE_NAME_SCORE])
        # any other capitalised non-English word spaCy reads as a one-word place, not a known place: a name only in a
        # list of names (below)
        elif i in lone_places and usable(i, True) and not lists.is_word(doc[i].text) and doc[i].text not in cities \
                and doc[i].text not in regions and not after_place_word(i):
            out.append([i, i, doc[i].idx, doc[i].idx + len(doc[i].text), None])
        # lower-case names: a first name and a surname that are both known and neither an English word ("naomi
        # ryan", an initial allowed between) as a full name; a lone one only where a person word stands before it
        elif lower_name(i):
            j = i + 1 + (i + 2 < n and len(doc[i + 1].text) == 1 and doc[i + 1].text.isalpha())
            if lower_name(j) and ends_here(j + 1):
                out.append([i, j, doc[i].idx, doc[j].idx + len(doc[j].text), FULL_NAME_SCORE])
                i = j + 1
                continue
            # "they had 6: silvana, adam, kristina and caleb": another lower-case name one list word away
            listed = any(0 <= i + 2 * d < n and doc[i + d].lower_ in LIST_WORDS and lower_name(i + 2 * d)
                         for d in (-1, 1))
            out.append([i, i, doc[i].idx, doc[i].idx + len(doc[i].text),
                        SINGLE_NAME_SCORE if listed else UNKNOWN_SCORE])
        i += 1
    # names listed together ("our founders: Gerste, Johnson and Johnson", "Hleb, Sheila, Donna"): a weak one next
    # to a name the lists know, across a comma, "and" or "or", is a name too
    changed = True
    while changed:
        changed = False
        strong = [h for h in out if h[4] is not None and h[4] >= SINGLE_NAME_SCORE]
        ends, starts = {h[1] for h in strong}, {h[0] for h in strong}
        for h in out:
            if (h[4] is None or h[4] < SINGLE_NAME_SCORE) and (
                    (h[0] - 2 in ends and doc[h[0] - 1].lower_ in LIST_WORDS) or
                    (h[1] + 2 in starts and h[1] + 1 < n and doc[h[1] + 1].lower_ in LIST_WORDS)):
                h[4], changed = SINGLE_NAME_SCORE, True
    return [(s, e, score) for _, _, s, e, score in out if score is not None]


if __name__ == "__main__":  # the child process of load_name_lists: python -m ... MAX_RANK OUT
    build(int(sys.argv[1]), Path(sys.argv[2]))
