"""Encryption at rest under the platform's key-encryption key (BMMS_SECRET_KEY), shared by every actor.

One implementation, one derived key per purpose: HKDF-SHA256 with a distinct `info` per purpose, so the
oauth actor's signing-key encryption and the deployer's server-secret encryption never share a key (a
ciphertext of one purpose does not open under another, even for the same associated data).
"""

from __future__ import annotations

import os

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

NONCE_BYTES = 12
"""AES-GCM's 96-bit nonce, random per seal and stored in front of the ciphertext."""

OAUTH_SIGNING_KEYS = b"bmms oauth signing keys v1"
"""Purpose: the oauth actor's RSA token-signing private keys (the `info` those rows were sealed with)."""
SERVER_SECRETS = b"bmms server secrets v1"
"""Purpose: the deployer's upstream credentials of hosted servers."""


class KeyEncryption:
    """AES-256-GCM under a key derived (HKDF-SHA256, `info` = `purpose`) from BMMS_SECRET_KEY.

    The caller's associated data (a row's identity: a key id, a server id and secret name) is bound into
    the tag, so a ciphertext cannot be moved onto another row."""

    def __init__(self, secret_key: str, *, purpose: bytes) -> None:
        if len(secret_key) < 16:
            raise ValueError("BMMS_SECRET_KEY must be at least 16 characters (use 32 random bytes)")
        if not purpose:
            raise ValueError("say what the key is for: each purpose derives its own key")
        kek = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=purpose).derive(secret_key.encode())
        self._aead = AESGCM(kek)

    def seal(self, associated: str, plaintext: bytes) -> bytes:
        """nonce || ciphertext (with its tag)."""
        nonce = os.urandom(NONCE_BYTES)
        return nonce + self._aead.encrypt(nonce, plaintext, associated.encode())

    def open(self, associated: str, sealed: bytes) -> bytes:
        """The plaintext; raises cryptography's InvalidTag when the key, the purpose, the associated data or
        the ciphertext is wrong."""
        return self._aead.decrypt(sealed[:NONCE_BYTES], sealed[NONCE_BYTES:], associated.encode())
