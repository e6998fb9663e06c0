"""How the gateway reads JSON request bodies: every unreadable body is the client's error, named as such.

msgspec (through Litestar) reports malformed JSON as a decode error, which `gateway.problems` answers with
400; two other ways a body can be unreadable escape that: nesting deeper than the decoder's recursion
limit (`RecursionError`) and bytes that are not UTF-8 (`UnicodeDecodeError`). `decode_json_body` turns all
three into `UnreadableBody`, and `GatewayRequest` (the app's request class) into a 400 problem.
"""

from __future__ import annotations

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
TOO_DEEP = "the JSON body nests too deeply"


NOT_UTF8 = "the body is not valid UTF-8 (JSON text must be)"


class UnreadableBody(ValueError):
    """The body is not a JSON document this gateway can read; the message says why, for the client."""


def decode_json_body(body: bytes) -> Any:
    """The JSON value of a request body; raises `UnreadableBody` naming what is wrong with it."""
    try:
        return _decoder.decode(body)
    except RecursionError:
        raise UnreadableBody(TOO_DEEP) from None
    except UnicodeDecodeError:
        raise UnreadableBody(NOT_UTF8) from None
    except msgspec.DecodeError as exc:
        raise UnreadableBody(f"the request body is not valid JSON: {exc}") from None


class GatewayRequest(Request[Any, Any, Any]):
    """Litestar's request, answering a 400 problem for a body too deeply nested or not UTF-8 (Litestar itself
    answers malformed JSON)."""

    async def json(self) -> Any:
        try:
            value = await super().json()
        except RecursionError:
            raise _unreadable(TOO_DEEP) from None
        except UnicodeDecodeError:
            raise _unreadable(NOT_UTF8) from None
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
    return _unknown_in(value, msgspec.inspect.type_info(target), "")


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
    if not isinstance(connection, Request) or "data" not in handler.parsed_fn_signature.parameters:
        return
    target = _body_struct(handler.parsed_fn_signature.parameters["data"].annotation)
    if target is None or not await connection.body():
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


def _body_struct(annotation: Any) -> type[msgspec.Struct] | None:
    """The Struct a `data` parameter's annotation (e.g. `Annotated[CreateBuild, Body(...)]`) names, if any."""
    while get_origin(annotation) is Annotated:
        annotation = get_args(annotation)[0]
    return annotation if isinstance(annotation, type) and issubclass(annotation, msgspec.Struct) else None
