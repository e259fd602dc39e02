"""Generated gRPC stubs of fedfingpt.v1 (api/stubs.py)."""
