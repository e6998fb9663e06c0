"""The health check before a URL is handed out: an authenticated MCP `tools/list` against the new runner.

The token is a real one from our Authorization Server (a service token whose audience is the server's
public URL), so the check exercises exactly what a client will: token verification, the MCP transport
and the generated module's tools.
"""

from __future__ import annotations

import asyncio

import httpx2
from mcp import Client
from mcp.client.streamable_http import streamable_http_client


class Unhealthy(Exception):
    """The runner did not answer as it should; the message says what it did instead."""


async def list_tools(mcp_url: str, token: str, *, timeout: float = 10.0) -> tuple[str, ...]:
    """The names of the tools the server at `mcp_url` lists to a client holding `token`."""
    headers = {"Authorization": f"Bearer {token}"}
    async with (
        httpx2.AsyncClient(headers=headers, timeout=timeout) as http,
        Client(streamable_http_client(mcp_url, http_client=http)) as client,
    ):
        result = await client.list_tools()
    return tuple(tool.name for tool in result.tools)


async def wait_healthy(mcp_url: str, token: str, expected: tuple[str, ...], *, timeout: float) -> None:
    """Return once the server lists exactly `expected`; raise Unhealthy with the last answer after `timeout`."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    delay = 0.05
    last = "no answer"
    while True:
        try:
            names = await list_tools(mcp_url, token, timeout=max(1.0, min(10.0, deadline - loop.time())))
        except Exception as exc:  # any transport or protocol failure is a reason to try again until the deadline
            last = f"{type(exc).__name__}: {exc}"[:500]
        else:
            if tuple(sorted(names)) == tuple(sorted(expected)):
                return
            raise Unhealthy(f"tools/list answered {sorted(names)}, the artifact has {sorted(expected)}")
        if loop.time() + delay > deadline:
            raise Unhealthy(f"no authenticated tools/list answer within {timeout:.0f} s (last: {last})")
        await asyncio.sleep(delay)
        delay = min(delay * 2, 1.0)
