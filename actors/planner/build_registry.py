"""The build registry: accepts builds, answers for one, and keeps every build's status.

SUBMIT_BUILD records a build (once per idempotency key) and publishes its `requested` event; GET_BUILD answers
with one build of one organisation. The status projection consumes every build event (BUILD_STATUS) in
batches into the `builds` table, and copies each build's row as it then stands into the BUILD_SUMMARIES bucket
(`summaries`), where the gateway reads it: at once when a milestone moved the status, within
`SUMMARY_FLUSH_SECONDS` when only log and step events moved it.

The planner actor serves the registry beside the plan step, but they share nothing: the registry has its own
handlers, its own state (`BuildRegistryState`) and its own SQL (`registry_storage`).
"""

from __future__ import annotations

import datetime as dt
import secrets
import time
from dataclasses import dataclass, field

import asyncpg
from nats.js.kv import KeyValue

from actors.planner import registry_storage
from actors.planner.summaries import publish_summary
from actors.runtime.actor import Batch, Context, utc_now
from actors.runtime.build_events import emit
from actors.runtime.codec import encode
from bus_schemas.base import Failed, FailureCode
from bus_schemas.builds import (
    AnyBuildEvent,
    BuildAccepted,
    BuildDeployed,
    BuildFailed,
    BuildRequested,
    GetBuild,
    GetBuildReply,
    SubmitBuild,
    SubmitBuildReply,
)
from bus_schemas.registry import BUILD_SUMMARIES

PROJECTION_BATCH = 256
"""At most this many build events are projected in one transaction."""

PROJECTION_LINGER_SECONDS = 0.05
"""How long a batch of build events waits for more after its first: what a status may lag behind its event,
for a fraction of the database commits while builds log quickly."""

SUMMARY_FLUSH_SECONDS = 0.2
"""How often summaries moved only by log and step events are written to BUILD_SUMMARIES."""


def new_build_id() -> str:
    """A time-ordered, subject-safe build id."""
    return f"b{int(time.time() * 1000):011x}{secrets.token_hex(6)}"


@dataclass
class BuildRegistryState:
    """What the registry keeps between messages, in one copy of the actor."""

    bucket: KeyValue | None = None
    """The BUILD_SUMMARIES bucket, once looked up."""
    dirty: dict[str, str] = field(default_factory=dict)
    """Builds whose summary moved by a log or step event only: build id -> org id, written by
    `flush_summaries` (a busy build's log lines cost one summary write per interval, not one each)."""

    async def summaries(self, ctx: Context) -> KeyValue:
        """The BUILD_SUMMARIES bucket, looked up once."""
        if self.bucket is None:
            self.bucket = await ctx.js.key_value(BUILD_SUMMARIES.name)
        return self.bucket


async def write_summary(ctx: Context, registry: BuildRegistryState, org_id: str, build_id: str) -> None:
    """Put the build's summary as the projection holds it now into BUILD_SUMMARIES."""
    async with ctx.pool.acquire() as conn:
        summary = await registry_storage.find_build(conn, org_id, build_id)
    if summary is not None:
        await publish_summary(await registry.summaries(ctx), summary)


async def submit_build(request: SubmitBuild, ctx: Context, registry: BuildRegistryState) -> SubmitBuildReply:
    """Record the build (or find the one already recorded under its idempotency key or request id) and publish
    `requested`.

    The row and the event commit together: the row is committed only after the event is stored, so a copy that
    dies half-way leaves no build (a retry of the request records it again under the same id, and JetStream
    de-duplicates the event); a request that arrives after its `accept_by` records nothing."""
    try:
        async with ctx.pool.acquire() as conn, conn.transaction():
            recorded = await registry_storage.insert_build(
                conn,
                build_id=request.request_id or new_build_id(),
                org_id=request.org_id,
                name=request.name,
                requested_by=request.requested_by,
                source_json=encode(request.source).decode(),
                idempotency_key=request.idempotency_key,
                accept_by=dt.datetime.fromisoformat(request.accept_by) if request.accept_by else None,
            )
            if recorded is None:
                return Failed(code=FailureCode.UNAVAILABLE, detail="the build request arrived after its deadline "
                              "and was not recorded; send it again", retry_after_seconds=1)
            build_id, requested_seq = recorded
            if requested_seq is None:
                event = BuildRequested(
                    build_id=build_id, org_id=request.org_id, at=utc_now(),
                    name=request.name, requested_by=request.requested_by, source=request.source,
                    server_id=request.server_id,
                )
                seq = await emit(ctx, event, "requested", "requested")
                await registry_storage.mark_requested(conn, build_id, seq)
    except asyncpg.UntranslatableCharacterError:
        ctx.log.info("rejected build of %s: its text holds U+0000", request.org_id)
        return Failed(code=FailureCode.INVALID, detail="the build's text may not contain the NUL character (U+0000)")
    try:
        await write_summary(ctx, registry, request.org_id, build_id)
    except Exception:  # recorded and requested: the projection writes the summary with the build's next event
        ctx.log.warning("summary of build %s not written", build_id, exc_info=True)
    return BuildAccepted(build_id=build_id, org_id=request.org_id, status="requested")


async def get_build(request: GetBuild, ctx: Context) -> GetBuildReply:
    """One build of the asking organisation, or `not_found`."""
    async with ctx.pool.acquire() as conn:
        summary = await registry_storage.find_build(conn, request.org_id, request.build_id)
    if summary is None:
        return Failed(code=FailureCode.NOT_FOUND, detail=f"no build {request.build_id} in this organisation")
    return summary


async def project_build_status(batch: Batch[AnyBuildEvent], ctx: Context, registry: BuildRegistryState) -> None:
    """Project a batch of build events into the `builds` table, then into the summaries bucket."""
    # One transaction per batch: a busy build's log lines cost one commit per batch, not one each.
    events = [
        registry_storage.Projected(
            build_id=item.message.build_id, kind=item.delivery.subject.rsplit(".", 1)[-1],
            seq=item.delivery.stream_seq,
            failure=f"{item.message.step}: {item.message.detail}" if isinstance(item.message, BuildFailed)
            else None,
            server_id=item.message.server_id if isinstance(item.message, BuildDeployed) else None,
            url=item.message.url if isinstance(item.message, BuildDeployed) else None,
        )
        for item in batch
    ]
    async with ctx.pool.acquire() as conn, conn.transaction():
        await registry_storage.apply_events(conn, events)
    orgs = {item.message.build_id: item.message.org_id for item in batch}
    moved = {e.build_id for e in events if e.kind in registry_storage.MILESTONES}
    for build_id, org_id in orgs.items():
        if build_id in moved:
            await write_summary(ctx, registry, org_id, build_id)  # before the ack: a status never lags
        else:
            registry.dirty[build_id] = org_id


async def flush_summaries(ctx: Context, registry: BuildRegistryState) -> None:
    """Write the summaries that log and step events moved since the last flush (a timer, every
    `SUMMARY_FLUSH_SECONDS`)."""
    dirty, registry.dirty = registry.dirty, {}
    for build_id, org_id in dirty.items():
        try:
            await write_summary(ctx, registry, org_id, build_id)
        except Exception:  # the next event of the build writes it again
            ctx.log.warning("summary of build %s not written", build_id, exc_info=True)
