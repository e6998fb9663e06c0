"""Planning from an OpenAPI 3.0/3.1 document: one tool per operation, deterministic, byte for byte.

Every problem that stops planning names where it is in the document, as a dotted path
(`paths./pets/{id}.get.parameters[0]`), so a person can find it.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import urljoin, urlsplit

import yaml

from actors.planner.problems import PlanNotes, PlanProblem
from actors.planner.refs import resolve_ref
from actors.planner.swagger2 import is_swagger2, openapi3_from_swagger2
from bus_schemas.builds import OpenApiSource, UpstreamCredentials
from bus_schemas.plans import (
    BodyEncoding,
    HttpCall,
    ParamStyle,
    PlanFlag,
    PlannedTool,
    QueryStyle,
    SecretRequirement,
    ToolPlan,
)

METHODS = ("get", "put", "post", "delete", "patch", "head", "options", "trace")
"""Operation keys of a path item, in the order OpenAPI lists them."""
PLANNED_METHODS = frozenset({"get", "put", "post", "delete", "patch", "head"})
"""Methods an HttpCall can make."""
MAX_TOOLS = 200
"""More operations than this are cut (and flagged): a client pays for every tool on every request."""
MAX_SCHEMA_DEPTH = 12
"""Schemas nested deeper are cut (and flagged)."""
MAX_SCHEMA_NODES = 5_000
"""Schema nodes one tool's input may expand into (shared, non-recursive refs can still explode)."""
MAX_DOCUMENT_NODES = 2_000_000
"""Nodes a parsed document may have (YAML aliases can make a small text huge)."""
MAX_DESCRIPTION = 1_200
"""Characters of a tool description kept from the document."""
_DROPPED_HEADERS = frozenset({"authorization", "accept", "content-type", "content-length", "user-agent"})
_SCHEMA_CHILD = ("not", "additionalProperties", "items", "contains", "propertyNames", "if", "then", "else")
_SCHEMA_LIST = ("allOf", "anyOf", "oneOf", "prefixItems")
_SCHEMA_MAP = ("properties", "patternProperties", "dependentSchemas")
_SCHEMA_DROPPED = frozenset({
    "xml", "externalDocs", "discriminator", "$defs", "definitions", "$id", "$schema",
    # identifiers and dynamic references mean nothing once every `$ref` is inlined (and draft 2019-09's
    # `$recursiveAnchor: true`, found in real 3.1 documents, is not even valid JSON Schema 2020-12)
    "$anchor", "$dynamicAnchor", "$dynamicRef", "$recursiveAnchor", "$recursiveRef", "$comment",
})
"""Schema keywords a tool's input schema leaves out: OpenAPI's own annotations and references resolved away.
What is left is a self-contained JSON Schema (2020-12) that the runner serves and checks arguments against."""

Auth = tuple[Literal["none", "bearer", "header", "query", "basic"], str | None, str | None]
"""(HttpCall.auth, auth_secret, auth_name)."""


class _Loader(yaml.SafeLoader):  # type: ignore[misc]  # PyYAML ships no type hints
    """YAML's safe loader, minus timestamps: `2024-05-01T10:00:00Z` stays the string it is in JSON."""


_Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def _where(path: str) -> str:
    return f"OpenAPI document: {path}" if path else "OpenAPI document"


def parse_document(text: str) -> dict[str, Any]:
    """The document as JSON-like data (JSON or YAML); PlanProblem says where the syntax breaks."""
    stripped = text.lstrip()
    data: Any
    if stripped.startswith("{"):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            at = f"line {exc.lineno}, column {exc.colno}"
            raise PlanProblem(f"OpenAPI document: invalid JSON at {at}: {exc.msg}") from None
    else:
        try:
            data = yaml.load(text, Loader=_Loader)  # noqa: S506 (a SafeLoader)
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
            raise PlanProblem(f"OpenAPI document: invalid YAML{at}: {exc.problem or exc.context}") from None
        except yaml.YAMLError as exc:
            raise PlanProblem(f"OpenAPI document: invalid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise PlanProblem("OpenAPI document: the top level must be an object (mapping)")
    budget = [MAX_DOCUMENT_NODES]
    result: dict[str, Any] = _jsonable(data, budget)
    return result


def _jsonable(value: Any, budget: list[int]) -> Any:
    """JSON-compatible copy: string keys, ISO dates (YAML reads `2024-01-01` as a date)."""
    budget[0] -= 1
    if budget[0] < 0:
        raise PlanProblem(f"OpenAPI document: expands to over {MAX_DOCUMENT_NODES:,} nodes (YAML aliases?)")
    if isinstance(value, dict):
        return {str(k): _jsonable(v, budget) for k, v in value.items()}
    if isinstance(value, list):
        return [_jsonable(v, budget) for v in value]
    if isinstance(value, dt.date | dt.datetime):
        return value.isoformat()
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value


def snake_case(text: str) -> str:
    """A readable snake_case identifier from an operationId or a path (`listPetsByTag` -> `list_pets_by_tag`)."""
    spaced = re.sub(r"([A-Z]+)([A-Z][a-z])", r"\1_\2", text)
    spaced = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", spaced)
    name = re.sub(r"[^A-Za-z0-9]+", "_", spaced).strip("_").lower()
    if not name:
        name = "operation"
    if not name[0].isalpha():
        name = f"op_{name}"
    return name[:64].rstrip("_")


def path_tool_name(method: str, path: str) -> str:
    """`get_pets_by_pet_id` for GET /pets/{petId}: used when an operation has no operationId."""
    parts = []
    for segment in path.split("/"):
        placeholder = re.fullmatch(r"\{(.+)\}", segment)
        if placeholder:
            parts.append(f"by_{placeholder.group(1)}")
        elif segment:
            parts.append(segment)
    return snake_case("_".join([method, *parts]))


def secret_name(scheme: str) -> str:
    """The secret name for a security scheme (`petstore_auth` -> `PETSTORE_AUTH`)."""
    name = re.sub(r"[^A-Za-z0-9]+", "_", re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", scheme)).strip("_").upper()
    if not name or not name[0].isalpha():
        name = f"SECRET_{name}"
    return name[:64].rstrip("_")


def unique_name(name: str, used: set[str]) -> str:
    """`name`, or `name_2`, `name_3`... whichever is free; records it as used."""
    candidate, n = name, 2
    while candidate in used:
        candidate = f"{name[:60]}_{n}"
        n += 1
    used.add(candidate)
    return candidate


@dataclass
class _Operation:
    path: str
    method: str
    op: dict[str, Any]
    item: dict[str, Any]
    where: str


@dataclass
class _Inputs:
    """A tool's inputs as they are planned: its input schema's properties and where each one is sent."""

    properties: dict[str, Any] = field(default_factory=dict)
    required: list[str] = field(default_factory=list)
    located: dict[str, list[str]] = field(
        default_factory=lambda: {"path": [], "query": [], "header": [], "cookie": []})
    body_param: str | None = None
    body_renames: dict[str, Any] = field(default_factory=dict)
    param_renames: dict[str, dict[str, Any]] = field(default_factory=dict)
    body_encoding: BodyEncoding = "json"
    body_media_type: str | None = None
    file_fields: tuple[str, ...] = ()
    query_styles: dict[str, QueryStyle] = field(default_factory=dict)
    field_styles: dict[str, QueryStyle] = field(default_factory=dict)
    styles: dict[str, ParamStyle] = field(default_factory=dict)
    wire_names: dict[str, str] = field(default_factory=dict)


@dataclass
class _Planner:
    doc: dict[str, Any]
    source: OpenApiSource
    document_url: str | None
    notes: PlanNotes
    cycles: set[str] = field(default_factory=set)
    truncated: set[str] = field(default_factory=set)
    secrets: dict[str, SecretRequirement] = field(default_factory=dict)
    unserved_outputs: list[str] = field(default_factory=list)
    """Operations whose documented response is too large to serve as an output schema even summarised."""
    _budget: int = 0

    # --- $ref ---

    def lookup(self, ref: Any, where: str) -> Any:
        """The node a local `$ref` points at."""
        if not isinstance(ref, str):
            raise PlanProblem(f"{_where(where)}: $ref must be a string")
        if not ref.startswith("#"):
            raise PlanProblem(
                f"{_where(where)}: $ref {ref!r} points outside the document; only '#/...' refs are supported"
            )
        try:
            return resolve_ref(self.doc, ref)
        except LookupError:
            raise PlanProblem(f"{_where(where)}: $ref {ref!r} does not resolve") from None

    def deref(self, node: Any, where: str) -> Any:
        """Follow a chain of `$ref`s to a non-reference object (parameters, bodies, schemes)."""
        seen: list[str] = []
        while isinstance(node, dict) and "$ref" in node:
            ref = node["$ref"]
            if ref in seen:
                raise PlanProblem(f"{_where(where)}: $ref {ref!r} refers to itself in a loop")
            seen.append(ref)
            node = self.lookup(ref, where)
        return node

    def schema(self, schema: Any, where: str) -> dict[str, Any]:
        """A self-contained JSON Schema: refs inlined, recursion cut (and said so), 3.0 quirks made JSON Schema."""
        self._budget = MAX_SCHEMA_NODES
        return self._inline(schema, where, (), 0)

    def _inline(self, schema: Any, where: str, stack: tuple[str, ...], depth: int) -> dict[str, Any]:
        if isinstance(schema, bool):
            return {} if schema else {"not": {}}
        if not isinstance(schema, dict):
            raise PlanProblem(f"{_where(where)}: a schema must be an object, not {type(schema).__name__}")
        self._budget -= 1
        if depth > MAX_SCHEMA_DEPTH or self._budget < 0:
            self.truncated.add(where)
            return {"description": "(schema cut here: nested too deeply or too large to describe in full)"}
        if "$ref" in schema:
            ref = schema["$ref"]
            target = self.lookup(ref, where)
            name = str(ref).rsplit("/", 1)[-1]
            if ref in stack:
                self.cycles.add(name)
                cut: dict[str, Any] = {
                    "description": f"{name} (recursive: a {name} nested in itself; the schema is cut here to "
                                   f"stay finite, send a {name} of the shape described above)",
                }
                if isinstance(target, dict) and isinstance(target.get("type"), str):
                    cut["type"] = target["type"]
                return cut
            siblings = {k: v for k, v in schema.items() if k != "$ref"}
            merged = {**target, **siblings} if isinstance(target, dict) else target
            return self._inline(merged, where, (*stack, ref), depth)
        out: dict[str, Any] = {}
        for key, value in schema.items():
            if key in _SCHEMA_DROPPED or key.startswith("x-"):
                continue
            if key in _SCHEMA_CHILD and isinstance(value, dict | bool):
                out[key] = self._inline(value, f"{where}.{key}", stack, depth + 1)
            elif key in _SCHEMA_LIST and isinstance(value, list):
                out[key] = [self._inline(v, f"{where}.{key}[{i}]", stack, depth + 1) for i, v in enumerate(value)]
            elif key in _SCHEMA_MAP and isinstance(value, dict):
                out[key] = {
                    name: self._inline(v, f"{where}.{key}.{name}", stack, depth + 1) for name, v in value.items()
                }
            elif key == "example":
                out.setdefault("examples", [value])
            elif key == "nullable":
                continue  # folded into `type` below
            else:
                out[key] = value
        if schema.get("nullable") is True:
            kind = out.get("type")
            if isinstance(kind, str):
                out["type"] = [kind, "null"]
        for bound, limit in (("exclusiveMaximum", "maximum"), ("exclusiveMinimum", "minimum")):
            # 3.0 style: a flag on `maximum`; JSON Schema puts the limit itself there
            if isinstance(out.get(bound), bool) and out.pop(bound) and limit in out:
                out[bound] = out.pop(limit)
        return out

    # --- servers and security ---

    def base_url(self, servers: Any, where: str) -> str:
        """The upstream base URL: the request's, else the first server of the operation, path or document."""
        if self.source.base_url:
            url, where = self.source.base_url, "base_url"
        else:
            if not isinstance(servers, list) or not servers:
                raise PlanProblem(f"{_where('servers')}: no server URL in the document; send base_url")
            first = servers[0]
            if not isinstance(first, dict) or not isinstance(first.get("url"), str):
                raise PlanProblem(f"{_where(where + '[0].url')}: missing")
            url = first["url"]
            for name, variable in (first.get("variables") or {}).items():
                default = variable.get("default") if isinstance(variable, dict) else None
                url = url.replace("{" + name + "}", str(default if default is not None else ""))
            if not urlsplit(url).scheme:
                if not self.document_url:
                    raise PlanProblem(
                        f"{_where(where + '[0].url')}: {url!r} is relative and the document was sent inline; "
                        "send base_url"
                    )
                url = urljoin(self.document_url, url)
            where = f"{where}[0].url"
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname or "{" in url:
            prefix = "base_url" if where == "base_url" else _where(where)
            raise PlanProblem(f"{prefix}: {url!r} is not an absolute http(s) URL")
        return url.rstrip("/")

    def auth(self, requirement: Any, where: str) -> Auth | str:
        """How an operation authenticates upstream, or why the planner cannot do it."""
        credentials = self.source.credentials
        if credentials is not None:
            if isinstance(requirement, list) and not requirement:
                return ("none", None, None)  # explicitly public operation
            return self._credentials_auth(credentials)
        if not isinstance(requirement, list) or not requirement:
            return ("none", None, None)
        schemes = self.deref(self.doc.get("components", {}), "components").get("securitySchemes", {})
        reasons: list[str] = []
        for alternative in requirement:
            if not isinstance(alternative, dict) or not alternative:
                return ("none", None, None)  # `{}`: authentication is optional
            if len(alternative) > 1:
                reasons.append(f"{' + '.join(alternative)} together")
                continue
            (scheme_name,) = alternative
            if scheme_name not in schemes:
                raise PlanProblem(
                    f"{_where(where + '.security')}: security scheme {scheme_name!r} is not in "
                    "components.securitySchemes"
                )
            scheme = self.deref(schemes[scheme_name], f"components.securitySchemes.{scheme_name}")
            mapped = self._scheme_auth(scheme_name, scheme)
            if isinstance(mapped, str):
                reasons.append(mapped)
                continue
            return mapped
        return "needs " + " or ".join(reasons) + " (send credentials to say how to authenticate)"

    def _credentials_auth(self, credentials: UpstreamCredentials) -> Auth:
        self._secret(credentials.secret_name, f"{credentials.type} credential for the upstream API")
        return (credentials.type, credentials.secret_name, credentials.name)

    def _scheme_auth(self, key: str, scheme: Any) -> Auth | str:
        if not isinstance(scheme, dict):
            return f"security scheme {key!r} (not an object)"
        kind, name = scheme.get("type"), secret_name(key)
        if kind == "apiKey" and scheme.get("in") in ("header", "query") and isinstance(scheme.get("name"), str):
            where: Literal["header", "query"] = "header" if scheme["in"] == "header" else "query"
            self._secret(name, f"API key sent in the {where} {scheme['name']!r} (security scheme {key!r})")
            return (where, name, scheme["name"])
        if kind == "http" and str(scheme.get("scheme", "")).lower() == "bearer":
            self._secret(name, f"bearer token (security scheme {key!r})")
            return ("bearer", name, None)
        if kind == "http" and str(scheme.get("scheme", "")).lower() == "basic":
            self._secret(name, f"`user:password` for HTTP basic auth (security scheme {key!r})")
            return ("basic", name, None)
        if kind in ("oauth2", "openIdConnect"):
            self._secret(name, f"an access token obtained for {kind} security scheme {key!r}, sent as a bearer token")
            return ("bearer", name, None)
        return f"security scheme {key!r} ({kind}{' in ' + str(scheme.get('in')) if scheme.get('in') else ''})"

    def _secret(self, name: str, description: str) -> None:
        self.secrets.setdefault(name, SecretRequirement(name=name, description=description))

    # --- operations ---

    def operations(self) -> list[_Operation]:
        """Every operation of the document, in document order."""
        paths = self.doc.get("paths")
        if paths is None:
            raise PlanProblem("OpenAPI document: paths: missing (an API without paths has no operations)")
        if not isinstance(paths, dict):
            raise PlanProblem("OpenAPI document: paths: must be an object")
        found: list[_Operation] = []
        for path, raw_item in paths.items():
            if not path.startswith("/"):
                raise PlanProblem(f"{_where('paths.' + path)}: a path must start with '/'")
            item = self.deref(raw_item, f"paths.{path}")
            if not isinstance(item, dict):
                raise PlanProblem(f"{_where('paths.' + path)}: must be an object")
            for method, op in item.items():
                if method not in METHODS:
                    continue
                if not isinstance(op, dict):
                    raise PlanProblem(f"{_where(f'paths.{path}.{method}')}: must be an object")
                found.append(_Operation(path, method, op, item, f"paths.{path}.{method}"))
        return found

    def tool(self, operation: _Operation, name: str) -> PlannedTool | str:
        """The tool for one operation, or why it cannot be planned."""
        op, where = operation.op, operation.where
        if operation.method not in PLANNED_METHODS:
            return f"{operation.method.upper()} is not a method tools can call"
        inputs = self._parameters(operation)
        if isinstance(inputs, str):
            return inputs
        refusal = self._request_body(operation, inputs)
        if refusal is not None:
            return refusal
        servers = op.get("servers") or operation.item.get("servers") or self.doc.get("servers")
        servers_at = (
            f"{where}.servers" if op.get("servers")
            else f"paths.{operation.path}.servers" if operation.item.get("servers") else "servers"
        )
        base_url = self.base_url(servers, servers_at)
        auth = self.auth(op["security"] if "security" in op else self.doc.get("security"), where)
        if isinstance(auth, str):
            return auth
        properties = inputs.properties
        input_schema: dict[str, Any] = {"type": "object", "properties": properties, "additionalProperties": False}
        if inputs.required:
            input_schema["required"] = inputs.required
        if unsafe := unsafe_property_names(input_schema):
            self.notes.flag(PlanFlag(kind="note", detail=f"{operation.method.upper()} {operation.path}: nested "
                                     f"property name(s) some model APIs refuse, served as the API names them: "
                                     + ", ".join(repr(u) for u in unsafe[:5])))
        method = operation.method.upper()
        title, description = _title_and_description(operation)
        return PlannedTool(
            name=name,
            title=title,
            description=description,
            input_schema=input_schema,
            output_schema=self._output_schema(operation),
            tags=tuple(dict.fromkeys(t for t in op.get("tags") or [] if isinstance(t, str))),
            read_only=method in ("GET", "HEAD"),
            implementation=HttpCall(
                method=method,  # type: ignore[arg-type]  # one of PLANNED_METHODS, upper-cased
                base_url=base_url,
                path=operation.path,
                path_params=tuple(inputs.located["path"]),
                query_params=tuple(inputs.located["query"]),
                header_params=tuple(inputs.located["header"]),
                cookie_params=tuple(inputs.located["cookie"]),
                query_styles=inputs.query_styles,
                styles=inputs.styles,
                wire_names=inputs.wire_names,
                body_param=inputs.body_param,
                body_renames=inputs.body_renames,
                param_renames=inputs.param_renames,
                body_encoding=inputs.body_encoding,
                field_styles=inputs.field_styles,
                body_media_type=inputs.body_media_type,
                file_fields=inputs.file_fields,
                auth=auth[0],
                auth_secret=auth[1],
                auth_name=auth[2],
            ),
        )

    def _parameters(self, operation: _Operation) -> _Inputs | str:
        """The tool inputs from the operation's (and its path item's) parameters and path placeholders, or why
        they cannot be planned."""
        op, where = operation.op, operation.where
        inputs = _Inputs()
        properties, required, located = inputs.properties, inputs.required, inputs.located
        merged: dict[tuple[str, str], tuple[dict[str, Any], str]] = {}
        for level, owner in (("", operation.item), ("", op)):
            base = where if owner is op else f"paths.{operation.path}"
            for index, raw in enumerate(owner.get("parameters") or []):
                at = f"{base}{level}.parameters[{index}]"
                param = self.deref(raw, at)
                if not isinstance(param, dict) or not isinstance(param.get("name"), str) or "in" not in param:
                    raise PlanProblem(f"{_where(at)}: a parameter needs `name` and `in`")
                merged[(param["in"], param["name"])] = (param, at)
        for (location, pname), (param, at) in merged.items():
            if location == "header" and pname.lower() in _DROPPED_HEADERS:
                continue
            if location not in located:
                raise PlanProblem(f"{_where(at)}: `in` must be path, query, header or cookie, not {location!r}")
            if pname in {inputs.wire_names.get(p, p) for p in properties}:
                return f"parameter name {pname!r} is used twice (path/query/header)"
            if "schema" in param:
                schema = self.schema(param["schema"], f"{at}.schema")
            elif isinstance(param.get("content"), dict) and param["content"]:
                media = next(iter(param["content"].values()))
                schema = self.schema((media or {}).get("schema", {}), f"{at}.content")
            else:
                schema = {"type": "string"}
            if isinstance(param.get("description"), str) and param["description"].strip():
                schema = {**schema, "description": param["description"].strip()}
            schema, renames = model_safe_properties(schema)
            if renames:
                inputs.param_renames[pname] = renames
            prop = model_safe_name(pname, set(properties))
            if prop != pname:
                inputs.wire_names[prop] = pname
                said = schema.get("description", "")
                schema = {**schema, "description": f"{said} (sent as {pname!r})".strip()}
            properties[prop] = schema
            located[location].append(prop)
            if location == "query" and (style := query_style(param)) != "form":
                inputs.query_styles[pname] = style
            elif location != "query":
                try:
                    written = param_style(location, param)
                except ValueError as exc:
                    return f"{location} parameter {pname!r}: {exc}"
                if written is not None:
                    inputs.styles[pname] = written
            if location == "path" or param.get("required"):
                required.append(prop)
        for placeholder in re.findall(r"\{([^}]+)\}", operation.path):
            if placeholder not in located["path"]:
                self.notes.warn(f"{where}: path placeholder {{{placeholder}}} has no parameter; planned as a string")
                properties[placeholder] = {"type": "string"}
                located["path"].append(placeholder)
                required.append(placeholder)
        return inputs

    def _output_schema(self, operation: _Operation) -> dict[str, Any] | None:
        """The tool's output schema: its first success response's JSON schema (200 before 201... before 2XX), as
        `output_schema` serves it; None when the document gives no JSON success response."""
        responses = operation.op.get("responses")
        if not isinstance(responses, dict):
            return None
        success = sorted((str(code) for code in responses if str(code).startswith("2")), key=lambda c: c.upper())
        for code in success:
            where = f"{operation.where}.responses.{code}"
            response = self.deref(responses[code], where)
            content = response.get("content") if isinstance(response, dict) else None
            if not isinstance(content, dict):
                continue
            media_type = _media_type(content, _BODY_MEDIA_TYPES[0][1])
            media = content.get(media_type) if media_type is not None else None
            if isinstance(media, dict) and "schema" in media:
                served = output_schema(self.schema(media["schema"], f"{where}.content.{media_type}.schema"))
                if served is None:
                    self.unserved_outputs.append(f"{operation.method.upper()} {operation.path}")
                return served
        return None

    def _left_out(self, operation: _Operation, what: str) -> None:
        """Flag something optional of an operation that its tool goes without: nothing is dropped silently."""
        self.notes.flag(PlanFlag(kind="note", detail=f"{operation.method.upper()} {operation.path}: planned "
                                                     f"without {what}"))

    def _request_body(self, operation: _Operation, inputs: _Inputs) -> str | None:
        """Add the operation's request body to `inputs` (JSON, form fields, multipart parts or text, in that order
        of preference when it offers several); why it cannot be planned, or None."""
        op, where = operation.op, operation.where
        if "requestBody" not in op:
            return None
        body = self.deref(op["requestBody"], f"{where}.requestBody")
        content = body.get("content") if isinstance(body, dict) else None
        if not isinstance(content, dict) or not content:
            raise PlanProblem(f"{_where(where + '.requestBody')}: needs `content`")
        chosen = next(((media_type, encoding) for encoding, wanted in _BODY_MEDIA_TYPES
                       if (media_type := _media_type(content, wanted)) is not None), None)
        if chosen is None:
            why = (f"sends its request body only as {', '.join(content)}; tools send JSON, form fields, multipart "
                   "parts or text")
            if body.get("required"):
                return why
            self._left_out(operation, f"its optional request body: it {why}")
            return None
        media_type, inputs.body_encoding = chosen
        inputs.body_param = unique_name("body", set(inputs.properties))
        media = content[media_type] or {}
        at = f"{where}.requestBody.content.{media_type}.schema"
        schema = self.schema(media.get("schema", {}), at)
        if inputs.body_encoding == "text":
            inputs.body_media_type = media_type.split(";")[0].strip().lower()
            schema = {"type": "string", **{k: v for k, v in schema.items() if k in _TEXT_KEYWORDS}}
        elif inputs.body_encoding == "form":
            encodings = media.get("encoding")
            for field_name, encoding in (encodings.items() if isinstance(encodings, dict) else ()):
                if isinstance(encoding, dict) and (style := query_style(encoding)) != "form":
                    inputs.field_styles[field_name] = style
        elif inputs.body_encoding == "multipart":
            schema, inputs.file_fields = _file_fields(schema, media.get("encoding"))
        schema, inputs.body_renames = model_safe_properties(schema)
        if isinstance(body.get("description"), str) and body["description"].strip():
            schema = {**schema, "description": body["description"].strip()}
        inputs.properties[inputs.body_param] = schema
        if body.get("required"):
            inputs.required.append(inputs.body_param)
        return None


FORM_MEDIA_TYPE = "application/x-www-form-urlencoded"
_TEXT_KEYWORDS = frozenset({"description", "examples", "default", "enum", "minLength", "maxLength", "pattern",
                            "format"})
"""What a text body's schema keeps of its document's schema (a text body is a string, whatever that says)."""
_BODY_MEDIA_TYPES: tuple[tuple[BodyEncoding, Callable[[str], bool]], ...] = (
    ("json", lambda m: m == "application/json" or m.endswith("+json")),
    ("form", lambda m: m == FORM_MEDIA_TYPE),
    ("multipart", lambda m: m == "multipart/form-data"),
    ("text", lambda m: m.startswith("text/")),
)
"""The request bodies tools send, in order of preference, each with the media types it sends."""

FILE_INPUT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "base64": {"type": "string", "contentEncoding": "base64", "description": "The file's content, base64."},
        "url": {"type": "string", "format": "uri",
                "description": "Where the server fetches the file from instead (one of its upstream hosts)."},
        "filename": {"type": "string"},
        "content_type": {"type": "string", "description": "The file's media type (application/octet-stream "
                                                          "when not given)."},
    },
    "oneOf": [{"required": ["base64"]}, {"required": ["url"]}],
    "additionalProperties": False,
}
"""What a model sends for a file field of a multipart body (`HttpCall.file_fields`)."""


_OUTPUT_DROPPED = frozenset({
    "required", "enum", "const", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf",
    "minLength", "maxLength", "pattern", "minItems", "maxItems", "uniqueItems", "minProperties", "maxProperties",
    "dependentRequired", "readOnly", "writeOnly",
})
"""Output-schema keywords left out: what real APIs answer departs from them too often (a field not always there,
an enum grown since the document was written) for a client to hold every answer to them."""


MAX_OUTPUT_SCHEMA = 4_000
"""Characters of JSON a tool's output schema may take (~1,000 tokens): deeper levels are summarised until it fits
(real response schemas run to 80,000 tokens once their refs are inlined, and every client pays for them)."""


def output_schema(schema: dict[str, Any], max_chars: int = MAX_OUTPUT_SCHEMA) -> dict[str, Any] | None:
    """A documented response schema as a tool's `outputSchema`, or None when even its top level is too large.

    An object at the top (MCP's rule; anything else goes under `result`, as the runner puts such a value), and
    lenient where APIs drift from their documents: every value may also be null, `oneOf` is `anyOf`,
    `additionalProperties: false` and the `_OUTPUT_DROPPED` constraints are left out (an enum is kept as the
    description's list of known values). Levels below the deepest that fits `max_chars` keep only their type and
    the start of their description. What remains tells a model the shape, names, types and meanings of the
    answer, and every answer that keeps to the document keeps to it."""
    for depth in (8, 4, 3, 2, 1):
        served = _served_output(schema, depth)
        if len(json.dumps(served)) <= max_chars:
            return served
    return None


def _served_output(schema: dict[str, Any], max_depth: int) -> dict[str, Any]:
    def lenient(node: Any, depth: int) -> Any:
        if not isinstance(node, dict):
            return node
        if depth >= max_depth:
            summary = {k: v for k, v in node.items() if k == "type"}
            if isinstance(node.get("description"), str):
                summary["description"] = node["description"][:120]
            node = summary
        out: dict[str, Any] = {}
        for key, value in node.items():
            if key in _OUTPUT_DROPPED or (key == "additionalProperties" and value is False):
                continue
            if key in _SCHEMA_MAP and isinstance(value, dict):
                out[key] = {name: lenient(sub, depth + 1) for name, sub in value.items()}
            elif key in _SCHEMA_LIST and isinstance(value, list):
                out["anyOf" if key == "oneOf" else key] = [lenient(sub, depth + 1) for sub in value]
            elif key in _SCHEMA_CHILD:
                out[key] = lenient(value, depth + 1)
            else:
                out[key] = value
        if isinstance(node.get("enum"), list) and node["enum"]:
            known = ", ".join(json.dumps(v) for v in node["enum"][:20])
            out["description"] = f"{out.get('description', '')} (known values: {known})".strip()
        kind = out.get("type")
        if isinstance(kind, str) and kind != "null":
            out["type"] = [kind, "null"]
        elif isinstance(kind, list) and "null" not in kind:
            out["type"] = [*kind, "null"]
        return out

    served: dict[str, Any] = lenient(schema, 0)
    is_object = schema.get("type") == "object" or ("type" not in schema and "properties" in schema)
    if is_object:
        served["type"] = "object"  # the top is the result itself: an object, never null
        return served
    return {"type": "object", "properties": {"result": served}, "required": ["result"]}


def _is_file(schema: dict[str, Any], content_type: Any) -> bool:
    """Whether a multipart field is a file: binary (`format: binary`, or 3.1's `contentMediaType` /
    `contentEncoding`), or given a non-text `contentType` in the body's `encoding`."""
    if schema.get("format") == "binary" or "contentMediaType" in schema or "contentEncoding" in schema:
        return True
    kind = str(content_type or "").split(";")[0].strip().lower()
    return bool(kind) and not (kind.startswith("text/") or kind == "application/json" or kind.endswith("+json"))


def _file_fields(schema: dict[str, Any], encoding: Any) -> tuple[dict[str, Any], tuple[str, ...]]:
    """A multipart body's schema with each file field (or array of files) described as `FILE_INPUT_SCHEMA`, and
    the names of those fields."""
    properties = schema.get("properties")
    if not isinstance(properties, dict):
        return schema, ()
    encodings = encoding if isinstance(encoding, dict) else {}
    served: dict[str, Any] = {}
    files: list[str] = []
    for name, field_schema in properties.items():
        content_type = (encodings.get(name) or {}).get("contentType") if isinstance(encodings.get(name), dict) \
            else None
        items = field_schema.get("items") if field_schema.get("type") == "array" else None
        described = {k: v for k, v in field_schema.items() if k == "description"}
        if isinstance(items, dict) and _is_file(items, content_type):
            served[name] = {"type": "array", "items": FILE_INPUT_SCHEMA, **described}
            files.append(name)
        elif items is None and _is_file(field_schema, content_type):
            served[name] = {**FILE_INPUT_SCHEMA, **described}
            files.append(name)
        else:
            served[name] = field_schema
    return {**schema, "properties": served}, tuple(files)


MODEL_SAFE_NAME = re.compile(r"^[a-zA-Z0-9_.-]{1,64}$")
"""A property name every major model API accepts."""


def model_safe_properties(schema: Any) -> tuple[Any, dict[str, Any]]:
    """`schema` with every property name a model API would refuse served as one it accepts (`model_safe_name`,
    its description saying what it is sent as), and the tree that maps them back (`HttpCall.body_renames`), through
    nested objects, array items and anyOf/oneOf/allOf branches (whose trees merge: a value matches one of them)."""
    if not isinstance(schema, dict):
        return schema, {}
    out = dict(schema)
    tree: dict[str, Any] = {}
    properties = schema.get("properties")
    if isinstance(properties, dict):
        served: dict[str, Any] = {}
        served_as: dict[str, str] = {}
        for wire, sub in properties.items():
            name = model_safe_name(wire, set(served))
            sub, subtree = model_safe_properties(sub)
            if name != wire:
                said = sub.get("description", "") if isinstance(sub, dict) else ""
                sub = {**sub, "description": f"{said} (sent as {wire!r})".strip()} if isinstance(sub, dict) else sub
                tree.setdefault("rename", {})[name] = wire
            if subtree:
                tree.setdefault("fields", {})[name] = subtree
            served[name] = sub
            served_as[wire] = name
        out["properties"] = served
        if isinstance(schema.get("required"), list):
            out["required"] = [served_as.get(r, r) for r in schema["required"]]
    if isinstance(schema.get("items"), dict):
        out["items"], items_tree = model_safe_properties(schema["items"])
        if items_tree:
            tree["items"] = items_tree
    for key in ("anyOf", "oneOf", "allOf"):
        if isinstance(schema.get(key), list):
            branches = [model_safe_properties(branch) for branch in schema[key]]
            out[key] = [branch for branch, _ in branches]
            for _, branch_tree in branches:
                _merge_tree(tree, branch_tree)
    return out, tree


def _merge_tree(into: dict[str, Any], other: dict[str, Any]) -> None:
    """Merge the renames tree `other` into `into`."""
    if other.get("rename"):
        into.setdefault("rename", {}).update(other["rename"])
    for name, subtree in other.get("fields", {}).items():
        _merge_tree(into.setdefault("fields", {}).setdefault(name, {}), subtree)
    if other.get("items"):
        _merge_tree(into.setdefault("items", {}), other["items"])


def unsafe_property_names(schema: Any) -> list[str]:
    """Property names nested in `schema` that a model API may refuse (the top level's are renamed: `wire_names`)."""
    found: list[str] = []

    def walk(node: Any, top: bool) -> None:
        if not isinstance(node, dict):
            return
        for key, value in node.items():
            if key in _SCHEMA_MAP and isinstance(value, dict):
                for name, sub in value.items():
                    if not top and not MODEL_SAFE_NAME.match(name) and name not in found:
                        found.append(name)
                    walk(sub, False)
            elif key in _SCHEMA_LIST and isinstance(value, list):
                for sub in value:
                    walk(sub, False)
            elif key in _SCHEMA_CHILD:
                walk(value, False)

    walk(schema, True)
    return found


def model_safe_name(wire: str, taken: set[str]) -> str:
    """`wire` when a model API accepts it as a property name, else one it accepts that says the same:
    `DateSent<` -> `DateSent_before`, `DateSent>` -> `DateSent_after`, `project_ids[]` -> `project_ids`."""
    if MODEL_SAFE_NAME.match(wire) and wire not in taken:
        return wire
    name = wire.removesuffix("[]").replace("<", "_before").replace(">", "_after")
    name = re.sub(r"[^a-zA-Z0-9_.-]+", "_", name).strip("_")[:60] or "param"
    candidate, n = name, 2
    while candidate in taken:
        candidate, n = f"{name}_{n}", n + 1
    return candidate


_PARAM_STYLES: dict[str, dict[tuple[str, bool], ParamStyle | None]] = {
    "path": {("simple", False): None, ("simple", True): "simple_exploded", ("label", False): "label",
             ("label", True): "label_exploded", ("matrix", False): "matrix", ("matrix", True): "matrix_exploded"},
    "header": {("simple", False): None, ("simple", True): "simple_exploded"},
    "cookie": {("form", True): None, ("form", False): "form_joined"},
}
"""(OpenAPI style, explode) -> how it is written (`ParamStyle`), per location; None is the location's default."""


def param_style(location: str, param: dict[str, Any]) -> ParamStyle | None:
    """How a path, header or cookie parameter is written, from its OpenAPI `style` (default simple, or form for
    cookies) and `explode` (default false, or true for form); None when it is the location's default. ValueError
    for a style the location does not have (its operation is skipped, and flagged, saying so)."""
    styles = _PARAM_STYLES[location]
    style = param.get("style", "form" if location == "cookie" else "simple")
    explode = param.get("explode", style == "form")
    if (style, bool(explode)) not in styles:
        allowed = sorted({s for s, _ in styles})
        raise ValueError(f"style {style!r} (explode {bool(explode)}) is not one a {location} parameter can have "
                         f"({', '.join(allowed)})")
    return styles[(style, bool(explode))]


def query_style(param: dict[str, Any]) -> QueryStyle:
    """How a query parameter is written, from its OpenAPI `style` (default form) and `explode` (default true
    for form, false for the delimited styles)."""
    style = param.get("style", "form")
    explode = param.get("explode", style == "form")
    if style == "deepObject":
        return "deep_object"
    if style in ("spaceDelimited", "pipeDelimited") and not explode:
        return "space_delimited" if style == "spaceDelimited" else "pipe_delimited"
    return "form" if explode else "form_joined"


def _media_type(content: dict[str, Any], wanted: Callable[[str], bool]) -> str | None:
    """The first media type of a `content` map that `wanted` accepts (compared without parameters)."""
    return next((m for m in content if wanted(m.split(";")[0].strip().lower())), None)


def _title_and_description(operation: _Operation) -> tuple[str, str]:
    """A tool's title and description from its operation's summary, description and operation id."""
    op, method = operation.op, operation.method.upper()
    summary = str(op.get("summary") or "").strip()
    detail = str(op.get("description") or "").strip()
    description = "\n\n".join(part for part in dict.fromkeys((summary, detail)) if part)
    if not description:
        description = f"{method} {operation.path}" + (f" ({op['operationId']})" if op.get("operationId") else "")
    if op.get("deprecated"):
        description = f"(Deprecated upstream.) {description}"
    if len(description) > MAX_DESCRIPTION:
        description = description[: MAX_DESCRIPTION - 1].rstrip() + "…"
    title = summary.splitlines()[0].strip().rstrip(".") if summary else ""
    if not title and op.get("operationId"):
        title = snake_case(str(op["operationId"])).replace("_", " ").capitalize()
    return (title or f"{method} {operation.path}")[:200], description


def _selected(operations: list[_Operation], source: OpenApiSource, names: list[str]) -> list[int]:
    """Indexes of the operations the request chose (all when it chose none)."""
    if not source.operations and not source.tags:
        return list(range(len(operations)))
    wanted = {w.strip().lower() for w in source.operations}
    tags = set(source.tags)
    keep: list[int] = []
    matched_ops: set[str] = set()
    matched_tags: set[str] = set()
    for index, operation in enumerate(operations):
        keys = {
            str(operation.op.get("operationId", "")).lower(),
            names[index],
            f"{operation.method} {operation.path}".lower(),
        }
        op_tags = {t for t in operation.op.get("tags") or [] if isinstance(t, str)}
        hit_ops = keys & wanted
        hit_tags = op_tags & tags
        matched_ops |= hit_ops
        matched_tags |= hit_tags
        if hit_ops or hit_tags:
            keep.append(index)
    for choice in source.operations:
        if choice.strip().lower() not in matched_ops:
            raise PlanProblem(f"operations: {choice!r} matches no operation (use an operationId, a tool name or "
                              "'METHOD /path')")
    for tag in source.tags:
        if tag not in matched_tags:
            raise PlanProblem(f"tags: {tag!r} is on no operation")
    return keep


def plan_openapi(
    text: str, source: OpenApiSource, server_name: str, notes: PlanNotes, document_url: str | None = None
) -> ToolPlan:
    """The tool plan of an OpenAPI document; PlanProblem says where the document stops it."""
    doc = parse_document(text)
    if is_swagger2(doc):
        doc, approximations = openapi3_from_swagger2(doc, document_url)
        notes.info("converted from Swagger 2.0 to OpenAPI 3.0")
        for approximation in approximations:
            notes.warn(f"converted from Swagger 2.0 approximately: {approximation}")
            notes.flag(PlanFlag(kind="note", detail=f"converted from Swagger 2.0 approximately: {approximation}"))
    version = doc.get("openapi")
    if not isinstance(version, str) or not re.match(r"^3\.[01]\.", version + "."):
        found = f"swagger {doc['swagger']!r}" if "swagger" in doc else repr(version)
        raise PlanProblem(f"OpenAPI document: openapi: {found} is not OpenAPI 3.0 or 3.1 (nor Swagger 2.0)")
    planner = _Planner(doc=doc, source=source, document_url=document_url, notes=notes)
    operations = planner.operations()
    info: dict[str, Any] = doc["info"] if isinstance(doc.get("info"), dict) else {}
    title = f"{info.get('title', 'untitled')!s} {info.get('version', '')!s}".strip()
    notes.info(f"OpenAPI {version} document {title!r}: found {len(operations)} operations")
    used: set[str] = set()
    names = [
        unique_name(
            snake_case(str(o.op["operationId"])) if o.op.get("operationId") else path_tool_name(o.method, o.path), used
        )
        for o in operations
    ]
    chosen = _selected(operations, source, names)
    if len(chosen) != len(operations):
        notes.info(f"selected {len(chosen)} of {len(operations)} operations")
    tools: list[PlannedTool] = []
    skipped: list[str] = []
    for index in chosen:
        operation = operations[index]
        planned = planner.tool(operation, names[index])
        label = f"{operation.method.upper()} {operation.path}"
        if isinstance(planned, str):
            skipped.append(f"{label} ({planned})")
            notes.flag(PlanFlag(kind="skipped_operation", detail=f"{label}: {planned}"))
            continue
        tools.append(planned)
    if skipped:
        notes.warn(f"skipped {len(skipped)}: " + "; ".join(skipped))
    if len(tools) > MAX_TOOLS:
        notes.flag(PlanFlag(kind="truncated", detail=f"{len(tools)} tools cut to the first {MAX_TOOLS}"))
        notes.warn(f"{len(tools)} tools is too many for a client; kept the first {MAX_TOOLS} (choose operations "
                   "or tags)")
        tools = tools[:MAX_TOOLS]
    if not tools:
        raise PlanProblem("OpenAPI document: no operation could be planned" + (f" ({'; '.join(skipped)})" if skipped
                                                                                 else ""))
    if planner.cycles:
        cycles = ", ".join(sorted(planner.cycles))
        notes.info(f"recursive schemas cut where they refer back to themselves: {cycles}")
        notes.flag(PlanFlag(kind="note", detail=f"recursive schemas cut (said so in their descriptions): {cycles}"))
    if planner.unserved_outputs:
        notes.flag(PlanFlag(kind="note", detail=f"{len(planner.unserved_outputs)} tool(s) without an output schema: "
                            "their response schemas have too many fields to serve even summarised ("
                            + ", ".join(planner.unserved_outputs[:5]) + ("…" if len(planner.unserved_outputs) > 5
                                                                         else "") + ")"))
    if planner.truncated:
        notes.flag(PlanFlag(kind="truncated", detail=f"{len(planner.truncated)} schema(s) cut for depth or size"))
        notes.warn(f"{len(planner.truncated)} schema(s) were nested too deeply or too large and were cut")
    bases = sorted({t.implementation.base_url for t in tools if isinstance(t.implementation, HttpCall)})
    notes.info("upstream: " + ", ".join(bases))
    hosts = sorted({urlsplit(base).hostname or "" for base in bases} - {""})
    secrets = tuple(planner.secrets[k] for k in sorted(planner.secrets))
    if secrets:
        notes.info("needs upstream secret(s), supplied at deploy time by name: " + ", ".join(s.name for s in secrets))
    return ToolPlan(
        server_name=server_name,
        tools=tuple(tools),
        secrets=secrets,
        upstream_hosts=tuple(hosts),
        planned_from="openapi",
        flags=tuple(notes.flags),
    )
