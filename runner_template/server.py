"""A generated module as an MCP server, in the worker.

In the worker, `create_server` registers the module's marked tool functions with the SDK's `MCPServer`: each
tool's name, title and read-only hint come from `sdk.tool`, its description from the docstring, and its input
schema from the typed signature. A parameter whose wire name is not a Python identifier (or is a keyword) is
declared as `Field(alias="<wire name>")`; the SDK validates and hands over arguments by wire name, so the
registered callable maps them back to the function's own parameter names.

The front's counterpart, the `MCPServer` clients talk to, is `tools.SandboxedServer`.
"""

from __future__ import annotations

import functools
import inspect
import json
import sys
import types
from collections.abc import Callable
from typing import Any, get_origin

from mcp.server import MCPServer
from mcp_types import CallToolResult, TextContent, ToolAnnotations
from pydantic.fields import FieldInfo

from runner_template import RUNNER_TEMPLATE_VERSION
from runner_template.sdk import ToolInfo, tools_of


class ModuleRefused(Exception):
    """The generated module cannot be served (no tools, a duplicate name, a bad signature)."""


def load_module(module_name: str, source: str) -> types.ModuleType:
    """Import a generated module from its source, registered in `sys.modules` under `module_name`."""
    module = types.ModuleType(module_name)
    module.__file__ = f"<generated {module_name}>"
    code = compile(source, module.__file__, "exec", dont_inherit=True)
    sys.modules[module_name] = module
    try:
        exec(code, module.__dict__)  # noqa: S102 (the checked generated module; this is how it is imported)
    except BaseException:
        sys.modules.pop(module_name, None)
        raise
    return module


def wire_names(fn: Callable[..., Any]) -> dict[str, str]:
    """Parameter name -> wire name, for the parameters of `fn` declared with a different alias."""
    names: dict[str, str] = {}
    for param in inspect.signature(fn, eval_str=True).parameters.values():
        for meta in getattr(param.annotation, "__metadata__", ()) if get_origin(param.annotation) else ():
            if isinstance(meta, FieldInfo) and meta.alias and meta.alias != param.name:
                names[param.name] = meta.alias
    return names


def _registered_callable(fn: Callable[..., Any], aliases: dict[str, str]) -> Callable[..., Any]:
    """`fn` as the SDK calls it: a coroutine function (a plain function runs inline), with arguments keyed by
    wire name (what the SDK passes when aliases are used) mapped back to parameter names."""
    by_wire = {wire: name for name, wire in aliases.items()}

    def python_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
        return {by_wire.get(key, key): value for key, value in kwargs.items()} if by_wire else kwargs

    if inspect.iscoroutinefunction(fn):

        async def wrapper(**kwargs: Any) -> Any:
            return tool_result(await fn(**python_kwargs(kwargs)))

    else:

        async def wrapper(**kwargs: Any) -> Any:
            # Run here, in the tool process's loop, not in a thread the SDK would hand it to: no thread hop per
            # call. A slow pure function holds up only its own server's other calls, and the front's time
            # limit ends it.
            return tool_result(fn(**python_kwargs(kwargs)))

    functools.update_wrapper(wrapper, fn)
    setattr(wrapper, "__signature__", inspect.signature(fn, eval_str=True))  # noqa: B010 (what the SDK inspects)
    return wrapper


def tool_result(value: Any) -> Any:
    """What a tool returned, as the client gets it. A JSON value (an object, an array, a number, true/false or
    null) is one result: one text block holding its JSON, and the same value as `structuredContent` (under
    `result` when it is not an object, as MCP wants an object there), so an array is neither split into a
    block per element nor, when empty, no content at all. Text and anything else go as the SDK converts them."""
    if value is None or isinstance(value, dict | list | tuple | bool | int | float):
        try:
            text = json.dumps(value, ensure_ascii=False, allow_nan=False)
        except (TypeError, ValueError):
            return value  # not JSON (a set inside, NaN...): the SDK's own conversion
        structured = value if isinstance(value, dict) else {"result": value}
        return CallToolResult(content=[TextContent(type="text", text=text)], structured_content=structured)
    return value


def tool_annotations(info: ToolInfo) -> ToolAnnotations:
    """The MCP hints of a tool: read-only or not, and whether it reaches beyond this server."""
    return ToolAnnotations(
        title=info.title,
        read_only_hint=info.read_only,
        destructive_hint=None if info.read_only else True,
        open_world_hint=info.open_world,
    )


def create_server(
    module: types.ModuleType,
    *,
    name: str,
    expected_tools: tuple[str, ...] | None = None,
) -> MCPServer:
    """An `MCPServer` serving every tool of the generated `module`.

    `expected_tools` (the artifact's list) must match the module's tools exactly when given.
    """
    found = tools_of(module)
    if not found:
        raise ModuleRefused(f"module {module.__name__} defines no tools")
    names = [info.name for info, _ in found]
    if len(set(names)) != len(names):
        raise ModuleRefused(f"module {module.__name__} defines a tool name twice: {names}")
    if expected_tools is not None and tuple(names) != tuple(expected_tools):
        raise ModuleRefused(f"module {module.__name__} defines {names}, its artifact lists {list(expected_tools)}")
    server = MCPServer(name=name, version=RUNNER_TEMPLATE_VERSION)
    for info, fn in found:
        server.add_tool(
            _registered_callable(fn, wire_names(fn)),
            name=info.name,
            title=info.title,
            description=fn.__doc__ or info.title,
            annotations=tool_annotations(info),
        )
    return server

