"""Server secrets: the upstream credentials of hosted servers, which only the deployer holds.

A value is sealed (AES-256-GCM, `actors.runtime.crypto`, purpose SERVER_SECRETS) before it reaches a
table, with the row's identity as associated data, and is opened only to become a runner's
`BMMS_SECRET_<NAME>` (runner_template.upstream reads it there). Two tables:
- `server_secrets`: (server, name) -> sealed value, who set it and when;
- `build_secrets`: the secrets given with a build request, kept until the build's server exists. The
  deployer moves them onto the server before the build's runner starts (`adopt_staged`); staging and
  adopting take the build's advisory lock, so a secret staged while its build deploys is never lost.
Their SQL is in `storage`; this module seals and opens what goes through it.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping

import asyncpg
from cryptography.exceptions import InvalidTag
from nats.js import JetStreamContext

from actors.deployer import storage
from actors.runtime.crypto import SERVER_SECRETS, KeyEncryption
from actors.runtime.objects import load_verified
from bus_schemas.plans import Artifact, canonical_artifact_bytes
from bus_schemas.registry import ARTIFACTS
from bus_schemas.servers import MAX_SECRET_BYTES

STAGED_FOR = dt.timedelta(days=7)
"""Secrets staged for a build that never deployed are forgotten after this long."""


class SecretsUnavailable(Exception):
    """Secrets cannot be sealed or opened: no BMMS_SECRET_KEY, or not the key they were sealed with."""


def rfc3339(value: dt.datetime) -> str:
    """A timestamp as the bus carries it: RFC 3339 UTC, milliseconds."""
    return value.astimezone(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def value_problem(value: str) -> str | None:
    """Why `value` cannot be a secret value, or None."""
    if not value:
        return "a secret value cannot be empty"
    if len(value.encode()) > MAX_SECRET_BYTES:
        return f"a secret value is at most {MAX_SECRET_BYTES} bytes"
    if "\0" in value:
        return "a secret value cannot hold a NUL character (it becomes an environment variable)"
    return None


class SecretBox:
    """Seals and opens secret values; each ciphertext bound to its server and name (or build and name)."""

    def __init__(self, secret_key: str | None) -> None:
        self._encryption = KeyEncryption(secret_key, purpose=SERVER_SECRETS) if secret_key else None

    def _key(self) -> KeyEncryption:
        if self._encryption is None:
            raise SecretsUnavailable("the deployer has no BMMS_SECRET_KEY, so it cannot keep server secrets")
        return self._encryption

    def seal_for_server(self, server_id: str, name: str, value: str) -> bytes:
        return self._key().seal(f"server:{server_id}:{name}", value.encode())

    def open_for_server(self, server_id: str, name: str, sealed: bytes) -> str:
        try:
            return self._key().open(f"server:{server_id}:{name}", sealed).decode()
        except InvalidTag:
            raise SecretsUnavailable(f"secret {name} of server {server_id} does not open: BMMS_SECRET_KEY is not "
                                     "the key it was sealed with") from None

    def seal_for_build(self, org_id: str, build_id: str, name: str, value: str) -> bytes:
        return self._key().seal(f"build:{org_id}:{build_id}:{name}", value.encode())

    def open_for_build(self, org_id: str, build_id: str, name: str, sealed: bytes) -> str:
        try:
            return self._key().open(f"build:{org_id}:{build_id}:{name}", sealed).decode()
        except InvalidTag:
            raise SecretsUnavailable(f"secret {name} staged for build {build_id} does not open: BMMS_SECRET_KEY "
                                     "is not the key it was sealed with") from None


async def artifact_secrets(js: JetStreamContext, artifact_hash: str) -> tuple[str, ...]:
    """The secret names an artifact's module reads (raises ObjectUnusable when it cannot be loaded)."""
    store = await js.object_store(ARTIFACTS.name)
    artifact = await load_verified(store, ARTIFACTS, artifact_hash, Artifact, canonical_artifact_bytes, "artifact")
    return artifact.secrets


async def put_secret(
    conn: asyncpg.Connection, box: SecretBox, *, server_id: str, name: str, value: str, by: str
) -> dt.datetime:
    """Store (or replace) one secret of a server; when it was stored."""
    return await storage.put_secret(conn, server_id=server_id, name=name,
                                    sealed=box.seal_for_server(server_id, name, value), by=by)


async def values_for(
    conn: asyncpg.Connection, box: SecretBox, server_id: str, names: Iterable[str]
) -> dict[str, str]:
    """The values of those of `names` the server has (raises SecretsUnavailable if one does not open)."""
    wanted = sorted(set(names))
    if not wanted:
        return {}
    sealed = await storage.sealed_secrets(conn, server_id, wanted)
    return {name: box.open_for_server(server_id, name, value) for name, value in sealed}


async def stage_or_put(
    conn: asyncpg.Connection, box: SecretBox, *, org_id: str, build_id: str, values: Mapping[str, str], by: str
) -> str | None:
    """Keep a build's secrets until its server exists, or, when it does already, put them on it; the server id
    in that case. Under the build's lock, so `adopt_staged` either sees these rows or its server is seen here."""
    async with conn.transaction():
        await storage.lock_build_secrets(conn, build_id)
        server_id = await storage.server_of_build(conn, org_id, build_id)
        for name, value in sorted(values.items()):
            if server_id is not None:
                await put_secret(conn, box, server_id=server_id, name=name, value=value, by=by)
                continue
            await storage.stage_secret(conn, build_id=build_id, org_id=org_id, name=name,
                                       sealed=box.seal_for_build(org_id, build_id, name, value), by=by)
    return server_id


async def adopt_staged(
    conn: asyncpg.Connection, box: SecretBox, *, org_id: str, build_id: str, server_id: str
) -> list[str]:
    """Move the secrets staged for a build onto its server (call once the build's version row exists); the
    names moved. Safe to run twice: a second run finds nothing staged."""
    async with conn.transaction():
        await storage.lock_build_secrets(conn, build_id)
        staged = await storage.staged_secrets(conn, org_id, build_id)
        for secret in staged:
            value = box.open_for_build(org_id, build_id, secret.name, secret.sealed)
            await put_secret(conn, box, server_id=server_id, name=secret.name, value=value, by=secret.staged_by)
        await storage.forget_staged(conn, build_id)
    return [secret.name for secret in staged]


async def purge_stale_staged(conn: asyncpg.Connection, now: dt.datetime) -> int:
    """Forget secrets staged for builds that never deployed; how many."""
    return await storage.purge_staged_before(conn, now - STAGED_FOR)
