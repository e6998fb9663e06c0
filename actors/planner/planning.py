"""The plan step: from a build request to a stored, content-addressed tool plan.

`plan_request` turns any source into a ToolPlan; `finish_plan` adds what every plan carries (injection
flags, the tool list's size); `store_plan` puts it in the PLANS object store under its hash.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import msgspec
import nats.js.errors
from nats.js import JetStreamContext

from actors.planner.chat_completions import ChatConversation
from actors.planner.claude import ClaudeConversation
from actors.planner.llm import Conversation, ModelConfig, model_config, plan_plain_words
from actors.planner.openapi import plan_openapi
from actors.planner.problems import PlanNotes, PlanProblem
from actors.planner.tool_spec import plan_tool_spec
from actors.runtime.fetch import FetchRefused, fetch_document
from actors.runtime.injection import injection_markers, scan
from actors.runtime.settings import Settings
from bus_schemas.builds import BuildRequested, OpenApiSource, PlainWords, ToolSpecSource
from bus_schemas.plans import HttpCall, PlanFlag, PlannedTool, PureFunction, ToolPlan, canonical_plan_bytes
from bus_schemas.registry import PLANS
from runner_template.sdk import ToolInfo
from runner_template.server import tool_annotations

MAX_INJECTION_FLAGS = 20
"""Flags kept per plan; a document full of markers gets a count instead of hundreds of flags."""

_json = msgspec.json.Encoder(order="sorted")


async def plan_request(event: BuildRequested, settings: Settings, notes: PlanNotes) -> ToolPlan:
    """The plan of one build request; PlanProblem says what in the request stops it."""
    source = event.source
    if isinstance(source, OpenApiSource):
        if (source.document is None) == (source.url is None):
            raise PlanProblem("OpenAPI source: send exactly one of `document` (inline) or `url`")
        text, document_url = source.document, None
        if source.url is not None:
            try:
                document_url, body = await fetch_document(
                    source.url, allow_private=settings.planner_allow_private_fetch
                )
            except FetchRefused as exc:
                raise PlanProblem(f"OpenAPI url: {exc}") from None
            notes.info(f"fetched the OpenAPI document: {len(body):,} bytes from {document_url}")
            try:
                text = body.decode("utf-8")
            except UnicodeDecodeError:
                raise PlanProblem(f"OpenAPI url: {document_url} did not answer UTF-8 text") from None
        assert text is not None
        return plan_openapi(text, source, event.name, notes, document_url)
    if isinstance(source, ToolSpecSource):
        return plan_tool_spec(source, event.name, notes)
    assert isinstance(source, PlainWords)
    config = model_config(settings)
    for reason in injection_markers(source.text):
        notes.flag(PlanFlag(kind="prompt_injection", detail=f"the request's text {reason}"))
        notes.warn(f"possible prompt injection in the request's text: {reason}")
    return await plan_plain_words(source.text, event.name, conversation(config, notes), notes)


def conversation(config: ModelConfig, notes: PlanNotes) -> Conversation:
    """A planning conversation with the configured provider's model."""
    if config.provider == "openai":
        return ChatConversation(config, notes)
    return ClaudeConversation(config)


def tool_list(plan: ToolPlan) -> list[dict[str, Any]]:
    """The plan's tools as an MCP client's `tools/list` shows them (what a model reads on every request)."""
    return [
        {"name": t.name, "title": t.title, "description": t.description, "inputSchema": t.input_schema,
         **({"outputSchema": t.output_schema} if t.output_schema is not None else {}),
         "annotations": served_annotations(t)}
        for t in plan.tools
    ]


def served_annotations(tool: PlannedTool) -> dict[str, Any]:
    """The tool's MCP annotations as its runner serves them (`runner_template.server.tool_annotations`; codegen
    marks a tool that calls upstream as open-world)."""
    info = ToolInfo(name=tool.name, title=tool.title, read_only=tool.read_only,
                    open_world=isinstance(tool.implementation, HttpCall))
    annotations: dict[str, Any] = tool_annotations(info).model_dump(by_alias=True, exclude_none=True)
    return annotations


def estimate_tokens(plan: ToolPlan) -> int:
    """An estimate of the tool list's size in model tokens: its JSON length / 4 (no tokenizer is run)."""
    return -(-len(_json.encode(tool_list(plan))) // 4)


TOKEN_BUDGET = 10_000
"""Default size (estimated model tokens) above which a plan's tool list is flagged (`planner_token_budget`)."""


def tool_tokens(tool: dict[str, Any]) -> int:
    """One entry of the tool list, in estimated model tokens (JSON length / 4)."""
    return -(-len(_json.encode(tool)) // 4)


def flag_size(plan: ToolPlan, tokens: int, budget: int, notes: PlanNotes) -> None:
    """Say so when the served tool list is over `budget`: its size, its heaviest tools, and how to choose."""
    if tokens <= budget:
        return
    heaviest = sorted(tool_list(plan), key=tool_tokens, reverse=True)[:5]
    named = ", ".join(f"{t['name']} (~{tool_tokens(t):,})" for t in heaviest)
    detail = (f"the tool list is ~{tokens:,} tokens, over the {budget:,} budget: a model reads all of it on every "
              f"request. Heaviest: {named}. Choose a subset with `operations` or `tags` (OpenAPI), or fewer tools"
              + suggested_tags(plan, budget))
    notes.flag(PlanFlag(kind="token_budget", detail=detail))
    notes.warn(detail)


def suggested_tags(plan: ToolPlan, budget: int) -> str:
    """A subset of whole tags whose tools fit `budget` (smallest tags first, as many as fit), with each tag's
    size, as a sentence; empty when the tools have no tags."""
    sizes: dict[str, int] = {}
    counts: dict[str, int] = {}
    for tool, listed in zip(plan.tools, tool_list(plan), strict=True):
        for tag in tool.tags:
            sizes[tag] = sizes.get(tag, 0) + tool_tokens(listed)
            counts[tag] = counts.get(tag, 0) + 1
    if not sizes:
        return ""
    chosen: list[str] = []
    total = 0
    for tag in sorted(sizes, key=lambda t: (sizes[t], t)):
        if total + sizes[tag] <= budget:
            chosen.append(tag)
            total += sizes[tag]
    by_size = sorted(sizes, key=lambda t: (-sizes[t], t))
    named = ", ".join(f"{t} ~{sizes[t]:,} ({counts[t]} tools)" for t in by_size[:8])
    more = f" and {len(by_size) - 8} more" if len(by_size) > 8 else ""
    fits = f'. For example `"tags": {json.dumps(chosen)}` fits (~{total:,})' if chosen else ""
    return f". By tag: {named}{more}{fits}"


def finish_plan(plan: ToolPlan, notes: PlanNotes, token_budget: int = TOKEN_BUDGET) -> ToolPlan:
    """The plan with its prompt-injection flags, its size flag, every note's flag and its tool list size."""
    hits: list[tuple[str, str]] = []
    for tool in plan.tools:
        fields: dict[str, Any] = {
            "title": tool.title, "description": tool.description, "input_schema": tool.input_schema
        }
        if isinstance(tool.implementation, PureFunction):
            fields["body"] = tool.implementation.body
        hits.extend(scan(fields, f"tool {tool.name}"))
    for where, reason in hits[:MAX_INJECTION_FLAGS]:
        notes.flag(PlanFlag(kind="prompt_injection", detail=f"{where}: {reason}"))
        notes.warn(f"possible prompt injection in {where}: {reason}")
    if len(hits) > MAX_INJECTION_FLAGS:
        extra = len(hits) - MAX_INJECTION_FLAGS
        notes.flag(PlanFlag(kind="prompt_injection", detail=f"{extra} more marker(s) not listed"))
        notes.warn(f"{extra} more possible prompt-injection marker(s) not listed")
    tokens = estimate_tokens(plan)
    flag_size(plan, tokens, token_budget, notes)
    return msgspec.structs.replace(plan, flags=tuple(notes.flags), tool_list_tokens=tokens)


def plan_hash(plan: ToolPlan) -> str:
    """The plan's content address: SHA-256 hex of its canonical bytes."""
    return hashlib.sha256(canonical_plan_bytes(plan)).hexdigest()


async def store_plan(js: JetStreamContext, plan: ToolPlan) -> str:
    """Put the plan in the PLANS object store under its hash (once: equal plans are one object)."""
    data = canonical_plan_bytes(plan)
    digest = hashlib.sha256(data).hexdigest()
    store = await js.object_store(PLANS.name)
    try:
        await store.get_info(digest)
        return digest
    except nats.js.errors.ObjectNotFoundError:
        pass
    await store.put(digest, data)
    return digest
