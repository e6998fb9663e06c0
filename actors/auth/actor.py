"""The auth actor's handlers: people signing in with magic links, sessions, organisations and their
members, and API keys. It alone owns these tables; the gateway asks it over the bus.

Every rejection is logged with its reason, never with the secret that was presented.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import logging
import math
import secrets
from pathlib import Path

import asyncpg

from actors.auth.config import AuthConfig
from actors.auth.keys import VerifiedKeys, new_api_key, parse_api_key, secret_matches
from actors.auth.mail import Mail, Mailer
from actors.auth.tokens import (
    LINK_PREFIX,
    SESSION_PREFIX,
    email_bucket,
    ip_bucket,
    is_token,
    new_token,
    normalize_email,
    token_digest,
)
from actors.runtime.actor import Actor, Context
from actors.runtime.settings import Settings
from bus_schemas.base import SUBJECT_TOKEN_RE, Failed, FailureCode
from bus_schemas.identity import (
    ApiKeyCreated,
    ApiKeyInfo,
    ApiKeyList,
    ApiKeyRevoked,
    Authenticate,
    AuthenticateReply,
    ChangeMemberRole,
    ChangeMemberRoleReply,
    CreateApiKey,
    CreateApiKeyReply,
    GetMe,
    GetMeReply,
    InviteCreated,
    InviteInfo,
    InviteList,
    InviteMember,
    InviteMemberReply,
    InviteRevoked,
    IssueApiKey,
    IssueApiKeyReply,
    ListApiKeys,
    ListApiKeysReply,
    ListInvites,
    ListInvitesReply,
    ListMembers,
    ListMembersReply,
    ListSessions,
    ListSessionsReply,
    MagicLinkRequested,
    Me,
    MemberInfo,
    MemberList,
    MemberRemoved,
    MemberRoleChanged,
    MembershipEnded,
    OrgMembership,
    Principal,
    RedeemMagicLink,
    RedeemMagicLinkReply,
    RemoveMember,
    RemoveMemberReply,
    RequestMagicLink,
    RequestMagicLinkReply,
    RevokeApiKey,
    RevokeApiKeyReply,
    RevokeInvite,
    RevokeInviteReply,
    RevokeSession,
    RevokeSessionReply,
    SessionInfo,
    SessionList,
    SessionRevoked,
    SessionStarted,
    safe_next,
)
from bus_schemas.registry import (
    AUTHENTICATE,
    CHANGE_MEMBER_ROLE,
    CREATE_API_KEY,
    GET_ME,
    INVITE_MEMBER,
    ISSUE_API_KEY,
    LIST_API_KEYS,
    LIST_INVITES,
    LIST_MEMBERS,
    LIST_SESSIONS,
    MEMBERSHIP_ENDED,
    REDEEM_MAGIC_LINK,
    REMOVE_MEMBER,
    REQUEST_MAGIC_LINK,
    REVOKE_API_KEY,
    REVOKE_INVITE,
    REVOKE_SESSION,
)

REJECTED = "invalid or revoked API key"
SESSION_REJECTED = "the session is invalid, expired or revoked; sign in again"
LINK_REJECTED = "this sign-in link is invalid, expired or already used; ask for a new one"
OWNERS_ONLY = "only an owner of the organisation can {}"


class AuthActor(Actor):
    """The auth actor; it keeps the process settings it serves with for its mailer."""

    def __init__(self, config: AuthConfig) -> None:
        super().__init__("auth", migrations=Path(__file__).parent / "migrations")
        self.config = config
        self._mailer: Mailer | None = None

    @property
    def mailer(self) -> Mailer:
        """Where sign-in mail goes (set while serving)."""
        if self._mailer is None:
            raise RuntimeError("the auth actor is not serving")
        return self._mailer

    async def serve(self, settings: Settings, stop: asyncio.Event) -> None:
        """Serve with a mailer built from `settings`; queued mail gets a moment to go out on stop."""
        self._mailer = Mailer(settings.smtp_url, settings.mail_from)
        try:
            await super().serve(settings, stop)
        finally:
            await self._mailer.close()


def _iso(value: dt.datetime) -> str:
    return value.astimezone(dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _membership_event_id(org_id: str, person_id: str, joined_at: dt.datetime) -> str:
    """The id of the event ending one membership: the same for every publish of it, another for a later
    membership of the same person in the same organisation."""
    return "me" + hashlib.sha256(f"{org_id}:{person_id}:{joined_at.isoformat()}".encode()).hexdigest()[:40]


async def _first_org(conn: asyncpg.Connection | asyncpg.Pool, person_id: str) -> asyncpg.Record | None:
    return await conn.fetchrow(
        "SELECT org_id, role FROM memberships WHERE person_id = $1 ORDER BY joined_at LIMIT 1", person_id
    )


async def member_role(conn: asyncpg.Connection | asyncpg.Pool, org_id: str, person_id: str) -> str | None:
    """The person's role in the organisation (`owner` or `member`), or None when they are not in it."""
    role: str | None = await conn.fetchval(
        "SELECT role FROM memberships WHERE org_id = $1 AND person_id = $2", org_id, person_id)
    return role


async def _owner_check(conn: asyncpg.Connection, org_id: str, person_id: str, what: str,
                       log: logging.Logger) -> Failed | None:
    """None when `person_id` owns `org_id`, else the Failed(forbidden) to answer (the refusal logged)."""
    role = await member_role(conn, org_id, person_id)
    if role == "owner":
        return None
    log.info("rejected %s in %s by %s: %s", what, org_id, person_id,
             "not a member" if role is None else f"role {role}, not owner")
    return Failed(code=FailureCode.FORBIDDEN, detail=OWNERS_ONLY.format(what))


async def _lock_org(conn: asyncpg.Connection, org_id: str) -> None:
    """Serialise membership changes of one organisation (two owners demoting each other at once must not
    leave it with none), until the transaction ends."""
    await conn.execute("SELECT 1 FROM orgs WHERE org_id = $1 FOR UPDATE", org_id)


async def _member_role(
    conn: asyncpg.Connection, org_id: str, person_id: str, what: str, log: logging.Logger
) -> str | Failed:
    """The person's role in the organisation, or the `not_found` answer (logged as a rejected `what`)."""
    role = await member_role(conn, org_id, person_id)
    if role is None:
        log.info("rejected %s %s: %s is not a member", what, org_id, person_id[:64])
        return Failed(code=FailureCode.NOT_FOUND, detail=f"no person {person_id[:64]!r} in this organisation")
    return str(role)


async def _owners(conn: asyncpg.Connection, org_id: str) -> int:
    """How many owners the organisation has."""
    count: int = await conn.fetchval("SELECT count(*) FROM memberships WHERE org_id = $1 AND role = 'owner'", org_id)
    return count


async def _new_org(conn: asyncpg.Connection, name: str) -> str:
    """A new organisation named `name` (the org id is appended when another has that name)."""
    org_id = f"o{secrets.token_hex(8)}"
    created = await conn.fetchval(
        "INSERT INTO orgs (org_id, name) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING RETURNING org_id", org_id, name
    )
    if created is None:
        await conn.execute("INSERT INTO orgs (org_id, name) VALUES ($1, $2)", org_id, f"{name} ({org_id})")
    return org_id


def create_actor(config: AuthConfig | None = None) -> Actor:
    """The auth actor."""
    cfg = config or AuthConfig()
    actor = AuthActor(cfg)
    verified = VerifiedKeys(ttl=cfg.key_cache_seconds)

    async def count_and_check(conn: asyncpg.Connection, email: str, source: str) -> Failed | None:
        """Count one link for the address and for its source (a client IP bucket, or an organisation's
        invitations); a Failed(rate_limited) when either is over its limit."""
        rows = await conn.fetch(
            """
            INSERT INTO rate_limits (bucket, window_start, hits)
            SELECT b, to_timestamp(floor(extract(epoch FROM now()) / $2) * $2), 1 FROM unnest($1::text[]) AS b
            ON CONFLICT (bucket, window_start) DO UPDATE SET hits = rate_limits.hits + 1
            RETURNING bucket, hits, extract(epoch FROM window_start + make_interval(secs => $2) - now()) AS left_s
            """,
            [email_bucket(email), source], cfg.rate_window_seconds,
        )
        await conn.execute(
            "DELETE FROM rate_limits WHERE window_start < now() - make_interval(secs => $1)",
            2 * cfg.rate_window_seconds,
        )
        for row in rows:
            is_email = row["bucket"].startswith("email:")
            limit = cfg.links_per_email if is_email else cfg.links_per_ip
            if row["hits"] > limit:
                retry_after = max(1, math.ceil(row["left_s"]))
                minutes = max(1, math.ceil(retry_after / 60))
                which = "this address" if is_email else "your network address"
                actor.log.info("rejected magic link request: over %d links per %d s for %s", limit,
                               cfg.rate_window_seconds, "the address" if is_email else row["bucket"])
                return Failed(code=FailureCode.RATE_LIMITED,
                              detail=f"too many sign-in links for {which}; try again in {minutes} minute(s)",
                              retry_after_seconds=retry_after)
        return None

    async def issue_link(conn: asyncpg.Connection, email: str, link_base: str, next_path: str | None,
                         subject: str, intro: str) -> None:
        """Store a new magic link's digest and mail the link."""
        token, digest = new_token(LINK_PREFIX)
        await conn.execute(
            """
            INSERT INTO magic_links (token_hash, email, next_path, expires_at)
            VALUES ($1, $2, $3, now() + make_interval(secs => $4))
            """,
            digest, email, next_path, cfg.magic_link_ttl_seconds,
        )
        # Links older than a day are of no use to anyone, not even to explain a rejection.
        await conn.execute("DELETE FROM magic_links WHERE expires_at < now() - interval '1 day'")
        link = f"{link_base}?token={token}"
        minutes = cfg.magic_link_ttl_seconds // 60
        body = (f"{intro}\n\n{link}\n\nThe link works once, for {minutes} minutes. "
                "If you did not ask for it, ignore this mail.\n")
        actor.mailer.send(Mail(to=email, subject=subject, body=body))

    @actor.rpc(REQUEST_MAGIC_LINK)
    async def request_magic_link(request: RequestMagicLink, ctx: Context) -> RequestMagicLinkReply:
        email = normalize_email(request.email)
        if email is None:
            ctx.log.info("rejected magic link request: not an email address")
            return Failed(code=FailureCode.INVALID, detail="that is not an email address", field="email")
        next_path = safe_next(request.next)
        if request.next is not None and next_path is None:
            ctx.log.info("rejected magic link request: `next` is not a local path")
            return Failed(code=FailureCode.INVALID, detail="`next` must be a path on this site", field="next")
        if not request.link_base.startswith(("https://", "http://")):
            ctx.log.info("rejected magic link request: link base is not an http(s) URL")
            return Failed(code=FailureCode.INVALID, detail="link_base must be an http(s) URL", field="link_base")
        async with ctx.pool.acquire() as conn, conn.transaction():
            limited = await count_and_check(conn, email, ip_bucket(request.client_ip))
            if limited is not None:
                return limited
            # Sent whether or not the address belongs to anyone: the first sign-in creates the person.
            await issue_link(conn, email, request.link_base, next_path, "Your sign-in link",
                             "Follow this link to sign in to Build My MCP Server:")
        return MagicLinkRequested(expires_in_seconds=cfg.magic_link_ttl_seconds)

    @actor.rpc(REDEEM_MAGIC_LINK)
    async def redeem_magic_link(request: RedeemMagicLink, ctx: Context) -> RedeemMagicLinkReply:
        if not is_token(request.token, LINK_PREFIX):
            ctx.log.info("rejected magic link: malformed token")
            return Failed(code=FailureCode.UNAUTHENTICATED, detail=LINK_REJECTED)
        digest = token_digest(request.token)
        async with ctx.pool.acquire() as conn, conn.transaction():
            link = await conn.fetchrow(
                """
                UPDATE magic_links SET used_at = now()
                WHERE token_hash = $1 AND used_at IS NULL AND expires_at > now()
                RETURNING email, next_path
                """,
                digest,
            )
            if link is None:
                known = await conn.fetchrow("SELECT used_at, expires_at <= now() AS expired FROM magic_links "
                                            "WHERE token_hash = $1", digest)
                reason = ("unknown token" if known is None else "already used" if known["used_at"] is not None
                          else "expired")
                ctx.log.info("rejected magic link: %s", reason)
                return Failed(code=FailureCode.UNAUTHENTICATED, detail=LINK_REJECTED)
            email: str = link["email"]
            person_id = await conn.fetchval(
                "INSERT INTO people (person_id, email) VALUES ($1, $2) ON CONFLICT (email) DO NOTHING "
                "RETURNING person_id",
                f"p{secrets.token_hex(8)}", email,
            )
            first_sign_in = person_id is not None
            if person_id is None:
                person_id = await conn.fetchval("SELECT person_id FROM people WHERE email = $1", email)
            else:
                # Everyone owns an organisation from their first sign-in: it is their default one.
                org_id = await _new_org(conn, email)
                await conn.execute(
                    "INSERT INTO memberships (org_id, person_id, role) VALUES ($1, $2, 'owner')", org_id, person_id
                )
            joined = await conn.fetch(
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
            token, token_hash = new_token(SESSION_PREFIX)
            session_id = f"s{secrets.token_hex(8)}"
            expires_at = await conn.fetchval(
                """
                INSERT INTO sessions (session_id, token_hash, person_id, user_agent, client_ip, expires_at)
                VALUES ($1, $2, $3, $4, $5, now() + make_interval(secs => $6)) RETURNING expires_at
                """,
                session_id, token_hash, person_id, request.user_agent[:300], request.client_ip[:100],
                cfg.session_ttl_seconds,
            )
            first = await _first_org(conn, person_id)
        assert first is not None  # every person owns an organisation
        ctx.log.info("person %s signed in (session %s%s%s)", person_id, session_id,
                     ", first sign-in" if first_sign_in else "",
                     f", joined {', '.join(r['org_id'] for r in joined)}" if joined else "")
        return SessionStarted(
            session_id=session_id, token=token, person_id=person_id, email=email, org_id=first["org_id"],
            expires_at=_iso(expires_at), max_age_seconds=cfg.session_ttl_seconds, next=link["next_path"],
            first_sign_in=first_sign_in,
        )

    async def session_principal(request: Authenticate, ctx: Context) -> AuthenticateReply:
        digest = token_digest(request.token)
        row = await ctx.pool.fetchrow(
            """
            SELECT s.session_id, s.person_id, p.email FROM sessions s JOIN people p USING (person_id)
            WHERE s.token_hash = $1 AND s.revoked_at IS NULL AND s.expires_at > now()
            """,
            digest,
        )
        if row is None:
            known = await ctx.pool.fetchrow(
                "SELECT revoked_at IS NOT NULL AS revoked FROM sessions WHERE token_hash = $1", digest
            )
            reason = "unknown" if known is None else "revoked" if known["revoked"] else "expired"
            ctx.log.info("rejected session: %s session", reason)
            return Failed(code=FailureCode.UNAUTHENTICATED, detail=SESSION_REJECTED)
        person_id: str = row["person_id"]
        if request.org_id is not None:
            member = await ctx.pool.fetchrow(
                "SELECT org_id, role FROM memberships WHERE person_id = $1 AND org_id = $2", person_id, request.org_id
            )
            if member is None:
                ctx.log.info("rejected session %s: person %s is not a member of the organisation asked for",
                             row["session_id"], person_id)
                return Failed(code=FailureCode.FORBIDDEN,
                              detail=f"you are not a member of organisation {request.org_id[:64]!r}")
        else:
            member = await _first_org(ctx.pool, person_id)
            if member is None:
                ctx.log.info("rejected session %s: person %s belongs to no organisation", row["session_id"], person_id)
                return Failed(code=FailureCode.FORBIDDEN, detail="you belong to no organisation")
        return Principal(
            org_id=member["org_id"], subject=f"person:{person_id}", person_id=person_id, email=row["email"],
            role=member["role"], session_id=row["session_id"],
        )

    @actor.rpc(AUTHENTICATE)
    async def authenticate(request: Authenticate, ctx: Context) -> AuthenticateReply:
        if request.token.startswith(SESSION_PREFIX):
            if not is_token(request.token, SESSION_PREFIX):
                ctx.log.info("rejected session: malformed token")
                return Failed(code=FailureCode.UNAUTHENTICATED, detail=SESSION_REJECTED)
            return await session_principal(request, ctx)
        parsed = parse_api_key(request.token)
        if parsed is None:
            ctx.log.info("rejected credential: neither an API key nor a session")
            return Failed(code=FailureCode.UNAUTHENTICATED, detail=REJECTED)
        key_id, secret = parsed
        cached = verified.get(request.token)
        if cached is not None:
            # The cache spares argon2id, not the revocation check: one indexed read.
            org_id = await ctx.pool.fetchval(
                "SELECT org_id FROM api_keys WHERE key_id = $1 AND revoked_at IS NULL", key_id
            )
            if org_id is None:
                verified.forget_key(key_id)
                ctx.log.info("rejected API key %s: revoked", key_id)
                return Failed(code=FailureCode.UNAUTHENTICATED, detail=REJECTED)
        else:
            row = await ctx.pool.fetchrow(
                "SELECT org_id, secret_hash FROM api_keys WHERE key_id = $1 AND revoked_at IS NULL", key_id
            )
            if row is None or not secret_matches(row["secret_hash"], secret):
                ctx.log.info("rejected API key %s: %s", key_id, "unknown or revoked" if row is None else "wrong secret")
                return Failed(code=FailureCode.UNAUTHENTICATED, detail=REJECTED)
            org_id = row["org_id"]
            verified.put(request.token, org_id, key_id)
        if request.org_id is not None and request.org_id != org_id:
            ctx.log.info("rejected API key %s: asked to act for another organisation", key_id)
            return Failed(code=FailureCode.FORBIDDEN, detail="an API key acts only for its own organisation")
        return Principal(org_id=org_id, subject=f"api_key:{key_id}")

    @actor.rpc(GET_ME)
    async def get_me(request: GetMe, ctx: Context) -> GetMeReply:
        if request.person_id is None:
            name = await ctx.pool.fetchval("SELECT name FROM orgs WHERE org_id = $1", request.org_id)
            orgs: tuple[OrgMembership, ...] = (OrgMembership(org_id=request.org_id, name=name or "", role="api_key"),)
            return Me(subject=request.subject, org_id=request.org_id, orgs=orgs)
        email = await ctx.pool.fetchval("SELECT email FROM people WHERE person_id = $1", request.person_id)
        if email is None:
            ctx.log.info("rejected get_me: unknown person %s", request.person_id)
            return Failed(code=FailureCode.NOT_FOUND, detail="no such person")
        rows = await ctx.pool.fetch(
            """
            SELECT m.org_id, o.name, m.role FROM memberships m JOIN orgs o USING (org_id)
            WHERE m.person_id = $1 ORDER BY m.joined_at
            """,
            request.person_id,
        )
        orgs = tuple(OrgMembership(org_id=r["org_id"], name=r["name"], role=r["role"]) for r in rows)
        role = next((m.role for m in orgs if m.org_id == request.org_id), None)
        return Me(subject=request.subject, org_id=request.org_id, person_id=request.person_id, email=email,
                  role=role, orgs=orgs)

    @actor.rpc(LIST_SESSIONS)
    async def list_sessions(request: ListSessions, ctx: Context) -> ListSessionsReply:
        rows = await ctx.pool.fetch(
            """
            SELECT session_id, created_at, expires_at, user_agent, client_ip FROM sessions
            WHERE person_id = $1 AND revoked_at IS NULL AND expires_at > now() ORDER BY created_at DESC
            """,
            request.person_id,
        )
        return SessionList(sessions=tuple(
            SessionInfo(session_id=r["session_id"], created_at=_iso(r["created_at"]), expires_at=_iso(r["expires_at"]),
                        user_agent=r["user_agent"], client_ip=r["client_ip"])
            for r in rows
        ))

    @actor.rpc(REVOKE_SESSION)
    async def revoke_session(request: RevokeSession, ctx: Context) -> RevokeSessionReply:
        revoked = await ctx.pool.fetchval(
            """
            UPDATE sessions SET revoked_at = now()
            WHERE person_id = $1 AND session_id = $2 AND revoked_at IS NULL RETURNING session_id
            """,
            request.person_id, request.session_id,
        )
        if revoked is None:
            ctx.log.info("rejected session revocation by %s: no live session %s of theirs", request.person_id,
                         request.session_id[:64])
            return Failed(code=FailureCode.NOT_FOUND, detail=f"no session {request.session_id[:64]!r} of yours")
        ctx.log.info("person %s revoked session %s", request.person_id, revoked)
        return SessionRevoked(session_id=revoked)

    @actor.rpc(INVITE_MEMBER)
    async def invite_member(request: InviteMember, ctx: Context) -> InviteMemberReply:
        email = normalize_email(request.email)
        if email is None:
            ctx.log.info("rejected invite: not an email address")
            return Failed(code=FailureCode.INVALID, detail="that is not an email address", field="email")
        async with ctx.pool.acquire() as conn, conn.transaction():
            refused = await _owner_check(conn, request.org_id, request.invited_by, "invite", ctx.log)
            if refused is not None:
                return refused
            already = await conn.fetchval(
                "SELECT 1 FROM memberships m JOIN people p USING (person_id) WHERE m.org_id = $1 AND p.email = $2",
                request.org_id, email,
            )
            if already:
                ctx.log.info("rejected invite into %s: the address is already a member", request.org_id)
                return Failed(code=FailureCode.CONFLICT, detail="that address is already a member", field="email")
            invite = await conn.fetchrow(
                """
                INSERT INTO invites (invite_id, org_id, email, invited_by) VALUES ($1, $2, $3, $4)
                ON CONFLICT (org_id, email) WHERE accepted_at IS NULL DO UPDATE SET invited_by = EXCLUDED.invited_by
                RETURNING invite_id, role
                """,
                f"i{secrets.token_hex(8)}", request.org_id, email, request.invited_by,
            )
            org_name = await conn.fetchval("SELECT name FROM orgs WHERE org_id = $1", request.org_id)
            link_base = request.link_base
            # The invitation's sign-in link counts against the address's limit like any other link, and
            # against the organisation's (an owner cannot mail-bomb the world through invitations).
            if (
                link_base is not None
                and link_base.startswith(("https://", "http://"))
                and await count_and_check(conn, email, f"org:{request.org_id}") is None
            ):
                await issue_link(conn, email, link_base, None, f"You are invited to {org_name}",
                                 f"You are invited to join {org_name} on Build My MCP Server. Sign in to accept:")
        ctx.log.info("%s invited an address into %s (invite %s)", request.invited_by, request.org_id,
                     invite["invite_id"])
        return InviteCreated(invite_id=invite["invite_id"], org_id=request.org_id, email=email, role=invite["role"])

    @actor.rpc(LIST_MEMBERS)
    async def list_members(request: ListMembers, ctx: Context) -> ListMembersReply:
        rows = await ctx.pool.fetch(
            """
            SELECT m.person_id, p.email, m.role, m.joined_at FROM memberships m JOIN people p USING (person_id)
            WHERE m.org_id = $1 AND EXISTS (SELECT 1 FROM memberships a WHERE a.org_id = $1 AND a.person_id = $2)
            ORDER BY m.joined_at
            """,
            request.org_id, request.asked_by,
        )
        if not rows:  # the asker is not a member (an organisation is never empty)
            ctx.log.info("rejected member list of %s by %s: not a member", request.org_id, request.asked_by)
            return Failed(code=FailureCode.FORBIDDEN, detail="only a member of the organisation can list its people")
        return MemberList(members=tuple(
            MemberInfo(person_id=r["person_id"], email=r["email"], role=r["role"], joined_at=_iso(r["joined_at"]))
            for r in rows
        ))

    @actor.rpc(REMOVE_MEMBER)
    async def remove_member(request: RemoveMember, ctx: Context) -> RemoveMemberReply:
        async with ctx.pool.acquire() as conn, conn.transaction():
            await _lock_org(conn, request.org_id)
            refused = await _owner_check(conn, request.org_id, request.removed_by, "remove people", ctx.log)
            if refused is not None:
                return refused
            role = await _member_role(conn, request.org_id, request.person_id, "removal from", ctx.log)
            if isinstance(role, Failed):
                return role
            if role == "owner" and await _owners(conn, request.org_id) == 1:
                ctx.log.info("rejected removal of the last owner %s of %s", request.person_id, request.org_id)
                return Failed(code=FailureCode.CONFLICT, field="person_id",
                              detail="the last owner cannot be removed; make someone else an owner first")
            joined_at = await conn.fetchval(
                "DELETE FROM memberships WHERE org_id = $1 AND person_id = $2 RETURNING joined_at",
                request.org_id, request.person_id)
            # A key acts for the organisation with its creator's standing there: it ends with that standing.
            revoked_keys = tuple(await conn.fetchval(
                """
                WITH revoked AS (
                    UPDATE api_keys SET revoked_at = now()
                    WHERE org_id = $1 AND created_by = $2 AND revoked_at IS NULL RETURNING key_id
                ) SELECT coalesce(array_agg(key_id ORDER BY key_id), '{}') FROM revoked
                """,
                request.org_id, request.person_id))
            # Stored in the IDENTITY stream before the removal commits: if it cannot be, the removal fails and
            # is asked again, so the oauth actor never misses one (a commit failing after it only ends grants
            # early). The id names this membership, so a repeated publish is stored once.
            ended = MembershipEnded(
                event_id=_membership_event_id(request.org_id, request.person_id, joined_at),
                org_id=request.org_id, person_id=request.person_id, ended_by=request.removed_by,
                ended_at=_iso(dt.datetime.now(dt.UTC)),
            )
            await ctx.publish(MEMBERSHIP_ENDED.subject(org=request.org_id), ended, msg_id=ended.event_id)
        # Sessions belong to the person, not to one organisation: every request checks the membership
        # (AUTHENTICATE), so from now on no session of theirs acts in this organisation; the oauth actor
        # ends the grants they gave MCP clients there (MEMBERSHIP_ENDED).
        for key_id in revoked_keys:
            verified.forget_key(key_id)
        ctx.log.info("%s removed %s from %s%s", request.removed_by, request.person_id, request.org_id,
                     f", revoking their API keys {', '.join(revoked_keys)}" if revoked_keys else "")
        return MemberRemoved(org_id=request.org_id, person_id=request.person_id, revoked_keys=revoked_keys)

    @actor.rpc(CHANGE_MEMBER_ROLE)
    async def change_member_role(request: ChangeMemberRole, ctx: Context) -> ChangeMemberRoleReply:
        async with ctx.pool.acquire() as conn, conn.transaction():
            await _lock_org(conn, request.org_id)
            refused = await _owner_check(conn, request.org_id, request.changed_by, "change roles", ctx.log)
            if refused is not None:
                return refused
            role = await _member_role(conn, request.org_id, request.person_id, "role change in", ctx.log)
            if isinstance(role, Failed):
                return role
            if role == "owner" and request.role != "owner" and await _owners(conn, request.org_id) == 1:
                ctx.log.info("rejected demotion of the last owner %s of %s", request.person_id, request.org_id)
                return Failed(code=FailureCode.CONFLICT, field="role",
                              detail="the organisation's last owner cannot become a member; make someone else "
                                     "an owner first")
            row = await conn.fetchrow(
                """
                UPDATE memberships m SET role = $3 FROM people p
                WHERE m.org_id = $1 AND m.person_id = $2 AND p.person_id = m.person_id
                RETURNING m.person_id, p.email, m.role, m.joined_at
                """,
                request.org_id, request.person_id, request.role,
            )
        ctx.log.info("%s made %s %s of %s", request.changed_by, request.person_id, request.role, request.org_id)
        return MemberRoleChanged(org_id=request.org_id, member=MemberInfo(
            person_id=row["person_id"], email=row["email"], role=row["role"], joined_at=_iso(row["joined_at"])))

    @actor.rpc(LIST_INVITES)
    async def list_invites(request: ListInvites, ctx: Context) -> ListInvitesReply:
        async with ctx.pool.acquire() as conn:
            refused = await _owner_check(conn, request.org_id, request.asked_by, "list invitations", ctx.log)
            if refused is not None:
                return refused
            rows = await conn.fetch(
                """
                SELECT invite_id, email, role, invited_by, created_at FROM invites
                WHERE org_id = $1 AND accepted_at IS NULL ORDER BY created_at DESC
                """,
                request.org_id,
            )
        return InviteList(invites=tuple(
            InviteInfo(invite_id=r["invite_id"], email=r["email"], role=r["role"], invited_by=r["invited_by"],
                       created_at=_iso(r["created_at"]))
            for r in rows
        ))

    @actor.rpc(REVOKE_INVITE)
    async def revoke_invite(request: RevokeInvite, ctx: Context) -> RevokeInviteReply:
        async with ctx.pool.acquire() as conn, conn.transaction():
            refused = await _owner_check(conn, request.org_id, request.revoked_by, "withdraw invitations", ctx.log)
            if refused is not None:
                return refused
            revoked = await conn.fetchval(
                "DELETE FROM invites WHERE org_id = $1 AND invite_id = $2 AND accepted_at IS NULL RETURNING invite_id",
                request.org_id, request.invite_id,
            )
        if revoked is None:
            ctx.log.info("rejected invitation withdrawal in %s: no pending invite %s there", request.org_id,
                         request.invite_id[:64])
            return Failed(code=FailureCode.NOT_FOUND,
                          detail=f"no pending invitation {request.invite_id[:64]!r} in this organisation")
        ctx.log.info("%s withdrew invitation %s of %s", request.revoked_by, revoked, request.org_id)
        return InviteRevoked(invite_id=revoked)

    @actor.rpc(ISSUE_API_KEY)
    async def issue_api_key(request: IssueApiKey, ctx: Context) -> IssueApiKeyReply:
        async with ctx.pool.acquire() as conn, conn.transaction():
            member = await conn.fetchval(
                "SELECT 1 FROM memberships WHERE org_id = $1 AND person_id = $2", request.org_id, request.created_by
            )
            if not member:
                ctx.log.info("rejected API key creation in %s by %s: not a member", request.org_id, request.created_by)
                return Failed(code=FailureCode.FORBIDDEN,
                              detail="only a member of the organisation can create its keys")
            key_id, full, secret_hash = new_api_key()
            await conn.execute(
                "INSERT INTO api_keys (key_id, org_id, label, secret_hash, created_by) VALUES ($1, $2, $3, $4, $5)",
                key_id, request.org_id, request.label, secret_hash, request.created_by,
            )
        ctx.log.info("%s created API key %s for org %s", request.created_by, key_id, request.org_id)
        return ApiKeyCreated(org_id=request.org_id, key_id=key_id, secret=full, label=request.label)

    @actor.rpc(LIST_API_KEYS)
    async def list_api_keys(request: ListApiKeys, ctx: Context) -> ListApiKeysReply:
        created_by = None
        if request.asked_by is not None:
            role = await member_role(ctx.pool, request.org_id, request.asked_by)
            if role is None:
                ctx.log.info("rejected API key listing in %s by %s: not a member", request.org_id, request.asked_by)
                return Failed(code=FailureCode.FORBIDDEN, detail="only a member of the organisation can list its keys")
            if role != "owner":
                created_by = request.asked_by  # a member sees the keys they created
        rows = await ctx.pool.fetch(
            """
            SELECT key_id, label, created_at, created_by FROM api_keys
            WHERE org_id = $1 AND revoked_at IS NULL AND ($2::text IS NULL OR created_by = $2)
            ORDER BY created_at DESC
            """,
            request.org_id, created_by,
        )
        return ApiKeyList(keys=tuple(
            ApiKeyInfo(key_id=r["key_id"], label=r["label"], created_at=_iso(r["created_at"]),
                       created_by=r["created_by"])
            for r in rows
        ))

    @actor.rpc(REVOKE_API_KEY)
    async def revoke_api_key(request: RevokeApiKey, ctx: Context) -> RevokeApiKeyReply:
        row = None
        if SUBJECT_TOKEN_RE.match(request.key_id):
            row = await ctx.pool.fetchrow(
                "SELECT created_by FROM api_keys WHERE org_id = $1 AND key_id = $2 AND revoked_at IS NULL",
                request.org_id, request.key_id,
            )
        if row is None:
            ctx.log.info("rejected API key revocation in %s: no live key %s there", request.org_id, request.key_id[:64])
            return Failed(code=FailureCode.NOT_FOUND, detail=f"no API key {request.key_id[:64]!r} in this organisation")
        if request.revoked_by is not None:
            role = await member_role(ctx.pool, request.org_id, request.revoked_by)
            if role is None:
                ctx.log.info("rejected API key revocation in %s by %s: not a member", request.org_id,
                             request.revoked_by)
                return Failed(code=FailureCode.FORBIDDEN,
                              detail="only a member of the organisation can revoke its keys")
            if role != "owner" and row["created_by"] != request.revoked_by:
                ctx.log.info("rejected revocation of API key %s in %s by member %s: not theirs", request.key_id,
                             request.org_id, request.revoked_by)
                return Failed(code=FailureCode.FORBIDDEN,
                              detail="a member can revoke only the API keys they created; ask an owner")
        revoked = await ctx.pool.fetchval(
            "UPDATE api_keys SET revoked_at = now() WHERE key_id = $1 AND revoked_at IS NULL RETURNING key_id",
            request.key_id,
        )
        if revoked is None:  # revoked by someone else in the meantime
            return Failed(code=FailureCode.NOT_FOUND, detail=f"no API key {request.key_id[:64]!r} in this organisation")
        verified.forget_key(revoked)
        ctx.log.info("%s revoked API key %s of org %s", request.revoked_by or "the operator", revoked, request.org_id)
        return ApiKeyRevoked(key_id=revoked)

    @actor.rpc(CREATE_API_KEY)
    async def create_api_key(request: CreateApiKey, ctx: Context) -> CreateApiKeyReply:
        key_id, full, secret_hash = new_api_key()
        async with ctx.pool.acquire() as conn, conn.transaction():
            org_id = await conn.fetchval(
                """
                INSERT INTO orgs (org_id, name) VALUES ($1, $2)
                ON CONFLICT (name) DO UPDATE SET name = EXCLUDED.name
                RETURNING org_id
                """,
                f"o{secrets.token_hex(8)}", request.org_name,
            )
            await conn.execute(
                "INSERT INTO api_keys (key_id, org_id, label, secret_hash) VALUES ($1, $2, $3, $4)",
                key_id, org_id, request.label, secret_hash,
            )
        ctx.log.info("created API key %s for org %s", key_id, org_id)
        return ApiKeyCreated(org_id=org_id, key_id=key_id, secret=full, label=request.label)

    return actor
