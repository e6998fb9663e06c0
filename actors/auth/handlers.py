"""The auth actor's handlers: people signing in with magic links, sessions, organisations and their
members, and API keys. It alone owns these tables; the gateway asks it over the bus.

Every rejection is logged with its reason, never with the secret that was presented.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import logging
import math
from collections.abc import AsyncIterator

import asyncpg

from actors.auth import storage
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
from actors.runtime.actor import Context
from bus_schemas.base import SUBJECT_TOKEN_RE, Failed, FailureCode
from bus_schemas.identity import (
    ApiKeyCreated,
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
    InviteList,
    InviteMember,
    InviteMemberReply,
    InviteRevoked,
    IssueApiKey,
    IssueApiKeyReply,
    IssueSignInLink,
    IssueSignInLinkReply,
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
    SessionList,
    SessionRevoked,
    SessionStarted,
    SignInLinkIssued,
    safe_next,
)
from bus_schemas.registry import MEMBERSHIP_ENDED

REJECTED = "invalid or revoked API key"
SESSION_REJECTED = "the session is invalid, expired or revoked; sign in again"
LINK_REJECTED = "this sign-in link is invalid, expired or already used; ask for a new one"
OWNERS_ONLY = "only an owner of the organisation can {}"


class AuthState:
    """What the auth handlers share: the sign-in tuning, the verified-key cache and the mailer."""

    def __init__(self, config: AuthConfig) -> None:
        self.config = config
        self.verified = VerifiedKeys(ttl=config.key_cache_seconds)
        """API keys this copy verified recently (revocation is still read from the table)."""
        self._mailer: Mailer | None = None

    @property
    def mailer(self) -> Mailer:
        """Where sign-in mail goes (set while serving)."""
        if self._mailer is None:
            raise RuntimeError("the auth actor is not serving")
        return self._mailer

    @contextlib.asynccontextmanager
    async def mailing(self, smtp_url: str | None, sender: str) -> AsyncIterator[None]:
        """Send mail through a mailer for `smtp_url` inside the block; queued mail gets a moment to go out
        when it ends."""
        self._mailer = Mailer(smtp_url, sender)
        try:
            yield
        finally:
            await self._mailer.close()


def _membership_event_id(org_id: str, person_id: str, joined_at: dt.datetime) -> str:
    """The id of the event ending one membership: the same for every publish of it, another for a later
    membership of the same person in the same organisation."""
    return "me" + hashlib.sha256(f"{org_id}:{person_id}:{joined_at.isoformat()}".encode()).hexdigest()[:40]


async def _owner_check(conn: asyncpg.Connection, org_id: str, person_id: str, what: str,
                       log: logging.Logger) -> Failed | None:
    """None when `person_id` owns `org_id`, else the Failed(forbidden) to answer (the refusal logged)."""
    role = await storage.member_role(conn, org_id, person_id)
    if role == "owner":
        return None
    log.info("rejected %s in %s by %s: %s", what, org_id, person_id,
             "not a member" if role is None else f"role {role}, not owner")
    return Failed(code=FailureCode.FORBIDDEN, detail=OWNERS_ONLY.format(what))


async def _owner_acting_on(conn: asyncpg.Connection, org_id: str, owner_id: str, person_id: str, what: str,
                           log: logging.Logger) -> str | Failed:
    """For an owner changing a person's membership (`what`: "remove people", "change roles"), inside the caller's
    transaction: the organisation locked (changes of one organisation are serialised, so two owners demoting
    each other cannot leave it with none), then the person's role, or the Failed to answer when the actor is
    not an owner (forbidden) or the person is not a member (not_found)."""
    await storage.lock_org(conn, org_id)
    refused = await _owner_check(conn, org_id, owner_id, what, log)
    if refused is not None:
        return refused
    role = await storage.member_role(conn, org_id, person_id)
    if role is None:
        log.info("rejected %s in %s: %s is not a member", what, org_id, person_id[:64])
        return Failed(code=FailureCode.NOT_FOUND, detail=f"no person {person_id[:64]!r} in this organisation")
    return str(role)


async def _count_link(conn: asyncpg.Connection, email: str, source: str, auth: AuthState,
                      log: logging.Logger) -> Failed | None:
    """Count one link for the address and for its source (a client IP bucket, or an organisation's
    invitations); a Failed(rate_limited) when either is over its limit."""
    cfg = auth.config
    for count in await storage.count_links(conn, [email_bucket(email), source], cfg.rate_window_seconds):
        is_email = count.bucket.startswith("email:")
        limit = cfg.links_per_email if is_email else cfg.links_per_ip
        if count.hits > limit:
            retry_after = max(1, math.ceil(count.seconds_left))
            minutes = max(1, math.ceil(retry_after / 60))
            which = "this address" if is_email else "your network address"
            log.info("rejected magic link request: over %d links per %d s for %s", limit,
                     cfg.rate_window_seconds, "the address" if is_email else count.bucket)
            return Failed(code=FailureCode.RATE_LIMITED,
                          detail=f"too many sign-in links for {which}; try again in {minutes} minute(s)",
                          retry_after_seconds=retry_after)
    return None


async def _new_link(conn: asyncpg.Connection, auth: AuthState, email: str, link_base: str,
                    next_path: str | None) -> str:
    """Store a new magic link's digest; the link."""
    token, digest = new_token(LINK_PREFIX)
    await storage.add_magic_link(conn, digest, email, next_path, auth.config.magic_link_ttl_seconds)
    return f"{link_base}?token={token}"


async def _mail_link(conn: asyncpg.Connection, auth: AuthState, email: str, link_base: str, next_path: str | None,
                     subject: str, intro: str) -> None:
    """Store a new magic link's digest and mail the link."""
    link = await _new_link(conn, auth, email, link_base, next_path)
    ttl = auth.config.magic_link_ttl_seconds
    body = (f"{intro}\n\n{link}\n\nThe link works once, for {ttl // 60} minutes. "
            "If you did not ask for it, ignore this mail.\n")
    auth.mailer.send(Mail(to=email, subject=subject, body=body))


def checked_link_request(request: RequestMagicLink | IssueSignInLink, what: str,
                         ctx: Context) -> tuple[str, str | None] | Failed:
    """The normalised address and local `next` path of a sign-in link request (mailed or the operator's), or
    why it is refused (logged as a rejected `what`)."""
    email = normalize_email(request.email)
    if email is None:
        ctx.log.info("rejected %s: not an email address", what)
        return Failed(code=FailureCode.INVALID, detail="that is not an email address", field="email")
    next_path = safe_next(request.next)
    if request.next is not None and next_path is None:
        ctx.log.info("rejected %s: `next` is not a local path", what)
        return Failed(code=FailureCode.INVALID, detail="`next` must be a path on this site", field="next")
    if not request.link_base.startswith(("https://", "http://")):
        ctx.log.info("rejected %s: link base is not an http(s) URL", what)
        return Failed(code=FailureCode.INVALID, detail="link_base must be an http(s) URL", field="link_base")
    return email, next_path


async def request_magic_link(request: RequestMagicLink, ctx: Context, auth: AuthState) -> RequestMagicLinkReply:
    """Mail a sign-in link to the address (within the rate limits)."""
    checked = checked_link_request(request, "magic link request", ctx)
    if isinstance(checked, Failed):
        return checked
    email, next_path = checked
    async with ctx.pool.acquire() as conn, conn.transaction():
        limited = await _count_link(conn, email, ip_bucket(request.client_ip), auth, ctx.log)
        if limited is not None:
            return limited
        # Sent whether or not the address belongs to anyone: the first sign-in creates the person.
        await _mail_link(conn, auth, email, request.link_base, next_path, "Your sign-in link",
                         "Follow this link to sign in to Build My MCP Server:")
    return MagicLinkRequested(expires_in_seconds=auth.config.magic_link_ttl_seconds)


async def issue_sign_in_link(request: IssueSignInLink, ctx: Context, auth: AuthState) -> IssueSignInLinkReply:
    """The operator's sign-in link for a person, returned rather than mailed (no rate limit: only the operator
    reaches this RPC); the person is made an owner of the named organisation unless already a member, so
    their first sign-in creates no organisation of their own."""
    checked = checked_link_request(request, "operator sign-in link", ctx)
    if isinstance(checked, Failed):
        return checked
    email, next_path = checked
    async with ctx.pool.acquire() as conn, conn.transaction():
        org_id = await storage.org_named(conn, request.org_name)
        person_id, _ = await storage.person_for_email(conn, email)
        if await storage.member_role(conn, org_id, person_id) is None:
            await storage.add_member(conn, org_id, person_id, "owner")
        link = await _new_link(conn, auth, email, request.link_base, next_path)
    ctx.log.info("the operator issued a sign-in link for person %s (owner of %s)", person_id, org_id)
    return SignInLinkIssued(link=link, person_id=person_id, org_id=org_id,
                            expires_in_seconds=auth.config.magic_link_ttl_seconds)


async def redeem_magic_link(request: RedeemMagicLink, ctx: Context, auth: AuthState) -> RedeemMagicLinkReply:
    """Start a session for a magic link's address (once per link); the first sign-in creates the person and
    their own organisation, and every sign-in accepts the address's pending invitations."""
    if not is_token(request.token, LINK_PREFIX):
        ctx.log.info("rejected magic link: malformed token")
        return Failed(code=FailureCode.UNAUTHENTICATED, detail=LINK_REJECTED)
    digest = token_digest(request.token)
    async with ctx.pool.acquire() as conn, conn.transaction():
        link = await storage.use_magic_link(conn, digest)
        if link is None:
            ctx.log.info("rejected magic link: %s", await storage.unusable_link_reason(conn, digest))
            return Failed(code=FailureCode.UNAUTHENTICATED, detail=LINK_REJECTED)
        person_id, first_sign_in = await storage.person_for_email(conn, link.email)
        if first_sign_in:
            # Everyone owns an organisation from their first sign-in: it is their default one.
            await storage.add_member(conn, await storage.new_org(conn, link.email), person_id, "owner")
        joined = await storage.accept_invites(conn, link.email, person_id)
        token, token_hash = new_token(SESSION_PREFIX)
        session_id, expires_at = await storage.start_session(
            conn, token_hash, person_id, request.user_agent[:300], request.client_ip[:100],
            auth.config.session_ttl_seconds,
        )
        first = await storage.first_org(conn, person_id)
    assert first is not None  # every person owns an organisation
    ctx.log.info("person %s signed in (session %s%s%s)", person_id, session_id,
                 ", first sign-in" if first_sign_in else "",
                 f", joined {', '.join(joined)}" if joined else "")
    return SessionStarted(
        session_id=session_id, token=token, person_id=person_id, email=link.email, org_id=first.org_id,
        expires_at=storage.iso(expires_at), max_age_seconds=auth.config.session_ttl_seconds, next=link.next_path,
        first_sign_in=first_sign_in,
    )


async def _session_principal(request: Authenticate, ctx: Context) -> AuthenticateReply:
    """The person a session token stands for, in the organisation asked for (else their first one)."""
    digest = token_digest(request.token)
    session = await storage.live_session(ctx.pool, digest)
    if session is None:
        ctx.log.info("rejected session: %s session", await storage.dead_session_reason(ctx.pool, digest))
        return Failed(code=FailureCode.UNAUTHENTICATED, detail=SESSION_REJECTED)
    person_id = session.person_id
    member: storage.Membership | None
    if request.org_id is not None:
        role = await storage.member_role(ctx.pool, request.org_id, person_id)
        if role is None:
            ctx.log.info("rejected session %s: person %s is not a member of the organisation asked for",
                         session.session_id, person_id)
            return Failed(code=FailureCode.FORBIDDEN,
                          detail=f"you are not a member of organisation {request.org_id[:64]!r}")
        member = storage.Membership(org_id=request.org_id, role=role)
    else:
        member = await storage.first_org(ctx.pool, person_id)
        if member is None:
            ctx.log.info("rejected session %s: person %s belongs to no organisation", session.session_id, person_id)
            return Failed(code=FailureCode.FORBIDDEN, detail="you belong to no organisation")
    return Principal(
        org_id=member.org_id, subject=f"person:{person_id}", person_id=person_id, email=session.email,
        role=member.role, session_id=session.session_id,
    )


async def authenticate(request: Authenticate, ctx: Context, auth: AuthState) -> AuthenticateReply:
    """The principal a session token or an API key stands for, or why it is refused."""
    if request.token.startswith(SESSION_PREFIX):
        if not is_token(request.token, SESSION_PREFIX):
            ctx.log.info("rejected session: malformed token")
            return Failed(code=FailureCode.UNAUTHENTICATED, detail=SESSION_REJECTED)
        return await _session_principal(request, ctx)
    parsed = parse_api_key(request.token)
    if parsed is None:
        ctx.log.info("rejected credential: neither an API key nor a session")
        return Failed(code=FailureCode.UNAUTHENTICATED, detail=REJECTED)
    key_id, secret = parsed
    if auth.verified.get(request.token) is not None:
        # The cache spares argon2id, not the revocation check: one indexed read.
        org_id = await storage.live_key_org(ctx.pool, key_id)
        if org_id is None:
            auth.verified.forget_key(key_id)
            ctx.log.info("rejected API key %s: revoked", key_id)
            return Failed(code=FailureCode.UNAUTHENTICATED, detail=REJECTED)
    else:
        stored = await storage.live_key(ctx.pool, key_id)
        if stored is None or not secret_matches(stored.secret_hash, secret):
            ctx.log.info("rejected API key %s: %s", key_id, "unknown or revoked" if stored is None else "wrong secret")
            return Failed(code=FailureCode.UNAUTHENTICATED, detail=REJECTED)
        org_id = stored.org_id
        auth.verified.put(request.token, org_id, key_id)
    if request.org_id is not None and request.org_id != org_id:
        ctx.log.info("rejected API key %s: asked to act for another organisation", key_id)
        return Failed(code=FailureCode.FORBIDDEN, detail="an API key acts only for its own organisation")
    return Principal(org_id=org_id, subject=f"api_key:{key_id}")


async def get_me(request: GetMe, ctx: Context) -> GetMeReply:
    """Who is asking: the person and their organisations, or the API key's organisation."""
    if request.person_id is None:
        name = await storage.org_name(ctx.pool, request.org_id)
        orgs: tuple[OrgMembership, ...] = (OrgMembership(org_id=request.org_id, name=name or "", role="api_key"),)
        return Me(subject=request.subject, org_id=request.org_id, orgs=orgs)
    email = await storage.person_email(ctx.pool, request.person_id)
    if email is None:
        ctx.log.info("rejected get_me: unknown person %s", request.person_id)
        return Failed(code=FailureCode.NOT_FOUND, detail="no such person")
    orgs = await storage.memberships_of(ctx.pool, request.person_id)
    role = next((m.role for m in orgs if m.org_id == request.org_id), None)
    return Me(subject=request.subject, org_id=request.org_id, person_id=request.person_id, email=email,
              role=role, orgs=orgs)


async def list_sessions(request: ListSessions, ctx: Context) -> ListSessionsReply:
    """The person's live sessions."""
    return SessionList(sessions=await storage.live_sessions(ctx.pool, request.person_id))


async def revoke_session(request: RevokeSession, ctx: Context) -> RevokeSessionReply:
    """End one of the person's own sessions."""
    revoked = await storage.revoke_session(ctx.pool, request.person_id, request.session_id)
    if revoked is None:
        ctx.log.info("rejected session revocation by %s: no live session %s of theirs", request.person_id,
                     request.session_id[:64])
        return Failed(code=FailureCode.NOT_FOUND, detail=f"no session {request.session_id[:64]!r} of yours")
    ctx.log.info("person %s revoked session %s", request.person_id, revoked)
    return SessionRevoked(session_id=revoked)


async def invite_member(request: InviteMember, ctx: Context, auth: AuthState) -> InviteMemberReply:
    """An owner invites an address into the organisation (mailing it a sign-in link when asked to)."""
    email = normalize_email(request.email)
    if email is None:
        ctx.log.info("rejected invite: not an email address")
        return Failed(code=FailureCode.INVALID, detail="that is not an email address", field="email")
    async with ctx.pool.acquire() as conn, conn.transaction():
        refused = await _owner_check(conn, request.org_id, request.invited_by, "invite", ctx.log)
        if refused is not None:
            return refused
        if await storage.email_is_member(conn, request.org_id, email):
            ctx.log.info("rejected invite into %s: the address is already a member", request.org_id)
            return Failed(code=FailureCode.CONFLICT, detail="that address is already a member", field="email")
        invite_id, role = await storage.invite(conn, request.org_id, email, request.invited_by)
        org_name = await storage.org_name(conn, request.org_id)
        link_base = request.link_base
        # The invitation's sign-in link counts against the address's limit like any other link, and
        # against the organisation's (an owner cannot mail-bomb the world through invitations).
        if (
            link_base is not None
            and link_base.startswith(("https://", "http://"))
            and await _count_link(conn, email, f"org:{request.org_id}", auth, ctx.log) is None
        ):
            await _mail_link(conn, auth, email, link_base, None, f"You are invited to {org_name}",
                             f"You are invited to join {org_name} on Build My MCP Server. Sign in to accept:")
    ctx.log.info("%s invited an address into %s (invite %s)", request.invited_by, request.org_id, invite_id)
    return InviteCreated(invite_id=invite_id, org_id=request.org_id, email=email, role=role)


async def list_members(request: ListMembers, ctx: Context) -> ListMembersReply:
    """The organisation's people, for one of them."""
    members = await storage.members_seen_by(ctx.pool, request.org_id, request.asked_by)
    if not members:  # the asker is not a member (an organisation is never empty)
        ctx.log.info("rejected member list of %s by %s: not a member", request.org_id, request.asked_by)
        return Failed(code=FailureCode.FORBIDDEN, detail="only a member of the organisation can list its people")
    return MemberList(members=members)


async def remove_member(request: RemoveMember, ctx: Context, auth: AuthState) -> RemoveMemberReply:
    """An owner removes a person from the organisation (never its last owner), revoking the API keys they
    created there and announcing the end of the membership."""
    async with ctx.pool.acquire() as conn, conn.transaction():
        role = await _owner_acting_on(conn, request.org_id, request.removed_by, request.person_id, "remove people",
                                      ctx.log)
        if isinstance(role, Failed):
            return role
        if role == "owner" and await storage.owners(conn, request.org_id) == 1:
            ctx.log.info("rejected removal of the last owner %s of %s", request.person_id, request.org_id)
            return Failed(code=FailureCode.CONFLICT, field="person_id",
                          detail="the last owner cannot be removed; make someone else an owner first")
        joined_at = await storage.remove_member(conn, request.org_id, request.person_id)
        # A key acts for the organisation with its creator's standing there: it ends with that standing.
        revoked_keys = await storage.revoke_keys_created_by(conn, request.org_id, request.person_id)
        # Stored in the IDENTITY stream before the removal commits: if it cannot be, the removal fails and
        # is asked again, so the oauth actor never misses one (a commit failing after it only ends grants
        # early). The id names this membership, so a repeated publish is stored once.
        ended = MembershipEnded(
            event_id=_membership_event_id(request.org_id, request.person_id, joined_at),
            org_id=request.org_id, person_id=request.person_id, ended_by=request.removed_by,
            ended_at=storage.iso(dt.datetime.now(dt.UTC)),
        )
        await ctx.publish(MEMBERSHIP_ENDED.subject(org=request.org_id), ended, msg_id=ended.event_id)
    # Sessions belong to the person, not to one organisation: every request checks the membership
    # (AUTHENTICATE), so from now on no session of theirs acts in this organisation; the oauth actor
    # ends the grants they gave MCP clients there (MEMBERSHIP_ENDED).
    for key_id in revoked_keys:
        auth.verified.forget_key(key_id)
    ctx.log.info("%s removed %s from %s%s", request.removed_by, request.person_id, request.org_id,
                 f", revoking their API keys {', '.join(revoked_keys)}" if revoked_keys else "")
    return MemberRemoved(org_id=request.org_id, person_id=request.person_id, revoked_keys=revoked_keys)


async def change_member_role(request: ChangeMemberRole, ctx: Context) -> ChangeMemberRoleReply:
    """An owner changes a member's role (the organisation always keeps an owner)."""
    async with ctx.pool.acquire() as conn, conn.transaction():
        role = await _owner_acting_on(conn, request.org_id, request.changed_by, request.person_id, "change roles",
                                      ctx.log)
        if isinstance(role, Failed):
            return role
        if role == "owner" and request.role != "owner" and await storage.owners(conn, request.org_id) == 1:
            ctx.log.info("rejected demotion of the last owner %s of %s", request.person_id, request.org_id)
            return Failed(code=FailureCode.CONFLICT, field="role",
                          detail="the organisation's last owner cannot become a member; make someone else "
                                 "an owner first")
        member = await storage.set_role(conn, request.org_id, request.person_id, request.role)
    ctx.log.info("%s made %s %s of %s", request.changed_by, request.person_id, request.role, request.org_id)
    return MemberRoleChanged(org_id=request.org_id, member=member)


async def list_invites(request: ListInvites, ctx: Context) -> ListInvitesReply:
    """The organisation's pending invitations, for an owner."""
    async with ctx.pool.acquire() as conn:
        refused = await _owner_check(conn, request.org_id, request.asked_by, "list invitations", ctx.log)
        if refused is not None:
            return refused
        return InviteList(invites=await storage.pending_invites(conn, request.org_id))


async def revoke_invite(request: RevokeInvite, ctx: Context) -> RevokeInviteReply:
    """An owner withdraws a pending invitation."""
    async with ctx.pool.acquire() as conn, conn.transaction():
        refused = await _owner_check(conn, request.org_id, request.revoked_by, "withdraw invitations", ctx.log)
        if refused is not None:
            return refused
        revoked = await storage.withdraw_invite(conn, request.org_id, request.invite_id)
    if revoked is None:
        ctx.log.info("rejected invitation withdrawal in %s: no pending invite %s there", request.org_id,
                     request.invite_id[:64])
        return Failed(code=FailureCode.NOT_FOUND,
                      detail=f"no pending invitation {request.invite_id[:64]!r} in this organisation")
    ctx.log.info("%s withdrew invitation %s of %s", request.revoked_by, revoked, request.org_id)
    return InviteRevoked(invite_id=revoked)


async def issue_api_key(request: IssueApiKey, ctx: Context) -> IssueApiKeyReply:
    """A member creates an API key of the organisation (the secret is in this answer only)."""
    async with ctx.pool.acquire() as conn, conn.transaction():
        if await storage.member_role(conn, request.org_id, request.created_by) is None:
            ctx.log.info("rejected API key creation in %s by %s: not a member", request.org_id, request.created_by)
            return Failed(code=FailureCode.FORBIDDEN,
                          detail="only a member of the organisation can create its keys")
        key_id, full, secret_hash = new_api_key()
        await storage.add_api_key(conn, key_id, request.org_id, request.label, secret_hash, request.created_by)
    ctx.log.info("%s created API key %s for org %s", request.created_by, key_id, request.org_id)
    return ApiKeyCreated(org_id=request.org_id, key_id=key_id, secret=full, label=request.label)


async def list_api_keys(request: ListApiKeys, ctx: Context) -> ListApiKeysReply:
    """The organisation's live keys: all of them for an owner or the operator, their own for a member."""
    created_by = None
    if request.asked_by is not None:
        role = await storage.member_role(ctx.pool, request.org_id, request.asked_by)
        if role is None:
            ctx.log.info("rejected API key listing in %s by %s: not a member", request.org_id, request.asked_by)
            return Failed(code=FailureCode.FORBIDDEN, detail="only a member of the organisation can list its keys")
        if role != "owner":
            created_by = request.asked_by  # a member sees the keys they created
    return ApiKeyList(keys=await storage.live_keys(ctx.pool, request.org_id, created_by))


async def revoke_api_key(request: RevokeApiKey, ctx: Context, auth: AuthState) -> RevokeApiKeyReply:
    """Revoke a key of the organisation (an owner or the operator any, a member their own), at once on this
    copy's cache."""
    creator = None
    if SUBJECT_TOKEN_RE.match(request.key_id):
        creator = await storage.live_key_creator(ctx.pool, request.org_id, request.key_id)
    if creator is None:
        ctx.log.info("rejected API key revocation in %s: no live key %s there", request.org_id, request.key_id[:64])
        return Failed(code=FailureCode.NOT_FOUND, detail=f"no API key {request.key_id[:64]!r} in this organisation")
    if request.revoked_by is not None:
        role = await storage.member_role(ctx.pool, request.org_id, request.revoked_by)
        if role is None:
            ctx.log.info("rejected API key revocation in %s by %s: not a member", request.org_id,
                         request.revoked_by)
            return Failed(code=FailureCode.FORBIDDEN,
                          detail="only a member of the organisation can revoke its keys")
        if role != "owner" and creator.person_id != request.revoked_by:
            ctx.log.info("rejected revocation of API key %s in %s by member %s: not theirs", request.key_id,
                         request.org_id, request.revoked_by)
            return Failed(code=FailureCode.FORBIDDEN,
                          detail="a member can revoke only the API keys they created; ask an owner")
    revoked = await storage.revoke_key(ctx.pool, request.key_id)
    if revoked is None:  # revoked by someone else in the meantime
        return Failed(code=FailureCode.NOT_FOUND, detail=f"no API key {request.key_id[:64]!r} in this organisation")
    auth.verified.forget_key(revoked)
    ctx.log.info("%s revoked API key %s of org %s", request.revoked_by or "the operator", revoked, request.org_id)
    return ApiKeyRevoked(key_id=revoked)


async def create_api_key(request: CreateApiKey, ctx: Context) -> CreateApiKeyReply:
    """The operator creates a key for the organisation of that name (created when there is none)."""
    key_id, full, secret_hash = new_api_key()
    async with ctx.pool.acquire() as conn, conn.transaction():
        org_id = await storage.org_named(conn, request.org_name)
        await storage.add_api_key(conn, key_id, org_id, request.label, secret_hash, None)
    ctx.log.info("created API key %s for org %s", key_id, org_id)
    return ApiKeyCreated(org_id=org_id, key_id=key_id, secret=full, label=request.label)
