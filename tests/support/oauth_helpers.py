"""Shared pieces of the OAuth tests: a clock the tests move, PKCE pairs, a signed-in person."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as dt
import hashlib
import secrets
import socket
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import uvicorn
from nats.aio.client import Client

from actors.runtime.bus import call
from bus_schemas.oauth import (
    AuthorizationRedirect,
    ClientMetadata,
    ClientRegistered,
    ConsentRequired,
    DecideConsent,
    ExchangeToken,
    RegisterClient,
    Signer,
    StartAuthorization,
    TokenIssued,
)
from bus_schemas.registry import (
    OAUTH_DECIDE_CONSENT,
    OAUTH_EXCHANGE_TOKEN,
    OAUTH_REGISTER_CLIENT,
    OAUTH_START_AUTHORIZATION,
)

SECRET_KEY = "test-key-encryption-key-0123456789abcdef"
ISSUER = "https://bmms.example"
RESOURCE = f"{ISSUER}/servers/weather/mcp"
FOREIGN = f"{ISSUER}/servers/elsewhere/mcp"
REDIRECT = "http://127.0.0.1:33418/callback"


class MovableClock:
    """Real time plus an offset the test sets: codes expire without sleeping."""

    def __init__(self) -> None:
        self.offset = dt.timedelta()

    def __call__(self) -> dt.datetime:
        return dt.datetime.now(dt.UTC) + self.offset


def pkce_pair() -> tuple[str, str]:
    """(verifier, S256 challenge)."""
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    return verifier, challenge


def query_of(location: str) -> dict[str, str]:
    """The single-valued query parameters of a redirect."""
    return {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}


def person(org_id: str = "oorg1", subject: str = "person:p1") -> Signer:
    """A signed-in person, as the gateway resolves one from a session cookie."""
    return Signer(subject=subject, org_id=org_id, label="ada@example.com")


@contextlib.asynccontextmanager
async def serve_asgi(
    app: Any, sock: socket.socket | None = None, *, tls: tuple[str, str] | None = None
) -> AsyncIterator[str]:
    """Serve an ASGI app with uvicorn in this loop on a free loopback port; yields its base URL
    (`https://localhost:<port>` with `tls` = (certificate file, key file))."""
    if sock is None:
        sock = bound_socket()
    port = sock.getsockname()[1]
    certificate, key = tls or (None, None)
    config = uvicorn.Config(app, log_config=None, access_log=False, lifespan="on", ssl_certfile=certificate,
                            ssl_keyfile=key)
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    deadline = asyncio.get_running_loop().time() + 15
    while not server.started:
        if task.done():
            task.result()
            raise RuntimeError("uvicorn stopped before it started")
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError("uvicorn did not start within 15 s")
        await asyncio.sleep(0.01)
    try:
        yield f"https://localhost:{port}" if tls else f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, timeout=15)
        sock.close()


def bound_socket() -> socket.socket:
    """A listening loopback socket on a free port (bound now, so its port is known before serving)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    sock.setblocking(False)
    return sock


def document_server(documents: dict[str, tuple[bytes, dict[str, str]]]) -> Any:
    """A tiny ASGI app answering GET <path> with the given body and headers (404 otherwise), counting hits."""
    hits: dict[str, int] = {}

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        path = scope["path"]
        hits[path] = hits.get(path, 0) + 1
        body, headers = documents.get(path, (b"not found", {}))
        status = 200 if path in documents else 404
        raw_headers = [(b"content-type", b"application/json")] + [(k.encode(), v.encode()) for k, v in headers.items()]
        await send({"type": "http.response.start", "status": status, "headers": raw_headers})
        await send({"type": "http.response.body", "body": body})

    app.hits = hits  # type: ignore[attr-defined]
    return app


async def ask(nc: Client, rpc: Any, message: object) -> Any:
    return await call(nc, rpc, message, timeout=10)


async def register(nc: Client, *, name: str = "Test client", method: str | None = "none",
                   ip: str | None = None, redirect: str = REDIRECT) -> ClientRegistered:
    ip = ip or f"198.18.{secrets.randbelow(256)}.{secrets.randbelow(256)}"  # a fresh rate-limit bucket
    metadata = ClientMetadata(redirect_uris=(redirect,), client_name=name, token_endpoint_auth_method=method,
                              grant_types=("authorization_code", "refresh_token"))
    reply = await ask(nc, OAUTH_REGISTER_CLIENT, RegisterClient(metadata=metadata, client_ip=ip))
    assert isinstance(reply, ClientRegistered), reply
    return reply


async def authorize(nc: Client, client_id: str, challenge: str, **changes: Any) -> Any:
    values: dict[str, Any] = {
        "issuer": ISSUER, "client_id": client_id, "redirect_uri": REDIRECT, "response_type": "code",
        "state": "st-1", "scope": "mcp:tools:read mcp:tools:write", "code_challenge": challenge,
        "code_challenge_method": "S256", "resources": (RESOURCE,), "signer": person(),
    }
    values.update(changes)
    return await ask(nc, OAUTH_START_AUTHORIZATION, StartAuthorization(**values))


async def code_for(
    nc: Client, client_id: str, challenge: str, *, granted: tuple[str, ...] = ("mcp:tools:write",)
) -> str:
    consent = await authorize(nc, client_id, challenge)
    assert isinstance(consent, ConsentRequired), consent
    decided = await ask(nc, OAUTH_DECIDE_CONSENT, DecideConsent(
        issuer=ISSUER, consent_id=consent.consent_id, csrf_token=consent.csrf_token, subject=person().subject,
        approve=True, granted_optional=granted,
    ))
    assert isinstance(decided, AuthorizationRedirect), decided
    params = query_of(decided.location)
    assert params["state"] == "st-1" and params["iss"] == ISSUER
    return params["code"]


async def exchange(nc: Client, client_id: str, code: str, verifier: str, **changes: Any) -> Any:
    values: dict[str, Any] = {
        "issuer": ISSUER, "grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT,
        "code_verifier": verifier, "resources": (RESOURCE,), "client_id": client_id,
    }
    values.update(changes)
    return await ask(nc, OAUTH_EXCHANGE_TOKEN, ExchangeToken(**values))


async def refresh(nc: Client, client_id: str, token: str) -> Any:
    return await ask(nc, OAUTH_EXCHANGE_TOKEN, ExchangeToken(
        issuer=ISSUER, grant_type="refresh_token", refresh_token=token, resources=(RESOURCE,), client_id=client_id,
    ))


async def tokens(nc: Client) -> tuple[ClientRegistered, TokenIssued]:
    client = await register(nc)
    verifier, challenge = pkce_pair()
    code = await code_for(nc, client.client_id, challenge)
    issued = await exchange(nc, client.client_id, code, verifier)
    assert isinstance(issued, TokenIssued), issued
    return client, issued
