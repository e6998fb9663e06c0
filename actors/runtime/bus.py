"""Connecting to NATS, publishing events, calling RPC endpoints, and provisioning JetStream."""

from __future__ import annotations

import logging
from typing import Any, TypeVar

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    DiscardPolicy,
    KeyValueConfig,
    ObjectStoreConfig,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)

from actors.runtime.settings import Settings
from bus_schemas.base import Message
from bus_schemas.registry import (
    CONSUMERS,
    KV_BUCKETS,
    OBJECT_BUCKETS,
    STREAMS,
    Consumer,
    Stream,
)
from runner_template.codec import encode
from runner_template.rpc import call as call  # where the actors have always found it
from runner_template.rpc import subscriptions_live as subscriptions_live
from runner_template.rpc import trace_headers

log = logging.getLogger("bmms.bus")

Req = TypeVar("Req", bound=Message)
Rep = TypeVar("Rep")


async def connect(settings: Settings, name: str) -> Client:
    """Connect with endless reconnects; `name` shows in the server's connection list."""

    async def on_error(exc: Exception) -> None:
        log.warning("nats error: %s", exc)

    async def on_disconnect() -> None:
        log.warning("disconnected from nats")

    async def on_reconnect() -> None:
        log.info("reconnected to nats")

    return await nats.connect(
        settings.nats_url,
        name=name,
        user=settings.nats_user,
        password=settings.nats_password,
        inbox_prefix=settings.inbox_prefix,
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.5,
        connect_timeout=5,
        allow_reconnect=True,
        error_cb=on_error,
        disconnected_cb=on_disconnect,
        reconnected_cb=on_reconnect,
    )


async def publish_event(js: JetStreamContext, subject: str, message: object, msg_id: str) -> int:
    """Publish to JetStream de-duplicated by `msg_id`; returns the stream sequence."""
    ack = await js.publish(subject, encode(message), headers=trace_headers({"Nats-Msg-Id": msg_id}))
    return int(ack.seq)


def stream_config(stream: Stream) -> StreamConfig:
    """The JetStream configuration of a declared stream."""
    return StreamConfig(
        name=stream.name,
        subjects=list(stream.subjects),
        description=stream.description,
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        discard=DiscardPolicy.OLD,
        max_age=float(stream.max_age_seconds),
        duplicate_window=float(stream.duplicate_window_seconds),
        max_consumers=stream.max_consumers,
        allow_direct=True,
    )


def consumer_config(consumer: Consumer[Any]) -> ConsumerConfig:
    """The JetStream configuration of a declared durable pull consumer.

    The server never gives up on a message (max_deliver unset); the runtime parks it in the dead-letter
    stream after `max_deliveries`, so a crash loop also ends in a recorded failure.
    """
    return ConsumerConfig(
        durable_name=consumer.durable,
        name=consumer.durable,
        description=consumer.description,
        filter_subject=None if consumer.more_filter_subjects else consumer.filter_subject,
        filter_subjects=list(consumer.filter_subjects) if consumer.more_filter_subjects else None,
        ack_policy=AckPolicy.EXPLICIT,
        deliver_policy=DeliverPolicy.ALL,
        ack_wait=consumer.ack_wait_seconds,
        max_ack_pending=1000,
    )


async def provision(js: JetStreamContext) -> None:
    """Create or update every declared stream and durable consumer; safe to run any number of times."""
    for stream in STREAMS:
        config = stream_config(stream)
        try:
            await js.update_stream(config)
        except nats.js.errors.NotFoundError:
            await js.add_stream(config)
    for consumer in CONSUMERS:
        await js.add_consumer(consumer.stream.name, consumer_config(consumer))
    for bucket in OBJECT_BUCKETS:
        try:
            await js.object_store(bucket.name)
        except nats.js.errors.BucketNotFoundError:
            await js.create_object_store(
                bucket.name, ObjectStoreConfig(description=bucket.description, storage=StorageType.FILE)
            )
    for kv in KV_BUCKETS:
        try:
            await js.key_value(kv.name)
        except nats.js.errors.BucketNotFoundError:
            await js.create_key_value(
                KeyValueConfig(bucket=kv.name, description=kv.description, history=kv.history, storage=StorageType.FILE,
                               ttl=float(kv.ttl_seconds) or None, direct=kv.direct or None)
            )
