"""`python -m runner_template` as the deployer starts it: exactly the deployer's environment, the JWKS and
usage over the real bus, the generated module in a sandboxed worker whose environment holds nothing of the
front's (no setting, no credential), the secret reaching upstream through the front, JSON logs without
tokens; and no start at all without the Resource Server settings."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import uuid
from pathlib import Path
from typing import Any

import msgspec

from bus_schemas.plans import Artifact
from runner_template import RUNNER_TEMPLATE_VERSION
from tests.runner_template.conftest import (
    ISSUER,
    SECRET_VALUE,
    RecordingUpstream,
    mcp_client,
    resource_for,
    serving,
    token,
)

MODULE = '''"""A module that looks at its own process."""

import os

from runner_template import sdk, upstream


@sdk.tool(name="environment", title="Environment", read_only=True)
def environment() -> str:
    """Every NAME=value this process's environment holds, one a line."""
    return "\\n".join(f"{name}={value}" for name, value in sorted(os.environ.items()))


@sdk.tool(name="whoami", title="Who am I upstream", read_only=True, open_world=True)
async def whoami() -> object:
    """Ask the upstream API who we are."""
    return await upstream.request("GET", "UPSTREAM/users/{id}", path={"id": "me"},
                                  auth=upstream.Auth(kind="query", name="key", secret="EXAMPLE_TOKEN"))
'''


def artifact_file(tmp_path: Path, upstream_url: str) -> Path:
    artifact = Artifact(
        plan_hash="0" * 64, template_version=RUNNER_TEMPLATE_VERSION, module_name="introspective",
        module_source=MODULE.replace("UPSTREAM", upstream_url), tools=("environment", "whoami"),
        secrets=("EXAMPLE_TOKEN",), upstream_hosts=(upstream_url.split("//", 1)[1],),
    )
    path = tmp_path / "artifact.json"
    path.write_bytes(msgspec.json.encode(artifact))
    return path


async def start(env: dict[str, str], log_path: Path) -> tuple[asyncio.subprocess.Process, str]:
    """The runner process and its MCP URL (from its ready line)."""
    with log_path.open("wb") as log:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "runner_template", env=env, stdout=asyncio.subprocess.PIPE, stderr=log,
        )
    assert proc.stdout is not None
    line = (await asyncio.wait_for(proc.stdout.readline(), timeout=30)).decode().strip()
    assert line.startswith("runner listening on http://127.0.0.1:"), (line, log_path.read_text())
    return proc, line.rsplit(" ", 1)[1]


async def test_the_deployers_environment_serves_and_the_secrets_are_gone_from_it(
        stack: Any, jwks: Any, tmp_path: Path) -> None:
    api = RecordingUpstream()
    sid = "p" + uuid.uuid4().hex[:12]
    password = stack.nats.passwords["runner"]
    async with serving(api.app()) as upstream_url:
        env = {
            "PATH": os.environ["PATH"], "PYTHONPATH": str(Path(__file__).resolve().parents[2]),
            "BMMS_RUNNER_ARTIFACT": str(artifact_file(tmp_path, upstream_url)),
            "BMMS_RUNNER_HOST": "127.0.0.1", "BMMS_RUNNER_PORT": "0",
            "BMMS_RUNNER_SERVER_ID": sid, "BMMS_RUNNER_ORG_ID": f"org-{sid}",
            "BMMS_RUNNER_RESOURCE": resource_for(sid), "BMMS_RUNNER_ISSUER": ISSUER,
            "BMMS_RUNNER_ALLOWED_ORIGINS": "https://app.example.test", "BMMS_RUNNER_ALLOW_PRIVATE_UPSTREAMS": "1",
            "BMMS_RUNNER_NATS_URL": stack.nats.url, "BMMS_RUNNER_NATS_USER": "runner",
            "BMMS_RUNNER_NATS_PASSWORD": password,
            "BMMS_SECRET_EXAMPLE_TOKEN": SECRET_VALUE,
        }
        proc, url = await start(env, tmp_path / "runner.log")
        bearer = token(resource_for(sid))
        try:
            async with mcp_client(url, bearer) as client:
                seen = await client.call_tool("environment", {})
                upstream_answer = await client.call_tool("whoami", {})
        finally:
            proc.terminate()
            await asyncio.wait_for(proc.wait(), timeout=15)
    assert not seen.is_error, seen
    variables = seen.content[0].text.splitlines()  # type: ignore[union-attr]
    names = {v.split("=", 1)[0] for v in variables}
    assert "PATH" in names  # the probe reads the tool's environment...
    assert not any(n.startswith("BMMS_") for n in names)  # ...which holds nothing of the front's: the worker's
    assert not any(n.startswith("BMMS_SECRET_") or n == "BMMS_RUNNER_NATS_PASSWORD" for n in names)
    assert not any(SECRET_VALUE in v or password in v for v in variables)
    assert not upstream_answer.is_error, upstream_answer  # the secret still reaches upstream, from the policy
    assert api.queries == [{"key": SECRET_VALUE}] and "authorization" not in api.requests[0]
    lines = [json.loads(line) for line in (tmp_path / "runner.log").read_text().splitlines()]  # all JSON
    calls = [line for line in lines if line.get("event") == "tool_call"]
    assert [(c["tool"], c["status"], c["client_id"]) for c in calls] == [
        ("environment", "ok", "client-1"), ("whoami", "ok", "client-1")]
    assert any(line.get("event") == "http" and line["path"] == "/mcp" and line["status"] == 200 for line in lines)
    log_text = (tmp_path / "runner.log").read_text()
    assert bearer not in log_text and bearer.split(".")[2] not in log_text and SECRET_VALUE not in log_text


async def test_the_runner_refuses_to_start_without_its_resource_and_issuer(tmp_path: Path) -> None:
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": str(Path(__file__).resolve().parents[2]),
           "BMMS_RUNNER_ARTIFACT": str(artifact_file(tmp_path, "http://127.0.0.1:9")), "BMMS_RUNNER_PORT": "0"}
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "runner_template", env=env,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), timeout=30)
    assert proc.returncode == 1 and out == b""
    assert b"BMMS_RUNNER_RESOURCE and BMMS_RUNNER_ISSUER must be set" in err
    assert b"BMMS_RUNNER_INSECURE_NO_AUTH=1" in err
