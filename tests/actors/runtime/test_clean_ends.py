"""An actor ends cleanly in every state (issue 17, point 3): `bmms actor` as a real process gives up with a clear
message when NATS refuses its credentials, takes its role's password from BMMS_NATS_PASS_<ROLE>, and stops on
SIGTERM within its drain timeout while it cannot reach NATS and while it drains with NATS gone."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

from nats.aio.client import Client

from actors.runtime.bus import connect, provision
from ops.infra import NATS_ROLES, free_port, new_nats_password, start_nats
from tests.conftest import Stack, eventually

DRAIN_TIMEOUT = 10.0
"""The actors' BMMS_DRAIN_TIMEOUT here: a stop that takes longer fails the test."""


class ActorProcess:
    """`bmms actor NAME` in its own OS process, its stderr collected line by line."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.lines: list[str] = []
        assert process.stderr is not None
        self._reading = asyncio.create_task(self._read(process.stderr))

    async def _read(self, stream: asyncio.StreamReader) -> None:
        while line := await stream.readline():
            self.lines.append(line.decode(errors="replace"))

    async def said(self, text: str) -> bool:
        return any(text in line for line in self.lines)

    async def exit_code(self, within: float) -> int:
        """The exit code, once it exited (a TimeoutError when it has not within `within` seconds)."""
        code = await asyncio.wait_for(self.process.wait(), within)
        await self._reading
        return code


@contextlib.asynccontextmanager
async def actor_process(name: str, env: dict[str, str]) -> AsyncIterator[ActorProcess]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "ops.cli", "actor", name, env={**env, "BMMS_DRAIN_TIMEOUT": str(DRAIN_TIMEOUT)},
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )
    try:
        yield ActorProcess(process)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


def without_nats_credentials(env: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in env.items()
            if k not in ("BMMS_NATS_USER", "BMMS_NATS_PASSWORD") and not k.startswith("BMMS_NATS_PASS_")}


async def serves(nc: Client, name: str) -> bool:
    """Whether a copy of actor `name` answers its service's ping."""
    try:
        await nc.request(f"$SRV.PING.{name}", b"", timeout=0.5)
    except Exception:
        return False
    return True


async def test_an_actor_whose_credentials_nats_refuses_exits_saying_which_variables_to_set(stack: Stack) -> None:
    env = {**stack.env("planner"), "BMMS_NATS_PASSWORD": "not-the-password"}
    async with actor_process("planner", env) as actor:
        assert await actor.exit_code(within=60) == 1
    said = "".join(actor.lines)
    assert ("NATS refused the credentials for user planner: set BMMS_NATS_USER/BMMS_NATS_PASSWORD or "
            "BMMS_NATS_PASS_PLANNER") in said, said


async def test_an_actor_takes_its_role_password_from_bmms_nats_pass_role(stack: Stack, admin_nc: Client) -> None:
    env = {**without_nats_credentials(stack.env("planner")), "BMMS_NATS_PASS_PLANNER": stack.nats.passwords["planner"]}
    async with actor_process("planner", env) as actor:
        await eventually(lambda: serves(admin_nc, "planner"), timeout=60)
        actor.process.send_signal(signal.SIGTERM)
        assert await actor.exit_code(within=DRAIN_TIMEOUT) == 0


async def test_sigterm_stops_an_actor_that_cannot_reach_nats(stack: Stack) -> None:
    env = {**stack.env("codegen"), "BMMS_NATS_URL": f"nats://127.0.0.1:{free_port()}"}  # nothing listens there
    async with actor_process("codegen", env) as actor:
        await eventually(lambda: actor.said("nats error"), timeout=60)
        actor.process.send_signal(signal.SIGTERM)
        assert await actor.exit_code(within=DRAIN_TIMEOUT) == 0


async def test_sigterm_stops_an_actor_draining_after_its_nats_went_away(tmp_path: Path, stack: Stack) -> None:
    passwords = {role: new_nats_password() for role in NATS_ROLES}
    server = start_nats(tmp_path / "nats", passwords)
    try:
        admin = stack.settings("admin", nats_url=server.url, nats_password=passwords["admin"])
        nc = await connect(admin, "test-clean-ends")
        await provision(nc.jetstream())
        env = {**stack.env("planner"), "BMMS_NATS_URL": server.url, "BMMS_NATS_PASSWORD": passwords["planner"]}
        async with actor_process("planner", env) as actor:
            await eventually(lambda: serves(nc, "planner"), timeout=60)
            await nc.close()
            server.stop()  # the actor now reconnects, forever, to a bus that is gone
            await eventually(lambda: actor.said("disconnected from nats"), timeout=30)
            actor.process.send_signal(signal.SIGTERM)
            assert await actor.exit_code(within=DRAIN_TIMEOUT) == 0
    finally:
        server.stop()

