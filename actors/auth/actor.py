"""The auth actor's wiring: its state, its mailer while serving, and its handlers bound to the registry."""

from __future__ import annotations

import asyncio
from pathlib import Path

from actors.auth import handlers
from actors.auth.config import AuthConfig
from actors.auth.handlers import AuthState
from actors.runtime.actor import Actor, bind
from actors.runtime.settings import Settings
from bus_schemas.registry import (
    AUTHENTICATE,
    CHANGE_MEMBER_ROLE,
    CREATE_API_KEY,
    GET_ME,
    INVITE_MEMBER,
    ISSUE_API_KEY,
    ISSUE_SIGN_IN_LINK,
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


class AuthActor(Actor):
    """The auth actor; it mails through a mailer built from the process settings it serves with."""

    def __init__(self, state: AuthState) -> None:
        super().__init__("auth", migrations=Path(__file__).parent / "migrations")
        self.state = state

    async def serve(self, settings: Settings, stop: asyncio.Event) -> None:
        """Serve with a mailer built from `settings`; queued mail gets a moment to go out on stop."""
        async with self.state.mailing(settings.smtp_url, settings.mail_from):
            await super().serve(settings, stop)


def create_actor(config: AuthConfig | None = None) -> Actor:
    """The auth actor."""
    state = AuthState(config or AuthConfig())
    actor = AuthActor(state)
    actor.rpc(REQUEST_MAGIC_LINK)(bind(handlers.request_magic_link, state))
    actor.rpc(REDEEM_MAGIC_LINK)(bind(handlers.redeem_magic_link, state))
    actor.rpc(AUTHENTICATE)(bind(handlers.authenticate, state))
    actor.rpc(GET_ME)(handlers.get_me)
    actor.rpc(LIST_SESSIONS)(handlers.list_sessions)
    actor.rpc(REVOKE_SESSION)(handlers.revoke_session)
    actor.rpc(INVITE_MEMBER)(bind(handlers.invite_member, state))
    actor.rpc(LIST_MEMBERS)(handlers.list_members)
    actor.rpc(REMOVE_MEMBER)(bind(handlers.remove_member, state))
    actor.rpc(CHANGE_MEMBER_ROLE)(handlers.change_member_role)
    actor.rpc(LIST_INVITES)(handlers.list_invites)
    actor.rpc(REVOKE_INVITE)(handlers.revoke_invite)
    actor.rpc(ISSUE_API_KEY)(handlers.issue_api_key)
    actor.rpc(LIST_API_KEYS)(handlers.list_api_keys)
    actor.rpc(REVOKE_API_KEY)(bind(handlers.revoke_api_key, state))
    actor.rpc(CREATE_API_KEY)(handlers.create_api_key)
    actor.rpc(ISSUE_SIGN_IN_LINK)(bind(handlers.issue_sign_in_link, state))
    return actor
