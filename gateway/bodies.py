"""How the gateway reads JSON request bodies: every unreadable body is the client's error, named as such.

msgspec (through Litestar) reports malformed JSON as a decode error, which `gateway.problems` answers with
400; two other ways a body can be unreadable escape that: nesting deeper than the decoder's recursion
limit (`RecursionError`) and bytes that are not UTF-8 (`UnicodeDecodeError`). `decode_json_body` turns all
three into `UnreadableBody`, and `GatewayRequest` (the app's request class) into a 400 problem.
"""

from __future__ import annotations

import functools
from typing import Annotated, Any, get_args, get_origin

import msgspec
import msgspec.inspect
from litestar import Request
from litestar.connection import ASGIConnection
from litestar.exceptions import SerializationException
from litestar.handlers.base import BaseRouteHandler

from bus_schemas.base import FailureCode
from gateway.problems import Problem, ProblemField

_decoder = msgspec.json.Decoder()


class UnreadableBody(ValueError):
    """The body is not a JSON document this gateway can read; the message says why, for the client."""


def _unreadable_because(exc: RecursionError | UnicodeDecodeError) -> UnreadableBody:
    """What is wrong with a body whose decoding raised `exc` (which msgspec does not report as a DecodeError)."""
    if isinstance(exc, RecursionError):
        return UnreadableBody("the JSON body nests too deeply")
    return UnreadableBody("the body is not valid UTF-8 (JSON text must be)")


def decode_json_body(body: bytes) -> Any:
    """The JSON value of a request body; raises `UnreadableBody` naming what is wrong with it."""
    try:
        return _decoder.decode(body)
    except (RecursionError, UnicodeDecodeError) as exc:
        raise _unreadable_because(exc) from None
    except msgspec.DecodeError as exc:
        raise UnreadableBody(f"the request body is not valid JSON: {exc}") from None


class GatewayRequest(Request[Any, Any, Any]):
    """Litestar's request, answering a 400 problem for a body too deeply nested, not UTF-8, or holding U+0000
    (Litestar itself answers malformed JSON)."""

    async def json(self) -> Any:
        try:
            value = await super().json()
        except (RecursionError, UnicodeDecodeError) as exc:
            raise _unreadable(str(_unreadable_because(exc))) from None
        # JSON can carry U+0000 only as the escape `\u0000`; no text the platform stores may hold it (PostgreSQL
        # text and jsonb refuse it), so the value is searched only when the body has that escape.
        if b"\\u0000" in await self.body() and (where := nul_in(value, "")) is not None:
            raise Problem(400, f"invalid body field `{where}`: text may not contain the NUL character (U+0000)",
                          code=FailureCode.INVALID,
                          errors=[ProblemField(field=where, source="body", message="contains U+0000")])
        return value


def nul_in(value: Any, path: str) -> str | None:
    """The path of the first string (or key) in a decoded JSON value that holds U+0000, or None."""
    if isinstance(value, str):
        return (path or "$") if "\x00" in value else None
    if isinstance(value, dict):
        for key, item in value.items():
            where = f"{path}.{key}" if path else str(key)
            if "\x00" in key:
                return where.replace("\x00", "\\u0000")
            if (found := nul_in(item, where)) is not None:
                return found
    if isinstance(value, list):
        return next((found for i, item in enumerate(value) if (found := nul_in(item, f"{path}[{i}]")) is not None),
                    None)
    return None


def _unreadable(detail: str) -> Problem:
    return Problem(400, detail, code=FailureCode.INVALID,
                   errors=[ProblemField(field="$", source="body", message=detail)])


def unknown_field(value: Any, target: type[Any]) -> str | None:
    """The dotted path of the first field in a decoded JSON `value` that `target` (a Struct) does not have,
    at any depth, or None. Bus structs accept unknown fields (a newer sender may add one), so the edge asks
    this of what a person sent: a misspelt field is an error there, not a silently ignored option."""
    return _unknown_in(value, _type_info(target), "")


_TYPE_INFO: dict[type[Any], msgspec.inspect.Type] = {}


def _type_info(target: type[Any]) -> msgspec.inspect.Type:
    """msgspec's description of a body type, built once per type (it costs ~0.6 ms a time)."""
    if target not in _TYPE_INFO:
        _TYPE_INFO[target] = msgspec.inspect.type_info(target)
    return _TYPE_INFO[target]


def _unknown_in(value: Any, info: msgspec.inspect.Type, path: str) -> str | None:
    if isinstance(info, msgspec.inspect.Metadata):
        return _unknown_in(value, info.type, path)
    if isinstance(info, msgspec.inspect.UnionType):
        structs = [t for t in info.types if isinstance(t, msgspec.inspect.StructType)]
        if isinstance(value, dict) and structs:
            tagged = [t for t in structs if t.tag_field is not None and value.get(t.tag_field) == t.tag]
            chosen = tagged or (structs if len(structs) == 1 else [])
            return _unknown_in(value, chosen[0], path) if chosen else None
        others = [t for t in info.types if not isinstance(t, msgspec.inspect.StructType)]
        return next((found for t in others if (found := _unknown_in(value, t, path))), None)
    if isinstance(info, msgspec.inspect.StructType) and isinstance(value, dict):
        fields = {f.encode_name: f for f in info.fields}
        for key, item in value.items():
            where = f"{path}.{key}" if path else str(key)
            if key in fields:
                if (found := _unknown_in(item, fields[key].type, where)) is not None:
                    return found
            elif key != info.tag_field:
                return where
        return None
    if isinstance(info, (msgspec.inspect.ListType, msgspec.inspect.VarTupleType, msgspec.inspect.SetType,
                         msgspec.inspect.FrozenSetType)) and isinstance(value, list):
        return next((found for i, item in enumerate(value)
                     if (found := _unknown_in(item, info.item_type, f"{path}[{i}]")) is not None), None)
    if isinstance(info, msgspec.inspect.DictType) and isinstance(value, dict):
        return next((found for key, item in value.items()
                     if (found := _unknown_in(item, info.value_type, f"{path}.{key}" if path else str(key)))
                     is not None), None)
    return None


async def known_fields_only(connection: ASGIConnection[Any, Any, Any, Any], handler: BaseRouteHandler) -> None:
    """App-wide guard: a JSON body naming a field its route does not take is refused with 400 naming it."""
    target = json_body_struct(handler)
    if not isinstance(connection, Request) or target is None or not await connection.body():
        return
    try:
        value = await connection.json()
    except SerializationException:
        return  # not JSON at all: reading the `data` parameter answers that, saying where
    where = unknown_field(value, target)
    if where is not None:
        detail = f"invalid body field `{where}`: unknown field (check its spelling against the API reference)"
        raise Problem(400, detail, code=FailureCode.INVALID,
                      errors=[ProblemField(field=where, source="body", message="unknown field")])


def takes_json_body(handler: BaseRouteHandler) -> bool:
    """Whether a route reads a JSON body (its handler has a `data` parameter)."""
    return "data" in handler.parsed_fn_signature.parameters


@functools.cache
def json_body_struct(handler: BaseRouteHandler) -> type[msgspec.Struct] | None:
    """The Struct a route's `data` parameter names (e.g. `Annotated[CreateBuild, Body(...)]`), if any; worked
    out once per route."""
    if not takes_json_body(handler):
        return None
    annotation = handler.parsed_fn_signature.parameters["data"].annotation
    while get_origin(annotation) is Annotated:
        annotation = get_args(annotation)[0]
    return annotation if isinstance(annotation, type) and issubclass(annotation, msgspec.Struct) else None
