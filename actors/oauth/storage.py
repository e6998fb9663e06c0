"""The oauth actor's queries over its own tables (see migrations/). Times come from the caller's clock."""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass

import asyncpg

from actors.oauth.clients import Client
from bus_schemas.oauth import ClientMetadata

KEEP_SECRETS = 5
"""Live secrets a confidential dynamic client keeps; each re-registration adds one, the oldest goes."""

_SIGNING_KEYS_LOCK = 0x6F61757468_6B6579  # advisory lock: one copy at a time creates or rotates keys


@dataclass(frozen=True, kw_only=True)
class PendingConsent:
    """A validated authorization request waiting for a person's decision on the consent page."""

    consent_id: str
    csrf_hash: str
    subject: str
    org_id: str
    client_id: str
    redirect_uri: str
    state: str | None
    code_challenge: str
    resource: str
    scopes_required: tuple[str, ...]
    scopes_optional: tuple[str, ...]
    issuer: str
    expires_at: dt.datetime


@dataclass(frozen=True, kw_only=True)
class Grant:
    """What a person granted a client: the claims of every access token it issues."""

    grant_id: str
    client_id: str
    subject: str
    org_id: str
    resource: str
    scope: str
    issuer: str
    revoked_at: dt.datetime | None


@dataclass(frozen=True, kw_only=True)
class StoredCode:
    """An authorization code, with its grant."""

    grant: Grant
    redirect_uri: str
    code_challenge: str
    expires_at: dt.datetime


@dataclass(frozen=True, kw_only=True)
class StoredRefreshToken:
    """A refresh token, with its grant."""

    grant: Grant
    expires_at: dt.datetime
    used_at: dt.datetime | None


@dataclass(frozen=True, kw_only=True)
class RevokedGrant:
    """A grant that ended, as the REVOKED bucket records it."""

    grant_id: str
    org_id: str
    reason: str
    revoked_at: dt.datetime


@dataclass(frozen=True, kw_only=True)
class RevokedToken:
    """One access token revoked on its own (RFC 7009)."""

    jti: str
    grant_id: str
    org_id: str
    revoked_at: dt.datetime


@dataclass(frozen=True, kw_only=True)
class StoredSigningKey:
    """A signing key as stored: its private key sealed under the key-encryption key."""

    kid: str
    sealed_private_key: bytes
    created_at: dt.datetime


def _grant(row: asyncpg.Record) -> Grant:
    return Grant(grant_id=row["grant_id"], client_id=row["client_id"], subject=row["subject"], org_id=row["org_id"],
                 resource=row["resource"], scope=row["scope"], issuer=row["issuer"], revoked_at=row["revoked_at"])


def _consent(row: asyncpg.Record | None) -> PendingConsent | None:
    if row is None:
        return None
    return PendingConsent(
        consent_id=row["consent_id"], csrf_hash=row["csrf_hash"], subject=row["subject"], org_id=row["org_id"],
        client_id=row["client_id"], redirect_uri=row["redirect_uri"], state=row["state"],
        code_challenge=row["code_challenge"], resource=row["resource"],
        scopes_required=tuple(row["scopes_required"]), scopes_optional=tuple(row["scopes_optional"]),
        issuer=row["issuer"], expires_at=row["expires_at"],
    )


def _revoked_grants(rows: list[asyncpg.Record]) -> list[RevokedGrant]:
    return [RevokedGrant(grant_id=r["grant_id"], org_id=r["org_id"], reason=r["revoked_reason"] or "revoked",
                         revoked_at=r["revoked_at"]) for r in rows]


async def count_registration(pool: asyncpg.Pool, source: str, now: dt.datetime) -> int:
    """Count one registration from `source` in the current hour; returns the hour's count so far."""
    window = now.replace(minute=0, second=0, microsecond=0)
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("DELETE FROM oauth_registration_attempts WHERE window_start < $1", window)
        count: int = await conn.fetchval(
            """
            INSERT INTO oauth_registration_attempts (source, window_start, attempts) VALUES ($1, $2, 1)
            ON CONFLICT (source, window_start) DO UPDATE SET attempts = oauth_registration_attempts.attempts + 1
            RETURNING attempts
            """,
            source, window,
        )
    return count


def seconds_left_in_window(now: dt.datetime) -> int:
    """Seconds until the registration window (the clock hour) holding `now` ends; at least 1."""
    window_end = now.replace(minute=0, second=0, microsecond=0) + dt.timedelta(hours=1)
    return max(1, math.ceil((window_end - now).total_seconds()))


async def delete_unused_clients(pool: asyncpg.Pool, older_than: dt.datetime) -> int:
    """Forget dynamic clients registered before `older_than` that never completed an authorization."""
    result: str = await pool.execute(
        "DELETE FROM oauth_clients WHERE kind = 'dynamic' AND last_authorized_at IS NULL AND created_at < $1",
        older_than,
    )
    return int(result.rsplit(" ", 1)[-1])


async def delete_expired(pool: asyncpg.Pool, now: dt.datetime, keep: dt.timedelta) -> None:
    """Forget codes and refresh tokens that expired more than `keep` ago, and grants left with neither
    (a revoked grant's rows stay until they expire, so a replay is still recognised as one)."""
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("DELETE FROM oauth_codes WHERE expires_at < $1", now - keep)
        await conn.execute("DELETE FROM oauth_refresh_tokens WHERE expires_at < $1", now - keep)
        await conn.execute("DELETE FROM oauth_revoked_tokens WHERE expires_at < $1", now - keep)
        await conn.execute(
            """
            DELETE FROM oauth_grants g WHERE g.created_at < $1
              AND NOT EXISTS (SELECT 1 FROM oauth_codes c WHERE c.grant_id = g.grant_id)
              AND NOT EXISTS (SELECT 1 FROM oauth_refresh_tokens r WHERE r.grant_id = g.grant_id)
            """,
            now - keep,
        )


async def save_client(
    pool: asyncpg.Pool,
    *,
    client_id: str,
    kind: str,
    metadata: ClientMetadata,
    digest: str | None,
    source: str | None,
    secret_hash: str | None,
    now: dt.datetime,
) -> tuple[str, dt.datetime]:
    """Insert a client, or for a dynamic one with the same metadata digest return the existing one;
    (client id, created at). A new secret hash, if any, is added to the client's live secrets."""
    async with pool.acquire() as conn, conn.transaction():
        row = await conn.fetchrow(
            """
            INSERT INTO oauth_clients (client_id, kind, client_name, client_uri, redirect_uris,
                token_endpoint_auth_method, grant_types, response_types, scope, metadata_digest,
                registered_from, created_at)
            VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
            ON CONFLICT DO NOTHING
            RETURNING client_id, created_at
            """,
            client_id, kind, metadata.client_name, metadata.client_uri, list(metadata.redirect_uris),
            metadata.token_endpoint_auth_method, list(metadata.grant_types or ()), list(metadata.response_types or ()),
            metadata.scope, digest, source, now,
        )
        if row is None:
            if kind != "dynamic":
                raise ValueError(f"client {client_id} already exists")
            row = await conn.fetchrow(
                "SELECT client_id, created_at FROM oauth_clients WHERE kind = 'dynamic' AND metadata_digest = $1",
                digest,
            )
            assert row is not None
        if secret_hash is not None:
            await conn.execute(
                "INSERT INTO oauth_client_secrets (secret_hash, client_id, created_at) VALUES ($1, $2, $3)",
                secret_hash, row["client_id"], now,
            )
            await conn.execute(
                """
                DELETE FROM oauth_client_secrets WHERE client_id = $1 AND secret_hash NOT IN (
                    SELECT secret_hash FROM oauth_client_secrets WHERE client_id = $1
                    ORDER BY created_at DESC LIMIT $2)
                """,
                row["client_id"], KEEP_SECRETS,
            )
    return row["client_id"], row["created_at"]


async def find_client(pool: asyncpg.Pool, client_id: str) -> Client | None:
    """A registered client."""
    row = await pool.fetchrow("SELECT * FROM oauth_clients WHERE client_id = $1", client_id)
    if row is None:
        return None
    return Client(
        client_id=row["client_id"],
        client_name=row["client_name"] or row["client_id"],
        client_uri=row["client_uri"],
        redirect_uris=tuple(row["redirect_uris"]),
        token_endpoint_auth_method=row["token_endpoint_auth_method"],
        grant_types=tuple(row["grant_types"]),
    )


async def client_secret_matches(pool: asyncpg.Pool, client_id: str, secret_hash: str) -> bool:
    """Whether `secret_hash` is one of the client's live secrets."""
    found = await pool.fetchval(
        "SELECT 1 FROM oauth_client_secrets WHERE client_id = $1 AND secret_hash = $2", client_id, secret_hash
    )
    return found is not None


async def open_consent(pool: asyncpg.Pool, consent: PendingConsent) -> None:
    """Record a pending consent (and drop long expired ones)."""
    async with pool.acquire() as conn, conn.transaction():
        stale = consent.expires_at - dt.timedelta(days=1)
        await conn.execute("DELETE FROM oauth_consents WHERE expires_at < $1", stale)
        await conn.execute(
            """
            INSERT INTO oauth_consents (consent_id, csrf_hash, subject, org_id, client_id, redirect_uri, state,
                code_challenge, resource, scopes_required, scopes_optional, issuer, expires_at)
            VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)
            """,
            consent.consent_id, consent.csrf_hash, consent.subject, consent.org_id, consent.client_id,
            consent.redirect_uri, consent.state, consent.code_challenge, consent.resource,
            list(consent.scopes_required), list(consent.scopes_optional), consent.issuer, consent.expires_at,
        )


async def take_consent(pool: asyncpg.Pool, consent_id: str) -> PendingConsent | None:
    """Remove and return a pending consent: a decision is taken once."""
    return _consent(await pool.fetchrow("DELETE FROM oauth_consents WHERE consent_id = $1 RETURNING *", consent_id))


async def peek_consent(pool: asyncpg.Pool, consent_id: str) -> PendingConsent | None:
    """A pending consent, left in place."""
    return _consent(await pool.fetchrow("SELECT * FROM oauth_consents WHERE consent_id = $1", consent_id))


async def issue_code(
    pool: asyncpg.Pool,
    *,
    grant_id: str,
    code_hash: str,
    client_id: str,
    subject: str,
    org_id: str,
    resource: str,
    scope: str,
    issuer: str,
    redirect_uri: str,
    code_challenge: str,
    now: dt.datetime,
    expires_at: dt.datetime,
) -> None:
    """Open a grant and its authorization code; mark the client as used."""
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(
            """
            INSERT INTO oauth_grants (grant_id, client_id, subject, org_id, resource, scope, issuer, created_at)
            VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
            """,
            grant_id, client_id, subject, org_id, resource, scope, issuer, now,
        )
        await conn.execute(
            "INSERT INTO oauth_codes (code_hash, grant_id, redirect_uri, code_challenge, expires_at) "
            "VALUES ($1, $2, $3, $4, $5)",
            code_hash, grant_id, redirect_uri, code_challenge, expires_at,
        )
        await conn.execute("UPDATE oauth_clients SET last_authorized_at = $2 WHERE client_id = $1", client_id, now)


async def use_code(pool: asyncpg.Pool, code_hash: str, now: dt.datetime) -> tuple[StoredCode | None, bool]:
    """(the code joined with its grant, whether this call is the first use). Marking it used is atomic,
    so of two concurrent exchanges only one is first."""
    async with pool.acquire() as conn, conn.transaction():
        first = await conn.fetchval(
            "UPDATE oauth_codes SET used_at = $2 WHERE code_hash = $1 AND used_at IS NULL RETURNING 1",
            code_hash, now,
        )
        row = await conn.fetchrow(
            "SELECT c.*, g.client_id, g.subject, g.org_id, g.resource, g.scope, g.issuer, g.revoked_at "
            "FROM oauth_codes c JOIN oauth_grants g USING (grant_id) WHERE c.code_hash = $1",
            code_hash,
        )
    if row is None:
        return None, first is not None
    code = StoredCode(grant=_grant(row), redirect_uri=row["redirect_uri"], code_challenge=row["code_challenge"],
                      expires_at=row["expires_at"])
    return code, first is not None


async def revoke_grant(pool: asyncpg.Pool, grant_id: str, reason: str, now: dt.datetime) -> str | None:
    """End a grant: its refresh tokens (the family) stop working. The grant's organisation when this call
    ended it, None when it had ended already."""
    org_id: str | None = await pool.fetchval(
        "UPDATE oauth_grants SET revoked_at = $3, revoked_reason = $2 WHERE grant_id = $1 AND revoked_at IS NULL "
        "RETURNING org_id",
        grant_id, reason, now,
    )
    return org_id


async def end_grants_of_person(
    pool: asyncpg.Pool, org_id: str, subject: str, reason: str, now: dt.datetime, since: dt.datetime
) -> list[RevokedGrant]:
    """End every grant `subject` gave in `org_id` and drop their pending consents there (a consent page
    left open cannot open a new grant). Returns each grant of theirs revoked at or after `since`: this
    call's and those of an earlier call, so a repeated call records them again."""
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("DELETE FROM oauth_consents WHERE org_id = $1 AND subject = $2", org_id, subject)
        await conn.execute(
            "UPDATE oauth_grants SET revoked_at = $4, revoked_reason = $3 "
            "WHERE org_id = $1 AND subject = $2 AND revoked_at IS NULL",
            org_id, subject, reason, now,
        )
        rows: list[asyncpg.Record] = await conn.fetch(
            "SELECT grant_id, org_id, revoked_reason, revoked_at FROM oauth_grants "
            "WHERE org_id = $1 AND subject = $2 AND revoked_at >= $3",
            org_id, subject, since,
        )
    return _revoked_grants(rows)


async def revoke_access_token(
    pool: asyncpg.Pool, *, jti: str, grant_id: str, org_id: str, client_id: str, now: dt.datetime,
    expires_at: dt.datetime,
) -> None:
    """Remember one revoked access token until it expires (a second revocation changes nothing)."""
    await pool.execute(
        "INSERT INTO oauth_revoked_tokens (jti, grant_id, org_id, client_id, revoked_at, expires_at) "
        "VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (jti) DO NOTHING",
        jti, grant_id, org_id, client_id, now, expires_at,
    )


async def tokens_revoked_since(pool: asyncpg.Pool, since: dt.datetime) -> list[RevokedToken]:
    """Access tokens revoked one by one at or after `since`."""
    rows: list[asyncpg.Record] = await pool.fetch(
        "SELECT jti, grant_id, org_id, revoked_at FROM oauth_revoked_tokens WHERE revoked_at >= $1", since
    )
    return [RevokedToken(jti=r["jti"], grant_id=r["grant_id"], org_id=r["org_id"], revoked_at=r["revoked_at"])
            for r in rows]


async def revoked_since(pool: asyncpg.Pool, since: dt.datetime) -> list[RevokedGrant]:
    """Grants revoked at or after `since`."""
    rows: list[asyncpg.Record] = await pool.fetch(
        "SELECT grant_id, org_id, revoked_reason, revoked_at FROM oauth_grants WHERE revoked_at >= $1", since
    )
    return _revoked_grants(rows)


async def add_refresh_token(
    pool: asyncpg.Pool, grant_id: str, token_hash: str, now: dt.datetime, expires_at: dt.datetime
) -> None:
    """A new refresh token in a grant's family."""
    await pool.execute(
        "INSERT INTO oauth_refresh_tokens (token_hash, grant_id, created_at, expires_at) VALUES ($1, $2, $3, $4)",
        token_hash, grant_id, now, expires_at,
    )


async def use_refresh_token(pool: asyncpg.Pool, token_hash: str, now: dt.datetime) -> bool:
    """Mark a refresh token used; whether this call was its first use (atomic: of two concurrent refreshes
    only one is first)."""
    first = await pool.fetchval(
        "UPDATE oauth_refresh_tokens SET used_at = $2 WHERE token_hash = $1 AND used_at IS NULL RETURNING 1",
        token_hash, now,
    )
    return first is not None


async def find_refresh_token(pool: asyncpg.Pool, token_hash: str) -> StoredRefreshToken | None:
    """A refresh token with its grant, without using it."""
    row = await pool.fetchrow(
        "SELECT r.*, g.client_id, g.subject, g.org_id, g.resource, g.scope, g.issuer, g.revoked_at "
        "FROM oauth_refresh_tokens r JOIN oauth_grants g USING (grant_id) WHERE r.token_hash = $1",
        token_hash,
    )
    if row is None:
        return None
    return StoredRefreshToken(grant=_grant(row), expires_at=row["expires_at"], used_at=row["used_at"])


async def lock_signing_keys(conn: asyncpg.Connection) -> None:
    """Hold the signing keys for the caller's transaction: one copy at a time creates or rotates them."""
    await conn.execute("SELECT pg_advisory_xact_lock($1)", _SIGNING_KEYS_LOCK)


async def newest_signing_key(conn: asyncpg.Connection) -> StoredSigningKey | None:
    """The newest key not retired: the one that signs."""
    row = await conn.fetchrow(
        "SELECT kid, private_key, created_at FROM oauth_signing_keys WHERE retired_at IS NULL "
        "ORDER BY created_at DESC LIMIT 1"
    )
    if row is None:
        return None
    return StoredSigningKey(kid=row["kid"], sealed_private_key=bytes(row["private_key"]), created_at=row["created_at"])


async def rotate_signing_key(
    conn: asyncpg.Connection, *, kid: str, public_jwk: str, sealed_private_key: bytes, now: dt.datetime
) -> None:
    """Retire every signing key and add the new one (inside the caller's transaction, under its lock)."""
    await conn.execute("UPDATE oauth_signing_keys SET retired_at = $1 WHERE retired_at IS NULL", now)
    await conn.execute(
        "INSERT INTO oauth_signing_keys (kid, public_jwk, private_key, created_at) VALUES ($1, $2, $3, $4)",
        kid, public_jwk, sealed_private_key, now,
    )


async def published_signing_keys(pool: asyncpg.Pool, retired_after: dt.datetime) -> list[str]:
    """The public JWKs (JSON) of the keys not retired or retired after `retired_after`, newest first."""
    rows: list[asyncpg.Record] = await pool.fetch(
        "SELECT public_jwk FROM oauth_signing_keys WHERE retired_at IS NULL OR retired_at > $1 "
        "ORDER BY created_at DESC",
        retired_after,
    )
    return [row["public_jwk"] for row in rows]
