"""OpenTelemetry traces: one build is one trace, from the `POST /v1/builds` span through each actor's handling of
it (the context crossing the bus in `traceparent` headers) to the deploy step, under the platform's trace id."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from nats.aio.client import Client
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from actors.runtime import observability
from bus_schemas.registry import CHECKER_GENERATED, CODEGEN_PLANNED, DEPLOYER_CHECKED, PLANNER_REQUESTED, SUBMIT_BUILD
from tests.conftest import Stack, eventually
from tests.test_metrics import build_platform, deployed_build

CLIENT_TRACEPARENT = "00-{trace}-00f067aa0ba902b7-01"


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """Every span this process records while the test runs, kept in memory."""
    exporter = InMemorySpanExporter()
    provider = observability.new_tracer_provider("test")
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    observability.trace_with(provider)
    try:
        yield exporter
    finally:
        observability.trace_with(None)
        provider.shutdown()


def lineage(span: ReadableSpan, by_id: dict[int, ReadableSpan]) -> list[str]:
    """The names of `span` and its ancestors, up to the first one not among `by_id`."""
    names = []
    current: ReadableSpan | None = span
    while current is not None:
        names.append(current.name)
        parent = current.parent
        current = by_id.get(parent.span_id) if parent is not None else None
    return names


async def test_a_build_is_one_trace_from_its_post_through_every_step_to_deployed(
    stack: Stack, admin_nc: Client, spans: InMemorySpanExporter
) -> None:
    async with build_platform(stack) as http:
        posted = await deployed_build(http, admin_nc, "tracing-org")
        trace_id = int(posted.headers["x-trace-id"], 16)

        async def of_the_build() -> Any:
            found = {s.context.span_id: s for s in spans.get_finished_spans() if s.context.trace_id == trace_id}
            deploy = [s for s in found.values() if s.name == "build step deploy"]
            parents_known = all(s.parent is None or s.parent.span_id in found for s in found.values()
                                if s.name != "POST /v1/builds")
            return found if deploy and parents_known else None

        found: dict[int, ReadableSpan] = await eventually(of_the_build, timeout=30)

    # The trace id is the one the gateway answered in X-Trace-Id (and logs); the POST's span is the root.
    (post,) = [s for s in found.values() if s.name == "POST /v1/builds"]
    assert post.parent is None
    assert all(s.parent is not None for s in found.values() if s is not post)
    # From the deploy step back to the POST, through each actor's handling of the event before, across the bus.
    (deploy,) = [s for s in found.values() if s.name == "build step deploy"]
    assert lineage(deploy, found) == [
        "build step deploy", f"consume {DEPLOYER_CHECKED.durable}",
        "build step check", f"consume {CHECKER_GENERATED.durable}",
        "build step generate", f"consume {CODEGEN_PLANNED.durable}",
        "build step plan", f"consume {PLANNER_REQUESTED.durable}",
        f"rpc {SUBMIT_BUILD.subject}", "POST /v1/builds",
    ]


async def test_an_incoming_traceparent_makes_the_build_part_of_the_callers_trace(
    stack: Stack, admin_nc: Client, spans: InMemorySpanExporter
) -> None:
    trace = "4bf92f3577b34da6a3ce929d0e0e4736"
    async with build_platform(stack) as http:
        posted = await deployed_build(http, admin_nc, "tracing-org-2",
                                      headers={"traceparent": CLIENT_TRACEPARENT.format(trace=trace)})

        async def deploy_step() -> Any:
            return [s for s in spans.get_finished_spans() if s.name == "build step deploy"
                    and s.context.trace_id == int(trace, 16)] or None

        await eventually(deploy_step, timeout=30)
    assert posted.headers["x-trace-id"] == trace
    (post,) = [s for s in spans.get_finished_spans() if s.name == "POST /v1/builds"]
    assert post.parent is not None and post.parent.span_id == 0x00F067AA0BA902B7
