"""Prometheus metrics: the gateway's `/metrics` (only with BMMS_METRICS=true) counts requests and times a build's
steps; an actor's listener on BMMS_METRICS_PORT serves its consumers' lag as JetStream counts it."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import httpx
import msgspec
from nats.aio.client import Client
from prometheus_client.parser import text_string_to_metric_families

from actors.catalog import create_actor
from actors.runtime.actor import Actor
from actors.runtime.logs import new_trace_id
from bus_schemas.registry import CODEGEN_PLANNED, build_subject
from tests.actors.test_pipeline import CALCULATOR, pipeline
from tests.conftest import Stack, eventually, running
from tests.gateway.conftest import bearer, gateway_settings, new_api_key, serving


@contextlib.asynccontextmanager
async def build_platform(stack: Stack, **gateway: object) -> AsyncIterator[httpx.AsyncClient]:
    """Every actor a build needs in this process, and a gateway with `gateway` settings; a client on it."""
    async with (
        running(create_actor("auth"), stack.settings("auth")),
        pipeline(stack),
        serving(gateway_settings(stack, **gateway)) as gw,
        httpx.AsyncClient(base_url=gw.base_url, timeout=15) as http,
    ):
        yield http


async def deployed_build(http: httpx.AsyncClient, admin_nc: Client, org: str,
                         headers: dict[str, str] | None = None) -> httpx.Response:
    """Submit the calculator through `POST /v1/builds` and wait until it is deployed; the POST's response."""
    auth = bearer(await new_api_key(admin_nc, org))
    body = {"name": "calculator", "source": msgspec.to_builtins(CALCULATOR)}
    posted = await http.post("/v1/builds", json=body, headers={**auth, **(headers or {})})
    assert posted.status_code == 202, posted.text

    async def settled() -> Any:
        summary = (await http.get(f"/v1/builds/{posted.json()['build_id']}", headers=auth)).json()
        return summary if summary["status"] in ("deployed", "failed") else None

    summary = await eventually(settled, timeout=90)
    assert summary["status"] == "deployed", summary
    return posted


def samples(text: str, name: str) -> dict[frozenset[tuple[str, str]], float]:
    """The samples of metric `name` in a Prometheus text exposition, by label set."""
    found: dict[frozenset[tuple[str, str]], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                found[frozenset(sample.labels.items())] = sample.value
    return found


async def test_gateway_metrics_count_requests_and_time_each_step_of_a_build(stack: Stack, admin_nc: Client) -> None:
    async with build_platform(stack, metrics=True) as http:
        await deployed_build(http, admin_nc, "metrics-org")
        scraped = await http.get("/metrics")
    assert scraped.status_code == 200, scraped.text
    assert scraped.headers["content-type"].startswith("text/plain")
    requests = samples(scraped.text, "bmms_http_requests_total")
    assert requests[frozenset({("route", "/v1/builds"), ("method", "POST"), ("status", "202")})] >= 1
    assert any(("route", "/v1/builds/{build_id}") in labels for labels in requests), requests
    steps = samples(scraped.text, "bmms_build_step_duration_seconds_count")
    for step in ("plan", "generate", "check", "deploy"):
        assert steps.get(frozenset({("step", step), ("outcome", "ok")}), 0) >= 1, (step, steps)
    rpcs = samples(scraped.text, "bmms_rpc_duration_seconds_count")
    assert any(("actor", "planner") in labels and ("outcome", "ok") in labels for labels in rpcs), rpcs


async def test_gateway_without_metrics_has_no_metrics_route(stack: Stack) -> None:
    async with (
        serving(gateway_settings(stack, metrics=False)) as gw,
        httpx.AsyncClient(base_url=gw.base_url, timeout=15) as http,
    ):
        assert (await http.get("/metrics")).status_code == 404
        assert (await http.get("/healthz")).status_code == 200


async def test_actor_metrics_listener_serves_its_consumers_lag_and_dead_letters(
    stack: Stack, admin_nc: Client
) -> None:
    actor: Actor = create_actor("codegen")
    labels = frozenset({("stream", CODEGEN_PLANNED.stream.name), ("consumer", CODEGEN_PLANNED.durable)})
    async with running(actor, stack.settings("codegen", metrics_port=0)):
        assert actor.metrics is not None
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{actor.metrics.port}", timeout=15) as http:
            scraped = await http.get("/metrics")
            elsewhere = await http.get("/")
            info = await admin_nc.jetstream().consumer_info(CODEGEN_PLANNED.stream.name, CODEGEN_PLANNED.durable)
            parked_before = samples(scraped.text, "bmms_dead_letters_total").get(labels, 0)
            # poison: parked at once, and counted
            poison = build_subject("metrics-org", f"b{new_trace_id()[:24]}", "planned")
            await admin_nc.jetstream().publish(poison, b"not a build event")

            async def counted() -> float | None:
                parked = samples((await http.get("/metrics")).text, "bmms_dead_letters_total").get(labels, 0)
                return parked if parked > parked_before else None

            assert await eventually(counted) == parked_before + 1
    assert scraped.status_code == 200 and elsewhere.status_code == 404
    assert samples(scraped.text, "bmms_consumer_pending_messages")[labels] == info.num_pending
    assert labels in samples(scraped.text, "bmms_consumer_ack_pending_messages")
    assert labels in samples(scraped.text, "bmms_consumer_redelivered_messages")
    assert actor.metrics is None  # the listener stopped with the actor
