"""The process backend on this machine: runners forked from the fork server, limited, found again after a
restart, replaced without a gap, stopped and removed; no credential readable from /proc."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from actors.deployer.backends.process import ProcessBackend
from tests.actors.deployer.conftest import CALCULATOR, render, spec_for, tool


@pytest.fixture
async def backend(tmp_path: Path) -> AsyncIterator[ProcessBackend]:
    found = ProcessBackend(tmp_path / "runners")
    yield found
    for runner in await found.running():
        await found.remove(runner.server_id, ())
    await found.close()


async def healthz(upstream: str) -> dict[str, object]:
    async with httpx.AsyncClient(timeout=10) as http:
        answer = await http.get(f"{upstream}/healthz")
    assert answer.status_code == 200, answer.text
    body: dict[str, object] = answer.json()
    return body


async def test_a_runner_is_limited_and_its_secrets_are_not_in_proc(backend: ProcessBackend, server_id: str) -> None:
    spec = spec_for(server_id, CALCULATOR, secrets={"API_KEY": "s3cr3t-value"})
    runner = await backend.run(spec)
    assert (await healthz(runner.upstream))["tools"] == ["add"]
    pid = int(runner.ref)
    assert b"s3cr3t-value" not in Path(f"/proc/{pid}/environ").read_bytes()
    limits = Path(f"/proc/{pid}/limits").read_text()
    assert "Max core file size        0" in limits
    assert os.getpgid(pid) == pid  # its own session and group: stopping it takes everything it started


async def test_run_is_idempotent_replaces_versions_and_survives_a_new_backend(
    backend: ProcessBackend, server_id: str, tmp_path: Path
) -> None:
    first = await backend.run(spec_for(server_id, CALCULATOR))
    again = await backend.run(spec_for(server_id, CALCULATOR))
    assert again.ref == first.ref and [r.ref for r in await backend.running()] == [first.ref]
    v2 = render(tool("add", "return a + b", "a", "b"), tool("sub", "return a - b", "a", "b"))
    second = await backend.run(spec_for(server_id, v2, version=2))
    assert second.ref != first.ref and (await healthz(second.upstream))["tools"] == ["add", "sub"]
    with pytest.raises(ProcessLookupError):
        os.kill(int(first.ref), 0)
    # A deployer restart: a new backend on the same directory finds the runner by its files alone.
    restarted = ProcessBackend(tmp_path / "runners")
    (found,) = await restarted.running()
    assert (found.server_id, found.version, found.ref) == (server_id, 2, second.ref)
    assert any("runner listening" in line or '"msg"' in line for line in await restarted.logs(server_id, 50))
    await restarted.remove(server_id, ())
    assert await restarted.running() == [] and not (tmp_path / "runners" / server_id).exists()
    await restarted.close()


async def test_a_runner_that_cannot_start_is_reported_and_the_old_one_keeps_serving(
    backend: ProcessBackend, server_id: str
) -> None:
    first = await backend.run(spec_for(server_id, CALCULATOR))
    broken = render(tool("add", "return a + b", "a", "b"), module_suffix="\nraise SystemExit('boom')\n")
    with pytest.raises(Exception, match="exited before it listened"):
        await backend.run(spec_for(server_id, broken, version=2))
    (still,) = await backend.running()
    assert still.ref == first.ref and (await healthz(still.upstream))["tools"] == ["add"]


async def test_the_same_version_with_another_environment_is_replaced(backend: ProcessBackend, server_id: str) -> None:
    """A changed secret is a changed environment: the runner restarts with it, an unchanged one does not."""
    first = await backend.run(spec_for(server_id, CALCULATOR, secrets={"API_KEY": "one"}))
    same = await backend.run(spec_for(server_id, CALCULATOR, secrets={"API_KEY": "one"}))
    assert same.ref == first.ref
    rotated = await backend.run(spec_for(server_id, CALCULATOR, secrets={"API_KEY": "two"}))
    assert rotated.ref != first.ref and (await healthz(rotated.upstream))["tools"] == ["add"]
    with pytest.raises(ProcessLookupError):
        os.kill(int(first.ref), 0)
    assert [r.ref for r in await backend.running()] == [rotated.ref]
