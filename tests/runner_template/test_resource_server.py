"""A hosted runner is an OAuth Resource Server: tokens verified against the JWKS from the real bus, audience,
issuer, expiry and per-tool scopes enforced, RFC 9728 metadata, Host/Origin checks and CORS; driven with the
real mcp client in both protocol revisions and with plain HTTP where the HTTP answer is the subject."""

from __future__ import annotations

import base64
import json
import re
import socket
import time
import uuid
from typing import Any

import httpx2
import pytest
from mcp.shared.exceptions import MCPError

from runner_template.app import MCP_PATH, bind
from tests.runner_template.conftest import (
    ISSUER,
    KEY,
    PUBLIC_HOST,
    ROTATED,
    SECRET_VALUE,
    STRANGER,
    RecordingUpstream,
    mcp_client,
    resource_for,
    runner,
    sample_artifact,
    serving,
    settings_for,
    token,
)
from tests.support.oauth_helpers import document_server, serve_asgi

LEGACY = "2025-11-25"


def server_id() -> str:
    return "s" + uuid.uuid4().hex[:12]


def metadata_url(sid: str) -> str:
    return f"https://{PUBLIC_HOST}/.well-known/oauth-protected-resource/servers/{sid}/mcp"


async def post(url: str, method: str, params: dict[str, Any] | None = None, *, bearer: str | None = None,
               headers: dict[str, str] | None = None) -> httpx2.Response:
    """One JSON-RPC request on the stateless legacy path (no initialize needed)."""
    sent = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream",
            "MCP-Protocol-Version": LEGACY, **(headers or {})}
    if bearer:
        sent["Authorization"] = f"Bearer {bearer}"
    body = {"jsonrpc": "2.0", "id": 1, "method": method, "params": params or {}}
    async with httpx2.AsyncClient(timeout=30) as http:
        return await http.post(url, json=body, headers=sent)


@pytest.fixture
async def protected(stack: Any, jwks: Any) -> Any:
    sid = server_id()
    async with runner(settings_for(stack, sid)) as running:
        yield running


@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_a_valid_token_lists_and_calls_tools_in_both_protocol_revisions(protected: Any, mode: str) -> None:
    bearer = token(protected.settings.resource)
    async with mcp_client(protected.url, bearer, mode) as client:
        names = [t.name for t in (await client.list_tools()).tools]
        added = await client.call_tool("add", {"a": 2, "b": 3.5})
        version = client.protocol_version
    assert names == ["get_user", "create_note", "add", "list"]
    assert not added.is_error and added.content[0].text == "5.5"  # type: ignore[union-attr]
    assert version == ("2026-07-28" if mode == "auto" else LEGACY)


async def test_no_token_is_answered_401_naming_the_metadata_and_the_scope(protected: Any) -> None:
    sid = protected.settings.server_id
    answer = await post(protected.url, "tools/list")
    assert answer.status_code == 401
    assert answer.headers["www-authenticate"] == (
        f'Bearer resource_metadata="{metadata_url(sid)}", scope="mcp:tools:read"')
    write_call = await post(protected.url, "tools/call", {"name": "create_note", "arguments": {"note": {}}})
    assert 'scope="mcp:tools:read mcp:tools:write"' in write_call.headers["www-authenticate"]


async def test_the_sdk_client_without_a_token_gets_no_tools(protected: Any) -> None:
    # without an auth provider the SDK client reports an HTTP 401 only as "Server returned an error response"
    with pytest.raises(BaseExceptionGroup) as info:
        async with mcp_client(protected.url, None) as client:
            await client.list_tools()
    assert info.group_contains(MCPError, match="error response")


async def test_a_token_for_server_a_is_refused_by_server_b(stack: Any, jwks: Any) -> None:
    a, b = server_id(), server_id()
    for_a = token(resource_for(a))
    async with runner(settings_for(stack, a)) as server_a, runner(settings_for(stack, b)) as server_b:
        assert (await post(server_a.url, "tools/list", bearer=for_a)).status_code == 200
        refused = await post(server_b.url, "tools/list", bearer=for_a)
    assert refused.status_code == 401
    challenge = refused.headers["www-authenticate"]
    assert challenge.startswith('Bearer error="invalid_token", error_description=')
    assert "aud" in challenge and f'resource_metadata="{metadata_url(b)}"' in challenge


@pytest.mark.parametrize(("claims", "reason"), [
    ({"exp": int(time.time()) - 3600, "iat": int(time.time()) - 4500}, "exp"),
    ({"iss": ISSUER + "/"}, "iss"),
])
async def test_expired_tokens_and_tokens_from_another_issuer_are_refused(
        protected: Any, claims: dict[str, Any], reason: str) -> None:
    answer = await post(protected.url, "tools/list", bearer=token(protected.settings.resource, **claims))
    assert answer.status_code == 401
    assert 'error="invalid_token"' in answer.headers["www-authenticate"]
    assert reason in answer.json()["error_description"]


CHALLENGE = re.compile(r'Bearer [a-z_]+="[\x20\x21\x23-\x5b\x5d-\x7e]*"(?:, [a-z_]+="[\x20\x21\x23-\x5b\x5d-\x7e]*")*')
"""A `WWW-Authenticate: Bearer` value of quoted auth-params, each value in RFC 6750's error_description set."""


def with_header(bearer: str, **fields: Any) -> str:
    """`bearer` with `fields` changed in its JOSE header (the signature no longer matters: it is never reached)."""
    encoded, payload, signature = bearer.split(".")
    header = json.loads(base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)))
    header.update(fields)
    raw = base64.urlsafe_b64encode(json.dumps(header).encode()).rstrip(b"=").decode()
    return f"{raw}.{payload}.{signature}"


@pytest.mark.parametrize("fields", [
    {"kid": "ключ"}, {"kid": "\u2603"}, {"kid": "\ud800"}, {"kid": "\x00\x7f\x85"},
    {"kid": 'q"uote\\back'}, {"kid": "x\r\nSet-Cookie: session=stolen"}, {"kid": "é" * 5000},
    {"alg": "ключ"}, {"typ": "\u2603"}, {"alg": "RS256\u2028"},
], ids=["cyrillic", "snowman", "lone-surrogate", "controls", "quote-backslash", "crlf", "long-latin1",
        "alg", "typ", "line-separator"])
async def test_a_token_with_hostile_header_fields_is_refused_401_with_a_parsable_challenge(
        protected: Any, fields: dict[str, str]) -> None:
    hostile = with_header(token(protected.settings.resource), **fields)
    answer = await post(protected.url, "tools/list", bearer=hostile)
    assert answer.status_code == 401, answer.text
    challenge = answer.headers["www-authenticate"]
    assert CHALLENGE.fullmatch(challenge), challenge
    assert challenge.startswith('Bearer error="invalid_token", error_description="')
    assert f'resource_metadata="{metadata_url(protected.settings.server_id)}"' in challenge
    assert "set-cookie" not in answer.headers
    assert answer.json()["error"] == "invalid_token"


async def test_a_non_ascii_kid_is_named_percent_encoded_in_the_challenge(protected: Any) -> None:
    answer = await post(protected.url, "tools/list", bearer=with_header(token(protected.settings.resource), kid="ключ"))
    assert answer.status_code == 401
    assert "'%D0%BA%D0%BB%D1%8E%D1%87'" in answer.headers["www-authenticate"]
    assert "'ключ'" in answer.json()["error_description"]  # the JSON body says it as it is


async def test_an_unknown_key_is_refused_and_a_rotated_in_key_is_accepted_after_a_refetch(
        protected: Any, jwks: Any) -> None:
    resource = protected.settings.resource
    assert (await post(protected.url, "tools/list", bearer=token(resource))).status_code == 200
    fetched = jwks.requests
    unknown = await post(protected.url, "tools/list", bearer=token(resource, key=STRANGER))
    assert unknown.status_code == 401 and "no published key" in unknown.json()["error_description"]
    assert jwks.requests == fetched + 1  # the unknown kid made the runner look again, over the bus
    jwks.keys = [ROTATED, *jwks.keys]
    rotated = await post(protected.url, "tools/list", bearer=token(resource, key=ROTATED))
    assert rotated.status_code == 200, rotated.text
    assert jwks.requests == fetched + 2


async def test_a_read_only_token_calling_a_write_tool_is_refused_403_naming_the_scope(protected: Any) -> None:
    resource, sid = protected.settings.resource, protected.settings.server_id
    arguments = {"name": "create_note", "arguments": {"note": {"text": "hi"}}}
    refused = await post(protected.url, "tools/call", arguments, bearer=token(resource, scope="mcp:tools:read"))
    assert refused.status_code == 403
    assert refused.headers["www-authenticate"] == (
        'Bearer error="insufficient_scope", error_description="calling tool create_note needs scope '
        f'mcp:tools:write (or mcp:tool:create_note)", resource_metadata="{metadata_url(sid)}", '
        'scope="mcp:tools:write"')
    assert refused.json()["error"] == "insufficient_scope"
    for scope in ("mcp:tools:write", "mcp:tool:create_note"):
        allowed = await post(protected.url, "tools/call", arguments, bearer=token(resource, scope=scope))
        assert allowed.status_code == 200, (scope, allowed.text)
    read_tool = await post(protected.url, "tools/call", {"name": "add", "arguments": {"a": 1, "b": 2}},
                           bearer=token(resource, scope="mcp:tool:create_note"))
    assert read_tool.status_code == 403 and 'scope="mcp:tools:read"' in read_tool.headers["www-authenticate"]


async def test_protected_resource_metadata_names_the_canonical_url_and_our_issuer(protected: Any) -> None:
    sid = protected.settings.server_id
    async with httpx2.AsyncClient() as http:
        private = await http.get(protected.base + "/.well-known/oauth-protected-resource/mcp")
        public = await http.get(protected.base + f"/.well-known/oauth-protected-resource/servers/{sid}/mcp")
    assert private.status_code == public.status_code == 200
    assert private.json() == public.json() == {
        "resource": f"https://{PUBLIC_HOST}/servers/{sid}/mcp",
        "authorization_servers": [ISSUER],
        "scopes_supported": ["mcp:tools:read", "mcp:tools:write"],
        "bearer_methods_supported": ["header"],
    }
    assert '"authorization_servers":["https://bmms.example"]' in private.text.replace(" ", "")


async def test_a_foreign_origin_is_refused_403_and_ours_is_allowed_with_cors(protected: Any) -> None:
    bearer = token(protected.settings.resource)
    foreign = await post(protected.url, "tools/list", bearer=bearer, headers={"Origin": "https://evil.example"})
    assert foreign.status_code == 403
    ours = await post(protected.url, "tools/list", bearer=bearer, headers={"Origin": "https://app.example.test"})
    assert ours.status_code == 200
    assert ours.headers["access-control-allow-origin"] == "https://app.example.test"
    public = await post(protected.url, "tools/list", bearer=bearer, headers={"Origin": f"https://{PUBLIC_HOST}"})
    assert public.status_code == 200


async def test_the_public_host_name_and_loopback_are_accepted_and_other_hosts_are_not(protected: Any) -> None:
    bearer = token(protected.settings.resource)
    public = await post(protected.url, "tools/list", bearer=bearer, headers={"Host": PUBLIC_HOST})
    assert public.status_code == 200, public.text
    assert len(public.json()["result"]["tools"]) == 4
    rebound = await post(protected.url, "tools/list", bearer=bearer, headers={"Host": "attacker.example"})
    assert rebound.status_code == 421


async def test_a_cors_preflight_from_an_allowed_origin_is_answered(protected: Any) -> None:
    preflight = {"Origin": "https://app.example.test", "Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "authorization, content-type, mcp-protocol-version, mcp-method"}
    async with httpx2.AsyncClient() as http:
        allowed = await http.options(protected.url, headers=preflight)
        foreign = await http.options(protected.url, headers={**preflight, "Origin": "https://evil.example"})
        unauthorized = await http.post(protected.url, json={}, headers={"Origin": "https://app.example.test",
                                                                        "Content-Type": "application/json"})
    assert allowed.status_code == 200
    assert allowed.headers["access-control-allow-origin"] == "https://app.example.test"
    allowed_headers = allowed.headers["access-control-allow-headers"].lower()
    assert all(h in allowed_headers for h in ("authorization", "mcp-protocol-version", "mcp-method"))
    assert foreign.status_code == 400 and "access-control-allow-origin" not in foreign.headers
    # a browser client can read the challenge
    assert unauthorized.status_code == 401
    assert "www-authenticate" in unauthorized.headers["access-control-expose-headers"].lower()


async def test_healthz_answers_without_auth(protected: Any) -> None:
    async with httpx2.AsyncClient() as http:
        answer = await http.get(protected.base + "/healthz")
    assert answer.status_code == 200
    assert answer.json() == {"status": "ok", "server_id": protected.settings.server_id,
                             "tools": ["get_user", "create_note", "add", "list"]}


async def test_the_clients_token_never_reaches_upstream(stack: Any, jwks: Any) -> None:
    api = RecordingUpstream()
    async with serving(api.app()) as upstream_url:
        sid = server_id()
        async with runner(settings_for(stack, sid), sample_artifact(upstream_url)) as running:
            bearer = token(running.settings.resource)
            async with mcp_client(running.url, bearer) as client:
                got = await client.call_tool("get_user", {"user-id": "7"})
    assert not got.is_error, got
    assert json.loads(got.content[0].text) == {"id": "7", "name": "Ada"}  # type: ignore[union-attr]
    [headers] = api.requests
    assert headers["authorization"] == f"Bearer {SECRET_VALUE}"
    assert not any(bearer in value or bearer.split(".")[2] in value for value in headers.values())


async def test_mcp_endpoint_path_is_the_one_the_platform_forwards_to(protected: Any) -> None:
    assert protected.url.endswith(MCP_PATH)
    async with httpx2.AsyncClient() as http:
        elsewhere = await http.post(protected.base + "/servers/x/mcp", json={})
    assert elsewhere.status_code == 404


async def test_without_a_bus_the_jwks_is_fetched_over_http() -> None:
    documents = {"/oauth/jwks.json": (json.dumps({"keys": [KEY.as_dict(private=False)]}).encode(), {})}
    app = document_server(documents)
    async with serve_asgi(app) as base:
        sid = server_id()
        async with runner(settings_for(None, sid, jwks_url=base + "/oauth/jwks.json")) as running:
            assert running.runtime.bus is None
            answer = await post(running.url, "tools/list", bearer=token(running.settings.resource))
    assert answer.status_code == 200 and app.hits["/oauth/jwks.json"] == 1


def test_the_listening_socket_says_tcp_so_asyncio_turns_nagle_off() -> None:
    # with proto 0 asyncio leaves Nagle on, and every answer waited ~40 ms for the client's delayed ACK
    sock = bind("127.0.0.1", 0)
    try:
        assert sock.proto == socket.IPPROTO_TCP
    finally:
        sock.close()
