"""Submitting builds to a running planner and reading back what a person watching would see."""

from __future__ import annotations

import hashlib
import secrets
from pathlib import Path

from nats.aio.client import Client

from actors.runtime.bus import call
from actors.runtime.codec import decode
from bus_schemas.builds import BuildAccepted, BuildFailed, BuildPlanned, BuildSource, SubmitBuild
from bus_schemas.plans import ToolPlan
from bus_schemas.registry import PLANS, SUBMIT_BUILD
from tests.support.builds import Recorded, build_events

FIXTURES = Path(__file__).parent.parent / "fixtures"

PETSTORE = (FIXTURES / "openapi" / "swagger_petstore.yaml").read_text()
"""A real OpenAPI 3 document (swagger-api's petstore), as the previews and their HTTP tests plan it."""
DANGLING = """
openapi: 3.1.0
info: {title: Pets, version: '1'}
servers: [{url: 'https://pets.example'}]
paths:
  /pets/{id}:
    get:
      parameters:
        - $ref: '#/components/parameters/Nope'
      responses: {'200': {description: ok}}
"""
"""A document whose parameter `$ref` resolves to nothing."""


def new_org() -> str:
    """A fresh organisation id, so tests never see each other's builds."""
    return f"org{secrets.token_hex(4)}"


async def submit(nc: Client, source: BuildSource, org: str | None = None, name: str = "tracker") -> tuple[str, str]:
    """Submit a build; returns (org, build id)."""
    org = org or new_org()
    accepted = await call(nc, SUBMIT_BUILD, SubmitBuild(org_id=org, requested_by="t", name=name, source=source), 5)
    assert isinstance(accepted, BuildAccepted), accepted
    return org, accepted.build_id


async def planned(
    nc: Client, source: BuildSource, name: str = "tracker"
) -> tuple[ToolPlan, list[Recorded]]:
    """Plan a source through the actor; the plan as stored in PLANS and the build's events."""
    org, build = await submit(nc, source, name=name)
    events = await build_events(nc.jetstream(), org, build, until=BuildPlanned)
    last = events[-1][1]
    assert isinstance(last, BuildPlanned), events
    return await read_plan(nc, last.plan_hash), events


async def read_plan(nc: Client, plan_hash: str) -> ToolPlan:
    """The plan object named `plan_hash`, checked to be content-addressed."""
    store = await nc.jetstream().object_store(PLANS.name)
    result = await store.get(plan_hash)
    assert result.data is not None
    assert hashlib.sha256(result.data).hexdigest() == plan_hash
    plan: ToolPlan = decode(ToolPlan, result.data)
    return plan


async def failure(nc: Client, source: BuildSource) -> tuple[BuildFailed, list[Recorded]]:
    """Plan a source that must fail; its `failed` event and the build's events."""
    org, build = await submit(nc, source)
    events = await build_events(nc.jetstream(), org, build, until=BuildPlanned)
    last = events[-1][1]
    assert isinstance(last, BuildFailed), events
    return last, events
