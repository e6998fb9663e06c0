"""Plain words through an OpenAI-compatible server (a local model: vLLM, llama.cpp, Ollama): the real openai SDK
against a local server that speaks the chat-completions protocol, through the planner actor."""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import AsyncIterator
from typing import Any

import pytest

from actors.catalog import create_actor
from actors.planner.llm import NO_KEY, NO_MODEL, RULES, draft_schema, model_config
from actors.planner.problems import PlanProblem
from actors.runtime.settings import load_settings
from bus_schemas.builds import BuildPlanned, LogLine, PlainWords
from bus_schemas.plans import HttpCall, PureFunction
from tests.conftest import Stack, running
from tests.support.builds import Recorded
from tests.support.fake_anthropic import messages_server
from tests.support.fake_openai import ChatCompletionsApi, HttpError, chat_completions_server
from tests.support.planning_helpers import failure, planned

KEY = "sk-local-secret-7f3a9c"
MODEL = "qwen-test:7b"
PLAN: dict[str, Any] = {
    "tools": [
        {
            "name": "get_forecast",
            "title": "Get a forecast",
            "description": "Tomorrow's weather forecast for a city.",
            "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
            "read_only": True,
            "implementation": {
                "kind": "http", "method": "GET", "base_url": "https://weather.example", "path": "/forecast/{city}",
                "path_params": ["city"], "auth": "bearer", "auth_secret": "WEATHER_TOKEN",
            },
        },
        {
            "name": "to_fahrenheit",
            "title": "Celsius to Fahrenheit",
            "description": "A temperature in degrees Fahrenheit.",
            "input_schema": {"type": "object", "properties": {"celsius": {"type": "number"}}},
            "read_only": True,
            "implementation": {"kind": "function", "body": "return celsius * 9 / 5 + 32"},
        },
    ],
    "secrets": [{"name": "WEATHER_TOKEN", "description": "API token of weather.example"}],
}
BAD_NAME: dict[str, Any] = {"tools": [{**PLAN["tools"][0], "name": "Get Forecast!"}]}


@pytest.fixture(scope="module")
async def chat_server() -> AsyncIterator[tuple[ChatCompletionsApi, str]]:
    async with chat_completions_server() as served:
        yield served


@contextlib.asynccontextmanager
async def planner(stack: Stack, **overrides: object) -> AsyncIterator[None]:
    """A planner with these settings, for one test (two planners would share the plan step's consumer)."""
    async with running(create_actor("planner"), stack.settings("planner", **overrides)):
        yield


@pytest.fixture
async def local_model(stack: Stack, chat_server: tuple[ChatCompletionsApi, str]) -> AsyncIterator[ChatCompletionsApi]:
    """A planner that plans plain words with MODEL behind the fake server, which starts each test afresh."""
    api, url = chat_server
    api.answers.clear()
    api.requests.clear()
    api.refused_formats.clear()
    async with planner(stack, llm_provider="openai", llm_base_url=url, llm_model=MODEL, llm_api_key=KEY):
        yield api


def lines(events: list[Recorded]) -> list[str]:
    return [e.message for _, e, _ in events if isinstance(e, LogLine)]


def assert_key_never_shown(events: list[Recorded]) -> None:
    assert all(KEY.encode() not in data for _, _, data in events)


async def test_plain_words_are_planned_by_a_model_behind_an_openai_compatible_server(
    local_model: ChatCompletionsApi, chat_server: tuple[ChatCompletionsApi, str], admin_nc
) -> None:
    local_model.answers[:] = [PLAN]
    plan, events = await planned(admin_nc, PlainWords(text="A server that tells tomorrow's weather."), name="weather")
    assert plan.planned_from == "plain_words" and plan.server_name == "weather"
    assert [t.name for t in plan.tools] == ["get_forecast", "to_fahrenheit"]
    assert isinstance(plan.tools[0].implementation, HttpCall) and isinstance(plan.tools[1].implementation, PureFunction)
    assert plan.upstream_hosts == ("weather.example",) and [s.name for s in plan.secrets] == ["WEATHER_TOKEN"]
    # the chat-completions protocol: the key as a bearer token, the model, a system prompt and the request,
    # and the draft's schema as structured output; nothing else
    [request] = local_model.requests
    assert request["headers"]["authorization"] == f"Bearer {KEY}"
    body = request["body"]
    assert set(body) == {"model", "messages", "response_format"} and body["model"] == MODEL
    system, user = body["messages"]
    assert system == {"role": "system", "content": "You plan MCP servers. A person describes the server they want; "
                      "answer with the plan: one JSON object with its tools and the secrets they need, and nothing "
                      f"else.\n\n{RULES}"}
    assert user == {"role": "user", "content": "Server name: weather\n\n<description>\nA server that tells tomorrow's "
                                               "weather.\n</description>"}
    assert body["response_format"] == {"type": "json_schema", "json_schema": {
        "name": "draft_plan", "description": "The planned tools of the MCP server.",
        "schema": json.loads(json.dumps(draft_schema())), "strict": False,
    }}
    url = chat_server[1]
    assert f"{MODEL} ({url}) used 501 input and 100 output tokens over 1 request(s)" in lines(events)
    assert f"planned from plain words by {MODEL} ({url}): 2 tool(s)" in lines(events)
    done = events[-1].event
    assert isinstance(done, BuildPlanned) and (done.model_input_tokens, done.model_output_tokens) == (501, 100)
    assert_key_never_shown(events)


async def test_a_server_without_json_schema_output_is_asked_for_a_json_object_with_the_schema_in_the_prompt(
    local_model: ChatCompletionsApi, admin_nc
) -> None:
    local_model.refused_formats.add("json_schema")
    local_model.answers[:] = [PLAN]
    plan, events = await planned(admin_nc, PlainWords(text="Weather."))
    assert [t.name for t in plan.tools] == ["get_forecast", "to_fahrenheit"]
    refused, asked = (r["body"] for r in local_model.requests)
    assert refused["response_format"]["type"] == "json_schema" and asked["response_format"] == {"type": "json_object"}
    assert f"The plan's JSON Schema:\n{json.dumps(draft_schema())}" in asked["messages"][0]["content"]
    assert any("refused response_format json_schema (HTTP 400: " in line and "asking for a JSON object" in line
               for line in lines(events))


async def test_a_server_with_plain_text_only_may_answer_in_prose_around_a_fenced_object(
    local_model: ChatCompletionsApi, admin_nc
) -> None:
    local_model.refused_formats.update({"json_schema", "json_object"})
    local_model.answers[:] = [f"Here is the plan:\n```json\n{json.dumps(PLAN, indent=2)}\n```\nEnjoy!"]
    plan, _ = await planned(admin_nc, PlainWords(text="Weather."))
    assert [t.name for t in plan.tools] == ["get_forecast", "to_fahrenheit"]
    assert "response_format" not in local_model.requests[-1]["body"] and len(local_model.requests) == 3


async def test_a_draft_that_breaks_the_schema_goes_back_with_the_problem_and_the_corrected_one_is_planned(
    local_model: ChatCompletionsApi, admin_nc
) -> None:
    local_model.answers[:] = [BAD_NAME, PLAN]
    plan, events = await planned(admin_nc, PlainWords(text="Weather."))
    assert [t.name for t in plan.tools] == ["get_forecast", "to_fahrenheit"]
    first, second = (r["body"]["messages"] for r in local_model.requests)
    assert second[:2] == first and second[2] == {"role": "assistant", "content": json.dumps(BAD_NAME)}
    assert second[3]["role"] == "user" and second[3]["content"].startswith("The plan is invalid: ")
    assert "$.tools[0].name" in second[3]["content"]
    assert any(line.startswith(f"{MODEL}'s answer 1 of at most 3 was not a valid plan: ") and "$.tools[0].name" in line
               for line in lines(events))


async def test_answers_that_are_not_json_fail_the_build_naming_the_model_and_what_it_said(
    local_model: ChatCompletionsApi, admin_nc
) -> None:
    local_model.answers[:] = ["I'd be glad to help! First, what city?", "{\"tools\": [", "Sorry."]
    failed, events = await failure(admin_nc, PlainWords(text="Weather."))
    assert len(local_model.requests) == 3
    assert failed.step == "plan" and failed.detail.startswith(
        f"{MODEL}'s plan was invalid 3 times; last problem: the answer is not a JSON object ("
    )
    assert failed.detail.endswith("it was: 'Sorry.'")
    feedback = local_model.requests[1]["body"]["messages"][-1]["content"]
    assert "the answer is not a JSON object" in feedback and "what city?" in feedback
    assert any("over 3 request(s)" in line for line in lines(events))


async def test_a_server_briefly_away_is_asked_again_with_backoff(local_model: ChatCompletionsApi, admin_nc) -> None:
    local_model.answers[:] = [HttpError(503, "loading model", "server_error"), PLAN]
    plan, _ = await planned(admin_nc, PlainWords(text="Weather."))
    assert [t.name for t in plan.tools] == ["get_forecast", "to_fahrenheit"] and len(local_model.requests) == 2


async def test_a_server_away_through_every_retry_has_the_plan_step_redelivered(
    local_model: ChatCompletionsApi, admin_nc
) -> None:
    busy = HttpError(429, "too many requests", "rate_limit_error")
    local_model.answers[:] = [busy, busy, busy, PLAN]  # the SDK's request and its two retries, then a redelivery
    plan, events = await planned(admin_nc, PlainWords(text="Weather."))
    assert [t.name for t in plan.tools] == ["get_forecast", "to_fahrenheit"] and len(local_model.requests) == 4
    assert not any("did not answer" in line for line in lines(events))


async def test_a_refused_key_fails_naming_the_setting_and_the_key_is_never_shown(
    local_model: ChatCompletionsApi, admin_nc
) -> None:
    local_model.answers[:] = [HttpError(401, f"Incorrect API key provided: {KEY}.", "invalid_api_key")]
    failed, events = await failure(admin_nc, PlainWords(text="Weather."))
    assert len(local_model.requests) == 1  # a refusal is not retried
    assert failed.detail.startswith(f"{MODEL} (") and "refused the planning request: HTTP 401: " in failed.detail
    assert failed.detail.endswith("(check BMMS_LLM_API_KEY)")
    assert KEY not in failed.detail and "[api key]" in failed.detail
    assert_key_never_shown(events)


async def test_an_unknown_model_fails_naming_the_model_setting(
    local_model: ChatCompletionsApi, chat_server: tuple[ChatCompletionsApi, str], admin_nc
) -> None:
    local_model.answers[:] = [HttpError(404, f"model '{MODEL}' not found", "not_found_error")]
    failed, _ = await failure(admin_nc, PlainWords(text="Weather."))
    assert failed.detail.endswith(f"(check BMMS_LLM_MODEL, now '{MODEL}', and BMMS_LLM_BASE_URL, now {chat_server[1]})")


async def test_the_openai_provider_without_a_model_fails_saying_which_setting_to_give(
    stack: Stack, chat_server: tuple[ChatCompletionsApi, str], admin_nc
) -> None:
    async with planner(stack, llm_provider="openai", llm_base_url=chat_server[1]):
        failed, _ = await failure(admin_nc, PlainWords(text="Weather."))
    assert failed.detail == NO_MODEL


async def test_claude_still_plans_when_no_provider_is_set(stack: Stack, admin_nc) -> None:
    environ = {k: v for k, v in stack.env("planner").items() if not k.startswith(("BMMS_LLM_", "BMMS_ANTHROPIC_"))}
    async with messages_server() as (api, url):
        settings = load_settings({
            **environ, "ANTHROPIC_API_KEY": "sk-ant-test", "BMMS_ANTHROPIC_BASE_URL": url,
            "BMMS_ANTHROPIC_MODEL": "claude-test-model", "BMMS_UVLOOP": "false",
        })
        api.answers[:] = [PLAN]
        async with running(create_actor("planner"), settings):
            plan, events = await planned(admin_nc, PlainWords(text="Weather."))
    assert [t.name for t in plan.tools] == ["get_forecast", "to_fahrenheit"]
    [request] = api.requests
    sent_key = request["headers"].get("x-api-key") or request["headers"].get("authorization", "")
    assert sent_key.removeprefix("Bearer ") == "sk-ant-test" and request["body"]["model"] == "claude-test-model"
    assert "planned from plain words by Claude (claude-test-model): 2 tool(s)" in lines(events)


def test_llm_settings_come_first_and_anthropic_settings_fill_in_for_claude() -> None:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("BMMS_", "ANTHROPIC_"))}
    old = model_config(load_settings({**base, "ANTHROPIC_API_KEY": "sk-a", "BMMS_ANTHROPIC_MODEL": "claude-x"}))
    assert (old.provider, old.api_key, old.model, old.base_url) == ("anthropic", "sk-a", "claude-x", None)
    assert old.key_setting == "BMMS_ANTHROPIC_API_KEY (or ANTHROPIC_API_KEY)"
    new = model_config(load_settings({
        **base, "ANTHROPIC_API_KEY": "sk-a", "BMMS_LLM_API_KEY": "sk-b", "BMMS_LLM_MODEL": "claude-y",
        "BMMS_LLM_BASE_URL": "http://proxy.internal", "BMMS_LLM_TIMEOUT": "30",
    }))
    assert (new.api_key, new.model, new.base_url, new.timeout) == ("sk-b", "claude-y", "http://proxy.internal", 30.0)
    assert new.key_setting == "BMMS_LLM_API_KEY" and new.model_setting == "BMMS_LLM_MODEL"
    local = model_config(load_settings({
        **base, "BMMS_LLM_PROVIDER": "openai", "BMMS_LLM_MODEL": "llama3.2",
        "BMMS_LLM_BASE_URL": "http://user:pw@localhost:11434/v1/",
    }))
    assert (local.provider, local.api_key, local.model) == ("openai", None, "llama3.2")
    assert local.shown_url == "http://localhost:11434/v1"  # a password in the URL is never shown
    with pytest.raises(PlanProblem, match=re.escape(NO_KEY)):
        model_config(load_settings(base))
    with pytest.raises(ValueError, match="BMMS_LLM_PROVIDER"):
        load_settings({**base, "BMMS_LLM_PROVIDER": "mistral"})
