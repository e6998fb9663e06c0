"""Short outages do not fail a build: a dependency that does not answer is waited for (the runtime's retries with
backoff), and the build carries on when it is back. Every actor real, in this event loop; the deployer runs
servers as local processes."""

from __future__ import annotations

import contextlib
import secrets
from pathlib import Path
from typing import Any

from nats.aio.client import Client

from actors.catalog import create_actor
from actors.deployer.actor import create_actor as create_deployer
from actors.deployer.backends.process import ProcessBackend
from actors.runtime.bus import call, connect, provision
from bus_schemas.builds import BuildAccepted, BuildDeployed, BuildFailed, BuildSummary, GetBuild, SubmitBuild
from bus_schemas.registry import GET_BUILD, GET_SERVER, SUBMIT_BUILD
from bus_schemas.servers import GetServer, ServerReply
from ops.infra import NATS_ROLES, new_nats_password, start_nats
from tests.actors.test_pipeline import CALCULATOR, deployer_settings
from tests.conftest import Stack, eventually, running
from tests.support.builds import build_events
from tests.support.oauth_helpers import SECRET_KEY


async def test_a_deploy_waits_for_the_oauth_actor_stopped_mid_deploy_and_ends_deployed_with_one_version(
    stack: Stack, admin_nc: Client
) -> None:
    await stack.forget_builds()
    backend = ProcessBackend(stack.root / f"runners-{secrets.token_hex(4)}")
    oauth_settings = stack.settings("oauth", secret_key=SECRET_KEY)
    async with contextlib.AsyncExitStack() as actors:
        for name in ("planner", "codegen", "checker"):
            await actors.enter_async_context(running(create_actor(name), stack.settings(name)))
        await actors.enter_async_context(running(create_deployer(backend), deployer_settings(stack)))
        try:
            async with running(create_actor("oauth"), oauth_settings):
                pass  # it ran, and now it is stopped (paused, restarting: away) when the deploy needs a token
            request = SubmitBuild(org_id="outage1", requested_by="test", name="calculator", source=CALCULATOR)
            accepted = await call(admin_nc, SUBMIT_BUILD, request, timeout=10)
            assert isinstance(accepted, BuildAccepted)
            # the deploy has started the runner and asks for the health check's token, which nobody gives now
            await eventually(backend.running, timeout=90)
            async with running(create_actor("oauth"), oauth_settings):

                async def settled() -> Any:
                    asked = GetBuild(org_id="outage1", build_id=accepted.build_id)
                    summary = await call(admin_nc, GET_BUILD, asked, timeout=10)
                    return summary if summary.status in ("failed", "deployed") else None

                summary = await eventually(settled, timeout=90)
            history = [e for _, e, _ in await build_events(admin_nc.jetstream(), "outage1", accepted.build_id,
                                                           last_seq=summary.last_seq)]
            assert not [e for e in history if isinstance(e, BuildFailed)], history[-3:]
            (deployed,) = [e for e in history if isinstance(e, BuildDeployed)]
            assert deployed.version == 1
            server = await call(admin_nc, GET_SERVER, GetServer(org_id="outage1", server_id=deployed.server_id),
                                timeout=10)
            assert isinstance(server, ServerReply) and server.server.state == "running"
            assert [v.version for v in server.server.versions] == [1]
            assert len(await backend.running()) == 1
        finally:
            await stack.forget_servers()
            for runner in await backend.running():
                await backend.remove(runner.server_id, ())


async def test_a_deploy_waiting_through_a_nats_restart_ends_deployed_with_one_version(
    stack: Stack, tmp_path: Path
) -> None:
    # A bus of this test's own, restarted mid-deploy (same port, same store), while the deploy waits for oauth.
    passwords = {role: new_nats_password() for role in NATS_ROLES}
    server = start_nats(tmp_path / "nats", passwords)
    own = Stack(server, stack.database_url, stack.root)
    backend = ProcessBackend(stack.root / f"runners-{secrets.token_hex(4)}")
    oauth_settings = own.settings("oauth", secret_key=SECRET_KEY)
    try:
        admin_nc = await connect(own.settings("admin"), "test-nats-restart")
        await provision(admin_nc.jetstream())
        async with contextlib.AsyncExitStack() as actors:
            for name in ("planner", "codegen", "checker"):
                await actors.enter_async_context(running(create_actor(name), own.settings(name)))
            await actors.enter_async_context(running(create_deployer(backend), deployer_settings(own)))
            request = SubmitBuild(org_id="outage2", requested_by="test", name="calculator", source=CALCULATOR)
            accepted = await call(admin_nc, SUBMIT_BUILD, request, timeout=10)
            assert isinstance(accepted, BuildAccepted)
            await eventually(backend.running, timeout=90)  # the deploy waits for the health check's token
            server.stop()
            server = start_nats(tmp_path / "nats", passwords, port=server.port)
            async with running(create_actor("oauth"), oauth_settings):

                async def settled() -> Any:
                    asked = GetBuild(org_id="outage2", build_id=accepted.build_id)
                    summary = await call(admin_nc, GET_BUILD, asked, timeout=10)
                    return summary if isinstance(summary, BuildSummary) and summary.status in (
                        "failed", "deployed") else None

                summary = await eventually(settled, timeout=120)
            history = [e for _, e, _ in await build_events(admin_nc.jetstream(), "outage2", accepted.build_id,
                                                           last_seq=summary.last_seq)]
            assert not [e for e in history if isinstance(e, BuildFailed)], history[-3:]
            (deployed,) = [e for e in history if isinstance(e, BuildDeployed)]
            reply = await call(admin_nc, GET_SERVER, GetServer(org_id="outage2", server_id=deployed.server_id),
                               timeout=10)
            assert isinstance(reply, ServerReply) and [v.version for v in reply.server.versions] == [1]
            assert len(await backend.running()) == 1
        await admin_nc.close()
    finally:
        await stack.forget_servers()
        for runner in await backend.running():
            await backend.remove(runner.server_id, ())
        server.stop()
