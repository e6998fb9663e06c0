"""Real Docker for the backend tests: the Engine on this machine, the runner images built once per session
(the base image by debootstrap when it is missing: ~100 s), artifacts rendered from tool specs by the real
planner and codegen, and a nats-server listening where containers reach it."""

from __future__ import annotations

import asyncio
import hashlib
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiodocker
import httpx
import msgspec
import pytest
from aiodocker.exceptions import DockerError

from actors.codegen.artifacts import build_artifact
from actors.deployer.backends.base import RUNNER_PORT, Limits, RunnerSpec
from actors.planner.planning import plan_hash
from actors.planner.problems import PlanNotes
from actors.planner.tool_spec import plan_tool_spec
from actors.runtime.runner_images import RunnerImageError, RunnerImages, RunnerImageSettings
from bus_schemas.builds import FunctionBody, ToolParameter, ToolSpec, ToolSpecSource
from bus_schemas.plans import Artifact, canonical_artifact_bytes
from ops.infra import NATS_ROLES, NatsServer, free_port, new_nats_password, start_nats
from runner_template.settings import RunnerSettings


def no_docker(reason: str) -> None:
    """Skip locally; under CI=true a missing Docker is a failure (CI installs and starts it)."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI needs Docker Engine: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
async def docker() -> AsyncIterator[aiodocker.Docker]:
    try:
        client = aiodocker.Docker()
    except ValueError as exc:
        no_docker(f"no Docker Engine: {exc}")
    try:
        await client.version()
    except (DockerError, OSError) as exc:
        await client.close()
        no_docker(f"Docker Engine does not answer: {exc}")
    yield client
    await client.close()


@pytest.fixture(scope="session")
async def runner_images(docker: aiodocker.Docker) -> RunnerImages:
    """The runner images, built now when missing (CI builds the base before pytest)."""
    images = RunnerImages(RunnerImageSettings.from_environment(os.environ))
    try:
        await asyncio.wait_for(images.runtime_image(docker), timeout=600)
    except RunnerImageError as exc:
        no_docker(f"cannot build the runner images: {exc}")
    return images


@dataclass(frozen=True)
class Rendered:
    """An artifact as the deployer gets it."""

    artifact_hash: str
    artifact_json: bytes


def tool(name: str, body: str, *params: str, description: str = "A tool.") -> ToolSpec:
    return ToolSpec(
        name=name, description=description,
        parameters=tuple(ToolParameter(name=p, type="integer") for p in params),
        implementation=FunctionBody(body=body),
    )


def render(*tools: ToolSpec, server_name: str = "calc", module_suffix: str = "") -> Rendered:
    """A tool spec planned and rendered exactly as the pipeline does; `module_suffix` is appended to the
    generated module (what a hostile module the checker missed would do at import time)."""
    plan = plan_tool_spec(ToolSpecSource(tools=tools), server_name, PlanNotes())
    artifact = build_artifact(plan, plan_hash(plan))
    if module_suffix:
        artifact = msgspec.structs.replace(artifact, module_source=artifact.module_source + module_suffix)
    data = canonical_artifact_bytes(artifact)
    msgspec.json.decode(data, type=Artifact)
    return Rendered(hashlib.sha256(data).hexdigest(), data)


CALCULATOR = render(tool("add", "return a + b", "a", "b", description="Add two integers."))


def spec_for(server_id: str, rendered: Rendered, *, version: int = 1, secrets: dict[str, str] | None = None,
             limits: Limits | None = None, **settings: Any) -> RunnerSpec:
    """A spec of `rendered` with these runner `settings`; the runner serves without tokens (the subject of these
    tests is the backend, not the Resource Server)."""
    return RunnerSpec(
        server_id=server_id, org_id="org-test", version=version, artifact_hash=rendered.artifact_hash,
        artifact_json=rendered.artifact_json,
        settings=RunnerSettings(**{"artifact": "", "insecure_no_auth": True, "server_id": server_id, **settings}),
        secrets=secrets or {}, limits=limits or Limits(),
    )


BROKEN = render(tool("add", "return a + b", "a", "b"), server_name="broken",
                module_suffix="\nraise RuntimeError('broken on purpose')\n")
MULTIPLY = render(tool("multiply", "return a * b", "a", "b", description="Multiply two integers."),
                  server_name="calc2")


async def call_tool(upstream: str, name: str, arguments: dict[str, object]) -> dict[str, Any]:
    """A `tools/call` on the runner's MCP endpoint (stateless Streamable HTTP, JSON responses)."""
    request = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": name, "arguments": arguments}}
    async with httpx.AsyncClient(timeout=60) as client:
        response = await client.post(f"{upstream}/mcp", json=request,
                                     headers={"accept": "application/json, text/event-stream"})
    response.raise_for_status()
    result: dict[str, Any] = response.json()["result"]
    return result


def new_server_id() -> str:
    return "t" + uuid.uuid4().hex[:12]


@pytest.fixture
def server_id() -> str:
    return new_server_id()


@pytest.fixture(scope="session")
def host_bus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    """A nats-server with nats.conf on all addresses: containers reach it through the bridge gateway (a bus on
    127.0.0.1 only is unreachable from a container)."""
    passwords = {role: new_nats_password() for role in NATS_ROLES}
    server = start_nats(Path(tmp_path_factory.mktemp("host-bus")), passwords, host="0.0.0.0")
    yield server
    server.stop()


async def exec_in(docker: aiodocker.Docker, container_id: str, *argv: str) -> tuple[int, str]:
    """Run a command in a running container as its own user; (exit code, stdout+stderr)."""
    container = docker.containers.container(container_id)
    execution = await container.exec(list(argv))
    output = b""
    async with execution.start(detach=False) as stream:
        while (message := await stream.read_out()) is not None:
            output += message.data
    info = await execution.inspect()
    return int(info["ExitCode"]), output.decode(errors="replace")


@pytest.fixture(scope="session")
async def swarm(docker: aiodocker.Docker) -> AsyncIterator[None]:
    """A swarm this Engine manages; created (on 127.0.0.1) only if there is none, and then left at the end."""
    state = (await docker.system.info())["Swarm"]["LocalNodeState"]
    created = False
    if state == "inactive":
        await docker.swarm.init(advertise_addr="127.0.0.1", listen_addr=f"127.0.0.1:{free_port('127.0.0.1')}")
        created = True
    elif state != "active":
        pytest.skip(f"this Engine's swarm is {state}")
    yield
    if created:
        await docker.swarm.leave(force=True)



__all__ = ["BROKEN", "CALCULATOR", "MULTIPLY", "RUNNER_PORT", "Rendered", "call_tool", "exec_in", "new_server_id",
           "render", "spec_for", "swarm", "tool"]
