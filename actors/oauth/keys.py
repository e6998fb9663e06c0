"""Token-signing keys: RSA keys made with joserfc, stored AES-GCM encrypted, rotated on a schedule."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import secrets
from collections.abc import Callable

import asyncpg
from joserfc.jwk import KeySet, RSAKey

from actors.runtime.crypto import OAUTH_SIGNING_KEYS, KeyEncryption
from bus_schemas.oauth import PublicJwk

__all__ = ["OAUTH_SIGNING_KEYS", "Clock", "KeyEncryption", "SigningKeys", "public_jwk", "signing_key_encryption"]

Clock = Callable[[], dt.datetime]
"""Now, as an aware UTC datetime; injectable so tests move time instead of sleeping."""

_LOCK_KEY = 0x6F61757468_6B6579  # advisory lock: one copy at a time creates or rotates keys


def signing_key_encryption(secret_key: str) -> KeyEncryption:
    """The encryption of the `oauth_signing_keys` rows (the kid is the associated data)."""
    return KeyEncryption(secret_key, purpose=OAUTH_SIGNING_KEYS)


def public_jwk(key: RSAKey) -> PublicJwk:
    """The JWKS entry of a key."""
    data = key.as_dict(private=False)
    return PublicJwk(kty="RSA", n=str(data["n"]), e=str(data["e"]), kid=str(key.kid))


class SigningKeys:
    """The signing key in use and the published key set, backed by the `oauth_signing_keys` table.

    The newest unretired key signs. When it is older than `rotate_after`, a new key is made and the old
    one retired; a retired key stays published for `publish_retired_for` (longer than any access token
    lives), so tokens it signed keep verifying until they expire.
    """

    def __init__(
        self,
        pool: asyncpg.Pool,
        encryption: KeyEncryption,
        clock: Clock,
        *,
        rotate_after: dt.timedelta,
        publish_retired_for: dt.timedelta,
    ) -> None:
        self.pool = pool
        self.encryption = encryption
        self.clock = clock
        self.rotate_after = rotate_after
        self.publish_retired_for = publish_retired_for
        self._current: tuple[RSAKey, dt.datetime] | None = None
        self._lock = asyncio.Lock()

    async def current(self) -> RSAKey:
        """The key to sign with now (made or rotated when due)."""
        now = self.clock()
        cached = self._current
        if cached is not None and now - cached[1] < self.rotate_after:
            return cached[0]
        async with self._lock:
            self._current = await self._load_or_rotate(now)
            return self._current[0]

    async def _load_or_rotate(self, now: dt.datetime) -> tuple[RSAKey, dt.datetime]:
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _LOCK_KEY)
            row = await conn.fetchrow(
                "SELECT kid, private_key, created_at FROM oauth_signing_keys WHERE retired_at IS NULL "
                "ORDER BY created_at DESC LIMIT 1"
            )
            if row is not None and now - row["created_at"] < self.rotate_after:
                pem = self.encryption.open(row["kid"], bytes(row["private_key"]))
                return RSAKey.import_key(pem, parameters={"kid": row["kid"]}), row["created_at"]
            kid = f"k{now:%Y%m%d}-{secrets.token_hex(4)}"
            key = RSAKey.generate_key(2048, parameters={"kid": kid, "alg": "RS256", "use": "sig"})
            await conn.execute("UPDATE oauth_signing_keys SET retired_at = $1 WHERE retired_at IS NULL", now)
            await conn.execute(
                "INSERT INTO oauth_signing_keys (kid, public_jwk, private_key, created_at) VALUES ($1, $2, $3, $4)",
                kid, json.dumps(key.as_dict(private=False)), self.encryption.seal(kid, key.as_pem(private=True)), now,
            )
            return key, now

    async def published(self) -> tuple[PublicJwk, ...]:
        """Every key a verifier may meet: the signing key and recently retired ones."""
        return tuple(public_jwk(key) for key in await self._published_keys())

    async def verifying(self) -> KeySet:
        """The published keys as a key set, to check that a token is one we signed."""
        return KeySet(list(await self._published_keys()))

    async def _published_keys(self) -> list[RSAKey]:
        await self.current()
        rows = await self.pool.fetch(
            "SELECT public_jwk FROM oauth_signing_keys WHERE retired_at IS NULL OR retired_at > $1 "
            "ORDER BY created_at DESC",
            self.clock() - self.publish_retired_for,
        )
        return [RSAKey.import_key(json.loads(r["public_jwk"])) for r in rows]
