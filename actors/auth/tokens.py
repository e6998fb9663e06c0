"""Sign-in secrets (magic-link and session tokens) and email addresses (`next` paths: `bus_schemas.identity`).

Magic-link and session tokens carry 256 bits from the CSPRNG, so a plain SHA-256 digest is enough to
make a stolen table useless (nothing to brute-force); argon2id is kept for API keys, which predate
this and cost little thanks to the verified-key cache.
"""

from __future__ import annotations

import hashlib
import re
import secrets

LINK_PREFIX = "bmms_link_"
"""Magic-link tokens start with this (secret scanners and logs can recognise them)."""
SESSION_PREFIX = "bmms_sess_"
"""Session tokens (the session cookie's value) start with this."""

_EMAIL = re.compile(r"^[^@\s\x00-\x1f]{1,64}@[^@\s\x00-\x1f]+\.[^@\s.\x00-\x1f]{2,}$")
_TOKEN_BODY = re.compile(r"^[A-Za-z0-9_-]{43}$")


def new_token(prefix: str) -> tuple[str, bytes]:
    """A new secret token with `prefix` and the digest to store instead of it."""
    token = prefix + secrets.token_urlsafe(32)
    return token, token_digest(token)


def token_digest(token: str) -> bytes:
    """The SHA-256 digest under which a token is stored and looked up."""
    return hashlib.sha256(token.encode()).digest()


def is_token(value: str, prefix: str) -> bool:
    """Whether `value` is shaped like a token with `prefix` (saves a lookup for garbage)."""
    return value.startswith(prefix) and bool(_TOKEN_BODY.match(value[len(prefix):]))


def normalize_email(raw: str) -> str | None:
    """The address in its one stored form (trimmed, lower case), or None when it is not one."""
    email = raw.strip().lower()
    if len(email) > 254 or not _EMAIL.match(email):
        return None
    return email


def email_bucket(email: str) -> str:
    """The rate-limit bucket of an address (hashed: the counters table holds no addresses)."""
    return "email:" + hashlib.sha256(email.encode()).hexdigest()[:32]


def ip_bucket(ip: str) -> str:
    """The rate-limit bucket of a client address."""
    return "ip:" + ip
