"""How operator commands (`bmms migrate`, `events`, `apikey`) reach the platform.

Addresses and credentials come from the environment when it names them, otherwise from the data dir of a
`bmms dev` stack: its per-role NATS passwords (secrets/nats-passwords.json) and the addresses it records
while running (run/stack.json). So in dev, a second terminal needs no configuration at all.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import msgspec
from nats.aio.client import Client

from actors.runtime.bus import connect
from actors.runtime.settings import Settings, load_settings
from ops.infra import NATS_ROLES

PASSWORDS_FILE = Path("secrets") / "nats-passwords.json"
"""Per-role NATS passwords of a dev stack, relative to its data dir."""

DEV_API_KEY_FILE = Path("secrets") / "dev-api-key"
"""The dev organisation's API key, relative to the data dir."""

STACK_FILE = Path("run") / "stack.json"
"""Where a running `bmms dev` records its addresses and process ids, relative to the data dir."""

CONNECT_TIMEOUT = 10.0
"""Seconds an operator command waits for NATS before saying it is unreachable."""


class OperatorError(Exception):
    """A command cannot run as configured; the message says what to change."""


class StackRecord(msgspec.Struct, kw_only=True):
    """What a running `bmms dev` tells other commands about itself."""

    pid: int
    nats_url: str
    database_url: str
    gateway_url: str | None = None
    pids: dict[str, int] = {}
    """Process id of every process the stack runs (nats-server, postgres, each actor, gateway)."""


@dataclass(frozen=True)
class Environment:
    """Everything a `bmms` process reads from its environment, read once in `main`."""

    settings: Settings
    explicit: frozenset[str] = frozenset()
    """The Settings fields whose BMMS_* variable was set (as opposed to defaulted)."""
    role_passwords: dict[str, str] = field(default_factory=dict)
    """Per-role NATS passwords from BMMS_NATS_PASS_<ROLE> (the variables nats.conf reads)."""
    data_dir: Path = Path(".bmms")

    @classmethod
    def from_environ(cls, environ: Mapping[str, str], data_dir: str | None = None) -> Environment:
        """Read settings and role passwords; `data_dir` (a command-line flag) overrides BMMS_DATA_DIR."""
        settings = load_settings(environ)
        explicit = frozenset(n for n in Settings.__struct_fields__ if f"BMMS_{n.upper()}" in environ)
        passwords = {
            role: environ[f"BMMS_NATS_PASS_{role.upper()}"]
            for role in NATS_ROLES
            if f"BMMS_NATS_PASS_{role.upper()}" in environ
        }
        root = Path(data_dir or settings.data_dir).expanduser().absolute()
        return cls(settings=settings, explicit=explicit, role_passwords=passwords, data_dir=root)

    def running_stack(self) -> StackRecord | None:
        """The record of a `bmms dev` running on this data dir, if one is there."""
        path = self.data_dir / STACK_FILE
        if not path.exists():
            return None
        return msgspec.json.decode(path.read_bytes(), type=StackRecord)

    def nats_url(self) -> str:
        """BMMS_NATS_URL when set, else the dev stack's, else the default."""
        if "nats_url" in self.explicit:
            return self.settings.nats_url
        stack = self.running_stack()
        return stack.nats_url if stack else self.settings.nats_url

    def database_url(self) -> str:
        """BMMS_DATABASE_URL when set, else the dev stack's; raises OperatorError when neither exists."""
        if self.settings.database_url:
            return self.settings.database_url
        stack = self.running_stack()
        if stack:
            return stack.database_url
        raise OperatorError("no database: set BMMS_DATABASE_URL, or start `bmms dev` on this data dir")

    def password_for(self, role: str) -> str:
        """The NATS password of `role`: BMMS_NATS_PASS_<ROLE>, else the dev data dir's passwords file."""
        if role in self.role_passwords:
            return self.role_passwords[role]
        path = self.data_dir / PASSWORDS_FILE
        if path.exists():
            stored: dict[str, str] = json.loads(path.read_text())
            if role in stored:
                return stored[role]
        raise OperatorError(
            f"no NATS credentials for role {role!r}: set BMMS_NATS_USER and BMMS_NATS_PASSWORD, or "
            f"BMMS_NATS_PASS_{role.upper()}, or point --data-dir at a `bmms dev` data dir ({path} is missing)"
        )

    def as_role(self, role: str) -> Settings:
        """Settings for acting as `role`; explicit BMMS_NATS_USER/BMMS_NATS_PASSWORD win (the operator chose)."""
        if self.settings.nats_user:
            return msgspec.structs.replace(self.settings, nats_url=self.nats_url())
        return msgspec.structs.replace(
            self.settings, nats_url=self.nats_url(), nats_user=role, nats_password=self.password_for(role)
        )


async def connect_as(settings: Settings, name: str) -> Client:
    """Connect for a short-lived command; unlike actors, give up when NATS does not answer."""
    try:
        return await asyncio.wait_for(connect(settings, name), CONNECT_TIMEOUT)
    except TimeoutError:
        raise OperatorError(
            f"NATS at {settings.nats_url} did not answer within {CONNECT_TIMEOUT:.0f}s "
            "(is `bmms dev` running, or BMMS_NATS_URL set?)"
        ) from None


def write_private(path: Path, text: str) -> None:
    """Write a secret file readable only by its owner (mode 0600 from creation, never wider)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
