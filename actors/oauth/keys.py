"""Token-signing keys: RSA keys made with joserfc, stored AES-GCM encrypted, rotated on a schedule."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import secrets
from collections.abc import Callable

import asyncpg
from joserfc.jwk import KeySet, RSAKey

from actors.oauth import storage
from actors.runtime.crypto import OAUTH_SIGNING_KEYS, KeyEncryption
from bus_schemas.oauth import PublicJwk

__all__ = ["OAUTH_SIGNING_KEYS", "Clock", "KeyEncryption", "SigningKeys", "public_jwk", "signing_key_encryption"]

Clock = Callable[[], dt.datetime]
"""Now, as an aware UTC datetime; injectable so tests move time instead of sleeping."""


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
            await storage.lock_signing_keys(conn)
            stored = await storage.newest_signing_key(conn)
            if stored is not None and now - stored.created_at < self.rotate_after:
                pem = self.encryption.open(stored.kid, stored.sealed_private_key)
                return RSAKey.import_key(pem, parameters={"kid": stored.kid}), stored.created_at
            kid = f"k{now:%Y%m%d}-{secrets.token_hex(4)}"
            key = RSAKey.generate_key(2048, parameters={"kid": kid, "alg": "RS256", "use": "sig"})
            await storage.rotate_signing_key(
                conn, kid=kid, public_jwk=json.dumps(key.as_dict(private=False)),
                sealed_private_key=self.encryption.seal(kid, key.as_pem(private=True)), now=now,
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
        published = await storage.published_signing_keys(self.pool, self.clock() - self.publish_retired_for)
        return [RSAKey.import_key(json.loads(jwk)) for jwk in published]
