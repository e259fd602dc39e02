"""Generated gRPC stubs of fedfingpt.v1 (server/inference/stubs.py)."""
