from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class AttestationRequest(_message.Message):
    __slots__ = ("nonce",)
    NONCE_FIELD_NUMBER: _ClassVar[int]
    nonce: bytes
    def __init__(self, nonce: _Optional[bytes] = ...) -> None: ...

class Attestation(_message.Message):
    __slots__ = ("evidence_json", "backend")
    EVIDENCE_JSON_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    evidence_json: str
    backend: str
    def __init__(self, evidence_json: _Optional[str] = ..., backend: _Optional[str] = ...) -> None: ...

class GateReport(_message.Message):
    __slots__ = ("entities", "decision", "blocked")
    class EntitiesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    ENTITIES_FIELD_NUMBER: _ClassVar[int]
    DECISION_FIELD_NUMBER: _ClassVar[int]
    BLOCKED_FIELD_NUMBER: _ClassVar[int]
    entities: _containers.ScalarMap[str, int]
    decision: str
    blocked: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, entities: _Optional[_Mapping[str, int]] = ..., decision: _Optional[str] = ..., blocked: _Optional[_Iterable[str]] = ...) -> None: ...

class ClassifySentimentRequest(_message.Message):
    __slots__ = ("texts", "kind")
    TEXTS_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    texts: _containers.RepeatedScalarFieldContainer[str]
    kind: str
    def __init__(self, texts: _Optional[_Iterable[str]] = ..., kind: _Optional[str] = ...) -> None: ...

class SentimentResult(_message.Message):
    __slots__ = ("label", "probabilities", "gate", "status", "index")
    class ProbabilitiesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    LABEL_FIELD_NUMBER: _ClassVar[int]
    PROBABILITIES_FIELD_NUMBER: _ClassVar[int]
    GATE_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    label: str
    probabilities: _containers.ScalarMap[str, float]
    gate: GateReport
    status: str
    index: int
    def __init__(self, label: _Optional[str] = ..., probabilities: _Optional[_Mapping[str, float]] = ..., gate: _Optional[_Union[GateReport, _Mapping]] = ..., status: _Optional[str] = ..., index: _Optional[int] = ...) -> None: ...

class ClassifySentimentResponse(_message.Message):
    __slots__ = ("results", "request_id")
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[SentimentResult]
    request_id: str
    def __init__(self, results: _Optional[_Iterable[_Union[SentimentResult, _Mapping]]] = ..., request_id: _Optional[str] = ...) -> None: ...

class Account(_message.Message):
    __slots__ = ("id", "bank", "name", "country")
    ID_FIELD_NUMBER: _ClassVar[int]
    BANK_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    COUNTRY_FIELD_NUMBER: _ClassVar[int]
    id: str
    bank: str
    name: str
    country: str
    def __init__(self, id: _Optional[str] = ..., bank: _Optional[str] = ..., name: _Optional[str] = ..., country: _Optional[str] = ...) -> None: ...

class Transaction(_message.Message):
    __slots__ = ("id", "src", "dst", "amount", "currency", "timestamp", "payment_format")
    ID_FIELD_NUMBER: _ClassVar[int]
    SRC_FIELD_NUMBER: _ClassVar[int]
    DST_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    CURRENCY_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    PAYMENT_FORMAT_FIELD_NUMBER: _ClassVar[int]
    id: str
    src: str
    dst: str
    amount: float
    currency: str
    timestamp: str
    payment_format: str
    def __init__(self, id: _Optional[str] = ..., src: _Optional[str] = ..., dst: _Optional[str] = ..., amount: _Optional[float] = ..., currency: _Optional[str] = ..., timestamp: _Optional[str] = ..., payment_format: _Optional[str] = ...) -> None: ...

class AmlCase(_message.Message):
    __slots__ = ("focus", "accounts", "transactions")
    FOCUS_FIELD_NUMBER: _ClassVar[int]
    ACCOUNTS_FIELD_NUMBER: _ClassVar[int]
    TRANSACTIONS_FIELD_NUMBER: _ClassVar[int]
    focus: str
    accounts: _containers.RepeatedCompositeFieldContainer[Account]
    transactions: _containers.RepeatedCompositeFieldContainer[Transaction]
    def __init__(self, focus: _Optional[str] = ..., accounts: _Optional[_Iterable[_Union[Account, _Mapping]]] = ..., transactions: _Optional[_Iterable[_Union[Transaction, _Mapping]]] = ...) -> None: ...

class Screening(_message.Message):
    __slots__ = ("suspicious", "typology", "risk_score", "reason", "probability", "gate", "status", "index")
    SUSPICIOUS_FIELD_NUMBER: _ClassVar[int]
    TYPOLOGY_FIELD_NUMBER: _ClassVar[int]
    RISK_SCORE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    PROBABILITY_FIELD_NUMBER: _ClassVar[int]
    GATE_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    suspicious: bool
    typology: str
    risk_score: int
    reason: str
    probability: float
    gate: GateReport
    status: str
    index: int
    def __init__(self, suspicious: _Optional[bool] = ..., typology: _Optional[str] = ..., risk_score: _Optional[int] = ..., reason: _Optional[str] = ..., probability: _Optional[float] = ..., gate: _Optional[_Union[GateReport, _Mapping]] = ..., status: _Optional[str] = ..., index: _Optional[int] = ...) -> None: ...

class ScreenTransactionsRequest(_message.Message):
    __slots__ = ("cases",)
    CASES_FIELD_NUMBER: _ClassVar[int]
    cases: _containers.RepeatedCompositeFieldContainer[AmlCase]
    def __init__(self, cases: _Optional[_Iterable[_Union[AmlCase, _Mapping]]] = ...) -> None: ...

class ScreenTransactionsResponse(_message.Message):
    __slots__ = ("results", "request_id")
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[Screening]
    request_id: str
    def __init__(self, results: _Optional[_Iterable[_Union[Screening, _Mapping]]] = ..., request_id: _Optional[str] = ...) -> None: ...

class GenerateRequest(_message.Message):
    __slots__ = ("instruction", "input", "max_new_tokens")
    INSTRUCTION_FIELD_NUMBER: _ClassVar[int]
    INPUT_FIELD_NUMBER: _ClassVar[int]
    MAX_NEW_TOKENS_FIELD_NUMBER: _ClassVar[int]
    instruction: str
    input: str
    max_new_tokens: int
    def __init__(self, instruction: _Optional[str] = ..., input: _Optional[str] = ..., max_new_tokens: _Optional[int] = ...) -> None: ...

class GenerateChunk(_message.Message):
    __slots__ = ("text", "done", "gate")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    GATE_FIELD_NUMBER: _ClassVar[int]
    text: str
    done: bool
    gate: GateReport
    def __init__(self, text: _Optional[str] = ..., done: _Optional[bool] = ..., gate: _Optional[_Union[GateReport, _Mapping]] = ...) -> None: ...

class GetModelInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("base_model", "base_sha256", "adapter_sha256", "training_round", "privacy_epsilon", "privacy_delta", "gate_entities", "api_version")
    BASE_MODEL_FIELD_NUMBER: _ClassVar[int]
    BASE_SHA256_FIELD_NUMBER: _ClassVar[int]
    ADAPTER_SHA256_FIELD_NUMBER: _ClassVar[int]
    TRAINING_ROUND_FIELD_NUMBER: _ClassVar[int]
    PRIVACY_EPSILON_FIELD_NUMBER: _ClassVar[int]
    PRIVACY_DELTA_FIELD_NUMBER: _ClassVar[int]
    GATE_ENTITIES_FIELD_NUMBER: _ClassVar[int]
    API_VERSION_FIELD_NUMBER: _ClassVar[int]
    base_model: str
    base_sha256: str
    adapter_sha256: str
    training_round: int
    privacy_epsilon: float
    privacy_delta: float
    gate_entities: _containers.RepeatedScalarFieldContainer[str]
    api_version: str
    def __init__(self, base_model: _Optional[str] = ..., base_sha256: _Optional[str] = ..., adapter_sha256: _Optional[str] = ..., training_round: _Optional[int] = ..., privacy_epsilon: _Optional[float] = ..., privacy_delta: _Optional[float] = ..., gate_entities: _Optional[_Iterable[str]] = ..., api_version: _Optional[str] = ...) -> None: ...
