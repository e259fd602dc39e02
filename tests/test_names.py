"""The name-list recognizer of PERSON beside spaCy's NER (common/pii/names.py): real Presidio, the real
spaCy model and the real name lists, against a gate without it."""

import json
import shutil
from importlib import metadata

import pytest

from fedfingpt.common.config import GateConfig
from fedfingpt.common.pii import names


@pytest.fixture(scope="module")
def gates():
    from fedfingpt.common.pii.gate import ComplianceGate

    return ComplianceGate(GateConfig()), ComplianceGate(GateConfig(person_names=False))


@pytest.mark.parametrize("text,name", [
    ("Wire approved for Jouni Hahli yesterday.", "Jouni Hahli"),  # a curated first name, an unknown surname
    ("Transfer from Shane M Culp to savings.", "Shane M Culp"),  # with a middle initial
    ("Her maiden name is Brannvik.", "Brannvik"),  # unknown to the lists: the context word carries it
    ("Why is Rebecca so impulsive?", "Rebecca"),  # spaCy reads a lone first name as a place
    ("I want to add Irenke Sörös as a beneficiary to my account.", "Irenke Sörös"),  # "as" is no company word
    ("Please follow up with naomi ryan next month.", "naomi ryan"),  # a lower-case full name
    ("my name is vitoria", "vitoria"),  # spaCy's stop word "name" still raises a lone lower-case name
    ('Who are you?\nElizabeth:"I\'m the new clerk".', "Elizabeth"),  # a name glued to a quote by the tokenizer
])
def test_names_the_spacy_model_misses_are_redacted(gates, text, name):
    with_lists, without = gates
    assert "PERSON" not in without.scan(text, "analyst").found, "spaCy alone finds it: pick another example"
    r = with_lists.scan(text, "analyst")
    assert r.found.get("PERSON") == 1 and name not in r.text and "<PERSON>" in r.text, r


@pytest.mark.parametrize("text", [
    "Saarelainen Oy sold its stake.",  # a company word after the name
    "Amanda Capital raised a new fund.",
    "The branch on Lahtinen Road closed.",  # a street
    "Sales rose in December and on Friday.",  # English and calendar words
    "Will the Fed cut rates?",
    "Brannvik shares rose 5% in trading.",  # an unknown word with no person word before it
    "Drummelow shares rose 5% in trading.",  # context words match as substrings: "dr" must not be one
])
def test_company_street_calendar_and_english_words_are_not_names(gates, text):
    r = gates[0].scan(text, "analyst")
    assert "PERSON" not in r.found and r.text == text, r


def test_the_lists_are_derived_once_and_a_damaged_cache_is_named(gates, tmp_path, monkeypatch):
    cached = names.cache_path(2000)
    assert cached.exists(), "the gate fixture derived the lists"
    target = names.cache_path(2000, tmp_path)
    target.parent.mkdir(parents=True)
    shutil.copy(cached, target)

    def no_child(*a, **k):
        raise AssertionError("derived again although cached")

    monkeypatch.setattr(names.subprocess, "run", no_child)
    lists = names.load_name_lists(2000, tmp_path)
    assert "Jouni" in lists.curated and lists.known("Hahli") is False and lists.is_word("Sales")
    data = json.loads(target.read_text())
    data["format"] = 0
    target.write_text(json.dumps(data))
    with pytest.raises(names.NameListsError, match=str(target).replace("\\", "\\\\") + ".*delete it"):
        names.load_name_lists(2000, tmp_path)


def test_a_missing_package_names_itself_and_the_switch(monkeypatch, tmp_path):
    real = metadata.version

    def version(p):
        if p == "gender-guesser":
            raise metadata.PackageNotFoundError(p)
        return real(p)

    monkeypatch.setattr(names.metadata, "version", version)
    with pytest.raises(names.NameListsError, match="gender-guesser.*gate.person_names: false"):
        names.load_name_lists(2000, tmp_path)


@pytest.mark.parametrize("text,name,kind", [
    ("David is a very sympathetic person.", "David", "PERSON"),  # a city too (Panama), but no place word before it
    ("I'm so jealous! said the clerk to Logan", "Logan", "PERSON"),
    ("The branch in Austin opened a new desk.", "Austin", "LOCATION"),  # a place word: the city
    ("Exports from Georgia rose 4%.", "Georgia", "LOCATION"),  # a first name, and a state and a country
])
def test_a_lone_first_name_that_is_also_a_place_goes_by_the_word_before_it(gates, text, name, kind):
    r = gates[0].scan(text, "analyst")
    assert r.found.get(kind) == 1 and name not in r.text and f"<{kind}>" in r.text, r
