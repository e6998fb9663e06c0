"""Real public OpenAPI documents (tests/fixtures/openapi, sources and licences in SOURCES.md) go all the way:
planned, generated, checked, and served by a worker with the plan's schemas; no operation, parameter or body of
theirs is lost without a flag saying so."""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml

from actors.checker.handlers import check_artifact
from actors.checker.rules import errors
from actors.checker.toolchain import Toolchain
from actors.codegen.artifacts import build_artifact
from actors.planner.openapi import (
    _DROPPED_HEADERS,
    MAX_OUTPUT_SCHEMA,
    MODEL_SAFE_NAME,
    output_schema,
    param_style,
    plan_openapi,
)
from actors.planner.planning import TOKEN_BUDGET, finish_plan, plan_hash
from actors.planner.problems import PlanNotes, PlanProblem
from bus_schemas.builds import OpenApiSource
from bus_schemas.plans import HttpCall, ToolPlan
from runner_template.app import RunnerSettings, start_tools
from runner_template.upstream import wire_value
from tests.support.planning_helpers import FIXTURES

DOCUMENTS = FIXTURES / "openapi"
PLANNED = ["oai_petstore_expanded", "oai_uspto", "swagger_petstore", "spotify_web_api", "twilio_api_v2010", "openai"]
METHODS = ("get", "put", "post", "delete", "patch", "head", "options", "trace")


def text_of(name: str) -> str:
    return (DOCUMENTS / f"{name}.yaml").read_text()


def plan_of(name: str) -> ToolPlan:
    text = text_of(name)
    notes = PlanNotes()
    return finish_plan(plan_openapi(text, OpenApiSource(document=text), name, notes), notes)


@pytest.mark.parametrize("name", PLANNED)
async def test_a_real_document_is_planned_generated_checked_and_served_with_the_plans_schemas(
    name: str, toolchain: Toolchain
) -> None:
    plan = plan_of(name)
    artifact = build_artifact(plan, plan_hash(plan))
    findings = await check_artifact(artifact, toolchain)
    assert not errors(findings), [f.render() for f in errors(findings)][:5]
    tools = await start_tools(RunnerSettings(artifact="-", insecure_no_auth=True), artifact, None)
    try:
        served = {t.name: (t.input_schema, t.output_schema) for t in tools.tools}
    finally:
        await tools.close()
    assert list(served) == [t.name for t in plan.tools]
    for planned in plan.tools:
        assert served[planned.name] == (planned.input_schema, planned.output_schema), planned.name


def _resolved(doc: dict[str, Any], node: Any) -> Any:
    while isinstance(node, dict) and "$ref" in node:
        target: Any = doc
        for part in node["$ref"].removeprefix("#/").split("/"):
            target = target[part.replace("~1", "/").replace("~0", "~")]
        node = target
    return node


def lost_without_a_flag(doc: dict[str, Any], plan: ToolPlan) -> list[str]:
    """Every operation, parameter and request body of `doc` that `plan` neither carries nor flags."""
    flagged = " ".join(flag.detail for flag in plan.flags)
    cut = any(flag.kind == "truncated" and "tools cut" in flag.detail for flag in plan.flags)
    calls = {(t.implementation.method, t.implementation.path): t.implementation
             for t in plan.tools if isinstance(t.implementation, HttpCall)}
    lost = []
    for path, item in (doc.get("paths") or {}).items():
        item = _resolved(doc, item)
        for method in (m for m in METHODS if m in item):
            operation, label = item[method], f"{method.upper()} {path}"
            call = calls.get((method.upper(), path))
            if label in flagged or (call is None and cut):
                continue
            if call is None:
                lost.append(f"{label}: the operation")
                continue
            placed = {call.wire_names.get(p, p)
                      for p in (*call.path_params, *call.query_params, *call.header_params, *call.cookie_params)}
            declared = [*item.get("parameters", []), *operation.get("parameters", [])]
            for parameter in (_resolved(doc, p) for p in declared):
                if parameter.get("in") == "header" and parameter["name"].lower() in _DROPPED_HEADERS:
                    continue  # set by the runner itself (auth, content negotiation)
                if parameter["name"] not in placed:
                    lost.append(f"{label}: {parameter.get('in')} parameter {parameter['name']}")
            if "requestBody" in operation and call.body_param is None:
                lost.append(f"{label}: its request body")
    return lost


@pytest.mark.parametrize("name", PLANNED)
def test_no_operation_parameter_or_body_of_a_real_document_is_lost_without_a_flag(name: str) -> None:
    doc = yaml.safe_load(text_of(name))
    assert lost_without_a_flag(doc, plan_of(name)) == []


def test_form_encoded_bodies_are_planned_as_form_fields() -> None:
    plan = plan_of("twilio_api_v2010")
    create_message = next(t for t in plan.tools if t.name == "create_message")
    assert isinstance(create_message.implementation, HttpCall)
    assert create_message.implementation.body_encoding == "form"
    body = create_message.input_schema["properties"][create_message.implementation.body_param or ""]
    assert {"To", "Body", "From"} <= set(body["properties"]) and "To" in body["required"]
    form_tools = [t.name for t in plan.tools
                  if isinstance(t.implementation, HttpCall) and t.implementation.body_encoding == "form"]
    assert len(form_tools) == 62  # every form-bodied operation of the document


@pytest.mark.parametrize(("name", "why"), [
    ("oai_link_example", "no server URL in the document; send base_url"),
    ("oai_webhook_example_v31", "an API without paths has no operations"),
])
def test_a_real_document_that_cannot_be_planned_says_why(name: str, why: str) -> None:
    with pytest.raises(PlanProblem, match=why):
        plan_of(name)


def test_query_styles_are_planned_as_the_document_says() -> None:
    plan = plan_of("spotify_web_api")
    search = next(t for t in plan.tools
                  if isinstance(t.implementation, HttpCall) and t.implementation.path == "/search")
    assert isinstance(search.implementation, HttpCall)
    assert search.implementation.query_styles == {"type": "form_joined"}  # style: form, explode: false
    assert all(style in ("form_joined", "space_delimited", "pipe_delimited", "deep_object")
               for t in plan.tools if isinstance(t.implementation, HttpCall)
               for style in t.implementation.query_styles.values())
    openai = plan_of("openai")
    assert any("deep_object" in t.implementation.query_styles.values()
               for t in openai.tools if isinstance(t.implementation, HttpCall))


@pytest.mark.parametrize("name", PLANNED)
def test_every_tool_and_property_name_of_a_real_document_is_one_every_model_api_accepts(name: str) -> None:
    plan = plan_of(name)
    names = [t.name for t in plan.tools]
    assert len(set(names)) == len(names) and all(MODEL_SAFE_NAME.match(n) for n in names)
    for tool in plan.tools:
        assert all(MODEL_SAFE_NAME.match(p) for p in tool.input_schema.get("properties", {})), tool.name


def test_a_wire_name_a_model_would_refuse_is_served_as_one_it_accepts_and_sent_by_its_own_name() -> None:
    plan = plan_of("twilio_api_v2010")
    listing = next(t for t in plan.tools if t.name == "list_message")
    assert isinstance(listing.implementation, HttpCall)
    assert listing.implementation.wire_names["DateSent_before"] == "DateSent<"
    assert listing.implementation.wire_names["DateSent_after"] == "DateSent>"
    assert "(sent as 'DateSent<')" in listing.input_schema["properties"]["DateSent_before"]["description"]


def test_a_tool_list_over_the_token_budget_is_flagged_naming_its_heaviest_tools() -> None:
    plan = plan_of("twilio_api_v2010")
    (flag,) = [f for f in plan.flags if f.kind == "token_budget"]
    assert f"~{plan.tool_list_tokens:,} tokens, over the 10,000 budget" in flag.detail
    assert "Heaviest: " in flag.detail and "`operations` or `tags`" in flag.detail
    assert not [f for f in plan_of("swagger_petstore").flags if f.kind == "token_budget"]  # ~2,300 tokens


def test_a_renamed_parameter_never_takes_the_name_of_another() -> None:
    document = yaml.safe_dump({
        "openapi": "3.0.3", "info": {"title": "t", "version": "1"}, "servers": [{"url": "https://api.example.com"}],
        "paths": {"/items": {"get": {"operationId": "list_items", "parameters": [
            {"name": "ids[]", "in": "query", "schema": {"type": "array", "items": {"type": "string"}}},
            {"name": "ids", "in": "query", "schema": {"type": "string"}},
        ], "responses": {"200": {"description": "ok"}}}}},
    })
    notes = PlanNotes()
    (tool,) = plan_openapi(document, OpenApiSource(document=document), "t", notes).tools
    assert isinstance(tool.implementation, HttpCall)
    sent_as = {p: tool.implementation.wire_names.get(p, p) for p in tool.input_schema["properties"]}
    assert sorted(sent_as.values()) == ["ids", "ids[]"] and len(set(sent_as)) == 2


def test_documented_responses_are_served_as_output_schemas_that_fit() -> None:
    plan = plan_of("swagger_petstore")
    tools = {t.name: t for t in plan.tools}
    pet = tools["get_pet_by_id"].output_schema
    assert pet is not None and pet["type"] == "object"
    assert pet["properties"]["name"]["type"] == ["string", "null"] and "required" not in pet
    assert "available" in pet["properties"]["status"]["description"] and "enum" not in pet["properties"]["status"]
    found = tools["find_pets_by_status"].output_schema  # an array answer goes under `result`
    assert found is not None and found["required"] == ["result"]
    assert found["properties"]["result"]["type"] == ["array", "null"]
    for name in ("spotify_web_api", "openai"):  # response schemas of 80,000 tokens are summarised to fit
        sizes = [len(json.dumps(t.output_schema)) for t in plan_of(name).tools if t.output_schema is not None]
        assert sizes and max(sizes) <= MAX_OUTPUT_SCHEMA


def test_output_schemas_summarise_deep_levels_and_give_up_only_when_the_top_is_too_large() -> None:
    deep = {"type": "object", "properties": {"a": {"type": "object", "description": "level one", "properties": {
        "b": {"type": "object", "properties": {"c": {"type": "string", "enum": ["x"]}}}}}}}
    assert output_schema(deep)["properties"]["a"]["properties"]["b"]["properties"]["c"]["type"] == ["string", "null"]
    small = output_schema(deep, max_chars=120)
    assert small == {"type": "object", "properties": {"a": {"type": ["object", "null"], "description": "level one"}}}
    wide = {"type": "object", "properties": {f"field_{i}": {"type": "string"} for i in range(400)}}
    assert output_schema(wide) is None
    notes = PlanNotes()
    document = json.dumps({"openapi": "3.0.3", "info": {"title": "t", "version": "1"},
                           "servers": [{"url": "https://api.example.com"}],
                           "paths": {"/wide": {"get": {"responses": {"200": {"description": "wide", "content": {
                               "application/json": {"schema": wide}}}}}}}})
    plan = plan_openapi(document, OpenApiSource(document=document), "wide", notes)
    assert plan.tools[0].output_schema is None
    assert any("without an output schema" in f.detail and "GET /wide" in f.detail for f in plan.flags)


@pytest.mark.parametrize(("location", "param", "style"), [
    ("path", {}, None), ("path", {"style": "label", "explode": True}, "label_exploded"),
    ("path", {"style": "matrix"}, "matrix"), ("header", {"explode": True}, "simple_exploded"),
    ("cookie", {}, None), ("cookie", {"explode": False}, "form_joined"),
])
def test_path_header_and_cookie_styles_are_planned_from_style_and_explode(
    location: str, param: dict[str, Any], style: str | None
) -> None:
    assert param_style(location, param) == style


def test_a_style_a_location_cannot_have_skips_its_operation_and_says_why() -> None:
    document = json.dumps({"openapi": "3.0.3", "info": {"title": "t", "version": "1"},
                           "servers": [{"url": "https://api.example.com"}],
                           "paths": {"/a": {"get": {"operationId": "listA", "parameters": [
                               {"name": "X-Ids", "in": "header", "style": "form", "schema": {"type": "array"}}],
                               "responses": {"200": {"description": "ok"}}}},
                               "/b": {"get": {"operationId": "listB", "responses": {"200": {"description": "ok"}}}}}})
    notes = PlanNotes()
    plan = plan_openapi(document, OpenApiSource(document=document), "styles", notes)
    assert [t.name for t in plan.tools] == ["list_b"] and plan.tools[0].title == "List b"
    assert any(f.kind == "skipped_operation" and "header parameter 'X-Ids': style 'form'" in f.detail
               for f in plan.flags)


def test_a_tool_list_over_the_budget_is_flagged_with_a_tag_subset_that_fits() -> None:
    (flag,) = [f for f in plan_of("spotify_web_api").flags if f.kind == "token_budget"]
    assert "By tag: Tracks ~" in flag.detail
    tags = json.loads(flag.detail.split('`"tags": ')[1].split("`")[0])
    text = text_of("spotify_web_api")
    notes = PlanNotes()
    chosen = finish_plan(plan_openapi(text, OpenApiSource(document=text, tags=tags), "spotify", notes), notes)
    assert 0 < chosen.tool_list_tokens <= TOKEN_BUDGET
    assert not [f for f in chosen.flags if f.kind == "token_budget"]


def test_nested_property_names_a_model_api_may_refuse_are_served_renamed_and_mapped_back() -> None:
    document = json.dumps({"openapi": "3.0.3", "info": {"title": "t", "version": "1"},
                           "servers": [{"url": "https://api.example.com"}],
                           "paths": {"/a": {"post": {"operationId": "postA", "parameters": [
                               {"name": "filter", "in": "query", "style": "deepObject", "schema": {
                                   "type": "object", "properties": {"created<": {"type": "string"}}}}],
                               "requestBody": {"content": {"application/json": {"schema": {
                                   "type": "object", "required": ["tags[]"], "properties": {
                                       "tags[]": {"type": "array", "items": {"type": "string"}},
                                       "meta": {"type": "object", "properties": {"a b": {"type": "string"}}},
                                       "rows": {"type": "array", "items": {"anyOf": [
                                           {"type": "object", "properties": {"x>": {"type": "integer"}}},
                                           {"type": "object", "properties": {"y y": {"type": "integer"}}}]}}}}}}},
                               "responses": {"200": {"description": "ok"}}}}}})
    plan = plan_openapi(document, OpenApiSource(document=document), "names", PlanNotes())
    (tool,) = plan.tools
    body = tool.input_schema["properties"]["body"]
    assert body["required"] == ["tags"] and set(body["properties"]) == {"tags", "meta", "rows"}
    assert body["properties"]["tags"]["description"] == "(sent as 'tags[]')"
    assert set(body["properties"]["meta"]["properties"]) == {"a_b"}
    assert isinstance(tool.implementation, HttpCall)
    assert tool.implementation.body_renames == {
        "rename": {"tags": "tags[]"},
        "fields": {"meta": {"rename": {"a_b": "a b"}}, "rows": {"items": {"rename": {"x_after": "x>", "y_y": "y y"}}}},
    }
    assert wire_value({"tags": ["t"], "meta": {"a_b": 1}, "rows": [{"x_after": 1}, {"y_y": 2}]},
                      tool.implementation.body_renames) == {
        "tags[]": ["t"], "meta": {"a b": 1}, "rows": [{"x>": 1}, {"y y": 2}]}
    # a parameter's object fields too (a deepObject filter), by the parameter's wire name
    assert tool.implementation.param_renames == {"filter": {"rename": {"created_before": "created<"}}}
    assert set(tool.input_schema["properties"]["filter"]["properties"]) == {"created_before"}
    assert not any("nested property" in f.detail for f in plan.flags)
    assert all(MODEL_SAFE_NAME.match(name) for t in plan_of("openai").tools for name in property_names(t.input_schema))


def property_names(schema: Any) -> list[str]:
    """Every property name in `schema`, at any depth."""
    if isinstance(schema, list):
        return [name for item in schema for name in property_names(item)]
    if not isinstance(schema, dict):
        return []
    names = list(schema["properties"]) if isinstance(schema.get("properties"), dict) else []
    return names + [name for key, value in schema.items() if key != "enum" for name in property_names(value)]
