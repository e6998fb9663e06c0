"""When an actor or the database is down the gateway answers 503 problems at once, never hangs or 500s."""

from __future__ import annotations

from nats.aio.client import Client

from actors.catalog import create_actor
from bus_schemas.identity import ApiKeyCreated
from gateway.requester import Requester
from tests.conftest import Stack, eventually, running
from tests.gateway.conftest import bearer, gateway_settings, new_api_key, serving_with_client

PLAIN = {"name": "x", "source": {"kind": "plain_words", "text": "x"}}


async def test_build_request_without_a_planner_is_503_no_responders(
    stack: Stack, auth_actor: None, module_admin: Client
) -> None:
    key: ApiKeyCreated = await new_api_key(module_admin, "gateway-tests-no-planner")
    # A long RPC timeout: the answer must come from "no responders", not from waiting it out.
    settings = gateway_settings(stack, rpc_timeout=30.0)
    async with serving_with_client(settings) as (_, http):
        response = await http.post("/v1/builds", json=PLAIN, headers=bearer(key))
    assert response.status_code == 503, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    assert body["code"] == "unavailable" and "planner" in body["detail"]


async def test_readyz_names_the_database_when_it_is_down(stack: Stack) -> None:
    settings = gateway_settings(stack, database_url="postgresql://nobody@127.0.0.1:9/none")
    async with serving_with_client(settings) as (_, http):
        response = await http.get("/readyz")
        assert (await http.get("/healthz")).status_code == 200
    assert response.status_code == 503, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    assert "database" in body["detail"] and body["checks"]["bus"] == "ok"


async def test_a_build_stays_readable_from_the_read_model_while_the_planner_is_down(
    stack: Stack, auth_actor: None, module_admin: Client
) -> None:
    key: ApiKeyCreated = await new_api_key(module_admin, "gateway-tests-read-model")
    async with serving_with_client(gateway_settings(stack)) as (_, http):
        async with running(create_actor("planner"), stack.settings("planner")):
            accepted = await http.post("/v1/builds", json=PLAIN, headers=bearer(key))
            assert accepted.status_code == 202, accepted.text
            url = f"/v1/builds/{accepted.json()['build_id']}"

            async def settled() -> dict[str, object] | None:
                body: dict[str, object] = (await http.get(url, headers=bearer(key))).json()
                return body if body["status"] == "failed" else None  # no model key: it fails at plan

            seen = await eventually(settled)
        # The build registry is gone; its read model on the bus still answers, with the same summary.
        read = await http.get(url, headers=bearer(key))
        assert read.status_code == 200 and read.json() == seen
        submitted = await http.post("/v1/builds", json=PLAIN, headers=bearer(key))
        assert submitted.status_code == 503


async def test_while_the_requests_connection_is_down_readyz_says_so_and_reads_are_503(
    stack: Stack, auth_actor: None, module_admin: Client
) -> None:
    key: ApiKeyCreated = await new_api_key(module_admin, "gateway-tests-requests-down")
    settings = gateway_settings(stack, rpc_timeout=0.5)
    async with serving_with_client(settings) as (gw, http):
        assert (await http.get("/readyz")).status_code == 200
        requester = gw.services.bus.requester
        assert isinstance(requester, Requester)
        requester.reconnect_wait = 3600.0  # it stays down for the test
        connection = requester._connection
        assert connection is not None and connection.transport is not None
        connection.transport.close()
        await eventually(lambda: _down(requester))
        ready = await http.get("/readyz")
        assert ready.status_code == 503, ready.text
        assert ready.json()["checks"]["bus"] == "requests connection down"
        read = await http.get("/v1/builds/b123", headers=bearer(key))
        assert read.status_code == 503, read.text
        assert "message bus is unavailable" in read.json()["detail"]


async def _down(requester: Requester) -> bool:
    return not requester.is_connected
