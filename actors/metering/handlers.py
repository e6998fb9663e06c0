"""The metering actor: counts tool calls and builds per organisation, server, tool and day, answers quota
checks and usage reports, and keeps the QUOTAS bucket true.

Attribution never trusts a message: a tool call counts for the organisation that metering's own record
(from the deployer's `changed` events) says owns its server. A call of a server not recorded yet waits
(nak with backoff) for that record, and is parked with the reason if it never comes; a call claiming
another organisation is recorded as rejected, logged, acked, and never counted.

Its SQL is in `storage.py`; the QUOTAS bucket writer in `publisher.py`; plans and periods in `quotas.py`.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections import Counter

from actors.metering import storage
from actors.metering.publisher import QuotaPublisher
from actors.metering.quotas import (
    MONTHLY,
    QUOTAS,
    default_plan,
    month_of,
    parse_period,
    period_name,
    refusal_detail,
    seconds_until_next_month,
)
from actors.runtime.actor import Batch, Context, Delivery
from actors.runtime.settings import Settings
from bus_schemas.base import Failed, FailureCode
from bus_schemas.builds import AnyBuildEvent, BuildFailed, BuildPlanned, BuildRequested, StepChanged
from bus_schemas.registry import METERING_BUILDS
from bus_schemas.servers import ServerChanged
from bus_schemas.usage import (
    CheckQuota,
    CheckQuotaReply,
    GetQuota,
    GetQuotaReply,
    GetUsage,
    GetUsageReply,
    QuotaAllowed,
    QuotaStatus,
    ToolCalled,
)

QUOTA_RECHECK_SECONDS = 60.0
"""How often organisations over a quota are re-evaluated (a new month, a plan changed elsewhere)."""
MAX_BATCH = 1000
LINGER_SECONDS = 0.25
"""Usage events applied per database transaction."""
CATCH_UP_SECONDS = 2.0
"""How long a build-quota check waits for metering to have counted every build requested before it."""
MAX_REMEMBERED_OWNERS = 100_000
"""Server owners kept in memory (a server's owner never changes, so the cache needs no invalidation)."""


class MeteringState:
    """What metering's handlers share: the QUOTAS bucket writer (with the default plan from the settings, made
    when the actor starts serving) and the server owners recorded so far."""

    def __init__(self) -> None:
        self._quotas: QuotaPublisher | None = None
        self.owners: dict[str, str] = {}
        """Server -> owning organisation, as recorded; filled on demand."""

    def start(self, settings: Settings) -> None:
        """Take the default plan from `settings` (when the actor starts serving)."""
        self._quotas = QuotaPublisher(default_plan(settings))

    @property
    def quotas(self) -> QuotaPublisher:
        """The QUOTAS bucket writer (once serving)."""
        if self._quotas is None:
            raise RuntimeError("the metering actor is not serving")
        return self._quotas

    def remember_owners(self, owners: dict[str, str]) -> None:
        """Keep recorded server owners in memory."""
        if len(self.owners) + len(owners) > MAX_REMEMBERED_OWNERS:
            self.owners.clear()
        self.owners.update(owners)


def stored_at(delivery: Delivery) -> dt.datetime:
    """When the stream stored an event: the time metering counts it at (not a time the message claims)."""
    return dt.datetime.fromtimestamp(delivery.stored_at_us / 1_000_000, dt.UTC)


async def builds_counted_through(ctx: Context, seq: int, timeout: float) -> bool:
    """Wait until metering has counted every build event up to stream sequence `seq` (its BUILDS consumer's
    ack floor is there: it acks only after recording); False if that takes longer than `timeout`."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        info = await ctx.js.consumer_info(METERING_BUILDS.stream.name, METERING_BUILDS.durable)
        if info.ack_floor is not None and info.ack_floor.stream_seq >= seq:
            return True
        if loop.time() >= deadline:
            return False
        await asyncio.sleep(0.02)  # polling the consumer's progress, bounded by the deadline


async def meter_tool_calls(batch: Batch[ToolCalled], ctx: Context, metering: MeteringState) -> None:
    """Count a batch of tool calls for their servers' recorded owners, in one transaction; calls of servers
    not recorded yet wait, calls claiming another organisation are recorded as rejected."""
    unknown = {i.message.server_id for i in batch} - metering.owners.keys()
    calls: list[storage.ToolCall] = []
    rejected: list[storage.Rejection] = []
    waiting: Counter[str] = Counter()
    async with ctx.pool.acquire() as conn, conn.transaction():
        if unknown:
            metering.remember_owners(await storage.server_owners(conn, unknown))
        for item in batch:
            call = item.message
            subject_server = item.delivery.subject.split(".")[1]
            if subject_server != call.server_id:
                batch.park(item, f"published on the subject of server {subject_server} but names server "
                                 f"{call.server_id}")
                continue
            owner = metering.owners.get(call.server_id)
            if owner is None:
                batch.retry_later(item, f"server {call.server_id} is unknown to metering (no `changed` event)")
                waiting[call.server_id] += 1
            elif owner != call.org_id:
                rejected.append(storage.Rejection(event_id=call.event_id, server_id=call.server_id,
                                                  claimed_org=call.org_id, recorded_org=owner))
            else:
                calls.append(storage.ToolCall(
                    event_id=call.event_id, org_id=owner, server_id=call.server_id, tool=call.tool,
                    day=stored_at(item.delivery).date(), error=call.status == "error",
                    duration_ms=call.duration_ms, bytes_out=call.bytes_out,
                ))
        moved = await storage.record_tool_calls(conn, calls)
        new_rejections = await storage.record_rejections(conn, rejected)
    for server, count in waiting.items():
        ctx.log.info("%d tool call(s) of server %s wait for metering to learn its owner", count, server)
    if new_rejections:
        claims = Counter((r.server_id, r.claimed_org, r.recorded_org) for r in rejected)
        for (server, claimed, recorded), count in claims.items():
            ctx.log.warning(
                "rejected %d usage event(s) of server %s claiming organisation %s; it belongs to %s",
                count, server, claimed, recorded, extra={"server_id": server, "claimed_org": claimed},
            )
    await metering.quotas.refresh(ctx.pool, ctx.js, moved)


async def record_server(event: ServerChanged, ctx: Context, metering: MeteringState) -> None:
    """Record a server's owner and state from the deployer's `changed` event."""
    assert ctx.delivery is not None
    async with ctx.pool.acquire() as conn:
        owner = await storage.record_server(conn, event.server_id, event.org_id, event.state,
                                            ctx.delivery.stream_seq, stored_at(ctx.delivery))
    if owner != event.org_id:
        ctx.log.error("server %s belongs to organisation %s; ignored a `changed` event naming %s",
                      event.server_id, owner, event.org_id)
        return
    await metering.quotas.refresh(ctx.pool, ctx.js, [owner])


async def meter_builds(event: AnyBuildEvent, ctx: Context, metering: MeteringState) -> None:
    """Count requested builds (and builds refused for quota), their steps and their model tokens."""
    assert ctx.delivery is not None
    at = stored_at(ctx.delivery)
    async with ctx.pool.acquire() as conn:
        if isinstance(event, BuildRequested):
            counted = await storage.record_build_requested(conn, event.build_id, event.org_id, month_of(at),
                                                           ctx.delivery.stream_seq)
        elif isinstance(event, StepChanged):
            await storage.record_step(conn, event.build_id, event.org_id, event.step, event.state, at)
            return
        elif isinstance(event, BuildPlanned):
            if event.model_input_tokens or event.model_output_tokens:
                await storage.record_build_tokens(conn, event.build_id, event.org_id, month_of(at),
                                                  event.model_input_tokens, event.model_output_tokens)
            return
        elif isinstance(event, BuildFailed) and event.code == FailureCode.QUOTA_EXCEEDED and event.step == "plan":
            await storage.record_build_refused(conn, event.build_id)
            counted = True
        else:
            return
    if counted:
        await metering.quotas.refresh(ctx.pool, ctx.js, [event.org_id])


async def recheck_quotas(ctx: Context, metering: MeteringState) -> None:
    """Re-evaluate every organisation the QUOTAS bucket says is over a quota (a timer)."""
    await metering.quotas.recheck_exceeded(ctx.pool, ctx.js)


async def check_quota(request: CheckQuota, ctx: Context, metering: MeteringState) -> CheckQuotaReply:
    """Allow adding `request.adding` to a quota's use, or refuse it with when to retry."""
    now = dt.datetime.now(dt.UTC)
    month = month_of(now)
    quota = request.quota
    counting_builds = quota == "builds_per_month" and request.build_id is not None
    if counting_builds and request.requested_seq is not None and not await builds_counted_through(
        ctx, request.requested_seq, CATCH_UP_SECONDS
    ):
        ctx.log.warning("build %s: quota checked before metering counted the builds before it", request.build_id)
    async with ctx.pool.acquire() as conn:
        usage = (await storage.usage_of(conn, [request.org_id], month, metering.quotas.default))[request.org_id]
        period = usage.period(quota)
        if counting_builds and request.build_id is not None:
            used, build_month = await storage.builds_before(conn, request.org_id, month, request.build_id)
            period = period_name(build_month)
        elif quota == "running_servers" and request.server_id is not None:
            used = await storage.running_servers(conn, request.org_id, leaving_out=request.server_id)
        else:
            used = usage.used(quota)
    limit = usage.plan.limit(quota)
    if limit is None or used + request.adding <= limit:
        return QuotaAllowed(quota=quota, limit=limit, used=used, period=period)
    ctx.log.info("refused %s for organisation %s: %d of %s used", quota, request.org_id, used, limit)
    return Failed(
        code=FailureCode.QUOTA_EXCEEDED,
        detail=refusal_detail(quota, usage.plan, used, request.adding, period),
        retry_after_seconds=seconds_until_next_month(now) if quota in MONTHLY else None,
    )


async def get_quota(request: GetQuota, ctx: Context, metering: MeteringState) -> GetQuotaReply:
    """An organisation's plan and each quota's use this month."""
    month = month_of(dt.datetime.now(dt.UTC))
    async with ctx.pool.acquire() as conn:
        usage = (await storage.usage_of(conn, [request.org_id], month, metering.quotas.default))[request.org_id]
    return QuotaStatus(org_id=request.org_id, plan=usage.plan.name,
                       quotas=tuple(usage.quota(name) for name in QUOTAS))


async def get_usage(request: GetUsage, ctx: Context) -> GetUsageReply:
    """An organisation's usage report for a period (one server's, when it names one)."""
    async with ctx.pool.acquire() as conn:
        return await storage.usage_report(conn, request.org_id, parse_period(request.period),
                                          request.server_id, request.period)
