"""Telling resource servers that a grant ended: the REVOKED key-value bucket.

Access tokens are JWTs that runners verify offline, so ending a grant in the database stops refreshes but
not the access tokens already out (15 minutes each). Each revoked grant is therefore also written to the
REVOKED bucket under `<org_id>.<grant_id>`; runners watch their organisation's keys and refuse tokens whose
`gid` claim names a revoked grant. An access token revoked on its own (RFC 7009) is written under
`<org_id>.<jti>`, and runners refuse the token whose `jti` it names; the grant's other tokens keep working.
Entries expire with the bucket's TTL, which outlives every token of the grant, so the bucket stays small.

The write goes straight to the bucket's subject (a JetStream publish acknowledged by the stream), which is
all the `oauth` NATS user may do with it. A write lost to a bus fault is made again when the actor next
starts (`republish_recent`), and a second write of the same grant is harmless.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging

import asyncpg
from nats.js import JetStreamContext
from nats.js.client import KV_PRE_TEMPLATE

from actors.oauth import storage
from actors.runtime.codec import encode
from bus_schemas.oauth import GrantRevoked
from bus_schemas.registry import REVOKED, revocation_key

log = logging.getLogger("bmms.oauth.revocations")

REVOKED_ALONE_REASON = "access token revoked by the client"
"""The reason recorded for one access token revoked (RFC 7009)."""

ATTEMPTS = 3
"""Writes tried before the revocation is left to the next start's catch-up."""


def _iso(value: dt.datetime) -> str:
    return value.astimezone(dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


async def record_revocation(
    js: JetStreamContext, *, grant_id: str, org_id: str, reason: str, at: dt.datetime, token_id: str | None = None
) -> bool:
    """Write the revoked grant (or, with `token_id`, only that access token of it) to REVOKED; whether
    JetStream stored it."""
    subject = KV_PRE_TEMPLATE.format(bucket=REVOKED.name) + revocation_key(org_id, token_id or grant_id)
    payload = encode(GrantRevoked(grant_id=grant_id, org_id=org_id, reason=reason, revoked_at=_iso(at),
                                  token_id=token_id))
    for attempt in range(1, ATTEMPTS + 1):
        try:
            await js.publish(subject, payload, timeout=2.0)
            return True
        except Exception as exc:  # bus fault, no bucket: try again, then leave it to the next start
            log.warning("could not record the revocation of grant %s (attempt %d/%d): %r", grant_id, attempt,
                        ATTEMPTS, exc)
            if attempt < ATTEMPTS:
                await asyncio.sleep(0.2 * attempt)
    log.error("the revocation of grant %s is not in %s: its access tokens work until they expire, or until the "
              "oauth actor next starts", grant_id, REVOKED.name)
    return False


async def republish_recent(pool: asyncpg.Pool, js: JetStreamContext, now: dt.datetime) -> int:
    """Write every grant and access token revoked within the bucket's TTL again (a start-up catch-up); how
    many."""
    since = now - dt.timedelta(seconds=REVOKED.ttl_seconds)
    written = 0
    for grant in await storage.revoked_since(pool, since):
        written += await record_revocation(js, grant_id=grant.grant_id, org_id=grant.org_id, reason=grant.reason,
                                           at=grant.revoked_at)
    for token in await storage.tokens_revoked_since(pool, since):
        written += await record_revocation(js, grant_id=token.grant_id, org_id=token.org_id,
                                           reason=REVOKED_ALONE_REASON, at=token.revoked_at, token_id=token.jti)
    return written
