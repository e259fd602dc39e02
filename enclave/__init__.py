"""Trusted-execution hook: one interface (base.py), a software backend (software.py) and Gramine-SGX (gramine.py)."""
