"""Trusted-execution hook: attestation and sealed weights (not built yet)."""
