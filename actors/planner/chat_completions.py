"""An OpenAI-compatible chat-completions server as the planning model, through the `openai` SDK.

OpenAI itself, vLLM, llama.cpp's server and Ollama all answer `POST {base_url}/chat/completions`; what they
accept differs. The plan is asked for as structured output (`response_format` `json_schema` with the
draft's schema); a server that refuses that (HTTP 400/422) is asked for a `json_object`, then for plain
text, the schema then written into the prompt; the JSON object is read from the message content however
it comes (bare, fenced, or inside prose). What every provider shares (prompt, schema, checks, attempts,
notes) is in `llm`.
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any, Literal

import openai
from openai.types.chat import ChatCompletionMessageParam

from actors.planner.llm import (
    SDK_RETRIES,
    Answer,
    ModelConfig,
    draft_schema,
    read_json,
    refused,
    system_prompt,
    unreachable,
)
from actors.planner.problems import PlanNotes

Format = Literal["json_schema", "json_object", "text"]
FORMATS: tuple[Format, ...] = ("json_schema", "json_object", "text")
"""How the answer is asked for, best first; the next is tried when the server refuses one."""
NO_API_KEY = "no-key"
"""Sent as the bearer token when `BMMS_LLM_API_KEY` is unset (local servers ignore it; the SDK needs one)."""
ANSWER = "answer with the plan: one JSON object with its tools and the secrets they need, and nothing else"


class ChatConversation:
    """A planning conversation with a model behind an OpenAI-compatible server (`llm.Conversation`)."""

    def __init__(self, config: ModelConfig, notes: PlanNotes) -> None:
        self.config = config
        self.notes = notes
        self.speaker = config.model
        self.label = f"{config.model} ({config.shown_url})"
        # key and URL always given, so the SDK never takes them from OPENAI_API_KEY / OPENAI_BASE_URL instead
        self.client = openai.AsyncOpenAI(
            api_key=config.api_key or NO_API_KEY, base_url=config.base_url, timeout=config.timeout,
            max_retries=SDK_RETRIES,
        )
        self.schema = draft_schema()
        self.format: Format = FORMATS[0]
        self.messages: list[ChatCompletionMessageParam] = []

    async def ask(self, request: str) -> Answer:
        """The model's first answer."""
        self.messages.append({"role": "user", "content": request})
        return await self._answer()

    async def correct(self, problem: str) -> Answer:
        """The model's next answer, told what was wrong with its last one."""
        self.messages.append({
            "role": "user",
            "content": f"The plan is invalid: {problem}. Answer again with the corrected plan as one JSON object.",
        })
        return await self._answer()

    async def close(self) -> None:
        """Release the SDK's connection pool."""
        await self.client.close()

    def _system(self) -> str:
        if self.format == "json_schema":  # the server holds the answer to the schema itself
            return system_prompt(ANSWER)
        return f"{system_prompt(ANSWER)}\n\nThe plan's JSON Schema:\n{json.dumps(self.schema)}"

    def _response_format(self) -> dict[str, Any] | None:
        if self.format == "json_schema":
            return {"type": "json_schema", "json_schema": {
                "name": "draft_plan", "description": "The planned tools of the MCP server.",
                "schema": self.schema, "strict": False,  # strict mode refuses optional fields and $defs unions
            }}
        return {"type": "json_object"} if self.format == "json_object" else None

    async def _create(self) -> Any:
        """One chat completion, stepping down to a simpler answer format while the server refuses one."""
        while True:
            response_format = self._response_format()
            extra: dict[str, Any] = {} if response_format is None else {"response_format": response_format}
            try:
                return await self.client.chat.completions.create(
                    model=self.config.model,
                    messages=[{"role": "system", "content": self._system()}, *self.messages],
                    **extra,
                )
            except (openai.APIConnectionError, openai.RateLimitError, openai.InternalServerError) as exc:
                raise unreachable(self.label, exc) from None
            except (openai.BadRequestError, openai.UnprocessableEntityError) as exc:
                if self.format == FORMATS[-1]:
                    raise refused(self.config, self.label, exc.status_code, exc.message) from None
                refused_format = self.format
                self.format = FORMATS[FORMATS.index(self.format) + 1]
                self.notes.info(self.config.redact(
                    f"{self.label} refused response_format {refused_format} (HTTP {exc.status_code}: {exc.message});"
                    f" asking for {'a JSON object' if self.format == 'json_object' else 'plain text'} instead"
                ))
            except openai.APIStatusError as exc:
                raise refused(self.config, self.label, exc.status_code, exc.message) from None

    async def _answer(self) -> Answer:
        response = await self._create()
        usage = response.usage
        spent = Answer(input_tokens=usage.prompt_tokens if usage else 0,
                       output_tokens=usage.completion_tokens if usage else 0)
        if not response.choices:
            self.messages.append({"role": "assistant", "content": "(no answer)"})
            return replace(spent, problem="the answer had no choices")
        choice = response.choices[0]
        content = choice.message.content or ""
        self.messages.append({"role": "assistant", "content": content or "(no answer)"})
        if choice.message.refusal:
            return replace(spent, problem=f"the model refused: {choice.message.refusal}")
        if choice.finish_reason == "length":
            return replace(spent, problem="the answer was cut off at the server's token limit; plan fewer tools")
        try:
            return replace(spent, value=read_json(content))
        except ValueError as exc:
            return replace(spent, problem=str(exc))
