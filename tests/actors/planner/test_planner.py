"""The build registry: accepting builds and projecting their status (a plain-words build without a Claude key
fails at plan, saying so)."""

from __future__ import annotations

import secrets

import asyncpg

from actors.catalog import create_actor
from actors.planner.registry_storage import Projected, apply_events, fold_events, insert_build
from actors.runtime.bus import call
from bus_schemas.base import Failed
from bus_schemas.builds import BuildAccepted, BuildSummary, GetBuild, PlainWords, SubmitBuild
from bus_schemas.registry import GET_BUILD, SUBMIT_BUILD
from tests.conftest import Stack, eventually, running


async def test_submitted_build_is_recorded_and_fails_at_plan_with_the_reason(stack: Stack, admin_nc) -> None:
    async with running(create_actor("planner"), stack.settings("planner")):
        request = SubmitBuild(org_id="org1", requested_by="tester", name="weather", source=PlainWords(text="weather"))
        accepted = await call(admin_nc, SUBMIT_BUILD, request, timeout=5)
        assert isinstance(accepted, BuildAccepted)

        async def failed_summary() -> BuildSummary | None:
            summary = await call(admin_nc, GET_BUILD, GetBuild(org_id="org1", build_id=accepted.build_id), timeout=5)
            assert isinstance(summary, BuildSummary)
            return summary if summary.status == "failed" else None

        summary = await eventually(failed_summary)
        assert isinstance(summary, BuildSummary)
        assert summary.failure is not None
        assert summary.failure.startswith("plan: plain-words planning needs ANTHROPIC_API_KEY")


async def test_same_idempotency_key_returns_the_same_build(stack: Stack, admin_nc, db: asyncpg.Connection) -> None:
    async with running(create_actor("planner"), stack.settings("planner")):
        request = SubmitBuild(
            org_id="org2", requested_by="t", name="x", source=PlainWords(text="x"), idempotency_key="k-1"
        )
        first = await call(admin_nc, SUBMIT_BUILD, request, timeout=5)
        second = await call(admin_nc, SUBMIT_BUILD, request, timeout=5)
        assert isinstance(first, BuildAccepted) and isinstance(second, BuildAccepted)
        assert first.build_id == second.build_id
        assert await db.fetchval("SELECT count(*) FROM builds WHERE org_id = 'org2'") == 1


async def test_another_organisations_build_is_not_found(stack: Stack, admin_nc) -> None:
    async with running(create_actor("planner"), stack.settings("planner")):
        request = SubmitBuild(org_id="org3", requested_by="t", name="x", source=PlainWords(text="x"))
        accepted = await call(admin_nc, SUBMIT_BUILD, request, timeout=5)
        assert isinstance(accepted, BuildAccepted)
        reply = await call(admin_nc, GET_BUILD, GetBuild(org_id="org4", build_id=accepted.build_id), timeout=5)
        assert isinstance(reply, Failed) and reply.code == "not_found"


async def test_a_build_whose_text_holds_a_nul_character_is_refused_as_invalid(stack: Stack, admin_nc) -> None:
    async with running(create_actor("planner"), stack.settings("planner")):
        request = SubmitBuild(org_id="org5", requested_by="t", name="x", source=PlainWords(text="null \x00 here"))
        reply = await call(admin_nc, SUBMIT_BUILD, request, timeout=5)
        assert isinstance(reply, Failed) and reply.code == "invalid" and "U+0000" in reply.detail


def test_a_batch_folds_to_each_builds_newest_milestone_and_newest_event() -> None:
    events = [
        Projected("a", "requested", 1), Projected("b", "log", 2), Projected("a", "log", 3),
        Projected("a", "failed", 5, "plan: no key"), Projected("a", "planned", 4), Projected("a", "log", 6),
        Projected("b", "log", 7), Projected("c", "deployed", 9), Projected("c", "log", 8),
    ]
    assert sorted(fold_events(events), key=lambda e: e.seq) == [
        Projected("a", "failed", 5, "plan: no key"),  # a's newest milestone sets its status ...
        Projected("a", "log", 6),  # ... and its newest event its last sequence
        Projected("b", "log", 7),  # no milestone: only the last sequence moves
        Projected("c", "deployed", 9),  # the milestone is also the newest event: one change
    ]


async def test_a_projected_batch_sets_status_and_sequence_and_a_redelivered_one_changes_nothing(
    db: asyncpg.Connection,
) -> None:
    build_id = f"b-{secrets.token_hex(4)}"
    await insert_build(db, build_id=build_id, org_id="org5", name="x", requested_by="t", source_json="{}",
                       idempotency_key=None)
    batch = [Projected(build_id, "requested", 11), Projected(build_id, "log", 12),
             Projected(build_id, "failed", 14, "plan: no key"), Projected(build_id, "log", 15)]
    async with db.transaction():
        await apply_events(db, batch)
    row = await db.fetchrow("SELECT status, failure, status_seq, last_seq FROM builds WHERE build_id = $1", build_id)
    assert dict(row) == {"status": "failed", "failure": "plan: no key", "status_seq": 14, "last_seq": 15}
    async with db.transaction():
        await apply_events(db, [Projected(build_id, "planned", 13), Projected(build_id, "log", 12)])  # older
    again = await db.fetchrow("SELECT status, failure, status_seq, last_seq FROM builds WHERE build_id = $1", build_id)
    assert dict(again) == dict(row)
