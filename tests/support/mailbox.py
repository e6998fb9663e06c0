"""A real SMTP server on a free port that keeps what it receives, so tests read sign-in mail the way a
person would (the auth actor sends it with smtplib, unchanged)."""

from __future__ import annotations

import asyncio
import contextlib
import email
import email.policy
import re
from collections.abc import AsyncIterator
from email.message import EmailMessage

LINK_TOKEN = re.compile(r"[?&]token=(bmms_link_[A-Za-z0-9_-]{43})")


class Mailbox:
    """Every message received, by recipient."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, EmailMessage]] = []
        self._arrived = asyncio.Condition()
        self.url = ""

    async def receive(self, rcpts: list[str], data: bytes) -> None:
        message = email.message_from_bytes(data, policy=email.policy.default)
        assert isinstance(message, EmailMessage)
        async with self._arrived:
            self.messages.extend((r.lower(), message) for r in rcpts)
            self._arrived.notify_all()

    def count(self, to: str) -> int:
        """How many messages `to` received so far."""
        return sum(1 for r, _ in self.messages if r == to.lower())

    async def next_for(self, to: str, after: int = 0, timeout: float = 10.0) -> EmailMessage:
        """The first message to `to` beyond the first `after` ones, waiting up to `timeout` seconds."""
        async with asyncio.timeout(timeout), self._arrived:
            await self._arrived.wait_for(lambda: self.count(to) > after)
        return [m for r, m in self.messages if r == to.lower()][after]

    async def link_token(self, to: str, after: int = 0) -> str:
        """The magic-link token in the next message to `to`."""
        message = await self.next_for(to, after)
        body = message.get_body(("plain",))
        assert body is not None
        match = LINK_TOKEN.search(body.get_content())
        assert match, body.get_content()
        return match.group(1)


async def _session(mailbox: Mailbox, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    rcpts: list[str] = []

    async def reply(line: str) -> None:
        writer.write(line.encode() + b"\r\n")
        await writer.drain()

    try:
        await reply("220 localhost test SMTP")
        while line := await reader.readline():
            command = line.decode().strip()
            verb = command[:4].upper()
            if verb == "EHLO":
                await reply("250-localhost\r\n250 8BITMIME")
            elif verb in ("HELO", "NOOP"):
                await reply("250 ok")
            elif verb == "MAIL":
                rcpts = []
                await reply("250 ok")
            elif verb == "RCPT":
                rcpts.append(command.split(":", 1)[1].strip().strip("<>"))
                await reply("250 ok")
            elif verb == "DATA":
                await reply("354 end with <CRLF>.<CRLF>")
                lines: list[bytes] = []
                while (data_line := await reader.readline()) not in (b".\r\n", b""):
                    lines.append(data_line[1:] if data_line.startswith(b"..") else data_line)
                await mailbox.receive(rcpts, b"".join(lines))
                await reply("250 queued")
            elif verb == "RSET":
                rcpts = []
                await reply("250 ok")
            elif verb == "QUIT":
                await reply("221 bye")
                break
            else:
                await reply("502 not implemented")
    finally:
        writer.close()


@contextlib.asynccontextmanager
async def local_smtp() -> AsyncIterator[Mailbox]:
    """An SMTP server on 127.0.0.1 and a free port; `mailbox.url` is its `smtp://` URL."""
    mailbox = Mailbox()
    server = await asyncio.start_server(lambda r, w: _session(mailbox, r, w), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    mailbox.url = f"smtp://127.0.0.1:{port}"
    async with server:
        yield mailbox
