"""The platform stack as an operator runs it (ops/deploy/, README "Operating the platform"): `bmms stack up` on a
single-node swarm builds the images without a registry and deploys NATS x3, PostgreSQL, every actor and the
gateway behind Traefik; a server is built through the proxy and reached there; the deployer and the gateway are
scaled to 2 and the platform keeps building; `bmms stack down` leaves nothing running."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from ops.deploy import stack
from ops.infra import free_port
from tests.actors.deployer.conftest import docker, swarm

__all__ = ["docker", "swarm"]

NAME = "bmmstest"
CALCULATOR = {"name": "calculator", "source": {"kind": "tool_spec", "tools": [{
    "name": "add", "description": "Add two integers.",
    "parameters": [{"name": "a", "type": "integer"}, {"name": "b", "type": "integer"}],
    "implementation": {"kind": "function", "body": "return a + b"}}]}}


def bmms(*args: str, data_dir: Path) -> subprocess.CompletedProcess[str]:
    """The operator's command, as a new process."""
    return subprocess.run([sys.executable, "-m", "ops.cli", *args], capture_output=True, text=True, timeout=900,
                          env={**os.environ, "BMMS_DATA_DIR": str(data_dir)})


@pytest.fixture(scope="module")
def deployed(swarm: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """`bmms stack up` on a free port; `bmms stack down --runners --volumes` after."""
    data_dir = tmp_path_factory.mktemp("stack")
    port = free_port("0.0.0.0")  # Traefik publishes on every address of the node
    up = bmms("stack", "up", "--name", NAME, "--http-port", str(port), "--wait", "600", data_dir=data_dir)
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        yield f"http://127.0.0.1:{port}", data_dir
    finally:
        down = bmms("stack", "down", "--name", NAME, "--runners", "--volumes", data_dir=data_dir)
        assert down.returncode == 0, down.stdout + down.stderr


def wait_for_build(client: httpx.Client, build_id: str, timeout: float = 300) -> dict[str, object]:
    """The build's summary once it is deployed or failed."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        summary: dict[str, object] = client.get(f"/v1/builds/{build_id}").json()
        if summary.get("status") in ("deployed", "failed"):
            return summary
        time.sleep(1)
    raise AssertionError(f"build {build_id} did not end within {timeout} s")


def assert_runner_answers(server_url: str) -> None:
    """The runner's own answer to a call without a token: 401 pointing at its protected resource metadata."""
    unauthenticated = httpx.post(server_url, json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"})
    assert unauthenticated.status_code == 401, unauthenticated.text
    assert "resource_metadata=" in unauthenticated.headers["www-authenticate"]


def running_tasks(service: str) -> int:
    return len(stack.service_tasks(f"{NAME}_{service}"))


@pytest.mark.timeout(1800)
def test_the_stack_builds_serves_scales_and_goes(deployed: tuple[str, Path]) -> None:
    url, data_dir = deployed
    # every service of the stack came up, the bus as three members, each actor and the gateway behind Traefik
    names = {s["Name"].removeprefix(f"{NAME}_") for s in stack.services(NAME)}
    assert {"nats-1", "nats-2", "nats-3", "postgres", "migrate", "auth", "oauth", "planner", "codegen", "checker",
            "deployer", "metering", "gateway", "traefik"} <= names
    # secrets reach services as Docker secrets, not as visible environment
    spec = json.loads(stack.docker("service", "inspect", f"{NAME}_deployer"))[0]["Spec"]["TaskTemplate"]
    assert not [e for e in spec["ContainerSpec"].get("Env", []) if "PASS" in e or "SECRET" in e or "postgresql" in e]
    assert {s["File"]["Name"] for s in spec["ContainerSpec"]["Secrets"]} == {
        "BMMS_NATS_PASS_DEPLOYER", "BMMS_RUNNER_NATS_PASSWORD", "BMMS_DATABASE_URL", "BMMS_SECRET_KEY"}

    created = bmms("stack", "run", "--name", NAME, "--", "apikey", "create", "--org", "acme", data_dir=data_dir)
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip().splitlines()[-1]

    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=30) as client:
        accepted = client.post("/v1/builds", json=CALCULATOR)
        assert accepted.status_code == 202, accepted.text
        summary = wait_for_build(client, accepted.json()["build_id"])
        assert summary["status"] == "deployed", summary
        server_url = str(summary["url"])
        server_path = server_url.removeprefix(url)
        assert server_path.startswith("/servers/")

        # the URL answers at once (the runner's metadata, its 401), through the gateway until Traefik has seen the
        # new service, then through the runner's own Traefik router
        metadata = client.get(f"/.well-known/oauth-protected-resource{server_path}")
        assert metadata.status_code == 200, metadata.text
        assert metadata.json()["resource"] == server_url
        assert_runner_answers(server_url)
        deadline = time.monotonic() + 30
        while f'"bmms-{summary["server_id"]}@swarm"' not in stack.docker("service", "logs", f"{NAME}_traefik"):
            assert time.monotonic() < deadline, "Traefik never routed the server's URL with the runner's router"
            time.sleep(0.5)
            assert_runner_answers(server_url)

        # two deployers and two gateways: the platform keeps building (a redeploy of the same server)
        stack.scale(NAME, {"deployer": 2, "gateway": 2})
        assert running_tasks("deployer") == 2
        assert running_tasks("gateway") == 2
        assert all(client.get("/healthz").status_code == 200 for _ in range(20))
        again = client.post("/v1/builds", json={**CALCULATOR, "server_id": summary["server_id"]})
        assert again.status_code == 202, again.text
        redeployed = wait_for_build(client, again.json()["build_id"])
        assert redeployed["status"] == "deployed", redeployed
        assert redeployed["url"] == server_url
        servers = client.get("/v1/servers").json()
        assert [s["server_id"] for s in servers["servers"]] == [summary["server_id"]]

    down = bmms("stack", "down", "--name", NAME, "--runners", "--volumes", data_dir=data_dir)
    assert down.returncode == 0, down.stderr
    assert stack.services(NAME) == []
    assert stack.docker("service", "ls", "--quiet", "--filter", "label=io.bmms.backend=swarm").strip() == ""
