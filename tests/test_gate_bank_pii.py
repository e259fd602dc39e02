"""The gate on bank-style texts (real Presidio + spaCy + our recognizers): the PII kinds that used to reach the
model (BICs without a 'swift' word nearby, phone numbers libphonenumber rejects, cities in short alert templates,
dates of birth, street addresses), what must stay (other dates, upper-case English words), and no raw value of the
seeded bank-style set surviving the gate."""

import pytest

from fedfingpt.common.config import GateConfig
from fedfingpt.simulations.pii_bank_texts import bank_pii_texts, entity_types


@pytest.fixture(scope="module")
def gate():
    from fedfingpt.common.pii.gate import ComplianceGate

    return ComplianceGate(GateConfig())


@pytest.mark.parametrize("text,entity,value", [
    ("Payment instruction: EUR 204,564 to FQMLNLPB4CT today.", "SWIFT_CODE", "FQMLNLPB4CT"),
    ("Beneficiary bank OYMVATQS; reference INV-860836.", "SWIFT_CODE", "OYMVATQS"),
    ("Client called from +44 20 2915 4411 yesterday.", "PHONE_NUMBER", "+44 20 2915 4411"),  # invalid for libphonenumber
    ("Customer asked to update the number to +39 05 7608 4144.", "PHONE_NUMBER", "+39 05 7608 4144"),
    ("Alert: Grace Takahashi in Tallinn received CHF 7,931.", "LOCATION", "Tallinn"),
    ("Alert: Omar Haddad in Valencia sent USD 9,000.", "LOCATION", "Valencia"),
    ("KYC refresh, born 19.06.2001, file complete.", "DATE_OF_BIRTH", "19.06.2001"),
    ("Customer (DOB October 1, 1998) called.", "DATE_OF_BIRTH", "October 1, 1998"),
    ("Post a copy to 1512B Station Road, please.", "STREET_ADDRESS", "1512B Station Road"),
    ("Resident at Karl-Marx-Allee 58 since May.", "STREET_ADDRESS", "Karl-Marx-Allee 58"),
    ("The office is on Rue de Rivoli near the museum.", "STREET_ADDRESS", "Rue de Rivoli"),
])
def test_bank_style_pii_is_found_without_a_keyword_nearby(gate, text, entity, value):
    r = gate.scan(text, "analyst")
    assert r.found.get(entity) == 1, (r.found, r.text)
    assert value not in r.text


@pytest.mark.parametrize("text,kept", [
    ("Net income rose on 12 March 2024, the bank said.", "12 March 2024"),      # a date that is not a birth
    ("The BUSINESS segment and the HEADLINE figure improved.", "BUSINESS"),     # English words of a BIC's shape
    ("Profit was 1,200 million in the quarter.", "1,200"),
])
def test_what_carries_financial_meaning_stays(gate, text, kept):
    r = gate.scan(text, "analyst")
    assert kept in r.text, (r.found, r.text)


def test_no_raw_value_of_the_bank_style_set_survives_the_gate(gate):
    items = bank_pii_texts(260, seed=7)
    planted = {t for it in items for _, _, t in it.spans}
    assert planted == set(entity_types())
    leaks = [(t, it.text[s:e]) for it in items for s, e, t in it.spans
             if it.text[s:e] in gate.scan(it.text, "analyst").text]
    assert not leaks, leaks[:10]
