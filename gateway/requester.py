"""Request/reply for a process that asks a lot: a NATS connection of its own, spoken directly.

nats-py's `Client.request` is correct but costs more than it needs on a hot path. A reply passes through the
client's read-loop task (a stream reader), a queue and a subscription task before the asker wakes, and a
request waits for the flusher task to write it: three task switches and a parse in Python per round trip.
`Requester` speaks only the part of the NATS client protocol that request/reply needs (INFO, CONNECT, SUB,
PUB/HPUB, MSG/HMSG, PING/PONG, -ERR) over an `asyncio.Protocol`: a reply resolves its asker's future inside
`data_received`, and the requests of one event-loop step leave in one write.

`Requester.request` has `Client.request`'s signature and failures (`nats.errors.TimeoutError`,
`nats.errors.NoRespondersError`), so `actors.runtime.bus.call` takes either. It reconnects on its own; a
request in flight when the connection drops fails at once (`nats.errors.ConnectionClosedError`), and one
made while it is down waits for the connection within its own timeout (then fails with
`nats.errors.ConnectionReconnectingError`: the bus, not an actor, is out of reach). It speaks plain TCP only (no TLS):
for a `tls://` server `for_settings` hands back the fallback it is given (the gateway's nats-py connection).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import re
import secrets
from typing import Any, cast
from urllib.parse import unquote, urlsplit

import nats.errors

from actors.runtime.settings import Settings
from runner_template.rpc import Requests

log = logging.getLogger("bmms.requests")

NO_RESPONDERS = "503"
STATUS_HEADER = "Status"
DESCRIPTION_HEADER = "Description"
_STATUS_LINE = b"NATS/1.0"
_WHITESPACE = re.compile(r"\s")


class Reply:
    """A reply: its payload, and its headers (with the server's status as `Status`, as nats-py gives it)."""

    __slots__ = ("data", "headers")

    def __init__(self, data: bytes, headers: dict[str, str] | None) -> None:
        self.data = data
        self.headers = headers


def parse_headers(block: bytes) -> dict[str, str]:
    """A NATS header block (`NATS/1.0[ status[ description]]\\r\\nKey: value\\r\\n...\\r\\n\\r\\n`)."""
    first, *lines = block.split(b"\r\n")
    headers: dict[str, str] = {}
    status = first[len(_STATUS_LINE):].strip()
    if status:
        code, _, description = status.partition(b" ")
        headers[STATUS_HEADER] = code.decode()
        if description:
            headers[DESCRIPTION_HEADER] = description.decode()
    for line in lines:
        name, colon, value = line.partition(b":")
        if colon:
            headers[name.strip().decode()] = value.strip().decode()
    return headers


def header_block(headers: dict[str, Any]) -> bytes:
    """Headers as a NATS header block; a name must be a token and a value loses its line breaks."""
    parts = [_STATUS_LINE]
    for name, value in headers.items():
        key = str(name).strip()
        if not key or any(c in key for c in ": \r\n\t"):
            raise nats.errors.BadHeaderError(key)
        parts.append(f"{key}: {str(value).strip().replace(chr(13), ' ').replace(chr(10), ' ')}".encode())
    return b"\r\n".join(parts) + b"\r\n\r\n"


def _servers(urls: str) -> list[tuple[str, int, str | None, str | None]]:
    """(host, port, user, password) of each comma-separated server URL (`nats://[user:pass@]host[:port]`)."""
    servers = []
    for url in urls.split(","):
        parts = urlsplit(url.strip() if "://" in url else f"nats://{url.strip()}")
        user = unquote(parts.username) if parts.username else None
        password = unquote(parts.password) if parts.password else None
        servers.append((parts.hostname or "127.0.0.1", parts.port or 4222, user, password))
    return servers


def _expire(future: asyncio.Future[Reply]) -> None:
    if not future.done():
        future.set_exception(nats.errors.TimeoutError())


class _Connection(asyncio.Protocol):
    """One TCP connection to a NATS server: the handshake, and the parsing of what the server sends."""

    def __init__(self, owner: Requester) -> None:
        self.owner = owner
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        loop = asyncio.get_running_loop()
        self.info: asyncio.Future[dict[str, Any]] = loop.create_future()
        self.pong: asyncio.Future[None] = loop.create_future()
        """The first PONG: the server has taken CONNECT and SUB."""
        self.error: str | None = None
        """The last -ERR the server sent."""
        self.outstanding_pings = 0
        self.lost: asyncio.Future[None] = loop.create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass asyncio's

    def connection_lost(self, exc: Exception | None) -> None:
        for future in (self.info, self.pong):
            if not future.done():
                future.set_exception(ConnectionError(self.error or f"the connection closed ({exc or 'eof'})"))
        if not self.lost.done():
            self.lost.set_result(None)
        self.owner._connection_lost(self)

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer
        buffer += data
        pos = 0
        deliver = self.owner._deliver
        while True:
            end = buffer.find(b"\r\n", pos)
            if end < 0:
                break
            if buffer.startswith(b"MSG ", pos):
                # MSG <subject> <sid> [reply-to] <size>
                parts = buffer[pos + 4 : end].split(b" ")
                start = end + 2
                stop = start + int(parts[-1])
                if len(buffer) < stop + 2:
                    break  # the payload has not all arrived
                deliver(bytes(parts[0]), bytes(buffer[start:stop]), None)
                pos = stop + 2
            elif buffer.startswith(b"HMSG ", pos):
                # HMSG <subject> <sid> [reply-to] <header size> <total size>
                parts = buffer[pos + 5 : end].split(b" ")
                start = end + 2
                split = start + int(parts[-2])
                stop = start + int(parts[-1])
                if len(buffer) < stop + 2:
                    break
                deliver(bytes(parts[0]), bytes(buffer[split:stop]), parse_headers(bytes(buffer[start:split])))
                pos = stop + 2
            else:
                self._control(bytes(buffer[pos:end]))
                pos = end + 2
        del buffer[:pos]

    def _control(self, line: bytes) -> None:
        if line == b"PING":
            self.write(b"PONG\r\n")
        elif line == b"PONG":
            self.outstanding_pings = 0
            if not self.pong.done():
                self.pong.set_result(None)
        elif line.startswith(b"INFO "):
            if not self.info.done():
                self.info.set_result(json.loads(line[5:]))
        elif line.startswith(b"-ERR"):
            self.error = line[4:].strip().strip(b"'").decode(errors="replace")
            log.warning("nats server error on the request connection: %s", self.error)
        # +OK (never asked for: verbose is off) and anything else carries nothing for us


class Requester:
    """Requests whose replies come to `<inbox prefix>.<unique>.<n>`, all through one subscription on a
    connection of the requester's own.

    `start()` connects (and raises ConnectionError saying why when no server takes the connection); afterwards
    a lost connection is re-established in the background, every `reconnect_wait` seconds, until `close()`."""

    def __init__(
        self, servers: str, *, user: str | None = None, password: str | None = None, name: str = "bmms",
        inbox_prefix: str = "_INBOX", connect_timeout: float = 5.0, reconnect_wait: float = 0.5,
        ping_interval: float = 120.0, max_outstanding_pings: int = 2, max_buffered: int = 8 * 1024 * 1024,
    ) -> None:
        self.servers = _servers(servers)
        self.user = user
        self.password = password
        self.name = name
        self.connect_timeout = connect_timeout
        self.reconnect_wait = reconnect_wait
        self.ping_interval = ping_interval
        self.max_outstanding_pings = max_outstanding_pings
        self.max_buffered = max_buffered
        self._prefix = f"{inbox_prefix}.{secrets.token_hex(11)}."
        self._prefix_bytes = self._prefix.encode()
        self._waiting: dict[bytes, asyncio.Future[Reply]] = {}
        self._next = 0
        self._connection: _Connection | None = None
        self._connected = asyncio.Event()
        self._pending: list[bytes] = []
        self._flush_scheduled = False
        self._closed = False
        self._reconnecting: asyncio.Task[None] | None = None
        self._pinging: asyncio.Task[None] | None = None
        self._max_payload = 1024 * 1024
        self._last_error = ""
        self._loop: asyncio.AbstractEventLoop | None = None
        """Set by `start`; kept, because `asyncio.get_running_loop()` costs a getpid() system call."""

    @classmethod
    async def for_settings(cls, settings: Settings, name: str, tls_fallback: Requests | None = None) -> Requests:
        """A started Requester on the process's NATS server as its user (each role reads replies only under its
        own inbox prefix, see nats.conf); for a `tls://` server, which it does not speak, `tls_fallback`."""
        if any(urlsplit(u.strip()).scheme == "tls" for u in settings.nats_url.split(",")):
            if tls_fallback is None:
                raise ConnectionError("the Requester speaks plain TCP only; the NATS server is tls://")
            return tls_fallback
        requester = cls(settings.nats_url, user=settings.nats_user, password=settings.nats_password, name=name,
                        inbox_prefix=settings.inbox_prefix)
        await requester.start()
        return requester

    @property
    def is_connected(self) -> bool:
        """Whether requests go out now."""
        return self._connected.is_set()

    async def start(self) -> None:
        """Connect to the first server that takes the connection; raises ConnectionError saying why when none
        does (refused, timed out, or what the server said, e.g. `Authorization Violation`)."""
        self._loop = asyncio.get_running_loop()
        if not await self._connect_once():
            raise ConnectionError(f"no NATS server took the request connection: {self._last_error}")
        self._pinging = asyncio.create_task(self._ping_loop())

    async def close(self) -> None:
        """Fail what is in flight, stop reconnecting and close the connection."""
        self._closed = True
        for task in (self._reconnecting, self._pinging):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        connection = self._connection
        self._connection = None
        self._connected.clear()
        self._fail_waiting(nats.errors.ConnectionClosedError())
        if connection is not None and connection.transport is not None:
            connection.transport.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(connection.lost), 1.0)

    async def request(
        self, subject: str, payload: bytes = b"", timeout: float = 0.5, old_style: bool = False,
        headers: dict[str, Any] | None = None,
    ) -> Reply:
        """Publish `payload` (with `headers`) to `subject` and return the first reply; `old_style` is accepted
        for the `Requests` signature and ignored (replies always share the one subscription)."""
        del old_style
        if self._closed:
            raise nats.errors.ConnectionClosedError
        if not subject or _WHITESPACE.search(subject):
            raise nats.errors.BadSubjectError
        if len(payload) > self._max_payload:
            raise nats.errors.MaxPayloadError
        loop = self._loop
        if loop is None:
            raise RuntimeError("Requester.start() was not awaited")
        if not self._connected.is_set():
            deadline = loop.time() + timeout
            try:
                async with asyncio.timeout(timeout):
                    await self._connected.wait()
            except TimeoutError:
                # Not a timeout of whoever was asked: nobody was, the bus is out of reach.
                raise nats.errors.ConnectionReconnectingError from None
            timeout = max(deadline - loop.time(), 0.0)  # the wait counts against the request's timeout
        self._next += 1
        token = str(self._next).encode()
        reply_to = self._prefix_bytes + token
        if headers:
            block = header_block(headers)
            command = b"HPUB %s %s %d %d\r\n" % (subject.encode(), reply_to, len(block), len(block) + len(payload))
            self._send(loop, command + block + payload + b"\r\n")
        else:
            self._send(loop, b"PUB %s %s %d\r\n%s\r\n" % (subject.encode(), reply_to, len(payload), payload))
        future: asyncio.Future[Reply] = loop.create_future()
        self._waiting[token] = future
        timer = loop.call_later(timeout, _expire, future)
        try:
            reply = await future
        finally:
            timer.cancel()
            del self._waiting[token]
        if reply.headers and reply.headers.get(STATUS_HEADER) == NO_RESPONDERS:
            raise nats.errors.NoRespondersError
        return reply

    # --- sending

    def _send(self, loop: asyncio.AbstractEventLoop, command: bytes) -> None:
        connection = self._connection
        if connection is None or connection.transport is None:
            raise nats.errors.ConnectionClosedError
        if connection.transport.get_write_buffer_size() > self.max_buffered:
            raise nats.errors.OutboundBufferLimitError
        self._pending.append(command)
        if not self._flush_scheduled:
            # Everything asked in this event-loop step leaves in one write.
            self._flush_scheduled = True
            loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        pending, self._pending = self._pending, []
        if self._connection is not None and pending:
            self._connection.write(pending[0] if len(pending) == 1 else b"".join(pending))

    # --- receiving

    def _deliver(self, subject: bytes, data: bytes, headers: dict[str, str] | None) -> None:
        if not subject.startswith(self._prefix_bytes):
            return
        future = self._waiting.get(subject[len(self._prefix_bytes):])
        if future is not None and not future.done():
            future.set_result(Reply(data, headers))

    def _fail_waiting(self, error: Exception) -> None:
        for future in self._waiting.values():
            if not future.done():
                future.set_exception(error)

    # --- the connection

    async def _connect_once(self) -> bool:
        loop = asyncio.get_running_loop()
        for host, port, user, password in self.servers:
            connection: _Connection | None = None
            try:
                async with asyncio.timeout(self.connect_timeout):
                    _, connection = await loop.create_connection(lambda: _Connection(self), host, port)
                    info = await connection.info
                    if info.get("tls_required"):
                        raise ConnectionError("the server requires TLS, which the Requester does not speak")
                    self._max_payload = int(info.get("max_payload", self._max_payload))
                    connection.write(self._handshake(self.user or user, self.password or password))
                    await connection.pong
                    if connection.error is not None:
                        # e.g. a permissions violation on the reply subscription: no reply would ever come
                        raise ConnectionError(connection.error)
            except (OSError, TimeoutError, ValueError) as exc:
                self._last_error = f"{host}:{port}: {exc or type(exc).__name__}"
                log.warning("request connection to %s failed", self._last_error)
                if connection is not None and connection.transport is not None:
                    connection.transport.close()
                continue
            self._connection = connection
            self._connected.set()
            return True
        return False

    def _handshake(self, user: str | None, password: str | None) -> bytes:
        options: dict[str, Any] = {
            "verbose": False, "pedantic": False, "tls_required": False, "name": self.name, "lang": "python3",
            "version": "bmms-requester", "protocol": 1, "headers": True, "no_responders": True,
        }
        if user is not None:
            options["user"] = user
        if password is not None:
            options["pass"] = password
        return b"CONNECT %s\r\nSUB %s* 1\r\nPING\r\n" % (json.dumps(options).encode(), self._prefix_bytes)

    def _connection_lost(self, connection: _Connection) -> None:
        if connection is not self._connection:
            return  # a handshake that failed, or a connection already replaced
        self._connection = None
        self._connected.clear()
        self._pending.clear()
        # Their replies would come to a subscription that is gone: nothing will answer them.
        self._fail_waiting(nats.errors.ConnectionClosedError())
        if not self._closed and (self._reconnecting is None or self._reconnecting.done()):
            log.warning("request connection to nats lost; reconnecting")
            self._reconnecting = asyncio.create_task(self._reconnect())

    async def _reconnect(self) -> None:
        while not self._closed:
            # Jittered, so many gateways do not return to a restarted server in step.
            await asyncio.sleep(self.reconnect_wait * (0.5 + random.random()))
            if await self._connect_once():
                log.info("request connection to nats restored")
                return

    async def _ping_loop(self) -> None:
        # A connection that stopped answering (a dead peer behind a quiet network) is closed and replaced.
        while True:
            await asyncio.sleep(self.ping_interval)
            connection = self._connection
            if connection is None:
                continue
            if connection.outstanding_pings >= self.max_outstanding_pings:
                log.warning("nats did not answer %d pings on the request connection", connection.outstanding_pings)
                if connection.transport is not None:
                    connection.transport.close()
                continue
            connection.outstanding_pings += 1
            connection.write(b"PING\r\n")

