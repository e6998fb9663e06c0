"""The dynamic check: load the artifact into a sandboxed worker and look at what it serves.

Only after the static rules passed (they are a lint, not the boundary: the sandbox is). The worker runs where
generated code always runs (`runner_template.sandbox`): a bubblewrap sandbox with a user of its own and no
network, or a container of the runner image with no network (docker and swarm platforms). The checker is the
worker's front here: it holds no secret and allows no upstream host, so a tool that tries one gets a refusal.
It compares the tools the worker lists (names and input schemas) with the plan, and calls each read-only
pure-function tool once with a sample argument built from its schema, under a per-call time limit (a call
that outlives it is stopped and reported).
"""

from __future__ import annotations

import ast
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from actors.checker.rules import Finding, callee_name
from bus_schemas.plans import Artifact, PlannedTool, PureFunction, ToolPlan
from runner_template.limits import WorkerLimits
from runner_template.sandbox import Launcher, SandboxUnavailable
from runner_template.tools import SandboxedTools, ToolsUnavailable, load_for


@dataclass(frozen=True)
class Sandbox:
    """Limits of the sample run."""

    cpu_seconds: int = 30
    address_space_bytes: int = 2 * 1024**3
    open_files: int = 256
    processes: int = 64
    """Processes and threads of the sandbox's own user (bubblewrap as root; containers use their pids limit)."""
    start_timeout_seconds: float = 60.0
    call_timeout_seconds: float = 10.0

    def worker_limits(self) -> WorkerLimits:
        """These limits as the worker applies them."""
        return WorkerLimits(memory_bytes=self.address_space_bytes, processes=self.processes,
                            file_size_bytes=1024 * 1024, open_files=self.open_files, cpu_seconds=self.cpu_seconds)


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


async def run_dynamic_check(artifact: Artifact, plan: ToolPlan, sandbox: Sandbox, launcher: Launcher) -> list[Finding]:
    """Findings from running the artifact: tool list vs plan, and sample calls of pure read-only tools."""
    file = f"{artifact.module_name}.py"
    lines = _tool_lines(artifact.module_source)

    def at(tool: str, rule: str, message: str, severity: Any = "error") -> Finding:
        return Finding(lines.get(tool, 1), 1, rule, message, severity, file)

    findings: list[Finding] = []
    tools = SandboxedTools(launcher, load_for(artifact), None, call_timeout=sandbox.call_timeout_seconds,
                           start_timeout=sandbox.start_timeout_seconds)
    try:
        await tools.start()
    except (ToolsUnavailable, SandboxUnavailable) as exc:
        await tools.close()
        return [Finding(1, 1, "dynamic-start", f"the module did not load in the sandbox: {exc}", "error", file)]
    try:
        listed = {t.name: t for t in tools.tools}
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
                result = await tools.call(name, arguments)
                text = " ".join(getattr(c, "text", "") for c in result.content)
                if result.is_error and "did not finish within" in text:
                    findings.append(at(name, "dynamic-timeout", f"on sample {arguments}: {text}"))
                elif result.is_error and "the call was stopped" in text:
                    findings.append(at(name, "dynamic-crash", f"tool {name!r} on sample {arguments}: {text}"))
                elif result.is_error:
                    # A pure function may refuse a sample input for good reasons; say so, do not fail.
                    findings.append(at(name, "dynamic-call", f"tool {name!r} raised on sample {arguments}",
                                       "warning"))
    finally:
        await tools.close()
    return sorted(findings)
