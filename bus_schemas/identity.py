"""Identity messages: who is calling, as resolved by the auth actor."""

from __future__ import annotations

from bus_schemas.base import Failed, Id, Message


class Authenticate(Message, frozen=True, kw_only=True, tag="auth.authenticate.v1"):
    """Resolve a bearer credential (API key) presented at the edge to a principal."""

    token: str


class Principal(Message, frozen=True, kw_only=True, tag="auth.principal.v1"):
    """The caller on whose behalf a request runs; every resource check uses org_id."""

    org_id: Id
    subject: str
    """Who: an API key id or a person id."""
    scopes: tuple[str, ...] = ()


class CreateApiKey(Message, frozen=True, kw_only=True, tag="auth.create_api_key.v1"):
    """Create an API key for an organisation, creating the organisation if it does not exist."""

    org_name: str
    label: str = "default"


class ApiKeyCreated(Message, frozen=True, kw_only=True, tag="auth.api_key_created.v1"):
    """A new API key; `secret` is shown once and never stored in clear."""

    org_id: Id
    key_id: str
    secret: str


AuthenticateReply = Principal | Failed
CreateApiKeyReply = ApiKeyCreated | Failed
