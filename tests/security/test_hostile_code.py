"""Generated code as an attacker writes it, against the boundary the operating system draws around it.

The static rules are a lint; these modules are what gets past them (a module handed to the runner as if
codegen were bypassed, and pure-function bodies in the checker's sample run, rules skipped). Each one tries,
from inside its sandbox, what a tenant's code would try against the platform and the other tenants:

- reading the platform's data dir (the NATS store, PostgreSQL's data and socket), the runner's own files,
  the Docker socket, and `/proc/*/environ` of other processes;
- connecting to PostgreSQL and to the bus (loopback, the Docker bridge address), to the cloud metadata
  address and private ranges;
- finding the runner's NATS password or the server's upstream secret anywhere in its own memory, and
  publishing usage with it;
- changing or reading the egress policy, and calling a private address through `upstream.request`;
- a fork bomb, a CPU burn and a memory bomb, while another tenant's server is called.

Every attempt must fail, and the platform and the other server must keep answering. The runners run on the
process backend (bubblewrap) and on the docker backend (a no-network worker container); the sample runs in
the checker's two sandboxes (bubblewrap, and a container on Docker platforms).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import aiodocker
import httpx
import msgspec
import pytest

from actors.deployer.backends.base import Backend, RunnerSpec
from actors.deployer.backends.docker import DockerBackend
from actors.deployer.backends.process import ProcessBackend
from actors.runtime.runner_images import RunnerImages
from actors.runtime.sandboxes import ContainerWorker
from bus_schemas.plans import Artifact
from runner_template.limits import WorkerLimits
from runner_template.sandbox import Bubblewrap, Launcher
from runner_template.tools import SandboxedTools, load_for
from tests.actors.deployer.conftest import CALCULATOR, Rendered, call_tool, new_server_id, render, spec_for, tool
from tests.conftest import Stack

SECRET_VALUE = "upstream-secret-only-the-front-holds-3f9c"
BRIDGE_GATEWAY = "172.17.0.1"
"""The docker0 bridge's address: the host as containers see it."""

PROBE = '''
import glob
import json
import os
import socket


def probe(paths: list[str], targets: list[list[object]], needles: list[str]) -> str:
    """What this code can reach: each path read, each address connected, each needle found in memory."""
    report: dict[str, object] = {"uid": os.getuid(), "files": {}, "sockets": {}, "found": [], "environs": {}}
    for path in paths:
        try:
            if os.path.isdir(path):
                os.listdir(path)
            else:
                with open(path, "rb") as f:
                    f.read(16)
            report["files"][path] = "read"
        except OSError as exc:
            report["files"][path] = type(exc).__name__
    for host, port in targets:
        try:
            if str(host).startswith("/"):
                s = socket.socket(socket.AF_UNIX)
                s.settimeout(2)
                s.connect(str(host))
            else:
                s = socket.create_connection((str(host), int(port)), timeout=2)
            s.close()
            report["sockets"][f"{host}:{port}"] = "connected"
        except OSError as exc:
            report["sockets"][f"{host}:{port}"] = type(exc).__name__
    for pid in [p for p in os.listdir("/proc") if p.isdigit()]:
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                report["environs"][pid] = sorted(v.split(b"=", 1)[0].decode() for v in f.read().split(b"\\0") if v)
        except OSError as exc:
            report["environs"][pid] = type(exc).__name__
    report["pids"] = sorted(int(p) for p in os.listdir("/proc") if p.isdigit())
    # Every readable page of this process, as an attacker would read it. The needle is never built whole here
    # (it would then be in memory itself): its two halves are made apart and compared at each hit of the first.
    regions = []
    with open("/proc/self/maps") as maps:
        for line in maps:
            fields = line.split()
            if fields[1].startswith("r") and not line.rstrip().endswith(("[vvar]", "[vsyscall]", "[vdso]")):
                start, end = (int(x, 16) for x in fields[0].split("-"))
                if end - start <= 256 * 1024 * 1024:
                    regions.append((start, end))
    halves = []
    for reversed_needle in needles:  # given reversed, so the request itself holds none of them
        cut = len(reversed_needle) // 2
        halves.append((reversed_needle, reversed_needle[cut:][::-1].encode(), reversed_needle[:cut][::-1].encode()))
    with open("/proc/self/mem", "rb", 0) as mem:
        for start, end in regions:
            try:
                mem.seek(start)
                chunk = mem.read(end - start)
            except (OSError, OverflowError, ValueError):
                continue
            for reversed_needle, head, tail in halves:
                at = chunk.find(head)
                while at >= 0 and reversed_needle not in report["found"]:
                    if chunk[at + len(head):at + len(head) + len(tail)] == tail:
                        report["found"].append(reversed_needle)
                    at = chunk.find(head, at + 1)
    for reversed_needle, head, tail in halves:
        if any((head + tail).decode() in v for v in os.environ.values()):
            report["found"].append(reversed_needle + " (environment)")
    report["sockets_found"] = [p for d in ("/run", "/var/run", "/tmp", "/run/postgresql") for p in glob.glob(d + "/*")
                               if p.endswith(".sock") or ".s.PGSQL" in p]
    return json.dumps(report)
'''

MODULE = '''"""A tenant's module, as an attacker writes it."""

import asyncio
import json
import math
import os

from runner_template import sdk, upstream
''' + PROBE + '''

@sdk.tool(name="look", title="Look around", read_only=True)
def look(request: str) -> str:
    """Probe what this process can reach."""
    asked = json.loads(request)
    return probe(asked["paths"], asked["targets"], asked["needles"])


@sdk.tool(name="loosen", title="Loosen the egress policy", read_only=True)
async def loosen(url: str) -> str:
    """Try to switch the private-address rule off from here, then call a private address."""
    tried = []
    try:
        from runner_template import egress
        policy = egress.UpstreamPolicy(hosts=frozenset({"127.0.0.1"}), allow_private=True)
        tried.append(f"made {policy!r}")
        for name in ("configure", "_policy"):
            tried.append(f"{name}: {hasattr(egress, name)}")
    except Exception as exc:
        tried.append(f"egress: {type(exc).__name__}")
    try:
        answer = await upstream.request("GET", url)
        return json.dumps({"reached": True, "answer": str(answer)[:200], "tried": tried})
    except Exception as exc:
        return json.dumps({"reached": False, "error": str(exc), "tried": tried})


@sdk.tool(name="burn", title="Burn CPU", read_only=True)
def burn() -> int:
    """A computation that does not end in time."""
    return len(str(math.factorial(10**8)))


@sdk.tool(name="bomb", title="Fork bomb", read_only=True)
def bomb() -> str:
    """Fork until the sandbox says no, and keep every child spinning."""
    forked = 0
    try:
        while True:
            if os.fork() == 0:
                while True:
                    pass
            forked += 1
    except OSError as exc:
        return f"forked {forked}: {exc}"


@sdk.tool(name="hog", title="Memory bomb", read_only=True)
def hog() -> int:
    """Allocate until something stops it."""
    held = []
    while True:
        held.append(bytearray(64 * 1024 * 1024))


@sdk.tool(name="ok", title="Still here", read_only=True)
async def ok() -> str:
    """Answer at once."""
    await asyncio.sleep(0)
    return "ok"
'''

TOOLS = ("look", "loosen", "burn", "bomb", "hog", "ok")


def hostile_artifact(upstream_hosts: tuple[str, ...]) -> Rendered:
    """MODULE as an artifact (codegen bypassed), declaring a secret and `upstream_hosts`."""
    artifact = Artifact(plan_hash="0" * 64, template_version="1", module_name="hostile", module_source=MODULE,
                        tools=TOOLS, secrets=("TOKEN",), upstream_hosts=upstream_hosts)
    data = msgspec.json.encode(artifact)
    return Rendered(hashlib.sha256(data).hexdigest(), data)


@dataclass(frozen=True)
class Attack:
    """What the attacker is after on this machine."""

    paths: list[str]
    targets: list[list[object]]
    needles: list[str]

    def request(self) -> dict[str, str]:
        return {"request": json.dumps({"paths": self.paths, "targets": self.targets, "needles": self.needles})}


def attack_on(stack: Stack, extra_paths: Sequence[str] = ()) -> Attack:
    root = stack.root
    pg_sockets = [str(p) for p in root.rglob(".s.PGSQL.*") if not p.name.endswith(".lock")]
    assert pg_sockets, "the test's PostgreSQL socket was not found"
    nats_port = stack.nats.port
    return Attack(
        paths=[str(root), str(root / "nats"), str(root / "nats" / "nats-server.log"), str(root / "postgres"),
               "/var/run/docker.sock", "/etc/shadow", *extra_paths],
        targets=[["127.0.0.1", nats_port], [BRIDGE_GATEWAY, nats_port], ["169.254.169.254", 80],
                 ["10.0.0.1", 80], ["192.168.1.1", 80], ["1.1.1.1", 53], ["127.0.0.1", 5432],
                 *[[p, 0] for p in pg_sockets]],
        needles=[v[::-1] for v in (stack.nats.passwords["runner"], SECRET_VALUE, stack.nats.passwords["admin"])],
    )


def assert_contained(report: dict[str, Any], attack: Attack) -> None:
    """Nothing of the attack got anywhere, and the probe itself worked (it saw its own sandbox)."""
    assert report["uid"] != 0
    assert {path: how for path, how in report["files"].items() if how == "read"} == {}
    assert {where: how for where, how in report["sockets"].items() if how == "connected"} == {}
    assert report["found"] == []
    assert len(report["pids"]) < 10, report["pids"]  # its own PID namespace: a handful of its own processes
    for names in report["environs"].values():
        assert not [n for n in names if isinstance(n, str) and n.startswith(("BMMS_SECRET", "BMMS_RUNNER_NATS",
                                                                              "BMMS_NATS", "BMMS_DATABASE"))]
    assert set(report["files"]) == set(attack.paths)


# -- runners: process (bubblewrap) and docker (a no-network worker container) ---------------------------------


async def _backend_removed_after(made: Backend) -> AsyncIterator[Backend]:
    try:
        yield made
    finally:
        for runner in await made.running():
            if runner.server_id.startswith("t"):
                await made.remove(runner.server_id, ())
        await made.close()


@pytest.fixture
async def process_backend(stack: Stack) -> AsyncIterator[Backend]:
    async for made in _backend_removed_after(ProcessBackend(stack.root / f"hostile-runners-{new_server_id()}")):
        yield made


@pytest.fixture
async def docker_backend(runner_images: RunnerImages) -> AsyncIterator[Backend]:
    async for made in _backend_removed_after(DockerBackend(runner_images)):
        yield made


@pytest.fixture(params=["process", "docker"])
def backend(request: pytest.FixtureRequest) -> Backend:
    """Each runner backend in turn: bubblewrap workers, then no-network worker containers."""
    made: Backend = request.getfixturevalue(f"{request.param}_backend")
    return made


def hostile_spec(stack: Stack, server_id: str, upstream_hosts: tuple[str, ...] = ()) -> RunnerSpec:
    """The hostile module as the deployer would start it: the real bus and the runner's real password, a
    secret, no private upstreams, short tool calls."""
    return spec_for(server_id, hostile_artifact(upstream_hosts), secrets={"TOKEN": SECRET_VALUE},
                    nats_url=stack.nats.url, org_id="org-hostile",
                    nats_password=stack.nats.passwords["runner"], tool_timeout_seconds=4)


async def call(upstream: str, name: str, arguments: dict[str, Any] | None = None) -> dict[str, Any]:
    """A `tools/call` on a runner (no auth: these runners serve without tokens)."""
    return await call_tool(upstream, name, arguments or {})


def text_of(result: dict[str, Any]) -> str:
    return "".join(c.get("text", "") for c in result["content"])


async def test_a_hosted_module_reaches_no_platform_file_socket_or_credential(backend: Backend, stack: Stack) -> None:
    server_id = new_server_id()
    runner = await backend.run(hostile_spec(stack, server_id))
    own_files = [str(backend.root / server_id)] if isinstance(backend, ProcessBackend) else []
    attack = attack_on(stack, own_files)
    result = await call(runner.upstream, "look", attack.request())
    assert not result.get("isError"), result
    assert_contained(json.loads(text_of(result)), attack)


async def test_a_hosted_module_cannot_loosen_the_egress_policy(backend: Backend, stack: Stack) -> None:
    server_id = new_server_id()
    target = f"127.0.0.1:{stack.nats.port}"  # in the plan's hosts, but a private address: the front says no
    runner = await backend.run(hostile_spec(stack, server_id, upstream_hosts=(target, "169.254.169.254")))
    for url in (f"http://{target}/", "http://169.254.169.254/latest/meta-data/"):
        result = await call(runner.upstream, "loosen", {"url": url})
        answer = json.loads(text_of(result))
        assert answer["reached"] is False, answer
        assert "non-public address" in answer["error"], answer
        assert "configure: False" in answer["tried"] and "_policy: False" in answer["tried"]


async def test_bombs_and_burns_are_stopped_and_other_tenants_keep_working(backend: Backend, stack: Stack) -> None:
    hostile = await backend.run(hostile_spec(stack, new_server_id()))
    neighbour = await backend.run(spec_for(new_server_id(), CALCULATOR))

    async def neighbour_answers() -> list[str]:
        answers = []
        for n in range(10):
            answers.append(text_of(await call(neighbour.upstream, "add", {"a": n, "b": 1})))
            await asyncio.sleep(0.2)
        return answers

    loop = asyncio.get_running_loop()
    for attack in ("bomb", "burn", "hog"):
        started = loop.time()
        outcome, answers = await asyncio.gather(call(hostile.upstream, attack), neighbour_answers())
        assert outcome.get("isError") is True, (attack, outcome)
        assert loop.time() - started < 30, attack
        assert answers == [str(n + 1) for n in range(10)], attack
        # the hostile server itself comes back (a fresh tool process), and so does nothing of the attack
        assert text_of(await call(hostile.upstream, "ok")) == "ok", attack
    health = httpx.get(f"{hostile.upstream}/healthz", timeout=10).json()
    assert health["status"] == "ok"


# -- the checker's sample run: bubblewrap, and a container on Docker platforms -------------------------------


SAMPLE_LIMITS = WorkerLimits(processes=64, cpu_seconds=30)


@pytest.fixture
def container_sandbox(docker: aiodocker.Docker, runner_images: RunnerImages) -> Launcher:
    return ContainerWorker(docker, lambda: runner_images.runtime_image(docker), SAMPLE_LIMITS)


@pytest.fixture
def bwrap_sandbox() -> Launcher:
    return Bubblewrap(uid=None, limits=SAMPLE_LIMITS)


@pytest.fixture(params=["bwrap", "container"])
def sample_sandbox(request: pytest.FixtureRequest) -> Launcher:
    """Each sandbox of the checker's sample runs in turn."""
    launcher: Launcher = request.getfixturevalue(f"{request.param}_sandbox")
    return launcher


BODY = PROBE.replace("def probe(", "def probe_(") + """
return probe_(PATHS, TARGETS, NEEDLES)
"""
"""The probe as a pure-function body: the imports and the helper inside the tool function."""


async def test_a_pure_function_body_in_the_sample_run_reaches_nothing(sample_sandbox: Launcher, stack: Stack) -> None:
    attack = attack_on(stack)
    body = (BODY.replace("PATHS", repr(attack.paths)).replace("TARGETS", repr(attack.targets))
            .replace("NEEDLES", repr(attack.needles)))
    artifact = msgspec.json.decode(render(tool("look", body)).artifact_json, type=Artifact)
    tools = SandboxedTools(sample_sandbox, load_for(artifact), None, call_timeout=30)
    await tools.start()
    try:
        result = await tools.call("look", {})
    finally:
        await tools.close()
    assert not result.is_error, result
    text = result.content[0].text  # type: ignore[union-attr]
    report = json.loads(json.loads(text) if text.startswith('"') else text)
    assert_contained(report, attack)


def test_the_attacks_are_real_when_nothing_contains_them(stack: Stack) -> None:
    """The same probe, run in the test's own process: it reads the data dir and reaches the bus, so a
    contained report above means the sandbox stopped it, not that the probe is blind."""
    namespace: dict[str, Any] = {}
    exec(compile(PROBE, "probe", "exec"), namespace)
    attack = attack_on(stack)
    report = json.loads(namespace["probe"](attack.paths, attack.targets, attack.needles))
    assert report["files"][str(stack.root / "nats" / "nats-server.log")] == "read"
    assert report["sockets"][f"127.0.0.1:{stack.nats.port}"] == "connected"
    assert stack.nats.passwords["runner"][::-1] in report["found"]  # the memory scan finds what is there
    with contextlib.suppress(AssertionError):
        assert_contained(report, attack)
        pytest.fail("the probe found nothing outside a sandbox either")

