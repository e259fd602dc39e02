"""The compliance gate (real Presidio with the spaCy model, our financial recognizers, the policy), the
hash-chained audit trail and its verifier, and the development certificates."""

import json

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from fedfingpt.cli import main
from fedfingpt.common.certs import make_dev_certs
from fedfingpt.common.config import GateConfig, config_from_dict
from fedfingpt.server.inference.audit import AuditError, AuditLog, verify


@pytest.fixture(scope="module")
def gate():
    from fedfingpt.common.pii.gate import ComplianceGate

    return ComplianceGate(GateConfig())


@pytest.mark.parametrize("text,entity,value", [
    ("Please debit account 12345678901 today.", "BANK_ACCOUNT", "12345678901"),
    ("The routing number is 021000021.", "ABA_ROUTING_NUMBER", "021000021"),
    ("Beneficiary bank SWIFT code DEUTDEFF500.", "SWIFT_CODE", "DEUTDEFF500"),
    ("Employer EIN 12-3456789 on the form.", "TAX_ID", "12-3456789"),
    ("Pay IBAN DE89370400440532013000 now.", "IBAN_CODE", "DE89370400440532013000"),
    ("Card 4111 1111 1111 1111 was used.", "CREDIT_CARD", "4111 1111 1111 1111"),
    ("Maria Garcia opened the account.", "PERSON", "Maria Garcia"),
    ("Write to jane.doe@example.com please.", "EMAIL_ADDRESS", "jane.doe@example.com"),
])
def test_each_kind_of_pii_is_found_and_replaced(gate, text, entity, value):
    r = gate.scan(text, "analyst")
    assert r.found.get(entity) == 1 and r.allowed, r
    assert value not in r.text and "<" in r.text or "*" in r.text


def test_context_words_count_in_inflected_forms_with_the_lean_pipeline(gate):
    """The gate runs spaCy's NER without the tagger and parser; context words are then matched in the lower-cased
    words (a number alone stays below the threshold, so these findings need the context)."""
    nlp = gate.analyzer.nlp_engine.nlp["en"]
    assert "ner" in nlp.pipe_names and not {"parser", "tagger", "tok2vec"} & set(nlp.pipe_names)
    r = gate.scan("Debit both ACCOUNTS 12345678901 and 12345678902, routing 021000021.", "analyst")
    assert r.found == {"BANK_ACCOUNT": 2, "ABA_ROUTING_NUMBER": 1}, r.found
    bare = gate.scan("Ship 12345678901 units and 021000021 crates.", "analyst").found
    assert not {"BANK_ACCOUNT", "ABA_ROUTING_NUMBER"} & set(bare), bare


def test_numbers_without_context_and_company_news_pass_unchanged(gate):
    for text in ["Revenue grew 12 percent to EUR 1,200,000 in 2024 and 500000000 units shipped.",
                 "Nokia shares rose 5% after the quarterly report.", "Invoice 48213 was paid in March."]:
        r = gate.scan(text, "analyst")
        assert r.text == text and not r.found, r


def test_policy_actions_and_roles(tmp_path):
    from fedfingpt.common.pii.gate import ComplianceGate

    key = tmp_path / "key"
    key.write_bytes(b"k" * 32)
    cfg = config_from_dict({"gate": {"hash_key_file": str(key), "policy": {
        "default": "redact", "entities": {"CREDIT_CARD": "mask", "IBAN_CODE": "hash", "US_SSN": "block"},
        "roles": {"auditor": {"PERSON": "hash"}}}}}).gate
    g = ComplianceGate(cfg)
    r = g.scan("Card 4111 1111 1111 1111, IBAN DE89370400440532013000, John Smith.", "analyst")
    assert "***************1111" in r.text and "<IBAN_CODE:" in r.text and "<PERSON>" in r.text
    again = g.scan("IBAN DE89370400440532013000", "analyst").text
    assert again.split("<IBAN_CODE:")[1][:12] == r.text.split("<IBAN_CODE:")[1][:12], "keyed hash is stable"
    assert "<PERSON:" in g.scan("John Smith called.", "auditor").text
    blocked = g.scan("My SSN is 536-22-8726.", "analyst")
    assert not blocked.allowed and blocked.blocked == ["US_SSN"] and blocked.text == ""
    other = tmp_path / "key2"
    other.write_bytes(b"z" * 32)
    g2 = ComplianceGate(cfg.model_copy(update={"hash_key_file": str(other)}))
    assert g2.scan("IBAN DE89370400440532013000", "analyst").text != again, "another key, another hash"
    short = tmp_path / "short"
    short.write_bytes(b"k")
    with pytest.raises(ValueError, match="at least 16 bytes"):
        ComplianceGate(cfg.model_copy(update={"hash_key_file": str(short)}))


def _trail(tmp_path, n=5):
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path)
    for i in range(n):
        log.append(request_id=f"r{i}", caller="app-1", role="analyst", method="ClassifySentiment",
                   entities={"PERSON": i}, decision="allow", model_sha256="m" * 64, adapter_sha256="a" * 64,
                   latency_ms=12.5, status="OK")
    return path


def test_audit_chain_verifies_and_continues(tmp_path):
    path = _trail(tmp_path)
    assert verify(path).ok and verify(path).lines == 5
    AuditLog(path).append(request_id="r5", caller="c", role="r", method="m", entities={}, decision="allow",
                          status="OK")
    assert verify(path).ok and verify(path).lines == 6
    with pytest.raises(ValueError, match="audit records take only"):
        AuditLog(path).append(request_id="x", text="raw text must never be logged")


@pytest.mark.parametrize("tamper,needle", [
    ("edit", "line 3 was edited"),
    ("remove", "line 3 has sequence number 4"),
    ("reorder", "line 2 has sequence number 3"),
    ("truncate", "lines were cut off the end"),
    ("insert", "line 3"),
])
def test_audit_tampering_is_detected(tmp_path, tamper, needle, capsys):
    path = _trail(tmp_path)
    lines = path.read_text().splitlines()
    if tamper == "edit":
        rec = json.loads(lines[2])
        rec["entities"] = {"PERSON": 0}
        lines[2] = json.dumps(rec, sort_keys=True)
    elif tamper == "remove":
        del lines[2]
    elif tamper == "reorder":
        lines[1], lines[2] = lines[2], lines[1]
    elif tamper == "truncate":
        lines = lines[:-1]
    elif tamper == "insert":
        lines.insert(2, lines[1])
    path.write_text("\n".join(lines) + "\n")
    report = verify(path)
    assert not report.ok and needle in report.problem, report.problem
    assert main(["audit", "verify", str(path)]) == 1 and needle in capsys.readouterr().err
    with pytest.raises(AuditError, match="broken"):
        AuditLog(path)


def test_cli_verifies_an_intact_trail(tmp_path, capsys):
    path = _trail(tmp_path, 3)
    assert main(["audit", "verify", str(path)]) == 0 and "intact, 3 records" in capsys.readouterr().out


def test_dev_certificates_chain_to_their_ca(tmp_path):
    paths = make_dev_certs(tmp_path / "certs")
    ca = x509.load_pem_x509_certificate(paths["ca.pem"].read_bytes())
    server = x509.load_pem_x509_certificate(paths["server.pem"].read_bytes())
    client = x509.load_pem_x509_certificate(paths["client.pem"].read_bytes())
    for cert in (server, client):
        ca.public_key().verify(cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(cert.signature_hash_algorithm))
        assert cert.issuer == ca.subject
    sans = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "localhost" in sans.get_values_for_type(x509.DNSName)
    assert [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert (paths["server.key"].stat().st_mode & 0o777) == 0o600
    assert main(["certs", "dev", str(tmp_path / "c2")]) == 0 and (tmp_path / "c2" / "client.key").is_file()


def test_building_the_gate_logs_no_notice_about_other_languages(caplog):
    """Presidio notes every predefined recognizer of a language the gate does not load (11 lines at each start)."""
    import logging

    from fedfingpt.common.pii.gate import ComplianceGate

    with caplog.at_level(logging.INFO):
        ComplianceGate(GateConfig())
    notices = [r.getMessage() for r in caplog.records if r.name.startswith("presidio")]
    assert not [m for m in notices if "language is not supported" in m], notices
    assert logging.getLogger("presidio-analyzer").level == logging.WARNING  # its later warnings still show
