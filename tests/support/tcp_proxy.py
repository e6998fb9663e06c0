"""A TCP proxy on a free loopback port in front of a real server (PostgreSQL), that a test can cut: an outage of
the network path to a dependency, while the dependency itself (shared by every test) keeps running."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit


class TcpProxy:
    """Forwards each connection to `target`; `cut()` drops every open connection and closes new ones at once
    (counting them in `refused`), `mend()` forwards again."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        """Host and port, or a Unix socket directory (PostgreSQL's `host=/dir`) and port."""
        self.port = 0
        self.refused = 0
        """Connections closed unanswered while cut: how often a client tried."""
        self._up = True
        self._open: set[asyncio.StreamWriter] = set()

    def cut(self) -> None:
        """The path is down: open connections drop, new ones close at once."""
        self._up = False
        for writer in list(self._open):
            writer.transport.abort()
        self._open.clear()

    def mend(self) -> None:
        """The path is back."""
        self._up = True

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.CancelledError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.transport.abort()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not self._up:
            self.refused += 1
            writer.transport.abort()
            return
        host, port = self.target
        try:
            if host.startswith("/"):
                up_reader, up_writer = await asyncio.open_unix_connection(f"{host}/.s.PGSQL.{port}")
            else:
                up_reader, up_writer = await asyncio.open_connection(host, port)
        except OSError:
            writer.transport.abort()
            return
        self._open.update((writer, up_writer))
        try:
            await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))
        finally:
            self._open.discard(writer)
            self._open.discard(up_writer)


@contextlib.asynccontextmanager
async def proxied_dsn(dsn: str) -> AsyncIterator[tuple[str, TcpProxy]]:
    """A proxy in front of the PostgreSQL server of `dsn` (TCP, or a Unix socket as `?host=/dir`), and the DSN
    through it."""
    parts = urlsplit(dsn)
    query = dict(parse_qsl(parts.query))
    socket_dir = query.pop("host", "")
    host = socket_dir if socket_dir.startswith("/") else parts.hostname or "127.0.0.1"
    proxy = TcpProxy(host, parts.port or 5432)
    server = await asyncio.start_server(proxy._handle, "127.0.0.1", 0)
    proxy.port = server.sockets[0].getsockname()[1]
    userinfo = parts.netloc.rpartition("@")[0]
    netloc = f"{userinfo}@127.0.0.1:{proxy.port}" if userinfo else f"127.0.0.1:{proxy.port}"
    try:
        yield urlunsplit(parts._replace(netloc=netloc, query=urlencode(query))), proxy
    finally:
        proxy.cut()
        server.close()
        await server.wait_closed()
