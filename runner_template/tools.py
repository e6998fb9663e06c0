"""The generated module's tools as the front sees them: served by a sandboxed worker, over the channel.

`SandboxedServer` is the `MCPServer` clients talk to: it lists the tools the worker reported and forwards each
call to `SandboxedTools`, unless the runtime refuses the call first (over quota, see `metering.refusal_var`).

`SandboxedTools` starts (or reaches) the worker through a `Launcher`, loads the module into it and keeps the
tool list it reports. `call()` sends one `Call` and waits for its `Result`; meanwhile the worker may ask for
upstream requests (`Egress`), which are made here under the egress policy (`runner_template.egress`), with
the secrets only this process holds, at most `max_egress` at a time, and only for calls in flight.

The worker is not trusted: a frame that does not decode or is over the size limit, a tool list other than the
artifact's, or a result later than the call's time limit ends the tool process: every call in flight gets a
tool error saying why, the warden is asked to end every tool process of the sandbox (`Restart`) and a fresh
one attaches; where that fails (or the worker has no warden to ask), a whole new worker is started, with
backoff while starting fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import pydantic
from mcp.server import MCPServer
from mcp.server.context import ServerMiddleware
from mcp.server.mcpserver.exceptions import ToolError
from mcp_types import CallToolResult, TextContent, Tool

from bus_schemas.plans import Artifact
from runner_template import RUNNER_TEMPLATE_VERSION, egress
from runner_template.arguments import checkers_for
from runner_template.channel import (
    FRAME_SLACK,
    Attach,
    Call,
    ChannelClosed,
    Egress,
    EgressAnswer,
    Frame,
    Load,
    Loaded,
    LoadFailed,
    Ready,
    Restart,
    Restarted,
    Result,
    Streams,
    encode,
    read_frame,
)
from runner_template.metering import refusal_var
from runner_template.sandbox import Launcher, Opened

log = logging.getLogger("bmms.runner.tools")



class ToolsUnavailable(Exception):
    """The worker could not be started or the module not loaded; the message says which and why."""


def load_for(artifact: Artifact, name: str | None = None) -> Load:
    """The `Load` that puts `artifact`'s module into a worker."""
    return Load(module_name=artifact.module_name, module_source=artifact.module_source, tools=artifact.tools,
                server_name=name or artifact.module_name)


def tool_error(text: str) -> CallToolResult:
    """A tool error result (what the model sees)."""
    return CallToolResult(content=[TextContent(type="text", text=text)], is_error=True)


class SandboxedTools:
    """One server's tools, run by a worker in a sandbox (see the module doc)."""

    def __init__(self, launcher: Launcher, load: Load, policy: egress.UpstreamPolicy | None, *,
                 call_timeout: float = 60.0, start_timeout: float = 60.0, max_egress: int = 16,
                 input_schemas: Mapping[str, Mapping[str, Any]] | None = None,
                 output_schemas: Mapping[str, Mapping[str, Any]] | None = None) -> None:
        self.launcher = launcher
        self.load = load
        self.input_schemas = {name: dict(schema) for name, schema in (input_schemas or {}).items()}
        """Tool name -> the input schema served and checked (the plan's); a tool without one keeps the worker's."""
        self.output_schemas = {name: dict(schema) for name, schema in (output_schemas or {}).items()}
        """Tool name -> the output schema served, every result checked against it (a tool without one has none)."""
        try:
            self._checkers = checkers_for(self.input_schemas)
            self._output_checkers = checkers_for(self.output_schemas, "output")
        except ValueError as exc:
            raise ToolsUnavailable(str(exc)) from None
        self.policy = policy
        self.call_timeout = call_timeout
        self.start_timeout = start_timeout
        self.tools: list[Tool] = []
        self.restarts = 0
        """How many times a tool process (or the whole worker) was replaced after it failed."""
        self._egress_slots = asyncio.Semaphore(max_egress)
        self._opened: Opened | None = None
        self._control: Streams | None = None
        self._session = ""
        self._data: asyncio.StreamWriter | None = None
        self._pending: dict[int, asyncio.Future[CallToolResult]] = {}
        self._next_id = 0
        self._ready = asyncio.Event()
        self._closing = False
        self._recovering: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[Any]] = set()

    def input_schema(self, name: str) -> dict[str, Any] | None:
        """The input schema of tool `name`, or None."""
        return next((t.input_schema for t in self.tools if t.name == name), None)

    def argument_problem(self, name: str, arguments: Mapping[str, Any]) -> str | None:
        """What is wrong with a call's arguments against the tool's served schema, or None."""
        checker = self._checkers.get(name)
        return checker.problem(arguments) if checker is not None else None

    def read_only(self) -> dict[str, bool]:
        """Tool name -> whether it is read-only (decides the scope a caller needs)."""
        return {t.name: bool(t.annotations and t.annotations.read_only_hint) for t in self.tools}

    async def start(self) -> None:
        """Start the worker and load the module; ToolsUnavailable when either fails."""
        try:
            await asyncio.wait_for(self._open_worker(), self.start_timeout)
        except TimeoutError:
            raise ToolsUnavailable(f"the worker did not load the module within {self.start_timeout:g} s "
                                   f"({self.launcher.description})") from None

    async def _open_worker(self) -> None:
        """A fresh worker: the module handed over on a control connection (where there is one), then a tool
        process attached."""
        try:
            opened = await self.launcher.open()
        except OSError as exc:
            raise ToolsUnavailable(f"cannot start the worker ({self.launcher.description}): {exc}") from None
        control: Streams | None = None
        try:
            if opened.restartable:
                control = await opened.connect()
                control[1].write(encode(self.load))
                ready = await read_frame(control[0])
                if not isinstance(ready, Ready):
                    raise ToolsUnavailable("the worker answered the module with something else")
                self._session = ready.session
            self._opened, self._control = opened, control
            await self._attach(opened)
        except BaseException as exc:  # the start's time limit (a cancellation) too: no worker is left behind
            self._opened, self._control = None, None
            if control is not None:
                control[1].close()
            await opened.stop()
            if isinstance(exc, ChannelClosed | OSError):
                raise ToolsUnavailable(f"the worker ended before it loaded the module ({exc})") from None
            raise

    async def _attach(self, opened: Opened) -> None:
        """A tool process on a new data connection, its tools checked against the artifact's."""
        reader, writer = await opened.connect()
        writer.write(encode(Attach(session=self._session) if opened.restartable else self.load))
        try:
            answer = await read_frame(reader, self.load.max_result_bytes + FRAME_SLACK)
            if isinstance(answer, LoadFailed):
                raise ToolsUnavailable(f"the module does not load: {answer.error}")
            if not isinstance(answer, Loaded):
                raise ToolsUnavailable("the worker answered the load with something else")
            try:
                tools = [Tool.model_validate(t) for t in answer.tools]
            except pydantic.ValidationError as exc:
                raise ToolsUnavailable(f"the worker listed unreadable tools: {exc.error_count()} error(s)") from None
            if [t.name for t in tools] != list(self.load.tools):
                raise ToolsUnavailable(f"the worker lists {[t.name for t in tools]}, the artifact "
                                       f"{list(self.load.tools)}")
        except BaseException:
            writer.close()
            raise
        self.tools = self.tools or [self._served(t) for t in tools]
        self._data = writer
        task = asyncio.create_task(self._read(reader, writer), name="tool-process-reader")
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        self._ready.set()

    def _served(self, tool: Tool) -> Tool:
        """The tool as clients see it: with the plan's input and output schemas where the artifact carries them."""
        update: dict[str, Any] = {}
        if (schema := self.input_schemas.get(tool.name)) is not None:
            update["input_schema"] = schema
        if (output := self.output_schemas.get(tool.name)) is not None:
            update["output_schema"] = output
        return tool.model_copy(update=update) if update else tool

    def checked_result(self, name: str, result: CallToolResult) -> CallToolResult:
        """`result` when it keeps tool `name`'s output schema (or is an error); else a tool error saying where the
        answer departs from the documented schema, with its start, since a client holds a structured result to
        the schema it was served."""
        checker = self._output_checkers.get(name)
        if checker is None or result.is_error:
            return result
        structured = result.structured_content
        problem = "it is not JSON" if structured is None else checker.problem(structured)
        if problem is None:
            return result
        said = next((block.text for block in result.content if isinstance(block, TextContent)), "")
        return tool_error(f"the upstream answered outside its documented response schema ({problem}); "
                          f"the answer began: {said[:300]}")

    async def call(self, name: str, arguments: dict[str, Any]) -> CallToolResult:
        """Call tool `name`; its result, or a tool error saying why there is none."""
        if not self._ready.is_set():
            try:
                await asyncio.wait_for(self._ready.wait(), self.call_timeout)
            except TimeoutError:
                return tool_error("the tools are restarting and did not come back in time; try again")
        data = self._data
        assert data is not None
        self._next_id += 1
        call_id = self._next_id
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[CallToolResult] = loop.create_future()
        self._pending[call_id] = waiter
        data.write(encode(Call(id=call_id, tool=name, arguments=arguments)))
        reason = f"tool {name!r} did not finish within {self.call_timeout:g} s"
        # A timer, not wait_for: no task per call on the hot path.
        timer = loop.call_later(self.call_timeout, self._fail, data, reason)
        try:
            return self.checked_result(name, await waiter)
        finally:
            timer.cancel()
            self._pending.pop(call_id, None)

    async def _read(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                frame = await read_frame(reader, self.load.max_result_bytes + FRAME_SLACK)
                self._handle(writer, frame)
        except ChannelClosed as exc:
            over = "over the" in str(exc)
            self._fail(writer, "the tool process sent a frame over the size limit" if over else
                       "the tool process ended (a crash, or its memory or CPU limit)")

    def _handle(self, writer: asyncio.StreamWriter, frame: Frame) -> None:
        if isinstance(frame, Result):
            waiter = self._pending.get(frame.id)
            if waiter is None or waiter.done():
                return
            try:
                waiter.set_result(CallToolResult.model_validate(frame.result))
            except pydantic.ValidationError:
                waiter.set_result(tool_error("the tool's result could not be read"))
        elif isinstance(frame, Egress):
            task = asyncio.create_task(self._egress(writer, frame))
            self._background.add(task)
            task.add_done_callback(self._background.discard)
        else:
            self._fail(writer, f"the tool process sent an unexpected {type(frame).__name__} frame")

    async def _egress(self, writer: asyncio.StreamWriter, request: Egress) -> None:
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
        if not writer.is_closing():
            writer.write(encode(answer))

    def _fail(self, data: asyncio.StreamWriter, reason: str) -> None:
        """End the tool process behind `data` (once), fail its calls in flight, bring a fresh one."""
        if self._data is not data:
            return
        self._data = None
        self._ready.clear()
        data.close()
        for waiter in self._pending.values():
            if not waiter.done():
                waiter.set_result(tool_error(f"{reason}; the call was stopped"))
        log.warning("tool process failed: %s", reason)
        if not self._closing:
            self._recovering = asyncio.create_task(self._recover(reason), name="tool-process-recovery")

    async def _recover(self, reason: str) -> None:
        """A restart through the warden (milliseconds), else a whole new worker, retried with backoff."""
        delay = 0.2
        while not self._closing:
            try:
                opened, control = self._opened, self._control
                if opened is not None and control is not None:
                    control[1].write(encode(Restart(reason=reason)))
                    if not isinstance(await asyncio.wait_for(read_frame(control[0]), 10), Restarted):
                        raise ToolsUnavailable("the warden answered the restart with something else")
                    await asyncio.wait_for(self._attach(opened), self.start_timeout)
                else:
                    await self._replace_worker()
                self.restarts += 1
                return
            except (ToolsUnavailable, ChannelClosed, OSError, TimeoutError) as exc:
                log.error("cannot restart the tools: %s (again in %.1f s)", exc, delay)
                await self._drop_worker()
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10.0)

    async def _replace_worker(self) -> None:
        await self._drop_worker()
        await asyncio.wait_for(self._open_worker(), self.start_timeout)

    async def _drop_worker(self) -> None:
        opened, control, self._opened, self._control = self._opened, self._control, None, None
        if control is not None:
            control[1].close()
        if opened is not None:
            await opened.stop()

    async def close(self) -> None:
        """End the worker and stop restarting it."""
        self._closing = True
        if self._recovering is not None:
            self._recovering.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._recovering
        if self._data is not None:
            self._data.close()
            self._data = None
        await self._drop_worker()
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)


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
        # Before the worker or any upstream sees it: a wrong argument is the model's to fix, named.
        if problem := self.sandboxed.argument_problem(name, arguments):
            raise ToolError(f"invalid arguments for {name}: {problem}")
        return await self.sandboxed.call(name, arguments)
