"""Bad input at the HTTP edge is the client's error: a specific 4xx problem document naming what is wrong,
never a 500 or a 503 that blames the platform, and nothing of it reaches the bus."""

from __future__ import annotations

import httpx

from bus_schemas.identity import ApiKeyCreated
from tests.gateway.conftest import PLAIN, assert_problem, bearer

JSON = {"Content-Type": "application/json"}


def nested(depth: int) -> bytes:
    """A JSON document nested `depth` arrays deep inside a build's name."""
    return b'{"name": ' + b"[" * depth + b"]" * depth + b', "source": {"kind": "plain_words", "text": "x"}}'


async def test_deeply_nested_json_is_a_400_naming_the_nesting(http: httpx.AsyncClient, key: ApiKeyCreated) -> None:
    response = await http.post("/v1/builds", content=nested(100_000), headers={**bearer(key), **JSON})
    body = assert_problem(response, 400)
    assert body["code"] == "invalid" and "nests too deeply" in str(body["detail"])
    registered = await http.post("/oauth/register", content=b"[" * 100_000 + b"]" * 100_000, headers=JSON)
    assert registered.status_code == 400, registered.text  # RFC 7591's error, not a crash
    assert registered.json()["error"] == "invalid_client_metadata"


async def test_a_body_that_is_not_utf8_is_a_400(http: httpx.AsyncClient, key: ApiKeyCreated) -> None:
    not_utf8 = b'{"name": "caf\xe9", "source": {"kind": "plain_words", "text": "x"}}'
    body = assert_problem(await http.post("/v1/builds", content=not_utf8, headers={**bearer(key), **JSON}), 400)
    assert "UTF-8" in str(body["detail"])
    link = await http.post("/v1/auth/magic-link", content=b'{"email": "\xff\xfe@example.com"}', headers=JSON)
    assert "UTF-8" in str(assert_problem(link, 400)["detail"])


async def test_an_unknown_field_at_any_depth_is_a_400_naming_it(http: httpx.AsyncClient, key: ApiKeyCreated) -> None:
    # `spec` where the OpenAPI source takes `document`: refused at once, not failed later in the pipeline
    misspelt = {"name": "petstore", "source": {"kind": "openapi", "spec": "openapi: 3.0.0"}}
    body = assert_problem(await http.post("/v1/builds", json=misspelt, headers=bearer(key)), 400)
    assert body["errors"] == [{"field": "source.spec", "source": "body", "message": "unknown field"}]
    deep = {"name": "t", "source": {"kind": "tool_spec", "tools": [
        {"name": "add", "description": "adds", "implementation": {"kind": "function", "body": "return 1",
                                                                   "timeout": 3}}]}}
    body = assert_problem(await http.post("/v1/builds", json=deep, headers=bearer(key)), 400)
    assert body["errors"][0]["field"] == "source.tools[0].implementation.timeout"  # type: ignore[index]
    accepted = await http.post("/v1/builds", json=PLAIN, headers=bearer(key))
    assert accepted.status_code == 202, accepted.text  # the known fields alone still make a build


async def test_numbers_beyond_what_the_platform_counts_are_400(http: httpx.AsyncClient, key: ApiKeyCreated) -> None:
    rollback = await http.post("/v1/servers/s0000000000000000/rollback", json={"version": 2147483648},
                               headers=bearer(key))
    assert assert_problem(rollback, 400)["errors"][0]["field"] == "version"  # type: ignore[index]
    for period in ("0000-01", "9999-12", "1969-12"):
        usage = await http.get("/v1/usage", params={"period": period}, headers=bearer(key))
        assert assert_problem(usage, 400)["errors"][0]["field"] == "period"  # type: ignore[index]
    for after in ("18446744073709551616", "9223372036854775808", "-1"):
        events = await http.get("/v1/events", params={"after": after}, headers=bearer(key))
        assert assert_problem(events, 400)["errors"][0]["field"] == "after", after  # type: ignore[index]
    resumed = await http.get("/v1/events", headers={**bearer(key), "Last-Event-ID": "9999999999999999999"})
    assert_problem(resumed, 400)


async def test_text_with_a_nul_character_is_a_400_naming_where(http: httpx.AsyncClient, key: ApiKeyCreated) -> None:
    # PostgreSQL cannot store U+0000 in text or jsonb: found by the fuzz run as a 500 from the build registry
    document = {"name": "0", "source": {"kind": "openapi", "document": "openapi: 3.0.0\u0000"}}
    body = assert_problem(await http.post("/v1/builds", json=document, headers=bearer(key)), 400)
    assert body["errors"] == [{"field": "source.document", "source": "body", "message": "contains U+0000"}]
    named = assert_problem(await http.post("/v1/builds", json={**PLAIN, "name": "a\u0000b"}, headers=bearer(key)), 400)
    assert "U+0000" in str(named["detail"])
    literal = {**PLAIN, "source": {"kind": "plain_words", "text": "the text \\u0000 is six characters here"}}
    assert (await http.post("/v1/builds", json=literal, headers=bearer(key))).status_code == 202
