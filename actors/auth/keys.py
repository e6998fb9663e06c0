"""API key format, hashing and verification."""

from __future__ import annotations

import hashlib
import re
import secrets
import time

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

KEY_RE = re.compile(r"^bmms_([0-9a-f]{16})_([A-Za-z0-9_-]{43})$")

# API key secrets carry 256 bits of entropy, so the memory-hard cost only has to make a stolen table
# useless, not stretch a weak password: OWASP's minimum argon2id profile keeps verification cheap.
hasher = PasswordHasher(time_cost=2, memory_cost=19_456, parallelism=1)


def new_api_key() -> tuple[str, str, str]:
    """A new key: (key id, the full secret shown once, its argon2id hash)."""
    key_id = secrets.token_hex(8)
    secret = secrets.token_urlsafe(32)
    full = f"bmms_{key_id}_{secret}"
    return key_id, full, hasher.hash(secret)


def parse_api_key(token: str) -> tuple[str, str] | None:
    """(key id, secret) of a well-formed key, else None."""
    match = KEY_RE.match(token)
    return (match.group(1), match.group(2)) if match else None


def secret_matches(secret_hash: str, secret: str) -> bool:
    """Whether `secret` is the one hashed in `secret_hash`."""
    try:
        return hasher.verify(secret_hash, secret)
    except (VerificationError, InvalidHashError):
        return False


class VerifiedKeys:
    """Recently verified keys, so a busy client does not pay argon2id on every request.

    Indexed by a SHA-256 of the whole key (never the key itself); an entry lives `ttl` seconds. An entry
    only spares the argon2id check: whether the key is revoked is still read from the table each time,
    so a revocation holds on every copy at once.
    """

    def __init__(self, ttl: float = 30.0, max_entries: int = 10_000) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self._entries: dict[bytes, tuple[float, str, str]] = {}

    @staticmethod
    def _digest(token: str) -> bytes:
        return hashlib.sha256(token.encode()).digest()

    def get(self, token: str) -> tuple[str, str] | None:
        """(org id, key id) of a key verified less than `ttl` ago."""
        entry = self._entries.get(self._digest(token))
        if entry is None or entry[0] < time.monotonic():
            return None
        return entry[1], entry[2]

    def put(self, token: str, org_id: str, key_id: str) -> None:
        """Remember a verified key."""
        if len(self._entries) >= self.max_entries:
            self._entries.clear()
        self._entries[self._digest(token)] = (time.monotonic() + self.ttl, org_id, key_id)

    def forget_key(self, key_id: str) -> None:
        """Forget every entry of a revoked key on this copy."""
        for digest in [d for d, entry in self._entries.items() if entry[2] == key_id]:
            del self._entries[digest]
