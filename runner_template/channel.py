"""The channel between a runner's front and its worker: typed frames over one byte stream.

The front (trusted: HTTP, tokens, quotas, usage, the egress policy and the upstream secrets) never runs
generated code; the worker (`runner_template.worker`, inside the sandbox) runs nothing else. They speak over
one stream socket (a socketpair inherited by the sandbox, a Unix socket in a volume both containers mount, a
TCP connection on a network only the two share, or a container's attached stdio), each frame a 4-byte
big-endian length and a msgpack-encoded `Frame`.

Front -> worker: `Load` (once per connection), `Call`, `EgressAnswer`.
Worker -> front: `Loaded` or `LoadFailed`, `Result`, `Egress` (an upstream request a tool asks the front to make).

Nothing the worker sends is trusted: frames are decoded into these types or the connection is dropped, and a
frame over `MAX_FRAME_BYTES` ends the connection before it is read.
"""

from __future__ import annotations

import asyncio
import struct
from typing import Any, Literal

import msgspec

MAX_FRAME_BYTES = 16 * 1024 * 1024
"""No frame is longer: a result is capped well below this (`max_result_bytes`), so a longer frame is an attack."""

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


class Call(_Frame, frozen=True, kw_only=True, tag="call"):
    """Front -> worker: call a tool; the worker gives up on it after `timeout_seconds`."""

    id: int
    tool: str
    arguments: dict[str, Any]
    timeout_seconds: float


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
    headers: dict[str, Any] | None = None
    json: Any = None
    auth: EgressAuth | None = None


class EgressAnswer(_Frame, frozen=True, kw_only=True, tag="egress_answer"):
    """Front -> worker: the upstream answer (`value`), or why there is none (`error`, `refused` when the
    policy said no)."""

    id: int
    value: Any = None
    error: str | None = None
    refused: bool = False


Frame = Load | Loaded | LoadFailed | Call | Result | Egress | EgressAnswer

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

