"""The dynamic check: run the artifact as a runner in a sandboxed child process and look at it over MCP.

Only after the static rules, mypy and ruff passed (the module is then known to import nothing but the
runner's API). The runner starts with `python -m runner_template` in a fresh temp dir, with the minimal
environment (no secrets, no BMMS_* settings except its own), no upstream host allowed, a free port on
127.0.0.1, and resource limits set in the child before exec: CPU seconds, address space, open files, no
core dumps, no file writes. Then the real mcp client lists the tools and compares names and input schemas
with the plan, and calls each read-only pure-function tool with a sample argument built from its schema.
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import os
import signal
import tempfile
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
from mcp import Client

from actors.checker.rules import Finding, callee_name
from actors.checker.toolchain import minimal_env
from actors.runtime.zygote import ChildLimits, ForkServer, ForkServerError, free_port, wait_listening
from bus_schemas.plans import Artifact, PlannedTool, PureFunction, ToolPlan


@dataclass(frozen=True)
class Sandbox:
    """Limits of the sandboxed runner."""

    cpu_seconds: int = 30
    address_space_bytes: int = 2 * 1024**3
    open_files: int = 256
    start_timeout_seconds: float = 30.0
    call_timeout_seconds: float = 10.0


def _limits(sandbox: Sandbox) -> ChildLimits:
    # stdout/stderr go to a log file in the sandbox's temp dir: the file-size limit leaves room for it only
    return ChildLimits(address_space_bytes=sandbox.address_space_bytes, open_files=sandbox.open_files,
                       file_size_bytes=1024 * 1024, cpu_seconds=sandbox.cpu_seconds)


class RunnerDidNotStart(Exception):
    """The sandboxed runner exited or stayed silent instead of listening."""


@contextlib.asynccontextmanager
async def sandboxed_runner(artifact: Artifact, sandbox: Sandbox, forks: ForkServer) -> AsyncIterator[str]:
    """Serve `artifact` from a sandboxed child forked by `forks`; yields its MCP URL, kills it afterwards."""
    offline = msgspec.structs.replace(artifact, upstream_hosts=(), secrets=())
    with tempfile.TemporaryDirectory(prefix="bmms-dyncheck-") as tmp:
        path = Path(tmp) / "artifact.json"
        path.write_bytes(msgspec.json.encode(offline))
        log = Path(tmp) / "runner.log"
        port = free_port()
        env = {**minimal_env(), "BMMS_RUNNER_ARTIFACT": str(path), "BMMS_RUNNER_HOST": "127.0.0.1",
               "BMMS_RUNNER_PORT": str(port),
               # the sandboxed check calls the tools itself, on loopback, before any client can: no OAuth here
               "BMMS_RUNNER_INSECURE_NO_AUTH": "1"}
        try:
            pid, started = await forks.spawn(env=env, cwd=Path(tmp), log=log, limits=_limits(sandbox))
        except (ForkServerError, OSError) as exc:
            raise RunnerDidNotStart(f"the sandbox could not start: {exc}") from None
        try:
            try:
                await wait_listening(pid, started, port, sandbox.start_timeout_seconds)
            except ForkServerError as exc:
                said = log.read_text(errors="replace").strip().splitlines() if log.exists() else []
                raise RunnerDidNotStart(said[-1] if said else str(exc)) from None
            yield f"http://127.0.0.1:{port}/mcp"
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)


def sample_value(schema: Any) -> Any:
    """A plausible value for a JSON Schema (enum's first, else by type)."""
    if not isinstance(schema, dict):
        return "sample"
    if schema.get("enum"):
        return schema["enum"][0]
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    defaults: dict[str, Any] = {"string": "sample", "integer": 2, "number": 1.5, "boolean": True, "null": None}
    if kind == "array":
        return [sample_value(schema.get("items"))] if schema.get("items") else []
    if kind == "object":
        return sample_arguments(schema)
    return defaults.get(str(kind), "sample")


def sample_arguments(schema: dict[str, Any]) -> dict[str, Any]:
    """Arguments with every required property of an object schema."""
    props: dict[str, Any] = schema.get("properties") or {}
    return {name: sample_value(props.get(name)) for name in schema.get("required") or []}


def _types(schema: Any) -> set[str]:
    """The JSON types a schema admits (through anyOf/oneOf), without null."""
    if not isinstance(schema, dict):
        return set()
    found: set[str] = set()
    kind = schema.get("type")
    found.update(kind if isinstance(kind, list) else [kind] if isinstance(kind, str) else [])
    for key in ("anyOf", "oneOf"):
        for option in schema.get(key) or []:
            found |= _types(option)
    found.discard("null")
    return found


def _tool_lines(source: str) -> dict[str, int]:
    lines: dict[str, int] = {}
    for node in ast.parse(source).body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            lines.setdefault(node.name, node.lineno)
            for dec in node.decorator_list:
                if isinstance(dec, ast.Call) and callee_name(dec.func) == "tool":
                    for k in dec.keywords:
                        if k.arg == "name" and isinstance(k.value, ast.Constant) and isinstance(k.value.value, str):
                            lines[k.value.value] = dec.lineno
    return lines


def compare_schema(
    planned: PlannedTool, listed: dict[str, Any], at: Callable[[str, str, str], Finding]
) -> list[Finding]:
    """Mismatches between a tool's planned input schema and the one the runner lists."""
    findings: list[Finding] = []
    want: dict[str, Any] = planned.input_schema.get("properties") or {}
    got: dict[str, Any] = listed.get("properties") or {}
    if set(want) != set(got):
        findings.append(at(planned.name, "dynamic-schema",
                           f"tool {planned.name!r} lists parameters {sorted(got)}, the plan has {sorted(want)}"))
    if set(planned.input_schema.get("required") or []) != set(listed.get("required") or []):
        message = f"tool {planned.name!r} requires other parameters than planned"
        findings.append(at(planned.name, "dynamic-schema", message))
    for name, schema in want.items():
        if name in got and _types(schema) and not _types(schema) <= _types(got[name]):
            findings.append(at(planned.name, "dynamic-schema",
                               f"parameter {name!r} of {planned.name!r} is {sorted(_types(got[name]))}, "
                               f"the plan says {sorted(_types(schema))}"))
    return findings


async def run_dynamic_check(artifact: Artifact, plan: ToolPlan, sandbox: Sandbox, forks: ForkServer) -> list[Finding]:
    """Findings from running the artifact: tool list vs plan, and sample calls of pure read-only tools."""
    file = f"{artifact.module_name}.py"
    lines = _tool_lines(artifact.module_source)

    def at(tool: str, rule: str, message: str, severity: Any = "error") -> Finding:
        return Finding(lines.get(tool, 1), 1, rule, message, severity, file)

    findings: list[Finding] = []
    try:
        async with sandboxed_runner(artifact, sandbox, forks) as url, Client(url) as client:
            listed = {t.name: t for t in (await client.list_tools()).tools}
            planned = {t.name: t for t in plan.tools}
            for name in sorted(set(planned) - set(listed)):
                findings.append(at(name, "dynamic-tools", f"planned tool {name!r} is not listed by the runner"))
            for name in sorted(set(listed) - set(planned)):
                findings.append(at(name, "dynamic-tools", f"the runner lists tool {name!r}, which is not planned"))
            for name, tool in planned.items():
                if name not in listed:
                    continue
                findings.extend(compare_schema(tool, listed[name].input_schema, at))
                if tool.read_only and isinstance(tool.implementation, PureFunction):
                    arguments = sample_arguments(tool.input_schema)
                    try:
                        result = await asyncio.wait_for(client.call_tool(name, arguments), sandbox.call_timeout_seconds)
                    except TimeoutError:
                        findings.append(at(name, "dynamic-timeout",
                                           f"tool {name!r} did not answer in {sandbox.call_timeout_seconds:.0f} s"))
                        continue
                    if result.is_error:
                        # A pure function may refuse a sample input for good reasons; say so, do not fail.
                        findings.append(at(name, "dynamic-call", f"tool {name!r} raised on sample {arguments}",
                                           "warning"))
    except RunnerDidNotStart as exc:
        findings.append(Finding(1, 1, "dynamic-start", f"the runner did not start: {exc}", "error", file))
    return sorted(findings)
