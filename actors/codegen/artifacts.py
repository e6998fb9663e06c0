"""The artifact of a plan: its rendered module and what the runner needs to know about it, kept in the
ARTIFACTS bucket under its own hash (and the plan it comes from, read back from PLANS by its hash)."""

from __future__ import annotations

import hashlib

import nats.js.errors
from nats.js.object_store import ObjectStore

from actors.codegen.render import module_name_for, render_module
from actors.runtime.objects import ObjectUnusable, load_verified
from bus_schemas.plans import Artifact, HttpCall, ToolPlan, canonical_artifact_bytes, canonical_plan_bytes
from bus_schemas.registry import PLANS
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
        input_schemas={t.name: t.input_schema for t in plan.tools},
        output_schemas={t.name: t.output_schema for t in plan.tools if t.output_schema is not None},
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
