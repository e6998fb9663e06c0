"""A rendered plan served by the runner template over Streamable HTTP, driven by the real mcp client."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import msgspec
import pytest
from mcp import Client
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from actors.codegen.artifacts import build_artifact
from bus_schemas.plans import Artifact, HttpCall, PlannedTool
from runner_template import egress
from runner_template.app import MCP_PATH, RunnerSettings, create_app, start_tools
from runner_template.channel import Egress, EgressAuth
from runner_template.sandbox import launcher_for
from runner_template.tools import SandboxedServer, SandboxedTools, ToolsUnavailable, load_for
from tests.runner_template.conftest import serving
from tests.support.codegen_samples import SECRET_NAME, plan_hash, sample_plan

SECRET_VALUE = "s3cr3t-value-never-in-code"


class Upstream:
    """A local upstream API that records what it was sent."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []

    async def user(self, request: Request) -> Response:
        self.requests.append({
            "path": request.url.path, "raw_path": request.scope["raw_path"].decode(),
            "query": dict(request.query_params), "authorization": request.headers.get("authorization"),
            "trace": request.headers.get("x-trace"), "raw_query": request.url.query,
        })
        return JSONResponse({"id": request.path_params["user_id"], "name": "Ada"})

    async def notes(self, request: Request) -> Response:
        body = await request.json()
        self.requests.append({"path": request.url.path, "body": body, "query": dict(request.query_params),
                              "authorization": request.headers.get("authorization")})
        return JSONResponse({"stored": body}, status_code=201)

    async def messages(self, request: Request) -> Response:
        raw = (await request.body()).decode()
        self.requests.append({"path": request.url.path, "content_type": request.headers.get("content-type"),
                              "form": parse_qsl(raw, keep_blank_values=True), "raw": raw})
        return JSONResponse({"sid": "SM1"}, status_code=201)

    async def big(self, request: Request) -> Response:
        return PlainTextResponse("x" * 5000)

    def app(self) -> Starlette:
        return Starlette(routes=[
            Route("/users/{user_id:path}", self.user), Route("/notes", self.notes, methods=["POST"]),
            Route("/messages", self.messages, methods=["POST"]),
            Route("/big", self.big),
        ])


@pytest.fixture
async def upstream_api() -> AsyncIterator[tuple[Upstream, str]]:
    api = Upstream()
    async with serving(api.app()) as url:
        yield api, url


def artifact_for(upstream_url: str) -> Artifact:
    plan = sample_plan(upstream_url)
    return build_artifact(plan, plan_hash(plan))


@contextlib.asynccontextmanager
async def runner(artifact: Artifact, *, hosts: tuple[str, ...] | None = None) -> AsyncIterator[str]:
    """The artifact served by a front in this loop (its module in a bubblewrap sandbox), with the secret in the
    egress policy; yields the MCP URL."""
    env = {f"{egress.SECRET_ENV_PREFIX}{SECRET_NAME}": SECRET_VALUE, egress.ALLOW_PRIVATE_ENV: "1"}
    policy = egress.UpstreamPolicy.from_environment(
        artifact.upstream_hosts if hosts is None else hosts, artifact.secrets, env, timeout_seconds=10,
    )
    settings = RunnerSettings(artifact="-", insecure_no_auth=True)
    tools = await start_tools(settings, artifact, policy)
    try:
        async with serving(create_app(SandboxedServer(tools, name=artifact.module_name))) as base:
            yield base + MCP_PATH
    finally:
        await tools.close()


async def test_generated_tools_list_over_mcp_with_the_plans_names_and_schemas(upstream_api) -> None:
    _, url = upstream_api
    artifact = artifact_for(url)
    plan = sample_plan(url)
    async with runner(artifact) as mcp_url, Client(mcp_url) as client:
        listed = (await client.list_tools()).tools
    assert [t.name for t in listed] == [t.name for t in plan.tools] == list(artifact.tools)
    for tool, planned in zip(listed, plan.tools, strict=True):
        assert tool.title == planned.title
        assert tool.description == planned.description
        assert tool.annotations is not None and tool.annotations.read_only_hint is planned.read_only
        # what a model receives is the plan's schema itself, not the generated signature's weaker one
        assert tool.input_schema == planned.input_schema


NOTE_SCHEMA = {
    "type": "object",
    "properties": {
        "note": {
            "type": "object", "description": "The note",
            "properties": {
                "text": {"type": "string", "minLength": 1},
                "status": {"type": "string", "enum": ["open", "done"]},
                "photoUrls": {"type": "array", "items": {"type": "string"}},
            },
            "required": ["text", "photoUrls"],
        },
        "kind": {"type": "string", "enum": ["text", "todo"]},
    },
    "required": ["note"],
}


def artifact_with_note_schema(url: str) -> Artifact:
    """The sample plan with `create_note`'s body described field by field, as an OpenAPI body would be."""
    plan = sample_plan(url)
    tools = tuple(msgspec.structs.replace(t, input_schema=NOTE_SCHEMA) if t.name == "create_note" else t
                  for t in plan.tools)
    plan = msgspec.structs.replace(plan, tools=tools)
    return build_artifact(plan, plan_hash(plan))


async def test_a_nested_body_schema_is_served_whole_and_wrong_arguments_never_reach_the_upstream(
    upstream_api: tuple[Upstream, str],
) -> None:
    api, url = upstream_api
    async with runner(artifact_with_note_schema(url)) as mcp_url, Client(mcp_url) as client:
        listed = {t.name: t for t in (await client.list_tools()).tools}
        assert listed["create_note"].input_schema == NOTE_SCHEMA
        wrong = {
            "a nested required field missing": ({"note": {"text": "hi"}}, "note: 'photoUrls' is a required property"),
            "a value outside the enum": ({"note": {"text": "hi", "photoUrls": [], "status": "lost"}},
                                         "note/status: 'lost' is not one of ['open', 'done']"),
            "a wrong type deep down": ({"note": {"text": "hi", "photoUrls": [3]}},
                                       "note/photoUrls/0: 3 is not of type"),
            "an argument the tool does not take": ({"note": {"text": "hi", "photoUrls": []}, "notes": "x"},
                                                   "'notes' was unexpected"),
        }
        for case, (arguments, expected) in wrong.items():
            refused = await client.call_tool("create_note", arguments)
            assert refused.is_error, case
            text = refused.content[0].text  # type: ignore[union-attr]
            assert text.startswith("invalid arguments for create_note: ") and expected in text, (case, text)
        assert api.requests == []  # none of them reached the upstream
        created = await client.call_tool("create_note", {"note": {"text": "hi", "photoUrls": ["u"], "status": "open"},
                                                         "kind": "todo"})
    assert not created.is_error, created
    assert api.requests[-1]["body"] == {"text": "hi", "photoUrls": ["u"], "status": "open"}


@pytest.mark.parametrize(("body", "value"), [
    ("return [{'a': a}, {'b': b}]", [{"a": 2}, {"b": 3}]),
    ("return []", []),
    ("return a + b", 5),
    ("return {'sum': a + b, 'parts': [a, b]}", {"sum": 5, "parts": [2, 3]}),
])
async def test_a_json_result_is_one_text_block_and_the_same_structured_content(
    upstream_api: tuple[Upstream, str], body: str, value: object,
) -> None:
    _, url = upstream_api
    plan = sample_plan(url, add_body=body)
    async with runner(build_artifact(plan, plan_hash(plan))) as mcp_url, Client(mcp_url) as client:
        result = await client.call_tool("add", {"a": 2, "b": 3})
    assert not result.is_error, result
    (block,) = result.content  # an array is one result, not a block per element; an empty one is not nothing
    assert json.loads(block.text) == value  # type: ignore[union-attr]
    assert result.structured_content == (value if isinstance(value, dict) else {"result": value})


MESSAGE_SCHEMA = {
    "type": "object",
    "properties": {
        "body": {
            "type": "object",
            "properties": {"To": {"type": "string"}, "Body": {"type": "string"},
                           "MediaUrl": {"type": "array", "items": {"type": "string"}},
                           "Attempt": {"type": "integer"}},
            "required": ["To", "Body"],
        },
    },
    "required": ["body"],
}


async def test_a_form_encoded_body_reaches_the_upstream_as_form_fields(upstream_api: tuple[Upstream, str]) -> None:
    api, url = upstream_api
    plan = sample_plan(url)
    send = PlannedTool(
        name="send_message", title="Send a message", description="Send an SMS.", read_only=False,
        input_schema=MESSAGE_SCHEMA,
        implementation=HttpCall(method="POST", base_url=url, path="/messages", body_param="body",
                                body_encoding="form"),
    )
    plan = msgspec.structs.replace(plan, tools=(*plan.tools, send))
    async with runner(build_artifact(plan, plan_hash(plan))) as mcp_url, Client(mcp_url) as client:
        sent = await client.call_tool("send_message", {"body": {"To": "+15550100", "Body": "hi & bye",
                                                                "MediaUrl": ["https://a/1", "https://a/2"],
                                                                "Attempt": 2}})
    assert not sent.is_error, sent
    (request,) = api.requests
    assert request["content_type"] == "application/x-www-form-urlencoded"
    assert request["form"] == [("To", "+15550100"), ("Body", "hi & bye"), ("MediaUrl", "https://a/1"),
                               ("MediaUrl", "https://a/2"), ("Attempt", "2")]
    assert sent.structured_content == {"sid": "SM1"}


async def test_query_parameters_are_written_in_their_openapi_style(upstream_api: tuple[Upstream, str]) -> None:
    api, url = upstream_api
    plan = sample_plan(url)
    schema = {"type": "object", "properties": {
        "user-id": {"type": "string"},
        "type": {"type": "array", "items": {"type": "string"}},
        "ids": {"type": "array", "items": {"type": "integer"}},
        "tags": {"type": "array", "items": {"type": "string"}},
        "filter": {"type": "object"},
        "plain": {"type": "array", "items": {"type": "string"}},
        "DateSent_before": {"type": "string"},
    }, "required": ["user-id"]}
    styled = PlannedTool(
        name="styled", title="Styled", description="Query styles.", read_only=True, input_schema=schema,
        implementation=HttpCall(method="GET", base_url=url, path="/users/{user-id}", path_params=("user-id",),
                                query_params=("type", "ids", "tags", "filter", "plain", "DateSent_before"),
                                query_styles={"type": "form_joined", "ids": "pipe_delimited",
                                              "tags": "space_delimited", "filter": "deep_object"},
                                wire_names={"DateSent_before": "DateSent<"}),
    )
    plan = msgspec.structs.replace(plan, tools=(*plan.tools, styled))
    async with runner(build_artifact(plan, plan_hash(plan))) as mcp_url, Client(mcp_url) as client:
        answer = await client.call_tool("styled", {"user-id": "u1", "type": ["album", "track"], "ids": [1, 2],
                                                   "tags": ["a", "b"], "filter": {"state": "open", "n": 3},
                                                   "plain": ["x", "y"], "DateSent_before": "2026-12-01"})
    assert not answer.is_error, answer
    (request,) = api.requests
    assert parse_qsl(request["raw_query"]) == [
        ("type", "album,track"), ("ids", "1|2"), ("tags", "a b"), ("filter[state]", "open"), ("filter[n]", "3"),
        ("plain", "x"), ("plain", "y"), ("DateSent<", "2026-12-01"),
    ]


async def test_pure_tools_are_callable_and_return_their_value(upstream_api) -> None:
    _, url = upstream_api
    async with runner(artifact_for(url)) as mcp_url, Client(mcp_url) as client:
        added = await client.call_tool("add", {"a": 2, "b": 3.5})
        words = await client.call_tool("list", {"text": "hello mcp world", "upper": True})
        refused = await client.call_tool("add", {"a": "two", "b": 1})
    assert not added.is_error and added.content[0].text == "5.5"  # type: ignore[union-attr]
    assert json.loads(words.content[0].text) == {"words": ["HELLO", "MCP", "WORLD"], "count": 3}  # type: ignore[union-attr]
    assert refused.is_error


async def test_http_tool_calls_upstream_with_the_secret_from_the_environment_as_bearer(upstream_api) -> None:
    api, url = upstream_api
    async with runner(artifact_for(url)) as mcp_url, Client(mcp_url) as client:
        got = await client.call_tool("get_user", {"user-id": "a/b?c", "from": 3, "verbose": True, "X-Trace": "t1"})
        created = await client.call_tool("create_note", {"note": {"text": "hi"}, "kind": "todo"})
    assert not got.is_error, got
    assert json.loads(got.content[0].text) == {"id": "a/b?c", "name": "Ada"}  # type: ignore[union-attr]
    first = api.requests[0]
    assert first["raw_path"] == "/users/a%2Fb%3Fc"  # a path value cannot change the path's shape
    assert first["query"] == {"from": "3", "verbose": "true"}
    assert first["authorization"] == f"Bearer {SECRET_VALUE}"
    assert first["trace"] == "t1"
    assert not created.is_error
    assert api.requests[1]["body"] == {"text": "hi"} and api.requests[1]["query"] == {"kind": "todo"}
    assert api.requests[1]["authorization"] == f"Bearer {SECRET_VALUE}"


async def test_http_tool_refuses_a_host_not_in_the_plan(upstream_api) -> None:
    api, url = upstream_api
    async with runner(artifact_for(url), hosts=("api.example.com",)) as mcp_url, Client(mcp_url) as client:
        result = await client.call_tool("get_user", {"user-id": "1"})
    assert result.is_error
    assert "not one of this server's upstream hosts" in result.content[0].text  # type: ignore[union-attr]
    assert SECRET_VALUE not in result.content[0].text  # type: ignore[union-attr]
    assert api.requests == []


def egress_call(method: str, url_template: str, **fields: Any) -> Egress:
    """An upstream request as a worker asks the front for it."""
    return Egress(id=1, call_id=1, method=method, url_template=url_template, **fields)


async def test_upstream_refuses_undeclared_secrets_other_hosts_and_oversized_answers(upstream_api) -> None:
    _, url = upstream_api
    host = url.split("//", 1)[1]
    policy = egress.UpstreamPolicy(hosts=frozenset({host}), secrets={"KNOWN": "v"}, max_response_bytes=1000,
                                   allow_private=True)
    with pytest.raises(egress.UpstreamRefused, match="not one of this server's upstream hosts"):
        await egress.perform(policy, egress_call("GET", "http://localhost:1/x"))
    with pytest.raises(egress.UpstreamRefused, match="secret OTHER is not configured"):
        other = EgressAuth(kind="bearer", secret="OTHER")
        await egress.perform(policy, egress_call("GET", url + "/users/1", auth=other))
    with pytest.raises(egress.UpstreamError, match="over the 1000 byte limit"):
        await egress.perform(policy, egress_call("GET", url + "/big"))
    with pytest.raises(egress.UpstreamRefused, match="not an HTTP method"):
        await egress.perform(policy, egress_call("CONNECT", url + "/big"))
    answer = await egress.perform(policy, egress_call("GET", url + "/users/{id}", path={"id": "7"}))
    assert answer == {"id": "7", "name": "Ada"}


async def test_runner_process_serves_an_artifact_file(upstream_api, tmp_path: Path) -> None:
    _, url = upstream_api
    artifact = artifact_for(url)
    path = tmp_path / "artifact.json"
    path.write_bytes(msgspec.json.encode(artifact))
    env = {**os.environ, "BMMS_RUNNER_ARTIFACT": str(path), "BMMS_RUNNER_PORT": "0",
           "BMMS_RUNNER_INSECURE_NO_AUTH": "1", f"{egress.SECRET_ENV_PREFIX}{SECRET_NAME}": SECRET_VALUE,
           egress.ALLOW_PRIVATE_ENV: "1"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "runner_template", env=env, stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), timeout=30)).decode().strip()
        assert line.startswith("runner listening on http://127.0.0.1:"), line
        mcp_url = line.rsplit(" ", 1)[1]
        async with Client(mcp_url) as client:
            names = [t.name for t in (await client.list_tools()).tools]
            got = await client.call_tool("get_user", {"user-id": "9"})
        assert names == list(artifact.tools)
        assert json.loads(got.content[0].text)["id"] == "9"  # type: ignore[union-attr]
    finally:
        proc.terminate()
        await asyncio.wait_for(proc.wait(), timeout=15)


async def test_upstream_hosts_on_private_addresses_are_refused_unless_allowed(upstream_api) -> None:
    _, url = upstream_api  # a real API on 127.0.0.1
    host = url.split("//", 1)[1]
    policy = egress.UpstreamPolicy(hosts=frozenset({host, "169.254.169.254"}))
    with pytest.raises(egress.UpstreamRefused, match="non-public address"):
        await egress.perform(policy, egress_call("GET", f"http://{host}/items/{{id}}", path={"id": "1"}))
    with pytest.raises(egress.UpstreamRefused, match="non-public address"):
        await egress.perform(policy, egress_call("GET", "http://169.254.169.254/latest/meta-data"))
    allowed = egress.UpstreamPolicy.from_environment((host,), (), {egress.ALLOW_PRIVATE_ENV: "1"})
    with contextlib.suppress(egress.UpstreamError):  # reached (whether it knows the path or not)
        await egress.perform(allowed, egress_call("GET", f"http://{host}/items/{{id}}", path={"id": "1"}))


def test_a_tool_whose_planned_schema_is_not_a_json_schema_stops_the_runner_naming_it() -> None:
    artifact = artifact_with_note_schema("http://127.0.0.1:9")
    broken = msgspec.structs.replace(artifact, input_schemas={**artifact.input_schemas,
                                                              "create_note": {"type": "nothing"}})
    with pytest.raises(ToolsUnavailable, match="tool 'create_note': its input schema is not a valid JSON Schema"):
        SandboxedTools(launcher_for("unsandboxed", "t"), load_for(broken), None, input_schemas=broken.input_schemas)
