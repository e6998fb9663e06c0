"""Keeping the QUOTAS bucket true: each organisation's key says which quotas it has exceeded (no key: none).

Runners watch the bucket and refuse tool calls while `tool_calls_per_month` is exceeded, so the bucket is
written as soon as a batch moves an organisation over a limit, and cleared when it is back within every
limit (a new month, a bigger plan, a stopped server).
"""

from __future__ import annotations

import datetime as dt
import logging

import asyncpg
from nats.js import JetStreamContext
from nats.js.kv import KeyValue

from actors.metering import storage
from actors.metering.quotas import Plan, month_of, state_key
from actors.runtime.actor import utc_now
from actors.runtime.codec import encode
from bus_schemas.registry import QUOTAS
from bus_schemas.usage import QuotaState

log = logging.getLogger("bmms.metering.quotas")


class QuotaPublisher:
    """Evaluates organisations' quotas and writes the changes to the QUOTAS bucket."""

    def __init__(self, default: Plan) -> None:
        self.default = default
        self._bucket: KeyValue | None = None

    async def bucket(self, js: JetStreamContext) -> KeyValue:
        """The QUOTAS bucket (looked up once)."""
        if self._bucket is None:
            self._bucket = await js.key_value(QUOTAS.name)
        return self._bucket

    async def refresh(self, pool: asyncpg.Pool, js: JetStreamContext, org_ids: list[str] | set[str]) -> None:
        """Re-evaluate these organisations and write each changed state to the bucket.

        The organisations' state rows stay locked from reading the usage to recording what was written, so
        two copies of the actor never write one organisation's key out of order. The bucket is written
        before the row: if recording fails, the next refresh writes the same value again.
        """
        orgs = sorted(set(org_ids))
        if not orgs:
            return
        bucket = await self.bucket(js)
        month = month_of(dt.datetime.now(dt.UTC))
        async with pool.acquire() as conn, conn.transaction():
            written = await storage.lock_quota_states(conn, orgs)
            usages = await storage.usage_of(conn, orgs, month, self.default)
            for org in orgs:
                exceeded = usages[org].exceeded()
                key = state_key(exceeded)
                if key == written.get(org, ""):
                    continue
                if exceeded:
                    state = QuotaState(org_id=org, exceeded=exceeded, updated_at=utc_now())
                    await bucket.put(org, encode(state))
                    log.warning("organisation %s is over quota: %s", org, key, extra={"org_id": org})
                else:
                    await bucket.delete(org)
                    log.info("organisation %s is within every quota again", org, extra={"org_id": org})
                await storage.save_quota_state(conn, org, key)

    async def recheck_exceeded(self, pool: asyncpg.Pool, js: JetStreamContext) -> None:
        """Re-evaluate every organisation the bucket says is over a quota: a new month starts monthly
        quotas over, and nothing else would clear an organisation whose calls are all refused."""
        async with pool.acquire() as conn:
            orgs = await storage.orgs_over_quota(conn)
        await self.refresh(pool, js, orgs)
