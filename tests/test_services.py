"""Every actor, codegen and the checker included (they serve no RPC), answers nats.micro discovery: `$SRV.PING`,
`$SRV.INFO.<name>` and `$SRV.STATS.<name>`, under nats.conf's permissions, so an operator sees every copy."""

from __future__ import annotations

import contextlib
import json
import secrets
from typing import Any

from nats.aio.client import Client

from actors.catalog import ACTORS, create_actor
from actors.deployer.actor import create_actor as create_deployer
from actors.deployer.backends.process import ProcessBackend
from tests.conftest import Stack, eventually, running
from tests.support.oauth_helpers import SECRET_KEY


async def answers(nc: Client, subject: str) -> list[dict[str, Any]]:
    """Every answer to one request on `subject` that arrives until the answers stop (0.5 s after the last)."""
    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox)
    await nc.publish(subject, b"", reply=inbox)
    found: list[dict[str, Any]] = []
    with contextlib.suppress(TimeoutError):
        while True:
            msg = await sub.next_msg(timeout=0.5)
            found.append(json.loads(msg.data))
    await sub.unsubscribe()
    return found


async def test_every_actor_answers_srv_ping_info_and_stats(stack: Stack, admin_nc: Client) -> None:
    backend = ProcessBackend(stack.root / f"runners-{secrets.token_hex(4)}")
    async with contextlib.AsyncExitStack() as actors:
        for name in sorted(ACTORS):
            if name == "deployer":
                actor = create_deployer(backend)
                settings = stack.settings(name, runner_nats_password=stack.nats.passwords["runner"])
            else:
                actor = create_actor(name)
                settings = stack.settings(name, secret_key=SECRET_KEY) if name == "oauth" else stack.settings(name)
            await actors.enter_async_context(running(actor, settings))

        async def all_answer_ping() -> set[str]:
            names = {answer["name"] for answer in await answers(admin_nc, "$SRV.PING")}
            return names if names >= set(ACTORS) else set()

        await eventually(all_answer_ping)
        for name in sorted(ACTORS):
            (info,) = await answers(admin_nc, f"$SRV.INFO.{name}")
            assert info["name"] == name
            assert info["version"]
            (stats,) = await answers(admin_nc, f"$SRV.STATS.{name}")
            assert stats["name"] == name
        codegen = (await answers(admin_nc, "$SRV.INFO.codegen"))[0]
        assert codegen["metadata"] == {"consumers": "BUILDS/codegen"}
        assert codegen["endpoints"] == []
        checker = (await answers(admin_nc, "$SRV.INFO.checker"))[0]
        assert checker["metadata"] == {"consumers": "BUILDS/checker"}
