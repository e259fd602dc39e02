"""The inference service for real: a gRPC server on 127.0.0.1 (port 0), real Presidio with the spaCy model, a tiny
model. Redaction before the model, the output scan, the block policy, tokens and roles, TLS and mutual TLS,
deadlines and overload, the audit trail, no raw PII anywhere over the Presidio research set, and malformed
requests of every kind."""

import json
import logging
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedfingpt.api.sdk import InferenceClient, InferenceError, case_message
from fedfingpt.common.certs import make_dev_certs
from fedfingpt.common.config import config_from_dict
from fedfingpt.server.inference.audit import verify
from fedfingpt.server.inference.model_server import SERVED_CODE, ModelServer
from fedfingpt.server.inference.service import InferenceServer, ServeError
from fedfingpt.api.v1 import inference_pb2 as pb

TOKENS = {"analyst": "tok-analyst-0123456789", "auditor": "tok-auditor-0123456789", "dev": "tok-develop-0123456789"}


@pytest.fixture(scope="module")
def gate():
    from fedfingpt.common.config import GateConfig
    from fedfingpt.common.pii.gate import ComplianceGate

    return ComplianceGate(GateConfig())


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    return make_dev_certs(tmp_path_factory.mktemp("certs"))


def serving_config(tiny_config, tmp_path, certs, **serving):
    tokens = tmp_path / "tokens.yaml"
    tokens.write_text(yaml.safe_dump({TOKENS["analyst"]: {"caller": "app-1", "role": "analyst"},
                                      TOKENS["auditor"]: {"caller": "aud-1", "role": "auditor"},
                                      TOKENS["dev"]: {"caller": "dev-1", "role": "developer"}}))
    cfg = tiny_config.model_dump(mode="json")
    cfg["serving"] = {"port": 0, "tokens_file": str(tokens), "tls_cert": str(certs["server.pem"]),
                      "tls_key": str(certs["server.key"]), "audit_log": str(tmp_path / "audit.jsonl"),
                      "max_wait_ms": 2, "max_length": tiny_config.data.max_length, "bf16_autocast": False, **serving}
    return config_from_dict(cfg).service()  # the serving side's sections: what the service reads


class Running:
    def __init__(self, cfg, gate, model=None):
        self.cfg = cfg
        self.server = InferenceServer(cfg, model=model, gate=gate).start()
        self.target = f"127.0.0.1:{self.server.port}"

    def client(self, who="analyst", certs=None, **kw):
        if self.cfg.serving.insecure:
            return InferenceClient(self.target, TOKENS[who], insecure=True, **kw)
        return InferenceClient(self.target, TOKENS[who], ca_cert=str(certs["ca.pem"]), **kw)

    def stop(self):
        self.server.stop(0.5)


@pytest.fixture
def running(tiny_config, tmp_path, certs, gate):
    r = Running(serving_config(tiny_config, tmp_path, certs), gate)
    yield r
    r.stop()


def test_redaction_happens_before_the_model_and_the_audit_holds_no_pii(running, certs, tmp_path):
    running.server.model.seen_prompts = []
    texts = ["Maria Garcia moved 50,000 from IBAN DE89370400440532013000 to account 12345678901.",
             "Profits at the bank rose sharply in the third quarter."]
    with running.client(certs=certs) as c:
        out = c.classify(texts)
    assert len(out.results) == 2 and all(abs(sum(r.probabilities.values()) - 1) < 1e-5 for r in out.results)
    assert out.results[0].gate.entities["PERSON"] == 1 and out.results[0].gate.entities["IBAN_CODE"] == 1
    seen = "\n".join(running.server.model.seen_prompts)
    for raw in ("Maria Garcia", "DE89370400440532013000", "12345678901"):
        assert raw not in seen
    assert "<PERSON>" in seen and "Profits at the bank rose sharply" in seen
    # the service scores exactly as evaluation does (same formatter, same labels)
    from fedfingpt.common.predict import label_logprobs, softmax
    from fedfingpt.common.tasks.sentiment_data import LABELS

    m = running.server.model
    want = softmax(label_logprobs(m.model, m.tokenizer, m.seen_prompts[-1:], LABELS, max_length=96,
                                  bf16=running.cfg.serving.bf16_autocast))[0]  # the served dtype, pinned to fp32
    got = [out.results[1].probabilities[lab] for lab in LABELS]
    assert np.allclose(got, want, atol=1e-4), (got, want)
    trail = Path(running.cfg.serving.audit_log)
    assert verify(trail).ok
    record = json.loads(trail.read_text().splitlines()[-1])
    assert record["method"] == "ClassifySentiment" and record["caller"] == "app-1" and record["entities"]["PERSON"] == 1
    assert "Maria" not in trail.read_text() and "DE8937" not in trail.read_text()


def test_block_policy_refuses_and_says_why(running, certs):
    with running.client(certs=certs) as c, pytest.raises(InferenceError) as err:
        c.classify(["My SSN is 536-22-8726, please update it."])
    assert err.value.code == grpc.StatusCode.PERMISSION_DENIED and "US_SSN" in err.value.message
    assert "536-22" not in err.value.message
    last = json.loads(Path(running.cfg.serving.audit_log).read_text().splitlines()[-1])
    assert last["decision"] == "block" and last["status"] == "PERMISSION_DENIED"


def test_a_blocked_item_is_answered_by_itself_and_the_others_are_scored(running, certs):
    """One text of three holds an SSN: that item is PERMISSION_DENIED with its index and the type, the other two
    are scored; with gate.policy.on_block=request, or when every item is blocked, the whole request is refused."""
    texts = ["Profits rose sharply.", "My SSN is 536-22-8726, please update it.", "Sales fell."]
    with running.client(certs=certs) as c:
        out = c.classify(texts)
        assert [r.index for r in out.results] == [0, 1, 2]
        assert [r.status for r in out.results] == ["OK", "PERMISSION_DENIED", "OK"]
        assert list(out.results[1].gate.blocked) == ["US_SSN"] and not out.results[1].label
        assert out.results[0].label and abs(sum(out.results[2].probabilities.values()) - 1) < 1e-5
        with pytest.raises(InferenceError) as err:
            c.classify([texts[1], "SSN 219-09-9999 on file."])
        assert err.value.code == grpc.StatusCode.PERMISSION_DENIED and "item 1: US_SSN" in err.value.message
    running.cfg.gate.policy.on_block = "request"
    try:
        with running.client(certs=certs) as c, pytest.raises(InferenceError) as err:
            c.classify(texts)
        assert err.value.code == grpc.StatusCode.PERMISSION_DENIED and "item 1 contains US_SSN" in err.value.message
    finally:
        running.cfg.gate.policy.on_block = "item"


def test_tokens_and_roles(running, certs):
    bare = InferenceClient(running.target, "not-a-token-at-all-xx", ca_cert=str(certs["ca.pem"]))
    with pytest.raises(InferenceError) as err:
        bare.classify(["hello there"])
    assert err.value.code == grpc.StatusCode.UNAUTHENTICATED and "bearer token" in err.value.message
    with running.client("auditor", certs=certs) as c:
        with pytest.raises(InferenceError) as err:
            c.classify(["hello there"])
        assert err.value.code == grpc.StatusCode.PERMISSION_DENIED and "role 'auditor'" in err.value.message
        info = c.model_info()
    assert info.api_version == "fedfingpt.v1" and info.base_sha256 and "PERSON" in info.gate_entities


def test_tls_is_required_and_mutual_tls_checks_the_client(tiny_config, tmp_path, certs, gate):
    other = make_dev_certs(tmp_path / "other")
    r = Running(serving_config(tiny_config, tmp_path, certs, client_ca=str(certs["ca.pem"])), gate)
    try:
        with InferenceClient(r.target, TOKENS["analyst"], ca_cert=str(other["ca.pem"]),
                             client_cert=str(certs["client.pem"]), client_key=str(certs["client.key"]),
                             timeout=5) as c, pytest.raises(InferenceError) as err:
            c.classify(["hello"])  # the server's certificate is not from the CA this client trusts
        assert err.value.code == grpc.StatusCode.UNAVAILABLE
        with r.client(certs=certs, timeout=5) as c, pytest.raises(InferenceError) as err:
            c.classify(["hello"])  # no client certificate
        assert err.value.code == grpc.StatusCode.UNAVAILABLE
        with r.client(certs=certs, client_cert=str(certs["client.pem"]), client_key=str(certs["client.key"])) as c:
            assert c.classify(["Sales fell."]).results[0].label in ("negative", "neutral", "positive")
    finally:
        r.stop()
    with pytest.raises(ServeError, match="serving.tls_cert"):
        InferenceServer(serving_config(tiny_config, tmp_path, certs, tls_cert=None), gate=gate)
    with pytest.raises(ServeError, match="tokens_file is not set"):
        InferenceServer(serving_config(tiny_config, tmp_path, certs, tokens_file=None), gate=gate)


class SlowModel(ModelServer):
    def _score(self, prompts, labels):
        time.sleep(1.0)
        return super()._score(prompts, labels)


def test_deadlines_and_overload(tiny_config, tmp_path, certs, gate):
    cfg = serving_config(tiny_config, tmp_path, certs, max_concurrent=1)
    r = Running(cfg, gate, model=SlowModel(cfg))
    try:
        with r.client(certs=certs) as c:
            with pytest.raises(InferenceError) as err:
                c.classify(["Profits rose."], timeout=0.3)
            assert err.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
            time.sleep(1.2)  # let the slow batch finish
            results = {}

            def long_call():
                with r.client(certs=certs) as c2:
                    results["first"] = c2.classify(["Profits rose."], timeout=10).results[0].label

            t = threading.Thread(target=long_call)
            t.start()
            time.sleep(0.3)
            with pytest.raises(InferenceError) as err:
                c.classify(["Sales fell."], timeout=10)
            assert err.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED and "limit of 1" in err.value.message
            t.join(15)
            assert results["first"] in ("negative", "neutral", "positive")
    finally:
        r.stop()
    statuses = [json.loads(line)["status"] for line in Path(cfg.serving.audit_log).read_text().splitlines()]
    assert "DEADLINE_EXCEEDED" in statuses and "RESOURCE_EXHAUSTED" in statuses and verify(cfg.serving.audit_log).ok


def test_every_request_in_flight_joins_a_batch_and_the_next_is_refused(tiny_config, tmp_path, certs, gate):
    """Fewer gRPC workers than max_concurrent must neither cap the batches nor queue requests past the limit."""
    cfg = serving_config(tiny_config, tmp_path, certs, max_concurrent=3, workers=1, max_wait_ms=300)
    r = Running(cfg, gate, model=SlowModel(cfg))
    try:
        labels = []

        def call():
            with r.client(certs=certs) as c:
                labels.append(c.classify(["Profits rose."], timeout=20).results[0].label)

        threads = [threading.Thread(target=call) for _ in range(3)]
        for t in threads:
            t.start()
        time.sleep(0.8)  # all three in flight: one batch of 3 in the slow model
        with r.client(certs=certs) as c, pytest.raises(InferenceError) as err:
            c.classify(["Sales fell."], timeout=20)
        assert err.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED and "limit of 3" in err.value.message
        for t in threads:
            t.join(20)
        assert len(labels) == 3 and r.server.model.batcher.batches == [3]
    finally:
        r.stop()


class ChattyModel(ModelServer):
    """Stands in for a model that emits PII (a tiny random model never would): the real gate must catch it."""

    def stream(self, prompt, max_new_tokens):
        for piece in ["The customer ", "John ", "Smith can be ", "reached at john.smith", "@example.com ",
                      "about the refund of the ", "disputed charge today."]:
            yield piece


def test_output_scan_catches_pii_the_model_emits(tiny_config, tmp_path, certs, gate):
    cfg = serving_config(tiny_config, tmp_path, certs)
    r = Running(cfg, gate, model=ChattyModel(cfg))
    try:
        with r.client("dev", certs=certs) as c:
            chunks = list(c.generate("Summarise the case.", "A refund was requested.", max_new_tokens=16))
    finally:
        r.stop()
    text = "".join(ch.text for ch in chunks)
    assert chunks[-1].done and "John Smith" not in text and "john.smith@example.com" not in text
    assert "<PERSON>" in text and "<EMAIL_ADDRESS>" in text and "refund" in text
    assert chunks[-1].gate.entities["PERSON"] >= 1


def test_screening_passes_narratives_through_the_gate(running, certs):
    from fedfingpt.common.tasks.aml_data import build_cases
    from fedfingpt.common.tasks.aml_generator import generate

    cases = build_cases(generate())[:3]
    running.server.model.seen_prompts = []
    with running.client(certs=certs) as c:
        out = c.screen([case_message(x) for x in cases])
    assert len(out.results) == 3 and all(0 <= r.risk_score <= 100 for r in out.results)
    seen = "\n".join(running.server.model.seen_prompts)
    for case in cases:  # every account number (an IBAN with valid check digits) is caught before the model
        assert not [a for a in case.accounts if a in seen]
    assert all(r.gate.entities["IBAN_CODE"] >= 1 and r.gate.entities["PERSON"] >= 1 for r in out.results)
    assert "<PERSON>" in seen  # company names stay (gate.ignore: ORGANIZATION), people's names do not


def test_screening_reports_the_calibrated_risk_and_a_reason_made_of_the_cases_facts(running, certs):
    """With a calibration (aml_calibration.json beside the adapter) the risk score is its probability and the flag
    its threshold; the reason is the case's own facts for the decision, faithful by the automatic check."""
    from fedfingpt.common.tasks.aml_calibration import Calibration
    from fedfingpt.common.tasks.aml_data import build_cases
    from fedfingpt.common.tasks.aml_features import reason_problems
    from fedfingpt.common.tasks.aml_generator import generate

    cases = build_cases(generate())[:3]
    for b, flagged in ((3.0, True), (-3.0, False)):  # a = 0: every case gets sigmoid(b), whatever the model says
        running.server.servicer.calibration = Calibration(0.0, b, 0.5, 1.0, 1, 1)
        with running.client(certs=certs) as c:
            out = c.screen([case_message(x) for x in cases])
        want = 1 / (1 + np.exp(-b))
        for case, r in zip(cases, out.results):
            assert r.probability == pytest.approx(want) and r.risk_score == round(100 * want)
            assert r.suspicious is flagged and (r.typology != "none") is flagged
            assert reason_problems(case, r.reason) == [], r.reason


def test_an_oversized_account_name_is_refused_before_the_gate_and_frees_its_slot(running, certs):
    """A screening case with a 1,000,100-character account name (under the 1 MiB message limit) once made spaCy
    raise between taking a slot and giving it back; 33 of them left every method RESOURCE_EXHAUSTED. Now it is
    refused by name before the gate reads it, audited, and its slot is free again."""
    from fedfingpt.common.tasks.aml_data import build_cases
    from fedfingpt.common.tasks.aml_generator import generate

    case = case_message(build_cases(generate())[0])
    case.accounts[0].name = "A" * 1_000_100
    scanned = []
    real_scan = running.server.gate.scan
    running.server.gate.scan = lambda text, role: scanned.append(len(text)) or real_scan(text, role)
    try:
        with running.client(certs=certs) as c:
            for _ in range(running.cfg.serving.max_concurrent + 2):
                with pytest.raises(InferenceError) as err:
                    c.screen([case])
                assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT
                assert "cases.accounts.name" in err.value.message and "max_field_chars" in err.value.message
            assert not scanned, "the gate never saw the oversized request"
            assert running.server.servicer._slots._value == running.cfg.serving.max_concurrent
            assert c.classify(["Profits rose."]).results[0].label in ("negative", "neutral", "positive")
    finally:
        running.server.gate.scan = real_scan
    last = json.loads(Path(running.cfg.serving.audit_log).read_text().splitlines()[-2])
    assert last["method"] == "ScreenTransactions" and last["status"] == "INVALID_ARGUMENT"


def test_an_internal_error_answers_internal_with_a_request_id_and_frees_its_slot(running, certs, caplog):
    """Whatever raises inside a request (here the gate, with the input quoted in its message), the caller gets
    INTERNAL with a request id and no internal text, the log a line without the text, the audit trail a line, and
    the slot comes back: more failing requests than slots leave the server serving."""
    secret = "Jonathan Quarrington-Smythe"

    def broken(text, role):
        raise ValueError(f"[E088] Text of length {len(text)} exceeds maximum: {text}")

    real_scan = running.server.gate.scan
    running.server.gate.scan = broken
    try:
        with running.client(certs=certs) as c, caplog.at_level(logging.INFO):
            for _ in range(running.cfg.serving.max_concurrent + 2):
                with pytest.raises(InferenceError) as err:
                    c.classify([f"{secret} sold his shares."])
                assert err.value.code == grpc.StatusCode.INTERNAL and "request id" in err.value.message
                assert "E088" not in err.value.message and secret not in err.value.message
    finally:
        running.server.gate.scan = real_scan
    assert running.server.servicer._slots._value == running.cfg.serving.max_concurrent
    with running.client(certs=certs) as c:
        assert len(c.classify(["Profits rose."]).results) == 1
    assert secret not in caplog.text and "ValueError" in caplog.text
    trail = Path(running.cfg.serving.audit_log).read_text().splitlines()
    assert sum(json.loads(ln)["status"] == "INTERNAL" for ln in trail) == running.cfg.serving.max_concurrent + 2


def test_generate_refuses_a_negative_token_count(tiny_config, tmp_path, certs, gate):
    r = Running(serving_config(tiny_config, tmp_path, certs), gate)
    try:
        with r.client("dev", certs=certs) as c, pytest.raises(InferenceError) as err:
            list(c.generate("Summarise.", "Profits rose.", max_new_tokens=-5))
        assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT and "max_new_tokens=-5" in err.value.message
    finally:
        r.stop()


def test_a_changed_adapter_is_refused_at_start(tiny_config, tmp_path, certs):
    from fedfingpt.common.adapter import AdapterError, save_adapter
    from fedfingpt.common.models import attach_lora, load_base_model

    loaded = load_base_model(tiny_config.model)
    folder = save_adapter(attach_lora(loaded.model, tiny_config.lora), tmp_path / "adapter", base_id=loaded.base_id,
                          base_sha256=loaded.base_sha256)
    weights = folder / "adapter_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-8:] = bytes(b ^ 0xFF for b in data[-8:])  # flip the last bytes (lora_B starts at zero)
    weights.write_bytes(bytes(data))
    cfg = serving_config(tiny_config, tmp_path, certs, adapter=str(folder))
    with pytest.raises(AdapterError, match="does not match the manifest"):
        ModelServer(cfg)


def test_no_raw_pii_reaches_the_audit_trail_or_logs_over_the_presidio_research_set(
        tiny_config, tmp_path, certs, gate, data_dir, caplog):
    records = json.loads((data_dir / "pii" / "presidio_research" / "synth_dataset_v2.json").read_text())
    cfg = serving_config(tiny_config, tmp_path, certs, insecure=True, max_items=64)
    r = Running(cfg, gate)
    caplog.set_level(logging.DEBUG)
    try:
        with r.client() as c:
            for i in range(0, len(records), 64):
                batch = [x["full_text"] for x in records[i: i + 64]]
                try:
                    c.classify(batch, timeout=120)
                except InferenceError as err:
                    assert err.code == grpc.StatusCode.PERMISSION_DENIED  # a blocked type (an SSN) in the batch
    finally:
        r.stop()
    trail = Path(cfg.serving.audit_log).read_text()
    logs = caplog.text
    values = {s["entity_value"] for x in records for s in x["spans"] if len(s["entity_value"]) >= 6}
    leaked = [v for v in values if v in trail or v in logs]
    where = [line[:300] for line in logs.splitlines() if any(v in line for v in leaked[:3])]
    assert not leaked, (leaked[:5], where[:3])
    assert verify(cfg.serving.audit_log).ok and len(trail.splitlines()) == (len(records) + 63) // 64


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(payload=st.one_of(
    st.binary(max_size=2048),
    st.lists(st.text(max_size=300), max_size=80).map(lambda t: pb.ClassifySentimentRequest(texts=t).SerializeToString()),
    st.builds(lambda n, k: pb.ClassifySentimentRequest(texts=["x" * n], kind=k).SerializeToString(),
              st.integers(0, 20000), st.sampled_from(["", "news", "tweet", "poem", "\x00"])),
))
def test_malformed_requests_get_a_status_not_a_crash(hypothesis_server, payload):
    channel, target = hypothesis_server
    call = channel.unary_unary("/fedfingpt.v1.Inference/ClassifySentiment")
    try:
        call(payload, metadata=(("authorization", f"Bearer {TOKENS['analyst']}"),), timeout=30)
    except grpc.RpcError as err:  # bytes that are no message: INVALID_ARGUMENT too, never INTERNAL
        assert err.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.PERMISSION_DENIED,
                              grpc.StatusCode.RESOURCE_EXHAUSTED), err


def test_undecodable_requests_are_refused_audited_and_logged_once(running, certs, caplog):
    """Bytes that are no message: INVALID_ARGUMENT naming the type (not INTERNAL), an audit line each, and one
    log line for a burst of them (no traceback per request for anyone to flood the log with)."""
    creds = grpc.ssl_channel_credentials(root_certificates=certs["ca.pem"].read_bytes())
    caplog.set_level(logging.DEBUG)
    with grpc.secure_channel(running.target, creds) as ch:
        call = ch.unary_unary("/fedfingpt.v1.Inference/ScreenTransactions")
        for _ in range(5):
            with pytest.raises(grpc.RpcError) as err:
                call(b"\xff\xff\xff\x0f\x01", metadata=(("authorization", f"Bearer {TOKENS['analyst']}"),), timeout=10)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "not a valid fedfingpt.v1.ScreenTransactionsRequest" in err.value.details()
    lines = [json.loads(x) for x in Path(running.cfg.serving.audit_log).read_text().splitlines()]
    assert [x["status"] for x in lines if x["method"] == "ScreenTransactions"] == ["INVALID_ARGUMENT"] * 5
    logged = [r for r in caplog.records if "not a fedfingpt.v1.ScreenTransactionsRequest" in r.getMessage()
              or "deserializ" in r.getMessage().lower()]
    assert len(logged) == 1 and not any(r.exc_info for r in logged)


_text = st.text(max_size=40) | st.builds(lambda n: "A" * n, st.integers(0, 300_000))
_tx = st.builds(pb.Transaction, id=_text, src=_text, dst=_text,
                amount=st.floats(allow_nan=True, allow_infinity=True), currency=_text,
                timestamp=st.sampled_from(["2024-03-01T10:00:00", "", "not a date", "2024-13-45T99:99"]) | _text,
                payment_format=_text)
_case = st.builds(pb.AmlCase, focus=_text, accounts=st.lists(st.builds(pb.Account, id=_text, bank=_text, name=_text,
                                                                         country=_text), max_size=4),
                  transactions=st.lists(_tx, max_size=6))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(method=st.sampled_from(["ScreenTransactions", "Generate"]), cases=st.lists(_case, max_size=3),
       instruction=_text, text=_text, tokens=st.integers(-10, 10_000))
def test_every_rpc_field_fuzzed_gets_a_status_and_frees_its_slot(hypothesis_server, method, cases, instruction,
                                                                 text, tokens):
    """Every string field of ScreenTransactions and Generate, from empty to 300,000 characters, numbers out of
    range: each request is answered with a status, and the fixture checks afterwards that every slot is free."""
    channel, _ = hypothesis_server
    meta = (("authorization", f"Bearer {TOKENS['dev']}"),)
    try:
        if method == "ScreenTransactions":
            req = pb.ScreenTransactionsRequest(cases=cases)
            if req.ByteSize() > 1 << 16:
                return  # past the message limit, gRPC itself refuses it before our code runs
            channel.unary_unary(f"/fedfingpt.v1.Inference/{method}", request_serializer=lambda m: m.SerializeToString(),
                                response_deserializer=pb.ScreenTransactionsResponse.FromString)(
                req, metadata=meta, timeout=60)
        else:
            req = pb.GenerateRequest(instruction=instruction, input=text, max_new_tokens=tokens)
            if req.ByteSize() > 1 << 16:
                return
            list(channel.unary_stream(f"/fedfingpt.v1.Inference/{method}",
                                      request_serializer=lambda m: m.SerializeToString(),
                                      response_deserializer=pb.GenerateChunk.FromString)(req, metadata=meta,
                                                                                          timeout=60))
    except grpc.RpcError as err:
        assert err.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.PERMISSION_DENIED,
                              grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.INTERNAL), err
        if err.code() == grpc.StatusCode.INTERNAL:
            assert "request id" in (err.details() or ""), err.details()  # no internal text


@pytest.fixture(scope="module")
def hypothesis_server(tmp_path_factory, gate, certs):
    from fedfingpt.common.config import config_from_dict as cfd

    tmp = tmp_path_factory.mktemp("hyp")
    base = {"name": "tiny", "output_dir": str(tmp / "runs"),
            "model": {"base": "tiny-random", "cache_dir": __import__("os").environ["FEDFINGPT_TEST_CACHE"]},
            "lora": {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]},
            "data": {"max_length": 96}, "eval": {"batch_size": 8, "bf16_autocast": False}}
    tokens = tmp / "tokens.yaml"
    tokens.write_text(yaml.safe_dump({TOKENS["analyst"]: {"caller": "fuzz", "role": "analyst"},
                                      TOKENS["dev"]: {"caller": "fuzz-dev", "role": "developer"}}))
    cfg = cfd({**base, "serving": {"port": 0, "insecure": True, "tokens_file": str(tokens), "max_new_tokens": 4,
                                   "audit_log": str(tmp / "audit.jsonl"), "max_message_bytes": 1 << 16,
                                   "max_length": 96, "bf16_autocast": False}}).service()
    server = InferenceServer(cfg, gate=gate).start()
    channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
    yield channel, f"127.0.0.1:{server.port}"
    # still healthy after everything thrown at it
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service="fedfingpt.v1.Inference"))
    assert status.status == health_pb2.HealthCheckResponse.SERVING
    assert server.servicer._slots._value == cfg.serving.max_concurrent, "a request kept its slot"
    normal = channel.unary_unary("/fedfingpt.v1.Inference/ClassifySentiment",
                                 request_serializer=lambda m: m.SerializeToString(),
                                 response_deserializer=pb.ClassifySentimentResponse.FromString)(
        pb.ClassifySentimentRequest(texts=["Profits rose."]), metadata=(("authorization", f"Bearer {TOKENS['analyst']}"),),
        timeout=30)
    assert len(normal.results) == 1
    channel.close()
    server.stop(0.5)
    assert verify(cfg.serving.audit_log).ok


def test_health_and_reflection(running, certs):
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    creds = grpc.ssl_channel_credentials(root_certificates=certs["ca.pem"].read_bytes())
    with grpc.secure_channel(running.target, creds) as ch:
        ok = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service="fedfingpt.v1.Inference"))
        assert ok.status == health_pb2.HealthCheckResponse.SERVING
        replies = reflection_pb2_grpc.ServerReflectionStub(ch).ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
        names = [s.name for s in next(replies).list_services_response.service]
        # grpc.reflection.v1 (grpcurl's first choice): the same messages on the v1 method path
        v1 = ch.stream_stream("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
                              request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
                              response_deserializer=reflection_pb2.ServerReflectionResponse.FromString)
        found = next(v1(iter([reflection_pb2.ServerReflectionRequest(
            file_containing_symbol="fedfingpt.v1.Inference")]))).file_descriptor_response.file_descriptor_proto
    assert "fedfingpt.v1.Inference" in names and "grpc.health.v1.Health" in names
    assert "grpc.reflection.v1.ServerReflection" in names and "grpc.reflection.v1alpha.ServerReflection" in names
    assert found and b"ClassifySentiment" in found[0]


def test_generated_stubs_match_the_proto(tmp_path):
    from fedfingpt.api import stubs

    for path in stubs.generate(tmp_path):
        committed = stubs.OUT / path.name
        assert committed.read_text() == path.read_text(), f"{committed} is stale: run python -m " \
                                                          "fedfingpt.api.stubs"


def _sealed_setup(tiny_config, tmp_path, certs):
    from fedfingpt.common.adapter import get_lora_arrays, save_adapter, set_lora_arrays
    from fedfingpt.common.models import attach_lora, load_base_model
    from fedfingpt.enclave.serving import make_enclave, seal_adapter_file

    loaded = load_base_model(tiny_config.model)
    model = attach_lora(loaded.model, tiny_config.lora)
    arrays = {k: v + 0.01 for k, v in get_lora_arrays(model).items()}  # a trained-looking adapter (B not zero)
    set_lora_arrays(model, arrays)
    folder = save_adapter(model, tmp_path / "adapter", base_id=loaded.base_id, base_sha256=loaded.base_sha256)
    cfg = serving_config(tiny_config, tmp_path, certs, enclave="software",
                         enclave_identity=str(tmp_path / "enclave.identity"), adapter=str(tmp_path / "a.sealed"))
    sealed = seal_adapter_file(make_enclave(cfg, loaded.base_sha256, SERVED_CODE), folder, tmp_path / "a.sealed")
    return cfg, folder, sealed, loaded.base_sha256


def test_attested_server_with_a_sealed_adapter(tiny_config, tmp_path, certs, gate):
    from fedfingpt.api.sdk import AttestationError
    from fedfingpt.common.adapter import read_manifest
    from fedfingpt.enclave.base import Policy
    from fedfingpt.enclave.serving import serving_measurement
    from fedfingpt.enclave.software import SoftwareEnclave

    cfg, folder, sealed, base_sha = _sealed_setup(tiny_config, tmp_path, certs)
    weights = (folder / "adapter_model.safetensors").read_bytes()
    assert weights[-64:] not in sealed.read_bytes(), "sealed at rest: the weights are not in the file"
    adapter_sha = read_manifest(folder)["weights_sha256"]
    expected = serving_measurement(cfg, base_sha, adapter_sha, SERVED_CODE).combined
    key = SoftwareEnclave(tmp_path / "enclave.identity", "").public_key
    good = Policy((expected,), allow_software=True, trusted_keys=(key,))
    r = Running(cfg, gate)
    try:
        with r.client(certs=certs, require_attestation=good) as c:
            assert c.evidence.measurement == expected and not c.evidence.hardware
            assert c.model_info().adapter_sha256 == adapter_sha
            assert c.classify(["Profits rose."]).results[0].label
        wrong = Policy(("0" * 64,), allow_software=True, trusted_keys=(key,))
        with pytest.raises(AttestationError, match="not one the policy expects"):
            r.client(certs=certs, require_attestation=wrong)
        with pytest.raises(AttestationError, match="refuses software evidence"):
            r.client(certs=certs, require_attestation=Policy((expected,)))
    finally:
        r.stop()
    methods = [json.loads(line)["method"] for line in Path(cfg.serving.audit_log).read_text().splitlines()]
    assert methods == ["GetAttestation", "GetModelInfo", "ClassifySentiment", "GetAttestation", "GetAttestation"], \
        "a client that refused the evidence sent no data"


def test_unattested_or_foreign_sealed_servers_are_refused(tiny_config, tmp_path, certs, gate):
    from fedfingpt.api.sdk import AttestationError
    from fedfingpt.enclave.base import EnclaveError, Policy

    cfg, folder, sealed, _ = _sealed_setup(tiny_config, tmp_path, certs)
    other = cfg.model_copy(update={"serving": cfg.serving.model_copy(
        update={"enclave_identity": str(tmp_path / "other.identity")})})
    with pytest.raises(EnclaveError, match="cannot unseal"):
        ModelServer(other)  # another enclave identity cannot open the adapter
    with pytest.raises(EnclaveError, match="set serving.enclave"):
        ModelServer(cfg.model_copy(update={"serving": cfg.serving.model_copy(update={"enclave": "none"})}))
    r = Running(serving_config(tiny_config, tmp_path, certs), gate)  # no enclave at all
    try:
        with pytest.raises(AttestationError, match="without an enclave"):
            r.client(certs=certs, require_attestation=Policy(("0" * 64,), allow_software=True))
    finally:
        r.stop()


def test_cli_seals_and_prints_the_measurement_to_expect(tiny_config, tmp_path, certs, capsys):
    from fedfingpt.cli import main
    from fedfingpt.common.adapter import save_adapter
    from fedfingpt.common.models import attach_lora, load_base_model

    loaded = load_base_model(tiny_config.model)
    folder = save_adapter(attach_lora(loaded.model, tiny_config.lora), tmp_path / "ad", base_id=loaded.base_id,
                          base_sha256=loaded.base_sha256)
    cfg = serving_config(tiny_config, tmp_path, certs, enclave="software",
                         enclave_identity=str(tmp_path / "id"))
    path = tmp_path / "serve.yaml"
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    assert main(["enclave", "seal", str(path), "--adapter", str(folder), "--to", str(tmp_path / "x.sealed")]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert len(shown["combined"]) == 64 and (tmp_path / "x.sealed").is_file()
    assert main(["enclave", "measure", str(path), "--set", f"serving.adapter={folder}"]) == 0
    assert json.loads(capsys.readouterr().out)["adapter"] == shown["adapter"]


def test_the_served_model_folds_the_adapter_and_runs_only_each_requests_own_tokens(tiny_config, tmp_path, certs):
    """With the adapter merged into the base weights and each task's instruction cached, the service scores what the
    unmerged adapter scores on the whole prompt (1e-4), and the model sees only the tokens after the instruction."""
    from fedfingpt.common.adapter import get_lora_arrays, load_adapter, save_adapter, set_lora_arrays
    from fedfingpt.common.models import attach_lora, load_base_model
    from fedfingpt.common.predict import label_logprobs
    from fedfingpt.common.prompt import build_prompt, encode_prompt
    from fedfingpt.common.tasks.aml import INSTRUCTION, LABEL_OPENINGS
    from fedfingpt.common.tasks.sentiment import INSTRUCTIONS
    from fedfingpt.common.tasks.sentiment_data import LABELS

    loaded = load_base_model(tiny_config.model)
    model = attach_lora(loaded.model, tiny_config.lora)
    set_lora_arrays(model, {k: v + 0.05 for k, v in get_lora_arrays(model).items()})  # B not zero
    folder = save_adapter(model, tmp_path / "adapter", base_id=loaded.base_id, base_sha256=loaded.base_sha256)
    served = ModelServer(serving_config(tiny_config, tmp_path, certs, adapter=str(folder)))
    try:
        assert not any("lora" in n for n, _ in served.model.named_parameters())  # folded in
        assert len(served.prefix) == 3  # news, tweet, AML
        widths = []
        served.model.get_decoder().register_forward_pre_hook(
            lambda m, a, kw: widths.append(kw["input_ids"].shape[1]), with_kwargs=True)
        plain, _ = load_adapter(load_base_model(tiny_config.model).model, folder, base_sha256=loaded.base_sha256)
        plain.eval()
        news = [build_prompt(INSTRUCTIONS["news"], t) for t in ("Profit rose 12% at the bank", "Shares fell")]
        aml = [build_prompt(INSTRUCTION, "Account A sent 9,500 to B")]
        for prompts, labels in ((news, LABELS), (aml, LABEL_OPENINGS)):
            widths.clear()
            got = served.score(prompts, tuple(labels), None)
            want = label_logprobs(plain, served.tokenizer, prompts, labels, max_length=tiny_config.data.max_length,
                                  bf16=False)  # fp32, as served by the tiny config
            want -= np.logaddexp.reduce(want, axis=1, keepdims=True)  # the service normalises over the labels
            np.testing.assert_allclose(got, want, atol=1e-4)
            rows = [encode_prompt(served.tokenizer, p, tiny_config.data.max_length) for p in prompts]
            opening = served.tokenizer(build_prompt(INSTRUCTIONS["news"] if labels is LABELS else INSTRUCTION, ""))[
                "input_ids"]
            shared = min(next((i for i, (a, b) in enumerate(zip(r, opening)) if a != b), len(opening)) for r in rows)
            assert shared > 8
            assert widths and max(widths) <= max(map(len, rows)) - shared + max(
                len(served.tokenizer(" " + lab)["input_ids"]) for lab in labels), (widths, shared)
    finally:
        served.close()


def test_query_command_takes_its_texts_after_the_options(running, certs, monkeypatch, capsys):
    """`fedfingpt query sentiment --ca ca.pem "text"`, as the README writes it."""
    from fedfingpt.cli import main

    monkeypatch.setenv("FEDFINGPT_TOKEN", TOKENS["analyst"])
    assert main(["query", "sentiment", "--target", running.target, "--ca", str(certs["ca.pem"]),
                 "Profits rose sharply.", "Sales fell."]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 2 and out[0].split()[0] in ("negative", "neutral", "positive") and "Sales fell." in out[1]


@pytest.mark.parametrize("engine", ["onnx", "onnx-int8"])
def test_the_onnx_engines_score_what_the_torch_engine_scores(tiny_config, tmp_path, certs, engine):
    """serving.engine onnx: the merged decoder in ONNX Runtime gives the torch engine's sentiment log-probabilities
    (fp32: to float rounding; weight-only int8: close); label sets of several tokens (AML's openings) go to the
    torch path of the same model and so match it exactly."""
    from fedfingpt.common.prompt import build_prompt, encode_prompt
    from fedfingpt.common.tasks.aml import LABEL_OPENINGS
    from fedfingpt.common.tasks.sentiment import INSTRUCTIONS
    from fedfingpt.common.tasks.sentiment_data import LABELS

    ref = ModelServer(serving_config(tiny_config, tmp_path, certs))
    served = ModelServer(serving_config(tiny_config, tmp_path, certs, engine=engine))
    try:
        assert served.engine.name == engine and ref.engine.name == "torch"
        prompts = ["Instruction: What is the sentiment of this news?\nInput: Profits rose.\nAnswer:",
                   "Instruction: What is the sentiment of this news?\nInput: The bank cut 200 jobs after the "
                   "quarter's loss widened.\nAnswer:", "Sales were flat."]
        want = ref.engine.score(prompts, LABELS)
        got = served.engine.score(prompts, LABELS)
        assert got.shape == (3, 3) and np.allclose(np.exp(got).sum(1), 1.0)
        np.testing.assert_allclose(got, want, atol=1e-4 if engine == "onnx" else 0.05)
        np.testing.assert_array_equal(served.engine.score(prompts, LABEL_OPENINGS),
                                      ref.engine.score(prompts, LABEL_OPENINGS))
        # prompts that share a task's instruction run only their own tokens after its cached keys and values, and
        # score what the whole prompts score through the same graph
        shared = [build_prompt(INSTRUCTIONS["news"], t) for t in ("Profits rose.", "The bank cut 200 jobs.")]
        encoded = [encode_prompt(served.tokenizer, p, 400) for p in shared]
        assert served.engine.prefix is not None and served.engine.prefix.match(encoded)[0] > 0
        cached = served.engine.score(shared, LABELS)
        served.engine.prefix = None
        # (int8: the cached instruction is the fp32 model's, the rest of the prompt runs through int8 weights)
        np.testing.assert_allclose(cached, served.engine.score(shared, LABELS), atol=1e-4 if engine == "onnx" else 0.01)
        np.testing.assert_allclose(cached, ref.engine.score(shared, LABELS), atol=1e-4 if engine == "onnx" else 0.05)
    finally:
        ref.close()
        served.close()


def test_the_int8_block_size_reaches_the_quantised_graph(tiny_config, tmp_path, certs):
    """serving.int8_block_size: every weight-only int8 matrix of the exported graph is quantised in blocks of the
    configured size, and the engine built with it still scores what fp32 scores, closely; a size the quantiser has
    no kernel for is refused when the configuration is read."""
    import onnx

    from fedfingpt.common.config import ServingConfig
    from fedfingpt.server.inference.engines import export_decoder

    ref = ModelServer(serving_config(tiny_config, tmp_path, certs))
    try:
        for block in (16, 32):
            graph = onnx.load_from_string(export_decoder(ref.model, int8=True, block_size=block)[0])
            sizes = {a.i for n in graph.graph.node if n.op_type == "MatMulNBits" for a in n.attribute
                     if a.name == "block_size"}
            assert sizes == {block}
        served = ModelServer(serving_config(tiny_config, tmp_path, certs, engine="onnx-int8", int8_block_size=16))
        try:
            assert served.engine.int8_block == 16
            prompts = ["Instruction: What is the sentiment of this news?\nInput: Profits rose.\nAnswer:"]
            np.testing.assert_allclose(served.engine.score(prompts, ("negative", "neutral", "positive")),
                                       ref.engine.score(prompts, ("negative", "neutral", "positive")), atol=0.05)
        finally:
            served.close()
    finally:
        ref.close()
    with pytest.raises(ValueError, match="int8_block_size"):
        ServingConfig(int8_block_size=48)


def test_the_response_cache_answers_a_repeated_redacted_prompt_without_the_model(tiny_config, tmp_path, certs, gate):
    """serving.response_cache: a text that redacts to a prompt already scored is answered from the cache (no new
    forward), with the same probabilities, and the audit line counts the hit; the key holds no raw PII."""
    cfg = serving_config(tiny_config, tmp_path, certs, response_cache=4)
    r = Running(cfg, gate)
    try:
        with r.client(certs=certs) as c:
            first = c.classify(["Maria Garcia said profits rose."]).results[0]
            second = c.classify(["John Smith said profits rose."]).results[0]  # the same prompt after redaction
            third = c.classify(["Sales fell."]).results[0]
        assert dict(first.probabilities) == pytest.approx(dict(second.probabilities), abs=0)
        assert r.server.model.batcher.batches == [1, 1]  # two forwards for three requests
        keys = [k[0] for k in r.server.model.cache._d]
        assert len(keys) == 2 and not any("Garcia" in k or "Smith" in k for k in keys)
        assert third.label in ("negative", "neutral", "positive")
    finally:
        r.stop()
    lines = [json.loads(x) for x in Path(cfg.serving.audit_log).read_text().splitlines()]
    assert [x.get("cache_hits", 0) for x in lines if x["method"] == "ClassifySentiment"] == [0, 1, 0]
    assert verify(cfg.serving.audit_log).ok


def test_the_torch_engine_casts_the_merged_model_to_bf16_once_when_asked(tiny_config, tmp_path, certs):
    """serving.bf16_autocast on (auto turns it on where the CPU has native bf16): the merged weights become bf16
    once, no autocast runs on top, and the scores stay close to fp32's."""
    from fedfingpt.common.tasks.sentiment_data import LABELS

    fp32 = ModelServer(serving_config(tiny_config, tmp_path, certs))
    bf16 = ModelServer(serving_config(tiny_config, tmp_path, certs, bf16_autocast=True))
    try:
        assert bf16.cast_bf16 and bf16.bf16 is False and not fp32.cast_bf16
        assert {p.dtype for p in bf16.model.parameters()} == {torch.bfloat16}
        prompts = ["Instruction: What is the sentiment of this news?\nInput: Profits rose.\nAnswer:"]
        np.testing.assert_allclose(bf16.engine.score(prompts, LABELS), fp32.engine.score(prompts, LABELS), atol=0.05)
    finally:
        fp32.close()
        bf16.close()
