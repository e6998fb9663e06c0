"""Outgoing mail of the auth actor: SMTP when `BMMS_SMTP_URL` is set, else the log (development)."""

from __future__ import annotations

import asyncio
import logging
import smtplib
import ssl
from dataclasses import dataclass
from email.message import EmailMessage
from urllib.parse import unquote, urlsplit

log = logging.getLogger("bmms.auth.mail")


@dataclass(frozen=True)
class Mail:
    """One plain-text message."""

    to: str
    subject: str
    body: str


class Mailer:
    """Sends mail in the background, so an RPC answers in the same time whatever the SMTP server does.

    Without an SMTP URL the message is written to the log instead (that is how `bmms dev` signs in)."""

    def __init__(self, smtp_url: str | None, sender: str, timeout: float = 20.0) -> None:
        self.smtp_url = smtp_url
        self.sender = sender
        self.timeout = timeout
        self._pending: set[asyncio.Task[None]] = set()
        if smtp_url is not None:
            scheme = urlsplit(smtp_url).scheme
            if scheme not in ("smtp", "smtps"):
                raise ValueError(f"BMMS_SMTP_URL must be smtp:// or smtps://, not {scheme}://")

    def send(self, mail: Mail) -> None:
        """Queue `mail`; failures are logged, never raised to the caller."""
        task = asyncio.create_task(self._deliver(mail))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def close(self, timeout: float = 10.0) -> None:
        """Give queued mail up to `timeout` seconds to go out."""
        if self._pending:
            await asyncio.wait(set(self._pending), timeout=timeout)

    async def _deliver(self, mail: Mail) -> None:
        if self.smtp_url is None:
            log.warning("BMMS_SMTP_URL is not set; mail to %s not sent, it reads:\n%s", mail.to, mail.body)
            return
        try:
            await asyncio.to_thread(self._send_smtp, self.smtp_url, mail)
        except (OSError, smtplib.SMTPException) as exc:
            log.error("could not send mail to %s: %s", mail.to, exc)
        else:
            log.info("sent %r to %s", mail.subject, mail.to)

    def _send_smtp(self, url: str, mail: Mail) -> None:
        parts = urlsplit(url)
        message = EmailMessage()
        message["From"] = self.sender
        message["To"] = mail.to
        message["Subject"] = mail.subject
        message.set_content(mail.body)
        host = parts.hostname or "localhost"
        context = ssl.create_default_context()
        smtp: smtplib.SMTP
        if parts.scheme == "smtps":
            smtp = smtplib.SMTP_SSL(host, parts.port or 465, timeout=self.timeout, context=context)
        else:
            smtp = smtplib.SMTP(host, parts.port or 25, timeout=self.timeout)
        with smtp:
            smtp.ehlo()
            if parts.scheme == "smtp" and smtp.has_extn("starttls"):
                smtp.starttls(context=context)
                smtp.ehlo()
            if parts.username:
                smtp.login(unquote(parts.username), unquote(parts.password or ""))
            smtp.send_message(message)
