"""The gRPC service fedfingpt.v1.Inference: authentication and roles, limits, the compliance gate around the
model, micro-batched scoring, streamed generation, health checking, reflection and the audit trail.

Order for every call: authenticate (bearer token -> caller, role) -> role may call the method -> concurrency
limit -> request limits -> gate scans the request (block refuses, otherwise the model sees the redacted text)
-> model -> gate scans the reply -> one audit line (types and counts only, never text).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import uuid
from collections import Counter
from concurrent import futures
from datetime import datetime
from pathlib import Path

import grpc
import numpy as np
import yaml

from ...common.config import ServiceConfig
from ...common.predict import softmax
from ...common.prompt import build_prompt
from ...common.tasks.aml import (INSTRUCTION, LABEL_OPENINGS, NONE, TYPOLOGIES, TYPOLOGY_OPENINGS, Account, AmlCase,
                                 Transaction, case_text)
from ...common.tasks.aml_features import evidence_reason
from ...common.tasks.sentiment import INSTRUCTIONS
from ...common.tasks.sentiment_data import LABELS
from .audit import AuditLog
from ...common.pii.gate import ComplianceGate, GateResult
from .model_server import DeadlineExceeded, ModelServer
from ...api.v1 import inference_pb2 as pb
from ...api.v1 import inference_pb2_grpc as pb_grpc

log = logging.getLogger("fedfingpt.serve")
SERVICE = "fedfingpt.v1.Inference"
# method -> (request type, response type, server-streaming), as in the .proto
METHODS = {"ClassifySentiment": (pb.ClassifySentimentRequest, pb.ClassifySentimentResponse, False),
           "ScreenTransactions": (pb.ScreenTransactionsRequest, pb.ScreenTransactionsResponse, False),
           "Generate": (pb.GenerateRequest, pb.GenerateChunk, True),
           "GetModelInfo": (pb.GetModelInfoRequest, pb.ModelInfo, False),
           "GetAttestation": (pb.AttestationRequest, pb.Attestation, False)}


class Undecodable:
    """What a request whose bytes are not its message type decodes to: the handler answers INVALID_ARGUMENT and
    audits it (gRPC's own decoding would log a traceback per request and answer INTERNAL, unaudited)."""

    def __init__(self, type_name: str, size: int) -> None:
        self.type_name, self.size = type_name, size


def _tolerant(message_type):
    def decode(data: bytes):
        try:
            return message_type.FromString(data)
        except Exception:  # DecodeError and anything else the parser raises on hostile bytes
            return Undecodable(message_type.DESCRIPTOR.full_name, len(data))
    return decode


class RateLimitedLog:
    """At most one line per `every_s` for a kind of event, saying how many were not logged since the last."""

    def __init__(self, every_s: float = 60.0) -> None:
        self.every_s, self._last, self._skipped = every_s, float("-inf"), 0
        self._lock = threading.Lock()

    def warning(self, message: str) -> bool:
        with self._lock:
            now = time.monotonic()
            if now - self._last < self.every_s:
                self._skipped += 1
                return False
            skipped, self._skipped, self._last = self._skipped, 0, now
        log.warning("%s%s", message, f" ({skipped} more since the last such line)" if skipped else "")
        return True


def add_servicer(servicer, server: grpc.Server) -> None:
    """The Inference service's handlers, with requests decoded by `_tolerant` (the generated stubs' registration
    with each type's own decoder instead)."""
    handlers = {}
    for name, (req, resp, stream) in METHODS.items():
        make = grpc.unary_stream_rpc_method_handler if stream else grpc.unary_unary_rpc_method_handler
        handlers[name] = make(getattr(servicer, name), request_deserializer=_tolerant(req),
                              response_serializer=resp.SerializeToString)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    server.add_registered_method_handlers(SERVICE, handlers)
API_VERSION = "fedfingpt.v1"


class ServeError(RuntimeError):
    """A service that cannot start as configured (the message says which key to change)."""


def load_tokens(path: str | None) -> dict[str, dict]:
    if not path:
        raise ServeError("serving.tokens_file is not set: every call must be authenticated; write a YAML file "
                         "{TOKEN: {caller: NAME, role: ROLE}} outside the repository and point to it")
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as err:
        raise ServeError(f"serving.tokens_file {path}: cannot read it ({err})") from None
    if not isinstance(data, dict) or not all(isinstance(v, dict) and {"caller", "role"} <= set(v)
                                             for v in data.values()):
        raise ServeError(f"serving.tokens_file {path}: expected {{TOKEN: {{caller: NAME, role: ROLE}}}}")
    short = [v["caller"] for k, v in data.items() if len(str(k)) < 16]
    if short:
        raise ServeError(f"serving.tokens_file {path}: tokens of {short} are shorter than 16 characters")
    return {str(k): v for k, v in data.items()}


class Call:
    """What one request carries through the service: identity, gate findings, timing (for the audit line)."""

    def __init__(self, method: str, caller: str, role: str) -> None:
        self.id = uuid.uuid4().hex
        self.method, self.caller, self.role = method, caller, role
        self.found: Counter = Counter()
        self.decision, self.status = "allow", "OK"
        self.aborted = False  # set when the service answered with a status of its own (context.abort raises)
        self.cache_hits = 0  # items answered from the response cache
        self.t0 = time.perf_counter()

    def add(self, result: GateResult) -> None:
        self.found.update(result.found)
        if result.blocked:
            self.decision = "block"


def _cert_der(path: str) -> bytes:
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    return x509.load_pem_x509_certificate(Path(path).read_bytes()).public_bytes(Encoding.DER)


class InferenceServicer(pb_grpc.InferenceServicer):
    def __init__(self, cfg: ServiceConfig, model: ModelServer, gate: ComplianceGate, audit: AuditLog,
                 tokens: dict[str, dict]) -> None:
        self.cfg, self.model, self.gate, self.audit, self.tokens = cfg, model, gate, audit, tokens
        self.cert_der = _cert_der(cfg.serving.tls_cert) if not cfg.serving.insecure and cfg.serving.tls_cert else None
        self._slots = threading.BoundedSemaphore(cfg.serving.max_concurrent)
        self.undecodable_log = RateLimitedLog()
        # the adapter's calibration (aml_calibration.json beside it): calibrated risk scores and its threshold
        self.calibration = getattr(model, "aml_calibration", None)

    # -- the steps every call takes ---------------------------------------------------------------
    def _authorize(self, method: str, context) -> Call:
        meta = dict(context.invocation_metadata() or ())
        auth = meta.get("authorization", "")
        token = auth[7:].strip() if auth.lower().startswith("bearer ") else ""
        who = self.tokens.get(token) if token else None
        if who is None:
            self._audit(Call(method, "unknown", "-"), status="UNAUTHENTICATED")
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or unknown bearer token: send metadata "
                          "'authorization: Bearer <token>' with a token from serving.tokens_file")
        call = Call(method, str(who["caller"]), str(who["role"]))
        if method not in self.cfg.serving.roles.get(call.role, []):
            self._audit(call, status="PERMISSION_DENIED")
            context.abort(grpc.StatusCode.PERMISSION_DENIED, f"role {call.role!r} may not call {method}; it may "
                          f"call {self.cfg.serving.roles.get(call.role, [])}")
        return call

    @contextlib.contextmanager
    def _request(self, method: str, context, request=None):
        """One request's life: authenticate and authorise, refuse bytes that are no message (INVALID_ARGUMENT, one
        rate-limited log line), take a concurrency slot, run the body, and whatever the body raises, give the slot
        back and write one audit line. An unexpected error answers INTERNAL with the request id (the log line has
        the id and the error's type, never its text, which may quote the input)."""
        call = self._authorize(method, context)
        if isinstance(request, Undecodable):
            self._audit(call, status="INVALID_ARGUMENT")
            self.undecodable_log.warning(f"{method}: a request of {request.size} bytes that is not a "
                                         f"{request.type_name} refused")
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"the request is not a valid {request.type_name} "
                          "message; build it from api/proto/fedfingpt/v1/inference.proto")
        if not self._slots.acquire(blocking=False):
            self._audit(call, status="RESOURCE_EXHAUSTED")
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, f"the server is at its limit of "
                          f"{self.cfg.serving.max_concurrent} requests in flight; retry with backoff")
        try:
            yield call
        except Exception as err:
            if call.aborted:  # our own answer (context.abort raises to end the handler)
                raise
            call.status = "INTERNAL"
            log.error("request %s (%s) failed: %s", call.id, method, type(err).__name__)
            call.aborted = True
            context.abort(grpc.StatusCode.INTERNAL, f"internal error; quote request id {call.id} to the operator")
        finally:
            self._slots.release()
            self._audit(call)

    def _audit(self, call: Call, status: str | None = None) -> None:
        self.audit.append(request_id=call.id, caller=call.caller, role=call.role, method=call.method,
                          entities=dict(call.found), decision=call.decision, model_sha256=self.model.base_sha256,
                          adapter_sha256=self.model.adapter_sha256, status=status or call.status,
                          latency_ms=round((time.perf_counter() - call.t0) * 1000, 2),
                          **({"cache_hits": call.cache_hits} if call.cache_hits else {}))

    def _fail(self, call: Call, context, code: grpc.StatusCode, message: str):
        call.status = code.name
        call.aborted = True
        context.abort(code, message)

    def _deadline(self, context) -> float | None:
        left = context.time_remaining()
        return None if left is None else time.monotonic() + left

    def _scan(self, call: Call, context, text: str, index: int | None = None) -> GateResult:
        """The gate on one item. A blocked item refuses the request when it is the request's only item
        (`index` None) or when the policy says so (gate.policy.on_block: request); otherwise the caller answers
        that item PERMISSION_DENIED and goes on with the others."""
        result = self.gate.scan(text, call.role)
        call.add(result)
        if result.blocked and (index is None or self.cfg.gate.policy.on_block == "request"):
            where = "the request" if index is None else f"item {index}"
            self._fail(call, context, grpc.StatusCode.PERMISSION_DENIED,
                       f"{where} contains {', '.join(result.blocked)}, which the policy blocks for role "
                       f"{call.role!r}; remove it and retry")
        return result

    def _all_blocked(self, call: Call, context, gated: list[GateResult]) -> None:
        if gated and all(g.blocked for g in gated):
            self._fail(call, context, grpc.StatusCode.PERMISSION_DENIED, "every item is blocked by the policy for "
                       f"role {call.role!r}: " + "; ".join(f"item {i}: {', '.join(g.blocked)}"
                                                            for i, g in enumerate(gated)))

    @staticmethod
    def _report(result: GateResult) -> pb.GateReport:
        return pb.GateReport(entities=result.found, decision="block" if result.blocked else "allow",
                             blocked=result.blocked)

    TEXT_FIELDS = frozenset({"texts", "instruction", "input"})

    def _check_lengths(self, call: Call, context, request) -> None:
        """Every string field of the request, at any depth, within its limit; before the gate or the model sees any
        of it. The reply names the field, its length and the setting."""
        s = self.cfg.serving
        stack = [(request, "")]
        while stack:
            msg, path = stack.pop()
            for field, value in msg.ListFields():
                name = f"{path}{field.name}"
                values = value if field.label == field.LABEL_REPEATED else [value]
                if field.type == field.TYPE_STRING:
                    limit, key = ((s.max_text_chars, "max_text_chars") if field.name in self.TEXT_FIELDS
                                  else (s.max_field_chars, "max_field_chars"))
                    for v in values:
                        if len(v) > limit:
                            self._fail(call, context, grpc.StatusCode.INVALID_ARGUMENT,
                                       f"field {name} holds {len(v)} characters; at most serving.{key}={limit}")
                elif field.type == field.TYPE_MESSAGE:
                    if field.message_type.GetOptions().map_entry:
                        continue
                    stack.extend((v, f"{name}.") for v in values)

    def _check_items(self, call: Call, context, n: int, texts) -> None:
        s = self.cfg.serving
        if n == 0:
            self._fail(call, context, grpc.StatusCode.INVALID_ARGUMENT, "the request holds nothing to process")
        if n > s.max_items:
            self._fail(call, context, grpc.StatusCode.INVALID_ARGUMENT,
                       f"{n} items in one request; at most serving.max_items={s.max_items}")
        for t in texts:
            if len(t) > s.max_text_chars:
                self._fail(call, context, grpc.StatusCode.INVALID_ARGUMENT,
                           f"a text of {len(t)} characters; at most serving.max_text_chars={s.max_text_chars}")
            if not t.strip():
                self._fail(call, context, grpc.StatusCode.INVALID_ARGUMENT, "an empty text")

    def _model(self, call: Call, context, prompts: list[str], labels: tuple[str, ...]) -> np.ndarray:
        try:
            scores, hits = self.model.score_counted(prompts, labels, self._deadline(context))
            call.cache_hits += hits
            return scores
        except DeadlineExceeded as err:
            self._fail(call, context, grpc.StatusCode.DEADLINE_EXCEEDED, str(err))
        except Exception as err:  # the error's type only: its text may quote the input
            log.error("request %s (%s): the model failed: %s", call.id, call.method, type(err).__name__)
            self._fail(call, context, grpc.StatusCode.INTERNAL, f"the model failed; quote request id {call.id} "
                       "to the operator")

    # -- methods -----------------------------------------------------------------------------------
    def ClassifySentiment(self, request, context):
        with self._request("ClassifySentiment", context, request) as call:
            self._check_lengths(call, context, request)
            kind = request.kind or "news"
            if kind not in INSTRUCTIONS:
                self._fail(call, context, grpc.StatusCode.INVALID_ARGUMENT,
                           f"kind {kind!r}: use 'news' or 'tweet'")
            texts = list(request.texts)
            self._check_items(call, context, len(texts), texts)
            one = len(texts) == 1
            gated = [self._scan(call, context, t, None if one else i) for i, t in enumerate(texts)]
            self._all_blocked(call, context, gated)
            ok = [i for i, g in enumerate(gated) if not g.blocked]
            prompts = [build_prompt(INSTRUCTIONS[kind], gated[i].text) for i in ok]
            probs = dict(zip(ok, softmax(self._model(call, context, prompts, tuple(LABELS)))))
            out = [pb.SentimentResult(label=LABELS[int(np.argmax(probs[i]))], index=i, status="OK",
                                      probabilities=dict(zip(LABELS, map(float, probs[i]))), gate=self._report(g))
                   if i in probs else pb.SentimentResult(index=i, status="PERMISSION_DENIED", gate=self._report(g))
                   for i, g in enumerate(gated)]
            return pb.ClassifySentimentResponse(results=out, request_id=call.id)

    def ScreenTransactions(self, request, context):
        with self._request("ScreenTransactions", context, request) as call:
            self._check_lengths(call, context, request)
            cases = list(request.cases)
            self._check_items(call, context, len(cases), [])
            one = len(cases) == 1
            reports, parsed = [], []
            for i, c in enumerate(cases):
                # the narrative carries names and account numbers: it passes the gate like any text
                parsed.append(self._case(call, context, c))
                story = case_text(parsed[-1])
                if len(story) > 2 * self.cfg.serving.max_text_chars:
                    self._fail(call, context, grpc.StatusCode.INVALID_ARGUMENT,
                               f"case {i}'s narrative holds {len(story)} characters; at most 2 x "
                               f"serving.max_text_chars={2 * self.cfg.serving.max_text_chars}")
                reports.append(self._scan(call, context, story, None if one else i))
            self._all_blocked(call, context, reports)
            ok = [i for i, g in enumerate(reports) if not g.blocked]
            prompts = [build_prompt(INSTRUCTION, reports[i].text) for i in ok]
            sus = dict(zip(ok, softmax(self._model(call, context, prompts, LABEL_OPENINGS))[:, 0]))
            typ = dict(zip(ok, self._model(call, context, prompts, TYPOLOGY_OPENINGS).argmax(axis=1)))
            out = []
            for i, g in enumerate(reports):
                if i not in sus:
                    out.append(pb.Screening(index=i, status="PERMISSION_DENIED", gate=self._report(g)))
                    continue
                p = float(self.calibration.probability(sus[i])) if self.calibration else float(sus[i])
                flagged = bool(p >= (self.calibration.threshold if self.calibration else 0.5))
                name = TYPOLOGIES[int(typ[i])] if flagged else NONE
                # the reason is the case's own facts for the decision (common/tasks/aml_features.py): faithful
                out.append(pb.Screening(suspicious=flagged, typology=name, risk_score=int(round(100 * p)),
                                        reason=evidence_reason(parsed[i], name), probability=p,
                                        gate=self._report(g), index=i, status="OK"))
            return pb.ScreenTransactionsResponse(results=out, request_id=call.id)

    def _case(self, call: Call, context, c) -> AmlCase:
        if not c.focus or not c.transactions:
            self._fail(call, context, grpc.StatusCode.INVALID_ARGUMENT, "a case needs a focus account and "
                       "transactions")
        if len(c.transactions) > 10 * self.cfg.serving.max_items:
            self._fail(call, context, grpc.StatusCode.INVALID_ARGUMENT, f"a case with {len(c.transactions)} "
                       f"transactions; at most {10 * self.cfg.serving.max_items}")
        accounts = {a.id: Account(a.id, a.bank, a.name, a.country) for a in c.accounts}
        txs = []
        for t in c.transactions:
            try:
                when = datetime.fromisoformat(t.timestamp.replace("Z", "+00:00")).replace(tzinfo=None)
            except ValueError:
                self._fail(call, context, grpc.StatusCode.INVALID_ARGUMENT,
                           f"transaction {t.id!r}: timestamp {t.timestamp!r} is not ISO 8601")
            if not (t.amount >= 0) or t.amount == float("inf"):
                self._fail(call, context, grpc.StatusCode.INVALID_ARGUMENT,
                           f"transaction {t.id!r}: amount must be a finite number >= 0")
            txs.append(Transaction(t.id, t.src, t.dst, t.amount, t.currency or "USD", when, t.payment_format))
        return AmlCase("request", accounts.get(c.focus, Account(c.focus, "")).bank, c.focus, txs, accounts, False,
                       NONE)

    def Generate(self, request, context):
        with self._request("Generate", context, request) as call:
            self._check_lengths(call, context, request)
            if not request.input.strip() and not request.instruction.strip():
                self._fail(call, context, grpc.StatusCode.INVALID_ARGUMENT, "instruction and input are both empty")
            self._check_items(call, context, 1, [request.instruction + request.input])
            instruction = self._scan(call, context, request.instruction) if request.instruction else GateResult("")
            text = self._scan(call, context, request.input) if request.input else GateResult("")
            if request.max_new_tokens < 0:
                self._fail(call, context, grpc.StatusCode.INVALID_ARGUMENT,
                           f"max_new_tokens={request.max_new_tokens}; give 1 to {self.cfg.serving.max_new_tokens} "
                           "or 0 for the server's cap")
            n = min(request.max_new_tokens or self.cfg.serving.max_new_tokens, self.cfg.serving.max_new_tokens)
            pending = ""
            for piece in self.model.stream(build_prompt(instruction.text, text.text), n):
                pending += piece
                safe, pending = self._safe_prefix(pending)
                if safe:
                    yield self._out_chunk(call, context, safe, done=False)
                if not context.is_active():
                    call.status = "CANCELLED"
                    break
            if pending:
                yield self._out_chunk(call, context, pending, done=False)
            yield pb.GenerateChunk(text="", done=True, gate=pb.GateReport(entities=dict(call.found),
                                                                           decision=call.decision))

    def _safe_prefix(self, text: str) -> tuple[str, str]:
        """Release text only up to a space at least 48 characters before the end, so that a name or number that
        is still being generated is never split across chunks (each released chunk is scanned whole)."""
        cut = text.rfind(" ", 0, max(0, len(text) - 48))
        return (text[: cut + 1], text[cut + 1:]) if cut >= 0 else ("", text)

    def _out_chunk(self, call: Call, context, text: str, done: bool) -> pb.GenerateChunk:
        result = self.gate.scan(text, call.role)
        call.add(result)
        if result.blocked:  # the model produced something the policy blocks: say so, send none of it
            return pb.GenerateChunk(text=f"[withheld: {', '.join(result.blocked)}]", done=done)
        return pb.GenerateChunk(text=result.text, done=done)

    def GetAttestation(self, request, context):
        with self._request("GetAttestation", context, request) as call:
            enclave = self.model.enclave
            if enclave is None:
                self._fail(call, context, grpc.StatusCode.FAILED_PRECONDITION, "this server runs without an "
                           "enclave (serving.enclave none): it cannot attest to what serves")
            if self.cert_der is None:
                self._fail(call, context, grpc.StatusCode.FAILED_PRECONDITION, "attestation binds to the server's "
                           "TLS certificate: serve with TLS to attest")
            if len(request.nonce) < 16:
                self._fail(call, context, grpc.StatusCode.INVALID_ARGUMENT,
                           "the nonce must be at least 16 random bytes")
            try:
                evidence = enclave.attest(bytes(request.nonce), self.cert_der)
            except Exception as err:
                self._fail(call, context, grpc.StatusCode.UNAVAILABLE, f"the enclave could not attest: {err}")
            return pb.Attestation(evidence_json=evidence.to_json(), backend=evidence.backend)

    def GetModelInfo(self, request, context):
        with self._request("GetModelInfo", context, request):
            m = self.model
            info = pb.ModelInfo(base_model=m.base_id, base_sha256=m.base_sha256, adapter_sha256=m.adapter_sha256,
                                training_round=m.round, privacy_epsilon=m.epsilon, privacy_delta=m.delta,
                                gate_entities=self.gate.entity_types(), api_version=API_VERSION)
            return info


REFLECTION_V1 = "grpc.reflection.v1.ServerReflection"


def enable_reflection(server: grpc.Server, services: tuple[str, ...]) -> None:
    """Server reflection as both grpc.reflection.v1 (what current grpcurl and Postman ask first) and v1alpha.
    grpcio-reflection ships only v1alpha; v1's messages are the same fields under another package, so the one
    servicer answers both, v1 through a handler that reads and writes the same wire format."""
    from grpc_reflection.v1alpha import reflection, reflection_pb2, reflection_pb2_grpc

    servicer = reflection.ReflectionServicer((*services, reflection.SERVICE_NAME, REFLECTION_V1))
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(servicer, server)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(REFLECTION_V1, {
        "ServerReflectionInfo": grpc.stream_stream_rpc_method_handler(
            servicer.ServerReflectionInfo, request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
            response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString)}),))


class InferenceServer:
    """The running service: `start()` binds (port 0 picks one: see `.port`), `stop()` shuts down cleanly."""

    def __init__(self, cfg: ServiceConfig, model: ModelServer | None = None, gate: ComplianceGate | None = None) -> None:
        s = cfg.serving
        self.cfg = cfg
        tokens = load_tokens(s.tokens_file)
        creds = self._credentials(cfg)
        self.model = model or ModelServer(cfg)
        self.gate = gate or ComplianceGate(cfg.gate)
        self.audit = AuditLog(s.audit_log)
        self.servicer = InferenceServicer(cfg, self.model, self.gate, self.audit, tokens)
        opts = [("grpc.max_receive_message_length", s.max_message_bytes),
                ("grpc.max_send_message_length", 4 * s.max_message_bytes)]
        # a thread for every request in flight (they wait on the micro-batcher) and one to refuse the next; beyond
        # that gRPC itself answers RESOURCE_EXHAUSTED instead of queueing
        threads = max(s.workers, s.max_concurrent + 1)
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=threads), options=opts,
                                  maximum_concurrent_rpcs=threads)
        add_servicer(self.servicer, self.server)
        from grpc_health.v1 import health, health_pb2, health_pb2_grpc

        self.health = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        enable_reflection(self.server, (pb.DESCRIPTOR.services_by_name["Inference"].full_name, health.SERVICE_NAME))
        address = f"{s.host}:{s.port}"
        self.port = (self.server.add_insecure_port(address) if creds is None
                     else self.server.add_secure_port(address, creds))
        if self.port == 0:
            raise ServeError(f"could not bind {address}; choose another serving.port")
        self._health_pb2 = health_pb2

    @staticmethod
    def _credentials(cfg: ServiceConfig):
        s = cfg.serving
        if s.insecure:
            log.warning("serving.insecure is on: requests and replies travel in plaintext; use TLS outside tests")
            return None
        if not (s.tls_cert and s.tls_key):
            raise ServeError("TLS needs serving.tls_cert and serving.tls_key (`fedfingpt certs dev DIR` makes "
                             "development ones); plaintext only with serving.insecure=true")
        try:
            key, cert = Path(s.tls_key).read_bytes(), Path(s.tls_cert).read_bytes()
            ca = Path(s.client_ca).read_bytes() if s.client_ca else None
        except OSError as err:
            raise ServeError(f"cannot read a TLS file: {err}") from None
        return grpc.ssl_server_credentials([(key, cert)], root_certificates=ca, require_client_auth=ca is not None)

    def start(self) -> "InferenceServer":
        self.server.start()
        self.health.set(SERVICE, self._health_pb2.HealthCheckResponse.SERVING)
        self.health.set("", self._health_pb2.HealthCheckResponse.SERVING)
        log.info("serving %s on %s:%d (%s)", SERVICE, self.cfg.serving.host, self.port,
                 "plaintext" if self.cfg.serving.insecure else "TLS" + (" + client certificates"
                                                                          if self.cfg.serving.client_ca else ""))
        return self

    def stop(self, grace: float = 2.0) -> None:
        self.health.enter_graceful_shutdown()
        self.server.stop(grace).wait(grace + 5)
        self.model.close()
