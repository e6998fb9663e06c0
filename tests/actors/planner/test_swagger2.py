"""Swagger 2.0 documents are converted to OpenAPI 3.0 and planned, or refused naming what stopped the conversion.

Real public documents (tests/fixtures/swagger2, sources and licences in SOURCES.md) go all the way: converted,
planned, generated, checked and served; the converter's own behaviours and its refusals are tested on small
documents written here."""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml

from actors.checker.handlers import check_artifact
from actors.checker.rules import errors
from actors.checker.toolchain import Toolchain
from actors.codegen.artifacts import build_artifact
from actors.planner.openapi import parse_document, plan_openapi
from actors.planner.planning import finish_plan, plan_hash
from actors.planner.problems import PlanNotes, PlanProblem
from actors.planner.swagger2 import MAX_NOTES, OPENAPI_VERSION, is_swagger2, openapi3_from_swagger2
from bus_schemas.builds import OpenApiSource
from bus_schemas.plans import HttpCall, PlannedTool, ToolPlan
from runner_template.app import RunnerSettings, start_tools
from tests.actors.planner.test_real_documents import lost_without_a_flag
from tests.support.planning_helpers import FIXTURES

DOCUMENTS = FIXTURES / "swagger2"
REAL = {
    "swagger_petstore_v2.yaml": 20,
    "oai_petstore_expanded_v2.yaml": 4,
    "oai_uber.yaml": 5,
    "nytimes_most_popular.json": 3,
}
"""Each real document and how many operations it has (every one is planned)."""


def text_of(name: str) -> str:
    return (DOCUMENTS / name).read_text()


def planned(text: str, document_url: str | None = None) -> tuple[ToolPlan, PlanNotes]:
    notes = PlanNotes()
    plan = plan_openapi(text, OpenApiSource(document=text), "swagger", notes, document_url)
    return finish_plan(plan, notes), notes


def converted(name: str) -> dict[str, Any]:
    return openapi3_from_swagger2(parse_document(text_of(name)))[0]


def tools_of(plan: ToolPlan) -> dict[str, PlannedTool]:
    return {t.name: t for t in plan.tools}


def call_of(tool: PlannedTool) -> HttpCall:
    assert isinstance(tool.implementation, HttpCall)
    return tool.implementation


def swagger(paths: dict[str, Any], **top: Any) -> dict[str, Any]:
    """A small Swagger 2.0 document around `paths`."""
    return {"swagger": "2.0", "info": {"title": "t", "version": "1"}, "host": "api.example.com",
            "schemes": ["https"], "paths": paths, **top}


def convert(doc: dict[str, Any], document_url: str | None = None) -> tuple[dict[str, Any], list[str]]:
    return openapi3_from_swagger2(doc, document_url)


# --- real documents ---


@pytest.mark.parametrize("name", list(REAL))
async def test_a_real_swagger_2_document_is_converted_planned_generated_checked_and_served(
    name: str, toolchain: Toolchain
) -> None:
    plan, notes = planned(text_of(name))
    assert ("info", "converted from Swagger 2.0 to OpenAPI 3.0") in notes.lines
    assert len(plan.tools) == REAL[name] and not [f for f in plan.flags if f.kind == "skipped_operation"]
    artifact = build_artifact(plan, plan_hash(plan))
    findings = await check_artifact(artifact, toolchain)
    assert not errors(findings), [f.render() for f in errors(findings)][:5]
    tools = await start_tools(RunnerSettings(artifact="-", insecure_no_auth=True), artifact, None)
    try:
        served = {t.name: t.input_schema for t in tools.tools}
    finally:
        await tools.close()
    assert served == {t.name: t.input_schema for t in plan.tools}


@pytest.mark.parametrize("name", list(REAL))
def test_no_operation_parameter_or_body_of_a_real_swagger_2_document_is_lost_without_a_flag(name: str) -> None:
    plan, _ = planned(text_of(name))
    assert lost_without_a_flag(converted(name), plan) == []


def test_the_converted_documents_are_openapi_3_0_with_every_ref_resolving() -> None:
    for name in REAL:
        doc = converted(name)
        assert doc["openapi"] == OPENAPI_VERSION and "swagger" not in doc
        text = json.dumps(doc)
        assert "#/definitions/" not in text and '"in": "body"' not in text and '"in": "formData"' not in text
        for ref in _refs(doc):
            target: Any = doc
            for part in ref.removeprefix("#/").split("/"):
                target = target[part.replace("~1", "/").replace("~0", "~")]


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return found + [r for k, v in node.items() if k not in ("example", "examples") for r in _refs(v)]
    if isinstance(node, list):
        return [r for v in node for r in _refs(v)]
    return []


def test_petstore_v2_add_pet_takes_the_pet_definition_as_its_json_body() -> None:
    tool = tools_of(planned(text_of("swagger_petstore_v2.yaml"))[0])["add_pet"]
    call = call_of(tool)
    assert (call.method, call.path, call.body_encoding) == ("POST", "/pet", "json")
    assert call.base_url == "https://petstore.swagger.io/v2"  # schemes [https, http]: https first
    assert tool.input_schema["required"] == [call.body_param]
    body = tool.input_schema["properties"][call.body_param or ""]
    assert body["required"] == ["name", "photoUrls"]
    assert body["properties"]["status"]["enum"] == ["available", "pending", "sold"]
    assert body["properties"]["photoUrls"] == {"type": "array", "items": {"type": "string"}}
    assert body["properties"]["category"]["properties"]["name"] == {"type": "string"}  # $ref inlined


def test_petstore_v2_find_pets_by_status_takes_an_array_repeated_in_the_query() -> None:
    parameter = converted("swagger_petstore_v2.yaml")["paths"]["/pet/findByStatus"]["get"]["parameters"][0]
    assert (parameter["style"], parameter["explode"]) == ("form", True)  # collectionFormat: multi
    tool = tools_of(planned(text_of("swagger_petstore_v2.yaml"))[0])["find_pets_by_status"]
    status = tool.input_schema["properties"]["status"]
    assert status["type"] == "array" and status["items"]["enum"] == ["available", "pending", "sold"]
    assert tool.input_schema["required"] == ["status"]
    call = call_of(tool)
    assert call.query_params == ("status",) and call.query_styles.get("status", "form") == "form"


def test_petstore_v2_form_data_becomes_a_form_body_and_a_file_a_multipart_one() -> None:
    doc = converted("swagger_petstore_v2.yaml")
    form = doc["paths"]["/pet/{petId}"]["post"]["requestBody"]
    assert form == {"content": {"application/x-www-form-urlencoded": {"schema": {
        "type": "object",
        "properties": {"name": {"type": "string", "description": "Updated name of the pet"},
                       "status": {"type": "string", "description": "Updated status of the pet"}},
    }}}}
    upload = doc["paths"]["/pet/{petId}/uploadImage"]["post"]
    assert upload["requestBody"] == {"content": {"multipart/form-data": {"schema": {
        "type": "object",
        "properties": {"additionalMetadata": {"type": "string", "description": "Additional data to pass to server"},
                       "file": {"type": "string", "format": "binary", "description": "file to upload"}},
    }}}}
    assert [p["name"] for p in upload["parameters"]] == ["petId"]
    plan, _ = planned(text_of("swagger_petstore_v2.yaml"))
    update = tools_of(plan)["update_pet_with_form"]
    assert call_of(update).body_encoding == "form"
    fields = update.input_schema["properties"][call_of(update).body_param or ""]["properties"]
    assert set(fields) == {"name", "status"}
    # multipart is the planner's to plan or to flag; either way the upload is not lost silently
    flagged = " ".join(f.detail for f in plan.flags)
    assert "upload_file" in tools_of(plan) or "/pet/{petId}/uploadImage" in flagged


def test_petstore_v2_security_definitions_become_security_schemes_and_secrets() -> None:
    doc = converted("swagger_petstore_v2.yaml")
    assert doc["components"]["securitySchemes"] == {
        "petstore_auth": {"type": "oauth2", "flows": {"implicit": {
            "authorizationUrl": "https://petstore.swagger.io/oauth/dialog",
            "scopes": {"write:pets": "modify pets in your account", "read:pets": "read your pets"},
        }}},
        "api_key": {"type": "apiKey", "name": "api_key", "in": "header"},
    }
    plan, _ = planned(text_of("swagger_petstore_v2.yaml"))
    assert [s.name for s in plan.secrets] == ["API_KEY", "PETSTORE_AUTH"]
    tools = tools_of(plan)
    assert (call_of(tools["get_pet_by_id"]).auth, call_of(tools["get_pet_by_id"]).auth_name) == ("header", "api_key")
    assert call_of(tools["add_pet"]).auth == "bearer"
    assert call_of(tools["login_user"]).auth == "none"


def test_a_csv_array_is_sent_comma_joined() -> None:
    parameter = converted("oai_petstore_expanded_v2.yaml")["paths"]["/pets"]["get"]["parameters"][0]
    assert parameter["name"] == "tags" and (parameter["style"], parameter["explode"]) == ("form", False)
    tools = tools_of(planned(text_of("oai_petstore_expanded_v2.yaml"))[0])
    assert call_of(tools["find_pets"]).query_styles["tags"] != "form"  # joined, not repeated
    assert "find_pet_by_id" in tools  # operationId 'find pet by id'
    assert call_of(tools["add_pet"]).base_url == "http://petstore.swagger.io/api"  # schemes: [http] only


def test_uber_operations_without_ids_are_named_from_their_paths_and_send_the_key_in_the_query() -> None:
    tools = tools_of(planned(text_of("oai_uber.yaml"))[0])
    assert list(tools) == ["get_products", "get_estimates_price", "get_estimates_time", "get_me", "get_history"]
    products = tools["get_products"]
    assert products.input_schema["properties"]["latitude"]["type"] == "number"
    assert products.input_schema["required"] == ["latitude", "longitude"]
    call = call_of(products)
    assert (call.base_url, call.auth, call.auth_name) == ("https://api.uber.com/v1", "query", "server_token")
    assert tools["get_estimates_time"].input_schema["properties"]["customer_uuid"]["format"] == "uuid"


def test_nytimes_shared_path_parameters_stay_references_and_are_required() -> None:
    doc = converted("nytimes_most_popular.json")
    item = doc["paths"]["/mostshared/{section}/{time-period}.json"]
    assert item["parameters"] == [{"$ref": "#/components/parameters/Section"},
                                  {"$ref": "#/components/parameters/TimePeriod"}]
    assert doc["components"]["parameters"]["TimePeriod"]["required"] is True  # not said in the document
    assert doc["components"]["parameters"]["TimePeriod"]["schema"] == {"type": "string", "enum": ["1", "7", "30"]}
    response = item["get"]["responses"]["200"]
    assert response["content"]["application/json"]["example"]["status"] == "OK"
    tool = planned(text_of("nytimes_most_popular.json"))[0].tools[0]
    call = call_of(tool)
    assert call.base_url == "https://api.nytimes.com/svc/mostpopular/v2"  # schemes [http, https]: https preferred
    assert (call.auth, call.auth_name) == ("query", "api-key")
    assert tool.input_schema["required"] == ["section", "time-period"]
    assert tool.input_schema["properties"]["section"]["enum"][-1] == "all-sections"


# --- the converter ---


def test_refs_to_definitions_parameters_and_responses_move_to_components() -> None:
    doc = swagger(
        {"/pets/{id}": {
            "parameters": [{"$ref": "#/parameters/Id"}],
            "get": {"responses": {
                "200": {"description": "ok", "schema": {"$ref": "#/definitions/Pet"}},
                "404": {"$ref": "#/responses/NotFound"},
            }},
        }},
        definitions={"Pet": {"type": "object", "properties": {
            "name": {"type": "string"}, "friend": {"$ref": "#/definitions/Pet"},
            "alias": {"$ref": "#/definitions/Pet/properties/name"},
        }}},
        parameters={"Id": {"name": "id", "in": "path", "required": True, "type": "integer"}},
        responses={"NotFound": {"description": "gone", "schema": {"$ref": "#/definitions/Pet"}}},
    )
    out, notes = convert(doc)
    assert notes == []
    components = out["components"]
    assert components["schemas"]["Pet"]["properties"]["friend"] == {"$ref": "#/components/schemas/Pet"}
    assert components["schemas"]["Pet"]["properties"]["alias"] == {"$ref": "#/components/schemas/Pet/properties/name"}
    assert components["parameters"]["Id"] == {"name": "id", "in": "path", "required": True,
                                             "schema": {"type": "integer"}}
    assert components["responses"]["NotFound"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/Pet"}
    item = out["paths"]["/pets/{id}"]
    assert item["parameters"] == [{"$ref": "#/components/parameters/Id"}]
    assert item["get"]["responses"]["404"] == {"$ref": "#/components/responses/NotFound"}
    assert item["get"]["responses"]["200"]["content"] == {
        "application/json": {"schema": {"$ref": "#/components/schemas/Pet"}}}


@pytest.mark.parametrize(("collection", "style", "explode"), [
    (None, "form", False),  # Swagger 2.0's default is csv
    ("csv", "form", False),
    ("ssv", "spaceDelimited", False),
    ("pipes", "pipeDelimited", False),
    ("multi", "form", True),
    ("tsv", "form", False),  # no OpenAPI 3 equivalent: noted
])
def test_collection_format_becomes_style_and_explode(collection: str | None, style: str, explode: bool) -> None:
    parameter: dict[str, Any] = {"name": "ids", "in": "query", "type": "array", "items": {"type": "integer"}}
    if collection is not None:
        parameter["collectionFormat"] = collection
    out, notes = convert(swagger({"/x": {"get": {"parameters": [parameter], "responses": {}}}}))
    converted_parameter = out["paths"]["/x"]["get"]["parameters"][0]
    assert converted_parameter == {"name": "ids", "in": "query", "style": style, "explode": explode,
                                   "schema": {"type": "array", "items": {"type": "integer"}}}
    assert notes == (["paths./x.get.parameters[0]: collectionFormat 'tsv' has no OpenAPI 3 style; sent "
                      "comma-separated"] if collection == "tsv" else [])


def test_a_path_array_keeps_the_simple_style_and_an_unmappable_format_is_noted() -> None:
    parameters = [
        {"name": "ids", "in": "path", "required": True, "type": "array", "items": {"type": "string"}},
        {"name": "X-Tags", "in": "header", "type": "array", "items": {"type": "string"}, "collectionFormat": "pipes"},
    ]
    out, notes = convert(swagger({"/x/{ids}": {"get": {"parameters": parameters, "responses": {}}}}))
    converted_parameters = out["paths"]["/x/{ids}"]["get"]["parameters"]
    assert all("style" not in p and "explode" not in p for p in converted_parameters)
    assert notes == ["paths./x/{ids}.get.parameters[1]: collectionFormat 'pipes' has no OpenAPI 3 style for a "
                     "header parameter; sent comma-separated"]


def test_non_body_parameter_keywords_move_into_its_schema() -> None:
    parameter = {"name": "limit", "in": "query", "description": "how many", "required": False, "type": "integer",
                 "format": "int32", "minimum": 1, "maximum": 100, "exclusiveMaximum": True, "default": 20,
                 "enum": [10, 20, 50], "x-nullable": True, "allowEmptyValue": True, "x-internal": "kept"}
    out, _ = convert(swagger({"/x": {"get": {"parameters": [parameter], "responses": {}}}}))
    assert out["paths"]["/x"]["get"]["parameters"][0] == {
        "name": "limit", "in": "query", "description": "how many", "required": False, "allowEmptyValue": True,
        "schema": {"type": "integer", "format": "int32", "default": 20, "maximum": 100, "exclusiveMaximum": True,
                   "minimum": 1, "enum": [10, 20, 50], "nullable": True},
        "x-internal": "kept",
    }


def test_a_body_parameter_becomes_a_request_body_in_every_media_type_the_operation_consumes() -> None:
    body = {"in": "body", "name": "pet", "description": "the pet", "required": True,
            "schema": {"type": "object", "properties": {"name": {"type": "string", "x-nullable": True}}}}
    doc = swagger({
        "/pets": {
            "post": {"parameters": [body], "responses": {}},
            "put": {"consumes": ["application/json", "application/xml"], "parameters": [body], "responses": {}},
        },
        "/plain": {"post": {"parameters": [{**body, "required": False}], "responses": {}}},
    }, consumes=["application/vnd.pets+json"])
    out, _ = convert(doc)
    schema = {"type": "object", "properties": {"name": {"type": "string", "nullable": True}}}
    assert out["paths"]["/pets"]["post"]["requestBody"] == {
        "content": {"application/vnd.pets+json": {"schema": schema}}, "description": "the pet", "required": True}
    assert list(out["paths"]["/pets"]["put"]["requestBody"]["content"]) == ["application/json", "application/xml"]
    assert "required" not in out["paths"]["/plain"]["post"]["requestBody"]
    out, _ = convert(swagger({"/pets": {"post": {"parameters": [body], "responses": {}}}}))
    assert list(out["paths"]["/pets"]["post"]["requestBody"]["content"]) == ["application/json"]  # no consumes


def test_form_data_is_urlencoded_unless_a_file_or_multipart_says_otherwise() -> None:
    name = {"name": "name", "in": "formData", "type": "string", "required": True}
    tags = {"name": "tags", "in": "formData", "type": "array", "items": {"type": "string"}, "collectionFormat": "csv"}
    upload = {"name": "upload", "in": "formData", "type": "file"}
    doc = swagger({
        "/form": {"post": {"parameters": [name, tags], "responses": {}}},
        "/file": {"post": {"consumes": ["application/x-www-form-urlencoded"], "parameters": [name, upload],
                           "responses": {}}},
        "/multi": {"post": {"consumes": ["multipart/form-data"], "parameters": [name], "responses": {}}},
        "/both": {"post": {"consumes": ["multipart/form-data", "application/x-www-form-urlencoded"],
                           "parameters": [name], "responses": {}}},
    })
    out, notes = convert(doc)
    paths = out["paths"]
    form = paths["/form"]["post"]["requestBody"]
    assert form == {"required": True, "content": {"application/x-www-form-urlencoded": {
        "schema": {"type": "object", "required": ["name"], "properties": {
            "name": {"type": "string"}, "tags": {"type": "array", "items": {"type": "string"}}}},
        "encoding": {"tags": {"style": "form", "explode": False}},
    }}}
    assert paths["/file"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]["properties"][
        "upload"] == {"type": "string", "format": "binary"}
    assert list(paths["/file"]["post"]["requestBody"]["content"]) == ["multipart/form-data"]
    assert list(paths["/multi"]["post"]["requestBody"]["content"]) == ["multipart/form-data"]
    assert list(paths["/both"]["post"]["requestBody"]["content"]) == [
        "multipart/form-data", "application/x-www-form-urlencoded"]
    assert notes == []


def test_a_path_items_body_parameter_goes_to_each_operation_unless_it_has_its_own() -> None:
    shared = {"in": "body", "name": "shared", "schema": {"type": "string"}}
    own = {"in": "body", "name": "own", "schema": {"type": "integer"}}
    out, _ = convert(swagger({"/x": {
        "parameters": [shared, {"name": "q", "in": "query", "type": "string"}],
        "put": {"responses": {}},
        "post": {"parameters": [own], "responses": {}},
    }}))
    item = out["paths"]["/x"]
    assert item["parameters"] == [{"name": "q", "in": "query", "schema": {"type": "string"}}]
    assert item["put"]["requestBody"]["content"]["application/json"]["schema"] == {"type": "string"}
    assert item["post"]["requestBody"]["content"]["application/json"]["schema"] == {"type": "integer"}


def test_a_body_parameter_given_by_ref_is_inlined() -> None:
    out, _ = convert(swagger(
        {"/x": {"post": {"parameters": [{"$ref": "#/parameters/Body"}], "responses": {}}}},
        parameters={"Body": {"in": "body", "name": "b", "required": True, "schema": {"$ref": "#/definitions/B"}}},
        definitions={"B": {"type": "object"}},
    ))
    assert out["paths"]["/x"]["post"]["requestBody"] == {
        "required": True, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/B"}}}}
    assert "parameters" not in out["components"]  # a body is no OpenAPI 3 parameter


def test_responses_get_content_per_produces_with_their_examples_and_headers() -> None:
    out, _ = convert(swagger({"/x": {"get": {"produces": ["application/json", "text/csv"], "responses": {
        "200": {"description": "ok", "schema": {"type": "file"}, "examples": {"text/csv": "a,b"},
                "headers": {"X-Rate": {"type": "integer", "description": "left"}}},
        "204": {"description": "none"},
    }}}}))
    responses = out["paths"]["/x"]["get"]["responses"]
    assert responses["200"] == {
        "description": "ok",
        "headers": {"X-Rate": {"schema": {"type": "integer"}, "description": "left"}},
        "content": {"application/json": {"schema": {"type": "string", "format": "binary"}},
                    "text/csv": {"schema": {"type": "string", "format": "binary"}, "example": "a,b"}},
    }
    assert responses["204"] == {"description": "none"}


def test_security_definitions_become_security_schemes() -> None:
    definitions = {
        "basic": {"type": "basic", "description": "user and password"},
        "key": {"type": "apiKey", "name": "X-Key", "in": "header"},
        "implicit": {"type": "oauth2", "flow": "implicit", "authorizationUrl": "https://a/auth", "scopes": {"r": "R"}},
        "password": {"type": "oauth2", "flow": "password", "tokenUrl": "https://a/token", "scopes": {}},
        "application": {"type": "oauth2", "flow": "application", "tokenUrl": "https://a/token"},
        "accessCode": {"type": "oauth2", "flow": "accessCode", "authorizationUrl": "https://a/auth",
                       "tokenUrl": "https://a/token", "scopes": {"w": "W"}},
    }
    out, notes = convert(swagger({}, securityDefinitions=definitions))
    assert out["components"]["securitySchemes"] == {
        "basic": {"type": "http", "scheme": "basic", "description": "user and password"},
        "key": {"type": "apiKey", "name": "X-Key", "in": "header"},
        "implicit": {"type": "oauth2", "flows": {"implicit": {"authorizationUrl": "https://a/auth",
                                                              "scopes": {"r": "R"}}}},
        "password": {"type": "oauth2", "flows": {"password": {"tokenUrl": "https://a/token", "scopes": {}}}},
        "application": {"type": "oauth2", "flows": {"clientCredentials": {"tokenUrl": "https://a/token",
                                                                          "scopes": {}}}},
        "accessCode": {"type": "oauth2", "flows": {"authorizationCode": {
            "authorizationUrl": "https://a/auth", "tokenUrl": "https://a/token", "scopes": {"w": "W"}}}},
    }
    assert notes == []


def test_a_basic_auth_swagger_document_plans_basic_auth() -> None:
    doc = swagger({"/x": {"get": {"operationId": "getX", "responses": {"200": {"description": "ok"}}}}},
                  securityDefinitions={"login": {"type": "basic"}}, security=[{"login": []}])
    plan, _ = planned(json.dumps(doc))
    assert (call_of(plan.tools[0]).auth, call_of(plan.tools[0]).auth_secret) == ("basic", "LOGIN")


def test_definitions_keep_their_schema_with_x_nullable_and_discriminator_said_the_openapi_3_way() -> None:
    out, _ = convert(swagger({}, definitions={"Animal": {
        "type": "object", "discriminator": "kind", "required": ["kind"],
        "properties": {"kind": {"type": "string"}, "nick": {"type": "string", "x-nullable": True},
                       "tags": {"type": "array", "items": {"type": "string", "x-nullable": True}},
                       "extra": {"type": "object", "additionalProperties": {"type": "integer", "x-nullable": True}}},
        "xml": {"name": "animal"}, "example": {"kind": "cat"},
    }}))
    animal = out["components"]["schemas"]["Animal"]
    assert animal["discriminator"] == {"propertyName": "kind"}
    assert animal["properties"]["nick"] == {"type": "string", "nullable": True}
    assert animal["properties"]["tags"]["items"] == {"type": "string", "nullable": True}
    assert animal["properties"]["extra"]["additionalProperties"] == {"type": "integer", "nullable": True}
    assert (animal["xml"], animal["example"]) == ({"name": "animal"}, {"kind": "cat"})


@pytest.mark.parametrize(("top", "document_url", "servers", "noted"), [
    ({"host": "h.example:8443", "basePath": "/v1", "schemes": ["http", "https"]}, None,
     ["https://h.example:8443/v1", "http://h.example:8443/v1"], False),
    ({"host": "h.example"}, "http://docs.example/swagger.json", ["http://h.example"], False),
    ({"host": "h.example"}, None, ["https://h.example"], True),
    ({"basePath": "/api"}, None, ["/api"], False),
    ({}, None, [], False),
])
def test_servers_come_from_host_base_path_and_schemes(
    top: dict[str, Any], document_url: str | None, servers: list[str], noted: bool
) -> None:
    doc = {"swagger": "2.0", "info": {"title": "t", "version": "1"}, "paths": {}, **top}
    out, notes = convert(doc, document_url)
    assert [s["url"] for s in out.get("servers", [])] == servers
    assert bool(notes) == noted


def test_an_operation_with_its_own_schemes_gets_its_own_servers() -> None:
    out, _ = convert(swagger({"/x": {"get": {"schemes": ["http"], "responses": {}}}}, basePath="/v2"))
    assert out["paths"]["/x"]["get"]["servers"] == [{"url": "http://api.example.com/v2"}]


def test_plan_openapi_says_it_converted_and_flags_what_was_approximated() -> None:
    doc = swagger({"/x": {"get": {"operationId": "getX", "parameters": [
        {"name": "ids", "in": "query", "type": "array", "items": {"type": "string"}, "collectionFormat": "tsv"},
    ], "responses": {"200": {"description": "ok"}}}}})
    plan, notes = planned(yaml.safe_dump(doc))
    assert notes.lines[0] == ("info", "converted from Swagger 2.0 to OpenAPI 3.0")
    assert ("info", "OpenAPI 3.0.3 document 't 1': found 1 operations") in notes.lines
    detail = ("converted from Swagger 2.0 approximately: paths./x.get.parameters[0]: collectionFormat 'tsv' has "
              "no OpenAPI 3 style; sent comma-separated")
    assert ("warning", detail) in notes.lines
    assert [(f.kind, f.detail) for f in plan.flags if "Swagger" in f.detail] == [("note", detail)]
    assert call_of(plan.tools[0]).query_styles["ids"] != "form"  # comma-joined


def test_approximations_past_the_limit_are_counted_not_listed() -> None:
    parameters = [{"name": f"p{i}", "in": "query", "type": "array", "items": {"type": "string"},
                   "collectionFormat": "tsv"} for i in range(MAX_NOTES + 5)]
    _, notes = convert(swagger({"/x": {"get": {"parameters": parameters, "responses": {}}}}))
    assert len(notes) == MAX_NOTES + 1 and notes[-1] == "5 more approximation(s) not listed"


def test_an_unquoted_yaml_version_is_swagger_2_and_openapi_3_documents_are_not_converted() -> None:
    assert is_swagger2(parse_document("swagger: 2.0\npaths: {}\n"))
    assert not is_swagger2(parse_document("openapi: 3.0.0\npaths: {}\n"))
    assert not is_swagger2(parse_document("swagger: '1.2'\npaths: {}\n"))
    with pytest.raises(PlanProblem, match=r"openapi: swagger '1\.2' is not OpenAPI 3\.0 or 3\.1"):
        planned("swagger: '1.2'\npaths: {}\n")


# --- what stops the conversion ---


def _body(name: str = "body") -> dict[str, Any]:
    return {"in": "body", "name": name, "schema": {"type": "object"}}


@pytest.mark.parametrize(("doc", "message"), [
    (swagger({"/pets": {"post": {"parameters": [{"in": "body", "name": "b", "schema": {"$ref": "#/definitions/Nope"}}],
                                 "responses": {}}}}),
     "Swagger 2.0 document: paths./pets.post.parameters[0].schema: $ref '#/definitions/Nope' does not resolve"),
    (swagger({"/pets": {"post": {"parameters": [_body("a"), _body("b")], "responses": {}}}}),
     "Swagger 2.0 document: paths./pets.post.parameters[1]: a second `in: body` parameter (an operation has at "
     "most one body; the first is 'a')"),
    ({**swagger({}), "paths": []}, "Swagger 2.0 document: paths: must be an object"),
    (swagger({"/pets": {"post": {"parameters": [_body(), {"name": "f", "in": "formData", "type": "string"}],
                                 "responses": {}}}}),
     "Swagger 2.0 document: paths./pets.post.parameters[1]: formData parameters beside the body parameter at "
     "paths./pets.post.parameters[0] (Swagger 2.0 allows one or the other)"),
    (swagger({"/pets": {"get": {"parameters": [{"name": "s", "in": "cookie", "type": "string"}], "responses": {}}}}),
     "Swagger 2.0 document: paths./pets.get.parameters[0]: `in` must be query, header, path, formData or body, "
     "not 'cookie'"),
    (swagger({"/pets": {"get": {"parameters": [{"in": "query", "type": "string"}], "responses": {}}}}),
     "Swagger 2.0 document: paths./pets.get.parameters[0]: a parameter needs `name` and `in`"),
    (swagger({"/pets": {"get": {"parameters": [{"name": "f", "in": "query", "type": "file"}], "responses": {}}}}),
     "Swagger 2.0 document: paths./pets.get.parameters[0]: `type: file` is only for formData parameters, not query"),
    (swagger({"/pets": {"get": {"parameters": [{"name": "a", "in": "query", "type": "array", "items": {},
                                                "collectionFormat": "json"}], "responses": {}}}}),
     "Swagger 2.0 document: paths./pets.get.parameters[0].collectionFormat: must be csv, ssv, tsv, pipes or multi, "
     "not 'json'"),
    (swagger({"/pets": {"post": {"parameters": [{"in": "body", "name": "b"}], "responses": {}}}}),
     "Swagger 2.0 document: paths./pets.post.parameters[0]: a body parameter needs `schema`"),
    (swagger({"/pets": {"get": {"parameters": {"name": "q"}, "responses": {}}}}),
     "Swagger 2.0 document: paths./pets.get.parameters: must be a list"),
    (swagger({"/pets": {"get": {"parameters": [{"$ref": "#/parameters/Gone"}], "responses": {}}}}),
     "Swagger 2.0 document: paths./pets.get.parameters[0]: $ref '#/parameters/Gone' does not resolve"),
    (swagger({"/pets": {"get": {"responses": {"200": {"description": "ok", "schema": {
        "$ref": "#/paths/~1other/get/responses/200/schema"}}}}}}),
     "Swagger 2.0 document: paths./pets.get.responses.200.schema: $ref '#/paths/~1other/get/responses/200/schema' "
     "points to no definition, parameter or response (only '#/definitions/...', '#/parameters/...' and "
     "'#/responses/...' can be converted)"),
    (swagger({"/pets": {"get": "everything"}}), "Swagger 2.0 document: paths./pets.get: must be an object"),
    (swagger({"/pets": {"get": {"consumes": "application/json", "responses": {}}}}),
     "Swagger 2.0 document: paths./pets.get.consumes: must be a list of media types"),
    (swagger({}, securityDefinitions={"s": {"type": "openIdConnect"}}),
     "Swagger 2.0 document: securityDefinitions.s.type: must be basic, apiKey or oauth2, not 'openIdConnect'"),
    (swagger({}, securityDefinitions={"s": {"type": "oauth2", "flow": "hybrid"}}),
     "Swagger 2.0 document: securityDefinitions.s.flow: must be implicit, password, application or accessCode, "
     "not 'hybrid'"),
    (swagger({}, securityDefinitions={"s": {"type": "apiKey", "name": "k", "in": "cookie"}}),
     "Swagger 2.0 document: securityDefinitions.s: an apiKey scheme needs `name` and `in` (query or header)"),
    ({**swagger({}), "host": "https://api.example.com/v1"},
     "Swagger 2.0 document: host: 'https://api.example.com/v1' must be a host name and optional port, without a "
     "scheme or a path"),
    ({**swagger({}), "basePath": "v1"}, "Swagger 2.0 document: basePath: 'v1' must be a path starting with '/'"),
    (swagger({}, definitions=["Pet"]), "Swagger 2.0 document: definitions: must be an object"),
    (swagger({}, parameters={"Loop": {"$ref": "#/parameters/Loop"}}),
     "Swagger 2.0 document: parameters.Loop: a parameter needs `name` and `in`"),
    (swagger({"/p": {"post": {"parameters": [{"$ref": "#/parameters/Form"}], "responses": {}}}},
             parameters={"Form": {"name": "f", "in": "formData", "type": "array", "collectionFormat": "xml"}}),
     "Swagger 2.0 document: parameters.Form.collectionFormat: must be csv, ssv, tsv, pipes or multi, not 'xml'"),
], ids=[
    "dangling-definition", "two-bodies", "paths-not-object", "body-and-form", "cookie", "no-name", "file-in-query",
    "bad-collection-format", "body-without-schema", "parameters-not-list", "dangling-parameter", "ref-into-paths",
    "operation-not-object", "consumes-not-list", "openid-connect", "unknown-flow", "api-key-in-cookie",
    "host-with-scheme", "relative-base-path", "definitions-not-object", "parameter-ref-loop",
    "shared-form-parameter",
])
def test_what_cannot_be_converted_stops_planning_naming_where(doc: dict[str, Any], message: str) -> None:
    with pytest.raises(PlanProblem) as direct:
        convert(doc)
    assert str(direct.value) == message
    with pytest.raises(PlanProblem) as through_the_planner:
        planned(json.dumps(doc))
    assert str(through_the_planner.value) == message
