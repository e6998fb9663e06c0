"""The runner on the bus, as the `runner` NATS user (nats.conf): the only things it may do are fetch the public
signing keys (`rpc.oauth.jwks`), publish usage events (`usage.<server>.tool`, into the USAGE stream),
watch its organisation's key in the QUOTAS bucket and its organisation's revoked grants in the REVOKED
bucket. Replies arrive on `_INBOX_runner`.

Nothing here may hold up a tool call: the connection is made in the background (and retried), usage events
wait in `UsageOutbox` until JetStream acknowledges them (re-publishing is safe: `Nats-Msg-Id` is the event
id), and the quota watch restarts after any failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from typing import Any

import msgspec
import nats
import nats.errors
from nats.aio.client import Client
from nats.js import JetStreamContext

from bus_schemas.base import Failed
from bus_schemas.oauth import GetJwks, GrantRevoked
from bus_schemas.registry import OAUTH_GET_JWKS, QUOTAS, REVOKED, TOOL_USAGE
from bus_schemas.usage import QuotaState
from runner_template.auth import KeySourceUnavailable, RevokedGrants
from runner_template.kv import KvEntry, watch_bucket
from runner_template.metering import QuotaGate, UsageOutbox
from runner_template.rpc import call

log = logging.getLogger("bmms.runner.bus")

def nats_servers(url: str) -> list[str]:
    """The server URLs of a NATS address setting: one URL, or a cluster's comma-separated list (the client tries
    each, and reconnects to another when its own goes away)."""
    return [part.strip() for part in url.split(",") if part.strip()]


_encoder = msgspec.json.Encoder()
_quota_state = msgspec.json.Decoder(QuotaState)
_grant_revoked = msgspec.json.Decoder(GrantRevoked)


class RunnerBus:
    """One runner's NATS connection and the background work on it."""

    def __init__(self, *, url: str, user: str, password: str, server_id: str, org_id: str, quota: QuotaGate,
                 outbox: UsageOutbox, revoked: RevokedGrants | None = None, retry_seconds: float = 1.0) -> None:
        self.url = url
        self.user = user
        self._password = password
        self.server_id = server_id
        self.org_id = org_id
        self.quota = quota
        self.outbox = outbox
        self.revoked = revoked
        """Where revoked grants of the organisation go (None: not watched)."""
        self.retry_seconds = retry_seconds
        self.published = 0
        """Usage events JetStream acknowledged."""
        self.nc: Client | None = None
        self.connected = asyncio.Event()
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._quota_sub: JetStreamContext.PushSubscription | None = None
        self._revoked_sub: JetStreamContext.PushSubscription | None = None

    async def start(self) -> None:
        """Connect (in the background, retrying) and start publishing usage and watching the quota."""
        self._tasks.append(asyncio.create_task(self._run(), name="runner-bus"))

    async def stop(self, flush_seconds: float = 2.0) -> None:
        """Publish what is queued (for at most `flush_seconds`), then disconnect."""
        if self.nc is not None and self.nc.is_connected and len(self.outbox):
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.outbox.emptied(), timeout=flush_seconds)
        self._stop.set()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.nc is not None:
            with contextlib.suppress(Exception):
                await self.nc.close()

    async def _run(self) -> None:
        nc = await self._connect()
        self.nc = nc
        self.connected.set()
        js = nc.jetstream()
        await asyncio.gather(self._publish_usage(js), self._watch_quota(js), self._watch_revocations(js))

    async def _connect(self) -> Client:
        last_error = ""

        async def on_error(exc: Exception) -> None:
            nonlocal last_error
            # nats-py retries a refused connection every half second: say so once, not each time
            log.log(logging.DEBUG if str(exc) == last_error else logging.WARNING, "nats error: %s", exc)
            last_error = str(exc)

        async def on_disconnect() -> None:
            log.warning("disconnected from nats")

        async def on_reconnect() -> None:
            log.info("reconnected to nats")

        while True:
            try:
                return await nats.connect(
                    nats_servers(self.url), name=f"runner-{self.server_id}", user=self.user, password=self._password,
                    inbox_prefix=f"_INBOX_{self.user}",  # the runner's replies arrive only there (nats.conf)
                    max_reconnect_attempts=-1, reconnect_time_wait=0.5, connect_timeout=2, allow_reconnect=True,
                    error_cb=on_error, disconnected_cb=on_disconnect, reconnected_cb=on_reconnect,
                )
            except Exception as exc:  # any connect failure: retry; the runner serves meanwhile
                log.warning("cannot connect to nats at %s: %r", self.url, exc)
            await self._pause()

    async def _pause(self) -> None:
        """Wait `retry_seconds` before trying again (less when stopping)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), timeout=self.retry_seconds)

    async def fetch_jwks(self) -> Mapping[str, Any]:
        """The JWK Set from the Authorization Server (a `KeySource` for the token verifier)."""
        try:
            await asyncio.wait_for(self.connected.wait(), timeout=5)
        except TimeoutError:
            raise KeySourceUnavailable(f"not connected to nats at {self.url}") from None
        assert self.nc is not None
        try:
            answer = await call(self.nc, OAUTH_GET_JWKS, GetJwks(), timeout=5)
        except nats.errors.Error as exc:
            raise KeySourceUnavailable(f"{OAUTH_GET_JWKS.subject}: {exc!r}") from None
        except msgspec.DecodeError as exc:
            raise KeySourceUnavailable(f"{OAUTH_GET_JWKS.subject}: unreadable reply: {exc}") from None
        if isinstance(answer, Failed):
            raise KeySourceUnavailable(f"{OAUTH_GET_JWKS.subject}: {answer.code}: {answer.detail}")
        return {"keys": [msgspec.to_builtins(key) for key in answer.keys]}

    async def _publish_usage(self, js: JetStreamContext) -> None:
        subject = TOOL_USAGE.subject(server=self.server_id)
        while True:
            event = await self.outbox.head()
            try:
                await js.publish(subject, _encoder.encode(event), timeout=5, headers={"Nats-Msg-Id": event.event_id})
            except Exception as exc:  # bus down, timeout, no stream: keep it, retry
                log.warning("cannot publish usage event %s: %r (%d queued)", event.event_id, exc, len(self.outbox))
                await self._pause()
                continue
            self.outbox.done(event)
            self.published += 1

    async def _watch_quota(self, js: JetStreamContext) -> None:
        """Watch QUOTAS key <org_id> (`kv.watch_bucket`): the last value first, then every change; only the
        watch's creation is retried here."""
        while True:
            try:
                self._quota_sub = await watch_bucket(js, QUOTAS.name, self.org_id, self._on_quota)
                return
            except Exception as exc:  # bucket missing, bus down: try again
                log.warning("cannot watch the quota of %s: %r", self.org_id, exc)
            await self._pause()

    async def _on_quota(self, entry: KvEntry) -> None:
        if entry.value is None:
            self.quota.update(None)  # deleted, purged or expired: within quota
            return
        try:
            state = _quota_state.decode(entry.value)
        except msgspec.DecodeError as exc:  # keep the last good state; metering writes the key again
            log.error("unreadable quota state for %s: %s", self.org_id, exc)
            return
        self.quota.update(state)

    async def _watch_revocations(self, js: JetStreamContext) -> None:
        """Watch REVOKED keys `<org_id>.*`: an unnamed ordered consumer, every live entry first (the bucket
        holds one value per key, so that is each revoked grant once), then every new one. The runner may only
        create it and answer its flow control (nats.conf): no stream info, no direct get."""
        if self.revoked is None:
            return
        while True:
            try:
                self._revoked_sub = await watch_bucket(js, REVOKED.name, f"{self.org_id}.*", self._on_revoked)
                return
            except Exception as exc:  # bucket missing, bus down: try again
                log.warning("cannot watch the revoked grants of %s: %r", self.org_id, exc)
            await self._pause()

    async def _on_revoked(self, entry: KvEntry) -> None:
        assert self.revoked is not None
        if entry.value is None:
            return  # a revocation is never taken back; an expired entry's grant has no live token left
        revoked_id = entry.key.rsplit(".", 1)[-1]  # a grant id, or one access token's jti
        try:
            revoked = _grant_revoked.decode(entry.value)
        except msgspec.DecodeError as exc:  # the key alone says what was revoked: refuse it anyway
            log.error("unreadable revocation of %s: %s", revoked_id, exc)
        else:
            revoked_id = revoked.token_id or revoked.grant_id
        self.revoked.revoke(revoked_id, entry.stored_at)
        log.info("grant or token revoked", extra={"event": "grant_revoked", "grant_id": revoked_id})
