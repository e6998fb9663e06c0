"""nats.conf grants each role only what it needs: checked against the real server with the real file."""

from __future__ import annotations

import asyncio

import nats
import pytest

from tests.conftest import Stack


async def _violations(stack: Stack, role: str, action: str, subject: str) -> list[str]:
    """Connect as `role`, try `action` on `subject`, and return the permission errors the server sent."""
    errors: asyncio.Queue[str] = asyncio.Queue()

    async def on_error(exc: Exception) -> None:
        await errors.put(str(exc))

    nc = await nats.connect(
        stack.nats.url, user=role, password=stack.nats.passwords[role], error_cb=on_error,
        inbox_prefix=f"_INBOX_{role}", allow_reconnect=False,
    )
    try:
        if action == "publish":
            await nc.publish(subject, b"{}")
        else:
            await nc.subscribe(subject)
        await nc.flush(timeout=5)
        # The server answers a violation with -ERR right after the offending op; a PING round trip
        # (flush) after it guarantees the error, if any, has been read.
        await nc.flush(timeout=5)
        found: list[str] = []
        while not errors.empty():
            found.append(errors.get_nowait())
        return [e for e in found if "ermissions" in e]
    finally:
        await nc.close()


@pytest.mark.parametrize(
    ("role", "action", "subject"),
    [
        ("runner", "publish", "builds.o1.b1.deployed"),
        ("runner", "publish", "rpc.builds.submit"),
        ("runner", "subscribe", "usage.>"),
        ("runner", "subscribe", "_INBOX_gateway.>"),
        ("gateway", "publish", "builds.o1.b1.requested"),
        ("gateway", "publish", "rpc.auth.api_keys.create"),
        ("gateway", "subscribe", "rpc.builds.>"),
        ("planner", "publish", "builds.o1.b1.deployed"),
        ("codegen", "publish", "rpc.builds.submit"),
        ("events", "publish", "builds.o1.b1.failed"),
        ("events", "subscribe", "_INBOX_planner.>"),
        # server secrets: only the gateway asks, only the deployer answers
        ("runner", "publish", "rpc.deployer.secrets.list"),
        ("planner", "publish", "rpc.deployer.secrets.set"),
        ("gateway", "subscribe", "rpc.deployer.secrets.set"),
        # plan previews: only the gateway asks, only the planner answers
        *((role, "publish", "rpc.plans.preview") for role in ("runner", "codegen", "checker", "deployer", "auth",
                                                             "oauth", "metering", "events", "planner")),
        ("gateway", "subscribe", "rpc.plans.preview"),
        ("codegen", "subscribe", "rpc.plans.preview"),
    ],
)
async def test_role_is_refused_what_it_does_not_need(stack: Stack, role: str, action: str, subject: str) -> None:
    assert await _violations(stack, role, action, subject), f"{role} was allowed to {action} {subject}"


@pytest.mark.parametrize(
    ("role", "action", "subject"),
    [
        ("runner", "publish", "usage.s1.tool"),
        ("gateway", "publish", "rpc.builds.submit"),
        ("planner", "publish", "builds.o1.b1.planned"),
        ("deployer", "publish", "builds.o1.b1.deployed"),
        ("auth", "subscribe", "rpc.auth.authenticate"),
        ("gateway", "publish", "rpc.auth.magic_link.redeem"),
        ("gateway", "publish", "rpc.auth.api_keys.revoke"),
        ("gateway", "publish", "rpc.deployer.secrets.set"),
        ("gateway", "publish", "rpc.deployer.secrets.stage"),
        ("deployer", "subscribe", "rpc.deployer.secrets.set"),
        ("gateway", "publish", "rpc.plans.preview"),
        ("planner", "subscribe", "rpc.plans.preview"),
    ],
)
async def test_role_is_allowed_what_it_needs(stack: Stack, role: str, action: str, subject: str) -> None:
    assert await _violations(stack, role, action, subject) == []
