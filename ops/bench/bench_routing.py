"""Dev routing overhead: a small MCP-sized POST through the gateway's `/servers/<id>/mcp` against the same
POST sent straight to the upstream, req/s and p50/p99 latency at 1 and 50 connections (wrk, 1 thread).

It starts its own nats-server (temp store, nats.conf users), a tiny upstream (a raw ASGI app on uvicorn
with httptools, as a runner is served) and `bmms gateway`, each a separate process on a free port, and
writes the route into the ROUTES bucket as the deployer would. Nothing else on the machine is touched.
Run: `.venv/bin/python -m ops.bench.bench_routing [--seconds 10]`. Needs `wrk` (Debian package).

All processes share this machine's cores with wrk, so the absolute figures are of this machine; the
ratio and the added latency are the point.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nats
import uvicorn

from actors.runtime.bus import provision
from actors.runtime.codec import encode
from bus_schemas.registry import ROUTES
from bus_schemas.servers import ServerRoute
from ops.bench.wrk import run_wrk
from ops.infra import NATS_ROLES, new_nats_password, start_nats

SERVER_ID = "bench"
REQUEST = b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"add","arguments":{"a":2,"b":3}}}'
ANSWER = b'{"jsonrpc":"2.0","id":1,"result":{"content":[{"type":"text","text":"5"}],"isError":false}}'


# --- the upstream: answers every POST with a fixed small JSON-RPC result ---


async def upstream_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """A minimal runner stand-in: reads the body, answers ANSWER."""
    if scope["type"] != "http":
        return
    more = True
    while more:
        message = await receive()
        more = message.get("more_body", False)
    await send({"type": "http.response.start", "status": 200, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(ANSWER)).encode()),
    ]})
    await send({"type": "http.response.body", "body": ANSWER})


def serve_upstream(ready_file: Path) -> None:
    """Serve `upstream_app` on a free port; write its URL to `ready_file` once it listens."""
    # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on accepted sockets whose proto says TCP. With
    # proto 0 (what `socket.socket(family, SOCK_STREAM)` gives) uvicorn's separate header and body writes
    # meet Nagle and delayed ACKs: 40 ms per keep-alive request on the default event loop.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(1024)
    sock.setblocking(False)
    port = sock.getsockname()[1]

    class Server(uvicorn.Server):
        async def startup(self, sockets: Any = None) -> None:
            await super().startup(sockets)
            await asyncio.to_thread(ready_file.write_text, f"http://127.0.0.1:{port}\n")

    config = uvicorn.Config(upstream_app, http="httptools", access_log=False, log_level="warning", lifespan="off")
    asyncio.run(Server(config).serve(sockets=[sock]))


# --- measuring ---


@dataclass
class WrkResult:
    rps: float
    p50_ms: float
    p99_ms: float
    errors: str


def wrk_post(url: str, connections: int, seconds: int, script: Path | None) -> WrkResult:
    """wrk against `url`: the POST of `script`, or a plain GET without one."""
    run = run_wrk(url, connections, seconds, script=script)
    return WrkResult(run.rps, run.p50_ms, run.p99_ms, run.errors)


def wait_for_file(path: Path, process: subprocess.Popen[bytes], what: str, timeout: float = 30.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.read_text().endswith("\n"):
            return path.read_text().strip()
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with {process.returncode}")
        time.sleep(0.05)
    raise TimeoutError(f"{what} did not start within {timeout} s")


async def put_route(nats_url: str, password: str, upstream: str) -> None:
    nc = await nats.connect(nats_url, user="deployer", password=password, inbox_prefix="_INBOX_deployer")
    kv = await nc.jetstream().key_value(ROUTES.name)
    await kv.put(SERVER_ID, encode(ServerRoute(server_id=SERVER_ID, org_id="bench", upstream=upstream, version=1)))
    await nc.close()


async def provision_bucket(nats_url: str, password: str) -> None:
    nc = await nats.connect(nats_url, user="admin", password=password)
    await provision(nc.jetstream())
    await nc.close()


def wait_routed(url: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        request = urllib.request.Request(url, data=REQUEST, method="POST",
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                if response.status == 200:
                    return
        except urllib.error.HTTPError:
            pass
        time.sleep(0.05)
    raise TimeoutError("the gateway never routed the bench server")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seconds", type=int, default=10, help="duration of each measurement")
    parser.add_argument("--upstream", type=Path, help=argparse.SUPPRESS)  # internal: serve the upstream
    args = parser.parse_args()
    if args.upstream is not None:
        serve_upstream(args.upstream)
        return 0
    if shutil.which("wrk") is None:
        print("wrk is needed: apt-get install wrk", file=sys.stderr)
        return 2

    with tempfile.TemporaryDirectory(prefix="bmms-bench-routing-") as tmp:
        root = Path(tmp)
        passwords = {role: new_nats_password() for role in NATS_ROLES}
        nats_server = start_nats(root / "nats", passwords)
        processes: list[subprocess.Popen[bytes]] = []
        try:
            asyncio.run(provision_bucket(nats_server.url, passwords["admin"]))
            upstream_ready = root / "upstream.url"
            upstream = subprocess.Popen([sys.executable, "-m", "ops.bench.bench_routing", "--upstream",
                                         str(upstream_ready)])
            processes.append(upstream)
            upstream_url = wait_for_file(upstream_ready, upstream, "the upstream")
            asyncio.run(put_route(nats_server.url, passwords["deployer"], upstream_url))

            gateway_ready = root / "gateway.url"
            env = {
                **os.environ, "BMMS_NATS_URL": nats_server.url, "BMMS_NATS_USER": "gateway",
                "BMMS_NATS_PASSWORD": passwords["gateway"], "BMMS_HTTP_PORT": "0", "BMMS_LOG_LEVEL": "WARNING",
            }
            env.pop("BMMS_DATABASE_URL", None)
            gateway = subprocess.Popen([sys.executable, "-m", "ops.cli", "gateway", "--ready-file", str(gateway_ready)],
                                       env=env)
            processes.append(gateway)
            gateway_url = wait_for_file(gateway_ready, gateway, "the gateway")
            routed_url = f"{gateway_url}/servers/{SERVER_ID}/mcp"
            wait_routed(routed_url)

            script = root / "post.lua"
            body = REQUEST.decode().replace("\\", "\\\\").replace('"', '\\"')
            script.write_text(
                'wrk.method = "POST"\n'
                f'wrk.body = "{body}"\n'
                'wrk.headers["Content-Type"] = "application/json"\n'
                'wrk.headers["Accept"] = "application/json, text/event-stream"\n'
                'wrk.headers["Authorization"] = "Bearer bench-token"\n'
                'wrk.headers["Mcp-Protocol-Version"] = "2025-11-25"\n'
            )
            print(f"POST {len(REQUEST)} B -> {len(ANSWER)} B JSON, wrk 1 thread, {args.seconds} s each, "
                  f"{os.cpu_count()} cores shared by wrk, gateway, upstream")
            print(f"  {'path':<32}{'conns':>6}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}  errors")
            results: dict[tuple[str, int], WrkResult] = {}
            for conns in (1, 50):
                cases = (
                    ("direct to upstream", f"{upstream_url}/mcp", script),
                    ("through gateway", routed_url, script),
                    ("gateway GET /healthz (no proxy)", f"{gateway_url}/healthz", None),
                )
                for name, url, post in cases:
                    wrk_post(url, conns, 2, post)  # warm-up
                    r = wrk_post(url, conns, args.seconds, post)
                    results[(name, conns)] = r
                    print(f"  {name:<32}{conns:>6}{r.rps:>10.0f}{r.p50_ms:>9.2f}{r.p99_ms:>9.2f}  {r.errors}")
            for conns in (1, 50):
                direct, routed = results[("direct to upstream", conns)], results[("through gateway", conns)]
                print(f"  {conns:>2} conns: gateway/direct throughput {routed.rps / direct.rps:.2f}, "
                      f"added p50 {routed.p50_ms - direct.p50_ms:+.2f} ms, "
                      f"added p99 {routed.p99_ms - direct.p99_ms:+.2f} ms")
        finally:
            for process in processes:
                process.terminate()
            for process in processes:
                try:
                    process.wait(10)
                except subprocess.TimeoutExpired:
                    process.kill()
            nats_server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
