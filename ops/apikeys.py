"""API keys from the operator's side: created over the bus by the auth actor, never in its tables directly."""

from __future__ import annotations

import asyncio
from pathlib import Path

from nats.aio.client import Client

from actors.runtime.bus import call
from bus_schemas.base import Failed, FailureCode
from bus_schemas.identity import ApiKeyCreated, Authenticate, CreateApiKey, Principal
from bus_schemas.registry import AUTHENTICATE, CREATE_API_KEY
from ops.operator import OperatorError, write_private

DEV_ORG = "dev"
"""The organisation `bmms dev` creates for its printed API key."""


async def create_api_key(nc: Client, org: str, label: str, *, timeout: float, wait: float = 0.0) -> ApiKeyCreated:
    """Ask the auth actor for a new key of `org` (created if new); retry for up to `wait` seconds while no
    auth actor answers yet. Raises OperatorError with the actor's reason when it refuses."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait
    while True:
        reply = await call(nc, CREATE_API_KEY, CreateApiKey(org_name=org, label=label), timeout=timeout)
        if isinstance(reply, ApiKeyCreated):
            return reply
        assert isinstance(reply, Failed)
        if reply.code != FailureCode.UNAVAILABLE or loop.time() >= deadline:
            raise OperatorError(f"could not create an API key for {org!r}: {reply.detail}")
        await asyncio.sleep(0.2)  # the auth actor is still starting; bounded by `wait`


async def ensure_dev_api_key(
    nc: Client, key_file: Path, *, timeout: float, wait: float
) -> tuple[str, str, bool]:
    """The dev organisation's API key kept in `key_file` (mode 0600), created on first use or when the
    stored one no longer authenticates (its database was reset). Returns (key, org id, created now)."""
    stored = await asyncio.to_thread(_read_key, key_file)
    if stored is not None:
        reply = await call(nc, AUTHENTICATE, Authenticate(token=stored), timeout=timeout)
        if isinstance(reply, Principal):
            return stored, reply.org_id, False
        if reply.code != FailureCode.UNAUTHENTICATED:
            raise OperatorError(f"could not check the stored dev API key: {reply.detail}")
    created = await create_api_key(nc, DEV_ORG, "dev", timeout=timeout, wait=wait)
    await asyncio.to_thread(write_private, key_file, created.secret + "\n")
    return created.secret, created.org_id, True


def _read_key(path: Path) -> str | None:
    try:
        return path.read_text().strip() or None
    except FileNotFoundError:
        return None
