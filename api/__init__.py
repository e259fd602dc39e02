"""What callers of the inference service import: the versioned .proto, its generated stubs (v1/) and the SDK.

Nothing here imports server/ or client/; an application needs only this package (and grpcio).
"""
