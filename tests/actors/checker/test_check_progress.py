"""The check step as the person watching a build sees it: each phase a log line as it starts and as it ends,
published while it runs; mypy's cache warmed when the checker starts, so the first check reads the runner's
API from it; and a cache shared by every tenant's build that no generated module can poison."""

from __future__ import annotations

import asyncio
import contextlib
import re
import secrets
import sqlite3
from pathlib import Path

import pytest

from actors.checker.actor import CheckerActor, create_actor
from actors.checker.state import mypy_cache_dir
from actors.checker.toolchain import Toolchain, check_with_tools, type_check, warm_up
from actors.codegen.artifacts import build_artifact
from bus_schemas.builds import BuildChecked, LogLine, StepChanged
from runner_template.sandbox import Bubblewrap, Opened
from tests.actors.checker.test_checker import CLEAN, artifact_of, hypot_plan, outcome, publish_generated, put_artifact
from tests.conftest import Stack, eventually, running
from tests.support.builds import build_events, put_plan
from tests.support.codegen_samples import plan_hash, sample_plan

SAMPLE_RUN_STARTED = "check: sandboxed sample run…"


class GatedSandbox:
    """Bubblewrap whose workers start only once `gate` is set: the test holds the sample run open until it
    has read the line that announces it."""

    def __init__(self, gate: asyncio.Event) -> None:
        self.gate = gate
        self.sandbox = Bubblewrap(uid=None)

    @property
    def description(self) -> str:
        return self.sandbox.description

    async def open(self) -> Opened:
        await self.gate.wait()
        return await self.sandbox.open()


async def check_lines(js, org: str, build: str) -> list[str]:
    """The build's check log so far, durations left out (`(0.31 s)` -> `(_ s)`)."""
    return [re.sub(r"\(\d+\.\d\d s\)", "(_ s)", e.message)
            for _, e, _ in await build_events(js, org, build) if isinstance(e, LogLine) and e.step == "check"]


def cache_entries(cache: Path) -> dict[str, float]:
    """mypy's cache as it stands: each entry, and when mypy wrote it (its SQLite cache, in shards)."""
    entries: dict[str, float] = {}
    for db in sorted(cache.glob("*/cache*.db")):
        with contextlib.closing(sqlite3.connect(db)) as conn:
            entries.update(conn.execute("SELECT path, mtime FROM files2"))
    return entries


async def test_check_logs_each_phase_as_it_starts_and_ends(stack: Stack, admin_nc) -> None:
    js = admin_nc.jetstream()
    org, build = "orgcp1", "b" + secrets.token_hex(6)
    await put_plan(js, hypot_plan())
    digest = await put_artifact(js, artifact_of(CLEAN))
    gate = asyncio.Event()
    async with running(create_actor(launcher=GatedSandbox(gate)), stack.settings("checker")):
        await publish_generated(js, org, build, digest, f"{build}:generated")

        async def sample_run_announced() -> list[str]:
            lines = await check_lines(js, org, build)
            return lines if SAMPLE_RUN_STARTED in lines else []

        # The sample run cannot start before its line was read here: the line comes while the phase runs.
        while_running = await eventually(sample_run_announced, timeout=60)
        gate.set()
        event = await eventually(lambda: outcome(js, org, build), timeout=60)
    assert isinstance(event, BuildChecked)
    assert while_running[:2] == ["check: static rules…", "check: static rules passed (_ s)"]
    assert "check: sandboxed sample run passed (_ s)" not in while_running

    history = await build_events(js, org, build)
    steps = [i for i, (_, e, _) in enumerate(history) if isinstance(e, StepChanged)]
    logged = [i for i, (_, e, _) in enumerate(history) if isinstance(e, LogLine)]
    assert steps[0] < logged[0] and logged[-1] < steps[1]  # all of it between the step's started and finished
    lines = await check_lines(js, org, build)
    assert lines[:2] == ["check: static rules…", "check: static rules passed (_ s)"]
    phases = [("check: type-checking 1 tool(s) (mypy --strict)…", "check: type check (mypy --strict) passed (_ s)"),
              ("check: lint (ruff)…", "check: lint (ruff) passed (_ s)"),
              (SAMPLE_RUN_STARTED, "check: sandboxed sample run passed (_ s)")]
    for started, finished in phases:
        assert 2 <= lines.index(started) < lines.index(finished), lines
    waiting = [line for line in lines if "warm-up" in line]  # only while the checker's warm-up still runs
    if waiting:
        assert lines.index(phases[0][0]) < lines.index(waiting[0]) < lines.index(phases[0][1])
    assert lines[-1] == "check: passed: 1 tool(s), static rules, mypy --strict, ruff and a sandboxed run"
    assert len(lines) == 2 + 2 * len(phases) + len(waiting) + 1


async def test_warm_up_fills_the_data_dirs_cache_so_the_first_check_reads_the_runner_from_it(
    stack: Stack, admin_nc, tmp_path: Path
) -> None:
    js = admin_nc.jetstream()
    org, build = "orgcp2", "b" + secrets.token_hex(6)
    await put_plan(js, hypot_plan())
    digest = await put_artifact(js, artifact_of(CLEAN))
    settings = stack.settings("checker", data_dir=str(tmp_path))
    actor = create_actor()
    assert isinstance(actor, CheckerActor)
    async with running(actor, settings):
        await actor.state.warmed_up()
        cache = mypy_cache_dir(settings)
        warmed = cache_entries(cache)
        runner = {entry: at for entry, at in warmed.items() if entry.startswith("runner_template/")}
        assert {"runner_template/sdk.data.ff", "runner_template/upstream.data.ff"} <= set(runner)
        assert "typing.data.ff" in warmed and "json/__init__.data.ff" in warmed  # what generated code may import
        assert not [entry for entry in warmed if entry.startswith("generated.")]
        await publish_generated(js, org, build, digest, f"{build}:generated")
        assert isinstance(await eventually(lambda: outcome(js, org, build), timeout=60), BuildChecked)
        checked = cache_entries(cache)
    # The check's own module went into the same cache; the runner's entries were read, not written again
    # (mypy rewrites every module it analyses).
    assert [entry for entry in checked if entry.startswith("generated.")]
    assert {entry: checked[entry] for entry in runner} == runner


@pytest.mark.parametrize("tool", ["mypy", "ruff"])
async def test_a_module_named_like_the_tool_that_reads_it_is_not_run(tool: str, tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    hostile = f"import pathlib\n\npathlib.Path({str(marker)!r}).write_text('ran')\n"
    await check_with_tools(hostile, tool, Toolchain())
    assert not marker.exists()


async def test_a_module_named_like_a_cached_one_changes_no_other_build_s_findings(tmp_path: Path) -> None:
    # `opentelemetry` (a namespace package the runner's API imports) has the same cache entry as a module of
    # that name; a generated module could take its place in the cache, and must not take it in a check.
    toolchain = Toolchain(cache_dir=tmp_path / "mypy-cache")
    assert await warm_up(toolchain) == []
    warmed = cache_entries(toolchain.cache_dir)
    impostor = '"""Not the real one."""\n\ntrace = None\ncontext = None\n'
    await type_check(impostor, "opentelemetry", toolchain)
    taken = cache_entries(toolchain.cache_dir)
    assert taken["opentelemetry.data.ff"] != warmed["opentelemetry.data.ff"]
    plan = sample_plan("https://api.example.com")
    artifact = build_artifact(plan, plan_hash(plan))
    assert await check_with_tools(artifact.module_source, artifact.module_name, toolchain) == []
    # found stale (another size, another content) and analysed again from the real package
    assert cache_entries(toolchain.cache_dir)["opentelemetry.data.ff"] != taken["opentelemetry.data.ff"]
