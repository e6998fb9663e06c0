"""The codegen actor over the bus: planned -> artifact in ARTIFACTS -> generated, as the real codegen user."""

from __future__ import annotations

import hashlib
import os
import secrets

import msgspec

from actors.catalog import create_actor
from actors.codegen.artifacts import build_artifact
from actors.runtime.actor import utc_now
from actors.runtime.bus import connect, publish_event
from bus_schemas.builds import AnyBuildEvent, BuildFailed, BuildGenerated, BuildPlanned
from bus_schemas.plans import Artifact, canonical_artifact_bytes
from bus_schemas.registry import ARTIFACTS, build_subject
from tests.conftest import Stack, eventually, running
from tests.support.builds import build_events, last_event, put_plan
from tests.support.codegen_samples import SECRET_NAME, plan_hash, sample_plan


async def publish_planned(js, org: str, build: str, digest: str, msg_id: str) -> None:
    event = BuildPlanned(build_id=build, org_id=org, at=utc_now(), name="codegen-test", plan_hash=digest, tool_count=4)
    await publish_event(js, build_subject(org, build, "planned"), event, msg_id)


async def test_planned_build_gets_a_stored_artifact_and_a_generated_event(stack: Stack, admin_nc) -> None:
    js = admin_nc.jetstream()
    secret_value = "value-" + secrets.token_hex(8)
    os.environ[f"BMMS_SECRET_{SECRET_NAME}"] = secret_value  # present in the process; must never be rendered
    try:
        plan = sample_plan("https://api.example.com")
        digest = await put_plan(js, plan)
        org, build = "orgcg1", "b" + secrets.token_hex(6)
        async with running(create_actor("codegen"), stack.settings("codegen")):
            await publish_planned(js, org, build, digest, f"{build}:planned")

            async def generated() -> AnyBuildEvent | None:
                return await last_event(js, org, build, "generated")

            event = await eventually(generated)
            assert isinstance(event, BuildGenerated)
            # a redelivered (or re-published) `planned` re-renders the same artifact; history is not doubled
            await publish_planned(js, org, build, digest, f"{build}:planned-again")

            async def codegen_caught_up() -> bool:
                consumer = await js.consumer_info("BUILDS", "codegen")
                return consumer.num_ack_pending == 0 and consumer.num_pending == 0

            await eventually(codegen_caught_up)
        store = await js.object_store(ARTIFACTS.name)
        data = (await store.get(event.artifact_hash)).data
        assert hashlib.sha256(data).hexdigest() == event.artifact_hash
        artifact = msgspec.json.decode(data, type=Artifact)
        assert canonical_artifact_bytes(artifact) == data
        assert artifact == build_artifact(plan, digest)
        events = await build_events(js, org, build)
        kinds = [k for k, _, _ in events]
        assert kinds.count("generated") == 1 and kinds.count("planned") == 2
        assert [e.state for k, e, _ in events if k == "step"] == ["started", "finished"]
        assert secret_value not in artifact.module_source
        assert all(secret_value.encode() not in raw for _, _, raw in events)
    finally:
        del os.environ[f"BMMS_SECRET_{SECRET_NAME}"]


async def test_a_pure_body_that_does_not_parse_fails_the_build_at_generate(stack: Stack, admin_nc) -> None:
    js = admin_nc.jetstream()
    plan = sample_plan("https://api.example.com", add_body="return (a +")
    digest = await put_plan(js, plan)
    org, build = "orgcg2", "b" + secrets.token_hex(6)
    async with running(create_actor("codegen"), stack.settings("codegen")):
        await publish_planned(js, org, build, digest, f"{build}:planned")

        async def failed() -> AnyBuildEvent | None:
            return await last_event(js, org, build, "failed")

        event = await eventually(failed)
    assert isinstance(event, BuildFailed) and event.step == "generate" and event.code == "invalid"
    assert "tool 'add': the function body is not valid Python" in event.detail
    assert await last_event(js, org, build, "generated") is None


async def test_a_plan_missing_from_the_bucket_fails_the_build_with_the_reason(stack: Stack, admin_nc) -> None:
    js = admin_nc.jetstream()
    org, build = "orgcg3", "b" + secrets.token_hex(6)
    missing = "f" * 64
    async with running(create_actor("codegen"), stack.settings("codegen")):
        await publish_planned(js, org, build, missing, f"{build}:planned")

        async def failed() -> AnyBuildEvent | None:
            return await last_event(js, org, build, "failed")

        event = await eventually(failed)
    assert isinstance(event, BuildFailed) and event.step == "generate"
    assert f"plan {missing} is not in PLANS" in event.detail


async def test_checker_reads_artifacts_and_cannot_write_them(stack: Stack, admin_nc) -> None:
    plan = sample_plan("https://api.example.com")
    artifact = build_artifact(plan, plan_hash(plan))
    data = canonical_artifact_bytes(artifact)
    digest = hashlib.sha256(data).hexdigest()
    await (await admin_nc.jetstream().object_store(ARTIFACTS.name)).put(digest, data)
    nc = await connect(stack.settings("checker"), "test-checker-artifacts")
    try:
        store = await nc.jetstream().object_store(ARTIFACTS.name)
        assert (await store.get(digest)).data == data
        try:
            await store.put("f" * 64, b"{}")
        except Exception:
            pass
        else:
            raise AssertionError("the checker wrote an artifact")
    finally:
        await nc.close()
