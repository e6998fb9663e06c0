"""A stand-in for the deployer's server registry at the bus boundary, for tests of the Authorization Server.

It answers RESOLVE_SERVER from a dict the test fills in (server id -> (org id, url)), as the deployer
would from its tables; the oauth actor under test is the real one.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from nats import micro
from nats.micro.request import Request

from actors.runtime.bus import connect
from actors.runtime.codec import decode, encode
from bus_schemas.base import Failed, FailureCode
from bus_schemas.registry import RESOLVE_SERVER
from bus_schemas.servers import ResolveServer, ServerOwner
from runner_template.rpc import subscriptions_live
from tests.conftest import Stack

Servers = dict[str, tuple[str, str]]


@contextlib.asynccontextmanager
async def server_registry(stack: Stack, servers: Servers) -> AsyncIterator[Servers]:
    """Serve RESOLVE_SERVER from `servers` (mutable while it runs) until the block ends."""
    nc = await connect(stack.settings("admin"), "test-server-registry")

    async def resolve(request: Request) -> None:
        asked = decode(ResolveServer, request.data)
        found = servers.get(asked.server_id)
        reply = (
            ServerOwner(server_id=asked.server_id, org_id=found[0], url=found[1]) if found
            else Failed(code=FailureCode.NOT_FOUND, detail=f"no server {asked.server_id}")
        )
        await request.respond(encode(reply))

    service = await micro.add_service(nc, name="deployer", version="0.0.1", queue_group="deployer")
    await service.add_endpoint(name=RESOLVE_SERVER.endpoint, subject=RESOLVE_SERVER.subject, handler=resolve)
    await subscriptions_live(nc)
    try:
        yield servers
    finally:
        await service.stop()
        await nc.close()
