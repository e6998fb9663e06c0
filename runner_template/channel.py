"""The channel between a runner's front and its worker: typed frames over stream sockets.

The front (trusted: HTTP, tokens, quotas, usage, the egress policy and the upstream secrets) never runs
generated code; the worker (`runner_template.worker`, inside the sandbox) runs nothing else. Each frame is a
4-byte big-endian length and a msgpack-encoded `Frame`. Where the worker listens (a Unix socket the front
made and handed to the sandbox, a Unix socket in a volume both containers mount, TCP on a network only the
two share), the front holds two kinds of connection:

- control, to the warden: `Load` -> `Ready(session)`; later `Restart(reason)` -> `Restarted`;
- data, to a tool process: `Attach(session)` -> `Loaded` or `LoadFailed`, then `Call` -> `Result`, and the
  tool process's `Egress` (an upstream request it asks the front to make) -> `EgressAnswer`.

The front talks to the tool process directly, so a call crosses one process boundary each way. Where the
worker has only its stdio (a container's attached streams), there is no control connection: the data
connection starts with `Load`, and the front replaces the whole worker instead of asking for a restart.

Nothing the worker sends is trusted: frames are decoded into these types or the connection is dropped, and a
frame over `MAX_FRAME_BYTES` ends the connection before it is read.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import struct
from collections.abc import Awaitable, Callable
from typing import Any, Literal

import msgspec

MAX_FRAME_BYTES = 16 * 1024 * 1024
"""No frame is longer: a result is capped well below this (`max_result_bytes`), so a longer frame is an attack."""
FRAME_SLACK = 64 * 1024
"""Room a result frame may take beyond `Load.max_result_bytes` (its envelope)."""

_LENGTH = struct.Struct(">I")


class _Frame(msgspec.Struct, frozen=True, kw_only=True, tag_field="type"):
    """A frame of the channel."""


class Load(_Frame, frozen=True, kw_only=True, tag="load"):
    """Front -> worker: import this module and serve exactly these tools."""

    module_name: str
    module_source: str
    tools: tuple[str, ...]
    server_name: str
    max_result_bytes: int = 4 * 1024 * 1024
    """A tool result whose JSON is longer is replaced by a tool error naming the limit."""


class Loaded(_Frame, frozen=True, kw_only=True, tag="loaded"):
    """Worker -> front: the module is imported; its tools as MCP `Tool` objects (JSON, by alias)."""

    tools: list[dict[str, Any]]


class LoadFailed(_Frame, frozen=True, kw_only=True, tag="load_failed"):
    """Worker -> front: the module could not be imported or served; why."""

    error: str


class Ready(_Frame, frozen=True, kw_only=True, tag="ready"):
    """Warden -> front: the module is kept for `session`; data connections attach to it."""

    session: str


class Attach(_Frame, frozen=True, kw_only=True, tag="attach"):
    """Front -> warden, first frame of a data connection: fork a tool process for `session` on it."""

    session: str


class Restart(_Frame, frozen=True, kw_only=True, tag="restart"):
    """Front -> warden: end every tool process (and whatever they started); the front attaches again."""

    reason: str


class Restarted(_Frame, frozen=True, kw_only=True, tag="restarted"):
    """Warden -> front: every tool process is gone."""


class Call(_Frame, frozen=True, kw_only=True, tag="call"):
    """Front -> tool process: call a tool."""

    id: int
    tool: str
    arguments: dict[str, Any]


class Result(_Frame, frozen=True, kw_only=True, tag="result"):
    """Worker -> front: a call's MCP `CallToolResult` (JSON, by alias); a tool error is `isError: true`."""

    id: int
    result: dict[str, Any]


class EgressAuth(msgspec.Struct, frozen=True, kw_only=True):
    """Which secret a request authenticates with, and where the front puts its value."""

    kind: Literal["bearer", "header", "query", "basic"]
    secret: str
    name: str | None = None


class Egress(_Frame, frozen=True, kw_only=True, tag="egress"):
    """Worker -> front: an upstream request on behalf of call `call_id` (the front decides whether it goes)."""

    id: int
    call_id: int
    method: str
    url_template: str
    path: dict[str, Any] | None = None
    query: dict[str, Any] | None = None
    query_styles: dict[str, str] | None = None
    """How query parameters not written the default way are written (`bus_schemas.plans.QueryStyle`)."""
    headers: dict[str, Any] | None = None
    cookies: dict[str, Any] | None = None
    styles: dict[str, str] | None = None
    """How path, header and cookie parameters not written the default way are written (`ParamStyle`)."""
    json: Any = None
    form: dict[str, Any] | None = None
    """Fields of an `application/x-www-form-urlencoded` body (instead of `json`)."""
    form_styles: dict[str, str] | None = None
    """How form fields not sent as repeated fields are written (`HttpCall.field_styles`)."""
    multipart: dict[str, Any] | None = None
    """Fields of a `multipart/form-data` body; those named in `file_fields` are files (`HttpCall.file_fields`)."""
    file_fields: list[str] | None = None
    text: str | None = None
    """A text body, sent with `content_type`."""
    content_type: str | None = None
    auth: EgressAuth | None = None


class EgressAnswer(_Frame, frozen=True, kw_only=True, tag="egress_answer"):
    """Front -> worker: the upstream answer (`value`), or why there is none (`error`, `refused` when the
    policy said no)."""

    id: int
    value: Any = None
    error: str | None = None
    refused: bool = False


Frame = Load | Loaded | LoadFailed | Ready | Attach | Restart | Restarted | Call | Result | Egress | EgressAnswer

_encoder = msgspec.msgpack.Encoder()
_decoder: msgspec.msgpack.Decoder[Frame] = msgspec.msgpack.Decoder(Frame)


class ChannelClosed(Exception):
    """The other end closed the channel, or broke its protocol."""


def encode(frame: Frame) -> bytes:
    """`frame` with its length prefix."""
    body = _encoder.encode(frame)
    return _LENGTH.pack(len(body)) + body


async def read_frame(reader: asyncio.StreamReader, limit: int = MAX_FRAME_BYTES) -> Frame:
    """The next frame; ChannelClosed at the end of the stream, on a frame over `limit` or one that does not
    decode."""
    try:
        (length,) = _LENGTH.unpack(await reader.readexactly(_LENGTH.size))
        if length > limit:
            raise ChannelClosed(f"a frame of {length} bytes is over the {limit} byte limit")
        body = await reader.readexactly(length)
    except (asyncio.IncompleteReadError, ConnectionError) as exc:
        raise ChannelClosed(f"the channel closed: {exc!r}") from None
    try:
        return _decoder.decode(body)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise ChannelClosed(f"an unreadable frame: {exc}") from None



Streams = tuple[asyncio.StreamReader, asyncio.StreamWriter]


def _split(address: str) -> tuple[str, str, int]:
    """`unix:PATH` -> ("unix", PATH, 0); `tcp:HOST:PORT` -> ("tcp", HOST, PORT); ValueError otherwise."""
    kind, _, where = address.partition(":")
    if kind == "unix" and where:
        return kind, where, 0
    host, _, port = where.rpartition(":")
    if kind == "tcp" and port.isdigit():
        return kind, host, int(port)
    raise ValueError(f"a worker address is unix:PATH or tcp:HOST:PORT, not {address!r}")


async def connect(address: str) -> Streams:
    """A connection to the worker at `address`."""
    kind, where, port = _split(address)
    if kind == "unix":
        return await asyncio.open_unix_connection(where)
    return await asyncio.open_connection(where, port)


async def listen(address: str, handler: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
                 ) -> asyncio.Server:
    """A server at `address` handing each connection to `handler` (a stale Unix socket file is replaced)."""
    kind, where, port = _split(address)
    if kind == "unix":
        with contextlib.suppress(FileNotFoundError):
            os.unlink(where)
        return await asyncio.start_unix_server(handler, path=where)
    return await asyncio.start_server(handler, host=where or None, port=port)
