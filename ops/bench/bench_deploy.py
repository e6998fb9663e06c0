"""Deploy benchmark, all figures from one run on one machine.

1. Build latency per backend: from `POST /v1/builds` (an explicit two-tool spec, a new one each time, so
   nothing is cached) to the first authenticated `tools/list` answer at the server's public URL (through
   the gateway's routing, with a real access token from our Authorization Server), with each step's time
   (plan, generate, check, deploy: from its `started` to its `finished` event). Three cases, each printed
   on its own: the FIRST build after a cold start (a fresh data dir, the build requested as soon as
   `bmms dev` says it is ready), the warm builds after it (p50 and p95), and the first build after a
   restart of that same stack (its data dir kept).
2. A runner's tool-call latency (one client, sequential) and throughput (several clients) against a bare
   `MCPServer` with the same tool (ops/bench/bare_server.py), in the same run: the runner verifies the
   token, checks the tool's scope, forwards the call to its sandboxed worker and publishes one usage event
   per call; the bare server runs the tool in its own process and does none of it.
3. The sandbox's own cost: starting a worker and loading a module into it (bubblewrap; a container with no
   network when docker is benchmarked), and one tool call through the channel against the same tool called
   in process through the SDK.

Each backend gets its own private `bmms dev` stack in a temp dir. Run:
`.venv/bin/python -m ops.bench.bench_deploy [--backends process,docker] [--builds 6] [--calls 300]`
(`--calls 0`: build latency only).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import re
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx2
import msgspec
import nats
import nats.errors
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from nats.aio.client import Client as Nats

from actors.runtime.bus import call
from actors.runtime.codec import decode
from bus_schemas.builds import AnyBuildEvent, LogLine, StepChanged, ToolSpecSource
from bus_schemas.oauth import MintServiceToken, TokenIssued
from bus_schemas.registry import BUILD_EVENTS, BUILDS, OAUTH_MINT_SERVICE_TOKEN, ROUTES
from bus_schemas.servers import ServerRoute
from ops.bench.bench_gateway import Stack, http_json, start_stack
from ops.infra import free_port

TARGET_P50_SECONDS = {"docker": 5.0, "swarm": 5.0, "process": 3.0}
TARGET_OVERHEAD = 1.25
FIRST_BUILD_TARGET_SECONDS = 5.0
"""The first build after a cold start on the process backend (issue 15: as fast as the tenth, near enough)."""


def tool_spec(n: int) -> dict[str, object]:
    salt = secrets.token_hex(3)
    return {"name": f"bench {n}", "source": {"kind": "tool_spec", "tools": [
        {"name": "add", "description": f"Add two integers ({salt}).",
         "parameters": [{"name": "a", "type": "integer"}, {"name": "b", "type": "integer"}],
         "implementation": {"kind": "function", "body": "return a + b"}},
        {"name": "shout", "description": "Upper-case a text.",
         "parameters": [{"name": "text", "type": "string"}],
         "implementation": {"kind": "function", "body": "return text.upper()"}},
    ]}}


@contextlib.asynccontextmanager
async def admin_bus(stack: Stack) -> AsyncIterator[Nats]:
    nc = await nats.connect(stack.nats_url, user="admin", password=stack.admin_password())
    try:
        yield nc
    finally:
        await nc.close()


async def token_for(nc: Nats, stack: Stack, url: str) -> str:
    asked = MintServiceToken(service="bench", issuer=stack.url, resource=url, org_id=stack.org,
                             scope="mcp:tools:read mcp:tools:write")
    reply = await call(nc, OAUTH_MINT_SERVICE_TOKEN, asked, timeout=10)
    assert isinstance(reply, TokenIssued), reply
    return reply.access_token


async def list_tools(url: str, token: str | None) -> list[str]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with (httpx2.AsyncClient(headers=headers, timeout=30) as http,
                Client(streamable_http_client(url, http_client=http)) as client):
        return [t.name for t in (await client.list_tools()).tools]


@dataclass(frozen=True)
class BuildTiming:
    """One build, timed from its request to the first authenticated tools/list answer."""

    seconds: float
    url: str
    steps: dict[str, float]
    """Each step's seconds, from its `started` to its `finished` event."""
    check_phases: dict[str, float]
    """Each phase of the check step, as its log line says it ended (`check: lint (ruff) passed (0.03 s)`)."""

    def split(self) -> str:
        """The per-step split, in pipeline order, with the check's phases."""
        phases = ", ".join(f"{phase} {seconds:.2f} s" for phase, seconds in self.check_phases.items())
        return (", ".join(f"{step} {self.steps[step]:.2f} s" for step in STEPS if step in self.steps)
                + (f" (check phases: {phases})" if phases else ""))


STEPS = ("plan", "generate", "check", "deploy")
CHECK_PHASE_ENDED = re.compile(r"^check: (?P<phase>.+?) (passed|\d+ (error|warning)).* \((?P<seconds>\d+\.\d+) s\)$")


async def step_times(nc: Nats, org: str, build_id: str) -> tuple[dict[str, float], dict[str, float]]:
    """Each step's duration (started -> finished) from the build's events, and each check phase's."""
    js = nc.jetstream()
    sub = await js.subscribe(BUILD_EVENTS.wildcard(org=org, build=build_id), stream=BUILDS.name,
                             ordered_consumer=True)
    marks: list[tuple[str, str, float]] = []
    phases: dict[str, float] = {}
    with contextlib.suppress(TimeoutError, nats.errors.TimeoutError):
        while True:
            event = decode(AnyBuildEvent, (await sub.next_msg(timeout=0.5)).data)
            if isinstance(event, StepChanged):
                marks.append((event.step, event.state, dt.datetime.fromisoformat(event.at).timestamp()))
            ended = CHECK_PHASE_ENDED.match(event.message) if isinstance(event, LogLine) else None
            if ended is not None:
                phases[ended["phase"]] = float(ended["seconds"])
    await sub.unsubscribe()
    started = {step: at for step, state, at in marks if state == "started"}
    finished = {step: at for step, state, at in marks if state == "finished"}
    return {step: finished[step] - at for step, at in started.items() if step in finished}, phases


async def one_build(stack: Stack, nc: Nats, n: int) -> BuildTiming:
    """A new build, timed from the request to the first authenticated tools/list answer."""
    started = time.perf_counter()
    created = await asyncio.to_thread(http_json, "POST", f"{stack.url}/v1/builds", stack.key, tool_spec(n))
    build_id = str(created["build_id"])
    while True:
        summary = await asyncio.to_thread(http_json, "GET", f"{stack.url}/v1/builds/{build_id}", stack.key)
        if summary["status"] == "failed":
            raise RuntimeError(f"build {build_id} failed: {summary.get('failure')}")
        if summary["status"] == "deployed":
            break
        await asyncio.sleep(0.02)
    servers = await asyncio.to_thread(http_json, "GET", f"{stack.url}/v1/servers", stack.key)
    listed = servers["servers"]
    assert isinstance(listed, list), servers
    url = next(str(s["url"]) for s in listed if str(s["server_id"]).endswith(build_id))
    token = await token_for(nc, stack, url)
    while True:
        try:
            tools = await list_tools(url, token)
        except Exception:  # not routed yet: the next try
            await asyncio.sleep(0.02)
            continue
        assert sorted(tools) == ["add", "shout"], tools
        elapsed = time.perf_counter() - started
        return BuildTiming(elapsed, url, *await step_times(nc, stack.org, build_id))


async def delete_server(stack: Stack, url: str) -> None:
    server_id = url.rsplit("/", 2)[-2]
    await asyncio.to_thread(http_json, "DELETE", f"{stack.url}/v1/servers/{server_id}", stack.key)


async def call_latencies(url: str, token: str | None, calls: int) -> list[float]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    out: list[float] = []
    async with (httpx2.AsyncClient(headers=headers, timeout=30) as http,
                Client(streamable_http_client(url, http_client=http)) as client):
        for i in range(calls):
            t = time.perf_counter()
            result = await client.call_tool("add", {"a": i, "b": 1})
            out.append(time.perf_counter() - t)
            assert not result.is_error, result
    return out


async def throughput(url: str, token: str | None, clients: int, calls: int) -> float:
    started = time.perf_counter()
    await asyncio.gather(*(call_latencies(url, token, calls) for _ in range(clients)))
    return clients * calls / (time.perf_counter() - started)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def bench_backend(backend: str, builds: int, calls: int, lines: list[str]) -> None:
    """The first build after a cold start, the warm ones after it, and the first after a restart."""
    with tempfile.TemporaryDirectory(prefix="bmms-bench-deploy-") as root:
        # every measured server is deleted after its measurement; the quota is lifted for the bench stack only
        env = {"BMMS_DEPLOY_BACKEND": backend, "BMMS_QUOTA_RUNNING_SERVERS": "-1"}
        async with bench_stack(Path(root), env, backend, "a cold start (fresh data dir)", lines) as (stack, nc):
            seconds, steps = [], []
            for n in range(1, builds + 1):
                timing = await one_build(stack, nc, n)
                seconds.append(timing.seconds)
                steps.append(timing.steps)
                await delete_server(stack, timing.url)
            medians = ", ".join(f"{step} {statistics.median(s[step] for s in steps):.2f} s"
                                for step in STEPS if all(step in s for s in steps))
            p50, p95 = pct(seconds, 0.5), pct(seconds, 0.95)
            target = TARGET_P50_SECONDS[backend]
            lines.append(f"build latency [{backend}] warm, {builds} builds after the first: p50 {p50:.2f} s, "
                         f"p95 {p95:.2f} s (target p50 <= {target:.0f} s: {'met' if p50 <= target else 'NOT met'});"
                         f" step medians: {medians}")
            if backend == "process" and calls:
                await bench_calls(stack, nc, calls, lines)
        async with bench_stack(Path(root), env, backend, "a restart (data dir kept)", lines):
            pass


@contextlib.asynccontextmanager
async def bench_stack(root: Path, env: dict[str, str], backend: str, after: str,
                      lines: list[str]) -> AsyncIterator[tuple[Stack, Nats]]:
    """A `bmms dev` stack on `root`, its first build timed as soon as it says it is ready (the line says
    after what: `after`), stopped on leaving."""
    load = os.getloadavg()[0]
    begun = time.perf_counter()
    stack = await asyncio.to_thread(start_stack, root, env)
    ready = time.perf_counter() - begun
    try:
        async with admin_bus(stack) as nc:
            first = await one_build(stack, nc, 0)
            target = FIRST_BUILD_TARGET_SECONDS
            lines.append(f"build latency [{backend}] FIRST build after {after}: {first.seconds:.2f} s "
                         f"(target <= {target:.0f} s: {'met' if first.seconds <= target else 'NOT met'}); "
                         f"{first.split()}; `bmms dev` ready in {ready:.1f} s; load average {load:.2f} before")
            await delete_server(stack, first.url)
            yield stack, nc
    finally:
        stack.process.send_signal(2)
        await asyncio.to_thread(stack.process.wait, 120)


async def bench_calls(stack: Stack, nc: Nats, calls: int, lines: list[str]) -> None:
    url = (await one_build(stack, nc, 99)).url
    token = await token_for(nc, stack, url)
    kv = await nc.jetstream().key_value(ROUTES.name)
    server_id = url.rsplit("/", 2)[-2]
    route = decode(ServerRoute, (await kv.get(server_id)).value or b"")
    direct = f"{route.upstream}/mcp"
    port = free_port()
    bare = await asyncio.create_subprocess_exec(sys.executable, "-m", "ops.bench.bare_server", str(port),
                                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    bare_url = f"http://127.0.0.1:{port}/mcp"
    try:
        for _ in range(200):
            with contextlib.suppress(Exception):
                await list_tools(bare_url, None)
                break
            await asyncio.sleep(0.05)
        await call_latencies(bare_url, None, 30)
        await call_latencies(direct, token, 30)
        bare_lat = await call_latencies(bare_url, None, calls)
        runner_lat = await call_latencies(direct, token, calls)
        routed_lat = await call_latencies(url, token, calls)
        bare_tp = await throughput(bare_url, None, 8, calls // 4)
        runner_tp = await throughput(direct, token, 8, calls // 4)
    finally:
        bare.terminate()
        await bare.wait()
    b50, r50, g50 = (statistics.median(x) * 1000 for x in (bare_lat, runner_lat, routed_lat))
    ratio = r50 / b50
    lines += [
        f"tool call, one client, {calls} sequential calls (mcp SDK client, p50 / p95):",
        f"  bare MCPServer               {b50:6.2f} ms / {pct(bare_lat, 0.95) * 1000:6.2f} ms",
        f"  runner (auth + usage event)  {r50:6.2f} ms / {pct(runner_lat, 0.95) * 1000:6.2f} ms   "
        f"ratio {ratio:.2f} (target <= {TARGET_OVERHEAD}: {'met' if ratio <= TARGET_OVERHEAD else 'NOT met'})",
        f"  runner via the gateway URL   {g50:6.2f} ms / {pct(routed_lat, 0.95) * 1000:6.2f} ms",
        f"tool call throughput, 8 clients: bare {bare_tp:.0f} calls/s, runner {runner_tp:.0f} calls/s "
        f"(ratio {runner_tp / bare_tp:.2f})",
    ]


async def bench_sandbox(backends: list[str], calls: int, lines: list[str]) -> None:
    """Worker start + module load, and the channel's cost per call, against the same calls in process."""
    import aiodocker
    from mcp_types import CallToolRequestParams

    from actors.codegen.artifacts import build_artifact
    from actors.planner.planning import plan_hash
    from actors.planner.problems import PlanNotes
    from actors.planner.tool_spec import plan_tool_spec
    from actors.runtime.runner_images import RunnerImages
    from actors.runtime.sandboxes import ContainerWorker
    from runner_template.sandbox import Bubblewrap, Launcher
    from runner_template.server import create_server, load_module
    from runner_template.tools import SandboxedTools, load_for

    source = msgspec_convert_tool_spec(tool_spec(0))
    plan = plan_tool_spec(source, "bench", PlanNotes())
    artifact = build_artifact(plan, plan_hash(plan))
    module = load_module(artifact.module_name, artifact.module_source)
    in_process = create_server(module, name="bench", expected_tools=artifact.tools)
    params = CallToolRequestParams(name="add", arguments={"a": 1, "b": 2})
    local: list[float] = []
    for _ in range(calls):
        t = time.perf_counter()
        await in_process._handle_call_tool(None, params)  # type: ignore[arg-type]  # the SDK's handler, no request context
        local.append(time.perf_counter() - t)
    docker = aiodocker.Docker() if "docker" in backends or "swarm" in backends else None
    images = RunnerImages()
    launchers: dict[str, Launcher] = {"bubblewrap": Bubblewrap(uid=None)}
    if docker is not None:
        launchers["container"] = ContainerWorker(docker, lambda: images.runtime_image(docker))
    try:
        for name, launcher in launchers.items():
            starts: list[float] = []
            sandboxed: list[float] = []
            for _ in range(5):
                tools = SandboxedTools(launcher, load_for(artifact), None, call_timeout=30)
                t = time.perf_counter()
                await tools.start()
                starts.append(time.perf_counter() - t)
                try:
                    for i in range(calls // 5):
                        t = time.perf_counter()
                        result = await tools.call("add", {"a": i, "b": 1})
                        sandboxed.append(time.perf_counter() - t)
                        assert not result.is_error, result
                finally:
                    await tools.close()
            lines.append(f"sandbox [{name}]: worker start + module load p50 {statistics.median(starts):.2f} s "
                         f"(max {max(starts):.2f} s); a call through the channel p50 "
                         f"{statistics.median(sandboxed) * 1000:.3f} ms against {statistics.median(local) * 1000:.3f}"
                         f" ms in process (+{(statistics.median(sandboxed) - statistics.median(local)) * 1000:.3f} ms)")
    finally:
        if docker is not None:
            await docker.close()


def msgspec_convert_tool_spec(request: dict[str, object]) -> ToolSpecSource:
    """The bench's tool spec as the planner's typed source."""
    return msgspec.convert(request["source"], ToolSpecSource)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backends", default="process,docker", help="comma-separated: process, docker, swarm")
    parser.add_argument("--builds", type=int, default=6, help="warm builds measured per backend (after the first)")
    parser.add_argument("--calls", type=int, default=300, help="sequential tool calls per server (0: builds only)")
    args = parser.parse_args()
    lines = [f"machine: {os.cpu_count()} cores; python {sys.version.split()[0]}"]
    backends = [b.strip() for b in args.backends.split(",")]
    for backend in backends:
        asyncio.run(bench_backend(backend, args.builds, args.calls, lines))
    if args.calls:
        asyncio.run(bench_sandbox(backends, args.calls, lines))
    print("\n".join(lines))
    print(json.dumps({"note": "figures above are from this one run"}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
