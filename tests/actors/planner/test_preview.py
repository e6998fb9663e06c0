"""Plan previews (PREVIEW_PLAN): a source planned by the planner actor exactly as a build of it is planned, with
nothing stored, published or counted, within per-organisation limits."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import pytest
from nats.aio.client import Client

from actors.catalog import create_actor
from actors.planner.handlers import PlannerState
from actors.planner.planning import tool_list
from actors.planner.preview import PreviewLimiter, PreviewState, preview_plan
from actors.runtime.actor import Context
from actors.runtime.bus import call
from bus_schemas.base import Failed
from bus_schemas.builds import (
    BuildSource,
    FunctionBody,
    OpenApiSource,
    PlainWords,
    ToolParameter,
    ToolSpec,
    ToolSpecSource,
)
from bus_schemas.previews import PlanPreview, PlanPreviewed, PreviewPlan
from bus_schemas.registry import BUILDS, PLANS, PREVIEW_PLAN
from tests.conftest import Stack, running
from tests.support.planning_helpers import DANGLING, PETSTORE, new_org, planned


@pytest.fixture(scope="module")
async def planner(stack: Stack) -> AsyncIterator[None]:
    async with running(create_actor("planner"), stack.settings("planner")):
        yield


async def preview(nc: Client, source: BuildSource, org: str | None = None, name: str = "tracker") -> PlanPreview:
    """The planner's preview of `source` (failing the test when it answers a failure)."""
    answer = await call(nc, PREVIEW_PLAN, PreviewPlan(org_id=org or new_org(), requested_by="person:p1", name=name,
                                                      source=source), 30)
    assert isinstance(answer, PlanPreviewed), answer
    return answer.preview


async def refusal(nc: Client, source: BuildSource) -> Failed:
    answer = await call(nc, PREVIEW_PLAN, PreviewPlan(org_id=new_org(), requested_by="person:p1", source=source), 30)
    assert isinstance(answer, Failed), answer
    return answer


def direct(nc: Client) -> Context:
    """A context to call the endpoint's handler with directly (it logs, and reads the bus's payload limit)."""
    return Context(actor="planner", nc=nc, js=nc.jetstream(), db=None, log=logging.getLogger("test"))


async def test_a_preview_is_what_a_build_of_the_same_source_plans(planner: None, admin_nc: Client) -> None:
    source = OpenApiSource(document=PETSTORE)
    shown = await preview(admin_nc, source, name="petstore")
    plan, _ = await planned(admin_nc, source, name="petstore")
    assert list(shown.tools) == tool_list(plan)
    assert shown.tool_list_tokens == plan.tool_list_tokens > 0
    assert shown.flags == plan.flags
    assert (shown.upstream_hosts, shown.secrets) == (plan.upstream_hosts, plan.secrets)
    assert (shown.server_name, shown.planned_from) == ("petstore", "openapi")
    by_name = {t["name"]: t for t in shown.tools}
    assert by_name["get_pet_by_id"]["annotations"] == {
        "title": by_name["get_pet_by_id"]["title"], "readOnlyHint": True, "openWorldHint": True}
    assert by_name["delete_pet"]["annotations"] == {
        "title": by_name["delete_pet"]["title"], "readOnlyHint": False, "destructiveHint": True,
        "openWorldHint": True}
    # planning's own lines, as the build's log has them
    assert shown.notes[0].message.endswith("found 19 operations") and shown.notes[0].level == "info"


async def test_operations_and_tags_choose_the_previewed_tools(planner: None, admin_nc: Client) -> None:
    shown = await preview(admin_nc, OpenApiSource(document=PETSTORE, operations=("getPetById",), tags=("store",)))
    assert [t["name"] for t in shown.tools] == ["get_pet_by_id", "get_inventory", "place_order", "get_order_by_id",
                                               "delete_order"]
    assert any("selected 5 of 19 operations" in n.message for n in shown.notes), shown.notes


async def test_a_source_that_cannot_be_planned_is_invalid_saying_where(planner: None, admin_nc: Client) -> None:
    failed = await refusal(admin_nc, OpenApiSource(document=DANGLING))
    assert failed.code == "invalid"
    assert failed.detail == ("OpenAPI document: paths./pets/{id}.get.parameters[0]: $ref "
                             "'#/components/parameters/Nope' does not resolve")


async def test_a_url_is_fetched_under_the_builds_egress_rules(planner: None, admin_nc: Client) -> None:
    # the planner serves without the dev setting: no http, no loopback, as for a build
    failed = await refusal(admin_nc, OpenApiSource(url="http://127.0.0.1:9/openapi.yaml"))
    assert (failed.code, failed.detail) == ("invalid", "OpenAPI url: http://127.0.0.1:9/openapi.yaml is not an "
                                                       "https URL")


async def test_plain_words_without_a_claude_key_are_invalid_saying_so(planner: None, admin_nc: Client) -> None:
    failed = await refusal(admin_nc, PlainWords(text="tell me jokes"))
    assert failed.code == "invalid" and "key" in failed.detail.lower()


async def test_a_preview_stores_publishes_and_counts_nothing(planner: None, admin_nc: Client) -> None:
    js = admin_nc.jetstream()
    plans_before = (await js.stream_info(f"OBJ_{PLANS.name}")).state.messages
    org = new_org()
    spec = ToolSpecSource(tools=(ToolSpec(name="add", description="Add two numbers.", parameters=(
        ToolParameter(name="a", type="integer"), ToolParameter(name="b", type="integer")),
        implementation=FunctionBody(body="return a + b")),))
    shown = await preview(admin_nc, spec, org=org)
    assert [t["name"] for t in shown.tools] == ["add"] and shown.planned_from == "tool_spec"
    assert (await js.stream_info(f"OBJ_{PLANS.name}")).state.messages == plans_before
    # no event of the organisation at all: no build was requested, so none is counted against its quota either
    builds = await js.stream_info(BUILDS.name, subjects_filter=f"builds.{org}.>")
    assert not builds.state.subjects


async def test_previews_over_an_organisations_limits_are_rate_limited(stack: Stack, admin_nc: Client) -> None:
    now = [1000.0]
    limiter = PreviewLimiter(per_minute=2, clock=lambda: now[0])
    state = PreviewState(PlannerState(settings=stack.settings("planner")), limiter)
    ctx = direct(admin_nc)
    source = OpenApiSource(document=PETSTORE, tags=("store",))

    async def ask(org: str) -> PlanPreviewed | Failed:
        return await preview_plan(PreviewPlan(org_id=org, requested_by="person:p1", source=source), ctx, state)

    assert isinstance(await ask("org1"), PlanPreviewed)
    now[0] += 30
    assert isinstance(await ask("org1"), PlanPreviewed)
    third = await ask("org1")
    assert isinstance(third, Failed) and third.code == "rate_limited" and third.retry_after_seconds == 30
    assert isinstance(await ask("org2"), PlanPreviewed)  # another organisation has its own minute
    now[0] += 30  # the first preview left the minute
    assert isinstance(await ask("org1"), PlanPreviewed)


def test_an_organisation_may_run_only_a_few_previews_at_once() -> None:
    limiter = PreviewLimiter(in_flight_per_org=2, in_flight_total=3, clock=lambda: 0.0)
    assert limiter.take("org1") is None and limiter.take("org1") is None
    busy = limiter.take("org1")
    assert isinstance(busy, Failed) and busy.code == "rate_limited" and "2 plan previews running" in busy.detail
    assert limiter.take("org2") is None
    full = limiter.take("org3")
    assert isinstance(full, Failed) and "busy with other previews" in full.detail
    limiter.give_back("org1")
    assert limiter.take("org3") is None



async def test_a_preview_too_large_for_one_reply_says_to_choose_fewer(stack: Stack, admin_nc: Client) -> None:
    state = PreviewState(PlannerState(settings=stack.settings("planner")), max_reply_bytes=10_000)
    ctx = direct(admin_nc)
    answer = await preview_plan(PreviewPlan(org_id="org1", requested_by="person:p1",
                                            source=OpenApiSource(document=PETSTORE)), ctx, state)
    assert isinstance(answer, Failed) and answer.code == "invalid", answer
    assert answer.detail.startswith("the preview of 19 tools is ") and "choose fewer with `operations`" in answer.detail
    # within the limit, the same source is previewed
    small = await preview_plan(PreviewPlan(org_id="org1", requested_by="person:p1",
                                           source=OpenApiSource(document=PETSTORE, tags=("store",))), ctx, state)
    assert isinstance(small, PlanPreviewed)
