"""Rendering a tool plan into the generated module of a server, deterministically.

The same plan and runner template version give byte-identical source: parameters are sorted (required
first, then optional, each by wire name), every plan string enters the source as a Python literal
(`repr`), and nothing depends on time or the environment.

The module's shape (runner template version 1):

    '''Tools of a generated MCP server (codegen; runner template 1). Generated code: do not edit.'''
    from typing import Annotated, Any, Literal

    from runner_template import sdk, upstream
    from runner_template.sdk import Field

    PLAN_HASH = '<sha256 of the plan>'
    TEMPLATE_VERSION = '1'


    @sdk.tool(name='get_user', title='Get a user', read_only=True, open_world=True)
    async def get_user(user_id: Annotated[str, Field(alias='user-id', description='...')],
                       verbose: Annotated[bool | None, Field(description='...')] = None) -> Any:
        '''The tool's description.'''
        return await upstream.request('GET', 'https://api.example.com/users/{user-id}',
                                      path={'user-id': user_id}, query={'verbose': verbose},
                                      auth=upstream.Auth(kind='bearer', secret='EXAMPLE_TOKEN'))


    @sdk.tool(name='add', title='Add', read_only=True)
    def add(a: int, b: int) -> Any:
        '''The tool's description.'''
        return a + b          # a PureFunction body, re-emitted from its syntax tree

A PureFunction body is untrusted: it is parsed (a body that is not Python statements fails the build),
re-emitted from its syntax tree at the function's indentation, and the rendered module is parsed again to
prove each body sits, unchanged, inside its own function. What the body may do is the checker's question.
"""

from __future__ import annotations

import ast
import builtins
import keyword
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from pydantic import BaseModel

from bus_schemas.plans import HttpCall, PlannedTool, PureFunction, ToolPlan
from runner_template import RUNNER_TEMPLATE_VERSION

MODULE_NAMES = ("Annotated", "Any", "Literal", "sdk", "upstream", "Field", "PLAN_HASH", "TEMPLATE_VERSION")
"""Names the module itself defines at top level; tool functions and parameters keep clear of them."""

_MAX_SCHEMA_DEPTH = 8
_SIMPLE_TYPES = {"string": "str", "integer": "int", "number": "float", "boolean": "bool", "object": "dict[str, Any]"}


class RenderRefused(Exception):
    """The plan cannot be rendered; the message says why, for the person watching the build."""


@dataclass(frozen=True)
class Parameter:
    """One parameter of a tool function."""

    wire: str
    """Its name in the tool's input schema (what clients send)."""
    python: str
    """Its name in the generated function."""
    annotation: str
    required: bool
    description: str | None


def module_name_for(plan_hash: str) -> str:
    """The import name of a plan's generated module (unique per plan, so runners and tests never collide)."""
    return f"bmms_server_{plan_hash[:16]}"


def python_identifier(wire: str, taken: set[str]) -> str:
    """A valid, unused parameter name for `wire`: invalid characters become `_`, keywords and names the
    SDK or module reserve get a trailing `_`, and a clash appends more."""
    name = re.sub(r"\W", "_", wire, flags=re.ASCII).lstrip("_") or "arg"
    if name[0].isdigit():
        name = f"p_{name}"
    while (
        keyword.iskeyword(name) or keyword.issoftkeyword(name) or hasattr(BaseModel, name)
        or name in MODULE_NAMES or name in taken
    ):
        name += "_"
    return name


def function_name(tool: str, taken: set[str]) -> str:
    """The Python name of a tool's function: the tool name unless it is a keyword, a builtin (a function
    named `list` would break every later `list[...]` annotation) or a module name."""
    name = tool
    while keyword.iskeyword(name) or keyword.issoftkeyword(name) or hasattr(builtins, name) \
            or name in MODULE_NAMES or name in taken:
        name += "_"
    return name


def annotation_for(schema: Any, depth: int = 0) -> str:
    """The Python annotation (as source) for a JSON Schema; `Any` where the schema says too little."""
    if not isinstance(schema, dict) or depth > _MAX_SCHEMA_DEPTH:
        return "Any"
    if "const" in schema:
        return _literal([schema["const"]])
    enum = schema.get("enum")
    if isinstance(enum, list) and enum:
        return _literal(enum)
    for key in ("anyOf", "oneOf"):
        options = schema.get(key)
        if isinstance(options, list) and options:
            return _union([annotation_for(o, depth + 1) for o in options])
    kind = schema.get("type")
    kinds = kind if isinstance(kind, list) else [kind]
    parts: list[str] = []
    for k in kinds:
        if k == "array":
            parts.append(f"list[{annotation_for(schema.get('items'), depth + 1)}]")
        elif k == "null":
            parts.append("None")
        elif isinstance(k, str) and k in _SIMPLE_TYPES:
            parts.append(_SIMPLE_TYPES[k])
        else:
            return "Any"
    return _union(parts)


def _literal(values: list[Any]) -> str:
    allowed = [v for v in values if isinstance(v, str | int) or v is None]
    if len(allowed) != len(values) or any(isinstance(v, float) for v in values):
        return "Any"
    plain = [repr(v) for v in dict.fromkeys(v for v in allowed if v is not None)]
    parts = [f"Literal[{', '.join(plain)}]"] if plain else []
    return _union([*parts, *(["None"] if None in allowed else [])])


def _union(parts: list[str]) -> str:
    unique = list(dict.fromkeys(parts))
    if not unique or "Any" in unique:
        return "Any"
    if unique == ["None"]:
        return "None"
    return " | ".join(unique)


def parameters_of(tool: PlannedTool) -> list[Parameter]:
    """A tool's parameters from its input schema: required ones first, each group sorted by wire name."""
    schema = tool.input_schema
    properties = schema.get("properties") or {}
    if not isinstance(properties, dict):
        raise RenderRefused(f"tool {tool.name!r}: input_schema.properties is not an object")
    required_list = schema.get("required") or []
    required = {r for r in required_list if isinstance(r, str)} if isinstance(required_list, list) else set()
    missing = sorted(required - set(properties))
    if missing:
        raise RenderRefused(f"tool {tool.name!r}: required parameter(s) {missing} are not in its properties")
    taken: set[str] = set()
    params: list[Parameter] = []
    for wire in sorted(properties, key=lambda w: (w not in required, w)):
        prop = properties[wire]
        python = python_identifier(wire, taken)
        taken.add(python)
        description = prop.get("description") if isinstance(prop, dict) else None
        params.append(Parameter(
            wire=wire, python=python, annotation=annotation_for(prop), required=wire in required,
            description=description if isinstance(description, str) and description else None,
        ))
    return params


def _signature(params: list[Parameter]) -> str:
    lines = []
    for p in params:
        field_args = []
        if p.python != p.wire:
            field_args.append(f"alias={p.wire!r}")
        if p.description is not None:
            field_args.append(f"description={p.description!r}")
        annotation = p.annotation
        if not p.required and annotation not in ("Any", "None") and not annotation.endswith("| None"):
            annotation = f"{annotation} | None"
        if field_args:
            annotation = f"Annotated[{annotation}, Field({', '.join(field_args)})]"
        lines.append(f"    {p.python}: {annotation}{'' if p.required else ' = None'},")
    return "\n".join(lines)


def _docstring(text: str) -> str:
    """`text` as a docstring literal: triple-quoted when that is exact, else `repr`."""
    safe = (
        text and "\\" not in text and '"""' not in text and not text.endswith('"')
        and all(c.isprintable() or c == "\n" for c in text)
    )
    return f'"""{text}"""' if safe else repr(text)


def _header(tool: PlannedTool, python: str, params: list[Parameter], *, is_async: bool, open_world: bool) -> str:
    decorator = f"@sdk.tool(name={tool.name!r}, title={tool.title!r}, read_only={tool.read_only!r}"
    decorator += ", open_world=True)" if open_world else ")"
    keyword_def = "async def" if is_async else "def"
    arguments = f"(\n{_signature(params)}\n)" if params else "()"
    signature = f"{keyword_def} {python}{arguments} -> Any:"
    return f"{decorator}\n{signature}\n    {_docstring(tool.description)}\n"


def _host_allowed(url: str, hosts: set[str]) -> bool:
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    return bool(host) and (host in hosts or f"{host}:{parts.port}" in hosts)


def _http_body(tool: PlannedTool, call: HttpCall, params: list[Parameter], plan: ToolPlan) -> str:
    by_wire = {p.wire: p.python for p in params}

    def ref(kind: str, wire: str) -> str:
        if wire not in by_wire:
            raise RenderRefused(f"tool {tool.name!r}: {kind} parameter {wire!r} is not in its input schema")
        return by_wire[wire]

    url = f"{call.base_url.rstrip('/')}/{call.path.lstrip('/')}" if call.path else call.base_url
    if urlsplit(url).scheme not in ("http", "https"):
        raise RenderRefused(f"tool {tool.name!r}: base URL {call.base_url!r} is not http(s)")
    if not _host_allowed(url, {h.lower() for h in plan.upstream_hosts}):
        raise RenderRefused(f"tool {tool.name!r}: host of {call.base_url!r} is not in the plan's upstream hosts")
    placeholders = set(re.findall(r"\{([^{}]+)\}", call.path))
    unfilled = sorted(placeholders - {call.wire_names.get(p, p) for p in call.path_params})
    if unfilled:
        raise RenderRefused(
            f"tool {tool.name!r}: path {call.path!r} has placeholder(s) {unfilled} without a path parameter"
        )
    args = [repr(call.method), repr(url)]
    located = (("path", call.path_params), ("query", call.query_params), ("headers", call.header_params),
               ("cookies", call.cookie_params))
    for kind, names in located:
        if names:
            pairs = ", ".join(f"{call.wire_names.get(w, w)!r}: {ref(kind, w)}" for w in names)
            args.append(f"{kind}={{{pairs}}}")
    for kind, styles in (("query_styles", call.query_styles), ("styles", call.styles)):
        if styles:
            args.append(f"{kind}={dict(sorted(styles.items()))!r}")
    if call.param_renames:
        args.append(f"param_renames={call.param_renames!r}")
    if call.body_param is not None:
        body = ref("body", call.body_param)
        if call.body_renames:
            args.append(f"body_renames={call.body_renames!r}")
        if call.body_encoding == "multipart":
            args.append(f"multipart={body}")
            if call.file_fields:
                args.append(f"files={call.file_fields!r}")
        elif call.body_encoding == "text":
            args.append(f"text={body}")
            args.append(f"content_type={call.body_media_type or 'text/plain'!r}")
        else:
            args.append(f"{call.body_encoding}={body}")
            if call.body_encoding == "form" and call.field_styles:
                args.append(f"form_styles={dict(sorted(call.field_styles.items()))!r}")
    if call.auth != "none":
        declared = {s.name for s in plan.secrets}
        if call.auth_secret is None or call.auth_secret not in declared:
            raise RenderRefused(f"tool {tool.name!r}: auth {call.auth!r} names no secret the plan declares")
        if call.auth in ("header", "query") and not call.auth_name:
            raise RenderRefused(f"tool {tool.name!r}: auth {call.auth!r} needs auth_name")
        auth = f"kind={call.auth!r}, secret={call.auth_secret!r}"
        if call.auth in ("header", "query"):
            auth += f", name={call.auth_name!r}"
        args.append(f"auth=upstream.Auth({auth})")
    joined = "".join(f"        {a},\n" for a in args)
    return f"    return await upstream.request(\n{joined}    )\n"


def parse_body(tool: PlannedTool, body: str) -> list[ast.stmt]:
    """A PureFunction body as statements; refuses one that is not Python or that yields."""
    try:
        statements = ast.parse(body, filename=f"<tool {tool.name}>", mode="exec").body
    except SyntaxError as exc:
        raise RenderRefused(
            f"tool {tool.name!r}: the function body is not valid Python: {exc.msg} (line {exc.lineno})"
        ) from None
    except ValueError as exc:  # null bytes
        raise RenderRefused(f"tool {tool.name!r}: the function body is not valid Python: {exc}") from None
    if not statements:
        raise RenderRefused(f"tool {tool.name!r}: the function body is empty")
    for node in _own_nodes(statements):
        if isinstance(node, ast.Yield | ast.YieldFrom):
            raise RenderRefused(f"tool {tool.name!r}: the function body must return a value, not yield")
    return statements


def _own_nodes(statements: list[ast.stmt]) -> list[ast.AST]:
    """Every node of the body outside nested functions, classes and lambdas."""
    found: list[ast.AST] = []
    stack: list[ast.AST] = list(statements)
    while stack:
        node = stack.pop()
        found.append(node)
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef | ast.Lambda):
            stack.extend(ast.iter_child_nodes(node))
    return found


def _pure_body(statements: list[ast.stmt]) -> str:
    # Emitted as the body of a throwaway function, so ast.unparse indents every construct (multi-line strings
    # included) exactly as a function body needs; the `def` line is then dropped.
    holder = ast.FunctionDef(
        name="_", args=ast.arguments(posonlyargs=[], args=[], kwonlyargs=[], kw_defaults=[], defaults=[]),
        body=statements, decorator_list=[], returns=None, lineno=1, col_offset=0,
    )
    text = ast.unparse(ast.fix_missing_locations(holder))
    return text.split("\n", 1)[1] + "\n"


def render_module(plan: ToolPlan, plan_hash: str) -> str:
    """The generated module of `plan`; raises RenderRefused saying why it cannot be rendered."""
    names = [t.name for t in plan.tools]
    if not names:
        raise RenderRefused("the plan has no tools")
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise RenderRefused(f"the plan names tool(s) {duplicates} more than once")
    parts: list[str] = []
    taken: set[str] = set()
    bodies: dict[str, list[ast.stmt]] = {}
    for tool in plan.tools:
        python = function_name(tool.name, taken)
        taken.add(python)
        params = parameters_of(tool)
        impl = tool.implementation
        if isinstance(impl, HttpCall):
            body = _http_body(tool, impl, params, plan)
            header = _header(tool, python, params, is_async=True, open_world=True)
        else:
            assert isinstance(impl, PureFunction)
            statements = parse_body(tool, impl.body)
            bodies[python] = statements
            body = _pure_body(statements)
            header = _header(tool, python, params, is_async=False, open_world=False)
        parts.append(f"\n\n{header}{body}")
    tools_source = "".join(parts)
    header = _module_header(tools_source, plan_hash)
    source = header + tools_source
    _prove_shape(source, plan, bodies, header_statements=len(ast.parse(header).body))
    return source


def _module_header(tools_source: str, plan_hash: str) -> str:
    """Docstring, imports and constants; a name is imported only when the tools use it, so the checker's
    lint (unused imports) holds for every plan."""
    used = {node.id for node in ast.walk(ast.parse(tools_source)) if isinstance(node, ast.Name)}
    typing_names = ", ".join(n for n in ("Annotated", "Any", "Literal") if n in used)
    runner_names = ", ".join(n for n in ("sdk", "upstream") if n in used)
    lines = [
        f'"""Tools of a generated MCP server (codegen; runner template {RUNNER_TEMPLATE_VERSION}). '
        'Generated code: do not edit."""',
    ]
    if typing_names:
        lines += [f"from typing import {typing_names}", ""]
    if runner_names:
        lines.append(f"from runner_template import {runner_names}")
    if "Field" in used:
        lines.append("from runner_template.sdk import Field")
    lines += ["", f"PLAN_HASH = {plan_hash!r}", f"TEMPLATE_VERSION = {RUNNER_TEMPLATE_VERSION!r}"]
    return "\n".join(lines) + "\n"


def _prove_shape(
    source: str, plan: ToolPlan, bodies: dict[str, list[ast.stmt]], *, header_statements: int
) -> None:
    """Parse and compile the rendered module; every tool is one top-level function, and each pure body is
    exactly its own function's body after the docstring."""
    try:
        tree = ast.parse(source)
        compile(tree, "<generated>", "exec", dont_inherit=True)
    except SyntaxError as exc:
        line = source.splitlines()[(exc.lineno or 1) - 1] if exc.lineno else ""
        raise RenderRefused(f"the generated module does not compile: {exc.msg} at {line.strip()!r}") from None
    functions = [n for n in tree.body if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)]
    if len(functions) != len(plan.tools) or len(tree.body) != header_statements + len(plan.tools):
        raise RenderRefused("the generated module does not have one function per tool")
    for fn in functions:
        if fn.name in bodies and ast.dump(ast.Module(body=fn.body[1:], type_ignores=[])) != ast.dump(
            ast.Module(body=bodies[fn.name], type_ignores=[])
        ):
            raise RenderRefused(f"the body of {fn.name} does not stay unchanged inside its function")
