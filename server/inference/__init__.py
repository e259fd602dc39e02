"""The compliance-gated gRPC inference service (not built yet)."""
