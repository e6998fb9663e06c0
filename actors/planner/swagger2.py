"""Swagger 2.0 documents as OpenAPI 3.0.3, so that the planner plans them as it plans any OpenAPI document.

Written here rather than taken from a library: the Python ones either send the document to a web service to be
converted (prance), bring a SOAP stack with them (spec2openapi: zeep and lxml) or are no longer maintained, and
the mapping is short once the two specifications are read side by side.

What cannot be converted stops planning with a PlanProblem that names where it is in the Swagger document, as
the planner names places in an OpenAPI one (`Swagger 2.0 document: paths./pets.post.parameters[1]: ...`). What
is converted only approximately (a `tsv` array has no OpenAPI 3 style) comes back as a note a person should read.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit

from actors.planner.problems import PlanProblem
from actors.planner.refs import resolve_ref

OPENAPI_VERSION = "3.0.3"
"""The OpenAPI version a converted document declares."""
SWAGGER_METHODS = ("get", "put", "post", "delete", "options", "head", "patch")
"""Operation keys of a Swagger 2.0 path item."""
FORM_MEDIA_TYPE = "application/x-www-form-urlencoded"
MULTIPART_MEDIA_TYPE = "multipart/form-data"
MAX_NOTES = 20
"""Approximations listed one by one; past this they are counted (a document can repeat one a thousand times)."""

_REF_ROOTS = {
    "#/definitions/": "#/components/schemas/",
    "#/parameters/": "#/components/parameters/",
    "#/responses/": "#/components/responses/",
}
"""Where a Swagger 2.0 `$ref` can point, and where the same thing is in OpenAPI 3.0."""
_LOCATIONS = ("query", "header", "path", "formData", "body")
_SIMPLE_KEYWORDS = (
    "type", "format", "items", "default", "maximum", "exclusiveMaximum", "minimum", "exclusiveMinimum",
    "maxLength", "minLength", "pattern", "maxItems", "minItems", "uniqueItems", "enum", "multipleOf",
)
"""Keywords of a non-body parameter, header or items object that OpenAPI 3.0 moves into its `schema`."""
_QUERY_STYLES = {
    "csv": ("form", False),
    "ssv": ("spaceDelimited", False),
    "pipes": ("pipeDelimited", False),
    "multi": ("form", True),
}
"""collectionFormat -> (style, explode) of a query parameter or a form field."""
_COLLECTION_FORMATS = ("csv", "ssv", "tsv", "pipes", "multi")


def _where(path: str) -> str:
    return f"Swagger 2.0 document: {path}" if path else "Swagger 2.0 document"


def is_swagger2(doc: dict[str, Any]) -> bool:
    """Whether a parsed document is Swagger 2.0 (`swagger: "2.0"`; YAML may read an unquoted 2.0 as a number)."""
    return "openapi" not in doc and str(doc.get("swagger")) == "2.0"


def openapi3_from_swagger2(
    doc: dict[str, Any], document_url: str | None = None
) -> tuple[dict[str, Any], list[str]]:
    """The OpenAPI 3.0.3 document a Swagger 2.0 one says, and notes of what it could only approximate.

    `document_url` is where the document was fetched from, if it was: its scheme is the one Swagger 2.0 says to
    use when the document names none. PlanProblem says where the document stops the conversion.
    """
    converter = _Converter(doc, document_url)
    converted = converter.document()
    notes = converter.notes[:MAX_NOTES]
    if len(converter.notes) > MAX_NOTES:
        notes.append(f"{len(converter.notes) - MAX_NOTES} more approximation(s) not listed")
    return converted, notes


@dataclass
class _Converter:
    doc: dict[str, Any]
    document_url: str | None
    notes: list[str] = field(default_factory=list)

    def note(self, message: str) -> None:
        """Record an approximation once."""
        if message not in self.notes:
            self.notes.append(message)

    # --- the document ---

    def document(self) -> dict[str, Any]:
        doc = self.doc
        out: dict[str, Any] = {"openapi": OPENAPI_VERSION}
        for key in ("info", "tags", "externalDocs", "security"):
            if key in doc:
                out[key] = doc[key]
        out.update({k: v for k, v in doc.items() if k.startswith("x-")})
        servers = self.servers(doc.get("schemes"), "schemes")
        if servers:
            out["servers"] = servers
        consumes = self.media_types(doc, "")
        produces = self.media_types(doc, "", "produces")
        components: dict[str, Any] = {}
        definitions = self._object(doc.get("definitions"), "definitions")
        if definitions:
            components["schemas"] = {
                name: self.schema(schema, f"definitions.{name}") for name, schema in definitions.items()
            }
        parameters = {
            name: self.parameter(param, f"parameters.{name}")
            for name, param in self._object(doc.get("parameters"), "parameters").items()
            if not (isinstance(param, dict) and param.get("in") in ("body", "formData"))  # inlined where used
        }
        if parameters:
            components["parameters"] = parameters
        responses = {
            name: self.response(response, f"responses.{name}", produces)
            for name, response in self._object(doc.get("responses"), "responses").items()
        }
        if responses:
            components["responses"] = responses
        schemes = {
            name: self.security_scheme(scheme, f"securityDefinitions.{name}")
            for name, scheme in self._object(doc.get("securityDefinitions"), "securityDefinitions").items()
        }
        if schemes:
            components["securitySchemes"] = schemes
        if "paths" in doc:
            paths = doc["paths"]
            if not isinstance(paths, dict):
                raise PlanProblem(f"{_where('paths')}: must be an object")
            out["paths"] = {
                path: item if path.startswith("x-") else self.path_item(item, f"paths.{path}", consumes, produces)
                for path, item in paths.items()
            }
        if components:
            out["components"] = components
        return out

    def _object(self, value: Any, where: str) -> dict[str, Any]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise PlanProblem(f"{_where(where)}: must be an object")
        return value

    def media_types(self, owner: dict[str, Any], where: str, key: str = "consumes") -> list[str] | None:
        """An object's `consumes` or `produces`, or None when it has none."""
        if key not in owner:
            return None
        value = owner[key]
        at = f"{where}.{key}" if where else key
        if not isinstance(value, list) or not all(isinstance(m, str) for m in value):
            raise PlanProblem(f"{_where(at)}: must be a list of media types")
        return value

    # --- servers ---

    def servers(self, schemes: Any, where: str) -> list[dict[str, Any]]:
        """OpenAPI `servers` from `host`, `basePath` and `schemes` (the document's or an operation's)."""
        host, base_path = self.doc.get("host"), self.doc.get("basePath", "")
        if host is None and not base_path:
            return []
        if not isinstance(base_path, str) or (base_path and not base_path.startswith("/")):
            raise PlanProblem(f"{_where('basePath')}: {base_path!r} must be a path starting with '/'")
        if host is None:
            return [{"url": base_path}]  # relative: the planner resolves it against where the document came from
        if not isinstance(host, str) or not host or "/" in host or "?" in host or "#" in host:
            raise PlanProblem(f"{_where('host')}: {host!r} must be a host name and optional port, "
                              "without a scheme or a path")
        if schemes is None or schemes == []:
            fetched = urlsplit(self.document_url).scheme if self.document_url else ""
            if fetched in ("http", "https"):
                schemes = [fetched]
            else:
                schemes = ["https"]
                self.note(f"{where}: none given; https assumed (Swagger 2.0 says to use the scheme the document "
                          "was fetched with, and it was sent inline)")
        if not isinstance(schemes, list) or not all(isinstance(s, str) for s in schemes):
            raise PlanProblem(f"{_where(where)}: must be a list of http, https, ws or wss")
        preferred = sorted(dict.fromkeys(s.lower() for s in schemes), key=lambda s: ("https", "http").index(s)
                           if s in ("https", "http") else 2)
        return [{"url": f"{scheme}://{host}{base_path}"} for scheme in preferred]

    # --- $ref ---

    def ref(self, ref: Any, where: str) -> str:
        """A `$ref` rewritten to where OpenAPI 3.0 keeps the same thing; it must resolve."""
        if not isinstance(ref, str):
            raise PlanProblem(f"{_where(where)}: $ref must be a string")
        if not ref.startswith("#"):
            return ref  # another document: the planner says it cannot follow it, if it has to
        for old, new in _REF_ROOTS.items():
            if ref.startswith(old):
                self.lookup(ref, where)
                return new + ref[len(old):]
        raise PlanProblem(f"{_where(where)}: $ref {ref!r} points to no definition, parameter or response "
                          "(only '#/definitions/...', '#/parameters/...' and '#/responses/...' can be converted)")

    def lookup(self, ref: str, where: str) -> Any:
        """The node a local `$ref` points at."""
        try:
            return resolve_ref(self.doc, ref)
        except LookupError:
            raise PlanProblem(f"{_where(where)}: $ref {ref!r} does not resolve") from None

    # --- schemas ---

    def schema(self, schema: Any, where: str) -> Any:
        """A Schema Object as OpenAPI 3.0 writes it: refs moved, `x-nullable` and `type: file` said its way."""
        if not isinstance(schema, dict):
            return schema  # the planner says a schema must be an object, where it meets one
        out: dict[str, Any] = {}
        for key, value in schema.items():
            at = f"{where}.{key}"
            if key == "$ref":
                out[key] = self.ref(value, where)
            elif key == "x-nullable":
                if value is True:
                    out["nullable"] = True
            elif key == "discriminator" and isinstance(value, str):
                out[key] = {"propertyName": value}
            elif key in ("properties", "patternProperties") and isinstance(value, dict):
                out[key] = {name: self.schema(v, f"{at}.{name}") for name, v in value.items()}
            elif key in ("allOf", "anyOf", "oneOf", "items") and isinstance(value, list):
                out[key] = [self.schema(v, f"{at}[{i}]") for i, v in enumerate(value)]
            elif key in ("items", "additionalProperties", "not") and isinstance(value, dict):
                out[key] = self.schema(value, at)
            else:
                out[key] = value
        if out.get("type") == "file":
            out["type"], out["format"] = "string", "binary"
        return out

    def simple_schema(self, node: dict[str, Any], where: str) -> dict[str, Any]:
        """The `schema` of a non-body parameter, a header or an items object, from its own keywords."""
        out: dict[str, Any] = {}
        for key in _SIMPLE_KEYWORDS:
            if key not in node:
                continue
            value = node[key]
            if key == "items":
                if not isinstance(value, dict):
                    raise PlanProblem(f"{_where(where + '.items')}: must be an object")
                if "$ref" in value:  # not allowed by Swagger 2.0, written anyway: read it as a schema
                    out[key] = self.schema(value, f"{where}.items")
                    continue
                if value.get("type") == "array" and value.get("collectionFormat", "csv") != "csv":
                    self.note(f"{where}.items: an array nested in an array is sent as its outer array says; "
                              f"its own collectionFormat {value.get('collectionFormat')!r} has no OpenAPI 3 form")
                out[key] = self.simple_schema(value, f"{where}.items")
            else:
                out[key] = value
        if out.get("type") == "file":
            out["type"], out["format"] = "string", "binary"
        if node.get("x-nullable") is True:
            out["nullable"] = True
        return out

    # --- parameters ---

    def resolve_parameter(self, raw: Any, where: str) -> tuple[Any, str]:
        """A parameter (following a `$ref` to the document's `parameters`) and where it is written."""
        if isinstance(raw, dict) and "$ref" in raw:
            ref = raw["$ref"]
            rewritten = self.ref(ref, where)
            if not rewritten.startswith("#/components/parameters/"):
                if rewritten.startswith("#"):
                    raise PlanProblem(f"{_where(where)}: $ref {ref!r} is not a parameter ('#/parameters/...')")
                return raw, where  # another document: left for the planner to refuse if it must
            name = unquote(ref.removeprefix("#/parameters/")).replace("~1", "/").replace("~0", "~")
            return self.lookup(ref, where), f"parameters.{name}"
        return raw, where

    def _checked(self, param: Any, where: str) -> dict[str, Any]:
        if not isinstance(param, dict) or not isinstance(param.get("name"), str) or "in" not in param:
            raise PlanProblem(f"{_where(where)}: a parameter needs `name` and `in`")
        if param["in"] not in _LOCATIONS:
            raise PlanProblem(f"{_where(where)}: `in` must be query, header, path, formData or body, "
                              f"not {param['in']!r}")
        return param

    def parameter(self, param: Any, where: str) -> dict[str, Any]:
        """An OpenAPI 3.0 parameter from a Swagger 2.0 query, header or path one."""
        param = self._checked(param, where)
        location = param["in"]
        if location in ("body", "formData"):
            raise PlanProblem(f"{_where(where)}: a {location} parameter cannot be used here")
        if param.get("type") == "file":
            raise PlanProblem(f"{_where(where)}: `type: file` is only for formData parameters, not {location}")
        out: dict[str, Any] = {"name": param["name"], "in": location}
        for key in ("description", "required", "allowEmptyValue"):
            if key in param:
                out[key] = param[key]
        if location == "path":
            out["required"] = True  # Swagger 2.0 and OpenAPI 3.0 both say so; some documents leave it out
        if "type" not in param:
            self.note(f"{where}: parameter {param['name']!r} has no type; taken as a string")
        schema = self.simple_schema(param, where)
        out["schema"] = schema if "type" in param else {"type": "string", **schema}
        if param.get("type") == "array":
            out.update(self.array_style(param, location, where))
        out.update({k: v for k, v in param.items() if k.startswith("x-") and k != "x-nullable"})
        return out

    def array_style(self, param: dict[str, Any], location: str, where: str) -> dict[str, Any]:
        """`style`/`explode` saying how an array parameter is written, from its collectionFormat (default csv)."""
        collection = param.get("collectionFormat", "csv")
        if collection not in _COLLECTION_FORMATS:
            raise PlanProblem(f"{_where(where + '.collectionFormat')}: must be csv, ssv, tsv, pipes or multi, "
                              f"not {collection!r}")
        if location in ("path", "header"):
            if collection != "csv":
                self.note(f"{where}: collectionFormat {collection!r} has no OpenAPI 3 style for a {location} "
                          "parameter; sent comma-separated")
            return {}  # style simple, explode false: comma-separated, as csv
        if collection == "tsv":
            self.note(f"{where}: collectionFormat 'tsv' has no OpenAPI 3 style; sent comma-separated")
            collection = "csv"
        style, explode = _QUERY_STYLES[collection]
        return {"style": style, "explode": explode}

    def parameters(
        self, raw: Any, where: str
    ) -> tuple[list[Any], list[tuple[dict[str, Any], str]]]:
        """A parameter list: the OpenAPI 3.0 parameters, and the body and formData ones (with where each is)."""
        if raw is None:
            return [], []
        if not isinstance(raw, list):
            raise PlanProblem(f"{_where(where)}: must be a list")
        kept: list[Any] = []
        payload: list[tuple[dict[str, Any], str]] = []
        for index, entry in enumerate(raw):
            at = f"{where}[{index}]"
            param, param_at = self.resolve_parameter(entry, at)
            if param is entry and isinstance(entry, dict) and "$ref" in entry:
                kept.append(entry)  # a parameter in another document
                continue
            param = self._checked(param, param_at)
            if param["in"] in ("body", "formData"):
                payload.append((param, param_at))
            elif param is entry:
                kept.append(self.parameter(param, at))
            else:
                kept.append({"$ref": self.ref(entry["$ref"], at)})
        return kept, payload

    # --- path items and operations ---

    def path_item(
        self, item: Any, where: str, consumes: list[str] | None, produces: list[str] | None
    ) -> dict[str, Any]:
        if not isinstance(item, dict):
            raise PlanProblem(f"{_where(where)}: must be an object")
        out: dict[str, Any] = {}
        kept, shared_payload = self.parameters(item.get("parameters"), f"{where}.parameters")
        for key, value in item.items():
            if key in SWAGGER_METHODS:
                out[key] = self.operation(value, f"{where}.{key}", shared_payload, consumes, produces)
            elif key == "parameters":
                if kept:
                    out[key] = kept
            elif key == "$ref" or key.startswith("x-"):
                out[key] = value  # a path item in another document: the planner refuses it if it must
        return out

    def operation(
        self,
        op: Any,
        where: str,
        shared_payload: list[tuple[dict[str, Any], str]],
        consumes: list[str] | None,
        produces: list[str] | None,
    ) -> dict[str, Any]:
        if not isinstance(op, dict):
            raise PlanProblem(f"{_where(where)}: must be an object")
        out: dict[str, Any] = {}
        for key, value in op.items():
            if key in ("tags", "summary", "description", "externalDocs", "operationId", "deprecated", "security") \
                    or key.startswith("x-"):
                out[key] = value
        own_consumes = self.media_types(op, where)
        own_produces = self.media_types(op, where, "produces")
        consumes = own_consumes if own_consumes is not None else consumes
        produces = own_produces if own_produces is not None else produces
        kept, payload = self.parameters(op.get("parameters"), f"{where}.parameters")
        if kept:
            out["parameters"] = kept
        body = self.request_body(self._payload(shared_payload, payload), where, consumes or [])
        if body is not None:
            out["requestBody"] = body
        out["responses"] = {
            str(code): self.response(response, f"{where}.responses.{code}", produces)
            for code, response in self._object(op.get("responses"), f"{where}.responses").items()
        }
        if "schemes" in op:
            servers = self.servers(op["schemes"], f"{where}.schemes")
            if servers:
                out["servers"] = servers
        return out

    def _payload(
        self, shared: list[tuple[dict[str, Any], str]], own: list[tuple[dict[str, Any], str]]
    ) -> list[tuple[dict[str, Any], str]]:
        """The operation's body and formData parameters: its own, and its path item's that it does not override
        (an operation's body replaces its path item's, whatever their names)."""
        merged: dict[tuple[str, str], tuple[dict[str, Any], str]] = {}
        for level in (shared, own):
            bodies = [(p, at) for p, at in level if p["in"] == "body"]
            if len(bodies) > 1:
                raise PlanProblem(f"{_where(bodies[1][1])}: a second `in: body` parameter (an operation has at "
                                  f"most one body; the first is {bodies[0][0]['name']!r})")
            if bodies and level is own:
                merged = {key: entry for key, entry in merged.items() if key[0] != "body"}
            for param, at in level:
                merged[(param["in"], param["name"])] = (param, at)
        return list(merged.values())

    def request_body(
        self, payload: list[tuple[dict[str, Any], str]], where: str, consumes: list[str]
    ) -> dict[str, Any] | None:
        """The requestBody said by an operation's body parameter or its formData parameters."""
        if not payload:
            return None
        body = [(p, at) for p, at in payload if p["in"] == "body"]
        form = [(p, at) for p, at in payload if p["in"] == "formData"]
        if body and form:
            raise PlanProblem(f"{_where(form[0][1])}: formData parameters beside the body parameter at "
                              f"{body[0][1]} (Swagger 2.0 allows one or the other)")
        if body:
            param, at = body[0]
            if "schema" not in param:
                raise PlanProblem(f"{_where(at)}: a body parameter needs `schema`")
            schema = self.schema(param["schema"], f"{at}.schema")
            out: dict[str, Any] = {"content": {m: {"schema": schema} for m in consumes or ["application/json"]}}
            if param.get("description"):
                out["description"] = param["description"]
            if param.get("required"):
                out["required"] = True
            return out
        return self.form_body(form, where, consumes)

    def form_body(
        self, form: list[tuple[dict[str, Any], str]], where: str, consumes: list[str]
    ) -> dict[str, Any]:
        """formData parameters as one object body: multipart/form-data when a field is a file or the operation
        consumes multipart, else application/x-www-form-urlencoded."""
        properties: dict[str, Any] = {}
        required: list[str] = []
        encoding: dict[str, Any] = {}
        has_file = False
        for param, at in form:
            name = param["name"]
            has_file = has_file or param.get("type") == "file"
            field_schema = self.simple_schema(param, at)
            if "type" not in param:
                self.note(f"{at}: form field {name!r} has no type; taken as a string")
                field_schema = {"type": "string", **field_schema}
            if isinstance(param.get("description"), str) and param["description"]:
                field_schema["description"] = param["description"]
            properties[name] = field_schema
            if param.get("required"):
                required.append(name)
            if param.get("type") == "array":
                encoding[name] = self.array_style(param, "formData", at)
        accepted = [m for m in consumes if _base(m) in (FORM_MEDIA_TYPE, MULTIPART_MEDIA_TYPE)]
        if has_file:
            media_types = [m for m in accepted if _base(m) == MULTIPART_MEDIA_TYPE] or [MULTIPART_MEDIA_TYPE]
        else:
            media_types = accepted or [FORM_MEDIA_TYPE]
        if any(_base(m) == MULTIPART_MEDIA_TYPE for m in media_types):
            for name, style in encoding.items():
                if style != {"style": "form", "explode": True}:
                    self.note(f"{where}: form field {name!r} is an array sent as one part per item in "
                              "multipart/form-data, not joined as its collectionFormat says")
        schema: dict[str, Any] = {"type": "object", "properties": properties}
        if required:
            schema["required"] = required
        content: dict[str, Any] = {}
        for media_type in media_types:
            content[media_type] = {"schema": schema}
            if encoding and _base(media_type) == FORM_MEDIA_TYPE:
                content[media_type]["encoding"] = encoding
        out: dict[str, Any] = {"content": content}
        if required:
            out["required"] = True
        return out

    # --- responses ---

    def response(self, response: Any, where: str, produces: list[str] | None) -> dict[str, Any]:
        if not isinstance(response, dict):
            raise PlanProblem(f"{_where(where)}: must be an object")
        if "$ref" in response:
            return {"$ref": self.ref(response["$ref"], where)}
        out: dict[str, Any] = {"description": response.get("description", "")}
        headers = self._object(response.get("headers"), f"{where}.headers")
        if headers:
            out["headers"] = {}
            for name, header in headers.items():
                at = f"{where}.headers.{name}"
                if not isinstance(header, dict):
                    raise PlanProblem(f"{_where(at)}: must be an object")
                converted: dict[str, Any] = {"schema": self.simple_schema(header, at)}
                if "description" in header:
                    converted["description"] = header["description"]
                out["headers"][name] = converted
        if "schema" in response:
            schema = self.schema(response["schema"], f"{where}.schema")
            examples = response["examples"] if isinstance(response.get("examples"), dict) else {}
            out["content"] = {}
            for media_type in produces or ["application/json"]:
                out["content"][media_type] = {"schema": schema}
                if media_type in examples:
                    out["content"][media_type]["example"] = examples[media_type]
        out.update({k: v for k, v in response.items() if k.startswith("x-")})
        return out

    # --- security ---

    def security_scheme(self, scheme: Any, where: str) -> dict[str, Any]:
        if not isinstance(scheme, dict):
            raise PlanProblem(f"{_where(where)}: must be an object")
        kind = scheme.get("type")
        out: dict[str, Any]
        if kind == "basic":
            out = {"type": "http", "scheme": "basic"}
        elif kind == "apiKey":
            if not isinstance(scheme.get("name"), str) or scheme.get("in") not in ("query", "header"):
                raise PlanProblem(f"{_where(where)}: an apiKey scheme needs `name` and `in` (query or header)")
            out = {"type": "apiKey", "name": scheme["name"], "in": scheme["in"]}
        elif kind == "oauth2":
            out = {"type": "oauth2", "flows": {self.oauth2_flow(scheme, where): self._flow(scheme, where)}}
        else:
            raise PlanProblem(f"{_where(where + '.type')}: must be basic, apiKey or oauth2, not {kind!r}")
        if "description" in scheme:
            out["description"] = scheme["description"]
        out.update({k: v for k, v in scheme.items() if k.startswith("x-")})
        return out

    def oauth2_flow(self, scheme: dict[str, Any], where: str) -> str:
        """The OpenAPI 3.0 name of an oauth2 scheme's flow."""
        flows = {"implicit": "implicit", "password": "password", "application": "clientCredentials",
                 "accessCode": "authorizationCode"}
        flow = scheme.get("flow")
        if flow not in flows:
            raise PlanProblem(f"{_where(where + '.flow')}: must be implicit, password, application or accessCode, "
                              f"not {flow!r}")
        return flows[flow]

    def _flow(self, scheme: dict[str, Any], where: str) -> dict[str, Any]:
        needs = {"implicit": ("authorizationUrl",), "password": ("tokenUrl",), "application": ("tokenUrl",),
                 "accessCode": ("authorizationUrl", "tokenUrl")}[scheme["flow"]]
        out: dict[str, Any] = {}
        for key in needs:
            if isinstance(scheme.get(key), str):
                out[key] = scheme[key]
            else:
                self.note(f"{where}: the {scheme['flow']} flow has no {key}")
        scopes = scheme.get("scopes", {})
        out["scopes"] = scopes if isinstance(scopes, dict) else {}
        return out


def _base(media_type: str) -> str:
    """A media type without its parameters, lower-cased (`multipart/form-data; charset=utf-8` -> ...)."""
    return media_type.split(";")[0].strip().lower()
