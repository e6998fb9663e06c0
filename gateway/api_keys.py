"""The active organisation's API keys: `POST /v1/api-keys {label?}` -> 201 with the secret, shown once;
`GET /v1/api-keys` (no secrets); `DELETE /v1/api-keys/{id}` -> 204. Any person of the organisation creates keys;
an owner lists and revokes every key, a member only the keys they created (403 for another's)."""

from __future__ import annotations

import logging
from typing import Annotated

import msgspec
from litestar import Controller, delete, get, post
from litestar.di import NamedDependency, Provide
from litestar.params import FromPath, JSONBody

from bus_schemas.identity import (
    IssueApiKey,
    ListApiKeys,
    Principal,
    RevokeApiKey,
)
from bus_schemas.registry import (
    ISSUE_API_KEY,
    LIST_API_KEYS,
    REVOKE_API_KEY,
)
from gateway.identity import require_person
from gateway.services import EdgeServices, provide_principal

log = logging.getLogger("bmms.gateway.api_keys")


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
