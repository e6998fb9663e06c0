"""The health check before a URL is handed out: an authenticated MCP `tools/list` against the new runner.

The token is a real one from our Authorization Server (a service token whose audience is the server's
public URL), so the check exercises exactly what a client will: token verification, the MCP transport
and the generated module's tools. What it lists is what the version serves: the deployer keeps it with the
version (`tool_diff`).
"""

from __future__ import annotations

import asyncio

import httpx2
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp_types import Tool

from actors.deployer.tool_diff import ServedTool


class Unhealthy(Exception):
    """The runner did not answer as it should; the message says what it did instead."""


def served_tool(tool: Tool) -> ServedTool:
    """One `tools/list` entry as the deployer keeps it."""
    annotations = tool.annotations.model_dump(by_alias=True, exclude_none=True, mode="json") if tool.annotations else {}
    return ServedTool(name=tool.name, title=tool.title, description=tool.description,
                      input_schema=dict(tool.input_schema), annotations=annotations)


async def list_tools(mcp_url: str, token: str, *, timeout: float = 10.0) -> tuple[ServedTool, ...]:
    """The tools the server at `mcp_url` lists to a client holding `token`."""
    headers = {"Authorization": f"Bearer {token}"}
    async with (
        httpx2.AsyncClient(headers=headers, timeout=timeout) as http,
        Client(streamable_http_client(mcp_url, http_client=http)) as client,
    ):
        result = await client.list_tools()
    return tuple(served_tool(tool) for tool in result.tools)


async def wait_healthy(mcp_url: str, token: str, expected: tuple[str, ...], *, timeout: float
                       ) -> tuple[ServedTool, ...]:
    """The server's tools, once it lists exactly the tools named `expected`; Unhealthy with the last answer after
    `timeout`."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    delay = 0.05
    last = "no answer"
    while True:
        try:
            tools = await list_tools(mcp_url, token, timeout=max(1.0, min(10.0, deadline - loop.time())))
        except Exception as exc:  # any transport or protocol failure is a reason to try again until the deadline
            last = f"{type(exc).__name__}: {exc}"[:500]
        else:
            names = [tool.name for tool in tools]
            if sorted(names) == sorted(expected):
                return tools
            raise Unhealthy(f"tools/list answered {sorted(names)}, the artifact has {sorted(expected)}")
        if loop.time() + delay > deadline:
            raise Unhealthy(f"no authenticated tools/list answer within {timeout:.0f} s (last: {last})")
        await asyncio.sleep(delay)
        delay = min(delay * 2, 1.0)
