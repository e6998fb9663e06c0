"""Claude as the planning model: the Messages API through the `anthropic` SDK, one forced tool call per answer.

The tool (`submit_plan`) has the draft's JSON Schema as its input schema, so Claude's answer is the draft
itself; an invalid one goes back as an error tool result. What every provider shares (prompt, schema,
checks, attempts, notes) is in `llm`.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import anthropic

from actors.planner.llm import SDK_RETRIES, Answer, ModelConfig, draft_schema, refused, system_prompt, unreachable

TOOL_NAME = "submit_plan"
SYSTEM = system_prompt(f"call the {TOOL_NAME} tool once with its tools")


class ClaudeConversation:
    """A planning conversation with Claude (`llm.Conversation`)."""

    speaker = "Claude"

    def __init__(self, config: ModelConfig) -> None:
        self.config = config
        self.label = f"Claude ({config.model})"
        self.client = anthropic.AsyncAnthropic(
            api_key=config.api_key, base_url=config.base_url, timeout=config.timeout, max_retries=SDK_RETRIES
        )
        self.tool: dict[str, Any] = {
            "name": TOOL_NAME,
            "description": "Submit the planned tools of the MCP server.",
            "input_schema": draft_schema(),
        }
        self.messages: list[dict[str, Any]] = []
        self.last: list[Any] = []
        """The content blocks of Claude's last answer (what a correction refers to)."""

    async def ask(self, request: str) -> Answer:
        """Claude's first answer."""
        self.messages.append({"role": "user", "content": request})
        return await self._answer()

    async def correct(self, problem: str) -> Answer:
        """Claude's next answer: the invalid call goes back as an error tool result, a missing call is asked for."""
        call = self._call()
        if call is None:
            self.messages.append({"role": "assistant", "content": [
                {"type": "text", "text": b.text} for b in self.last if b.type == "text"
            ] or [{"type": "text", "text": "(no answer)"}]})
            self.messages.append({"role": "user", "content": f"Call the {TOOL_NAME} tool with the plan."})
        else:
            self.messages.append({"role": "assistant", "content": [
                {"type": "tool_use", "id": call.id, "name": call.name, "input": call.input}
            ]})
            self.messages.append({"role": "user", "content": [{
                "type": "tool_result", "tool_use_id": call.id, "is_error": True,
                "content": f"The plan is invalid: {problem}. Call {TOOL_NAME} again with a corrected plan.",
            }]})
        return await self._answer()

    async def close(self) -> None:
        """Release the SDK's connection pool."""
        await self.client.close()

    def _call(self) -> Any:
        return next((b for b in self.last if b.type == "tool_use" and b.name == TOOL_NAME), None)

    async def _answer(self) -> Answer:
        try:
            response = await self.client.messages.create(  # type: ignore[call-overload]  # plain dict params
                model=self.config.model,
                max_tokens=8192,
                system=SYSTEM,
                messages=self.messages,
                tools=[self.tool],
                tool_choice={"type": "tool", "name": TOOL_NAME},
            )
        except (anthropic.APIConnectionError, anthropic.RateLimitError, anthropic.InternalServerError) as exc:
            raise unreachable(self.label, exc) from None
        except anthropic.APIStatusError as exc:
            raise refused(self.config, self.label, exc.status_code, exc.message) from None
        self.last = list(response.content)
        spent = Answer(input_tokens=response.usage.input_tokens, output_tokens=response.usage.output_tokens)
        call = self._call()
        if call is None:
            return replace(spent, problem=f"the answer did not call {TOOL_NAME}")
        return replace(spent, value=call.input)
