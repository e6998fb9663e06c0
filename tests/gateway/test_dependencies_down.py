"""When an actor or the database is down the gateway answers 503 problems (with `Retry-After`) at once, never hangs
or 500s; a build request a registry copy took and died with is sent to another copy, and makes one build."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging

import asyncpg
from nats.aio.client import Client
from nats.aio.msg import Msg

from actors.catalog import create_actor
from actors.planner.build_registry import BuildRegistryState, submit_build
from actors.runtime.actor import Context
from actors.runtime.bus import call, connect, subscriptions_live
from actors.runtime.codec import decode
from bus_schemas.base import Failed
from bus_schemas.builds import BuildAccepted, SubmitBuild
from bus_schemas.identity import ApiKeyCreated
from bus_schemas.registry import SUBMIT_BUILD
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


async def test_a_build_request_whose_registry_copy_dies_after_recording_is_answered_by_another_copy_once(
    stack: Stack, auth_actor: None, module_admin: Client, db: asyncpg.Connection
) -> None:
    key: ApiKeyCreated = await new_api_key(module_admin, "gateway-tests-dying-registry")
    org = key.org_id
    second_copy_ready = asyncio.Event()
    recorded: list[str] = []
    dying = await connect(stack.settings("planner"), "test-dying-registry-copy")
    pool = await asyncpg.create_pool(stack.database_url, min_size=1, max_size=2)

    async def record_then_die(msg: Msg) -> None:
        # The build registry's own handler records the build and publishes `requested`; then this copy dies
        # (its connection closes, as a SIGKILL's would) before it answers.
        ctx = Context(actor="planner", nc=dying, js=dying.jetstream(), db=pool, log=logging.getLogger("dying"))
        accepted = await submit_build(decode(SubmitBuild, msg.data), ctx, BuildRegistryState())
        assert isinstance(accepted, BuildAccepted)
        recorded.append(accepted.build_id)
        await second_copy_ready.wait()
        await dying.close()

    try:
        await dying.subscribe(SUBMIT_BUILD.subject, queue="planner", cb=record_then_die)
        await subscriptions_live(dying)
        async with serving_with_client(gateway_settings(stack, rpc_timeout=15.0), timeout=30) as (_, http):
            submitted = asyncio.create_task(http.post("/v1/builds", json=PLAIN, headers=bearer(key)))
            await eventually(lambda: _settled(recorded))
            async with running(create_actor("planner"), stack.settings("planner")):
                second_copy_ready.set()
                response = await submitted
        assert response.status_code == 202, response.text
        assert response.json()["build_id"] == recorded[0]
        builds = await db.fetch("SELECT build_id FROM builds WHERE org_id = $1", org)
        assert [b["build_id"] for b in builds] == recorded
    finally:
        await pool.close()
        if not dying.is_closed:
            await dying.close()


async def test_a_503_to_a_build_request_means_no_build_was_recorded(
    stack: Stack, auth_actor: None, module_admin: Client, db: asyncpg.Connection
) -> None:
    key: ApiKeyCreated = await new_api_key(module_admin, "gateway-tests-503-no-build")
    async with serving_with_client(gateway_settings(stack)) as (_, http):
        response = await http.post("/v1/builds", json=PLAIN, headers=bearer(key))
        assert response.status_code == 503, response.text
        assert int(response.headers["retry-after"]) >= 1
        assert await db.fetchval("SELECT count(*) FROM builds WHERE org_id = $1", key.org_id) == 0
        async with running(create_actor("planner"), stack.settings("planner")):
            again = await http.post("/v1/builds", json=PLAIN, headers=bearer(key))
    assert again.status_code == 202, again.text
    assert await db.fetchval("SELECT count(*) FROM builds WHERE org_id = $1", key.org_id) == 1


async def _past(moment: dt.datetime) -> bool:
    return dt.datetime.now(dt.UTC) > moment


async def _settled(values: list[str]) -> bool:
    return bool(values)


async def test_a_build_request_taken_by_a_frozen_registry_copy_is_504_naming_the_build_and_never_recorded_late(
    stack: Stack, auth_actor: None, module_admin: Client, db: asyncpg.Connection
) -> None:
    key: ApiKeyCreated = await new_api_key(module_admin, "gateway-tests-frozen-registry")
    taken: list[bytes] = []
    frozen = await connect(stack.settings("planner"), "test-frozen-registry-copy")

    async def hold(msg: Msg) -> None:
        taken.append(msg.data)  # and never answer, as a copy frozen (SIGSTOP) with the request would

    try:
        await frozen.subscribe(SUBMIT_BUILD.subject, queue="planner", cb=hold)
        await subscriptions_live(frozen)
        async with serving_with_client(gateway_settings(stack, rpc_timeout=1.5)) as (_, http):
            response = await http.post("/v1/builds", json=PLAIN, headers=bearer(key))
        assert response.status_code == 504, response.text
        build_id = response.json()["build_id"]
        assert len(taken) >= 2  # the request was sent again (to the only copy, which took it again)
        await frozen.close()
        held = decode(SubmitBuild, taken[0])
        assert held.request_id == build_id and held.accept_by is not None
        accept_by = dt.datetime.fromisoformat(held.accept_by)
        await eventually(lambda: _past(accept_by), timeout=60)
        # The copy thaws and records what it holds: too late, nothing is recorded.
        async with running(create_actor("planner"), stack.settings("planner")):
            late = await call(module_admin, SUBMIT_BUILD, decode(SubmitBuild, taken[0]), timeout=10)
        assert isinstance(late, Failed) and late.code == "unavailable" and "deadline" in late.detail
        assert await db.fetchval("SELECT count(*) FROM builds WHERE build_id = $1", build_id) == 0
    finally:
        if not frozen.is_closed:
            await frozen.close()
