"""A bare `MCPServer` with the benchmark's one tool and nothing else (no auth, no usage events): the
baseline the runner is measured against. Run: `python -m ops.bench.bare_server PORT`."""

from __future__ import annotations

import sys

import uvicorn
from mcp.server import MCPServer


def create_app() -> object:
    server = MCPServer(name="bare", version="1")

    @server.tool(name="add")
    def add(a: int, b: int) -> int:
        """Add two integers."""
        return a + b

    return server.streamable_http_app(streamable_http_path="/mcp", stateless_http=True, json_response=True)


def main() -> None:
    uvicorn.run(create_app(), host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")  # type: ignore[arg-type]  # uvicorn's ASGI type vs Starlette's


if __name__ == "__main__":
    main()
