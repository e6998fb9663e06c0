"""While the database is out of reach, authenticated routes answer 503 problems with `Retry-After` (never 500), and
work again once it is back. The auth actor here is the only one: its path to PostgreSQL is what the test cuts."""

from __future__ import annotations

from nats.aio.client import Client

from actors.catalog import create_actor
from bus_schemas.identity import ApiKeyCreated
from tests.conftest import Stack, eventually, running
from tests.gateway.conftest import bearer, gateway_settings, new_api_key, serving_with_client
from tests.support.tcp_proxy import proxied_dsn


async def test_an_authenticated_route_answers_503_with_retry_after_while_the_database_is_down(
    stack: Stack, planner_actor: None, module_admin: Client
) -> None:
    # The auth actor reads API keys from PostgreSQL through a path the test cuts (the server keeps running).
    async with proxied_dsn(stack.database_url) as (dsn, path), running(create_actor("auth"),
                                                                       stack.settings("auth", database_url=dsn)):
        key: ApiKeyCreated = await new_api_key(module_admin, "gateway-tests-database-down")
        async with serving_with_client(gateway_settings(stack)) as (_, http):
            path.cut()
            down = await http.get("/v1/builds/b123", headers=bearer(key))
            assert down.status_code == 503, down.text
            assert down.headers["content-type"].startswith("application/problem+json")
            assert int(down.headers["retry-after"]) >= 1
            assert down.json()["code"] == "unavailable" and "database" in down.json()["detail"]
            path.mend()

            async def answered() -> int | None:
                status = (await http.get("/v1/builds/b123", headers=bearer(key))).status_code
                return status if status != 503 else None

            assert await eventually(answered) == 404  # the same key works again once the database is back
