"""The checker actor: every generated artifact is checked before anything runs it.

For each `generated` event it loads the Artifact from ARTIFACTS (verified against its hash), runs the
static rules (`rules.py`, a lint), mypy --strict and ruff (`toolchain.py`), then, only if the rules found no
error, the artifact in a sandboxed worker against its plan from PLANS (`dynamic.py`): a bubblewrap sandbox,
or a container with no network on docker and swarm platforms (`actors.runtime.sandboxes`), one kept started
ahead so a check waits for no imports (`state.py`). mypy's cache is warmed when the checker starts, and a
check that comes before the warm-up ended waits for it (`state.py`). Each phase is a build log line as it
starts and one as it ends, with its outcome and duration (`check: type-checking 2 tool(s) (mypy --strict)…`,
`check: lint (ruff) passed (0.03 s)`), so the person watching sees the check move. It logs every finding as
a build log line (`check: generated.py:12:5 banned-call: eval() is not allowed`), and publishes `checked`, or
`failed` at step `check` naming the first error finding. Every event it emits has a key derived from the
artifact's findings, which are deterministic, so a redelivered `generated` changes nothing.

The checker has no database (no `storage.py`, no `migrations/`); its state (`CheckerState`, in `state.py`
because the sandbox is opened and closed with serving) is its toolchain and its sample runs' sandbox.
"""

from __future__ import annotations

import asyncio
import keyword
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Final

from nats.js.object_store import ObjectStore

from actors.checker.dynamic import run_dynamic_check
from actors.checker.locate import deduplicate_findings, locate_findings
from actors.checker.rules import Finding, check_source, errors
from actors.checker.state import CheckerState
from actors.checker.toolchain import Toolchain, lint, type_check
from actors.runtime.build_events import StepFailed, StepRun, pipeline_step
from actors.runtime.objects import ObjectUnusable, load_verified
from bus_schemas.base import FailureCode
from bus_schemas.builds import BuildChecked, BuildGenerated
from bus_schemas.plans import Artifact, ToolPlan, canonical_artifact_bytes, canonical_plan_bytes
from bus_schemas.registry import ARTIFACTS, PLANS

CHECK_FAILED: Final = "check_failed"
"""The `failed` event's code when the artifact has error findings."""

MAX_LOGGED_FINDINGS = 100
"""Findings beyond this many are summarised in one line instead of one line each."""


ArtifactUnusable = ObjectUnusable
"""The artifact (or its plan) a build names cannot be used."""


PhaseLog = Callable[[str, str], Awaitable[None]]
"""Where a check says what it is doing: (a key naming the line within the step, the message)."""


@pipeline_step("check", after=BuildGenerated, doing="checking")
async def check_build(event: BuildGenerated, run: StepRun[BuildGenerated], checker: CheckerState) -> BuildChecked:
    """Check a `generated` build's artifact and log its findings; the build goes on `checked` if none is an
    error."""
    store, plans = await run.ctx.object_store(ARTIFACTS), await run.ctx.object_store(PLANS)
    try:
        artifact = await load_artifact(store, event.artifact_hash)
        plan = await load_plan(plans, artifact.plan_hash)
    except ArtifactUnusable as exc:
        raise StepFailed(FailureCode.NOT_FOUND, str(exc)) from None

    async def warmed_up() -> None:
        if checker.warming_up:
            await run.log("phase:mypy:warm-up", "check: waiting for mypy's warm-up (the checker has just started)…")
        await checker.warmed_up()

    async with run.ctx.heartbeat():
        # Only code that passed the AST rules is ever run, and then only in the sandbox.
        findings = await check_artifact(artifact, checker.toolchain, lambda: sample_run(checker, artifact, plan),
                                        log=run.log, warmed_up=warmed_up)
    # Once per problem, and where the person wrote it: a body's line, not the generated file's.
    findings = locate_findings(deduplicate_findings(findings), artifact.module_source, plan)
    for index, finding in enumerate(findings[:MAX_LOGGED_FINDINGS]):
        await run.log(f"finding:{index}", f"check: {finding.render()}", finding.severity)
    if len(findings) > MAX_LOGGED_FINDINGS:
        await run.log("finding:more", f"check: {len(findings) - MAX_LOGGED_FINDINGS} more finding(s) not shown",
                      "warning")
    if errors(findings):
        raise StepFailed(CHECK_FAILED, failure_detail(findings))
    warnings = len(findings)
    await run.log("passed", f"check: passed: {len(artifact.tools)} tool(s), static rules, mypy --strict, ruff "
                  f"and a sandboxed run{f' ({warnings} warning(s))' if warnings else ''}")
    return run.next(BuildChecked, artifact_hash=event.artifact_hash)


async def load_artifact(store: ObjectStore, artifact_hash: str) -> Artifact:
    """The artifact stored under `artifact_hash`, verified to hash to it."""
    artifact = await load_verified(store, ARTIFACTS, artifact_hash, Artifact, canonical_artifact_bytes, "artifact")
    name = artifact.module_name
    # The module name becomes a file name and an import name: nothing but a plain identifier.
    if not (name.isascii() and name.isidentifier() and not keyword.iskeyword(name)):
        raise ArtifactUnusable(f"artifact {artifact_hash} has an unusable module name {name!r}")
    return artifact


async def load_plan(store: ObjectStore, plan_hash: str) -> ToolPlan:
    """The plan an artifact was rendered from, verified to hash to `plan_hash`."""
    return await load_verified(store, PLANS, plan_hash, ToolPlan, canonical_plan_bytes, "plan of the artifact")


async def check_artifact(
    artifact: Artifact, toolchain: Toolchain, dynamic: Callable[[], Awaitable[list[Finding]]] | None = None,
    log: PhaseLog | None = None, warmed_up: Callable[[], Awaitable[None]] | None = None,
) -> list[Finding]:
    """The findings of the artifact's module: the AST rules first, then mypy and ruff, each by position, then
    the sandboxed run's. `dynamic` runs only when the AST rules found no error (they are the safety gate:
    what they pass may run in the sandbox), and then at the same time as mypy and ruff. `log` hears each
    phase start and end as it happens; mypy waits for `warmed_up` (the toolchain's warm-up) first."""
    phases = CheckPhases(log)
    file = f"{artifact.module_name}.py"
    static = await phases.run("static", "static rules", "static rules",
                              _at_once(lambda: check_source(artifact.module_source, file, artifact.tools)))
    if any(f.rule in {"syntax-error", "too-large"} for f in static):
        return static  # nothing more to learn from the tools

    async def type_checked() -> list[Finding]:
        if warmed_up is not None:
            await warmed_up()
        return await type_check(artifact.module_source, artifact.module_name, toolchain)

    if dynamic is None:
        sample = _at_once(list)
    elif errors(static):
        sample = phases.skipped("sample-run", "sandboxed sample run skipped: the static rules found errors, and "
                                "only code that passes them runs")
    else:
        sample = phases.run("sample-run", "sandboxed sample run", "sandboxed sample run", dynamic())
    typed, linted, ran = await asyncio.gather(
        phases.run("mypy", f"type-checking {len(artifact.tools)} tool(s) (mypy --strict)",
                   "type check (mypy --strict)", type_checked()),
        phases.run("ruff", "lint (ruff)", "lint (ruff)", lint(artifact.module_source, artifact.module_name, toolchain)),
        sample,
    )
    tooled = sorted(typed + linted)
    # Static findings lead: they say what the code tries to do, the tools' findings often only follow from it.
    return static + [f for f in tooled if f not in static] + ran


@dataclass(frozen=True)
class CheckPhases:
    """The phases of one check, each logged as it starts and as it ends, with its outcome and duration."""

    log: PhaseLog | None

    async def run(self, key: str, starting: str, name: str, work: Awaitable[list[Finding]]) -> list[Finding]:
        """`work`'s findings, between a line saying it started and one saying how it ended."""
        await self._say(f"phase:{key}:started", f"check: {starting}…")
        began = time.perf_counter()
        findings = await work
        outcome = "passed" if not findings else ", ".join(
            f"{n} {severity}(s)" for severity in ("error", "warning")
            if (n := sum(f.severity == severity for f in findings))
        )
        await self._say(f"phase:{key}:finished", f"check: {name} {outcome} ({time.perf_counter() - began:.2f} s)")
        return findings

    async def skipped(self, key: str, why: str) -> list[Finding]:
        """A phase that does not run, and why."""
        await self._say(f"phase:{key}:skipped", f"check: {why}")
        return []

    async def _say(self, key: str, message: str) -> None:
        if self.log is not None:
            await self.log(key, message)


async def _at_once(check: Callable[[], list[Finding]]) -> list[Finding]:
    """A synchronous check as a phase's work."""
    return check()


async def sample_run(checker: CheckerState, artifact: Artifact, plan: ToolPlan) -> list[Finding]:
    """The dynamic check's findings, in the checker's sandbox; an error finding when it has none."""
    if checker.launcher is None:
        why = checker.unavailable or "no sandbox is configured"
        return [Finding(1, 1, "dynamic-start", why, "error", f"{artifact.module_name}.py")]
    return await run_dynamic_check(artifact, plan, checker.sandbox, checker.launcher)


def failure_detail(findings: list[Finding]) -> str:
    """The `failed` detail: the first error finding (static rules before tools), and how many more there are."""
    errs = errors(findings)
    more = f" (and {len(errs) - 1} more error(s))" if len(errs) > 1 else ""
    return f"{errs[0].render()}{more}"
