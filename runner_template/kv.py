"""Watching a key-value bucket the way a least-privilege role can: one helper for every watch (the gateway's
ROUTES table, a runner's QUOTAS and REVOKED keys).

Not nats-py's `KeyValue.watch`: that asks for consumer info, which the gateway's and the runners' permissions
do not grant (nats.conf). An unnamed ordered consumer on the bucket's stream, last value per key first and
then every change, needs only to be created and to answer flow control; nats-py keeps it going across gaps
and reconnects.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import DeliverPolicy
from nats.js.client import KV_PRE_TEMPLATE, KV_STREAM_TEMPLATE
from nats.js.kv import KV_DEL, KV_MARKER_REASON, KV_OP, KV_PURGE


@dataclass(frozen=True)
class KvEntry:
    """One entry of a watched bucket."""

    key: str
    value: bytes | None
    """The stored value; None when the key was deleted, purged or expired (a TTL or purge marker)."""
    stored_at: float | None
    """When the bus stored it (seconds since the epoch)."""
    pending: int
    """Entries still to come before the watch is live (0: this one brings it up to date)."""


def kv_stream(bucket: str) -> str:
    """The JetStream stream behind a bucket (nats-py's convention)."""
    return KV_STREAM_TEMPLATE.format(bucket=bucket)


def kv_subject(bucket: str, keys: str) -> str:
    """The subject of `keys` (a key, or a pattern with `*`/`>`) in a bucket."""
    return KV_PRE_TEMPLATE.format(bucket=bucket) + keys


def kv_entry(bucket: str, msg: Msg) -> KvEntry:
    """The entry a watch message carries."""
    headers = msg.headers or {}
    deleted = headers.get(KV_OP) in (KV_DEL, KV_PURGE) or KV_MARKER_REASON in headers or not msg.data
    stamp = msg.metadata.timestamp
    return KvEntry(key=msg.subject[len(kv_subject(bucket, "")):], value=None if deleted else msg.data,
                   stored_at=stamp.timestamp() if stamp else None, pending=msg.metadata.num_pending)


async def watch_bucket(js: JetStreamContext, bucket: str, keys: str,
                       on_entry: Callable[[KvEntry], Awaitable[None]]) -> JetStreamContext.PushSubscription:
    """Watch the keys of `bucket` matching `keys`: the last value of each first, then every change, each
    handed to `on_entry`. Unsubscribing ends the watch (its consumer goes with it)."""

    async def deliver(msg: Msg) -> None:
        await on_entry(kv_entry(bucket, msg))

    return await js.subscribe(kv_subject(bucket, keys), stream=kv_stream(bucket), cb=deliver,
                              ordered_consumer=True, deliver_policy=DeliverPolicy.LAST_PER_SUBJECT)
