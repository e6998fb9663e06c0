"""The HTTP edge: submitting and reading builds, authentication, problem documents, trace ids."""

from __future__ import annotations

import httpx
from nats.aio.client import Client

from actors.runtime.actor import utc_now
from actors.runtime.bus import publish_event
from actors.runtime.logs import new_trace_id
from bus_schemas.builds import BuildDeployed
from bus_schemas.identity import ApiKeyCreated
from bus_schemas.registry import build_subject
from tests.conftest import eventually
from tests.gateway.conftest import PLAIN, Gateway, assert_problem, bearer
from tests.gateway.test_stream import failed_build


async def test_submitted_build_is_accepted_and_readable_by_its_organisation_only(
    http: httpx.AsyncClient, key: ApiKeyCreated, other_key: ApiKeyCreated
) -> None:
    response = await http.post("/v1/builds", json=PLAIN, headers=bearer(key))
    assert response.status_code == 202, response.text
    created = response.json()
    build_id = created["build_id"]
    assert created["status"] == "requested"
    assert created["links"] == {"self": f"/v1/builds/{build_id}", "stream": f"/v1/builds/{build_id}/stream"}
    assert response.headers["location"] == f"/v1/builds/{build_id}"

    async def settled() -> dict[str, object] | None:
        read = await http.get(f"/v1/builds/{build_id}", headers=bearer(key))
        assert read.status_code == 200, read.text
        summary: dict[str, object] = read.json()
        return summary if summary["status"] == "failed" else None

    summary = await eventually(settled)
    assert isinstance(summary, dict)
    assert summary["name"] == "weather" and summary["build_id"] == build_id
    assert "type" not in summary  # the bus envelope stays on the bus

    stranger = await http.get(f"/v1/builds/{build_id}", headers=bearer(other_key))
    body = assert_problem(stranger, 404)
    assert body["code"] == "not_found"


async def test_same_idempotency_key_returns_the_same_build(http: httpx.AsyncClient, key: ApiKeyCreated) -> None:
    headers = {**bearer(key), "Idempotency-Key": f"k-{new_trace_id()}"}
    first = await http.post("/v1/builds", json=PLAIN, headers=headers)
    second = await http.post("/v1/builds", json=PLAIN, headers=headers)
    assert first.status_code == second.status_code == 202
    assert first.json()["build_id"] == second.json()["build_id"]


async def test_missing_or_invalid_bearer_is_401_with_www_authenticate(http: httpx.AsyncClient) -> None:
    for headers in ({}, {"Authorization": "Bearer bmms_0000000000000000_nope"}, {"Authorization": "Basic eDp5"}):
        response = await http.post("/v1/builds", json=PLAIN, headers=headers)
        body = assert_problem(response, 401)
        assert response.headers["www-authenticate"].startswith("Bearer")
        assert body["code"] == "unauthenticated"
        read = await http.get("/v1/builds/b1", headers=headers)
        assert_problem(read, 401)


async def test_malformed_json_is_400_saying_where(http: httpx.AsyncClient, key: ApiKeyCreated) -> None:
    response = await http.post(
        "/v1/builds", content=b'{"name": "x", "source": ', headers={**bearer(key), "Content-Type": "application/json"}
    )
    body = assert_problem(response, 400)
    assert "not valid JSON" in str(body["detail"])
    # the same problem type and code as every other refused input, so clients branch on one field
    assert body["code"] == "invalid" and body["type"] == "/problems/invalid"
    assert body["errors"] == [{"field": "$", "source": "body", "message": "Input data was truncated"}]

    garbled = await http.post("/v1/builds", content=b'{"name": x}',
                              headers={**bearer(key), "Content-Type": "application/json"})
    assert "invalid character (byte 9)" in str(assert_problem(garbled, 400)["detail"])


async def test_invalid_body_is_400_naming_the_field(http: httpx.AsyncClient, key: ApiKeyCreated) -> None:
    bad_text = {"name": "x", "source": {"kind": "plain_words", "text": ""}}
    body = assert_problem(await http.post("/v1/builds", json=bad_text, headers=bearer(key)), 400)
    assert "source.text" in str(body["detail"])
    assert body["errors"] == [{"field": "source.text", "source": "body", "message": "Expected `str` of length >= 1"}]

    wrong_type = {"name": 7, "source": {"kind": "plain_words", "text": "x"}}
    body = assert_problem(await http.post("/v1/builds", json=wrong_type, headers=bearer(key)), 400)
    assert [e["field"] for e in body["errors"]] == ["name"]  # type: ignore[attr-defined,index]

    unknown_kind = {"name": "x", "source": {"kind": "telepathy"}}
    body = assert_problem(await http.post("/v1/builds", json=unknown_kind, headers=bearer(key)), 400)
    assert [e["field"] for e in body["errors"]] == ["source.kind"]  # type: ignore[attr-defined,index]

    # a missing field is named itself, not the object it is missing from
    no_source = {"name": "x"}
    body = assert_problem(await http.post("/v1/builds", json=no_source, headers=bearer(key)), 400)
    assert body["detail"] == "invalid body field `source`: Object missing required field `source`"
    assert [e["field"] for e in body["errors"]] == ["source"]  # type: ignore[attr-defined,index]
    no_kind = {"name": "x", "source": {"text": "a"}}
    body = assert_problem(await http.post("/v1/builds", json=no_kind, headers=bearer(key)), 400)
    assert [e["field"] for e in body["errors"]] == ["source.kind"]  # type: ignore[attr-defined,index]

    not_an_object = [PLAIN]
    body = assert_problem(await http.post("/v1/builds", json=not_an_object, headers=bearer(key)), 400)
    assert body["detail"] == "invalid body: Expected `object`, got `array`"

    extra_field = {**PLAIN, "colour": "blue"}
    body = assert_problem(await http.post("/v1/builds", json=extra_field, headers=bearer(key)), 400)
    assert "colour" in str(body["detail"])


async def test_a_body_that_is_not_json_is_refused_plainly(http: httpx.AsyncClient, key: ApiKeyCreated) -> None:
    response = await http.post("/v1/builds", data={"name": "x"}, headers=bearer(key))
    body = assert_problem(response, 415)
    assert "application/json" in str(body["detail"])


async def test_trace_id_of_traceparent_is_returned_and_in_problems(
    http: httpx.AsyncClient, key: ApiKeyCreated
) -> None:
    trace_id = new_trace_id()
    traceparent = f"00-{trace_id}-{new_trace_id()[:16]}-01"
    ok = await http.post("/v1/builds", json=PLAIN, headers={**bearer(key), "traceparent": traceparent})
    assert ok.status_code == 202
    assert ok.headers["x-trace-id"] == trace_id

    missing = await http.get("/v1/builds/nope", headers={**bearer(key), "traceparent": traceparent})
    body = assert_problem(missing, 404)
    assert body["trace_id"] == trace_id

    unrouted = await http.get("/no/such/route", headers={"traceparent": traceparent})
    assert assert_problem(unrouted, 404)["trace_id"] == trace_id

    fresh = await http.get("/healthz")
    assert len(fresh.headers["x-trace-id"]) == 32 and fresh.headers["x-trace-id"] != trace_id


async def test_health_ready_and_openapi(http: httpx.AsyncClient, gateway: Gateway) -> None:
    assert (await http.get("/healthz")).json() == {"status": "ok"}
    ready = await http.get("/readyz")
    assert ready.status_code == 200, ready.text
    assert ready.json()["checks"] == {"bus": "ok", "database": "ok"}
    schema = await http.get("/schema/openapi.json")
    assert schema.status_code == 200
    assert "/v1/builds" in schema.json()["paths"]


async def test_repeated_requests_reuse_the_resolved_key(
    http: httpx.AsyncClient, key: ApiKeyCreated, gateway: Gateway
) -> None:
    await http.get("/v1/builds/whatever", headers=bearer(key))
    cache = gateway.services.authenticator._cache
    size = len(cache)
    await http.get("/v1/builds/whatever", headers=bearer(key))
    assert len(cache) == size and size >= 1


async def test_a_deployed_build_carries_its_server_id_and_url(
    http: httpx.AsyncClient, key: ApiKeyCreated, module_admin: Client
) -> None:
    build_id = await failed_build(http, key)
    # The deployer's event, as it publishes it once the server answers (the test planner fails every build first;
    # the newer milestone wins).
    deployed = BuildDeployed(build_id=build_id, org_id=key.org_id, at=utc_now(), url="http://127.0.0.1:1/servers/s1/mcp",
                             server_id="s" + build_id[1:], version=1, backend="process", isolation="none")
    await publish_event(module_admin.jetstream(), build_subject(key.org_id, build_id, "deployed"), deployed,
                        msg_id=f"{build_id}:deployed")

    async def deployed_view() -> dict[str, object] | None:
        read = await http.get(f"/v1/builds/{build_id}", headers=bearer(key))
        assert read.status_code == 200, read.text
        view: dict[str, object] = read.json()
        return view if view["status"] == "deployed" else None

    view = await eventually(deployed_view)
    assert isinstance(view, dict)
    assert view["server_id"] == deployed.server_id and view["url"] == deployed.url
