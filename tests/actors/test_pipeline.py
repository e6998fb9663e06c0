"""The whole pipeline on the bus: a request goes plan -> generate -> check, with every actor running."""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
from collections.abc import AsyncIterator
from typing import Any

import httpx2
import pytest
from mcp import Client as McpClient
from mcp.client.streamable_http import streamable_http_client
from nats.aio.client import Client

from actors.catalog import create_actor
from actors.deployer.actor import create_actor as create_deployer
from actors.deployer.backends.base import RunnerSpec
from actors.deployer.backends.process import ProcessBackend
from actors.runtime.actor import utc_now
from actors.runtime.bus import call, publish_event
from actors.runtime.codec import decode
from actors.runtime.settings import Settings
from bus_schemas.base import Failed
from bus_schemas.builds import (
    AnyBuildEvent,
    BuildAccepted,
    BuildChecked,
    BuildDeployed,
    BuildFailed,
    BuildGenerated,
    BuildPlanned,
    BuildSource,
    FunctionBody,
    GetBuild,
    LogLine,
    OpenApiSource,
    StepChanged,
    SubmitBuild,
    ToolParameter,
    ToolSpec,
    ToolSpecSource,
)
from bus_schemas.oauth import MintServiceToken, TokenIssued
from bus_schemas.registry import (
    ARTIFACTS,
    CHECK_QUOTA,
    GET_BUILD,
    GET_SERVER,
    OAUTH_MINT_SERVICE_TOKEN,
    ROUTES,
    SUBMIT_BUILD,
    build_subject,
)
from bus_schemas.servers import GetServer, ServerReply, ServerRoute
from bus_schemas.usage import CheckQuota
from runner_template.settings import RunnerSettings
from tests.conftest import Stack, eventually, running
from tests.support.builds import build_events, put_plan
from tests.support.codegen_samples import sample_plan
from tests.support.oauth_helpers import SECRET_KEY
from tests.support.planning_helpers import FIXTURES

CALCULATOR = ToolSpecSource(tools=(
    ToolSpec(
        name="add", description="Add two integers.",
        parameters=(ToolParameter(name="a", type="integer"), ToolParameter(name="b", type="integer")),
        implementation=FunctionBody(body="return a + b"),
    ),
    ToolSpec(
        name="shout", description="Upper-case a text.",
        parameters=(ToolParameter(name="text", type="string"),),
        implementation=FunctionBody(body="return text.upper()"),
    ),
))


PUBLIC_URL = "https://bmms.test"


def deployer_settings(stack: Stack) -> Settings:
    return stack.settings("deployer", public_url=PUBLIC_URL, runner_nats_password=stack.nats.passwords["runner"])


@contextlib.asynccontextmanager
async def pipeline(stack: Stack, *, deployer: bool = True) -> AsyncIterator[ProcessBackend]:
    """Every pipeline actor, the Authorization Server (service tokens) and the deployer on local processes
    (without `deployer`, the test runs deployers on the yielded backend itself). They start on an empty BUILDS
    stream: builds that earlier tests left half-way (some start from an event published by hand) are not
    carried on here."""
    await stack.forget_builds()
    backend = ProcessBackend(stack.root / f"runners-{secrets.token_hex(4)}")
    async with contextlib.AsyncExitStack() as actors:
        for name in ("planner", "codegen", "checker"):
            await actors.enter_async_context(running(create_actor(name), stack.settings(name)))
        await actors.enter_async_context(running(create_actor("oauth"), stack.settings("oauth", secret_key=SECRET_KEY)))
        if deployer:
            await actors.enter_async_context(running(create_deployer(backend), deployer_settings(stack)))
        try:
            yield backend
        finally:
            await stack.forget_servers()
            for runner in await backend.running():
                await backend.remove(runner.server_id, ())


async def submit_and_settle(
    nc: Client, org: str, name: str, source: BuildSource = CALCULATOR
) -> list[AnyBuildEvent]:
    request = SubmitBuild(org_id=org, requested_by="test", name=name, source=source)
    accepted = await call(nc, SUBMIT_BUILD, request, timeout=10)
    assert isinstance(accepted, BuildAccepted)

    async def settled() -> Any:
        summary = await call(nc, GET_BUILD, GetBuild(org_id=org, build_id=accepted.build_id), timeout=10)
        return summary if summary.status in ("failed", "deployed") else None

    summary = await eventually(settled, timeout=90)
    return [e for _, e, _ in await build_events(nc.jetstream(), org, accepted.build_id, last_seq=summary.last_seq)]


async def test_tool_spec_build_is_planned_generated_checked_and_deployed_at_its_stable_url(
    stack: Stack, admin_nc: Client
) -> None:
    async with pipeline(stack) as backend:
        history = await submit_and_settle(admin_nc, "pipe1", "calculator")
        kinds = [type(e).__name__ for e in history]
        assert kinds.index("BuildPlanned") < kinds.index("BuildGenerated") < kinds.index("BuildChecked")
        deployed = history[-1]
        assert isinstance(deployed, BuildDeployed), history[-3:]
        assert deployed.url == f"{PUBLIC_URL}/servers/{deployed.server_id}/mcp" and deployed.version == 1
        assert deployed.backend == "process" and deployed.isolation == "sandbox"
        assert {s.client for s in deployed.install} == {"Claude Code", "Claude Desktop", "ChatGPT", "Cursor", "VS Code"}
        assert all(deployed.url in s.text for s in deployed.install)
        deploy_lines = [e for e in history if isinstance(e, LogLine) and e.step == "deploy"]
        assert any(e.level == "info" and "bubblewrap sandbox" in e.message for e in deploy_lines)
        assert not any(e.level == "warning" for e in deploy_lines)
        (runner,) = await backend.running()
        assert runner.server_id == deployed.server_id
        server = await call(admin_nc, GET_SERVER, GetServer(org_id="pipe1", server_id=deployed.server_id), timeout=10)
        assert isinstance(server, ServerReply) and server.server.state == "running", server
        foreign = await call(admin_nc, GET_SERVER, GetServer(org_id="other", server_id=deployed.server_id), timeout=10)
        assert isinstance(foreign, Failed) and foreign.code == "not_found"


async def test_each_step_needs_only_the_event_before_it(stack: Stack, admin_nc: Client) -> None:
    # A build handed to codegen by hand, with no `requested` event: the events carry the server's name on.
    org, build = "pipe-handed", f"b{secrets.token_hex(6)}"
    digest = await put_plan(admin_nc.jetstream(), sample_plan())
    async with pipeline(stack):
        planned = BuildPlanned(build_id=build, org_id=org, at=utc_now(), name="handed-on", plan_hash=digest,
                               tool_count=4)
        await publish_event(admin_nc.jetstream(), build_subject(org, build, "planned"), planned, f"{build}:planned")

        async def settled() -> Any:
            events = [e for _, e, _ in await build_events(admin_nc.jetstream(), org, build)]
            return events if any(isinstance(e, BuildDeployed | BuildFailed) for e in events) else None

        events = await eventually(settled, timeout=90)
        deployed = events[-1]
        assert isinstance(deployed, BuildDeployed), events[-3:]
        checked = next(e for e in events if isinstance(e, BuildChecked))
        assert (checked.name, checked.server_id) == ("handed-on", None)
        server = await call(admin_nc, GET_SERVER, GetServer(org_id=org, server_id=deployed.server_id), timeout=10)
        assert isinstance(server, ServerReply) and server.server.name == "handed-on"
    # each step's started, finished and handing-on event, once each, in order
    steps = [(e.step, e.state) for e in events if isinstance(e, StepChanged)]
    assert steps == [(s, state) for s in ("generate", "check", "deploy") for state in ("started", "finished")]


async def test_same_input_built_twice_gives_the_same_artifact_hash(stack: Stack, admin_nc: Client) -> None:
    async with pipeline(stack):
        first = await submit_and_settle(admin_nc, "pipe2", "calculator")
        second = await submit_and_settle(admin_nc, "pipe2", "calculator")

    def artifact(history: list[AnyBuildEvent]) -> str:
        (generated,) = [e for e in history if isinstance(e, BuildGenerated)]
        (checked,) = [e for e in history if isinstance(e, BuildChecked)]
        assert checked.artifact_hash == generated.artifact_hash
        return generated.artifact_hash

    assert artifact(first) == artifact(second)


async def test_openapi_document_with_circular_refs_builds_to_a_checked_artifact(
    stack: Stack, admin_nc: Client
) -> None:
    document = (FIXTURES / "issue_tracker.yaml").read_text()
    source = OpenApiSource(document=document, base_url="https://tracker.example.com/api")
    async with pipeline(stack):
        history = await submit_and_settle(admin_nc, "pipe3", "tracker", source)
    planned = next(e for e in history if isinstance(e, BuildPlanned))
    assert planned.tool_count >= 20
    assert any(isinstance(e, BuildChecked) for e in history), [
        getattr(e, "message", getattr(e, "detail", "")) for e in history if isinstance(e, LogLine | BuildFailed)
    ][-4:]


async def test_a_server_over_the_running_servers_quota_fails_at_deploy_saying_so(
    stack: Stack, admin_nc: Client
) -> None:
    metering = stack.settings("metering", quota_running_servers=1)
    async with pipeline(stack), running(create_actor("metering"), metering):
        first = await submit_and_settle(admin_nc, "pipe4", "calculator")
        assert isinstance(first[-1], BuildDeployed), first[-3:]

        async def counted() -> Failed | None:  # metering learns of the running server from its event
            answer = await call(admin_nc, CHECK_QUOTA, CheckQuota(org_id="pipe4", quota="running_servers"), timeout=10)
            return answer if isinstance(answer, Failed) else None

        await eventually(counted, timeout=30)
        second = await submit_and_settle(admin_nc, "pipe4", "calculator")
    failed = second[-1]
    assert isinstance(failed, BuildFailed) and failed.step == "deploy" and failed.code == "quota_exceeded"
    assert "running_servers" in failed.detail


async def test_calls_over_the_tool_call_quota_are_refused_by_the_running_server_within_a_bounded_time(
    stack: Stack, admin_nc: Client
) -> None:
    metering = stack.settings("metering", quota_tool_calls_per_month=3)
    async with pipeline(stack), running(create_actor("metering"), metering):
        deployed = (await submit_and_settle(admin_nc, "pipe5", "calculator"))[-1]
        assert isinstance(deployed, BuildDeployed)
        token = await call(admin_nc, OAUTH_MINT_SERVICE_TOKEN, MintServiceToken(
            service="test", issuer=PUBLIC_URL, resource=deployed.url, org_id="pipe5",
            scope="mcp:tools:read mcp:tools:write"), timeout=10)
        assert isinstance(token, TokenIssued)
        kv = await admin_nc.jetstream().key_value(ROUTES.name)
        route = decode(ServerRoute, (await kv.get(deployed.server_id)).value or b"")
        headers = {"Authorization": f"Bearer {token.access_token}"}
        async with (
            httpx2.AsyncClient(headers=headers, timeout=30) as http,
            McpClient(streamable_http_client(f"{route.upstream}/mcp", http_client=http)) as client,
        ):
            for i in range(3):
                assert not (await client.call_tool("add", {"a": i, "b": 1})).is_error

            async def refused() -> str | None:  # metering counts the calls, writes QUOTAS; the runner watches it
                result = await client.call_tool("add", {"a": 1, "b": 1})
                return str(result.content) if result.is_error else None

            refusal = await eventually(refused, timeout=30, interval=0.1)
        assert "over quota" in str(refusal) and "tool_calls_per_month" in str(refusal)


async def test_a_restarted_deployer_restarts_missing_runners_and_removes_orphans(
    stack: Stack, admin_nc: Client
) -> None:
    async with pipeline(stack, deployer=False) as backend:
        async with running(create_deployer(backend), deployer_settings(stack)):
            deployed = (await submit_and_settle(admin_nc, "pipe6", "calculator"))[-1]
        assert isinstance(deployed, BuildDeployed)
        (runner,) = await backend.running()  # the deployer stopped; its runner did not
        # While no deployer runs: the server's runner dies, and a runner of a server nobody knows appears.
        os.killpg(int(runner.ref), signal.SIGKILL)
        data = (await (await admin_nc.jetstream().object_store(ARTIFACTS.name)).get(runner.artifact_hash)).data
        orphan = await backend.run(RunnerSpec(
            server_id="sorphan", org_id="pipe6", version=1, artifact_hash=runner.artifact_hash,
            artifact_json=data or b"", settings=RunnerSettings(artifact="", insecure_no_auth=True),
        ))
        assert {r.server_id for r in await backend.running()} == {"sorphan"}
        async with running(create_deployer(backend), deployer_settings(stack)):

            async def converged() -> list[str] | None:
                ids = sorted(r.server_id for r in await backend.running())
                return ids if ids == [deployed.server_id] else None

            await eventually(converged, timeout=60)
            kv = await admin_nc.jetstream().key_value(ROUTES.name)

            async def routed() -> ServerRoute | None:
                route = decode(ServerRoute, (await kv.get(deployed.server_id)).value or b"")
                (again,) = await backend.running()
                return route if route.upstream == again.upstream and again.ref != runner.ref else None

            await eventually(routed, timeout=30)
        with pytest.raises(ProcessLookupError):
            os.kill(int(orphan.ref), 0)
