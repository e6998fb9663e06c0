"""The auth actor's queries over its own tables (see migrations/): organisations and memberships, people,
invitations, magic links, sessions, sign-in rate limits and API keys. New rows get their ids here."""

from __future__ import annotations

import datetime as dt
import secrets
from dataclasses import dataclass
from typing import Literal

import asyncpg

from bus_schemas.identity import ApiKeyInfo, InviteInfo, MemberInfo, OrgMembership, SessionInfo


def iso(value: dt.datetime) -> str:
    """A time as the bus carries it: UTC, whole seconds, `Z`."""
    return value.astimezone(dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class Membership:
    """A person's role in one organisation."""

    org_id: str
    role: str


@dataclass(frozen=True)
class WindowCount:
    """One rate-limit bucket's count in the current window."""

    bucket: str
    hits: int
    seconds_left: float
    """Until the window ends."""


@dataclass(frozen=True)
class RedeemedLink:
    """What a magic link was issued for."""

    email: str
    next_path: str | None


@dataclass(frozen=True)
class LiveSession:
    """A session that is neither revoked nor expired, and its person."""

    session_id: str
    person_id: str
    email: str


@dataclass(frozen=True)
class StoredKey:
    """A live API key's organisation and the argon2id hash of its secret."""

    org_id: str
    secret_hash: str


@dataclass(frozen=True)
class KeyCreator:
    """Who created a live API key (None: the operator, through CREATE_API_KEY)."""

    person_id: str | None


# --- organisations ---


async def new_org(conn: asyncpg.Connection, name: str) -> str:
    """A new organisation named `name` (the org id is appended when another has that name)."""
    org_id = f"o{secrets.token_hex(8)}"
    created = await conn.fetchval(
        "INSERT INTO orgs (org_id, name) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING RETURNING org_id", org_id, name
    )
    if created is None:
        await conn.execute("INSERT INTO orgs (org_id, name) VALUES ($1, $2)", org_id, f"{name} ({org_id})")
    return org_id


async def org_named(conn: asyncpg.Connection, name: str) -> str:
    """The id of the organisation named `name`, created when there is none."""
    org_id: str = await conn.fetchval(
        """
        INSERT INTO orgs (org_id, name) VALUES ($1, $2)
        ON CONFLICT (name) DO UPDATE SET name = EXCLUDED.name
        RETURNING org_id
        """,
        f"o{secrets.token_hex(8)}", name,
    )
    return org_id


async def org_name(db: asyncpg.Connection | asyncpg.Pool, org_id: str) -> str | None:
    """The organisation's name, or None when there is no such organisation."""
    name: str | None = await db.fetchval("SELECT name FROM orgs WHERE org_id = $1", org_id)
    return name


async def lock_org(conn: asyncpg.Connection, org_id: str) -> None:
    """Serialise membership changes of one organisation (two owners demoting each other at once must not
    leave it with none), until the transaction ends."""
    await conn.execute("SELECT 1 FROM orgs WHERE org_id = $1 FOR UPDATE", org_id)


# --- memberships ---


async def member_role(db: asyncpg.Connection | asyncpg.Pool, org_id: str, person_id: str) -> str | None:
    """The person's role in the organisation (`owner` or `member`), or None when they are not in it."""
    role: str | None = await db.fetchval(
        "SELECT role FROM memberships WHERE org_id = $1 AND person_id = $2", org_id, person_id)
    return role


async def first_org(db: asyncpg.Connection | asyncpg.Pool, person_id: str) -> Membership | None:
    """The person's first (default) organisation, or None when they belong to none."""
    row = await db.fetchrow(
        "SELECT org_id, role FROM memberships WHERE person_id = $1 ORDER BY joined_at LIMIT 1", person_id
    )
    return None if row is None else Membership(org_id=row["org_id"], role=row["role"])


async def owners(conn: asyncpg.Connection, org_id: str) -> int:
    """How many owners the organisation has."""
    count: int = await conn.fetchval("SELECT count(*) FROM memberships WHERE org_id = $1 AND role = 'owner'", org_id)
    return count


async def add_member(conn: asyncpg.Connection, org_id: str, person_id: str, role: str) -> None:
    """Make the person a member of the organisation with `role`."""
    await conn.execute(
        "INSERT INTO memberships (org_id, person_id, role) VALUES ($1, $2, $3)", org_id, person_id, role
    )


async def email_is_member(conn: asyncpg.Connection, org_id: str, email: str) -> bool:
    """Whether the person with this address is a member of the organisation."""
    member = await conn.fetchval(
        "SELECT 1 FROM memberships m JOIN people p USING (person_id) WHERE m.org_id = $1 AND p.email = $2",
        org_id, email,
    )
    return bool(member)


async def members_seen_by(db: asyncpg.Connection | asyncpg.Pool, org_id: str, asked_by: str) -> tuple[MemberInfo, ...]:
    """The organisation's members in joining order; none when `asked_by` is not one of them."""
    rows = await db.fetch(
        """
        SELECT m.person_id, p.email, m.role, m.joined_at FROM memberships m JOIN people p USING (person_id)
        WHERE m.org_id = $1 AND EXISTS (SELECT 1 FROM memberships a WHERE a.org_id = $1 AND a.person_id = $2)
        ORDER BY m.joined_at
        """,
        org_id, asked_by,
    )
    return tuple(
        MemberInfo(person_id=r["person_id"], email=r["email"], role=r["role"], joined_at=iso(r["joined_at"]))
        for r in rows
    )


async def memberships_of(db: asyncpg.Connection | asyncpg.Pool, person_id: str) -> tuple[OrgMembership, ...]:
    """Every organisation the person belongs to, in joining order."""
    rows = await db.fetch(
        """
        SELECT m.org_id, o.name, m.role FROM memberships m JOIN orgs o USING (org_id)
        WHERE m.person_id = $1 ORDER BY m.joined_at
        """,
        person_id,
    )
    return tuple(OrgMembership(org_id=r["org_id"], name=r["name"], role=r["role"]) for r in rows)


async def remove_member(conn: asyncpg.Connection, org_id: str, person_id: str) -> dt.datetime:
    """End a membership (the caller checked it exists, under `lock_org`); returns when it began."""
    joined_at: dt.datetime = await conn.fetchval(
        "DELETE FROM memberships WHERE org_id = $1 AND person_id = $2 RETURNING joined_at", org_id, person_id)
    return joined_at


async def set_role(conn: asyncpg.Connection, org_id: str, person_id: str, role: str) -> MemberInfo:
    """Give a member (the caller checked they are one) `role`; returns them as they are now."""
    row = await conn.fetchrow(
        """
        UPDATE memberships m SET role = $3 FROM people p
        WHERE m.org_id = $1 AND m.person_id = $2 AND p.person_id = m.person_id
        RETURNING m.person_id, p.email, m.role, m.joined_at
        """,
        org_id, person_id, role,
    )
    return MemberInfo(person_id=row["person_id"], email=row["email"], role=row["role"], joined_at=iso(row["joined_at"]))


# --- people ---


async def person_for_email(conn: asyncpg.Connection, email: str) -> tuple[str, bool]:
    """(person id, whether they were created just now) of the person with this address."""
    person_id: str | None = await conn.fetchval(
        "INSERT INTO people (person_id, email) VALUES ($1, $2) ON CONFLICT (email) DO NOTHING "
        "RETURNING person_id",
        f"p{secrets.token_hex(8)}", email,
    )
    if person_id is not None:
        return person_id, True
    existing: str = await conn.fetchval("SELECT person_id FROM people WHERE email = $1", email)
    return existing, False


async def person_email(db: asyncpg.Connection | asyncpg.Pool, person_id: str) -> str | None:
    """The person's address, or None when there is no such person."""
    email: str | None = await db.fetchval("SELECT email FROM people WHERE person_id = $1", person_id)
    return email


# --- invitations ---


async def invite(conn: asyncpg.Connection, org_id: str, email: str, invited_by: str) -> tuple[str, str]:
    """Invite the address into the organisation (a pending invitation of it is renewed by `invited_by`);
    (invite id, role offered)."""
    row = await conn.fetchrow(
        """
        INSERT INTO invites (invite_id, org_id, email, invited_by) VALUES ($1, $2, $3, $4)
        ON CONFLICT (org_id, email) WHERE accepted_at IS NULL DO UPDATE SET invited_by = EXCLUDED.invited_by
        RETURNING invite_id, role
        """,
        f"i{secrets.token_hex(8)}", org_id, email, invited_by,
    )
    return row["invite_id"], row["role"]


async def accept_invites(conn: asyncpg.Connection, email: str, person_id: str) -> tuple[str, ...]:
    """Accept every pending invitation of the address for the person; the organisations they joined."""
    rows = await conn.fetch(
        """
        WITH accepted AS (
            UPDATE invites SET accepted_at = now() WHERE email = $1 AND accepted_at IS NULL
            RETURNING org_id, role
        )
        INSERT INTO memberships (org_id, person_id, role) SELECT org_id, $2, role FROM accepted
        ON CONFLICT (org_id, person_id) DO NOTHING RETURNING org_id
        """,
        email, person_id,
    )
    return tuple(r["org_id"] for r in rows)


async def pending_invites(conn: asyncpg.Connection, org_id: str) -> tuple[InviteInfo, ...]:
    """The organisation's invitations not accepted yet, newest first."""
    rows = await conn.fetch(
        """
        SELECT invite_id, email, role, invited_by, created_at FROM invites
        WHERE org_id = $1 AND accepted_at IS NULL ORDER BY created_at DESC
        """,
        org_id,
    )
    return tuple(
        InviteInfo(invite_id=r["invite_id"], email=r["email"], role=r["role"], invited_by=r["invited_by"],
                   created_at=iso(r["created_at"]))
        for r in rows
    )


async def withdraw_invite(conn: asyncpg.Connection, org_id: str, invite_id: str) -> str | None:
    """Delete a pending invitation of the organisation; its id, or None when there was none."""
    withdrawn: str | None = await conn.fetchval(
        "DELETE FROM invites WHERE org_id = $1 AND invite_id = $2 AND accepted_at IS NULL RETURNING invite_id",
        org_id, invite_id,
    )
    return withdrawn


# --- sign-in rate limits ---


async def count_links(conn: asyncpg.Connection, buckets: list[str], window_seconds: int) -> tuple[WindowCount, ...]:
    """Count one sign-in link in each bucket's current fixed window (and forget windows long past)."""
    rows = await conn.fetch(
        """
        INSERT INTO rate_limits (bucket, window_start, hits)
        SELECT b, to_timestamp(floor(extract(epoch FROM now()) / $2) * $2), 1 FROM unnest($1::text[]) AS b
        ON CONFLICT (bucket, window_start) DO UPDATE SET hits = rate_limits.hits + 1
        RETURNING bucket, hits, extract(epoch FROM window_start + make_interval(secs => $2) - now()) AS left_s
        """,
        buckets, window_seconds,
    )
    await conn.execute(
        "DELETE FROM rate_limits WHERE window_start < now() - make_interval(secs => $1)", 2 * window_seconds
    )
    return tuple(WindowCount(bucket=r["bucket"], hits=r["hits"], seconds_left=float(r["left_s"])) for r in rows)


# --- magic links ---


async def add_magic_link(
    conn: asyncpg.Connection, digest: bytes, email: str, next_path: str | None, ttl_seconds: int
) -> None:
    """Store a new magic link's digest, usable once for `ttl_seconds`."""
    await conn.execute(
        """
        INSERT INTO magic_links (token_hash, email, next_path, expires_at)
        VALUES ($1, $2, $3, now() + make_interval(secs => $4))
        """,
        digest, email, next_path, ttl_seconds,
    )
    # Links older than a day are of no use to anyone, not even to explain a rejection.
    await conn.execute("DELETE FROM magic_links WHERE expires_at < now() - interval '1 day'")


async def use_magic_link(conn: asyncpg.Connection, digest: bytes) -> RedeemedLink | None:
    """Mark the link used, if it is unused and unexpired; what it was for, else None."""
    row = await conn.fetchrow(
        """
        UPDATE magic_links SET used_at = now()
        WHERE token_hash = $1 AND used_at IS NULL AND expires_at > now()
        RETURNING email, next_path
        """,
        digest,
    )
    return None if row is None else RedeemedLink(email=row["email"], next_path=row["next_path"])


async def unusable_link_reason(
    conn: asyncpg.Connection, digest: bytes
) -> Literal["unknown token", "already used", "expired"]:
    """Why a link that `use_magic_link` refused cannot be used."""
    known = await conn.fetchrow(
        "SELECT used_at, expires_at <= now() AS expired FROM magic_links WHERE token_hash = $1", digest
    )
    return "unknown token" if known is None else "already used" if known["used_at"] is not None else "expired"


# --- sessions ---


async def start_session(
    conn: asyncpg.Connection, digest: bytes, person_id: str, user_agent: str, client_ip: str, ttl_seconds: int
) -> tuple[str, dt.datetime]:
    """A new session of the person, stored under its token's digest; (session id, expiry)."""
    session_id = f"s{secrets.token_hex(8)}"
    expires_at: dt.datetime = await conn.fetchval(
        """
        INSERT INTO sessions (session_id, token_hash, person_id, user_agent, client_ip, expires_at)
        VALUES ($1, $2, $3, $4, $5, now() + make_interval(secs => $6)) RETURNING expires_at
        """,
        session_id, digest, person_id, user_agent, client_ip, ttl_seconds,
    )
    return session_id, expires_at


async def live_session(db: asyncpg.Connection | asyncpg.Pool, digest: bytes) -> LiveSession | None:
    """The live session stored under this token digest, or None."""
    row = await db.fetchrow(
        """
        SELECT s.session_id, s.person_id, p.email FROM sessions s JOIN people p USING (person_id)
        WHERE s.token_hash = $1 AND s.revoked_at IS NULL AND s.expires_at > now()
        """,
        digest,
    )
    return None if row is None else LiveSession(session_id=row["session_id"], person_id=row["person_id"],
                                                email=row["email"])


async def dead_session_reason(
    db: asyncpg.Connection | asyncpg.Pool, digest: bytes
) -> Literal["unknown", "revoked", "expired"]:
    """Why `live_session` found no session under this digest."""
    known = await db.fetchrow("SELECT revoked_at IS NOT NULL AS revoked FROM sessions WHERE token_hash = $1", digest)
    return "unknown" if known is None else "revoked" if known["revoked"] else "expired"


async def live_sessions(db: asyncpg.Connection | asyncpg.Pool, person_id: str) -> tuple[SessionInfo, ...]:
    """The person's live sessions, newest first."""
    rows = await db.fetch(
        """
        SELECT session_id, created_at, expires_at, user_agent, client_ip FROM sessions
        WHERE person_id = $1 AND revoked_at IS NULL AND expires_at > now() ORDER BY created_at DESC
        """,
        person_id,
    )
    return tuple(
        SessionInfo(session_id=r["session_id"], created_at=iso(r["created_at"]), expires_at=iso(r["expires_at"]),
                    user_agent=r["user_agent"], client_ip=r["client_ip"])
        for r in rows
    )


async def revoke_session(db: asyncpg.Connection | asyncpg.Pool, person_id: str, session_id: str) -> str | None:
    """Revoke a live session of the person; its id, or None when they have no such live session."""
    revoked: str | None = await db.fetchval(
        """
        UPDATE sessions SET revoked_at = now()
        WHERE person_id = $1 AND session_id = $2 AND revoked_at IS NULL RETURNING session_id
        """,
        person_id, session_id,
    )
    return revoked


# --- API keys ---


async def add_api_key(
    conn: asyncpg.Connection, key_id: str, org_id: str, label: str, secret_hash: str, created_by: str | None
) -> None:
    """Store a new API key of the organisation (`created_by` None: made by the operator)."""
    await conn.execute(
        "INSERT INTO api_keys (key_id, org_id, label, secret_hash, created_by) VALUES ($1, $2, $3, $4, $5)",
        key_id, org_id, label, secret_hash, created_by,
    )


async def live_key_org(db: asyncpg.Connection | asyncpg.Pool, key_id: str) -> str | None:
    """The organisation of a live (unrevoked) key, or None."""
    org_id: str | None = await db.fetchval(
        "SELECT org_id FROM api_keys WHERE key_id = $1 AND revoked_at IS NULL", key_id
    )
    return org_id


async def live_key(db: asyncpg.Connection | asyncpg.Pool, key_id: str) -> StoredKey | None:
    """A live key's organisation and secret hash, or None."""
    row = await db.fetchrow("SELECT org_id, secret_hash FROM api_keys WHERE key_id = $1 AND revoked_at IS NULL", key_id)
    return None if row is None else StoredKey(org_id=row["org_id"], secret_hash=row["secret_hash"])


async def live_key_creator(db: asyncpg.Connection | asyncpg.Pool, org_id: str, key_id: str) -> KeyCreator | None:
    """Who created a live key of the organisation, or None when it has no such live key."""
    row = await db.fetchrow(
        "SELECT created_by FROM api_keys WHERE org_id = $1 AND key_id = $2 AND revoked_at IS NULL", org_id, key_id
    )
    return None if row is None else KeyCreator(person_id=row["created_by"])


async def live_keys(
    db: asyncpg.Connection | asyncpg.Pool, org_id: str, created_by: str | None
) -> tuple[ApiKeyInfo, ...]:
    """The organisation's live keys, newest first; only those `created_by` made unless that is None."""
    rows = await db.fetch(
        """
        SELECT key_id, label, created_at, created_by FROM api_keys
        WHERE org_id = $1 AND revoked_at IS NULL AND ($2::text IS NULL OR created_by = $2)
        ORDER BY created_at DESC
        """,
        org_id, created_by,
    )
    return tuple(
        ApiKeyInfo(key_id=r["key_id"], label=r["label"], created_at=iso(r["created_at"]), created_by=r["created_by"])
        for r in rows
    )


async def revoke_key(db: asyncpg.Connection | asyncpg.Pool, key_id: str) -> str | None:
    """Revoke a live key; its id, or None when it was not live."""
    revoked: str | None = await db.fetchval(
        "UPDATE api_keys SET revoked_at = now() WHERE key_id = $1 AND revoked_at IS NULL RETURNING key_id", key_id
    )
    return revoked


async def revoke_keys_created_by(conn: asyncpg.Connection, org_id: str, person_id: str) -> tuple[str, ...]:
    """Revoke every live key the person created in the organisation; their ids, in order."""
    revoked: list[str] = await conn.fetchval(
        """
        WITH revoked AS (
            UPDATE api_keys SET revoked_at = now()
            WHERE org_id = $1 AND created_by = $2 AND revoked_at IS NULL RETURNING key_id
        ) SELECT coalesce(array_agg(key_id ORDER BY key_id), '{}') FROM revoked
        """,
        org_id, person_id,
    )
    return tuple(revoked)
