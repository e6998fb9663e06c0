"""One msgspec encoder for the bus and one cached decoder per message type, for every process that talks on
the bus: the gateway, the actors and the runners."""

from __future__ import annotations

from functools import cache
from typing import Any

import msgspec

encoder = msgspec.json.Encoder()
"""The encoder for every message the runtime puts on the bus."""


def encode(message: object) -> bytes:
    """Encode a message for the bus."""
    return encoder.encode(message)


@cache
def decoder_for(message_type: Any) -> msgspec.json.Decoder[Any]:
    """The one decoder for a message type or tagged union, built once."""
    return msgspec.json.Decoder(message_type)


def decode(message_type: Any, data: bytes) -> Any:
    """Decode bus bytes as `message_type`; raises msgspec.ValidationError/DecodeError naming the path."""
    return decoder_for(message_type).decode(data)
