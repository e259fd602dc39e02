"""The client SDK of the inference service: TLS (and a client certificate for mutual TLS), the bearer token on
every call, deadlines, and typed errors that carry the server's message."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import grpc

from .v1 import inference_pb2 as pb
from .v1 import inference_pb2_grpc as pb_grpc


class InferenceError(RuntimeError):
    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(f"{code.name}: {message}")
        self.code, self.message = code, message


class AttestationError(RuntimeError):
    """The server could not prove what serves: the client sent it no data."""


def server_certificate_der(target: str, ca_cert: str, client_cert: str | None, client_key: str | None) -> bytes:
    """The certificate the server presents on a TLS handshake verified against `ca_cert` (the one attestation
    evidence must be bound to)."""
    import socket
    import ssl

    host, port = target.rsplit(":", 1)
    ctx = ssl.create_default_context(cafile=ca_cert)
    ctx.set_alpn_protocols(["h2"])
    if client_cert:
        ctx.load_cert_chain(client_cert, client_key)
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        with ctx.wrap_socket(sock, server_hostname=host) as tls:
            return tls.getpeercert(binary_form=True)


class InferenceClient:
    """client = InferenceClient("host:port", token, ca_cert="ca.pem"); client.classify(["Profits rose ..."])

    require_attestation: a fedfingpt.enclave.base.Policy; before any data is sent, the server must present
    evidence for a fresh nonce, bound to the TLS certificate it presents, that the policy accepts."""

    def __init__(self, target: str, token: str, *, ca_cert: str | None = None, client_cert: str | None = None,
                 client_key: str | None = None, insecure: bool = False, timeout: float = 30.0,
                 require_attestation=None) -> None:
        if insecure:
            self.channel = grpc.insecure_channel(target)
        else:
            if not ca_cert:
                raise ValueError("ca_cert is needed to trust the server (or insecure=True for plaintext tests)")
            creds = grpc.ssl_channel_credentials(
                root_certificates=Path(ca_cert).read_bytes(),
                private_key=Path(client_key).read_bytes() if client_key else None,
                certificate_chain=Path(client_cert).read_bytes() if client_cert else None)
            self.channel = grpc.secure_channel(target, creds)
        self.stub = pb_grpc.InferenceStub(self.channel)
        self.metadata = (("authorization", f"Bearer {token}"),)
        self.timeout = timeout
        self.evidence = None
        if require_attestation is not None:
            if insecure:
                raise AttestationError("attestation binds to the server's TLS certificate: it needs TLS")
            try:
                self.evidence = self._attest(target, ca_cert, client_cert, client_key, require_attestation)
            except BaseException:
                self.channel.close()
                raise

    def _attest(self, target, ca_cert, client_cert, client_key, policy):
        import secrets

        from ..enclave.base import Evidence
        from ..enclave.gramine import verify_sgx
        from ..enclave.software import verify_software

        try:
            cert = server_certificate_der(target, ca_cert, client_cert, client_key)
        except OSError as err:
            raise AttestationError(f"could not fetch the server's certificate: {err}") from None
        nonce = secrets.token_bytes(32)
        try:
            reply = self.stub.GetAttestation(pb.AttestationRequest(nonce=nonce), metadata=self.metadata,
                                             timeout=self.timeout)
        except grpc.RpcError as err:
            raise AttestationError(f"the server gave no attestation ({err.code().name}: {err.details()})") from None
        evidence = Evidence.from_json(reply.evidence_json)
        verify = {"software": verify_software, "gramine-sgx": verify_sgx}.get(evidence.backend)
        if verify is None:
            raise AttestationError(f"unknown attestation backend {evidence.backend!r}")
        result = verify(evidence, policy, nonce, cert)
        if not result.ok:
            raise AttestationError(f"attestation refused: {result.reason}")
        return evidence

    def _call(self, fn, request, timeout: float | None):
        try:
            return fn(request, metadata=self.metadata, timeout=timeout or self.timeout)
        except grpc.RpcError as err:
            raise InferenceError(err.code(), err.details() or "") from None

    def classify(self, texts: Sequence[str], kind: str = "news", timeout: float | None = None):
        return self._call(self.stub.ClassifySentiment, pb.ClassifySentimentRequest(texts=list(texts), kind=kind),
                          timeout)

    def screen(self, cases: Sequence[pb.AmlCase], timeout: float | None = None):
        return self._call(self.stub.ScreenTransactions, pb.ScreenTransactionsRequest(cases=list(cases)), timeout)

    def generate(self, instruction: str, text: str, max_new_tokens: int = 32,
                 timeout: float | None = None) -> Iterator[pb.GenerateChunk]:
        stream = self.stub.Generate(pb.GenerateRequest(instruction=instruction, input=text,
                                                       max_new_tokens=max_new_tokens),
                                    metadata=self.metadata, timeout=timeout or self.timeout)
        try:
            yield from stream
        except grpc.RpcError as err:
            raise InferenceError(err.code(), err.details() or "") from None

    def model_info(self, timeout: float | None = None):
        return self._call(self.stub.GetModelInfo, pb.GetModelInfoRequest(), timeout)

    def close(self) -> None:
        self.channel.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def case_message(case) -> pb.AmlCase:
    """An AmlCase of the task's data model as the service's message."""
    return pb.AmlCase(
        focus=case.focus,
        accounts=[pb.Account(id=a.id, bank=a.bank, name=a.name, country=a.country) for a in case.accounts.values()],
        transactions=[pb.Transaction(id=t.id, src=t.src, dst=t.dst, amount=t.amount, currency=t.currency,
                                     timestamp=t.time.isoformat(), payment_format=t.payment_format)
                      for t in case.transactions])
