"""The Resource Server's HTTP side: who may reach the MCP endpoint, and the OAuth challenges when not.

In front of the SDK's Streamable HTTP handler, `McpEndpoint` checks, in this order:
1. Host and Origin with the SDK's own DNS-rebinding guard (the same settings the SDK's transport uses), so a
   foreign Origin is 403 before anything else happens;
2. the bearer token (Authorization header only) with `AccessTokenVerifier`: none -> 401 with
   `WWW-Authenticate: Bearer resource_metadata="...", scope="..."`, a refused one -> 401 `invalid_token`;
3. for `tools/call`, the tool's scope (`auth.scopes_for_tool`): a token without it -> 403
   `insufficient_scope` naming the scope, so a client can step up (the SDK checks no per-tool scopes).
The body is read once (size-capped) and replayed to the SDK. The verified token is put where the SDK's own
bearer middleware would put it (`scope["user"]`, `scope["auth"]`, `get_access_token()`); it goes no further:
upstream calls carry only the deployer's secrets.

`protected_resource_metadata` is the RFC 9728 document: `resource` is the canonical URL exactly,
`authorization_servers` our issuer exactly (no URL normalisation that could add a slash).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from mcp.server.auth.middleware.auth_context import AuthContextMiddleware
from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
from mcp.server.transport_security import (
    DEFAULT_MAX_REQUEST_BODY_SIZE,
    TransportSecurityMiddleware,
    TransportSecuritySettings,
)
from starlette.authentication import AuthCredentials
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from runner_template.auth import (
    SCOPE_TOOLS_READ,
    SCOPE_TOOLS_WRITE,
    AccessTokenVerifier,
    TokenRejected,
    may_call_tool,
    scopes_for_tool,
)

log = logging.getLogger("bmms.runner.auth")

WELL_KNOWN_PRM = "/.well-known/oauth-protected-resource"


def metadata_url(resource: str) -> str:
    """The public RFC 9728 metadata URL of `resource`: origin + well-known prefix + the resource's path."""
    parts = urlsplit(resource)
    return f"{parts.scheme}://{parts.netloc}{WELL_KNOWN_PRM}{parts.path.rstrip('/')}"


@dataclass(frozen=True)
class Protection:
    """What makes this server a Resource Server: its canonical URL, our issuer, the verifier, and the scope
    each tool needs."""

    resource: str
    """The canonical public URL (with `/mcp`); the audience tokens must carry."""
    issuer: str
    verifier: AccessTokenVerifier
    read_only: Mapping[str, bool]
    """Tool name -> read-only; decides the scope a call needs."""

    @property
    def metadata_url(self) -> str:
        """Where clients find the protected resource metadata (named in every challenge)."""
        return metadata_url(self.resource)

    def scopes_supported(self) -> list[str]:
        """The broad scopes this server's tools use."""
        kinds = set(self.read_only.values())
        return [s for s, used in ((SCOPE_TOOLS_READ, True), (SCOPE_TOOLS_WRITE, False in kinds)) if used]

    def protected_resource_metadata(self) -> dict[str, Any]:
        """The RFC 9728 document."""
        return {
            "resource": self.resource,
            "authorization_servers": [self.issuer],
            "scopes_supported": self.scopes_supported(),
            "bearer_methods_supported": ["header"],
        }

    def challenge(self, scope: str, *, error: str | None = None, description: str | None = None) -> str:
        """A `WWW-Authenticate: Bearer` value (RFC 6750 §3, RFC 9728 §5.1)."""
        params = {"error": error, "error_description": description,
                  "resource_metadata": self.metadata_url, "scope": scope}
        limits = {"error_description": DESCRIPTION_LIMIT}
        return "Bearer " + ", ".join(f'{name}="{_quotable(value, limits.get(name))}"'
                                     for name, value in params.items() if value)


DESCRIPTION_LIMIT = 200
"""The longest `error_description` a challenge carries (a refusal's reason may quote a whole token field)."""
_VISIBLE = frozenset(map(chr, range(0x20, 0x7F))) - {'"', "\\"}


def _quotable(text: str, limit: int | None = None) -> str:
    """`text` as an RFC 6750 §3 auth-param value: space and visible ASCII but `"` and `\\` as they are, every
    other character (a token's `kid` or `alg` may be anything) percent-encoded as UTF-8; at most `limit` long.

    Every value of a challenge goes through here: Starlette encodes headers as Latin-1, so one character
    outside it would turn the 401 into a 500, and RFC 6750 allows no more than visible ASCII anyway."""
    pieces = []
    size = 0
    for c in text:
        piece = c if c in _VISIBLE else "".join(f"%{b:02X}" for b in c.encode("utf-8", "surrogatepass"))
        size += len(piece)
        if limit is not None and size > limit:
            break
        pieces.append(piece)
    return "".join(pieces)


def transport_security(allowed_hosts: list[str], allowed_origins: list[str]) -> TransportSecuritySettings:
    """The SDK's DNS-rebinding guard for these Host and Origin values (an absent Origin is allowed)."""
    return TransportSecuritySettings(
        enable_dns_rebinding_protection=True, allowed_hosts=allowed_hosts, allowed_origins=allowed_origins,
    )


def _tool_calls(body: bytes) -> list[str]:
    """The tool names a JSON-RPC body calls (a batch is checked message by message)."""
    try:
        decoded = json.loads(body)
    except (ValueError, RecursionError):
        return []  # the SDK answers the parse error
    messages = decoded if isinstance(decoded, list) else [decoded]
    names = []
    for message in messages:
        if isinstance(message, dict) and message.get("method") == "tools/call":
            params = message.get("params")
            name = params.get("name") if isinstance(params, dict) else None
            names.append(name if isinstance(name, str) else "")
    return names


class McpEndpoint:
    """The ASGI app at /mcp: Host/Origin, bearer token, per-tool scope, then the SDK's handler."""

    def __init__(self, handler: ASGIApp, security: TransportSecuritySettings, protection: Protection | None,
                 *, max_body_size: int = DEFAULT_MAX_REQUEST_BODY_SIZE) -> None:
        self.security = TransportSecurityMiddleware(security)
        self.protection = protection
        """None only for a runner started with BMMS_RUNNER_INSECURE_NO_AUTH=1 (tests of tool behaviour)."""
        self.handler = AuthContextMiddleware(handler)
        self.max_body_size = max_body_size

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.handler(scope, receive, send)
            return
        request = Request(scope, receive)
        refused = await self.security.validate_request(request, is_post=False)
        if refused is not None:
            log.info("request refused: %s", bytes(refused.body).decode(),
                     extra={"event": "refused", "host": request.headers.get("host"),
                            "origin": request.headers.get("origin")})
            await refused(scope, receive, send)
            return
        body: bytes | None = None
        if request.method == "POST":
            body = await self._body(receive)
            if body is None:
                await Response("Request body too large", status_code=413)(scope, receive, send)
                return
        if self.protection is not None:
            answer = await self._authorize(scope, request, body or b"")
            if answer is not None:
                await answer(scope, receive, send)
                return
        await self.handler(scope, _replay(body, receive) if body is not None else receive, send)

    async def _body(self, receive: Receive) -> bytes | None:
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_size:
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return b"".join(chunks)

    async def _authorize(self, scope: Scope, request: Request, body: bytes) -> Response | None:
        """None when the request may go on (the verified token is then in `scope`), else the refusal."""
        protection = self.protection
        assert protection is not None
        calls = _tool_calls(body)
        needed = _needed_scope(protection, calls)
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return _refusal(401, protection.challenge(needed), "invalid_token", "a bearer token is required")
        try:
            access = await protection.verifier.verify(token.strip())
        except TokenRejected as exc:
            log.info("bearer token refused: %s", exc, extra={"event": "token_refused", "reason": str(exc)})
            return _refusal(401, protection.challenge(needed, error="invalid_token", description=str(exc)),
                            "invalid_token", str(exc))
        for name in calls:
            read_only = protection.read_only.get(name)
            if read_only is None:
                continue  # not a tool of this server: the SDK answers that
            if not may_call_tool(access.scopes, name, read_only=read_only):
                wanted = scopes_for_tool(name, read_only=read_only)
                description = f"calling tool {name} needs scope {wanted[0]} (or {wanted[1]})"
                log.info("tool call refused: %s", description, extra={
                    "event": "insufficient_scope", "tool": name, "client_id": access.client_id,
                    "subject": access.subject})
                return _refusal(403, protection.challenge(wanted[0], error="insufficient_scope",
                                                          description=description),
                                "insufficient_scope", description)
        scope["user"] = AuthenticatedUser(access)
        scope["auth"] = AuthCredentials(access.scopes)
        return None


def _needed_scope(protection: Protection, calls: list[str]) -> str:
    """The scopes to ask for: read access, plus what the tools this request calls need."""
    needed = [SCOPE_TOOLS_READ]
    for name in calls:
        read_only = protection.read_only.get(name)
        if read_only is not None and scopes_for_tool(name, read_only=read_only)[0] not in needed:
            needed.append(scopes_for_tool(name, read_only=read_only)[0])
    return " ".join(needed)


def _refusal(status: int, challenge: str, error: str, description: str) -> Response:
    return JSONResponse({"error": error, "error_description": description}, status_code=status,
                        headers={"WWW-Authenticate": challenge, "Cache-Control": "no-store"})


def _replay(body: bytes, receive: Receive) -> Receive:
    """A `receive` that hands over the already-read body once, then defers to the real one."""
    sent = False

    async def replayed() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replayed
