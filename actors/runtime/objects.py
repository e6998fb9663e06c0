"""Content-addressed objects (plans, artifacts) in JetStream object stores, read back verified."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import TypeVar

import msgspec
import nats.js.errors
from nats.js.object_store import ObjectStore

from actors.runtime.codec import decode
from bus_schemas.registry import ObjectBucket

T = TypeVar("T")


class ObjectUnusable(Exception):
    """The object a build names is missing, malformed or does not hash to its name."""


async def load_verified(
    store: ObjectStore,
    bucket: ObjectBucket,
    object_hash: str,
    message_type: type[T],
    canonical: Callable[[T], bytes],
    what: str,
) -> T:
    """The `what` stored in `bucket` under `object_hash`, decoded as `message_type` and checked to hash to
    its name (the SHA-256 of `canonical(value)`)."""
    try:
        result = await store.get(object_hash)
    except nats.js.errors.ObjectNotFoundError:
        raise ObjectUnusable(f"{what} {object_hash} is not in {bucket.name}") from None
    try:
        value: T = decode(message_type, result.data or b"")
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise ObjectUnusable(f"{what} {object_hash} does not decode: {exc}") from None
    if hashlib.sha256(canonical(value)).hexdigest() != object_hash:
        raise ObjectUnusable(f"{what} {object_hash} does not match its hash")
    return value
