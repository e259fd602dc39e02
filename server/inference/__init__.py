"""The compliance-gated gRPC inference service: service.py (the server), gate.py (Presidio redaction and policy),
audit.py (hash-chained audit trail), model_server.py (model and micro-batching). The .proto, stubs and SDK are in api/."""
