"""A local server that speaks OpenAI's chat-completions protocol, for the real `openai` SDK (plain-words
planning with a local model: what vLLM, llama.cpp's server and Ollama answer at `/v1/chat/completions`)."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tests.support.local_http import recorded, serving


@dataclass(frozen=True)
class HttpError:
    """An answer that is an HTTP error in OpenAI's shape (`{"error": {...}}`)."""

    status: int
    message: str
    type: str = "invalid_request_error"


@dataclass
class ChatCompletionsApi:
    """Answers POST /v1/chat/completions with the next queued answer, and remembers every request.

    An answer is a JSON value (sent as the message content, serialised), a string (the content as it is),
    or an `HttpError`. A request whose `response_format` type is in `refused_formats` gets a 400, as a
    server without that kind of structured output answers."""

    answers: list[Any] = field(default_factory=list)
    requests: list[dict[str, Any]] = field(default_factory=list)
    refused_formats: set[str] = field(default_factory=set)

    async def handle(self, request: web.Request) -> web.Response:
        self.requests.append(await recorded(request))
        body = self.requests[-1]["body"]
        kind = body.get("response_format", {}).get("type")
        if kind in self.refused_formats:
            return error(HttpError(400, f"response_format type {kind!r} is not supported"))
        answer = self.answers.pop(0)
        if isinstance(answer, HttpError):
            return error(answer)
        content = answer if isinstance(answer, str) else json.dumps(answer)
        n = len(self.requests)
        return web.json_response({
            "id": f"chatcmpl-{n}", "object": "chat.completion", "created": 1_800_000_000, "model": body["model"],
            "choices": [{
                "index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop",
                "logprobs": None,
            }],
            "usage": {"prompt_tokens": 500 + n, "completion_tokens": 100, "total_tokens": 600 + n},
        })


def error(answer: HttpError) -> web.Response:
    return web.json_response(
        {"error": {"message": answer.message, "type": answer.type, "param": None, "code": None}}, status=answer.status
    )


@contextlib.asynccontextmanager
async def chat_completions_server() -> AsyncIterator[tuple[ChatCompletionsApi, str]]:
    """A chat-completions API on a free port: the fake and the base URL to give the SDK (ending in /v1)."""
    api = ChatCompletionsApi()
    app = web.Application()
    app.router.add_post("/v1/chat/completions", api.handle)
    async with serving(app) as url:
        yield api, f"{url}/v1"
