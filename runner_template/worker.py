"""The worker: the only processes that run a generated module, always inside a sandbox.

    python -P -m runner_template.worker (--listen-fd N | --listen unix:PATH | --listen tcp:HOST:PORT | --stdio)
        [--kill-all] [--memory-bytes B] [--processes N] [--file-size-bytes B] [--open-files N] [--cpu-seconds S]

The warden (this module's main process) imports the runner's code first and applies the limits to itself (its
children inherit them). Then it listens (on a socket the front made and handed over, `--listen-fd`, or at an
address) for the front's connections (see `runner_template.channel`): a control connection brings the module
(`Load`); each data connection that attaches to it gets a tool process forked from the warden, which imports
the module and serves its calls on that connection, directly with the front. When the front asks for a
restart (a call outlived its time limit, a tool process died or broke the protocol), the warden ends every
tool process (with `--kill-all`, every process of the sandbox's user but itself: a fork bomb's strays too),
collects them, and says so; the front attaches again and gets a fresh tool process within milliseconds.

`--stdio` (a container's attached streams, the checker's sample runs): no control connection; the warden
reads the `Load` from stdin and serves the module itself, on stdin/stdout; the front replaces the whole
container when something goes wrong.

Everything here runs with the generated module's privileges: the warden is a convenience for the module's
own server (fast restarts), not a boundary. The boundary is the sandbox around it and the front, which
trusts no frame.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import logging
import os
import resource
import secrets
import signal
import socket
import sys
import traceback
from dataclasses import dataclass, field
from typing import Any, cast

import msgspec

from runner_template.channel import (
    MAX_FRAME_BYTES,
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
    encode,
    listen,
    read_frame,
)
from runner_template.limits import WorkerLimits

log = logging.getLogger("bmms.worker")


# -- the tool process ----------------------------------------------------------------------------------------


def _result_error(text: str) -> dict[str, Any]:
    return {"content": [{"type": "text", "text": text}], "isError": True}


async def serve_tools(load: Load, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """In the tool process: import the module, say which tools it serves, then serve calls until EOF."""
    # Imported here, not at the top: the warden imports them once, before any fork (see `main`).
    from mcp_types import CallToolRequestParams, CallToolResult

    from runner_template import upstream
    from runner_template.server import create_server, load_module

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
        frame = encode(Result(id=call.id, result=result))
        if len(frame) > load.max_result_bytes:
            frame = encode(Result(id=call.id, result=_result_error(
                f"the result of tool {call.tool!r} is over the {load.max_result_bytes} byte limit")))
        writer.write(frame)

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


async def _serve_on(sock: socket.socket, load: Load) -> None:
    reader, writer = await asyncio.open_connection(sock=sock) if sock.family != socket.AF_UNIX \
        else await asyncio.open_unix_connection(sock=sock)
    await serve_tools(load, reader, writer)


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
        limits.limit_cpu()
        asyncio.run(_serve_on(socket.socket(fileno=3), load))
        code = 0
    except BaseException:
        traceback.print_exc()
    finally:
        with contextlib.suppress(Exception):
            sys.stderr.flush()
        os._exit(code)


# -- the warden ----------------------------------------------------------------------------------------------


@dataclass(eq=False)
class Session:
    """One front's module and the tool processes attached to it."""

    load: Load
    pids: set[int] = field(default_factory=set)


class Warden:
    """Takes the front's connections: control (the module, restarts) and data (a tool process each)."""

    def __init__(self, limits: WorkerLimits, *, kill_all: bool) -> None:
        self.limits = limits
        self.kill_all = kill_all
        """Whether a restart may end every process this user can signal: only where the sandbox is ours alone
        (its own PID namespace and user); otherwise only the tool processes' own process groups."""
        self.sessions: dict[str, Session] = {}

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One connection: control (starts with `Load`) or data (starts with `Attach`)."""
        try:
            first = await read_frame(reader)
            if isinstance(first, Load):
                await self._control(first, reader, writer)
            elif isinstance(first, Attach) and first.session in self.sessions:
                self._fork(self.sessions[first.session], writer)
        except ChannelClosed:
            pass
        finally:
            writer.close()

    async def _control(self, load: Load, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        session_id = secrets.token_hex(8)
        session = self.sessions[session_id] = Session(load)
        try:
            writer.write(encode(Ready(session=session_id)))
            while True:
                frame = await read_frame(reader)
                if isinstance(frame, Restart):
                    log.warning("restarting the tool processes: %s", frame.reason[:500])
                    await self.restart()
                    writer.write(encode(Restarted()))
        finally:
            del self.sessions[session_id]
            self._end(session.pids)

    def _fork(self, session: Session, writer: asyncio.StreamWriter) -> None:
        """A tool process for `session` on the data connection behind `writer` (its copy here is closed)."""
        sock = writer.get_extra_info("socket")
        channel = socket.socket(fileno=os.dup(sock.fileno()))
        pid = os.fork()
        if pid == 0:
            _become_tool_process(channel, session.load, self.limits)
        channel.close()
        session.pids.add(pid)

    def _end(self, pids: set[int]) -> None:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
        pids.clear()

    async def restart(self) -> None:
        """End every tool process (and, with kill_all, every other process of this user here) and wait until
        they are gone."""
        for session in self.sessions.values():
            self._end(session.pids)
        if self.kill_all:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(-1, signal.SIGKILL)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 5
        while loop.time() < deadline:
            try:
                if os.waitpid(-1, os.WNOHANG)[0] == 0:  # noqa: ASYNC222 (WNOHANG never blocks)
                    await asyncio.sleep(0.005)  # some still dying
            except ChildProcessError:
                return  # every child collected


def _reap() -> None:
    """Collect exited children (orphans too, when this is a PID namespace's reaper)."""
    with contextlib.suppress(ChildProcessError):
        while os.waitpid(-1, os.WNOHANG)[0] > 0:
            pass


async def _stdio_streams() -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """stdin/stdout as the channel; fds 0 and 1 then point at /dev/null (nothing printed reaches the front)."""
    loop = asyncio.get_running_loop()
    channel_in, channel_out = os.dup(0), os.dup(1)
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    os.dup2(null, 1)
    reader = asyncio.StreamReader(limit=MAX_FRAME_BYTES)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(channel_in, "rb", 0))
    transport, protocol = await loop.connect_write_pipe(asyncio.streams.FlowControlMixin,
                                                        os.fdopen(channel_out, "wb", 0))
    writer = asyncio.StreamWriter(transport, protocol, reader, loop)
    return reader, writer


async def run_warden(address: str | None, listen_fd: int | None, limits: WorkerLimits, *, kill_all: bool) -> None:
    """Serve the front's connections on `listen_fd` or at `address` until killed."""
    warden = Warden(limits, kill_all=kill_all)
    asyncio.get_running_loop().add_signal_handler(signal.SIGCHLD, _reap)
    if listen_fd is not None:
        listener = socket.socket(fileno=listen_fd)
        server = await (asyncio.start_unix_server(warden.serve, sock=listener) if listener.family == socket.AF_UNIX
                        else asyncio.start_server(warden.serve, sock=listener))
    else:
        assert address is not None
        server = await listen(address, warden.serve)
        log.info("worker listening on %s", address)
    async with server:
        await server.serve_forever()


async def serve_stdio(limits: WorkerLimits) -> None:
    """`--stdio`: the module from stdin, served by this process itself on stdin/stdout."""
    reader, writer = await _stdio_streams()
    try:
        load = await read_frame(reader)
    except ChannelClosed:
        return
    if not isinstance(load, Load):
        return
    limits.limit_cpu()
    await serve_tools(load, reader, writer)


def main(argv: list[str] | None = None) -> None:
    """`python -m runner_template.worker`: see the module doc."""
    parser = argparse.ArgumentParser(prog="python -m runner_template.worker")
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--listen-fd", type=int, help="an inherited, listening stream socket")
    where.add_argument("--listen", help="unix:PATH or tcp:HOST:PORT")
    where.add_argument("--stdio", action="store_true", help="one module, served on stdin and stdout")
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
    if args.stdio:
        asyncio.run(serve_stdio(limits))
    else:
        asyncio.run(run_warden(args.listen, args.listen_fd, limits, kill_all=args.kill_all))


if __name__ == "__main__":
    main()
