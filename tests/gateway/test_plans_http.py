"""POST /v1/plans: a source previewed through the gateway and the planner actor, exactly as a build would plan it,
with nothing built; every refusal a problem document."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from nats.aio.client import Client

from actors.catalog import create_actor
from actors.planner.planning import tool_list
from actors.planner.preview import PREVIEWS_PER_MINUTE
from bus_schemas.builds import BuildPlanned
from bus_schemas.identity import ApiKeyCreated
from bus_schemas.registry import BUILDS, PLANS
from gateway.plans import MAX_PREVIEW_BODY
from tests.conftest import Stack, running
from tests.gateway.conftest import assert_problem, bearer, new_api_key
from tests.support.builds import build_events
from tests.support.fake_anthropic import MessagesApi, messages_server
from tests.support.planning_helpers import DANGLING, PETSTORE, read_plan

JOKES_PLAN: dict[str, Any] = {
    "tools": [
        {
            "name": "get_joke", "title": "Get a joke", "description": "A random joke about a topic.",
            "input_schema": {"type": "object", "properties": {"topic": {"type": "string"}}, "required": ["topic"]},
            "read_only": True,
            "implementation": {
                "kind": "http", "method": "GET", "base_url": "https://jokes.example", "path": "/jokes/{topic}",
                "path_params": ["topic"], "auth": "bearer", "auth_secret": "JOKES_TOKEN",
            },
        },
        {
            "name": "rate_joke", "title": "Rate a joke", "description": "How funny a joke is, from its length.",
            "input_schema": {"type": "object", "properties": {"joke": {"type": "string"}}},
            "read_only": True,
            "implementation": {"kind": "function", "body": "return min(10, len(joke or '') // 10)"},
        },
    ],
    "secrets": [{"name": "JOKES_TOKEN", "description": "API token of jokes.example"}],
}
"""What the fake Claude answers for plain words."""


@pytest.fixture(scope="module")
async def claude() -> AsyncIterator[tuple[MessagesApi, str]]:
    async with messages_server() as served:
        yield served


@pytest.fixture(scope="module")
async def planner_actor(stack: Stack, claude: tuple[MessagesApi, str]) -> AsyncIterator[None]:
    """The gateway's planner, with Claude at the fake Messages API the planner's own tests use (this overrides the
    conftest's planner, which has no key)."""
    _, url = claude
    settings = stack.settings("planner", anthropic_api_key="sk-test-key", anthropic_base_url=url,
                              anthropic_model="claude-test-model")
    async with running(create_actor("planner"), settings):
        yield


def petstore(**choice: Any) -> dict[str, Any]:
    return {"name": "petstore", "source": {"kind": "openapi", "document": PETSTORE, **choice}}


async def test_a_preview_shows_the_tools_a_build_of_the_same_document_serves(
    http: httpx.AsyncClient, key: ApiKeyCreated, module_admin: Client
) -> None:
    response = await http.post("/v1/plans", json=petstore(), headers=bearer(key))
    assert response.status_code == 200, response.text
    preview = response.json()
    assert "type" not in preview  # the bus envelope stays on the bus

    built = await http.post("/v1/builds", json=petstore(), headers=bearer(key))
    assert built.status_code == 202, built.text
    events = await build_events(module_admin.jetstream(), key.org_id, built.json()["build_id"], until=BuildPlanned)
    planned = events[-1].event
    assert isinstance(planned, BuildPlanned), events
    plan = await read_plan(module_admin, planned.plan_hash)

    assert preview["tools"] == tool_list(plan)  # names, titles, descriptions, schemas, annotations
    assert len(preview["tools"]) == 19
    assert preview["tool_list_tokens"] == plan.tool_list_tokens
    assert preview["flags"] == [{"kind": f.kind, "detail": f.detail} for f in plan.flags]
    assert preview["upstream_hosts"] == ["petstore3.swagger.io"] == list(plan.upstream_hosts)
    assert [s["name"] for s in preview["secrets"]] == [s.name for s in plan.secrets]
    assert preview["planned_from"] == "openapi" and preview["server_name"] == "petstore"
    get_pet = next(t for t in preview["tools"] if t["name"] == "get_pet_by_id")
    assert get_pet["annotations"] == {"title": get_pet["title"], "readOnlyHint": True, "openWorldHint": True}
    assert any(n["message"].endswith("found 19 operations") for n in preview["notes"])


async def test_operations_and_tags_choose_the_tools(http: httpx.AsyncClient, key: ApiKeyCreated) -> None:
    chosen = petstore(operations=["getPetById", "DELETE /pet/{petId}"], tags=["user"])
    response = await http.post("/v1/plans", json=chosen, headers=bearer(key))
    assert response.status_code == 200, response.text
    names = [t["name"] for t in response.json()["tools"]]
    assert names == ["get_pet_by_id", "delete_pet", "create_user", "create_users_with_list_input", "login_user",
                     "logout_user", "get_user_by_name", "update_user", "delete_user"]

    nothing = await http.post("/v1/plans", json=petstore(tags=["nope"]), headers=bearer(key))
    assert "tags: 'nope'" in str(assert_problem(nothing, 422)["detail"])


async def test_a_document_that_cannot_be_planned_is_422_naming_where(
    http: httpx.AsyncClient, key: ApiKeyCreated
) -> None:
    body = {"source": {"kind": "openapi", "document": DANGLING}}
    problem = assert_problem(await http.post("/v1/plans", json=body, headers=bearer(key)), 422)
    assert problem["code"] == "invalid" and problem["type"] == "/problems/invalid"
    assert problem["detail"] == ("OpenAPI document: paths./pets/{id}.get.parameters[0]: $ref "
                                 "'#/components/parameters/Nope' does not resolve")

    not_yaml = {"source": {"kind": "openapi", "document": "openapi: 3.0.0\npaths:\n  /x: [unclosed\n"}}
    problem = assert_problem(await http.post("/v1/plans", json=not_yaml, headers=bearer(key)), 422)
    assert "invalid YAML at line 4, column 1" in str(problem["detail"])


async def test_a_url_is_fetched_under_the_egress_rules_of_builds(http: httpx.AsyncClient, key: ApiKeyCreated) -> None:
    body = {"source": {"kind": "openapi", "url": "https://127.0.0.1/openapi.yaml"}}
    problem = assert_problem(await http.post("/v1/plans", json=body, headers=bearer(key)), 422)
    assert "non-public address" in str(problem["detail"]), problem


async def test_plain_words_are_previewed_through_claude(
    http: httpx.AsyncClient, key: ApiKeyCreated, claude: tuple[MessagesApi, str]
) -> None:
    api, _ = claude
    api.requests.clear()
    api.answers[:] = [JOKES_PLAN]
    body = {"name": "jokes", "source": {"kind": "plain_words", "text": "A server that tells jokes about a topic."}}
    response = await http.post("/v1/plans", json=body, headers=bearer(key))
    assert response.status_code == 200, response.text
    preview = response.json()
    assert preview["planned_from"] == "plain_words" and preview["server_name"] == "jokes"
    assert [t["name"] for t in preview["tools"]] == ["get_joke", "rate_joke"]
    assert preview["tools"][0]["inputSchema"] == JOKES_PLAN["tools"][0]["input_schema"]
    assert preview["tools"][1]["annotations"] == {"title": "Rate a joke", "readOnlyHint": True, "openWorldHint": False}
    assert preview["upstream_hosts"] == ["jokes.example"]
    assert preview["secrets"] == [{"name": "JOKES_TOKEN", "description": "API token of jokes.example"}]
    assert preview["model_input_tokens"] > 0 and preview["model_output_tokens"] == 200
    assert len(api.requests) == 1 and "tells jokes" in str(api.requests[0]["body"]["messages"])


async def test_a_preview_builds_stores_and_counts_nothing(
    http: httpx.AsyncClient, module_admin: Client
) -> None:
    fresh = await new_api_key(module_admin, "plans-tests-nothing-built")
    js = module_admin.jetstream()
    plans_before = (await js.stream_info(f"OBJ_{PLANS.name}")).state.messages
    response = await http.post("/v1/plans", json=petstore(tags=["store"]), headers=bearer(fresh))
    assert response.status_code == 200, response.text
    assert len(response.json()["tools"]) == 4
    # no event of the organisation: no build was requested (so none counts against its quota), no server made
    events = await js.stream_info(BUILDS.name, subjects_filter=f"builds.{fresh.org_id}.>")
    assert not events.state.subjects
    assert (await js.stream_info(f"OBJ_{PLANS.name}")).state.messages == plans_before
    servers = await http.get("/v1/servers", headers=bearer(fresh))
    assert servers.status_code in (200, 503), servers.text  # 503: no deployer runs in these tests
    if servers.status_code == 200:
        assert servers.json()["servers"] == []


async def test_a_preview_takes_no_secrets_nor_unknown_fields(http: httpx.AsyncClient, key: ApiKeyCreated) -> None:
    body = {**petstore(), "secrets": {"API_KEY": "do-not-send-me"}}
    problem = assert_problem(await http.post("/v1/plans", json=body, headers=bearer(key)), 400)
    assert problem["errors"] == [{"field": "secrets", "source": "body", "message": "unknown field"}]
    body = {"source": {"kind": "openapi", "document": PETSTORE, "tag": ["pet"]}}
    problem = assert_problem(await http.post("/v1/plans", json=body, headers=bearer(key)), 400)
    assert problem["errors"][0]["field"] == "source.tag"


async def test_a_preview_needs_a_credential(http: httpx.AsyncClient) -> None:
    for headers in ({}, {"Authorization": "Bearer bmms_0000000000000000_nope"}):
        response = await http.post("/v1/plans", json=petstore(), headers=headers)
        problem = assert_problem(response, 401)
        assert problem["code"] == "unauthenticated" and response.headers["www-authenticate"].startswith("Bearer")


async def test_an_oversized_body_is_413(http: httpx.AsyncClient, key: ApiKeyCreated) -> None:
    filler = "#" * MAX_PREVIEW_BODY
    body = {"source": {"kind": "openapi", "document": f"{filler}\n{PETSTORE}"}}
    response = await http.post("/v1/plans", json=body, headers=bearer(key))
    assert_problem(response, 413)


async def test_previews_over_an_organisations_minute_are_429_with_retry_after(
    http: httpx.AsyncClient, module_admin: Client
) -> None:
    busy = await new_api_key(module_admin, "plans-tests-busy")
    spec = {"source": {"kind": "tool_spec", "tools": [
        {"name": "add", "description": "Add two numbers.", "implementation": {"kind": "function", "body": "return 1"}},
    ]}}
    for _ in range(PREVIEWS_PER_MINUTE):
        response = await http.post("/v1/plans", json=spec, headers=bearer(busy))
        assert response.status_code == 200, response.text
    response = await http.post("/v1/plans", json=spec, headers=bearer(busy))
    problem = assert_problem(response, 429)
    assert problem["code"] == "rate_limited" and f"over {PREVIEWS_PER_MINUTE} plan previews a minute" in str(
        problem["detail"])
    assert 1 <= int(response.headers["retry-after"]) <= 60
