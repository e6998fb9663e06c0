"""The checker over the bus, as the real checker user: generated -> checked, or failed at `check` with the
first error finding; and the type check and lint it runs on every module."""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
from pathlib import Path

import msgspec
import pytest

from actors.catalog import create_actor
from actors.checker.dynamic import Sandbox, run_dynamic_check
from actors.checker.toolchain import Toolchain, check_with_tools
from actors.codegen.artifacts import build_artifact
from actors.runtime.actor import utc_now
from actors.runtime.bus import publish_event
from bus_schemas.builds import BuildChecked, BuildFailed, BuildGenerated, LogLine
from bus_schemas.plans import Artifact, PlannedTool, PureFunction, ToolPlan, canonical_artifact_bytes
from bus_schemas.registry import ARTIFACTS, build_subject
from runner_template.sandbox import Bubblewrap
from tests.conftest import Stack, eventually, running
from tests.support.builds import build_events, last_event, put_plan
from tests.support.codegen_samples import plan_hash, sample_plan

CLEAN = '''"""Tools."""

# A hand-written module of one tool.

import math
from typing import Any

from runner_template import sdk


@sdk.tool(name='hypot', title='Hypotenuse', read_only=True)
def hypot(a: float, b: float) -> Any:
    """The hypotenuse of a and b."""
    return {"c": math.hypot(a, b)}
'''


HYPOT_SCHEMA = {
    "type": "object",
    "properties": {"a": {"type": "number"}, "b": {"type": "number"}},
    "required": ["a", "b"],
}


def hypot_plan(schema: dict[str, object] = HYPOT_SCHEMA) -> ToolPlan:
    """The plan CLEAN was (notionally) rendered from."""
    tool = PlannedTool(
        name="hypot", title="Hypotenuse", description="The hypotenuse of a and b.", input_schema=schema,
        read_only=True, implementation=PureFunction(body='return {"c": math.hypot(a, b)}'),
    )
    return ToolPlan(server_name="geometry", tools=(tool,), planned_from="tool_spec")


def artifact_of(source: str, tools: tuple[str, ...] = ("hypot",), plan: ToolPlan | None = None) -> Artifact:
    return Artifact(
        plan_hash=plan_hash(plan or hypot_plan()), template_version="1", module_name="generated",
        module_source=source, tools=tools,
    )


async def put_artifact(js, artifact: Artifact, name: str | None = None) -> str:
    data = canonical_artifact_bytes(artifact)
    digest = hashlib.sha256(data).hexdigest()
    store = await js.object_store(ARTIFACTS.name)
    await store.put(name or digest, data)
    return digest if name is None else name


async def publish_generated(js, org: str, build: str, digest: str, msg_id: str) -> None:
    event = BuildGenerated(build_id=build, org_id=org, at=utc_now(), name="checker-test", artifact_hash=digest)
    await publish_event(js, build_subject(org, build, "generated"), event, msg_id)


async def outcome(js, org: str, build: str) -> BuildChecked | BuildFailed | None:
    for kind in ("checked", "failed"):
        event = await last_event(js, org, build, kind)
        if isinstance(event, BuildChecked | BuildFailed):
            return event
    return None


async def test_clean_module_passes_mypy_strict_and_ruff() -> None:
    assert await check_with_tools(CLEAN, "generated", Toolchain()) == []


async def test_codegen_output_passes_mypy_strict_and_ruff() -> None:
    plan = sample_plan("https://api.example.com")
    artifact = build_artifact(plan, plan_hash(plan))
    assert await check_with_tools(artifact.module_source, artifact.module_name, Toolchain()) == []


async def test_type_error_is_reported_at_its_line() -> None:
    source = CLEAN + "\n\ndef half(x: int) -> str:\n    return x // 2\n"
    findings = await check_with_tools(source, "generated", Toolchain())
    assert [(f.rule, f.line, f.column) for f in findings] == [("mypy[return-value]", 18, 12)]
    assert findings[0].render().startswith("generated.py:18:12 mypy[return-value]: Incompatible return value type")


async def test_lint_finding_is_reported_at_its_line() -> None:
    source = CLEAN + "\n\ndef items(x: list[int] = []) -> list[int]:\n    return x\n"
    findings = await check_with_tools(source, "generated", Toolchain())
    assert ("ruff[B006]", 17) in [(f.rule, f.line) for f in findings]


async def test_runner_template_cannot_be_used_to_reach_its_own_imports() -> None:
    # mypy --strict refuses names runner_template modules only import (no implicit re-export)
    source = CLEAN + "\n\ndef leak() -> object:\n    return sdk.dataclass\n"
    findings = await check_with_tools(source, "generated", Toolchain())
    assert [(f.rule, f.line) for f in findings] == [("mypy[attr-defined]", 18)]


async def test_clean_artifact_is_checked(stack: Stack, admin_nc) -> None:
    js = admin_nc.jetstream()
    org, build = "orgck1", "b" + secrets.token_hex(6)
    await put_plan(js, hypot_plan())
    digest = await put_artifact(js, artifact_of(CLEAN))
    async with running(create_actor("checker"), stack.settings("checker")):
        await publish_generated(js, org, build, digest, f"{build}:generated")
        event = await eventually(lambda: outcome(js, org, build), timeout=60)
        assert isinstance(event, BuildChecked) and event.artifact_hash == digest
        # a redelivered `generated` (published again under another id) adds nothing to the history
        before = [(k, e) for k, e, _ in await build_events(js, org, build)]
        await publish_generated(js, org, build, digest, f"{build}:generated-again")

        async def caught_up() -> bool:
            info = await js.consumer_info("BUILDS", "checker")
            return info.num_ack_pending == 0 and info.num_pending == 0

        await eventually(caught_up, timeout=60)
        after = [(k, e) for k, e, _ in await build_events(js, org, build)]
    assert len(after) == len(before) + 1  # only the second `generated` itself
    kinds = [k for k, _ in after]
    assert kinds.count("checked") == 1 and "failed" not in kinds
    steps = [(e.step, e.state) for k, e in after if k == "step"]  # type: ignore[union-attr]
    assert steps == [("check", "started"), ("check", "finished")]
    logs = [e.message for k, e in after if isinstance(e, LogLine)]
    # the phases' progress lines, then the outcome; no finding
    assert logs[-1] == "check: passed: 1 tool(s), static rules, mypy --strict, ruff and a sandboxed run"
    assert not [line for line in logs if "generated.py" in line]


async def test_artifact_whose_tools_differ_from_the_plan_fails_the_dynamic_check(stack: Stack, admin_nc) -> None:
    js = admin_nc.jetstream()
    org, build = "orgck5", "b" + secrets.token_hex(6)
    plan = hypot_plan({"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]})
    await put_plan(js, plan)
    digest = await put_artifact(js, artifact_of(CLEAN, plan=plan))
    async with running(create_actor("checker"), stack.settings("checker")):
        await publish_generated(js, org, build, digest, f"{build}:generated")
        event = await eventually(lambda: outcome(js, org, build), timeout=60)
    assert isinstance(event, BuildFailed) and event.step == "check"
    assert event.detail.startswith("generated.py:11:1 dynamic-schema: parameter 'a' of 'hypot' is ['number'], the plan")
    logs = [e.message for k, e, _ in await build_events(js, org, build) if isinstance(e, LogLine)]
    expected = "check: generated.py:11:1 dynamic-schema: tool 'hypot' lists parameters ['a', 'b'], the plan has ['a']"
    assert expected in logs


@pytest.fixture(scope="module")
def sandbox() -> Bubblewrap:
    """The sample runs' sandbox where a platform without Docker has it: bubblewrap, a user per run."""
    return Bubblewrap(uid=None, limits=Sandbox().worker_limits())


async def test_sandboxed_run_lists_and_calls_the_pure_tools_of_codegen_output(sandbox: Bubblewrap) -> None:
    plan = sample_plan("https://api.example.com")
    artifact = build_artifact(plan, plan_hash(plan))
    assert await run_dynamic_check(artifact, plan, Sandbox(), sandbox) == []


async def test_pure_tool_that_raises_on_its_sample_is_a_warning(sandbox: Bubblewrap) -> None:
    source = CLEAN.replace('return {"c": math.hypot(a, b)}', 'raise ValueError(f"no {a}")')
    findings = await run_dynamic_check(artifact_of(source), hypot_plan(), Sandbox(), sandbox)
    assert [(f.rule, f.severity, f.line) for f in findings] == [("dynamic-call", "warning", 11)]


async def test_module_that_cannot_load_is_an_error(sandbox: Bubblewrap) -> None:
    source = CLEAN.replace("import math", "import math\n\nraise SystemExit('boom')")
    [finding] = await run_dynamic_check(artifact_of(source), hypot_plan(), Sandbox(), sandbox)
    assert finding.rule == "dynamic-start" and finding.severity == "error"
    assert "SystemExit: boom" in finding.message


def sandboxes_of_this_process() -> set[int]:
    """Pids of the bubblewrap processes this test process started (a sandbox is its bwrap child)."""
    found = set()
    for entry in Path("/proc").iterdir():
        with contextlib.suppress(OSError):
            stat = (entry / "stat").read_text()
            if entry.name.isdigit() and "(bwrap)" in stat and int(stat.rsplit(")", 1)[1].split()[1]) == os.getpid():
                found.add(int(entry.name))
    return found


async def test_module_that_hangs_while_loading_is_an_error_and_leaves_no_sandbox_behind(sandbox: Bubblewrap) -> None:
    before = sandboxes_of_this_process()
    source = CLEAN.replace("import math", "import math\n\nwhile True:\n    pass")
    findings = await run_dynamic_check(artifact_of(source), hypot_plan(), Sandbox(start_timeout_seconds=3), sandbox)
    assert [(f.rule, f.severity) for f in findings] == [("dynamic-start", "error")]
    assert "did not load the module within 3 s" in findings[0].message
    assert sandboxes_of_this_process() <= before  # the spinning sandbox was ended, not left to burn its CPU


async def test_pure_tool_that_outlives_its_time_limit_is_an_error(sandbox: Bubblewrap) -> None:
    source = CLEAN.replace('return {"c": math.hypot(a, b)}', 'return {"c": len(str(math.factorial(10**7)))}')
    findings = await run_dynamic_check(artifact_of(source), hypot_plan(), Sandbox(call_timeout_seconds=1), sandbox)
    assert [(f.rule, f.severity) for f in findings] == [("dynamic-timeout", "error")]
    assert "did not finish within 1 s" in findings[0].message


async def test_sample_run_gets_no_platform_settings_secrets_or_files(sandbox: Bubblewrap, stack: Stack) -> None:
    os.environ["BMMS_SECRET_LEAK_CHECK"] = "top-secret"
    try:
        # The tool looks for the secret in its environment and in what /proc shows of it, and for the data dir.
        source = CLEAN.replace('return {"c": math.hypot(a, b)}', (
            'environ = open("/proc/self/environ", "rb").read()\n'
            '    if b"top-secret" in environ or b"BMMS_SECRET" in environ:\n'
            '        raise ValueError("the secret leaked")\n'
            f'    open({str(stack.root)!r} + "/nats/nats-server.log", "rb")\n'
            '    return {"c": math.hypot(a, b)}'
        ))
        assert (stack.root / "nats" / "nats-server.log").exists()
        findings = await run_dynamic_check(artifact_of(source), hypot_plan(), Sandbox(), sandbox)
        assert [f.rule for f in findings] == ["dynamic-call"]  # the data dir is not there: open() raised
        no_data_dir = source.replace(f'    open({str(stack.root)!r} + "/nats/nats-server.log", "rb")\n', "")
        assert await run_dynamic_check(artifact_of(no_data_dir), hypot_plan(), Sandbox(), sandbox) == []
        leaky = no_data_dir.replace('b"top-secret" in environ', 'b"PATH" in environ')  # the probe itself works
        findings = await run_dynamic_check(artifact_of(leaky), hypot_plan(), Sandbox(), sandbox)
        assert [f.rule for f in findings] == ["dynamic-call"]
    finally:
        del os.environ["BMMS_SECRET_LEAK_CHECK"]


async def test_bad_artifact_fails_at_check_with_the_first_finding(stack: Stack, admin_nc) -> None:
    js = admin_nc.jetstream()
    org, build = "orgck2", "b" + secrets.token_hex(6)
    bad = CLEAN.replace('return {"c": math.hypot(a, b)}', 'return {"c": eval("a * b")}')
    digest = await put_artifact(js, artifact_of(bad))
    async with running(create_actor("checker"), stack.settings("checker")):
        await publish_generated(js, org, build, digest, f"{build}:generated")
        event = await eventually(lambda: outcome(js, org, build), timeout=60)
    assert isinstance(event, BuildFailed)
    assert event.step == "check" and event.code == "check_failed"
    assert event.detail.startswith("generated.py:14:18 banned-call: eval() is not allowed")
    logs = [e.message for k, e, _ in await build_events(js, org, build) if isinstance(e, LogLine)]
    assert "check: generated.py:14:18 banned-call: eval() is not allowed" in logs


async def test_artifact_that_does_not_match_its_hash_fails(stack: Stack, admin_nc) -> None:
    js = admin_nc.jetstream()
    org, build = "orgck3", "b" + secrets.token_hex(6)
    forged = hashlib.sha256(b"something else").hexdigest()
    await put_artifact(js, artifact_of(CLEAN), name=forged)
    async with running(create_actor("checker"), stack.settings("checker")):
        await publish_generated(js, org, build, forged, f"{build}:generated")
        event = await eventually(lambda: outcome(js, org, build), timeout=60)
    assert isinstance(event, BuildFailed) and event.step == "check"
    assert "does not match its hash" in event.detail


async def test_missing_artifact_fails(stack: Stack, admin_nc) -> None:
    js = admin_nc.jetstream()
    org, build = "orgck4", "b" + secrets.token_hex(6)
    async with running(create_actor("checker"), stack.settings("checker")):
        await publish_generated(js, org, build, "f" * 64, f"{build}:generated")
        event = await eventually(lambda: outcome(js, org, build), timeout=60)
    assert isinstance(event, BuildFailed) and event.step == "check"
    assert event.detail == f"artifact {'f' * 64} is not in ARTIFACTS"
    assert msgspec.json.encode(event)  # a plain, encodable event
