"""What a generated module declares its tools with: the `tool` decorator, and `Field` for parameters.

A generated tool is a typed function: parameter types and `Field(description=..., alias=<wire name>)`
give its input schema, its docstring its description. The decorator only marks the function;
`runner_template.server` finds the marked functions and registers them with the SDK.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any, TypeVar

from pydantic import Field

__all__ = ["Field", "ToolInfo", "tool", "tools_of"]

F = TypeVar("F", bound=Callable[..., Any])

_MARK = "__bmms_tool__"


@dataclass(frozen=True)
class ToolInfo:
    """How a function is exposed as a tool."""

    name: str
    """The tool's name on the wire (the function's own name may carry a suffix to dodge a keyword)."""
    title: str
    read_only: bool
    """True for tools that change nothing; decides the scope a caller needs."""
    open_world: bool = False
    """True for tools that reach an upstream API."""


def tool(*, name: str, title: str, read_only: bool, open_world: bool = False) -> Callable[[F], F]:
    """Mark a function of a generated module as the tool `name`."""

    def mark(fn: F) -> F:
        setattr(fn, _MARK, ToolInfo(name=name, title=title, read_only=read_only, open_world=open_world))
        return fn

    return mark


def tools_of(module: ModuleType) -> list[tuple[ToolInfo, Callable[..., Any]]]:
    """The module's marked tool functions, in definition order."""
    found: list[tuple[ToolInfo, Callable[..., Any]]] = []
    for value in vars(module).values():
        info = getattr(value, _MARK, None) if callable(value) else None
        if isinstance(info, ToolInfo):
            found.append((info, value))
    return found
