"""Planning benchmark: how long real OpenAPI documents take to plan and generate, and how large their served tool
lists are.

For each real document of `tests/fixtures/openapi` (the largest, OpenAI's 3 MB one, first), in this process:
1. plan: parse + plan + finish (`plan_openapi`, `finish_plan`: what the planner actor does for a build), the
   median and the slowest of `--runs` runs;
2. generate: render and hash the artifact (`build_artifact`), once;
3. served: start the artifact's tools in a worker (the process sandbox) and measure what `tools/list` really
   serves (its JSON, /4 as the planner estimates tokens), next to the planner's estimate: the ratio says how
   honest the estimate is;
4. with `--check`, the checker's static rules, mypy and ruff over the generated module (a warm cache after the
   first document).

Every figure comes from one run on this machine; run it alone. Run:
`.venv/bin/python -m ops.bench.bench_planning [--runs 5] [--check] [--only openai]`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path

from actors.checker.handlers import check_artifact
from actors.checker.toolchain import Toolchain
from actors.codegen.artifacts import build_artifact
from actors.planner.openapi import plan_openapi
from actors.planner.planning import finish_plan, plan_hash
from actors.planner.problems import PlanNotes, PlanProblem
from bus_schemas.builds import OpenApiSource
from bus_schemas.plans import ToolPlan
from runner_template.app import RunnerSettings, start_tools

FIXTURES = Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "openapi"


def plan_document(text: str, name: str) -> ToolPlan:
    notes = PlanNotes()
    return finish_plan(plan_openapi(text, OpenApiSource(document=text), name, notes), notes)


async def served_tokens(plan: ToolPlan) -> tuple[int, float]:
    """The served tool list's size in estimated tokens (its JSON / 4), and seconds to start the tools."""
    artifact = build_artifact(plan, plan_hash(plan))
    started = time.perf_counter()
    tools = await start_tools(RunnerSettings(artifact="-", insecure_no_auth=True), artifact, None)
    seconds = time.perf_counter() - started
    try:
        listed = [t.model_dump(mode="json", by_alias=True, exclude_none=True) for t in tools.tools]
    finally:
        await tools.close()
    return -(-len(json.dumps(listed, separators=(",", ":"))) // 4), seconds


async def bench(runs: int, check: bool, only: str | None) -> None:
    documents = sorted(FIXTURES.glob("*.yaml"), key=lambda p: p.stat().st_size, reverse=True)
    toolchain = Toolchain(cache_dir=Path(tempfile.mkdtemp(prefix="bmms-bench-mypy-")))
    print(f"{'document':<26} {'size':>9} {'tools':>5} {'plan p50':>9} {'plan max':>9} {'generate':>9} "
          f"{'estimate':>9} {'served':>9} {'ratio':>6} {'start':>7}" + (f" {'check':>8}" if check else ""))
    for path in documents:
        name = path.stem
        if only and only not in name:
            continue
        text = path.read_text()
        times: list[float] = []
        try:
            for _ in range(runs):
                started = time.perf_counter()
                plan = plan_document(text, name)
                times.append(time.perf_counter() - started)
        except PlanProblem as problem:
            print(f"{name:<26} {len(text):>9,} not planned: {problem}")
            continue
        started = time.perf_counter()
        artifact = build_artifact(plan, plan_hash(plan))
        generate = time.perf_counter() - started
        served, start = await served_tokens(plan)
        row = (f"{name:<26} {len(text):>9,} {len(plan.tools):>5} {statistics.median(times):>8.3f}s "
               f"{max(times):>8.3f}s {generate:>8.3f}s {plan.tool_list_tokens:>9,} {served:>9,} "
               f"{served / plan.tool_list_tokens:>6.2f} {start:>6.2f}s")
        if check:
            started = time.perf_counter()
            await check_artifact(artifact, toolchain)
            row += f" {time.perf_counter() - started:>7.2f}s"
        print(row, flush=True)
    print("plan: parse + plan + finish, median and slowest of --runs; estimate: the planner's served-token "
          "estimate; served: what tools/list serves (JSON / 4); ratio served/estimate")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--check", action="store_true", help="also time the checker over each generated module")
    parser.add_argument("--only", help="only documents whose name contains this")
    args = parser.parse_args()
    asyncio.run(bench(args.runs, args.check, args.only))


if __name__ == "__main__":
    main()
