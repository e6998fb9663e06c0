"""Planning from an explicit tool spec: each tool as given, its implementation checked for consistency."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit

from actors.planner.openapi import snake_case
from actors.planner.problems import PlanNotes, PlanProblem
from bus_schemas.builds import FunctionBody, HttpTemplate, ToolSpec, ToolSpecSource
from bus_schemas.plans import HttpCall, Implementation, PlannedTool, PureFunction, ToolPlan

_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")


def _implementation(spec: ToolSpec, where: str) -> tuple[Implementation, str | None]:
    """The plan's implementation of one tool and the host it calls, if any."""
    impl = spec.implementation
    names = [p.name for p in spec.parameters]
    if impl is None:
        raise PlanProblem(f"{where}.implementation: missing: give an http call template or a function body")
    if isinstance(impl, FunctionBody):
        return PureFunction(body=impl.body), None
    assert isinstance(impl, HttpTemplate)
    parts = urlsplit(impl.url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise PlanProblem(f"{where}.implementation.url: {impl.url!r} is not an absolute http(s) URL")
    if parts.query or parts.fragment or parts.username or parts.password:
        raise PlanProblem(f"{where}.implementation.url: put no query, fragment or credentials in the URL "
                          "(parameters not in the path are sent as the query)")
    if _PLACEHOLDER.search(parts.netloc):
        raise PlanProblem(f"{where}.implementation.url: placeholders may only be in the path, not the host")
    path_params = _PLACEHOLDER.findall(parts.path)
    for placeholder in path_params:
        if placeholder not in names:
            raise PlanProblem(f"{where}.implementation.url: placeholder {{{placeholder}}} names no parameter")
    if impl.body_param is not None:
        if impl.body_param not in names:
            raise PlanProblem(f"{where}.implementation.body_param: {impl.body_param!r} names no parameter")
        if impl.method in ("GET", "HEAD"):
            raise PlanProblem(f"{where}.implementation.body_param: a {impl.method} request has no body")
    rest = [n for n in names if n not in path_params and n != impl.body_param]
    base_url = f"{parts.scheme}://{parts.netloc}"
    return (
        HttpCall(
            method=impl.method,
            base_url=base_url,
            path=parts.path or "/",
            path_params=tuple(dict.fromkeys(path_params)),
            query_params=tuple(rest),
            body_param=impl.body_param,
        ),
        parts.hostname,
    )


def plan_tool_spec(source: ToolSpecSource, server_name: str, notes: PlanNotes) -> ToolPlan:
    """The tool plan of an explicit tool spec; PlanProblem names the tool and field that stop it."""
    tools: list[PlannedTool] = []
    hosts: set[str] = set()
    seen: dict[str, int] = {}
    for index, spec in enumerate(source.tools):
        where = f"tools[{index}] ({spec.name})"
        name = snake_case(spec.name)
        if name in seen:
            raise PlanProblem(f"{where}.name: {name!r} is also the name of tools[{seen[name]}]")
        seen[name] = index
        params = [p.name for p in spec.parameters]
        duplicate = next((p for p in params if params.count(p) > 1), None)
        if duplicate:
            raise PlanProblem(f"{where}.parameters: {duplicate!r} is given twice")
        implementation, host = _implementation(spec, where)
        if host:
            hosts.add(host)
        properties: dict[str, Any] = {
            p.name: {"type": p.type, **({"description": p.description} if p.description else {})}
            for p in spec.parameters
        }
        schema: dict[str, Any] = {"type": "object", "properties": properties, "additionalProperties": False}
        required = [p.name for p in spec.parameters if p.required]
        if required:
            schema["required"] = required
        read_only = spec.read_only
        if read_only and isinstance(implementation, HttpCall) and implementation.method not in ("GET", "HEAD"):
            # read_only defaults to True; a write method is not trusted to be harmless unasked
            read_only = False
            notes.warn(f"{where}: {implementation.method} call planned as a write tool (needs the write scope)")
        tools.append(PlannedTool(
            name=name,
            title=spec.name,
            description=spec.description,
            input_schema=schema,
            read_only=read_only,
            implementation=implementation,
        ))
    kinds = {type(t.implementation).__name__ for t in tools}
    notes.info(f"tool spec: {len(tools)} tool(s) ({', '.join(sorted(kinds))})")
    if hosts:
        notes.info("upstream hosts: " + ", ".join(sorted(hosts)))
    return ToolPlan(
        server_name=server_name, tools=tuple(tools), upstream_hosts=tuple(sorted(hosts)), planned_from="tool_spec"
    )
