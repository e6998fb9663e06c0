"""Identity messages: who is calling, as resolved by the auth actor; people, sessions, organisations, keys.

Every secret that travels here (API key, session token, magic-link token) is shown to its holder and
stored by the auth actor only as a hash.
"""

from __future__ import annotations

from typing import Literal

import msgspec

from bus_schemas.base import Failed, Id, Message


class Authenticate(Message, frozen=True, kw_only=True, tag="auth.authenticate.v1"):
    """Resolve a credential presented at the edge (API key or session token) to a principal."""

    token: str
    org_id: str | None = None
    """The organisation the caller asks to act in (the `X-Org` header): a person must be a member of it,
    an API key acts only for its own. None: a person's first organisation, an API key's own."""


class Principal(Message, frozen=True, kw_only=True, tag="auth.principal.v1"):
    """The caller on whose behalf a request runs; every resource check uses org_id."""

    org_id: Id
    subject: str
    """Who: `api_key:<key id>` or `person:<person id>`."""
    scopes: tuple[str, ...] = ()
    person_id: str | None = None
    """The person signed in with a session; None for an API key."""
    email: str | None = None
    """The signed-in person's email address."""
    role: str | None = None
    """The person's role in `org_id`: `owner` or `member`; None for an API key."""
    session_id: str | None = None
    """The session the request came with (not its token); None for an API key."""


class CreateApiKey(Message, frozen=True, kw_only=True, tag="auth.create_api_key.v1"):
    """Create an API key for an organisation, creating the organisation if it does not exist."""

    org_name: str
    label: str = "default"


class ApiKeyCreated(Message, frozen=True, kw_only=True, tag="auth.api_key_created.v1"):
    """A new API key; `secret` is shown once and never stored in clear."""

    org_id: Id
    key_id: str
    secret: str
    label: str = "default"


# --- magic-link sign-in and sessions ---

NEXT_MAX_LENGTH = 8000
"""Longest `next` path: room for an OAuth authorization request (client id URL, resource, state, PKCE,
per-tool scopes) to come back after sign-in."""


def safe_next(path: str | None) -> str | None:
    """`path` when it is a local path to land on after sign-in; None for anything that could leave the
    site (another host, a scheme, backslash tricks, control characters) or is too long. The auth actor
    enforces it; the gateway checks early to answer with a page."""
    if path is None:
        return None
    if (
        not path.startswith("/")
        or path.startswith(("//", "/\\"))
        or len(path) > NEXT_MAX_LENGTH
        or any(c in path for c in "\\\r\n\t\x00")
    ):
        return None
    return path



class RequestMagicLink(Message, frozen=True, kw_only=True, tag="auth.request_magic_link.v1"):
    """Mail a one-time sign-in link to `email`, whether or not a person with that address exists."""

    email: str
    client_ip: str
    """Where the request came from, for the per-address rate limit."""
    link_base: str
    """The public base URL of the gateway the link must point to."""
    next: str | None = None
    """A path on the gateway to send the person to once signed in."""


class MagicLinkRequested(Message, frozen=True, kw_only=True, tag="auth.magic_link_requested.v1"):
    """The link is on its way (or, for an unreachable address, silently nowhere)."""

    expires_in_seconds: int


class RedeemMagicLink(Message, frozen=True, kw_only=True, tag="auth.redeem_magic_link.v1"):
    """Exchange a magic-link token, once, for a new session."""

    token: str
    user_agent: str = ""
    client_ip: str = ""


class IssueSignInLink(Message, frozen=True, kw_only=True, tag="auth.issue_sign_in_link.v1"):
    """The operator signs a person in (operator CLI): a one-time sign-in link for `email`, returned instead of
    mailed; the person (created when new) is made an owner of the organisation `org_name` (created when new)
    unless already a member. `bmms dev` prints one for its local person, who so owns the dev API key's
    organisation and can authorize MCP clients for the servers built with that key."""

    email: str
    org_name: str
    link_base: str
    """The public base URL of the gateway's magic-link callback."""
    next: str | None = None
    """A path on the gateway to land on once signed in."""


class SignInLinkIssued(Message, frozen=True, kw_only=True, tag="auth.sign_in_link_issued.v1"):
    """The sign-in link (a secret: it works once, until it expires) and whom it signs in, where."""

    link: str
    person_id: str
    org_id: Id
    expires_in_seconds: int


class SessionStarted(Message, frozen=True, kw_only=True, tag="auth.session_started.v1"):
    """A new session; `token` is the cookie value, shown once and never stored in clear."""

    session_id: str
    token: str
    person_id: str
    email: str
    org_id: Id
    """The person's first organisation."""
    expires_at: str
    max_age_seconds: int
    next: str | None = None
    first_sign_in: bool = False


class OrgMembership(msgspec.Struct, frozen=True, kw_only=True):
    """One organisation a person belongs to."""

    org_id: str
    name: str
    role: str


class GetMe(Message, frozen=True, kw_only=True, tag="auth.get_me.v1"):
    """Who the principal is, and which organisations the person belongs to."""

    org_id: Id
    subject: str
    person_id: str | None = None


class Me(Message, frozen=True, kw_only=True, tag="auth.me.v1"):
    """The caller: a signed-in person (with every organisation) or an API key (its one organisation)."""

    subject: str
    org_id: str
    """The active organisation."""
    person_id: str | None = None
    email: str | None = None
    role: str | None = None
    orgs: tuple[OrgMembership, ...] = ()


class ListSessions(Message, frozen=True, kw_only=True, tag="auth.list_sessions.v1"):
    """A person's sessions that are still valid."""

    person_id: str


class SessionInfo(msgspec.Struct, frozen=True, kw_only=True):
    """One session, without its token."""

    session_id: str
    created_at: str
    expires_at: str
    user_agent: str = ""
    client_ip: str = ""


class SessionList(Message, frozen=True, kw_only=True, tag="auth.session_list.v1"):
    """A person's valid sessions, newest first."""

    sessions: tuple[SessionInfo, ...]


class RevokeSession(Message, frozen=True, kw_only=True, tag="auth.revoke_session.v1"):
    """End one of a person's sessions (sign-out ends the current one)."""

    person_id: str
    session_id: str


class SessionRevoked(Message, frozen=True, kw_only=True, tag="auth.session_revoked.v1"):
    """The session no longer authenticates."""

    session_id: str


# --- organisations ---


class InviteMember(Message, frozen=True, kw_only=True, tag="auth.invite_member.v1"):
    """An owner invites an email address; it joins as a member when that address signs in."""

    org_id: Id
    invited_by: str
    """The inviting person's id; only an owner may invite."""
    email: str
    link_base: str | None = None
    """When given, the invitation mail carries a sign-in link to this gateway."""


class InviteCreated(Message, frozen=True, kw_only=True, tag="auth.invite_created.v1"):
    """A pending invitation."""

    invite_id: str
    org_id: str
    email: str
    role: str


Role = Literal["owner", "member"]
"""A person's role in an organisation: owners manage members, invitations and roles."""


class MemberInfo(msgspec.Struct, frozen=True, kw_only=True):
    """One person of an organisation."""

    person_id: str
    email: str
    role: str
    joined_at: str


class ListMembers(Message, frozen=True, kw_only=True, tag="auth.list_members.v1"):
    """The people of an organisation and their roles; the asker must be one of them."""

    org_id: Id
    asked_by: str
    """The asking person's id."""


class MemberList(Message, frozen=True, kw_only=True, tag="auth.member_list.v1"):
    """An organisation's people, in the order they joined."""

    members: tuple[MemberInfo, ...]


class RemoveMember(Message, frozen=True, kw_only=True, tag="auth.remove_member.v1"):
    """An owner removes a person from the organisation (never its last owner)."""

    org_id: Id
    removed_by: str
    """The removing person's id; only an owner may remove."""
    person_id: str


class MemberRemoved(Message, frozen=True, kw_only=True, tag="auth.member_removed.v1"):
    """The person no longer belongs to the organisation; their sessions no longer act in it, and the API keys
    they created there are revoked."""

    org_id: str
    person_id: str
    revoked_keys: tuple[str, ...] = ()
    """The ids of the API keys revoked with the removal (the keys the person created in the organisation)."""


class MembershipEnded(Message, frozen=True, kw_only=True, tag="identity.membership_ended.v1"):
    """Event: a person may no longer use an organisation (removed from it; a role that cannot use its servers
    would say so too). The oauth actor ends every grant the person gave MCP clients in that organisation."""

    event_id: Id
    """Unique per membership that ended (the `Nats-Msg-Id`), so a re-published event is stored once."""
    org_id: Id
    person_id: Id
    """The person, as OAuth grants name their subject."""
    ended_by: str
    """Who ended it (the removing owner's person id)."""
    ended_at: str
    """RFC 3339 UTC."""


class ChangeMemberRole(Message, frozen=True, kw_only=True, tag="auth.change_member_role.v1"):
    """An owner makes a member an owner or an owner a member (never leaving the organisation without one)."""

    org_id: Id
    changed_by: str
    """The changing person's id; only an owner may change roles."""
    person_id: str
    role: Role


class MemberRoleChanged(Message, frozen=True, kw_only=True, tag="auth.member_role_changed.v1"):
    """The person, with their role now."""

    org_id: str
    member: MemberInfo


class InviteInfo(msgspec.Struct, frozen=True, kw_only=True):
    """One pending invitation."""

    invite_id: str
    email: str
    role: str
    invited_by: str
    created_at: str


class ListInvites(Message, frozen=True, kw_only=True, tag="auth.list_invites.v1"):
    """An organisation's pending invitations; owners only."""

    org_id: Id
    asked_by: str


class InviteList(Message, frozen=True, kw_only=True, tag="auth.invite_list.v1"):
    """Pending invitations, newest first."""

    invites: tuple[InviteInfo, ...]


class RevokeInvite(Message, frozen=True, kw_only=True, tag="auth.revoke_invite.v1"):
    """An owner withdraws a pending invitation: signing in with that address no longer joins."""

    org_id: Id
    revoked_by: str
    invite_id: str


class InviteRevoked(Message, frozen=True, kw_only=True, tag="auth.invite_revoked.v1"):
    """The invitation is gone."""

    invite_id: str


# --- API keys managed by people ---


class IssueApiKey(Message, frozen=True, kw_only=True, tag="auth.issue_api_key.v1"):
    """Create an API key of an existing organisation for a member of it."""

    org_id: Id
    created_by: str
    """The person id of the member creating the key."""
    label: str = "default"


class ListApiKeys(Message, frozen=True, kw_only=True, tag="auth.list_api_keys.v1"):
    """An organisation's API keys that are not revoked, without secrets: every key for an owner, the keys
    they created for a member."""

    org_id: Id
    asked_by: str | None = None
    """The person asking; None only for the platform's operator (every key)."""


class ApiKeyInfo(msgspec.Struct, frozen=True, kw_only=True):
    """One API key, without its secret."""

    key_id: str
    label: str
    created_at: str
    created_by: str | None = None


class ApiKeyList(Message, frozen=True, kw_only=True, tag="auth.api_key_list.v1"):
    """An organisation's live API keys, newest first."""

    keys: tuple[ApiKeyInfo, ...]


class RevokeApiKey(Message, frozen=True, kw_only=True, tag="auth.revoke_api_key.v1"):
    """Revoke one of an organisation's API keys: an owner any of them, a member only the keys they created."""

    org_id: Id
    key_id: str
    revoked_by: str | None = None
    """The person revoking; None only for the platform's operator."""


class ApiKeyRevoked(Message, frozen=True, kw_only=True, tag="auth.api_key_revoked.v1"):
    """The key no longer authenticates (after the edge caches' bound, see gateway.auth)."""

    key_id: str


AuthenticateReply = Principal | Failed
CreateApiKeyReply = ApiKeyCreated | Failed
RequestMagicLinkReply = MagicLinkRequested | Failed
RedeemMagicLinkReply = SessionStarted | Failed
IssueSignInLinkReply = SignInLinkIssued | Failed
GetMeReply = Me | Failed
ListSessionsReply = SessionList | Failed
RevokeSessionReply = SessionRevoked | Failed
InviteMemberReply = InviteCreated | Failed
IssueApiKeyReply = ApiKeyCreated | Failed
ListApiKeysReply = ApiKeyList | Failed
RevokeApiKeyReply = ApiKeyRevoked | Failed
ListMembersReply = MemberList | Failed
RemoveMemberReply = MemberRemoved | Failed
ChangeMemberRoleReply = MemberRoleChanged | Failed
ListInvitesReply = InviteList | Failed
RevokeInviteReply = InviteRevoked | Failed
