"""Dev routing: the gateway forwards each hosted server's stable public URL to the runner that serves it.

A server's public MCP endpoint is `<servers_url>/<server_id>/mcp` (servers_url defaults to
`<public_url>/servers`). In development, and wherever no edge router sits in front, the gateway itself
serves that URL space:

- `/servers/{server_id}/mcp` -> `<route.upstream>/mcp`
- `/.well-known/oauth-protected-resource/servers/{server_id}/mcp`
  -> `<route.upstream>/.well-known/oauth-protected-resource/mcp`

The route of each server is the `ServerRoute` the deployer keeps in the ROUTES bucket (key = server id).
One ordered consumer per gateway process watches the bucket and keeps an in-memory table current, so a
proxied request costs no bus round trip. The runner does its own OAuth, so these paths bypass the /v1
authentication entirely: the gateway only forwards.

Headers, both ways: everything but the hop-by-hop headers (RFC 9110 section 7.6.1 and whatever
`Connection` names) passes. `Host` goes upstream unchanged: the runner checks it against its public
host name (its allowed hosts are the public URL's host plus loopback), so the runner sees exactly the
host the client asked for, behind this gateway or behind the production router alike. The original
host also travels as `X-Forwarded-Host`, with `X-Forwarded-Proto` and `X-Forwarded-Prefix`
(`/servers/<id>`); client-sent `X-Forwarded-*`/`Forwarded` values are replaced, never trusted.
Cookies are dropped both ways: the servers share the gateway's origin in development, and a runner must
neither read the dashboard's session cookie nor set cookies on the platform's origin.

The HTTP client is one pooled `aiohttp.ClientSession` per process: the fastest asyncio client available
(a runtime dependency already, through aiodocker), it streams response bodies chunk by chunk as they
arrive, and it passes bytes through untouched (no decompression, no cookie jar, no added headers).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import msgspec
import nats.errors
import nats.js.errors
from litestar import Litestar
from litestar.enums import ScopeType
from litestar.handlers import ASGIRouteHandler, asgi
from litestar.types import HTTPResponseBodyEvent, HTTPResponseStartEvent, Receive, Scope, Send
from multidict import CIMultiDict
from nats.js import JetStreamContext
from yarl import URL

from bus_schemas.base import SUBJECT_TOKEN_RE, FailureCode
from bus_schemas.registry import ROUTES
from bus_schemas.servers import ServerRoute
from gateway.bus import BusClient
from gateway.problems import Problem
from runner_template.kv import KvEntry, kv_stream, watch_bucket

log = logging.getLogger("bmms.gateway.routing")

SERVERS_PATH = "/servers"
"""Where the gateway serves the server URL space (the path of the default `servers_url`)."""
MCP_PATH = "/mcp"
"""A runner's MCP endpoint, relative to its upstream base URL."""
PRM_PATH = "/.well-known/oauth-protected-resource"
"""RFC 9728: protected resource metadata of `<host>/<path>` lives at `<host>/.well-known/...<path>`."""
MAX_REQUEST_BODY = 8 * 1024 * 1024
"""Largest request body forwarded (MCP requests are JSON-RPC messages; tool arguments included)."""
CONNECT_TIMEOUT = 5.0
"""Seconds to open a connection to a runner before answering 502. There is no read timeout: SSE streams
stay open as long as the runner keeps them."""
KEEPALIVE_SECONDS = 4.0
"""How long an idle pooled connection is reused; below uvicorn's 5 s keep-alive, so the gateway never
sends a request on a connection the runner is closing."""
SYNC_TIMEOUT = 5.0
"""How long the lifespan waits for the watch to deliver the bucket's current routes before serving."""
WATCH_RETRY_FIRST = 0.5
WATCH_RETRY_MAX = 5.0
"""Seconds between attempts to watch a bucket that is not there yet: doubling from the first to the most."""

# RFC 9110 section 7.6.1, plus the legacy Proxy-Connection.
_HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "proxy-connection", "te",
    "trailer", "transfer-encoding", "upgrade",
})
# Request headers the gateway sets itself, or that must not reach a runner.
_REQUEST_DROPPED = _HOP_BY_HOP | {
    "host", "content-length", "cookie", "forwarded", "x-forwarded-for", "x-forwarded-host",
    "x-forwarded-proto", "x-forwarded-prefix",
}
# `date` is added by the gateway's own server; `set-cookie` would land on the platform's origin.
_RESPONSE_DROPPED = _HOP_BY_HOP | {"set-cookie", "date"}

_decode_route = msgspec.json.Decoder(ServerRoute).decode


class RouteTable:
    """The ROUTES bucket as a dict from server id to its route, kept current by one watch."""

    def __init__(self) -> None:
        self.routes: dict[str, ServerRoute] = {}
        self.synced = asyncio.Event()
        """Set once the bucket's routes as of the watch's start are in the table."""
        self._sub: JetStreamContext.PushSubscription | None = None

    def get(self, server_id: str) -> ServerRoute | None:
        """Where `server_id` runs, or None."""
        return self.routes.get(server_id)

    def apply(self, key: str, value: bytes | None) -> None:
        """Apply one bucket entry: a value stores the route, a delete, purge or expiry (None) removes it."""
        if value is None:
            self.routes.pop(key, None)
            return
        try:
            route = _decode_route(value)
        except msgspec.DecodeError as exc:
            # Forwarding to a stale upstream would be worse than answering 404.
            log.error("dropped the route of %r: its value is not a ServerRoute (%s)", key, exc)
            self.routes.pop(key, None)
            return
        if route.server_id != key:
            log.error("dropped the route under key %r: it names server %r", key, route.server_id)
            self.routes.pop(key, None)
            return
        self.routes[key] = route

    async def start(self, js: JetStreamContext) -> None:
        """Start the watch (`runner_template.kv.watch_bucket`): last value per key, then live."""
        self._sub = await watch_bucket(js, ROUTES.name, ">", self._on_entry)
        # With entries the last one delivered says `pending == 0`; an empty bucket delivers nothing.
        info = await js.stream_info(kv_stream(ROUTES.name))
        if info.state.messages == 0:
            self.synced.set()

    async def stop(self) -> None:
        """End the watch (its consumer goes with the subscription)."""
        if self._sub is not None:
            try:
                await self._sub.unsubscribe()
            except nats.errors.Error:
                log.debug("could not unsubscribe the routes watch", exc_info=True)
            self._sub = None

    async def _on_entry(self, entry: KvEntry) -> None:
        self.apply(entry.key, entry.value)
        if entry.pending == 0:
            self.synced.set()


def forwarded_request_headers(
    raw: Iterable[tuple[bytes, bytes]], *, scheme: str, client: str | None, prefix: str
) -> tuple[CIMultiDict[str], str | None]:
    """The headers to send upstream, and the original Host (None when the request had none)."""
    pairs = [(name.decode("latin-1").lower(), value.decode("latin-1")) for name, value in raw]
    named_by_connection = {
        token.strip().lower() for name, value in pairs if name == "connection" for token in value.split(",")
    }
    headers: CIMultiDict[str] = CIMultiDict()
    host: str | None = None
    for name, value in pairs:
        if name == "host":
            host = value
        if name in _REQUEST_DROPPED or name in named_by_connection:
            continue
        headers.add(name, value)
    if host is not None:
        headers["Host"] = host
        headers["X-Forwarded-Host"] = host
    headers["X-Forwarded-Proto"] = scheme
    headers["X-Forwarded-Prefix"] = prefix
    if client:
        headers["X-Forwarded-For"] = client
    return headers, host


def forwarded_response_headers(raw: Iterable[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """The runner's response headers minus hop-by-hop ones and cookies, names lower-cased for ASGI."""
    pairs = [(name.lower(), value) for name, value in raw]
    named_by_connection = {
        token.strip().lower().encode()
        for name, value in pairs if name == b"connection" for token in value.decode("latin-1").split(",")
    }
    return [
        (name, value) for name, value in pairs
        if name.decode("latin-1") not in _RESPONSE_DROPPED and name not in named_by_connection
    ]


async def _read_body(receive: Receive) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise asyncio.CancelledError  # nobody is waiting for an answer
        chunk: bytes = message.get("body", b"")  # type: ignore[assignment]  # ASGI's receive union has no body type
        size += len(chunk)
        if size > MAX_REQUEST_BODY:
            raise Problem(413, f"the request body is larger than {MAX_REQUEST_BODY} bytes",
                          code=FailureCode.INVALID)
        if chunk:
            chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


class ServerProxy:
    """Forwards the server URL space to the runners named in the route table, over one pooled client."""

    def __init__(self, routes: RouteTable) -> None:
        self.routes = routes
        self._session: aiohttp.ClientSession | None = None

    async def open(self) -> None:
        """Create the pooled client (inside the event loop that serves requests)."""
        connector = aiohttp.TCPConnector(
            # No pool bound: proxied connections never outnumber the gateway's own in-flight requests,
            # and long SSE streams must not make short POSTs queue for a connection.
            limit=0,
            limit_per_host=0,
            keepalive_timeout=KEEPALIVE_SECONDS,
            ttl_dns_cache=60,
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=CONNECT_TIMEOUT, connect=CONNECT_TIMEOUT),
            auto_decompress=False,
            cookie_jar=aiohttp.DummyCookieJar(),
            skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
            trust_env=False,
        )

    async def close(self) -> None:
        """Close the pool."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def forward(self, scope: Scope, receive: Receive, send: Send, upstream_path: str) -> None:
        """Forward one request of server `scope["path_params"]["server_id"]` to `upstream_path` on its runner."""
        if scope["type"] != ScopeType.HTTP:
            raise Problem(404, "hosted servers speak HTTP here, not WebSocket", code=FailureCode.NOT_FOUND)
        server_id = server_in_path(scope["path"])
        route = self.routes.get(server_id) if SUBJECT_TOKEN_RE.match(server_id) else None
        if route is None:
            raise Problem(404, f"no server {server_id[:80]!r} is running here", code=FailureCode.NOT_FOUND)
        if self._session is None:
            raise Problem(503, "the gateway is starting or stopping", code=FailureCode.UNAVAILABLE)
        method = scope["method"]
        body = await _read_body(receive)
        client = scope.get("client")
        headers, _ = forwarded_request_headers(
            scope["headers"], scheme=scope.get("scheme", "http"), client=client[0] if client else None,
            prefix=f"{SERVERS_PATH}/{server_id}",
        )
        query = scope.get("query_string", b"")
        target = route.upstream.rstrip("/") + upstream_path + (f"?{query.decode('latin-1')}" if query else "")
        try:
            response = await self._session.request(
                method, URL(target, encoded=True), headers=headers, data=body or None, allow_redirects=False,
            )
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            log.warning("server %s: runner at %s unreachable: %s", server_id, route.upstream, exc)
            raise Problem(502, f"server {server_id!r} is not answering; it may be starting or restarting",
                          code=FailureCode.UNAVAILABLE) from exc
        try:
            await self._relay(response, receive, send)
        finally:
            response.release()

    async def _relay(self, response: aiohttp.ClientResponse, receive: Receive, send: Send) -> None:
        start: HTTPResponseStartEvent = {
            "type": "http.response.start",
            "status": response.status,
            "headers": forwarded_response_headers(response.raw_headers),
        }
        length = response.content_length
        event_stream = response.content_type == "text/event-stream"
        if length is not None and length <= 1024 * 1024 and not event_stream:
            # A small, whole body (MCP's JSON answers): one read, one send, no watcher task.
            try:
                data = await response.read()
            except (aiohttp.ClientError, OSError) as exc:
                raise Problem(502, "the server broke off its answer", code=FailureCode.UNAVAILABLE) from exc
            await send(start)
            await send(_body(data, more=False))
            return
        await send(start)
        # Stream chunk by chunk (SSE events as they come). uvicorn drops writes to a gone client without
        # an error, so a watcher ends the relay (and the upstream connection) when the client leaves.
        relay = asyncio.current_task()
        watcher = asyncio.create_task(_cancel_on_disconnect(receive, relay))
        try:
            async for chunk in response.content.iter_any():
                await send(_body(chunk, more=True))
            await send(_body(b"", more=False))
        except asyncio.CancelledError:
            if relay is None or not watcher.done() or watcher.cancelled():
                raise
            relay.uncancel()  # our own cancellation: the client left, there is nothing more to send
            response.close()
        except (aiohttp.ClientError, OSError) as exc:
            # Too late for a problem document: end the response without its last chunk so the client
            # sees a broken stream, not a complete one.
            log.warning("a runner broke off a streamed answer: %s", exc)
            response.close()
        finally:
            watcher.cancel()

    def route_handlers(self) -> list[ASGIRouteHandler]:
        """The handlers serving the server URL space; they take no part in /v1 authentication."""

        async def forward_mcp(scope: Scope, receive: Receive, send: Send) -> None:
            await self.forward(scope, receive, send, MCP_PATH)

        async def forward_prm(scope: Scope, receive: Receive, send: Send) -> None:
            await self.forward(scope, receive, send, PRM_PATH + MCP_PATH)

        # Mounts, not `{server_id}` path parameters: Litestar 2.25 cannot parse path parameters of an ASGI
        # handler for HTTP requests (it looks them up by method); `server_in_path` parses the rest.
        return [
            asgi(SERVERS_PATH, is_mount=True, copy_scope=False, name="server-mcp")(forward_mcp),
            asgi(PRM_PATH + SERVERS_PATH, is_mount=True, copy_scope=False, name="server-prm")(forward_prm),
        ]


def server_in_path(path: str) -> str:
    """The server id of a path below a mount (`/<server_id>/mcp`, a trailing slash tolerated); "" for
    any other path."""
    parts = path.strip("/").split("/")
    return parts[0] if len(parts) == 2 and parts[1] == MCP_PATH.strip("/") else ""


def _body(data: bytes, *, more: bool) -> HTTPResponseBodyEvent:
    return {"type": "http.response.body", "body": data, "more_body": more}


async def _cancel_on_disconnect(receive: Receive, task: asyncio.Task[Any] | None) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            if task is not None:
                task.cancel()
            return


class ServerRouting:
    """Dev routing of the server URL space for one gateway process: the ROUTES watch and the proxy."""

    def __init__(self, bus: Callable[[], BusClient]) -> None:
        self.table = RouteTable()
        self.proxy = ServerProxy(self.table)
        self._bus = bus
        self._waiting: asyncio.Task[None] | None = None

    @property
    def route_handlers(self) -> list[ASGIRouteHandler]:
        """Register these with the app."""
        return self.proxy.route_handlers()

    async def start(self) -> None:
        """Open the client pool and start watching ROUTES. A bucket that cannot be watched yet (not provisioned:
        the gateway started before `bmms migrate` ran) is watched as soon as it can be, retried in the
        background; meanwhile servers' URLs answer 404."""
        await self.proxy.open()
        if not await self._watch():
            self._waiting = asyncio.create_task(self._watch_when_ready())
            return
        try:
            await asyncio.wait_for(self.table.synced.wait(), SYNC_TIMEOUT)
        except TimeoutError:
            log.warning("serving before the %s bucket's routes arrived (waited %.0f s)", ROUTES.name, SYNC_TIMEOUT)

    async def _watch(self) -> bool:
        try:
            await self.table.start(self._bus().nc.jetstream())
        except (nats.errors.Error, nats.js.errors.Error) as exc:
            log.warning("cannot watch the %s bucket yet, retrying (%s)", ROUTES.name, exc)
            return False
        return True

    async def _watch_when_ready(self) -> None:
        delay = WATCH_RETRY_FIRST
        while True:
            await asyncio.sleep(delay)
            if await self._watch():
                log.info("watching the %s bucket: servers' URLs are routed", ROUTES.name)
                return
            delay = min(delay * 2, WATCH_RETRY_MAX)

    async def stop(self) -> None:
        """Stop the watch (or the wait for it) and close the pool."""
        if self._waiting is not None:
            self._waiting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._waiting
            self._waiting = None
        await self.table.stop()
        await self.proxy.close()

    @asynccontextmanager
    async def lifespan(self, _: Litestar) -> AsyncIterator[None]:
        """The app's lifespan manager; listed after the one that connects the bus."""
        await self.start()
        try:
            yield
        finally:
            await self.stop()
