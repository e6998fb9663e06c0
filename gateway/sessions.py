"""Who is calling, and their sessions: `GET /v1/me`; `GET /v1/sessions`, `DELETE /v1/sessions/{id}`."""

from __future__ import annotations

import logging

import msgspec
from litestar import Controller, delete, get
from litestar.di import NamedDependency, Provide
from litestar.params import FromPath

from bus_schemas.identity import (
    GetMe,
    ListSessions,
    Principal,
    RevokeSession,
)
from bus_schemas.registry import (
    GET_ME,
    LIST_SESSIONS,
    REVOKE_SESSION,
)
from gateway.identity import require_person
from gateway.services import EdgeServices, provide_principal

log = logging.getLogger("bmms.gateway.sessions")


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
