"""A local server that speaks the Anthropic Messages API, for the real `anthropic` SDK (plain-words planning)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from actors.planner.claude import TOOL_NAME
from tests.support.local_http import recorded, serving


@dataclass
class MessagesApi:
    """Answers POST /v1/messages with the next queued tool input, and remembers every request."""

    answers: list[dict[str, Any]] = field(default_factory=list)
    requests: list[dict[str, Any]] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.Response:
        self.requests.append(await recorded(request))
        body = self.requests[-1]["body"]
        answer = self.answers.pop(0)
        return web.json_response({
            "id": f"msg_{len(self.requests)}", "type": "message", "role": "assistant", "model": body["model"],
            "content": [{"type": "tool_use", "id": f"toolu_{len(self.requests)}", "name": TOOL_NAME, "input": answer}],
            "stop_reason": "tool_use", "stop_sequence": None,
            "usage": {"input_tokens": 1000 + len(self.requests), "output_tokens": 200},
        })


@contextlib.asynccontextmanager
async def messages_server() -> AsyncIterator[tuple[MessagesApi, str]]:
    """A Messages API on a free port: the fake and the base URL to give the SDK."""
    api = MessagesApi()
    app = web.Application()
    app.router.add_post("/v1/messages", api.handle)
    async with serving(app) as url:
        yield api, url
