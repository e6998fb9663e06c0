"""The generated module's tools as the front sees them: served by a sandboxed worker, over the channel.

`SandboxedServer` is the `MCPServer` clients talk to: it lists the tools the worker reported and forwards each
call to `SandboxedTools`, unless the runtime refuses the call first (over quota, see `metering.refusal_var`).

`SandboxedTools` starts (or reaches) the worker through a `Launcher`, loads the module into it and keeps the
tool list it reports. `call()` sends one `Call` and waits for its `Result`; meanwhile the worker may ask for
upstream requests (`Egress`), which are made here under the egress policy (`runner_template.egress`), with
the secrets only this process holds, at most `max_egress` at a time, and only for calls in flight.

The worker is not trusted: a frame that does not decode, a tool list other than the artifact's, or a result
later than the call's timeout (plus a grace for the worker's own answer) ends the worker; every call in
flight gets a tool error saying why, and a fresh worker is started (with backoff while starting fails).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from typing import Any

import pydantic
from mcp.server import MCPServer
from mcp.server.context import ServerMiddleware
from mcp.server.mcpserver.exceptions import ToolError
from mcp_types import CallToolResult, TextContent, Tool

from runner_template import RUNNER_TEMPLATE_VERSION, egress
from runner_template.channel import (
    Call,
    ChannelClosed,
    Egress,
    EgressAnswer,
    Frame,
    Load,
    Loaded,
    LoadFailed,
    Result,
    encode,
    read_frame,
)
from runner_template.metering import refusal_var
from runner_template.sandbox import Launcher, Opened

log = logging.getLogger("bmms.runner.tools")

GRACE_SECONDS = 5.0
"""How long after a call's timeout the front waits for the worker's own timeout answer before ending it."""


class ToolsUnavailable(Exception):
    """The worker could not be started or the module not loaded; the message says which and why."""


def tool_error(text: str) -> CallToolResult:
    """A tool error result (what the model sees)."""
    return CallToolResult(content=[TextContent(type="text", text=text)], is_error=True)


class SandboxedTools:
    """One server's tools, run by a worker in a sandbox (see the module doc)."""

    def __init__(self, launcher: Launcher, load: Load, policy: egress.UpstreamPolicy | None, *,
                 call_timeout: float = 60.0, start_timeout: float = 60.0, max_egress: int = 16) -> None:
        self.launcher = launcher
        self.load = load
        self.policy = policy
        self.call_timeout = call_timeout
        self.start_timeout = start_timeout
        self.tools: list[Tool] = []
        self.restarts = 0
        """How many times the worker was replaced after it failed."""
        self._egress_slots = asyncio.Semaphore(max_egress)
        self._opened: Opened | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self._pending: dict[int, asyncio.Future[CallToolResult]] = {}
        self._next_id = 0
        self._ready = asyncio.Event()
        self._closing = False
        self._restarting: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[Any]] = set()

    def input_schema(self, name: str) -> dict[str, Any] | None:
        """The input schema of tool `name`, or None."""
        return next((t.input_schema for t in self.tools if t.name == name), None)

    def read_only(self) -> dict[str, bool]:
        """Tool name -> whether it is read-only (decides the scope a caller needs)."""
        return {t.name: bool(t.annotations and t.annotations.read_only_hint) for t in self.tools}

    async def start(self) -> None:
        """Start the worker and load the module; ToolsUnavailable when either fails."""
        try:
            await asyncio.wait_for(self._connect(), self.start_timeout)
        except TimeoutError:
            raise ToolsUnavailable(f"the worker did not load the module within {self.start_timeout:g} s "
                                   f"({self.launcher.description})") from None

    async def _connect(self) -> None:
        try:
            opened = await self.launcher.open()
        except OSError as exc:
            raise ToolsUnavailable(f"cannot start the worker ({self.launcher.description}): {exc}") from None
        opened.writer.write(encode(self.load))
        try:
            answer = await read_frame(opened.reader)
        except ChannelClosed as exc:
            await opened.stop()
            raise ToolsUnavailable(f"the worker ended before it loaded the module ({exc})") from None
        if isinstance(answer, LoadFailed):
            await opened.stop()
            raise ToolsUnavailable(f"the module does not load: {answer.error}")
        if not isinstance(answer, Loaded):
            await opened.stop()
            raise ToolsUnavailable("the worker answered the load with something else")
        try:
            tools = [Tool.model_validate(t) for t in answer.tools]
        except pydantic.ValidationError as exc:
            await opened.stop()
            raise ToolsUnavailable(f"the worker listed unreadable tools: {exc.error_count()} error(s)") from None
        if [t.name for t in tools] != list(self.load.tools):
            await opened.stop()
            raise ToolsUnavailable(f"the worker lists {[t.name for t in tools]}, the artifact {list(self.load.tools)}")
        self.tools = tools
        self._opened = opened
        self._reader_task = asyncio.create_task(self._read(opened), name="worker-reader")
        self._ready.set()

    async def call(self, name: str, arguments: dict[str, Any]) -> CallToolResult:
        """Call tool `name`; its result, or a tool error saying why there is none."""
        try:
            await asyncio.wait_for(self._ready.wait(), self.call_timeout)
        except TimeoutError:
            return tool_error("the tools are restarting and did not come back in time; try again")
        opened = self._opened
        assert opened is not None
        self._next_id += 1
        call_id = self._next_id
        waiter: asyncio.Future[CallToolResult] = asyncio.get_running_loop().create_future()
        self._pending[call_id] = waiter
        opened.writer.write(encode(Call(id=call_id, tool=name, arguments=arguments,
                                        timeout_seconds=self.call_timeout)))
        try:
            return await asyncio.wait_for(asyncio.shield(waiter), self.call_timeout + GRACE_SECONDS)
        except TimeoutError:
            self._fail(opened, f"the worker did not answer tool {name!r} within {self.call_timeout:g} s")
            return tool_error(f"tool {name!r} did not finish within {self.call_timeout:g} s")
        finally:
            self._pending.pop(call_id, None)

    async def _read(self, opened: Opened) -> None:
        try:
            while True:
                frame = await read_frame(opened.reader)
                self._handle(opened, frame)
        except ChannelClosed as exc:
            self._fail(opened, f"the worker stopped ({exc})")

    def _handle(self, opened: Opened, frame: Frame) -> None:
        if isinstance(frame, Result):
            waiter = self._pending.get(frame.id)
            if waiter is None or waiter.done():
                return
            try:
                waiter.set_result(CallToolResult.model_validate(frame.result))
            except pydantic.ValidationError:
                waiter.set_result(tool_error("the tool's result could not be read"))
        elif isinstance(frame, Egress):
            task = asyncio.create_task(self._egress(opened, frame))
            self._background.add(task)
            task.add_done_callback(self._background.discard)
        else:
            self._fail(opened, f"the worker sent an unexpected {type(frame).__name__} frame")

    async def _egress(self, opened: Opened, request: Egress) -> None:
        if request.call_id not in self._pending:
            answer = EgressAnswer(id=request.id, refused=True, error="upstream calls are made only during a call")
        elif self.policy is None:
            answer = EgressAnswer(id=request.id, refused=True, error="this server has no upstream hosts")
        else:
            async with self._egress_slots:
                try:
                    value = await egress.perform(self.policy, request)
                    answer = EgressAnswer(id=request.id, value=value)
                except egress.UpstreamRefused as exc:
                    answer = EgressAnswer(id=request.id, refused=True, error=str(exc))
                except egress.UpstreamError as exc:
                    answer = EgressAnswer(id=request.id, error=str(exc))
                except Exception as exc:  # a malformed request from the worker must not end the front
                    log.warning("upstream request failed: %r", exc)
                    answer = EgressAnswer(id=request.id, error=f"{request.method} {request.url_template}: "
                                                               f"{type(exc).__name__}")
        if not opened.writer.is_closing():
            opened.writer.write(encode(answer))

    def _fail(self, opened: Opened, reason: str) -> None:
        """End the worker behind `opened` (once), fail its calls in flight, start a fresh one."""
        if self._opened is not opened:
            return
        self._opened = None
        self._ready.clear()
        for waiter in self._pending.values():
            if not waiter.done():
                waiter.set_result(tool_error(f"{reason}; the call was stopped"))
        log.warning("worker failed: %s", reason)
        stopping = asyncio.create_task(opened.stop())
        self._background.add(stopping)
        stopping.add_done_callback(self._background.discard)
        if not self._closing:
            self._restarting = asyncio.create_task(self._restart(), name="worker-restart")

    async def _restart(self) -> None:
        delay = 0.2
        while not self._closing:
            try:
                await asyncio.wait_for(self._connect(), self.start_timeout)
                self.restarts += 1
                return
            except (ToolsUnavailable, TimeoutError) as exc:
                log.error("cannot restart the worker: %s (again in %.1f s)", exc, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10.0)

    async def close(self) -> None:
        """End the worker and stop restarting it."""
        self._closing = True
        for task in (self._restarting, self._reader_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        opened, self._opened = self._opened, None
        if opened is not None:
            await opened.stop()
        for task in list(self._background):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


class SandboxedServer(MCPServer):
    """The front's `MCPServer`: the worker's tools, each call forwarded to it (see the module doc).

    `middleware` (e.g. `metering.ToolCallMeter`) sees every request. Authorization is not the SDK's here: the
    runner's HTTP layer (`runner_template.resource`) verifies tokens and per-tool scopes in front of it.
    """

    def __init__(self, tools: SandboxedTools, *, name: str, middleware: Sequence[ServerMiddleware[Any]] = ()) -> None:
        super().__init__(name=name, version=RUNNER_TEMPLATE_VERSION, middleware=middleware)
        self.sandboxed = tools

    async def list_tools(self) -> list[Tool]:
        return list(self.sandboxed.tools)

    def _tool_input_schema(self, name: str) -> dict[str, Any] | None:
        return self.sandboxed.input_schema(name)

    async def call_tool(self, name: str, arguments: dict[str, Any], context: Any = None) -> CallToolResult:
        if refusal := refusal_var.get():
            raise ToolError(refusal)
        if self.sandboxed.input_schema(name) is None:
            raise ToolError(f"Unknown tool: {name}")
        return await self.sandboxed.call(name, arguments)
