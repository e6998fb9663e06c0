"""The wire contract: every message on the bus and every subject, stream and consumer it travels on.

This package imports only msgspec and the standard library, so any consumer can depend on it alone.
"""
