"""Serving the gateway with uvicorn inside the caller's event loop."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import socket
from collections.abc import Callable, Iterator

import uvicorn
from litestar import Litestar

from actors.runtime.settings import Settings
from gateway.app import create_app
from gateway.feeds import with_raw_websocket_send

log = logging.getLogger("bmms.gateway")

GC_YOUNG_THRESHOLD = 10_000
"""Allocations between young-generation collections in a serving gateway (CPython's default is 700)."""


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling (the caller's `stop` event ends it) that reports
    when it listens."""

    def __init__(self, config: uvicorn.Config, listening: asyncio.Event) -> None:
        super().__init__(config)
        self._listening = listening

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        if self.started:
            self._listening.set()


def _bind(host: str, port: int) -> socket.socket:
    # Bound here rather than by uvicorn so that with port 0 the real port is known before on_ready.
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)  # TCP: asyncio sets TCP_NODELAY
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.setblocking(False)
    return sock


async def serve_gateway(
    settings: Settings,
    stop: asyncio.Event,
    on_ready: Callable[[str], None] | None = None,
    *,
    app: Litestar | None = None,
) -> None:
    """Serve the gateway on `settings.http_host:http_port` (0 picks a free port) until `stop` is set.

    `on_ready(base_url)` is called once the app started and the socket accepts connections. `app`
    defaults to `create_app(settings)`; tests pass their own to look inside it.
    """
    sock = _bind(settings.http_host, settings.http_port)
    port = sock.getsockname()[1]
    host = f"[{settings.http_host}]" if ":" in settings.http_host else settings.http_host
    base_url = f"http://{host}:{port}"
    app = app or create_app(settings)
    # The OAuth issuer (gateway.oauth) is the public URL, or else this bound address: known only now.
    app.state["base_url"] = (settings.public_url or base_url).rstrip("/")
    fast = settings.gateway_fast_path
    config = uvicorn.Config(
        with_raw_websocket_send(app) if fast else app,
        http="httptools",
        # The sans-I/O websockets protocol writes a frame straight to the transport without awaiting,
        # so fanning an event out to many sockets costs no extra event-loop round trips.
        ws="websockets-sansio" if fast else "auto",
        # Compression would be per socket: it would undo the encode-once fan-out.
        ws_per_message_deflate=False,
        lifespan="on",
        # An access line per request costs throughput; errors are still logged.
        access_log=False,
        log_config=None,
        server_header=False,
        timeout_graceful_shutdown=5,
    )
    listening = asyncio.Event()
    server = _Server(config, listening)
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    waiting = asyncio.create_task(listening.wait())
    stopping = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait({serving, waiting, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if serving.done():
            exc = serving.exception() if not serving.cancelled() else None
            if isinstance(exc, SystemExit) or (exc is None and not listening.is_set()):
                raise RuntimeError("the gateway failed to start (see the log above)")
            if exc is not None:
                raise exc
            return
        if listening.is_set():
            # Everything built at start-up lives as long as the process: keep it out of the
            # collector's sweeps, which otherwise show up as pauses in WebSocket frame latency.
            gc.freeze()
            # Every request in flight keeps its coroutine chain and objects alive, and each young-generation
            # collection walks all of them: with 50 requests waiting on the bus, collections every 700
            # allocations cost the bus-bridged route ~15 µs a request (measured; bare routes hold nothing in
            # flight). Collecting every 10,000 keeps the same work per collection, a fourteenth as often.
            gc.set_threshold(GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])
            log.info("gateway listening on %s", base_url)
            if on_ready is not None:
                on_ready(settings.public_url or base_url)
        await stopping
        server.should_exit = True
        await serving
    finally:
        waiting.cancel()
        stopping.cancel()
        if not serving.done():
            server.should_exit = True
            with contextlib.suppress(BaseException):
                await serving
        sock.close()
