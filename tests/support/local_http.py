"""A small aiohttp app served on a free loopback port: what the fakes of outside services stand on."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web


@contextlib.asynccontextmanager
async def serving(app: web.Application, host: str = "127.0.0.1") -> AsyncIterator[str]:
    """Serve `app` on `host` and a port the system picks, until the block ends; yields `http://host:port`."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]  # aiohttp keeps its server private
    try:
        yield f"http://{host}:{port}"
    finally:
        await runner.cleanup()


async def recorded(request: web.Request) -> dict[str, Any]:
    """What a fake remembers of a request: its headers (lower-case names) and its JSON body."""
    return {"headers": {k.lower(): v for k, v in request.headers.items()}, "body": await request.json()}
