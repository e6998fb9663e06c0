"""GET /v1/usage and GET /v1/quota through the gateway: the caller's organisation's figures only."""

from __future__ import annotations

import asyncpg
import httpx
from nats.aio.client import Client

from actors.catalog import create_actor
from actors.runtime.actor import utc_now
from tests.actors.metering.conftest import counted_calls, new_id, publish_calls, server_changed, tool_call
from tests.conftest import Stack, eventually, running
from tests.gateway.conftest import bearer, gateway_settings, new_api_key, serving


async def test_usage_and_quota_over_http_show_only_the_callers_organisation(
    stack: Stack, admin_nc: Client, db: asyncpg.Connection
) -> None:
    js = admin_nc.jetstream()
    async with running(create_actor("auth"), stack.settings("auth")), \
            running(create_actor("metering"), stack.settings("metering")), \
            serving(gateway_settings(stack)) as gateway:
        key_a = await new_api_key(admin_nc, new_id("usage-a-"))
        key_b = await new_api_key(admin_nc, new_id("usage-b-"))
        server_a = new_id("s")
        await server_changed(js, key_a.org_id, server_a)
        await publish_calls(js, [tool_call(key_a.org_id, server_a, n, tool="search") for n in range(6)])
        await eventually(lambda: _counted(db, key_a.org_id, 6))
        period = utc_now()[:7]
        async with httpx.AsyncClient(base_url=gateway.base_url, timeout=15) as http:
            mine = await http.get("/v1/usage", params={"period": period}, headers=bearer(key_a))
            theirs = await http.get("/v1/usage", params={"period": period}, headers=bearer(key_b))
            theirs_naming_my_server = await http.get("/v1/usage", params={"server": server_a}, headers=bearer(key_b))
            quota = await http.get("/v1/quota", headers=bearer(key_a))
            bad_period = await http.get("/v1/usage", params={"period": "2026-13"}, headers=bearer(key_a))
            anonymous = await http.get("/v1/usage")

    assert mine.status_code == 200, mine.text
    body = mine.json()
    assert body["period"] == period and body["tool_calls"] == 6
    assert [(t["server_id"], t["tool"], t["calls"]) for t in body["by_tool"]] == [(server_a, "search", 6)]
    assert "type" not in body and "org_id" not in body
    for other in (theirs, theirs_naming_my_server):
        assert other.status_code == 200, other.text
        assert other.json()["tool_calls"] == 0 and other.json()["by_tool"] == [] and other.json()["by_server"] == []

    assert quota.status_code == 200, quota.text
    quotas = {q["quota"]: q for q in quota.json()["quotas"]}
    assert quota.json()["plan"] == "default"
    assert quotas["tool_calls_per_month"]["used"] == 6 and quotas["tool_calls_per_month"]["exceeded"] is False
    assert set(quotas) == {"builds_per_month", "tool_calls_per_month", "running_servers"}

    assert bad_period.status_code == 400 and bad_period.headers["content-type"].startswith("application/problem")
    assert anonymous.status_code == 401


async def _counted(db: asyncpg.Connection, org: str, count: int) -> bool:
    return await counted_calls(db, org) == count
