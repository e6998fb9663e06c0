"""The codegen actor: renders each planned build's tool plan into an artifact.

For a `planned` event it loads the plan from the PLANS bucket (checking it hashes to the name it was
asked for), renders the generated module (`actors.codegen.render`), stores the artifact in ARTIFACTS under
its own hash and publishes `generated`. Everything it writes is keyed by content or by build, so a
redelivered event re-renders the same bytes, overwrites nothing new and is de-duplicated on the stream.
A plan that cannot be rendered fails the build at `generate` with the reason.
"""

from __future__ import annotations

import hashlib

import nats.js.errors
from nats.js.object_store import ObjectStore

from actors.codegen.render import RenderRefused, module_name_for, render_module
from actors.runtime.actor import Actor, Context, TransientError, utc_now
from actors.runtime.build_events import emit, fail_step, fail_step_when_parked, start_step
from actors.runtime.objects import ObjectUnusable, load_verified
from bus_schemas.base import FailureCode
from bus_schemas.builds import AnyBuildEvent, BuildGenerated, BuildPlanned, LogLine, StepChanged
from bus_schemas.plans import Artifact, HttpCall, ToolPlan, canonical_artifact_bytes, canonical_plan_bytes
from bus_schemas.registry import ARTIFACTS, CODEGEN_PLANNED, PLANS
from runner_template import RUNNER_TEMPLATE_VERSION

PlanUnusable = ObjectUnusable
"""The plan a build names cannot be used (missing, malformed, or not its hash)."""


def sha256_hex(data: bytes) -> str:
    """The content address of `data`."""
    return hashlib.sha256(data).hexdigest()


def build_artifact(plan: ToolPlan, plan_hash: str) -> Artifact:
    """The artifact of a plan; raises RenderRefused when the plan cannot be rendered."""
    source = render_module(plan, plan_hash)
    secrets = sorted({
        t.implementation.auth_secret for t in plan.tools
        if isinstance(t.implementation, HttpCall) and t.implementation.auth_secret and t.implementation.auth != "none"
    })
    return Artifact(
        plan_hash=plan_hash,
        template_version=RUNNER_TEMPLATE_VERSION,
        module_name=module_name_for(plan_hash),
        module_source=source,
        tools=tuple(t.name for t in plan.tools),
        secrets=tuple(secrets),
        upstream_hosts=tuple(sorted({h.lower() for h in plan.upstream_hosts})),
    )


async def load_plan(store: ObjectStore, plan_hash: str) -> ToolPlan:
    """The plan stored under `plan_hash`, verified to hash to it."""
    return await load_verified(store, PLANS, plan_hash, ToolPlan, canonical_plan_bytes, "plan")


async def store_artifact(store: ObjectStore, artifact: Artifact) -> str:
    """Put the artifact under its hash (once: an existing object with that name is the same bytes)."""
    data = canonical_artifact_bytes(artifact)
    artifact_hash = sha256_hex(data)
    try:
        info = await store.get_info(artifact_hash)
    except nats.js.errors.ObjectNotFoundError:
        info = None
    if info is None or info.size != len(data):
        await store.put(artifact_hash, data)
    return artifact_hash


def create_actor() -> Actor:
    """The codegen actor, wired to its durable consumer."""
    actor = Actor("codegen")

    @actor.consumer(CODEGEN_PLANNED, on_park=fail_step_when_parked("generate", "code generation"))
    async def generate_build(event: AnyBuildEvent, ctx: Context) -> None:
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

    return actor
