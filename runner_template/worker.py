"""The worker: the only processes that run a generated module, always inside a sandbox.

    python -P -m runner_template.worker (--fd N | --stdio | --listen unix:PATH | --listen tcp:HOST:PORT)
        [--memory-bytes B] [--processes N] [--file-size-bytes B] [--open-files N] [--cpu-seconds S]

The warden (this module's main process) imports the runner's code first, applies the limits to itself (its
children inherit them) and then takes connections from the front: one inherited socket (`--fd`), its
stdin/stdout (`--stdio`: a container's attached streams), or every connection to a listening socket. Each
connection starts with a `Load`; the warden forks a tool process that imports the module and serves its
calls, and relays the frames both ways. Only the warden keeps the deadlines: a call that outlives its
timeout, a tool process that dies (its memory or CPU limit, a crash) or that sends a frame over the limit
ends every process of the sandbox but the warden (`kill(-1)`: a fork bomb's strays too), answers the calls
in flight with a tool error saying why, and forks fresh tool processes for every connection.

Everything here runs with the generated module's privileges: the warden is a convenience for the module's
own server (fast restarts, clear errors), not a boundary. The boundary is the sandbox around it and the
front, which trusts no frame.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import logging
import os
import resource
import signal
import socket
import sys
import traceback
from dataclasses import dataclass, field
from typing import Any, cast

import msgspec

from runner_template.channel import (
    MAX_FRAME_BYTES,
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
from runner_template.limits import WorkerLimits

log = logging.getLogger("bmms.worker")

FRAME_SLACK = 64 * 1024
"""Room a result frame may take beyond `Load.max_result_bytes` (its envelope)."""


# -- the tool process ----------------------------------------------------------------------------------------


def _result_error(text: str) -> dict[str, Any]:
    return {"content": [{"type": "text", "text": text}], "isError": True}


async def serve_tools(sock: socket.socket, load: Load) -> None:
    """In the tool process: import the module, say which tools it serves, then serve calls until EOF."""
    # Imported here, not at the top: the warden imports them once, before any fork (see `main`).
    from mcp_types import CallToolRequestParams, CallToolResult

    from runner_template import upstream
    from runner_template.server import create_server, load_module

    reader, writer = await asyncio.open_unix_connection(sock=sock)

    def send(frame: Frame) -> None:
        writer.write(encode(frame))

    try:
        module = load_module(load.module_name, load.module_source)
        server = create_server(module, name=load.server_name, expected_tools=load.tools)
        tools = [t.model_dump(mode="json", by_alias=True, exclude_none=True) for t in await server.list_tools()]
    except BaseException as exc:  # the module's own code ran: anything may come out of it
        send(LoadFailed(error=f"{type(exc).__name__}: {exc}"[:2000]))
        await writer.drain()
        return
    send(Loaded(tools=tools))
    egress_waiting: dict[int, asyncio.Future[EgressAnswer]] = {}
    next_egress = 0

    async def egress(request: Egress) -> EgressAnswer:
        nonlocal next_egress
        next_egress += 1
        waiter: asyncio.Future[EgressAnswer] = asyncio.get_running_loop().create_future()
        egress_waiting[next_egress] = waiter
        send(msgspec.structs.replace(request, id=next_egress))
        try:
            return await waiter
        finally:
            egress_waiting.pop(next_egress, None)

    async def run(call: Call) -> None:
        token = upstream.current_call.set((call.id, egress))
        try:
            params = CallToolRequestParams(name=call.tool, arguments=call.arguments)
            # The SDK's own tools/call handler, so a result (or a tool error) is exactly what it would serve
            # in process; no request context: generated tools take none.
            outcome = await server._handle_call_tool(cast(Any, None), params)
            if isinstance(outcome, CallToolResult):
                result = outcome.model_dump(mode="json", by_alias=True, exclude_none=True)
            else:
                result = _result_error(f"tool {call.tool!r} asked for input, which hosted servers do not support")
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # SystemExit too: whatever the tool raised, the caller gets a tool error
            result = _result_error(f"tool {call.tool!r} failed: {type(exc).__name__}")
        finally:
            upstream.current_call.reset(token)
        if len(msgspec.msgpack.encode(result)) > load.max_result_bytes:
            result = _result_error(f"the result of tool {call.tool!r} is over the {load.max_result_bytes} byte limit")
        send(Result(id=call.id, result=result))

    tasks: set[asyncio.Task[None]] = set()
    while True:
        try:
            frame = await read_frame(reader)
        except ChannelClosed:
            return
        if isinstance(frame, Call):
            task = asyncio.create_task(run(frame))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        elif isinstance(frame, EgressAnswer):
            waiter = egress_waiting.get(frame.id)
            if waiter is not None and not waiter.done():
                waiter.set_result(frame)


def _become_tool_process(child_end: socket.socket, load: Load, limits: WorkerLimits) -> None:
    """In the forked child: keep only the channel and stderr, set the CPU limit, serve. Never returns."""
    code = 1
    try:
        # Nothing the warden made may be collected here: its objects own descriptors closed below, whose
        # numbers the tool process reuses.
        gc.freeze()
        os.setpgid(0, 0)
        signal.set_wakeup_fd(-1)
        for number in (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT, signal.SIGPIPE):
            signal.signal(number, signal.SIG_DFL)
        null = os.open(os.devnull, os.O_RDWR)
        os.dup2(null, 0)
        os.dup2(null, 1)
        os.dup2(child_end.fileno(), 3)
        os.closerange(4, resource.getrlimit(resource.RLIMIT_NOFILE)[0])
        if limits.cpu_seconds > 0:
            resource.setrlimit(resource.RLIMIT_CPU, (limits.cpu_seconds, limits.cpu_seconds + 5))
        asyncio.run(serve_tools(socket.socket(fileno=3), load))
        code = 0
    except BaseException:
        traceback.print_exc()
    finally:
        with contextlib.suppress(Exception):
            sys.stderr.flush()
        os._exit(code)


# -- the warden ----------------------------------------------------------------------------------------------


@dataclass
class ToolProcess:
    """One forked tool process and the warden's end of its channel."""

    pid: int
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter


@dataclass(eq=False)
class Connection:
    """One front's connection, its module, its tool process and its calls in flight."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    load: Load | None = None
    tool: ToolProcess | None = None
    pump: asyncio.Task[None] | None = None
    in_flight: dict[int, Call] = field(default_factory=dict)
    closed: asyncio.Event = field(default_factory=asyncio.Event)

    def send(self, frame: Frame) -> None:
        if not self.writer.is_closing():
            self.writer.write(encode(frame))


class Warden:
    """Relays between fronts and tool processes and keeps every call's deadline."""

    def __init__(self, limits: WorkerLimits, *, kill_all: bool) -> None:
        self.limits = limits
        self.kill_all = kill_all
        """Whether a restart may end every process this user can signal: only where the sandbox is ours alone
        (its own PID namespace and user); otherwise only the tool processes' own process groups."""
        self.connections: set[Connection] = set()
        self._restarting: asyncio.Lock = asyncio.Lock()
        self.generation = 0

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Serve one front until it goes away."""
        conn = Connection(reader, writer)
        self.connections.add(conn)
        try:
            first = await read_frame(reader)
            if not isinstance(first, Load):
                return
            conn.load = first
            loaded = await self._start_tool_process(conn)
            conn.send(loaded)
            if isinstance(loaded, LoadFailed):
                await writer.drain()
                return
            while True:
                frame = await read_frame(reader)
                if isinstance(frame, Call):
                    await self._call(conn, frame)
                elif isinstance(frame, EgressAnswer) and conn.tool is not None:
                    conn.tool.writer.write(encode(frame))
        except ChannelClosed:
            pass
        finally:
            self.connections.discard(conn)
            conn.closed.set()
            self._stop_tool_process(conn)
            writer.close()

    async def _call(self, conn: Connection, call: Call) -> None:
        async with self._restarting:  # a restart in progress: the call goes to the fresh process
            pass
        if conn.tool is None:
            conn.send(Result(id=call.id, result=_result_error("the tool process is not running")))
            return
        conn.in_flight[call.id] = call
        generation = self.generation
        asyncio.get_running_loop().call_later(
            max(call.timeout_seconds, 0.0), self._deadline, conn, call.id, generation)
        conn.tool.writer.write(encode(call))

    def _deadline(self, conn: Connection, call_id: int, generation: int) -> None:
        call = conn.in_flight.get(call_id)
        if call is not None and generation == self.generation:
            reason = f"tool {call.tool!r} did not finish within {call.timeout_seconds:g} s"
            asyncio.get_running_loop().create_task(self.restart(reason))

    async def _start_tool_process(self, conn: Connection) -> Loaded | LoadFailed:
        """Fork a tool process for `conn`'s module and wait for its answer; pump its frames to the front."""
        assert conn.load is not None
        parent_end, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        pid = os.fork()
        if pid == 0:
            parent_end.close()
            _become_tool_process(child_end, conn.load, self.limits)
        child_end.close()
        reader, writer = await asyncio.open_unix_connection(sock=parent_end)
        conn.tool = ToolProcess(pid, reader, writer)
        try:
            answer = await read_frame(reader)
        except ChannelClosed as exc:
            return LoadFailed(error=f"the tool process ended while importing the module ({exc}): "
                                    f"{await self._exit_status(pid)}")
        if not isinstance(answer, Loaded | LoadFailed):
            return LoadFailed(error="the tool process answered the import with something else")
        if isinstance(answer, Loaded):
            conn.pump = asyncio.create_task(self._pump(conn, conn.tool, conn.load.max_result_bytes))
        return answer

    async def _pump(self, conn: Connection, tool: ToolProcess, max_result_bytes: int) -> None:
        """Frames from the tool process to the front, until it ends (then: restart)."""
        try:
            while True:
                frame = await read_frame(tool.reader, max_result_bytes + FRAME_SLACK)
                if isinstance(frame, Result):
                    if conn.in_flight.pop(frame.id, None) is not None:
                        conn.send(frame)
                elif isinstance(frame, Egress):
                    if frame.call_id in conn.in_flight:
                        conn.send(frame)
                    else:
                        tool.writer.write(encode(EgressAnswer(id=frame.id, refused=True,
                                                              error="upstream calls are made only while a tool "
                                                                    "call runs")))
        except ChannelClosed as exc:
            if conn.tool is tool and not conn.closed.is_set():
                status = await self._exit_status(tool.pid)
                reason = ("the tool process sent a result over the size limit" if "over the" in str(exc)
                          else f"the tool process ended ({status})")
                asyncio.get_running_loop().create_task(self.restart(reason))

    async def _exit_status(self, pid: int) -> str:
        """How tool process `pid` ended (it is killed if it is still running a moment after closing its end)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 0.5
        while pid not in _exited and loop.time() < deadline:
            _reap()
            await asyncio.sleep(0.01)
        if pid not in _exited:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
            return "it closed its channel and was stopped"
        status = _exited.pop(pid)
        if os.WIFSIGNALED(status):
            number = os.WTERMSIG(status)
            name = signal.Signals(number).name
            why = {"SIGKILL": "killed: out of memory or a limit", "SIGXCPU": "its CPU time limit",
                   "SIGSEGV": "a crash"}.get(name, "a signal")
            return f"{name}, {why}"
        return f"exit status {os.WEXITSTATUS(status)}"

    def _stop_tool_process(self, conn: Connection) -> None:
        tool, conn.tool = conn.tool, None
        if conn.pump is not None:
            conn.pump.cancel()
            conn.pump = None
        if tool is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(tool.pid, signal.SIGKILL)
            tool.writer.close()

    async def restart(self, reason: str) -> None:
        """End every process of the sandbox but this one, fail the calls in flight, fork fresh tool processes."""
        async with self._restarting:
            self.generation += 1
            log.warning("restarting the tool processes: %s", reason)
            for conn in self.connections:
                if conn.pump is not None:
                    conn.pump.cancel()
                    conn.pump = None
            for conn in list(self.connections):
                tool, conn.tool = conn.tool, None
                if tool is not None:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(tool.pid, signal.SIGKILL)
                    tool.writer.close()
            if self.kill_all:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(-1, signal.SIGKILL)  # every process of this sandbox's user: a fork bomb's strays too
                for call_id in list(conn.in_flight):
                    conn.send(Result(id=call_id, result=_result_error(f"{reason}; the call was stopped")))
                conn.in_flight.clear()
            _reap()
            for conn in list(self.connections):
                if conn.load is None or conn.closed.is_set():
                    continue
                answer = await self._start_tool_process(conn)
                if isinstance(answer, LoadFailed):
                    log.error("the module no longer imports: %s", answer.error)
                    conn.writer.close()


_exited: dict[int, int] = {}
"""Wait statuses of reaped children, until the warden asks how one ended."""


def _reap() -> None:
    """Collect exited children (orphans too, when this is a PID namespace's reaper), keeping their statuses."""
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        _exited[pid] = status
        if len(_exited) > 1000:  # strays nobody asks about
            _exited.pop(next(iter(_exited)))


async def _stdio_streams() -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=MAX_FRAME_BYTES)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(0, "rb", buffering=0))
    transport, protocol = await loop.connect_write_pipe(asyncio.streams.FlowControlMixin,
                                                        os.fdopen(1, "wb", buffering=0))
    writer = asyncio.StreamWriter(transport, protocol, reader, loop)
    return reader, writer


async def run_warden(mode: str, address: str | None, fd: int | None, limits: WorkerLimits, *,
                     kill_all: bool) -> None:
    """Serve the front's connections in `mode` (fd, stdio or listen) until the single connection ends, or
    forever when listening."""
    warden = Warden(limits, kill_all=kill_all)
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGCHLD, _reap)
    if mode == "fd":
        assert fd is not None
        reader, writer = await asyncio.open_unix_connection(sock=socket.socket(fileno=fd))
        await warden.serve(reader, writer)
    elif mode == "stdio":
        await warden.serve(*await _stdio_streams())
    else:
        assert address is not None
        kind, _, where = address.partition(":")
        if kind == "unix":
            with contextlib.suppress(FileNotFoundError):
                os.unlink(where)
            server = await asyncio.start_unix_server(warden.serve, path=where)
        elif kind == "tcp":
            host, _, port = where.rpartition(":")
            server = await asyncio.start_server(warden.serve, host=host or None, port=int(port))
        else:
            raise SystemExit(f"--listen takes unix:PATH or tcp:HOST:PORT, not {address!r}")
        log.info("worker listening on %s", address)
        async with server:
            await server.serve_forever()


def main(argv: list[str] | None = None) -> None:
    """`python -m runner_template.worker`: see the module doc."""
    parser = argparse.ArgumentParser(prog="python -m runner_template.worker")
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--fd", type=int, help="an inherited, connected stream socket")
    where.add_argument("--stdio", action="store_true", help="frames on stdin and stdout")
    where.add_argument("--listen", help="unix:PATH or tcp:HOST:PORT")
    parser.add_argument("--kill-all", action="store_true",
                        help="the sandbox has its own PID namespace and user: a restart ends all their processes")
    defaults = WorkerLimits()
    for name in ("memory_bytes", "processes", "file_size_bytes", "open_files", "cpu_seconds"):
        parser.add_argument("--" + name.replace("_", "-"), type=int, default=getattr(defaults, name))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="worker %(levelname)s %(message)s")
    limits = WorkerLimits(memory_bytes=args.memory_bytes, processes=args.processes,
                          file_size_bytes=args.file_size_bytes, open_files=args.open_files,
                          cpu_seconds=args.cpu_seconds)
    # Everything a tool process needs is imported here, once, before any fork and before any module runs.
    import runner_template.sdk
    import runner_template.server
    import runner_template.upstream  # noqa: F401

    limits.apply()
    mode = "fd" if args.fd is not None else "stdio" if args.stdio else "listen"
    asyncio.run(run_warden(mode, args.listen, args.fd, limits, kill_all=args.kill_all))


if __name__ == "__main__":
    main()
