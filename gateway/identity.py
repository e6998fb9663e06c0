"""People at the edge: magic-link sign-in, the session cookie, who am I, sessions, invitations, API keys.

Routes (the JSON ones answer RFC 9457 problems on failure):
- `POST /v1/auth/magic-link {email, next?}` -> 202, the same for every well-formed address (no account
  probing); 429 over the per-address or per-client limit.
- `GET /v1/auth/magic-link/callback?token=...` -> a page whose "Sign in" button POSTs the token (mail
  scanners fetch links; only the person's click uses one).
- `POST /v1/auth/magic-link/callback` (form: token, form token) -> 303 to `next` (default `/v1/me`) with
  the session cookie; a 401 page for a link that is unknown, expired or used. These two are HTML pages.
- `POST /v1/auth/sign-out` -> 204, ends the cookie's session and clears the cookie.
- `GET /v1/me` -> the caller, the active organisation (`X-Org`, else the first), role and every org.
- `GET /v1/sessions`, `DELETE /v1/sessions/{id}` -> a person's sessions, and ending one.
- `POST /v1/invites {email}` -> 201; owners only (403 otherwise).
- `GET /v1/org/members` -> the active organisation's people and roles (its members);
  `PATCH /v1/org/members/{person_id} {role}` -> owner <-> member, `DELETE /v1/org/members/{person_id}`
  -> 204 (the person's sessions stop acting in it, the API keys they created there are revoked);
  `GET /v1/org/invites`,
  `DELETE /v1/org/invites/{invite_id}` -> pending invitations. Owners only but the list of people; the
  last owner can be neither removed nor demoted (409).
- `POST /v1/api-keys {label?}` -> 201 with the secret, shown once; `GET /v1/api-keys` (no secrets);
  `DELETE /v1/api-keys/{id}` -> 204. Any person of the organisation creates keys; an owner lists and
  revokes every key, a member only the keys they created (403 for another's).
Managing sessions, invitations and keys needs a signed-in person: an API key cannot mint more keys.
"""

from __future__ import annotations

import logging
from typing import Annotated, Any

import msgspec
from litestar import Controller, Request, Response, delete, get, patch, post
from litestar.datastructures import Cookie
from litestar.di import NamedDependency, Provide
from litestar.params import FromPath, JSONBody, QueryParameter
from litestar.response import Redirect

from actors.runtime.settings import Settings
from bus_schemas.base import FailureCode
from bus_schemas.identity import (
    NEXT_MAX_LENGTH,
    ChangeMemberRole,
    GetMe,
    InviteMember,
    IssueApiKey,
    ListApiKeys,
    ListInvites,
    ListMembers,
    ListSessions,
    Principal,
    RedeemMagicLink,
    RemoveMember,
    RequestMagicLink,
    RevokeApiKey,
    RevokeInvite,
    RevokeSession,
    Role,
)
from bus_schemas.registry import (
    CHANGE_MEMBER_ROLE,
    GET_ME,
    INVITE_MEMBER,
    ISSUE_API_KEY,
    LIST_API_KEYS,
    LIST_INVITES,
    LIST_MEMBERS,
    LIST_SESSIONS,
    REDEEM_MAGIC_LINK,
    REMOVE_MEMBER,
    REQUEST_MAGIC_LINK,
    REVOKE_API_KEY,
    REVOKE_INVITE,
    REVOKE_SESSION,
)
from gateway.auth import SESSION_COOKIE, session_token
from gateway.browser import CROSS_SITE_OPT
from gateway.pages import FORM_FIELD, form_cookie, form_is_ours, form_token, hidden, page, paragraph
from gateway.problems import Problem
from gateway.services import EdgeServices, provide_principal

log = logging.getLogger("bmms.gateway.identity")

CALLBACK_PATH = "/v1/auth/magic-link/callback"
"""Where magic links point; the token is the `token` query parameter."""
SIGN_IN_PAGE = "/sign-in"
"""The browser's sign-in page (gateway.sign_in)."""
DEFAULT_AFTER_SIGN_IN = "/v1/me"

Email = Annotated[str, msgspec.Meta(min_length=3, max_length=320)]


class MagicLinkBody(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Ask for a sign-in link."""

    email: Email
    next: Annotated[str, msgspec.Meta(max_length=NEXT_MAX_LENGTH)] | None = None
    """A path on this site to land on after signing in."""


class MagicLinkAccepted(msgspec.Struct, frozen=True, kw_only=True):
    """The answer to every well-formed sign-in request."""

    detail: str
    expires_in_seconds: int


class OrgView(msgspec.Struct, frozen=True, kw_only=True):
    """An organisation the caller belongs to."""

    org_id: str
    name: str
    role: str


class MeView(msgspec.Struct, frozen=True, kw_only=True):
    """Who is calling."""

    subject: str
    org_id: str
    """The organisation this request acts in."""
    role: str | None
    person_id: str | None
    email: str | None
    orgs: list[OrgView]


class SessionView(msgspec.Struct, frozen=True, kw_only=True):
    """One of the person's sessions."""

    session_id: str
    created_at: str
    expires_at: str
    user_agent: str
    client_ip: str
    current: bool
    """Whether this request came with this session."""


class InviteBody(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Invite an address into the active organisation."""

    email: Email


class InviteView(msgspec.Struct, frozen=True, kw_only=True):
    """A pending invitation: accepted when the address signs in."""

    invite_id: str
    org_id: str
    email: str
    role: str


class PendingInviteView(msgspec.Struct, frozen=True, kw_only=True):
    """A pending invitation of the active organisation."""

    invite_id: str
    email: str
    role: str
    invited_by: str
    """The inviting person's id."""
    created_at: str


class MemberView(msgspec.Struct, frozen=True, kw_only=True):
    """A person of the active organisation."""

    person_id: str
    email: str
    role: str
    joined_at: str


class RoleBody(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A person's new role."""

    role: Role


class ApiKeyBody(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A new API key's label."""

    label: Annotated[str, msgspec.Meta(min_length=1, max_length=100)] = "default"


class ApiKeyView(msgspec.Struct, frozen=True, kw_only=True):
    """An API key, without its secret."""

    key_id: str
    label: str
    created_at: str | None = None
    created_by: str | None = None


class NewApiKeyView(msgspec.Struct, frozen=True, kw_only=True):
    """A new API key: `secret` is shown this once; send it as `Authorization: Bearer <secret>`."""

    key_id: str
    label: str
    org_id: str
    secret: str


def client_ip(request: Request[Any, Any, Any]) -> str:
    """The client's address (uvicorn applies X-Forwarded-For from trusted proxies)."""
    return request.client.host if request.client else "unknown"


def is_https(request: Request[Any, Any, Any], settings: Settings) -> bool:
    """Whether the browser reached us over https: the scheme, X-Forwarded-Proto, or the public URL."""
    forwarded = request.headers.get("x-forwarded-proto", "").split(",")[0].strip().lower()
    return request.url.scheme == "https" or forwarded == "https" or (settings.public_url or "").startswith("https://")


def public_base(request: Request[Any, Any, Any], settings: Settings) -> str:
    """The base URL links point to. Set BMMS_PUBLIC_URL in production: without it the request's Host
    decides, which only suits development."""
    return (settings.public_url or str(request.base_url)).rstrip("/")


def require_person(principal: Principal) -> str:
    """The person id of a signed-in caller; 403 for an API key."""
    if principal.person_id is None:
        log.info("rejected %s: identity management needs a signed-in person", principal.subject)
        raise Problem(403, "sign in as a person for this: an API key cannot manage identities",
                      code=FailureCode.FORBIDDEN)
    return principal.person_id


def session_cookie(value: str, max_age: int, secure: bool) -> Cookie:
    """The session cookie with its attributes (an empty value with max_age 0 clears it)."""
    return Cookie(key=SESSION_COOKIE, value=value, max_age=max_age, path="/", httponly=True, secure=secure,
                  samesite="lax")


class SignInController(Controller):
    """Magic-link sign-in and sign-out."""

    path = "/v1/auth"
    tags = ["identity"]

    @post("/magic-link", status_code=202, summary="Mail a sign-in link")
    async def request_link(
        self, request: Request[Any, Any, Any], data: JSONBody[MagicLinkBody],
        services: NamedDependency[EdgeServices],
    ) -> MagicLinkAccepted:
        """Mail a one-time sign-in link (15 minutes) to the address; the answer is the same whether or not
        anyone has signed in with it. 429 after 5 links per address or 20 per client in 15 minutes."""
        settings = services.settings
        sent = await services.bus.ask(
            REQUEST_MAGIC_LINK,
            RequestMagicLink(email=data.email, client_ip=client_ip(request), next=data.next,
                             link_base=public_base(request, settings) + CALLBACK_PATH),
        )
        return MagicLinkAccepted(detail="a sign-in link is on its way to that address; it works once",
                                 expires_in_seconds=sent.expires_in_seconds)

    @get("/magic-link/callback", summary="Open a sign-in link", include_in_schema=True)
    async def confirm_link(
        self, request: Request[Any, Any, Any], services: NamedDependency[EdgeServices],
        token: Annotated[str, QueryParameter(min_length=1, max_length=200, description="The link's token.")],
    ) -> Response[str]:
        """A page with a "Sign in" button that POSTs the token: opening the link does not use it, so a
        mail scanner that fetches every link cannot burn it. Nothing submits the form but the person."""
        form = form_token(request)
        body = "\n".join([
            paragraph("Continue to sign in to Build My MCP Server in this browser."),
            f'  <form method="post" action="{CALLBACK_PATH}">',
            hidden(FORM_FIELD, form),
            hidden("token", token),
            '    <button type="submit">Sign in</button>',
            "  </form>",
            paragraph("The link works once. If you did not ask to sign in, close this page.", "small"),
        ])
        return page("Sign in", body, cookies=[form_cookie(form, is_https(request, services.settings))])

    @post("/magic-link/callback", summary="Use a sign-in link", include_in_schema=True,
          opt={CROSS_SITE_OPT: "form token"})
    async def use_link(
        self, request: Request[Any, Any, Any],
        services: NamedDependency[EdgeServices],
    ) -> Response[Any]:
        """The confirmation form's POST (form token checked): use the link once, set the session cookie
        (30 days) and go to `next`, else `/v1/me`. Refusals are HTML pages: a person is reading."""
        form = await request.form()
        token = form.get("token")
        if not form_is_ours(request, form.get(FORM_FIELD), services.settings.public_url):
            log.info("refused sign-in link use: form token missing or wrong, or foreign Origin %r",
                     request.headers.get("origin", "")[:200])
            return page("Sign in", paragraph("This form expired or did not come from this site: open the link "
                                             "from your mail again."), 403)
        if not isinstance(token, str) or not 1 <= len(token) <= 200:
            return page("Sign in", paragraph("The sign-in form is incomplete: open the link from your mail again."),
                        400)
        try:
            started = await services.bus.ask(
                REDEEM_MAGIC_LINK,
                RedeemMagicLink(token=token, user_agent=request.headers.get("user-agent", ""),
                                client_ip=client_ip(request)),
            )
        except Problem as problem:
            if problem.status != 401:
                raise
            return page("This link cannot sign you in",
                        paragraph(problem.detail[:1].upper() + problem.detail[1:] + ".")
                        + f'\n  <p><a href="{SIGN_IN_PAGE}">Ask for a new link</a></p>', 401)
        cookie = session_cookie(started.token, started.max_age_seconds, is_https(request, services.settings))
        return Redirect(
            path=started.next or DEFAULT_AFTER_SIGN_IN, status_code=303, cookies=[cookie],
            headers={"Cache-Control": "no-store", "Referrer-Policy": "no-referrer"},
        )

    @post("/sign-out", status_code=204, summary="Sign out")
    async def sign_out(
        self, request: Request[Any, Any, Any], services: NamedDependency[EdgeServices],
    ) -> Response[None]:
        """End the cookie's session and clear the cookie; 204 even when there was no valid session."""
        token = session_token(request)
        if token is not None:
            principal = await services.authenticator.session_principal(request)
            if principal is not None and principal.person_id and principal.session_id:
                revoke = RevokeSession(person_id=principal.person_id, session_id=principal.session_id)
                await services.bus.ask(REVOKE_SESSION, revoke)
            services.authenticator.forget(token=token)
        return Response(None, status_code=204,
                        cookies=[session_cookie("", 0, is_https(request, services.settings))])


class MeController(Controller):
    """Who is calling."""

    path = "/v1/me"
    tags = ["identity"]
    dependencies = {"principal": Provide(provide_principal)}

    @get("/", summary="Who am I")
    async def me(self, principal: NamedDependency[Principal], services: NamedDependency[EdgeServices]) -> MeView:
        """The caller, the organisation this request acts in (`X-Org`, else the first), the role there,
        and every organisation of the person."""
        asked = GetMe(org_id=principal.org_id, subject=principal.subject, person_id=principal.person_id)
        me = await services.bus.ask(GET_ME, asked)
        return MeView(subject=me.subject, org_id=me.org_id, role=me.role, person_id=me.person_id, email=me.email,
                      orgs=[OrgView(org_id=o.org_id, name=o.name, role=o.role) for o in me.orgs])


class SessionsController(Controller):
    """The signed-in person's sessions."""

    path = "/v1/sessions"
    tags = ["identity"]
    dependencies = {"principal": Provide(provide_principal)}

    @get("/", summary="List my sessions")
    async def list_sessions(self, principal: NamedDependency[Principal], services: NamedDependency[EdgeServices]
                            ) -> dict[str, list[SessionView]]:
        """Every valid session of the person, newest first; `current` marks this request's."""
        listed = await services.bus.ask(LIST_SESSIONS, ListSessions(person_id=require_person(principal)))
        return {"sessions": [
            SessionView(session_id=s.session_id, created_at=s.created_at, expires_at=s.expires_at,
                        user_agent=s.user_agent, client_ip=s.client_ip, current=s.session_id == principal.session_id)
            for s in listed.sessions
        ]}

    @delete("/{session_id:str}", status_code=204, summary="End a session")
    async def revoke_session(
        self, session_id: FromPath[str], principal: NamedDependency[Principal], services: NamedDependency[EdgeServices]
    ) -> None:
        """End one of the person's sessions (404 for anyone else's)."""
        request = RevokeSession(person_id=require_person(principal), session_id=session_id)
        await services.bus.ask(REVOKE_SESSION, request)
        services.authenticator.forget(session_id=session_id)


class InvitesController(Controller):
    """Invitations into the active organisation."""

    path = "/v1/invites"
    tags = ["identity"]
    dependencies = {"principal": Provide(provide_principal)}

    @post("/", status_code=201, summary="Invite someone")
    async def invite(
        self, request: Request[Any, Any, Any], data: JSONBody[InviteBody], principal: NamedDependency[Principal],
        services: NamedDependency[EdgeServices],
    ) -> InviteView:
        """An owner invites an address; it joins as a member when it signs in (the invitation mail
        carries a sign-in link). 403 for members."""
        invite = await services.bus.ask(
            INVITE_MEMBER,
            InviteMember(org_id=principal.org_id, invited_by=require_person(principal), email=data.email,
                         link_base=public_base(request, services.settings) + CALLBACK_PATH),
        )
        return InviteView(invite_id=invite.invite_id, org_id=invite.org_id, email=invite.email, role=invite.role)


class OrgController(Controller):
    """The active organisation's people and pending invitations; the organisation is always the caller's."""

    path = "/v1/org"
    tags = ["identity"]
    dependencies = {"principal": Provide(provide_principal)}

    @get("/members", summary="List the organisation's people")
    async def list_members(self, principal: NamedDependency[Principal], services: NamedDependency[EdgeServices]
                           ) -> dict[str, list[MemberView]]:
        """Every person of the organisation with their role, in the order they joined (members only)."""
        request = ListMembers(org_id=principal.org_id, asked_by=require_person(principal))
        listed = await services.bus.ask(LIST_MEMBERS, request)
        return {"members": [MemberView(person_id=m.person_id, email=m.email, role=m.role, joined_at=m.joined_at)
                            for m in listed.members]}

    @patch("/members/{person_id:str}", summary="Change a person's role")
    async def change_role(
        self, person_id: FromPath[str], data: JSONBody[RoleBody], principal: NamedDependency[Principal],
        services: NamedDependency[EdgeServices],
    ) -> MemberView:
        """An owner makes a member an owner, or an owner a member; 409 for the last owner."""
        changed = await services.bus.ask(
            CHANGE_MEMBER_ROLE,
            ChangeMemberRole(org_id=principal.org_id, changed_by=require_person(principal), person_id=person_id,
                             role=data.role),
        )
        services.authenticator.forget(person_id=person_id, org_id=principal.org_id)
        member = changed.member
        return MemberView(person_id=member.person_id, email=member.email, role=member.role,
                          joined_at=member.joined_at)

    @delete("/members/{person_id:str}", status_code=204, summary="Remove a person")
    async def remove_member(
        self, person_id: FromPath[str], principal: NamedDependency[Principal], services: NamedDependency[EdgeServices]
    ) -> None:
        """An owner removes a person: their sessions and the API keys they created here stop acting in this
        organisation at once through this gateway, and within the auth cache bound through every other copy.
        409 for the last owner."""
        request = RemoveMember(org_id=principal.org_id, removed_by=require_person(principal), person_id=person_id)
        removed = await services.bus.ask(REMOVE_MEMBER, request)
        services.authenticator.forget(person_id=person_id, org_id=principal.org_id)
        for key_id in removed.revoked_keys:
            services.authenticator.forget(subject=f"api_key:{key_id}")

    @get("/invites", summary="List pending invitations")
    async def list_invites(self, principal: NamedDependency[Principal], services: NamedDependency[EdgeServices]
                           ) -> dict[str, list[PendingInviteView]]:
        """The organisation's invitations nobody accepted yet, newest first (owners only)."""
        request = ListInvites(org_id=principal.org_id, asked_by=require_person(principal))
        listed = await services.bus.ask(LIST_INVITES, request)
        return {"invites": [PendingInviteView(invite_id=i.invite_id, email=i.email, role=i.role,
                                              invited_by=i.invited_by, created_at=i.created_at)
                            for i in listed.invites]}

    @delete("/invites/{invite_id:str}", status_code=204, summary="Withdraw an invitation")
    async def revoke_invite(self, invite_id: FromPath[str], principal: NamedDependency[Principal],
                            services: NamedDependency[EdgeServices]) -> None:
        """An owner withdraws a pending invitation: signing in with that address no longer joins."""
        request = RevokeInvite(org_id=principal.org_id, revoked_by=require_person(principal), invite_id=invite_id)
        await services.bus.ask(REVOKE_INVITE, request)


class ApiKeysController(Controller):
    """The active organisation's API keys, for scripts and CI."""

    path = "/v1/api-keys"
    tags = ["identity"]
    dependencies = {"principal": Provide(provide_principal)}

    @post("/", status_code=201, summary="Create an API key")
    async def create_key(self, data: JSONBody[ApiKeyBody], principal: NamedDependency[Principal],
                         services: NamedDependency[EdgeServices]) -> NewApiKeyView:
        """A new key of the organisation; the secret is in this answer only (stored as an argon2id hash)."""
        created = await services.bus.ask(
            ISSUE_API_KEY,
            IssueApiKey(org_id=principal.org_id, created_by=require_person(principal), label=data.label),
        )
        return NewApiKeyView(key_id=created.key_id, label=created.label, org_id=created.org_id, secret=created.secret)

    @get("/", summary="List API keys")
    async def list_keys(self, principal: NamedDependency[Principal], services: NamedDependency[EdgeServices]
                        ) -> dict[str, list[ApiKeyView]]:
        """The organisation's live keys, without secrets: all of them for an owner, a member's own for a member."""
        request = ListApiKeys(org_id=principal.org_id, asked_by=require_person(principal))
        listed = await services.bus.ask(LIST_API_KEYS, request)
        return {"keys": [ApiKeyView(key_id=k.key_id, label=k.label, created_at=k.created_at, created_by=k.created_by)
                         for k in listed.keys]}

    @delete("/{key_id:str}", status_code=204, summary="Revoke an API key")
    async def revoke_key(
        self, key_id: FromPath[str], principal: NamedDependency[Principal], services: NamedDependency[EdgeServices]
    ) -> None:
        """Revoke a key (an owner any key, a member only the keys they created): refused at once through this
        gateway, and within the auth cache bound (10 s) through every other copy."""
        request = RevokeApiKey(org_id=principal.org_id, key_id=key_id, revoked_by=require_person(principal))
        await services.bus.ask(REVOKE_API_KEY, request)
        services.authenticator.forget(subject=f"api_key:{key_id}")


IDENTITY_CONTROLLERS = (SignInController, MeController, SessionsController, InvitesController, OrgController,
                        ApiKeysController)
"""Every identity route, for the app factory."""
