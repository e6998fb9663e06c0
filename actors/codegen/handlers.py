"""The codegen actor: renders each planned build's tool plan into an artifact.

For a `planned` event it loads the plan from the PLANS bucket (checking it hashes to the name it was
asked for), renders the generated module (`actors.codegen.render`), stores the artifact in ARTIFACTS under
its own hash (`actors.codegen.artifacts`) and publishes `generated`. Everything it writes is keyed by content
or by build, so a redelivered event re-renders the same bytes, overwrites nothing new and is de-duplicated on
the stream. A plan that cannot be rendered fails the build at `generate` with the reason.

Codegen has no database (no `storage.py`, no `migrations/`) and no state (its step's state is None).
"""

from __future__ import annotations

from actors.codegen.artifacts import PlanUnusable, build_artifact, load_plan, store_artifact
from actors.codegen.render import RenderRefused
from actors.runtime.build_events import StepFailed, StepRun, pipeline_step
from bus_schemas.base import FailureCode
from bus_schemas.builds import BuildGenerated, BuildPlanned
from bus_schemas.plans import HttpCall
from bus_schemas.registry import ARTIFACTS, PLANS
from runner_template import RUNNER_TEMPLATE_VERSION


@pipeline_step("generate", after=BuildPlanned, doing="code generation")
async def generate_build(event: BuildPlanned, run: StepRun[BuildPlanned], state: None) -> BuildGenerated:
    """Render a `planned` build's plan into its artifact and store it; the build goes on `generated`."""
    plans, artifacts = await run.ctx.object_store(PLANS), await run.ctx.object_store(ARTIFACTS)
    try:
        plan = await load_plan(plans, event.plan_hash)
        artifact = build_artifact(plan, event.plan_hash)
    except PlanUnusable as exc:
        raise StepFailed(FailureCode.NOT_FOUND, str(exc)) from None
    except RenderRefused as exc:
        raise StepFailed(FailureCode.INVALID, f"cannot generate the server: {exc}") from None
    artifact_hash = await store_artifact(artifacts, artifact)
    http = sum(isinstance(t.implementation, HttpCall) for t in plan.tools)
    await run.log("rendered", f"rendered {len(artifact.tools)} tool(s) ({http} upstream, "
                  f"{len(artifact.tools) - http} function) on runner template {RUNNER_TEMPLATE_VERSION}: "
                  f"artifact {artifact_hash[:12]}")
    return run.next(BuildGenerated, artifact_hash=artifact_hash)
