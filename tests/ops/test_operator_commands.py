"""`bmms migrate`, `bmms events`, `bmms apikey create` and `bmms schema`, run as real processes against the
test stack's nats-server and PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import asyncpg
import pytest
from nats.aio.client import Client

from actors.catalog import create_actor
from actors.runtime.actor import utc_now
from actors.runtime.bus import call, publish_event
from actors.runtime.codec import decode
from bus_schemas.builds import AnyBuildEvent, BuildRequested, LogLine, PlainWords
from bus_schemas.identity import Authenticate, Principal
from bus_schemas.registry import AUTHENTICATE, build_subject
from ops.asyncapi import CONTRACT_SNAPSHOT
from tests.conftest import Stack, running

COMMAND_TIMEOUT = 60


def bmms(*args: str, env: dict[str, str], timeout: float = COMMAND_TIMEOUT) -> subprocess.CompletedProcess[str]:
    """Run `python -m ops.cli ARGS` to the end."""
    return subprocess.run(
        [sys.executable, "-m", "ops.cli", *args], env=env, capture_output=True, text=True, timeout=timeout
    )


async def bmms_async(*args: str, env: dict[str, str]) -> tuple[int, str, str]:
    """Run `python -m ops.cli ARGS` without blocking the event loop (an actor may be serving on it)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "ops.cli", *args, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), COMMAND_TIMEOUT)
    assert process.returncode is not None
    return process.returncode, stdout.decode(), stderr.decode()


def operator_env(stack: Stack, role: str | None) -> dict[str, str]:
    """An environment with the stack's addresses and, when `role` is given, that role's credentials."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BMMS_")}
    env.update(BMMS_NATS_URL=stack.nats.url, BMMS_DATABASE_URL=stack.database_url, BMMS_LOG_JSON="false")
    if role is not None:
        env.update(BMMS_NATS_USER=role, BMMS_NATS_PASSWORD=stack.nats.passwords[role])
    return env


async def test_migrate_is_idempotent(stack: Stack, db: asyncpg.Connection) -> None:
    env = operator_env(stack, "admin")
    first = bmms("migrate", env=env)
    assert first.returncode == 0, first.stderr
    ledger = await db.fetch("SELECT owner, version, checksum FROM schema_migrations ORDER BY owner, version")
    assert {row["owner"] for row in ledger} >= {"auth", "planner"}

    second = bmms("migrate", env=env)
    assert second.returncode == 0, second.stderr
    assert "auth: up to date" in second.stdout and "planner: up to date" in second.stdout
    assert await db.fetch("SELECT owner, version, checksum FROM schema_migrations ORDER BY owner, version") == ledger


def test_migrate_takes_role_passwords_from_the_environment_as_nats_conf_does(stack: Stack, tmp_path: Path) -> None:
    env = operator_env(stack, None)
    env["BMMS_NATS_PASS_ADMIN"] = stack.nats.passwords["admin"]
    result = bmms("migrate", "--data-dir", str(tmp_path), env=env)
    assert result.returncode == 0, result.stderr


def test_migrate_without_credentials_says_where_they_come_from(stack: Stack, tmp_path: Path) -> None:
    result = bmms("migrate", "--data-dir", str(tmp_path), env=operator_env(stack, None))
    assert result.returncode == 1
    assert "no NATS credentials for role 'admin'" in result.stderr
    assert "nats-passwords.json" in result.stderr


async def _publish_history(admin_nc: Client, org: str, build: str) -> list[AnyBuildEvent]:
    js = admin_nc.jetstream()
    # Message ids name the org too: JetStream de-duplicates by id across the whole stream.
    requested = BuildRequested(
        build_id=build, org_id=org, at=utc_now(), name="weather", requested_by="t", source=PlainWords(text="w")
    )
    log = LogLine(build_id=build, org_id=org, at=utc_now(), step="plan", level="info", message="planning")
    await publish_event(js, build_subject(org, build, "requested"), requested, msg_id=f"{org}:{build}:requested")
    await publish_event(js, build_subject(org, build, "log"), log, msg_id=f"{org}:{build}:log")
    return [requested, log]


async def test_events_prints_a_builds_history_and_exits_without_follow(stack: Stack, admin_nc: Client) -> None:
    org = f"o{uuid.uuid4().hex[:10]}"
    first = await _publish_history(admin_nc, org, "b1")
    await _publish_history(admin_nc, org, "b2")
    await _publish_history(admin_nc, f"{org}x", "b1")  # another organisation's build stays out

    env = operator_env(stack, "events")
    result = bmms("events", "--org", org, "--build", "b1", "--no-follow", "--json", env=env)
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    expected_subjects = [build_subject(org, "b1", "requested"), build_subject(org, "b1", "log")]
    assert [line["subject"] for line in lines] == expected_subjects
    assert [decode(AnyBuildEvent, json.dumps(line["event"]).encode()) for line in lines] == first
    assert lines[0]["seq"] < lines[1]["seq"]

    everything = bmms("events", "--org", org, "--no-follow", env=env)
    assert everything.returncode == 0, everything.stderr
    printed = everything.stdout.splitlines()
    assert len(printed) == 4
    assert all(f"builds.{org}." in line for line in printed)
    assert '"type":"build.requested.v1"' in printed[0]


def test_events_without_history_exits_at_once(stack: Stack) -> None:
    env = operator_env(stack, "events")
    for args in (["--no-follow"], ["--live", "--no-follow"]):
        result = bmms("events", "--org", f"o{uuid.uuid4().hex[:10]}", *args, env=env)
        assert result.returncode == 0, result.stderr
        assert result.stdout == ""


def test_events_refuses_an_org_that_is_not_a_subject_token(stack: Stack) -> None:
    result = bmms("events", "--org", "a.>", "--no-follow", env=operator_env(stack, "events"))
    assert result.returncode != 0
    assert "cannot be a subject token" in result.stderr


async def test_apikey_create_prints_a_key_that_authenticates(stack: Stack, admin_nc: Client) -> None:
    async with running(create_actor("auth"), stack.settings("auth")):
        org = f"acme-{uuid.uuid4().hex[:6]}"
        env = operator_env(stack, "admin")
        returncode, stdout, stderr = await bmms_async("apikey", "create", "--org", org, env=env)
        assert returncode == 0, stderr
        key = stdout.strip()
        assert key and "\n" not in key
        principal = await call(admin_nc, AUTHENTICATE, Authenticate(token=key), timeout=5)
        assert isinstance(principal, Principal)
        assert principal.org_id in stderr


def test_schema_writes_the_committed_contract_snapshot(tmp_path: Path) -> None:
    out = tmp_path / "contract.schema.json"
    result = bmms("schema", "--format", "jsonschema", "--out", str(out), env=dict(os.environ))
    assert result.returncode == 0, result.stderr
    assert out.read_text() == CONTRACT_SNAPSHOT.read_text()


@pytest.mark.parametrize("suffix", [".json", ".yaml"])
def test_schema_writes_asyncapi_as_json_or_yaml(tmp_path: Path, suffix: str) -> None:
    import yaml

    out = tmp_path / f"asyncapi{suffix}"
    result = bmms("schema", "--out", str(out), env=dict(os.environ))
    assert result.returncode == 0, result.stderr
    document = yaml.safe_load(out.read_text())
    assert document["asyncapi"] == "3.0.0"
    assert "builds.{org}.{build}.{kind}" in {c["address"] for c in document["channels"].values()}


async def test_events_follows_new_events_until_interrupted(stack: Stack, admin_nc: Client) -> None:
    org = f"o{uuid.uuid4().hex[:10]}"
    await _publish_history(admin_nc, org, "b1")
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "ops.cli", "events", "--org", org, "--json", env=operator_env(stack, "events"),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    assert process.stdout is not None
    try:
        history = [json.loads(await asyncio.wait_for(process.stdout.readline(), 30)) for _ in range(2)]
        assert [line["event"]["build_id"] for line in history] == ["b1", "b1"]

        await _publish_history(admin_nc, org, "b2")  # published while the tail follows
        live = [json.loads(await asyncio.wait_for(process.stdout.readline(), 30)) for _ in range(2)]
        expected = [build_subject(org, "b2", "requested"), build_subject(org, "b2", "log")]
        assert [line["subject"] for line in live] == expected
    except TimeoutError:
        process.kill()
        assert process.stderr is not None
        raise AssertionError((await process.stderr.read()).decode()) from None
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGINT)
        returncode = await asyncio.wait_for(process.wait(), 30)
    assert returncode == 0
