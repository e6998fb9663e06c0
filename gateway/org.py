"""The active organisation's people and invitations: `POST /v1/invites {email}` (owners); `GET /v1/org/members`,
`PATCH /v1/org/members/{person_id} {role}`, `DELETE /v1/org/members/{person_id}` (removing a person revokes the
API keys they created there); `GET /v1/org/invites`, `DELETE /v1/org/invites/{invite_id}`. Owners only but the
list of people; the last owner can be neither removed nor demoted (409)."""

from __future__ import annotations

import logging
from typing import Any

import msgspec
from litestar import Controller, Request, delete, get, patch, post
from litestar.di import NamedDependency, Provide
from litestar.params import FromPath, JSONBody

from bus_schemas.identity import (
    ChangeMemberRole,
    InviteMember,
    ListInvites,
    ListMembers,
    Principal,
    RemoveMember,
    RevokeInvite,
    Role,
)
from bus_schemas.registry import (
    CHANGE_MEMBER_ROLE,
    INVITE_MEMBER,
    LIST_INVITES,
    LIST_MEMBERS,
    REMOVE_MEMBER,
    REVOKE_INVITE,
)
from gateway.identity import CALLBACK_PATH, Email, public_base, require_person
from gateway.services import EdgeServices, provide_principal

log = logging.getLogger("bmms.gateway.org")


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
