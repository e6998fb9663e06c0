"""The shared encryption at rest: one derived key per purpose, rows bound by their associated data."""

from __future__ import annotations

import pytest
from cryptography.exceptions import InvalidTag

from actors.runtime.crypto import OAUTH_SIGNING_KEYS, SERVER_SECRETS, KeyEncryption

KEY = "test-key-encryption-key-0123456789abcdef"


def test_a_sealed_value_opens_under_the_same_key_purpose_and_associated_data() -> None:
    box = KeyEncryption(KEY, purpose=SERVER_SECRETS)
    sealed = box.seal("s1/API_KEY", b"hunter2-value")
    assert b"hunter2-value" not in sealed
    assert KeyEncryption(KEY, purpose=SERVER_SECRETS).open("s1/API_KEY", sealed) == b"hunter2-value"


def test_each_seal_uses_a_fresh_nonce() -> None:
    box = KeyEncryption(KEY, purpose=SERVER_SECRETS)
    assert box.seal("a", b"same") != box.seal("a", b"same")


def test_the_oauth_and_server_secret_purposes_never_share_a_key() -> None:
    sealed = KeyEncryption(KEY, purpose=OAUTH_SIGNING_KEYS).seal("kid-1", b"private key")
    with pytest.raises(InvalidTag):
        KeyEncryption(KEY, purpose=SERVER_SECRETS).open("kid-1", sealed)


def test_a_ciphertext_moved_to_other_associated_data_does_not_open() -> None:
    box = KeyEncryption(KEY, purpose=SERVER_SECRETS)
    sealed = box.seal("server-a/TOKEN", b"value")
    with pytest.raises(InvalidTag):
        box.open("server-b/TOKEN", sealed)


def test_a_short_key_or_no_purpose_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 16"):
        KeyEncryption("short", purpose=SERVER_SECRETS)
    with pytest.raises(ValueError, match="purpose"):
        KeyEncryption(KEY, purpose=b"")
