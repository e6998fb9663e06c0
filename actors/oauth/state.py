"""What the oauth actor's handlers share: its tuning (`OAuthConfig`), and what it builds once from the process
settings when it starts serving (`OAuthState`: the metadata document fetcher and its cache, the signing keys)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

import asyncpg

from actors.oauth.clients import MetadataDocuments, trusting
from actors.oauth.keys import Clock, KeyEncryption, SigningKeys, signing_key_encryption
from actors.runtime.settings import Settings
from bus_schemas.registry import REVOKED

VERIFIER_LEEWAY = dt.timedelta(seconds=30)
"""The clock leeway resource servers allow on `exp` (runner_template.auth)."""


def utc_now() -> dt.datetime:
    """The default clock."""
    return dt.datetime.now(dt.UTC)


@dataclass(frozen=True)
class OAuthConfig:
    """Lifetimes and limits of the Authorization Server; tests pass a clock they move."""

    clock: Clock = field(default=utc_now)
    """Now; every expiry is computed from it (no `now()` in SQL), so tests move time, never sleep."""
    code_ttl: dt.timedelta = dt.timedelta(seconds=60)
    """Authorization codes are single-use and live this long."""
    consent_ttl: dt.timedelta = dt.timedelta(minutes=10)
    """How long a consent page may stay open before its decision is refused."""
    access_token_ttl: dt.timedelta = dt.timedelta(minutes=15)
    refresh_token_ttl: dt.timedelta = dt.timedelta(days=30)
    """Sliding: every refresh issues a new refresh token with a fresh lifetime."""
    registrations_per_hour: int = 30
    """Dynamic registrations accepted per source address per hour."""
    unused_client_ttl: dt.timedelta = dt.timedelta(days=7)
    """Dynamic clients never used to complete an authorization are deleted after this."""
    key_rotation: dt.timedelta = dt.timedelta(days=30)
    """A new signing key is made when the current one is this old."""
    jwks_max_age: int = 300
    """Seconds verifiers may cache the JWKS."""


class OAuthState:
    """The oauth actor's state: its config, and once it serves, its settings, the Client ID Metadata
    Document fetcher (which caches documents) and the signing keys (which cache the current key)."""

    def __init__(self, config: OAuthConfig) -> None:
        self.config = config
        self._settings: Settings | None = None
        self._encryption: KeyEncryption | None = None
        self._documents: MetadataDocuments | None = None
        self._keys: SigningKeys | None = None

    def configure(self, settings: Settings) -> None:
        """Take the process settings before serving: refuse to start without a key-encryption key, or with
        access tokens that outlive the REVOKED bucket's memory of a revocation."""
        if not settings.secret_key:
            raise RuntimeError("the oauth actor needs BMMS_SECRET_KEY (its signing keys are stored encrypted)")
        self._settings = settings
        self._encryption = signing_key_encryption(settings.secret_key)
        self._documents = MetadataDocuments(allow_loopback=settings.oauth_allow_loopback_fetch,
                                            tls=trusting(settings.oauth_metadata_ca_file))
        if self.config.access_token_ttl + VERIFIER_LEEWAY >= dt.timedelta(seconds=REVOKED.ttl_seconds):
            raise RuntimeError(f"access tokens live {self.config.access_token_ttl}, as long as the {REVOKED.name} "
                               "bucket keeps a revocation: a revoked grant's tokens would work again")

    @property
    def settings(self) -> Settings:
        """The process settings (set by `configure`)."""
        assert self._settings is not None
        return self._settings

    @property
    def documents(self) -> MetadataDocuments:
        """The Client ID Metadata Document fetcher (set by `configure`)."""
        assert self._documents is not None
        return self._documents

    def keys(self, pool: asyncpg.Pool) -> SigningKeys:
        """The signing keys (built on first use, once the pool exists)."""
        if self._keys is None:
            assert self._encryption is not None
            self._keys = SigningKeys(
                pool, self._encryption, self.config.clock, rotate_after=self.config.key_rotation,
                publish_retired_for=self.config.access_token_ttl + dt.timedelta(minutes=5),
            )
        return self._keys
