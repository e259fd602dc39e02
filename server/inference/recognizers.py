"""Financial PII recognizers in Presidio's shape (a PatternRecognizer per entity: patterns, context words, a
score, and a checksum where the format has one), registered beside Presidio's own (IBAN_CODE, CREDIT_CARD with
Luhn, US_SSN, ...). Pattern scores sit below the gate's threshold so that a bare number counts only when
context words ('account', 'routing', 'swift', ...) raise it."""

from __future__ import annotations

from presidio_analyzer import Pattern, PatternRecognizer

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


class SwiftBicRecognizer(PatternRecognizer):
    """SWIFT/BIC codes: 4-letter bank, ISO country, 2-character location, optional 3-character branch."""

    def __init__(self) -> None:
        super().__init__(
            supported_entity="SWIFT_CODE",
            patterns=[Pattern("bic", r"\b[A-Z]{4}[A-Z]{2}[A-Z0-9]{2}(?:[A-Z0-9]{3})?\b", 0.3)],
            context=["swift", "bic", "swift code", "bank identifier"],
        )

    def validate_result(self, pattern_text: str) -> bool | None:
        # None keeps the pattern's low score (context must raise it); False drops an impossible country code
        return None if pattern_text[4:6] in ISO_COUNTRIES else False


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


def financial_recognizers() -> list[PatternRecognizer]:
    return [BankAccountRecognizer(), SwiftBicRecognizer(), AbaRoutingRecognizer(), TaxIdRecognizer()]
