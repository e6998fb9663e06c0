"""The tool plan: what the planner decides a server's tools are, and what codegen renders.

A plan is content-addressed: its hash is the SHA-256 of `canonical_plan_bytes(plan)`, and build events
refer to it by that hash (`BuildPlanned.plan_hash`). The same input must give the same plan, byte for byte.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

from bus_schemas.base import Message

ToolName = Annotated[str, msgspec.Meta(pattern=r"^[a-z][a-z0-9_]{0,63}$")]
"""A tool's name: a valid Python identifier in snake_case, unique within a plan."""

SecretName = Annotated[str, msgspec.Meta(pattern=r"^[A-Z][A-Z0-9_]{0,63}$")]
"""The name an upstream credential is referenced by; its value never appears in a plan, code or event."""


QueryStyle = Literal["form", "form_joined", "space_delimited", "pipe_delimited", "deep_object"]
"""How a query parameter's value is written (OpenAPI `style` + `explode`): `form` repeats an array's name per item
and spreads an object's fields (the default), `form_joined` joins with commas (`explode: false`), `space_delimited`
and `pipe_delimited` join an array with spaces or pipes, `deep_object` writes `name[field]=value`."""

ParamStyle = Literal["simple_exploded", "label", "label_exploded", "matrix", "matrix_exploded", "form_joined"]
"""How a path, header or cookie parameter's value is written when not the default way (OpenAPI `style` + `explode`,
RFC 6570): path and header values default to `simple` (`blue,black`; an object `R,100,G,200`), `simple_exploded`
writes an object `R=100,G=200`; `label` prefixes a dot (`.blue,black`), `matrix` a `;name=` (`;color=blue,black`),
and their `_exploded` forms repeat the prefix per item (`.blue.black`, `;color=blue;color=black`). Cookies default
to `form` (exploded: a cookie per item); `form_joined` joins an array's items with commas in one cookie."""

BodyEncoding = Literal["json", "form", "multipart", "text"]
"""How a request body is sent: JSON, `application/x-www-form-urlencoded` fields, `multipart/form-data` parts (file
fields among them), or a text body of `HttpCall.body_media_type`."""


class HttpCall(msgspec.Struct, frozen=True, kw_only=True, tag_field="kind", tag="http"):
    """A tool that makes one HTTP request upstream."""

    method: Literal["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD"]
    base_url: str
    """Scheme and host (and base path) of the upstream API, without a trailing slash."""
    path: str
    """Path template with `{param}` placeholders filled from path parameters."""
    path_params: tuple[str, ...] = ()
    """Input schema properties sent in the path (by their wire name, `wire_names`); likewise query and header."""
    query_params: tuple[str, ...] = ()
    header_params: tuple[str, ...] = ()
    cookie_params: tuple[str, ...] = ()
    query_styles: dict[str, QueryStyle] = {}
    """Query parameters not written the default way (`form`, exploded), by wire name."""
    styles: dict[str, ParamStyle] = {}
    """Path, header and cookie parameters not written the default way, by wire name (`ParamStyle`)."""
    wire_names: dict[str, str] = {}
    """Parameter (input schema property) -> the name it is sent by, where they differ: a wire name a model API
    would refuse as a property name (`DateSent<`, `project_ids[]`) is served as one it accepts."""
    body_param: str | None = None
    """The parameter sent as the request body, if any."""
    body_encoding: BodyEncoding = "json"
    """How the body is sent (`BodyEncoding`)."""
    field_styles: dict[str, QueryStyle] = {}
    """Fields of a `form` body not sent as repeated fields (OpenAPI's `encoding` `style`/`explode`: an array joined
    with commas, spaces or pipes, an object as `name[field]`), by field name; an object field otherwise goes as JSON."""
    body_renames: dict[str, Any] = {}
    """Property names inside the body served other than the API names them (a name a model API would refuse),
    as a tree the runner follows to send each by its wire name: `{"rename": {served: wire}, "fields": {served:
    tree}, "items": tree}` (`runner_template.upstream.wire_value`)."""
    param_renames: dict[str, dict[str, Any]] = {}
    """Like `body_renames`, for the fields of a path, query, header or cookie parameter's object value, by the
    parameter's wire name."""
    body_media_type: str | None = None
    """The media type of a `text` body (`text/plain`, `text/csv`...), sent as its Content-Type."""
    file_fields: tuple[str, ...] = ()
    """Fields of a `multipart` body sent as file parts: each value (or each item of an array value) is an object
    with `base64` (its content) or `url` (fetched by the runner under the server's upstream rules), and optionally
    `filename` and `content_type`."""
    auth: Literal["none", "bearer", "header", "query", "basic"] = "none"
    auth_secret: SecretName | None = None
    """Which secret holds the credential for `auth`."""
    auth_name: str | None = None
    """Header or query parameter name for `header`/`query` auth."""


class PureFunction(msgspec.Struct, frozen=True, kw_only=True, tag_field="kind", tag="function"):
    """A small pure function over the parameters, written in Python; untrusted: the checker checks it."""

    body: str
    """The function body (statements), using the parameters by name and returning a JSON value."""


Implementation = HttpCall | PureFunction


class PlannedTool(msgspec.Struct, frozen=True, kw_only=True):
    """One tool of the server."""

    name: ToolName
    title: str
    description: str
    input_schema: dict[str, Any]
    """JSON Schema (type object) of the tool's arguments."""
    read_only: bool
    """True for tools that change nothing (GET-like); decides the scope a caller needs."""
    implementation: Implementation
    tags: tuple[str, ...] = ()
    """The source's grouping of the tool (an OpenAPI operation's tags): how a person chooses a subset. Not served."""
    output_schema: dict[str, Any] | None = None
    """JSON Schema (type object) of the tool's structured result, where the source documents one: served as the
    tool's `outputSchema`, and every result is checked against it before a client sees it."""


class SecretRequirement(msgspec.Struct, frozen=True, kw_only=True):
    """An upstream credential the server needs at run time, supplied to the deployer, never to code."""

    name: SecretName
    description: str


class PlanFlag(msgspec.Struct, frozen=True, kw_only=True):
    """Something a person should know about the plan (a prompt-injection marker, a skipped operation...)."""

    kind: Literal["prompt_injection", "skipped_operation", "truncated", "offline_demo", "note", "token_budget"]
    detail: str


class ToolPlan(Message, frozen=True, kw_only=True, tag="plan.v1"):
    """The typed tool plan of one build."""

    server_name: str
    tools: tuple[PlannedTool, ...]
    secrets: tuple[SecretRequirement, ...] = ()
    upstream_hosts: tuple[str, ...] = ()
    """Every host the tools may call; the runner allows no other."""
    planned_from: Literal["openapi", "tool_spec", "plain_words", "offline_demo"]
    tool_list_tokens: int = 0
    """Estimated size of the tool list in model tokens (what a client pays per request)."""
    flags: tuple[PlanFlag, ...] = ()


_canonical = msgspec.json.Encoder(order="sorted")


def canonical_plan_bytes(plan: ToolPlan) -> bytes:
    """The bytes a plan's hash is taken over: JSON with sorted keys, so equal plans hash equally."""
    return _canonical.encode(plan)


class Artifact(Message, frozen=True, kw_only=True, tag="artifact.v1"):
    """A rendered server: the generated module on the runner template, content-addressed.

    Its hash (`BuildGenerated.artifact_hash`) is the SHA-256 of `canonical_artifact_bytes(artifact)`: the
    same plan and template version give byte-identical source and the same hash.
    """

    plan_hash: str
    template_version: str
    """Version of runner_template the module was rendered for."""
    module_name: str
    """Import name of the generated module inside the runner."""
    module_source: str
    """The generated module: the only untrusted code of a server."""
    tools: tuple[str, ...]
    """Tool names the module defines, in plan order."""
    secrets: tuple[str, ...] = ()
    """Secret names the module reads through the runner (values come from the deployer)."""
    upstream_hosts: tuple[str, ...] = ()
    input_schemas: dict[str, dict[str, Any]] = {}
    """Tool name -> the plan's input schema: what the runner serves in `tools/list` and checks every call's
    arguments against (the schema the worker derives from the generated signature says less)."""
    output_schemas: dict[str, dict[str, Any]] = {}
    """Tool name -> the plan's output schema, for the tools that have one (`PlannedTool.output_schema`)."""


def canonical_artifact_bytes(artifact: Artifact) -> bytes:
    """The bytes an artifact's hash is taken over."""
    return _canonical.encode(artifact)
