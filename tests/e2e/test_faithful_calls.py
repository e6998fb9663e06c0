"""What a hosted server sends upstream is what the API's document says, byte for byte: form-encoded, multipart
(a file from base64 and one fetched from a URL), JSON and text bodies, `explode: false` and deepObject queries,
label and matrix paths, array headers and cookies. Built from an OpenAPI document through the platform, called
with the real MCP SDK client through OAuth, against a local upstream that records every request exactly. The
same calls show what a model gets back: the documented output schema, structured results (arrays included),
and upstream errors as tool errors with the status."""

from __future__ import annotations

import base64
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from email.parser import BytesParser
from email.policy import default
from typing import Any

from aiohttp import web
from mcp.types import TextContent
from nats.aio.client import Client as Nats

from tests.conftest import Stack
from tests.e2e.test_hosted_server import build, mcp_client, platform_on, process_case
from tests.support.oauth_browser import MemoryStorage


@dataclass
class Seen:
    """One request as the upstream received it."""

    method: str
    path: str
    """The raw path and query, as sent."""
    headers: dict[str, str]
    body: bytes


@dataclass
class Recorder:
    base_url: str = ""
    seen: list[Seen] = field(default_factory=list)

    def last(self, method: str, prefix: str) -> Seen:
        return next(s for s in reversed(self.seen) if s.method == method and s.path.startswith(prefix))


PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256))


@contextlib.asynccontextmanager
async def recording_upstream() -> AsyncIterator[Recorder]:
    recorder = Recorder()

    async def record(request: web.Request) -> web.StreamResponse:
        recorder.seen.append(Seen(request.method, request.raw_path, dict(request.headers), await request.read()))
        if request.path == "/logo.png":
            return web.Response(body=PNG, content_type="image/png")
        if request.path == "/items":
            return web.json_response([{"id": 1}, {"id": 2}])
        if request.path == "/empty":
            return web.json_response([])
        if request.path == "/drifted":
            return web.json_response({"id": "not a number"})
        if request.path == "/missing":
            return web.json_response({"error": "no such thing"}, status=404)
        return web.json_response({"id": 7, "ok": True})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", record)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    recorder.base_url = f"http://127.0.0.1:{port}"
    try:
        yield recorder
    finally:
        await runner.cleanup()


def wire_api(base_url: str) -> str:
    return json.dumps({
        "openapi": "3.1.0",
        "info": {"title": "Wire", "version": "1"},
        "servers": [{"url": base_url}],
        "paths": {
            "/messages": {"post": {
                "operationId": "createMessage",
                "requestBody": {"required": True, "content": {"application/x-www-form-urlencoded": {"schema": {
                    "type": "object", "required": ["To", "Body"],
                    "properties": {"To": {"type": "string"}, "Body": {"type": "string"},
                                   "MediaUrl": {"type": "array", "items": {"type": "string"}},
                                   "Tags": {"type": "array", "items": {"type": "string"}}}},
                    "encoding": {"Tags": {"style": "form", "explode": False}}}}},
                "responses": {"201": {"description": "sent"}}}},
            "/files": {"post": {
                "operationId": "uploadFile",
                "requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
                    "type": "object", "required": ["file"],
                    "properties": {"file": {"type": "string", "format": "binary"},
                                   "purpose": {"type": "string"},
                                   "tags": {"type": "array", "items": {"type": "string"}}}}}}},
                "responses": {"200": {"description": "stored"}}}},
            "/pets": {"post": {
                "operationId": "addPet",
                "requestBody": {"required": True, "content": {"application/json": {"schema": {
                    "type": "object", "required": ["name"],
                    "properties": {"name": {"type": "string"},
                                   "status": {"type": "string", "enum": ["available", "sold"]},
                                   "owner": {"type": "object", "properties": {"email": {"type": "string"}}}}}}}},
                "responses": {"200": {"description": "the pet", "content": {"application/json": {"schema": {
                    "type": "object", "required": ["id"],
                    "properties": {"id": {"type": "integer"}, "ok": {"type": "boolean"}}}}}}}}},
            "/labels": {"post": {
                "operationId": "addLabels",
                "requestBody": {"required": True, "content": {"application/json": {"schema": {
                    "type": "object", "required": ["project_ids[]"],
                    "properties": {"project_ids[]": {"type": "array", "items": {"type": "integer"}},
                                   "meta": {"type": "object", "properties": {"made by": {"type": "string"}}}}}}}},
                "responses": {"200": {"description": "labelled"}}}},
            "/notes": {"post": {
                "operationId": "putNote",
                "requestBody": {"content": {"text/plain": {"schema": {"type": "string"}}}},
                "responses": {"204": {"description": "stored"}}}},
            "/search": {"get": {
                "operationId": "search",
                "parameters": [
                    {"name": "type", "in": "query", "required": True, "style": "form", "explode": False,
                     "schema": {"type": "array", "items": {"type": "string"}}},
                    {"name": "filter", "in": "query", "style": "deepObject",
                     "schema": {"type": "object", "properties": {"year": {"type": "integer"},
                                                                 "made<": {"type": "string"}}}},
                    {"name": "DateSent<", "in": "query", "schema": {"type": "string"}},
                ],
                "responses": {"200": {"description": "found"}}}},
            "/colors/{color}/points/{point}": {"get": {
                "operationId": "getColor",
                "parameters": [
                    {"name": "color", "in": "path", "required": True, "style": "label", "explode": True,
                     "schema": {"type": "array", "items": {"type": "string"}}},
                    {"name": "point", "in": "path", "required": True, "style": "matrix",
                     "schema": {"type": "object", "properties": {"x": {"type": "integer"}, "y": {"type": "integer"}}}},
                    {"name": "X-Tags", "in": "header", "schema": {"type": "array", "items": {"type": "string"}}},
                    {"name": "session", "in": "cookie", "required": True, "schema": {"type": "string"}},
                ],
                "responses": {"200": {"description": "ok"}}}},
            "/items": {"get": {"operationId": "listItems", "responses": {"200": {
                "description": "items", "content": {"application/json": {"schema": {
                    "type": "array", "items": {"type": "object", "properties": {"id": {"type": "integer"}}}}}}}}}},
            "/empty": {"get": {"operationId": "listNothing", "responses": {"200": {
                "description": "nothing", "content": {"application/json": {"schema": {"type": "array"}}}}}}},
            "/drifted": {"get": {"operationId": "getDrifted", "responses": {"200": {
                "description": "documented one way, answered another", "content": {"application/json": {"schema": {
                    "type": "object", "properties": {"id": {"type": "integer"}}}}}}}}},
            "/missing": {"get": {"operationId": "getMissing", "responses": {"200": {"description": "never"}}}},
        },
    })


def text_of(result: Any) -> str:
    return "".join(block.text for block in result.content if isinstance(block, TextContent))


async def test_a_hosted_server_sends_upstream_exactly_what_the_document_says(stack: Stack, admin_nc: Nats) -> None:
    async with recording_upstream() as upstream, platform_on(stack, process_case(stack), admin_nc) as platform:
        deployed = await build(platform, wire_api(upstream.base_url))
        async with mcp_client(platform, deployed.url, MemoryStorage()) as client:
            tools = {t.name: t for t in (await client.list_tools()).tools}
            assert set(tools) >= {"create_message", "upload_file", "add_pet", "put_note", "search", "get_color"}

            # form-encoded: fields, an array repeated, nothing lost
            sent = await client.call_tool("create_message", {"body": {
                "To": "+15550100", "Body": "hi & bye", "MediaUrl": ["https://a.example/1", "https://a.example/2"],
                "Tags": ["a,1", "b"]}})
            assert not sent.is_error, text_of(sent)
            seen = upstream.last("POST", "/messages")
            assert seen.headers["Content-Type"] == "application/x-www-form-urlencoded"
            assert seen.body == (b"To=%2B15550100&Body=hi+%26+bye&MediaUrl=https%3A%2F%2Fa.example%2F1"
                                 b"&MediaUrl=https%3A%2F%2Fa.example%2F2&Tags=a%2C1,b")

            # multipart: a file from base64, then one the runner fetches from a URL (an upstream host)
            for file, expected_name, expected_type in (
                ({"base64": base64.b64encode(PNG).decode(), "filename": "a.png", "content_type": "image/png"},
                 "a.png", "image/png"),
                ({"url": f"{upstream.base_url}/logo.png"}, "logo.png", "image/png"),
            ):
                stored = await client.call_tool("upload_file", {"body": {
                    "file": file, "purpose": "avatar", "tags": ["x", "y"]}})
                assert not stored.is_error, text_of(stored)
                seen = upstream.last("POST", "/files")
                content_type = seen.headers["Content-Type"]
                assert content_type.startswith("multipart/form-data; boundary=")
                parts = multipart_parts(seen.body, content_type)
                assert parts == [("file", expected_name, expected_type, PNG), ("purpose", None, None, b"avatar"),
                                 ("tags", None, None, b"x"), ("tags", None, None, b"y")]
            refused = await client.call_tool("upload_file", {"body": {"file": {"url": "http://elsewhere.example/x"}}})
            assert refused.is_error and "not one of this server's upstream hosts" in text_of(refused)

            # JSON body, nested, and the documented output schema with a structured result
            pet = await client.call_tool("add_pet", {"body": {"name": "Rex", "owner": {"email": "o@example.com"}}})
            assert not pet.is_error, text_of(pet)
            seen = upstream.last("POST", "/pets")
            assert json.loads(seen.body) == {"name": "Rex", "owner": {"email": "o@example.com"}}
            assert seen.headers["Content-Type"] == "application/json"
            assert pet.structured_content == {"id": 7, "ok": True}
            assert tools["add_pet"].output_schema is not None
            assert tools["add_pet"].output_schema["properties"]["id"]["type"] == ["integer", "null"]
            bad = await client.call_tool("add_pet", {"body": {"name": "Rex", "status": "lost"}})
            assert bad.is_error and "status" in text_of(bad)  # checked against the schema, never sent
            assert len([s for s in upstream.seen if s.path == "/pets"]) == 1

            # names a model API would refuse, at any depth: served renamed, sent by the API's own names
            body_schema = tools["add_labels"].input_schema["properties"]["body"]
            assert set(body_schema["properties"]) == {"project_ids", "meta"}
            labelled = await client.call_tool("add_labels", {"body": {"project_ids": [1, 2],
                                                                      "meta": {"made_by": "ann"}}})
            assert not labelled.is_error, text_of(labelled)
            assert json.loads(upstream.last("POST", "/labels").body) == {"project_ids[]": [1, 2],
                                                                         "meta": {"made by": "ann"}}

            # text body
            note = await client.call_tool("put_note", {"body": "line one\nline two"})
            assert not note.is_error, text_of(note)
            seen = upstream.last("POST", "/notes")
            assert (seen.headers["Content-Type"], seen.body) == ("text/plain", b"line one\nline two")

            # query styles, and a wire name a model API would refuse
            assert "DateSent_before" in (tools["search"].input_schema["properties"])
            found = await client.call_tool("search", {"type": ["album", "track"],
                                                      "filter": {"year": 1999, "made_before": "2000"},
                                                      "DateSent_before": "2024-01-01"})
            assert not found.is_error, text_of(found)
            assert upstream.last("GET", "/search").path == \
                "/search?type=album,track&filter%5Byear%5D=1999&filter%5Bmade%3C%5D=2000&DateSent%3C=2024-01-01"

            # path styles, an array header, a cookie
            color = await client.call_tool("get_color", {"color": ["red", "green"], "point": {"x": 1, "y": 2},
                                                         "X-Tags": ["a", "b"], "session": "s 1"})
            assert not color.is_error, text_of(color)
            seen = upstream.last("GET", "/colors")
            assert seen.path == "/colors/.red.green/points/;point=x,1,y,2"
            assert (seen.headers["X-Tags"], seen.headers["Cookie"]) == ("a,b", "session=s%201")

            # results: an array is one result with structuredContent, an empty one still says so
            items = await client.call_tool("list_items", {})
            assert items.structured_content == {"result": [{"id": 1}, {"id": 2}]}
            assert len(items.content) == 1 and json.loads(text_of(items)) == [{"id": 1}, {"id": 2}]
            nothing = await client.call_tool("list_nothing", {})
            assert nothing.structured_content == {"result": []} and text_of(nothing) == "[]"

            # an answer outside its documented schema, and an upstream error status: tool errors that say so
            drifted = await client.call_tool("get_drifted", {})
            assert drifted.is_error and "documented response schema" in text_of(drifted)
            assert "not a number" in text_of(drifted)
            missing = await client.call_tool("get_missing", {})
            assert missing.is_error and "answered 404" in text_of(missing) and "no such thing" in text_of(missing)


def multipart_parts(body: bytes, content_type: str) -> list[tuple[str, str | None, Any, bytes]]:
    """(name, filename, its Content-Type header, content) of each part of a multipart body, as the standard
    library's MIME parser reads it."""
    message = BytesParser(policy=default).parsebytes(f"Content-Type: {content_type}\r\n\r\n".encode() + body)
    assert message.is_multipart()
    return [(str(part.get_param("name", header="content-disposition")), part.get_filename(), part["Content-Type"],
             bytes(part.get_payload(decode=True))) for part in message.iter_parts()]
