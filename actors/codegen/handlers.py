"""The codegen actor: renders each planned build's tool plan into an artifact.

For a `planned` event it loads the plan from the PLANS bucket (checking it hashes to the name it was
asked for), renders the generated module (`actors.codegen.render`), stores the artifact in ARTIFACTS under
its own hash (`actors.codegen.artifacts`) and publishes `generated`. Everything it writes is keyed by content
or by build, so a redelivered event re-renders the same bytes, overwrites nothing new and is de-duplicated on
the stream. A plan that cannot be rendered fails the build at `generate` with the reason.

Codegen has no database (no `storage.py`, no `migrations/`) and no state: its one handler takes only the
event and its context.
"""

from __future__ import annotations

import nats.js.errors

from actors.codegen.artifacts import PlanUnusable, build_artifact, load_plan, store_artifact
from actors.codegen.render import RenderRefused
from actors.runtime.actor import Context, TransientError, utc_now
from actors.runtime.build_events import emit, fail_step, start_step
from bus_schemas.base import FailureCode
from bus_schemas.builds import AnyBuildEvent, BuildGenerated, BuildPlanned, LogLine, StepChanged
from bus_schemas.plans import HttpCall
from bus_schemas.registry import ARTIFACTS, PLANS
from runner_template import RUNNER_TEMPLATE_VERSION


async def generate_build(event: AnyBuildEvent, ctx: Context) -> None:
    """Render a `planned` build's plan into its artifact, store it and publish `generated`."""
    if not isinstance(event, BuildPlanned):
        return
    ids = {"build_id": event.build_id, "org_id": event.org_id}
    await start_step(ctx, event, "generate")
    try:
        plans = await ctx.js.object_store(PLANS.name)
        artifacts = await ctx.js.object_store(ARTIFACTS.name)
    except nats.js.errors.BucketNotFoundError as exc:
        raise TransientError(f"object bucket missing (run `bmms migrate`): {exc}") from None
    try:
        plan = await load_plan(plans, event.plan_hash)
        artifact = build_artifact(plan, event.plan_hash)
    except PlanUnusable as exc:
        await fail_step(ctx, event, "generate", FailureCode.NOT_FOUND, str(exc))
        return
    except RenderRefused as exc:
        await fail_step(ctx, event, "generate", FailureCode.INVALID, f"cannot generate the server: {exc}")
        return
    artifact_hash = await store_artifact(artifacts, artifact)
    http = sum(isinstance(t.implementation, HttpCall) for t in plan.tools)
    message = (
        f"rendered {len(artifact.tools)} tool(s) ({http} upstream, {len(artifact.tools) - http} function) "
        f"on runner template {RUNNER_TEMPLATE_VERSION}: artifact {artifact_hash[:12]}"
    )
    await emit(ctx, LogLine(**ids, at=utc_now(), step="generate", level="info", message=message), "log",
               "generate:rendered")
    await emit(ctx, StepChanged(**ids, at=utc_now(), step="generate", state="finished"), "step",
               "generate:finished")
    await emit(ctx, BuildGenerated(**ids, at=utc_now(), artifact_hash=artifact_hash), "generated", "generated")
