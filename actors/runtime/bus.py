"""Connecting to NATS, publishing events, calling RPC endpoints, and provisioning JetStream."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ClusterInfo,
    ConsumerConfig,
    DeliverPolicy,
    DiscardPolicy,
    KeyValueConfig,
    ObjectStoreConfig,
    Placement,
    RetentionPolicy,
    StorageType,
    StreamConfig,
    StreamInfo,
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
from runner_template.bus import nats_servers
from runner_template.codec import encode
from runner_template.rpc import call as call  # where the actors have always found it
from runner_template.rpc import subscriptions_live as subscriptions_live
from runner_template.rpc import trace_headers

log = logging.getLogger("bmms.bus")

Req = TypeVar("Req", bound=Message)
Rep = TypeVar("Rep")


async def connect(settings: Settings, name: str,
                  on_error_too: Callable[[Exception], Awaitable[None]] | None = None) -> Client:
    """Connect with endless reconnects; `name` shows in the server's connection list. Each connection error is
    logged and, when given, handed to `on_error_too` (an actor counts refused credentials there)."""

    async def on_error(exc: Exception) -> None:
        log.warning("nats error: %s", exc)
        if on_error_too is not None:
            await on_error_too(exc)

    async def on_disconnect() -> None:
        log.warning("disconnected from nats")

    async def on_reconnect() -> None:
        log.info("reconnected to nats")

    return await nats.connect(
        nats_servers(settings.nats_url),
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


@dataclass(frozen=True)
class Replication:
    """How many servers keep each stream, bucket and object store, and where (`BMMS_NATS_REPLICAS`,
    `BMMS_NATS_PLACEMENT_CLUSTER`, `BMMS_NATS_PLACEMENT_TAGS`)."""

    replicas: int = 1
    cluster: str | None = None
    tags: tuple[str, ...] = ()

    @classmethod
    def of(cls, settings: Settings) -> Replication:
        """The replication the settings ask for."""
        return cls(settings.nats_replicas, settings.nats_placement_cluster, settings.nats_placement_tags)

    @property
    def placement(self) -> Placement | None:
        """JetStream's placement directive, when any is set."""
        if self.cluster is None and not self.tags:
            return None
        return Placement(cluster=self.cluster, tags=list(self.tags) or None)

    def applied_to(self, info: StreamInfo) -> bool:
        """Whether an existing stream already has this replication."""
        placement = info.config.placement
        return (info.config.num_replicas or 1) == self.replicas and (
            (placement.cluster if placement else None), tuple((placement.tags if placement else None) or ())
        ) == (self.cluster, self.tags)


REPLICATION_TIMEOUT = 60.0
"""Seconds provisioning waits for a changed replica count to be in place everywhere."""


class ProvisionError(Exception):
    """JetStream refused the requested replication; the message names the setting to change."""


# JetStream's answers (nats-server's errors.json) when it cannot place the replicas asked for: replicas > 1 on a
# single server (10074) or a placement there (10006), fewer servers matching than replicas (10005 no suitable
# peers, 10023 insufficient resources), tags it cannot honour (10011).
_UNPLACEABLE = frozenset({10005, 10006, 10011, 10023, 10074})


def _unplaceable(exc: nats.js.errors.APIError, what: str, replication: Replication) -> ProvisionError | None:
    if exc.err_code not in _UNPLACEABLE:
        return None
    where = ""
    if replication.placement is not None:
        where = (f" (BMMS_NATS_PLACEMENT_CLUSTER={replication.cluster or ''}, "
                 f"BMMS_NATS_PLACEMENT_TAGS={','.join(replication.tags)})")
    return ProvisionError(
        f"BMMS_NATS_REPLICAS={replication.replicas}{where}: JetStream cannot keep {replication.replicas} "
        f"replicas of {what}: {exc.description} (code {exc.err_code}). Set BMMS_NATS_REPLICAS to at most the "
        "number of JetStream servers in the cluster (1 for a single server) and run `bmms migrate` again."
    )


def stream_config(stream: Stream, replication: Replication | None = None) -> StreamConfig:
    """The JetStream configuration of a declared stream."""
    replication = replication or Replication()
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
        num_replicas=replication.replicas,
        placement=replication.placement,
    )


async def _replicate(js: JetStreamContext, stream: str, replication: Replication) -> None:
    """Give an existing stream (a bucket's or an object store's) the replication asked for, keeping the rest of
    its configuration; its durable consumers follow (they inherit the stream's replica count)."""
    info = await js.stream_info(stream)
    if not replication.applied_to(info):
        config = info.config
        config.num_replicas = replication.replicas
        config.placement = replication.placement
        await js.update_stream(config)


async def provision(js: JetStreamContext, replication: Replication | None = None) -> None:
    """Create or update every declared stream, durable consumer, object store and key-value bucket, each with
    `replication` (default: one replica) applied, to existing ones too; safe to run any number of times.
    ProvisionError when JetStream cannot place that many replicas."""
    replication = replication or Replication()
    what = "the streams"
    try:
        for stream in STREAMS:
            what = f"stream {stream.name}"
            config = stream_config(stream, replication)
            try:
                await js.update_stream(config)
            except nats.js.errors.NotFoundError:
                await js.add_stream(config)
        for consumer in CONSUMERS:
            what = f"consumer {consumer.stream.name}/{consumer.durable}"
            await js.add_consumer(consumer.stream.name, consumer_config(consumer))
        for bucket in OBJECT_BUCKETS:
            what = f"object store {bucket.name}"
            try:
                await js.object_store(bucket.name)
            except nats.js.errors.BucketNotFoundError:
                await js.create_object_store(bucket.name, ObjectStoreConfig(
                    description=bucket.description, storage=StorageType.FILE, replicas=replication.replicas,
                    placement=replication.placement,
                ))
            else:
                await _replicate(js, f"OBJ_{bucket.name}", replication)
        for kv in KV_BUCKETS:
            what = f"key-value bucket {kv.name}"
            try:
                await js.key_value(kv.name)
            except nats.js.errors.BucketNotFoundError:
                await js.create_key_value(KeyValueConfig(
                    bucket=kv.name, description=kv.description, history=kv.history, storage=StorageType.FILE,
                    ttl=float(kv.ttl_seconds) or None, direct=kv.direct or None, replicas=replication.replicas,
                    placement=replication.placement,
                ))
            else:
                await _replicate(js, f"KV_{kv.name}", replication)
    except nats.js.errors.APIError as exc:
        refusal = _unplaceable(exc, what, replication)
        if refusal is None:
            raise
        raise refusal from None
    await _wait_replicated(js, replication)


def _replicated(cluster: ClusterInfo | None, replicas: int) -> bool:
    """Whether a stream's or consumer's raft group has `replicas` members, each caught up (R1: no peers)."""
    peers = (cluster.replicas if cluster else None) or []
    return len(peers) == replicas - 1 and all(peer.current for peer in peers)


async def _wait_replicated(js: JetStreamContext, replication: Replication, timeout: float = REPLICATION_TIMEOUT
                           ) -> None:
    """Wait until every stream and consumer has its replicas in place and current: a changed replica count is
    applied in the background (and a second change meanwhile is refused), so provisioning ends when it is done.
    ProvisionError after `timeout`."""
    streams = [s.name for s in STREAMS] + [f"OBJ_{b.name}" for b in OBJECT_BUCKETS]
    streams += [f"KV_{b.name}" for b in KV_BUCKETS]
    deadline = asyncio.get_running_loop().time() + timeout
    for name in streams:
        while not _replicated((await js.stream_info(name)).cluster, replication.replicas):
            if asyncio.get_running_loop().time() > deadline:
                raise ProvisionError(f"BMMS_NATS_REPLICAS={replication.replicas}: stream {name} has not got its "
                                     f"replicas in place within {timeout:.0f}s (are all cluster members up?)")
            await asyncio.sleep(0.1)
    for consumer in CONSUMERS:
        while not _replicated((await js.consumer_info(consumer.stream.name, consumer.durable)).cluster,
                              replication.replicas):
            if asyncio.get_running_loop().time() > deadline:
                raise ProvisionError(f"BMMS_NATS_REPLICAS={replication.replicas}: consumer {consumer.stream.name}/"
                                     f"{consumer.durable} has not got its replicas in place within {timeout:.0f}s")
            await asyncio.sleep(0.1)
