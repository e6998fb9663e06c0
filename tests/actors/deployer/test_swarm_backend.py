"""The Swarm backend on a real single-node swarm (initialised here when this Engine is in none, and left
again afterwards): a service per server, hardened as far as API 1.41 allows, rolling start-first updates that
Swarm rolls back when the new version fails, explicit rollback, and removal."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import aiodocker
import pytest
from aiodocker.exceptions import DockerError

from actors.deployer.backends.base import LABEL_ARTIFACT, LABEL_SERVER, LABEL_VERSION, BackendError, Limits
from actors.deployer.backends.swarm import SwarmBackend
from actors.runtime.runner_images import RunnerImages, server_image_ref
from tests.actors.deployer.conftest import BROKEN, CALCULATOR, MULTIPLY, call_tool, exec_in, render, spec_for, tool


@pytest.fixture
async def backend(swarm: None, runner_images: RunnerImages) -> AsyncIterator[SwarmBackend]:
    backend = SwarmBackend(runner_images, ready_timeout=180)
    yield backend
    for runner in await backend.running():
        if runner.server_id.startswith("t"):
            await backend.remove(runner.server_id, ())
    await backend.close()


async def task_containers(docker: aiodocker.Docker, server_id: str) -> list[dict[str, object]]:
    listed = await docker.containers.list(filters=json.dumps({"label": [f"{LABEL_SERVER}={server_id}"]}))
    return [await docker.containers.container(c.id).show() for c in listed]


async def test_service_runs_hardened_and_answers_mcp(backend: SwarmBackend, docker: aiodocker.Docker,
                                                     server_id: str) -> None:
    limits = Limits(memory_bytes=200 * 1024 * 1024, cpus=0.25, pids=48)
    runner = await backend.run(spec_for(server_id, CALCULATOR, limits=limits))
    result = await call_tool(runner.upstream, "add", {"a": 40, "b": 2})
    assert result["content"] == [{"type": "text", "text": "42"}]
    service = await docker.services.inspect(runner.ref)
    spec = service["Spec"]
    assert spec["UpdateConfig"]["Order"] == "start-first" and spec["UpdateConfig"]["FailureAction"] == "rollback"
    assert spec["Labels"][LABEL_ARTIFACT] == CALCULATOR.artifact_hash
    info = max(await task_containers(docker, server_id), key=lambda c: str(c["Created"]))
    host = info["HostConfig"]
    assert host["ReadonlyRootfs"] is True
    assert host["CapDrop"] == ["ALL"]
    assert (host["PidsLimit"], host["Memory"], host["NanoCpus"]) == (48, 200 * 1024 * 1024, 250_000_000)
    assert info["Config"]["User"] == "10001:10001"
    assert "docker.sock" not in json.dumps(info)
    assert [m["Type"] for m in info["Mounts"]] == ["tmpfs"]
    code, out = await exec_in(docker, info["Id"], "sh", "-c", "id -u; grep ' /tmp ' /proc/mounts; "
                              "test -e /var/run/docker.sock && echo socket; touch /planted || true")
    assert code == 0
    assert out.splitlines()[0] == "10001"
    assert {"nosuid", "nodev", "noexec"} <= set(out.splitlines()[1].split()[3].split(","))
    assert "socket" not in out and "Read-only file system" in out
    # What API 1.41 cannot ask for: the flag is absent on the task container (see the module docstring).
    assert "no-new-privileges:true" not in (host.get("SecurityOpt") or [])


async def test_the_worker_service_is_hardened_and_on_its_servers_internal_network_alone(
    backend: SwarmBackend, docker: aiodocker.Docker, server_id: str
) -> None:
    limits = Limits(memory_bytes=200 * 1024 * 1024, cpus=0.25, pids=48)
    runner = await backend.run(spec_for(server_id, CALCULATOR, limits=limits))
    worker = await docker.services.inspect(backend.worker_service_name(server_id))
    front = await docker.services.inspect(runner.ref)
    internal = await (await docker.networks.get(backend.network_name(server_id))).show()
    assert internal["Internal"] is True and internal["Driver"] == "overlay"
    assert [n["Target"] for n in worker["Spec"]["TaskTemplate"]["Networks"]] == [internal["Id"]]
    assert internal["Id"] in [n["Target"] for n in front["Spec"]["TaskTemplate"]["Networks"]]
    assert not (worker.get("Endpoint") or {}).get("Ports")
    spec = worker["Spec"]["TaskTemplate"]["ContainerSpec"]
    assert (spec["ReadOnly"], spec["CapabilityDrop"], spec["User"], spec["Init"]) == (True, ["ALL"], "10001:10001",
                                                                                      True)
    assert not any(e.startswith(("BMMS_SECRET_", "BMMS_RUNNER_NATS")) for e in spec.get("Env") or [])
    assert worker["Spec"]["TaskTemplate"]["Resources"]["Limits"]["Pids"] == 48
    await backend.remove(server_id, ())
    with pytest.raises(DockerError):
        await docker.networks.get(backend.network_name(server_id))


async def test_new_version_rolls_out_and_a_failing_one_is_rolled_back(
    backend: SwarmBackend, docker: aiodocker.Docker, server_id: str
) -> None:
    first = await backend.run(spec_for(server_id, CALCULATOR))
    index = (await docker.services.inspect(first.ref))["Version"]["Index"]
    again = await backend.run(spec_for(server_id, CALCULATOR))
    # The same spec again changes nothing (no update); in host mode the upstream is the task's port.
    assert (again.ref, again.version, again.artifact_hash) == (first.ref, 1, CALCULATOR.artifact_hash)
    assert (await docker.services.inspect(first.ref))["Version"]["Index"] == index
    second = await backend.run(spec_for(server_id, MULTIPLY, version=2))
    assert second.version == 2 and second.ref == first.ref  # the same service, rolled forward
    assert (await call_tool(second.upstream, "multiply", {"a": 6, "b": 7}))["content"] == [
        {"type": "text", "text": "42"}]
    with pytest.raises(BackendError, match="rolled back"):
        await backend.run(spec_for(server_id, BROKEN, version=3))
    [runner] = [r for r in await backend.running() if r.server_id == server_id]
    assert runner.version == 2
    assert (await call_tool(runner.upstream, "multiply", {"a": 2, "b": 3}))["content"] == [
        {"type": "text", "text": "6"}]


async def test_rollback_returns_to_the_previous_version(backend: SwarmBackend, server_id: str) -> None:
    await backend.run(spec_for(server_id, CALCULATOR))
    await backend.run(spec_for(server_id, MULTIPLY, version=2))
    back = await backend.rollback(server_id)
    assert back.version == 1
    assert (await call_tool(back.upstream, "add", {"a": 1, "b": 2}))["content"] == [{"type": "text", "text": "3"}]


async def test_stop_remove_and_reconcile(backend: SwarmBackend, docker: aiodocker.Docker,
                                         runner_images: RunnerImages, server_id: str) -> None:
    only = render(tool("subtract", "return a - b", "a", "b"), server_name="swarm-only")
    started = await backend.run(spec_for(server_id, only))
    fresh = SwarmBackend(runner_images)
    try:
        assert [r for r in await fresh.running() if r.server_id == server_id] == [started]
    finally:
        await fresh.close()
    assert any("runner listening" in line for line in await backend.logs(server_id, 100))
    await backend.stop(server_id)
    assert server_id not in {r.server_id for r in await backend.running()}
    await backend.remove(server_id, (only.artifact_hash,))
    assert await task_containers(docker, server_id) == []
    with pytest.raises(DockerError) as missing:
        await docker.images.inspect(server_image_ref(only.artifact_hash))
    assert missing.value.status == 404
    assert LABEL_VERSION
