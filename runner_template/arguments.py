"""Checking a tool call's arguments against the input schema the server serves, in the front, before anything
reaches the worker or an upstream: a call a model got wrong is a tool error naming the field, and an argument
the schema does not name is refused, not silently dropped. The same checker holds a tool's structured result to
its output schema (`Artifact.output_schemas`), so a client never receives a result its `outputSchema` denies.

The schema is the plan's (carried in the artifact, `Artifact.input_schemas`), not the one the worker derives
from the generated function's signature, which says less (an object body is `dict[str, Any]` there).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from jsonschema import Draft202012Validator, FormatChecker
from jsonschema.exceptions import SchemaError, best_match

MAX_MESSAGE = 300
"""Longest description of a wrong argument a tool error carries."""


class ArgumentChecker:
    """The arguments a tool accepts: its input schema, with arguments it does not name refused (unless
    `refuse_unknown` is false: an output schema allows what it does not name)."""

    def __init__(self, schema: Mapping[str, Any], *, refuse_unknown: bool = True) -> None:
        strict = dict(schema)
        if refuse_unknown and strict.get("type") == "object" and "additionalProperties" not in strict:
            strict["additionalProperties"] = False  # unknown arguments are refused, not ignored
        Draft202012Validator.check_schema(strict)  # SchemaError: the plan's schema is not one
        self._validator = Draft202012Validator(strict, format_checker=FormatChecker())

    def problem(self, arguments: Mapping[str, Any]) -> str | None:
        """What is wrong with `arguments` (the most relevant error, naming where), or None."""
        error = best_match(self._validator.iter_errors(dict(arguments)))
        if error is None:
            return None
        where = "/".join(str(part) for part in error.absolute_path)
        text = f"{where}: {error.message}" if where else error.message
        return text if len(text) <= MAX_MESSAGE else text[: MAX_MESSAGE - 1] + "…"


def checkers_for(schemas: Mapping[str, Mapping[str, Any]], kind: str = "input") -> dict[str, ArgumentChecker]:
    """A checker per tool for its `kind` ("input" or "output") schema; ValueError naming the tool whose schema is
    not a JSON Schema."""
    checkers = {}
    for name, schema in schemas.items():
        try:
            checkers[name] = ArgumentChecker(schema, refuse_unknown=kind == "input")
        except SchemaError as exc:
            raise ValueError(f"tool {name!r}: its {kind} schema is not a valid JSON Schema: {exc.message}") from None
    return checkers
