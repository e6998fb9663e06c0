"""Calls on the bus: a subscriber that says it is live answers the very next request, from any connection."""

from __future__ import annotations

import nats
import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg

from actors.runtime.bus import connect
from runner_template.rpc import subscriptions_live
from tests.conftest import Stack

ROUNDS = 300  # with a bare flush() about 1 in 40 fresh subscribers missed this request on this machine kind


async def test_a_subscriber_that_is_live_answers_the_first_request_sent_from_another_connection(
    stack: Stack, admin_nc: Client
) -> None:
    async def answer(msg: Msg) -> None:
        await msg.respond(b"here")

    missed = 0
    for round_ in range(ROUNDS):
        responder = await connect(stack.settings("admin"), "test-live-responder")
        try:
            for endpoint in range(5):  # several SUBs queued behind one another, as an actor's endpoints are
                await responder.subscribe(f"test.live.{round_}.{endpoint}", queue="live", cb=answer)
            await subscriptions_live(responder)
            try:
                reply = await admin_nc.request(f"test.live.{round_}.4", b"", timeout=5)
                assert reply.data == b"here"
            except nats.errors.NoRespondersError:
                missed += 1
        finally:
            await responder.close()
    assert missed == 0, f"{missed} of {ROUNDS} live subscribers were not known to the server yet"
