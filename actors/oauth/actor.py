"""The oauth actor's wiring: its state, configured when it starts serving, and its handlers on the registry."""

from __future__ import annotations

import asyncio
from pathlib import Path

from actors.oauth import handlers
from actors.oauth.state import OAuthConfig, OAuthState
from actors.runtime.actor import Actor, Context, bind
from actors.runtime.settings import Settings
from bus_schemas.registry import (
    OAUTH_CREATE_CLIENT,
    OAUTH_DECIDE_CONSENT,
    OAUTH_EXCHANGE_TOKEN,
    OAUTH_GET_JWKS,
    OAUTH_MEMBERSHIP_ENDED,
    OAUTH_MINT_SERVICE_TOKEN,
    OAUTH_REGISTER_CLIENT,
    OAUTH_REVOKE_TOKEN,
    OAUTH_START_AUTHORIZATION,
)


class OAuthActor(Actor):
    """The actor, whose state takes the process settings before it serves."""

    def __init__(self, state: OAuthState) -> None:
        super().__init__("oauth", migrations=Path(__file__).parent / "migrations")
        self.state = state

    async def serve(self, settings: Settings, stop: asyncio.Event) -> None:
        """Configure the state (which refuses a setup that cannot work), then serve."""
        self.state.configure(settings)
        await super().serve(settings, stop)

    async def started(self, ctx: Context) -> None:
        """Write the grants revoked within the REVOKED bucket's TTL again, in case a write was lost."""
        await handlers.catch_up_revocations(ctx, self.state)


def create_actor(config: OAuthConfig | None = None) -> Actor:
    """The oauth actor."""
    state = OAuthState(config or OAuthConfig())
    actor = OAuthActor(state)
    actor.rpc(OAUTH_REGISTER_CLIENT)(bind(handlers.register_client, state))
    actor.rpc(OAUTH_CREATE_CLIENT)(bind(handlers.create_client, state))
    actor.rpc(OAUTH_START_AUTHORIZATION)(bind(handlers.start_authorization, state))
    actor.rpc(OAUTH_DECIDE_CONSENT)(bind(handlers.decide_consent, state))
    actor.rpc(OAUTH_EXCHANGE_TOKEN)(bind(handlers.exchange_token, state))
    actor.rpc(OAUTH_REVOKE_TOKEN)(bind(handlers.revoke_token, state))
    actor.consumer(OAUTH_MEMBERSHIP_ENDED)(bind(handlers.end_membership_grants, state))
    actor.rpc(OAUTH_GET_JWKS)(bind(handlers.get_jwks, state))
    actor.rpc(OAUTH_MINT_SERVICE_TOKEN)(bind(handlers.mint_service_token, state))
    return actor
