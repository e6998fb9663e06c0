"""The Docker backend on the real Engine: runners answer MCP on their upstream, are hardened (checked from the
outside by inspecting, and from the inside by a hostile generated module), replace each other only once the
new one answers, and are found again by a fresh backend."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import aiodocker
import pytest
from aiodocker.exceptions import DockerError

from actors.deployer.backends.base import LABEL_ARTIFACT, LABEL_SERVER, LABEL_VERSION, BackendError, Limits
from actors.deployer.backends.docker import (
    CHANNEL_DIR,
    HOST_ALIAS,
    ICC_OPTION,
    LABEL_PATH_PREFIX,
    LABEL_ROLE,
    NETWORK,
    DockerBackend,
)
from actors.runtime.runner_images import RunnerImages, server_image_ref
from ops.infra import NatsServer
from tests.actors.deployer.conftest import BROKEN, CALCULATOR, MULTIPLY, call_tool, exec_in, render, spec_for, tool

PROBE = '''

def _bmms_probe() -> None:
    import json
    import os
    import socket
    import subprocess
    import sys
    report: dict[str, object] = {"uid": os.getuid(), "gid": os.getgid(),
                                 "docker_sock": os.path.exists("/var/run/docker.sock"),
                                 "interfaces": sorted(os.listdir("/sys/class/net"))}
    try:
        socket.create_connection(("1.1.1.1", 53), timeout=2).close()
        report["network"] = True
    except OSError:
        report["network"] = False
    try:
        with open("/probe-on-root", "w"):
            pass
        report["root_writable"] = True
    except OSError:
        report["root_writable"] = False
    with open("/tmp/probe.sh", "w") as script:
        script.write("#!/bin/sh\\nexit 0\\n")
    os.chmod("/tmp/probe.sh", 0o755)
    try:
        subprocess.run(["/tmp/probe.sh"], check=True)
        report["tmp_exec"] = True
    except OSError:
        report["tmp_exec"] = False
    with open("/proc/self/status") as status:
        fields = dict(line.split(":", 1) for line in status.read().splitlines() if ":" in line)
    report["cap_eff"] = fields["CapEff"].strip()
    report["cap_bnd"] = fields["CapBnd"].strip()
    report["no_new_privs"] = fields["NoNewPrivs"].strip()
    with open("/proc/self/mountinfo") as mounts:
        report["mounts_docker_sock"] = "docker.sock" in mounts.read()
    print("PROBE " + json.dumps(report), file=sys.stderr, flush=True)


_bmms_probe()
'''

HOSTILE = render(tool("add", "return a + b", "a", "b"), server_name="hostile", module_suffix=PROBE)
@pytest.fixture
async def backend(runner_images: RunnerImages) -> AsyncIterator[DockerBackend]:
    """A backend whose servers are removed (containers and images) after the test."""
    backend = DockerBackend(runner_images)
    yield backend
    for runner in await backend.running():
        if runner.server_id.startswith("t"):
            await backend.remove(runner.server_id, ())
    await backend.close()


async def containers_of(docker: aiodocker.Docker, server_id: str, role: str = "front") -> list[dict[str, object]]:
    """The server's containers of `role` (front or worker)."""
    filters = {"label": [f"{LABEL_SERVER}={server_id}", f"{LABEL_ROLE}={role}"]}
    listed = await docker.containers.list(all=True, filters=json.dumps(filters))
    return [await docker.containers.container(c.id).show() for c in listed]


def assert_hardened(info: dict[str, Any], limits: Limits) -> None:
    """What both containers of a server are: read-only, unprivileged, limited, with no host mount."""
    host = info["HostConfig"]
    assert host["ReadonlyRootfs"] is True
    assert host["CapDrop"] == ["ALL"]
    assert not host.get("CapAdd")
    assert host["Privileged"] is False
    assert "no-new-privileges:true" in host["SecurityOpt"]
    assert (host["PidsLimit"], host["Memory"], host["NanoCpus"]) == (limits.pids, limits.memory_bytes,
                                                                     int(limits.cpus * 1e9))
    assert host["MemorySwap"] == host["Memory"]
    assert set(host["Tmpfs"]) == {"/tmp"}
    assert {"noexec", "nosuid", "nodev"} <= set(host["Tmpfs"]["/tmp"].split(","))
    assert [(m["Type"], m["Destination"]) for m in info["Mounts"]] == [("volume", CHANNEL_DIR)]
    assert not host.get("Binds")
    assert "docker.sock" not in json.dumps(info)
    assert info["Config"]["User"] == "10001:10001"
    assert host["RestartPolicy"]["Name"] == "unless-stopped"


async def test_runner_answers_mcp_on_its_upstream(backend: DockerBackend, server_id: str) -> None:
    runner = await backend.run(spec_for(server_id, CALCULATOR))
    assert runner.upstream.startswith("http://127.0.0.1:")
    assert (runner.server_id, runner.version, runner.artifact_hash) == (server_id, 1, CALCULATOR.artifact_hash)
    result = await call_tool(runner.upstream, "add", {"a": 2, "b": 40})
    assert result["content"] == [{"type": "text", "text": "42"}]
    assert any(line.startswith("runner listening on http://0.0.0.0:8000/mcp") for line in
               await backend.logs(server_id, 50))


async def test_containers_are_hardened_and_the_worker_has_no_network(backend: DockerBackend,
                                                                     docker: aiodocker.Docker, server_id: str) -> None:
    limits = Limits(memory_bytes=200 * 1024 * 1024, cpus=0.25, pids=48)
    runner = await backend.run(spec_for(server_id, CALCULATOR, limits=limits))
    info = await docker.containers.container(runner.ref).show()
    (worker,) = await containers_of(docker, server_id, "worker")
    assert_hardened(info, limits)
    assert_hardened(worker, limits)
    assert info["Mounts"][0]["Name"] == worker["Mounts"][0]["Name"]  # the channel: one volume, shared
    host = info["HostConfig"]
    assert host["NetworkMode"] == NETWORK
    assert host["PortBindings"]["8000/tcp"] == [{"HostIp": "127.0.0.1", "HostPort": ""}]
    assert worker["HostConfig"]["NetworkMode"] == "none" and worker["HostConfig"]["Init"] is True
    assert not worker["HostConfig"].get("PortBindings") and not worker["HostConfig"].get("ExtraHosts")
    assert not any(e.startswith(("BMMS_SECRET_", "BMMS_RUNNER_NATS")) for e in worker["Config"]["Env"] or [])
    labels = info["Config"]["Labels"]
    assert labels[LABEL_SERVER] == server_id and labels[LABEL_VERSION] == "1"
    assert labels[LABEL_ARTIFACT] == CALCULATOR.artifact_hash
    assert labels[LABEL_PATH_PREFIX] == f"/servers/{server_id}"
    assert labels[f"traefik.http.middlewares.bmms-{server_id}-strip.stripprefix.prefixes"] == f"/servers/{server_id}"
    network = await (await docker.networks.get(NETWORK)).show()
    assert network["Options"][ICC_OPTION] == "false"


async def test_hostile_module_finds_no_docker_socket_no_writable_root_and_runs_as_10001(
    backend: DockerBackend, server_id: str
) -> None:
    await backend.run(spec_for(server_id, HOSTILE))
    # the module runs in the worker container, whose lines the logs give after the front's
    lines = [line.removeprefix("worker: ") for line in await backend.logs(server_id, 200)
             if line.startswith("worker: PROBE ")]
    assert lines, "the module's probe did not run"
    report = json.loads(lines[-1].removeprefix("PROBE "))
    assert (report["uid"], report["gid"]) == (10001, 10001)
    assert report["docker_sock"] is False and report["mounts_docker_sock"] is False
    assert report["root_writable"] is False
    assert report["tmp_exec"] is False
    assert report["cap_eff"] == report["cap_bnd"] == "0000000000000000"
    assert report["no_new_privs"] == "1"
    assert report["network"] is False and report["interfaces"] == ["lo"]


async def test_exec_in_runner_container_sees_no_socket_and_read_only_root(
    backend: DockerBackend, docker: aiodocker.Docker, server_id: str
) -> None:
    runner = await backend.run(spec_for(server_id, CALCULATOR))
    code, out = await exec_in(docker, runner.ref, "id", "-u")
    assert (code, out.strip()) == (0, "10001")
    code, _ = await exec_in(docker, runner.ref, "test", "-e", "/var/run/docker.sock")
    assert code == 1
    code, out = await exec_in(docker, runner.ref, "touch", "/opt/bmms/app/planted")
    assert code != 0 and "Read-only file system" in out
    (worker,) = await containers_of(docker, server_id, "worker")
    code, out = await exec_in(docker, worker["Id"], "id", "-u")
    assert (code, out.strip()) == (0, "10001")


async def test_same_spec_twice_leaves_one_container(backend: DockerBackend, docker: aiodocker.Docker,
                                                    server_id: str) -> None:
    first = await backend.run(spec_for(server_id, CALCULATOR))
    second = await backend.run(spec_for(server_id, CALCULATOR))
    assert second == first
    assert [c["Id"] for c in await containers_of(docker, server_id)] == [first.ref]


async def test_new_version_replaces_the_old_one(backend: DockerBackend, docker: aiodocker.Docker,
                                                server_id: str) -> None:
    old = await backend.run(spec_for(server_id, CALCULATOR))
    new = await backend.run(spec_for(server_id, MULTIPLY, version=2))
    assert new.ref != old.ref and new.version == 2
    remaining = await containers_of(docker, server_id)
    assert [c["Id"] for c in remaining] == [new.ref]
    result = await call_tool(new.upstream, "multiply", {"a": 6, "b": 7})
    assert result["content"] == [{"type": "text", "text": "42"}]


async def test_version_that_does_not_start_leaves_the_old_one_serving(
    backend: DockerBackend, docker: aiodocker.Docker, server_id: str
) -> None:
    old = await backend.run(spec_for(server_id, CALCULATOR))
    with pytest.raises(BackendError, match="broken on purpose"):
        await backend.run(spec_for(server_id, BROKEN, version=2))
    assert [c["Id"] for c in await containers_of(docker, server_id)] == [old.ref]
    assert [r for r in await backend.running() if r.server_id == server_id] == [old]
    result = await call_tool(old.upstream, "add", {"a": 1, "b": 1})
    assert result["content"] == [{"type": "text", "text": "2"}]


async def test_remove_leaves_no_container_and_no_server_image(backend: DockerBackend, docker: aiodocker.Docker,
                                                              server_id: str) -> None:
    await backend.run(spec_for(server_id, MULTIPLY))
    await backend.run(spec_for(server_id, CALCULATOR, version=2))
    await backend.remove(server_id, (MULTIPLY.artifact_hash, CALCULATOR.artifact_hash))
    assert await containers_of(docker, server_id) == await containers_of(docker, server_id, "worker") == []
    filters = json.dumps({"label": [f"{LABEL_SERVER}={server_id}"]})
    volumes = await docker._query_json("volumes", params={"filters": filters})
    assert not volumes.get("Volumes")
    for rendered in (MULTIPLY, CALCULATOR):
        with pytest.raises(DockerError) as missing:
            await docker.images.inspect(server_image_ref(rendered.artifact_hash))
        assert missing.value.status == 404
    assert server_id not in {r.server_id for r in await backend.running()}


async def test_stopped_runner_is_not_running_and_starts_again(backend: DockerBackend, server_id: str) -> None:
    await backend.run(spec_for(server_id, CALCULATOR))
    await backend.stop(server_id)
    assert server_id not in {r.server_id for r in await backend.running()}
    again = await backend.run(spec_for(server_id, CALCULATOR))
    result = await call_tool(again.upstream, "add", {"a": 20, "b": 22})
    assert result["content"] == [{"type": "text", "text": "42"}]


async def test_fresh_backend_finds_the_running_runner(backend: DockerBackend, runner_images: RunnerImages,
                                                      server_id: str) -> None:
    started = await backend.run(spec_for(server_id, CALCULATOR, version=3))
    fresh = DockerBackend(runner_images)
    try:
        found = [r for r in await fresh.running() if r.server_id == server_id]
    finally:
        await fresh.close()
    assert found == [started]


async def test_runner_reaches_the_bus_on_the_host(backend: DockerBackend, docker: aiodocker.Docker,
                                                  host_bus: NatsServer, server_id: str) -> None:
    runner = await backend.run(spec_for(server_id, CALCULATOR, nats_url=f"nats://127.0.0.1:{host_bus.port}",
                                        org_id="org-test",
                                        nats_password=host_bus.passwords["runner"]))
    info = await docker.containers.container(runner.ref).show()
    assert f"BMMS_RUNNER_NATS_URL=nats://{HOST_ALIAS}:{host_bus.port}" in info["Config"]["Env"]
    assert info["HostConfig"]["ExtraHosts"] == [f"{HOST_ALIAS}:host-gateway"]
    code, out = await exec_in(docker, runner.ref, "python3", "-c", (
        "import socket\n"
        f"with socket.create_connection(({HOST_ALIAS!r}, {host_bus.port}), timeout=5) as s:\n"
        "    print(s.recv(4096).decode())\n"
    ))
    assert code == 0, out
    assert out.startswith("INFO {"), out
