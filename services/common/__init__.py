"""Shared library of the exchange services: configuration, the key scheme, money
conversion, message types, Redis connections, request signing and tracing."""
