"""The metering actor counts every tool call exactly once for the organisation that owns its server, keeps
the QUOTAS bucket true, and answers quota checks; the planner asks it before a build starts."""

from __future__ import annotations

import logging
import random
import signal
import subprocess
import sys
from collections import Counter

import asyncpg
import msgspec
import nats.js.errors
import pytest
from nats.aio.client import Client

from actors.catalog import create_actor
from actors.metering.billing import PlanChange, apply_plan_change, define_plan, metered_usage
from actors.metering.publisher import QuotaPublisher
from actors.metering.quotas import Plan
from actors.runtime.actor import utc_now
from actors.runtime.bus import call, publish_event
from actors.runtime.codec import decode
from bus_schemas.base import Failed
from bus_schemas.builds import (
    BuildAccepted,
    BuildFailed,
    BuildPlanned,
    BuildRequested,
    FunctionBody,
    LogLine,
    StepChanged,
    SubmitBuild,
    ToolParameter,
    ToolSpec,
    ToolSpecSource,
)
from bus_schemas.ops import DeadLetter
from bus_schemas.registry import (
    CHECK_QUOTA,
    DEAD_LETTERS,
    GET_QUOTA,
    GET_USAGE,
    QUOTAS,
    SUBMIT_BUILD,
    TOOL_USAGE,
    build_subject,
)
from bus_schemas.usage import CheckQuota, GetQuota, GetUsage, QuotaAllowed, QuotaState, QuotaStatus, UsageReport
from tests.actors.metering.conftest import (
    counted_calls,
    new_id,
    publish_calls,
    server_changed,
    tool_call,
    usage_drained,
    wait_for_metering,
)
from tests.conftest import Stack, eventually, running
from tests.support.builds import build_events


def this_period() -> str:
    return utc_now()[:7]


async def usage(nc: Client, org: str, server: str | None = None) -> UsageReport:
    report = await call(nc, GET_USAGE, GetUsage(org_id=org, period=this_period(), server_id=server), timeout=10)
    assert isinstance(report, UsageReport), report
    return report


class MeteringProcess:
    """`bmms actor metering` in its own OS process, so it can be killed mid-batch."""

    def __init__(self, stack: Stack) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "ops.cli", "actor", "metering"], env=stack.env("metering"),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(60)


async def test_ten_thousand_calls_with_duplicates_and_a_killed_metering_give_exact_totals(
    stack: Stack, admin_nc: Client, db: asyncpg.Connection
) -> None:
    js = admin_nc.jetstream()
    org = new_id("o")
    servers = [new_id("s"), new_id("s")]
    for server in servers:
        await server_changed(js, org, server)
    calls = [tool_call(org, servers[n % 2], n) for n in range(10_000)]
    rng = random.Random(6)
    duplicates = rng.sample(calls, 500)  # 5%: half re-published within JetStream's window, half after it
    expected_tools = Counter((c.server_id, c.tool) for c in calls)
    expected_errors = sum(c.status == "error" for c in calls)
    expected_bytes = sum(c.bytes_out for c in calls)

    published = await publish_calls(js, calls[:5000])
    first = MeteringProcess(stack)
    second: MeteringProcess | None = None
    try:
        # Killed while it works through the backlog: batches in flight are committed but not acked, or
        # not committed at all; both come back to the next copy.
        await eventually(lambda: _at_least(db, org, 1000), timeout=60, interval=0.01)
        first.kill()
        published_late = await publish_calls(js, calls[5000:])
        again = await publish_calls(js, duplicates[:250])
        after_window = await publish_calls(js, duplicates[250:], with_msg_id=False)
        assert published.stored + published_late.stored == 10_000
        assert again.duplicates == 250  # JetStream recognised these itself...
        assert after_window.stored == 250  # ...but these reach metering as new messages
        second = MeteringProcess(stack)
        await wait_for_metering(admin_nc)
        await eventually(lambda: usage_drained(admin_nc), timeout=120, interval=0.2)
        assert await counted_calls(db, org) == 10_000
        report = await usage(admin_nc, org)
    finally:
        first.stop()
        if second is not None:
            second.stop()
    assert report.tool_calls == 10_000
    assert report.tool_errors == expected_errors
    assert report.bytes_out == expected_bytes
    assert report.duration_ms == 10_000 * 1.5
    assert {(t.server_id, t.tool): t.calls for t in report.by_tool} == dict(expected_tools)
    assert {s.server_id: s.calls for s in report.by_server} == {servers[0]: 5000, servers[1]: 5000}
    # the calls were made just now: all of each server's calls are today's
    assert {s.server_id: s.calls_today for s in report.by_server} == {servers[0]: 5000, servers[1]: 5000}
    assert sum(d.calls for d in report.by_day) == 10_000
    seen = await db.fetchval("SELECT count(*) FROM metering_tool_calls_seen WHERE event_id LIKE ANY($1::text[])",
                             [f"{s}-%" for s in servers])
    assert seen == 10_000


async def _at_least(db: asyncpg.Connection, org: str, count: int) -> bool:
    return await counted_calls(db, org) >= count


async def _exactly(db: asyncpg.Connection, org: str, count: int) -> int | None:
    counted = await counted_calls(db, org)
    assert counted <= count, f"counted {counted} > {count}: counted what it should not have"
    return counted if counted == count else None


async def test_a_call_claiming_another_organisation_is_rejected_and_never_counted(
    stack: Stack, admin_nc: Client, db: asyncpg.Connection
) -> None:
    js = admin_nc.jetstream()
    owner, claimant = new_id("o"), new_id("o")
    server = new_id("s")
    await server_changed(js, owner, server)
    async with running(create_actor("metering"), stack.settings("metering")):
        forged = [tool_call(claimant, server, n) for n in range(3)]
        honest = [tool_call(owner, server, n) for n in range(3, 5)]
        await publish_calls(js, [*forged, *honest])
        await eventually(lambda: _exactly(db, owner, 2))

        async def all_rejected() -> list[asyncpg.Record] | None:
            rows = await db.fetch(
                "SELECT event_id, claimed_org, recorded_org FROM metering_rejected WHERE server_id = $1", server)
            return rows if len(rows) >= len(forged) else None

        rejected = await eventually(all_rejected)
        assert isinstance(rejected, list)
        assert {(r["event_id"], r["claimed_org"], r["recorded_org"]) for r in rejected} == {
            (c.event_id, claimant, owner) for c in forged
        }
        await eventually(lambda: usage_drained(admin_nc))
        assert (await usage(admin_nc, claimant)).tool_calls == 0
        assert (await usage(admin_nc, owner)).tool_calls == 2


async def test_a_call_of_a_server_metering_has_not_heard_of_yet_waits_for_its_owner(
    stack: Stack, admin_nc: Client, db: asyncpg.Connection, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="bmms.metering")
    js = admin_nc.jetstream()
    org, server = new_id("o"), new_id("s")
    async with running(create_actor("metering"), stack.settings("metering")):
        await publish_calls(js, [tool_call(org, server, n) for n in range(4)])
        # Delivered and turned back (not dropped, not counted) before the owner is known...
        await eventually(lambda: _logged(caplog, f"of server {server} wait for metering to learn its owner"))
        assert await counted_calls(db, org) == 0
        # ...and counted once the deployer's event arrives.
        await server_changed(js, org, server)
        await eventually(lambda: _exactly(db, org, 4))
    # Still waiting is not a reason to give up on a call: it was never parked.
    assert "unknown to metering" not in caplog.text


async def _logged(caplog: pytest.LogCaptureFixture, text: str) -> bool:
    return text in caplog.text


async def test_a_call_redelivered_after_its_first_count_is_counted_once(
    stack: Stack, admin_nc: Client, db: asyncpg.Connection
) -> None:
    js = admin_nc.jetstream()
    org, server = new_id("o"), new_id("s")
    await server_changed(js, org, server)
    call_once = tool_call(org, server, 1)
    async with running(create_actor("metering"), stack.settings("metering")):
        await publish_calls(js, [call_once])
        await eventually(lambda: _exactly(db, org, 1))
        # The same event again, as a runner that retried after JetStream's de-duplication window would.
        await publish_calls(js, [call_once, tool_call(org, server, 2)], with_msg_id=False)
        await eventually(lambda: _exactly(db, org, 2))
        await eventually(lambda: usage_drained(admin_nc))
        assert (await usage(admin_nc, org)).tool_calls == 2


async def test_an_undecodable_usage_event_is_parked_and_the_rest_of_its_batch_counted(
    stack: Stack, admin_nc: Client, db: asyncpg.Connection
) -> None:
    js = admin_nc.jetstream()
    org, server = new_id("o"), new_id("s")
    await server_changed(js, org, server)
    letters = await js.subscribe(DEAD_LETTERS.subject(stream="USAGE", consumer="metering"), ordered_consumer=True,
                                 deliver_policy=nats.js.api.DeliverPolicy.NEW)
    try:
        async with running(create_actor("metering"), stack.settings("metering")):
            await js.publish(TOOL_USAGE.subject(server=server), b'{"type": "usage.tool_called.v1", "org_id": 1}')
            await publish_calls(js, [tool_call(org, server, n) for n in range(5)])
            await eventually(lambda: _exactly(db, org, 5))
            letter = decode(DeadLetter, (await letters.next_msg(timeout=15)).data)
    finally:
        await letters.unsubscribe()
    assert letter.subject == TOOL_USAGE.subject(server=server)
    assert "undecodable" in letter.reason


async def _quota_state(nc: Client, org: str) -> QuotaState | None:
    bucket = await nc.jetstream().key_value(QUOTAS.name)
    try:
        entry = await bucket.get(org)
    except nats.js.errors.KeyNotFoundError:
        return None
    return None if entry.value is None else msgspec.json.decode(entry.value, type=QuotaState)


async def test_an_organisation_over_its_tool_call_quota_is_marked_in_the_quotas_bucket_and_cleared_by_a_bigger_plan(
    stack: Stack, admin_nc: Client, db: asyncpg.Connection, pool: asyncpg.Pool, quotas: QuotaPublisher
) -> None:
    js = admin_nc.jetstream()
    org, server = new_id("o"), new_id("s")
    small, large = new_id("small"), new_id("large")
    await server_changed(js, org, server)
    async with running(create_actor("metering"), stack.settings("metering")):
        await define_plan(pool, Plan(name=small, builds_per_month=10, tool_calls_per_month=40, running_servers=2))
        await define_plan(pool, Plan(name=large, builds_per_month=10, tool_calls_per_month=None, running_servers=2))
        await apply_plan_change(PlanChange(org_id=org, plan=small, source="test"), pool, js, quotas)
        await publish_calls(js, [tool_call(org, server, n) for n in range(39)])
        await eventually(lambda: _exactly(db, org, 39))
        assert await _quota_state(admin_nc, org) is None
        allowed = await call(admin_nc, CHECK_QUOTA, CheckQuota(org_id=org, quota="tool_calls_per_month"), timeout=5)
        assert isinstance(allowed, QuotaAllowed) and allowed.used == 39 and allowed.limit == 40

        await publish_calls(js, [tool_call(org, server, 39)])  # the fortieth uses the quota up
        state = await eventually(lambda: _quota_state(admin_nc, org), timeout=10, interval=0.01)
        assert isinstance(state, QuotaState)
        assert [(o.quota, o.limit, o.used, o.period) for o in state.exceeded] == [
            ("tool_calls_per_month", 40, 40, this_period())
        ]
        refused = await call(admin_nc, CHECK_QUOTA, CheckQuota(org_id=org, quota="tool_calls_per_month"), timeout=5)
        assert isinstance(refused, Failed) and refused.code == "quota_exceeded"
        assert "tool_calls_per_month" in refused.detail and "40 of 40" in refused.detail
        assert refused.retry_after_seconds is not None and refused.retry_after_seconds > 0
        status = await call(admin_nc, GET_QUOTA, GetQuota(org_id=org), timeout=5)
        assert isinstance(status, QuotaStatus) and status.plan == small
        assert {q.quota: (q.used, q.exceeded) for q in status.quotas}["tool_calls_per_month"] == (40, True)

        await apply_plan_change(PlanChange(org_id=org, plan=large, source="test"), pool, js, quotas)
        assert await _quota_state(admin_nc, org) is None
    billed = {(u.meter, u.quantity) for u in await metered_usage(pool, this_period()) if u.org_id == org}
    assert billed == {("tool_calls", 40)}


async def test_running_servers_quota_counts_running_servers_and_not_the_one_being_redeployed(
    stack: Stack, admin_nc: Client, pool: asyncpg.Pool, quotas: QuotaPublisher
) -> None:
    js = admin_nc.jetstream()
    org, running_one, stopped_one = new_id("o"), new_id("s"), new_id("s")
    plan = new_id("one")
    async with running(create_actor("metering"), stack.settings("metering")):
        await define_plan(pool, Plan(name=plan, builds_per_month=None, tool_calls_per_month=None, running_servers=1))
        await apply_plan_change(PlanChange(org_id=org, plan=plan, source="test"), pool, js, quotas)
        # In this order only the final state has both answers below: before the last event the plain check is
        # allowed (nothing runs) or the redeploy of running_one is refused (stopped_one still counts).
        await server_changed(js, org, stopped_one)
        await server_changed(js, org, stopped_one, "stopped")
        await server_changed(js, org, running_one)

        async def settled() -> tuple[Failed, QuotaAllowed] | None:
            plain = await call(admin_nc, CHECK_QUOTA, CheckQuota(org_id=org, quota="running_servers"), timeout=5)
            redeploy = await call(admin_nc, CHECK_QUOTA,
                                  CheckQuota(org_id=org, quota="running_servers", server_id=running_one), timeout=5)
            if isinstance(plain, Failed) and isinstance(redeploy, QuotaAllowed):
                return plain, redeploy
            return None

        failed, redeploy = await eventually(settled)
        assert failed.code == "quota_exceeded"
        assert "running_servers" in failed.detail and failed.retry_after_seconds is None
        assert redeploy.used == 0


def _tool_spec_build(org: str, name: str) -> SubmitBuild:
    tool = ToolSpec(name="shout", description="Shout the text.",
                    parameters=(ToolParameter(name="text", type="string"),),
                    implementation=FunctionBody(body="return text.upper()"))
    return SubmitBuild(org_id=org, requested_by="test", name=name, source=ToolSpecSource(tools=(tool,)))


async def test_the_planner_refuses_a_build_over_the_build_quota_at_the_plan_step(
    stack: Stack, admin_nc: Client, pool: asyncpg.Pool, quotas: QuotaPublisher
) -> None:
    js = admin_nc.jetstream()
    org, plan = new_id("o"), new_id("twobuilds")
    async with running(create_actor("metering"), stack.settings("metering")), \
            running(create_actor("planner"), stack.settings("planner")):
        await define_plan(pool, Plan(name=plan, builds_per_month=2, tool_calls_per_month=None, running_servers=None))
        await apply_plan_change(PlanChange(org_id=org, plan=plan, source="test"), pool, js, quotas)
        accepted = []
        for n in range(3):
            reply = await call(admin_nc, SUBMIT_BUILD, _tool_spec_build(org, f"b{n}"), timeout=10)
            assert isinstance(reply, BuildAccepted), reply
            accepted.append(reply.build_id)
        outcomes = [(await build_events(admin_nc.jetstream(), org, b, until=BuildPlanned))[-1].event for b in accepted]
        assert [type(o) for o in outcomes] == [BuildPlanned, BuildPlanned, BuildFailed]
        refusal = outcomes[2]
        assert isinstance(refusal, BuildFailed) and refusal.step == "plan" and refusal.code == "quota_exceeded"
        assert "builds_per_month" in refusal.detail and "2 of 2" in refusal.detail

        async def counted() -> UsageReport | None:
            report = await usage(admin_nc, org)
            refused = await pool.fetchval("SELECT count(*) FROM metering_builds_refused WHERE build_id = $1",
                                          accepted[2])
            return report if refused == 1 else None

        report = await eventually(counted)
        assert isinstance(report, UsageReport) and report.builds == 2  # the refused one does not count
        state = await eventually(lambda: _quota_state(admin_nc, org))
        assert isinstance(state, QuotaState)
        assert [o.quota for o in state.exceeded] == ["builds_per_month"]


async def test_without_a_metering_actor_a_build_goes_ahead_with_a_warning(stack: Stack, admin_nc: Client) -> None:
    org = new_id("o")
    async with running(create_actor("planner"), stack.settings("planner")):
        reply = await call(admin_nc, SUBMIT_BUILD, _tool_spec_build(org, "alone"), timeout=10)
        assert isinstance(reply, BuildAccepted), reply
        events = [e for _, e, _ in await build_events(admin_nc.jetstream(), org, reply.build_id, until=BuildPlanned)]
    warnings = [e.message for e in events if isinstance(e, LogLine) and e.level == "warning"]
    assert any("build quota was not checked" in w for w in warnings), warnings
    assert isinstance(events[-1], BuildPlanned)


async def test_build_usage_counts_requests_step_timings_and_model_tokens(stack: Stack, admin_nc: Client) -> None:
    js = admin_nc.jetstream()
    org, build = new_id("o"), new_id("b")
    ids = {"build_id": build, "org_id": org}
    events: list[tuple[str, object]] = [
        ("requested", BuildRequested(**ids, at=utc_now(), name="n", requested_by="t",
                                     source=ToolSpecSource(tools=(ToolSpec(name="x", description="x"),)))),
        ("step", StepChanged(**ids, at=utc_now(), step="plan", state="started")),
        ("step", StepChanged(**ids, at=utc_now(), step="plan", state="finished")),
        ("planned", BuildPlanned(**ids, at=utc_now(), name="n", plan_hash="h", tool_count=1, model_input_tokens=1200,
                                 model_output_tokens=340)),
    ]
    async with running(create_actor("metering"), stack.settings("metering")):
        for n, (kind, event) in enumerate(events):
            await publish_event(js, build_subject(org, build, kind), event, msg_id=f"{build}:{n}")  # type: ignore[arg-type]
        # The planned event once more (a planner redelivery past the window): tokens are not added twice.
        await publish_event(js, build_subject(org, build, "planned"), events[3][1], msg_id=f"{build}:again")

        async def report_with_steps() -> UsageReport | None:
            report = await usage(admin_nc, org)
            return report if report.build_steps and report.model_input_tokens else None

        report = await eventually(report_with_steps, timeout=30)
    assert isinstance(report, UsageReport)
    assert report.builds == 1
    assert (report.model_input_tokens, report.model_output_tokens) == (1200, 340)
    assert [(s.step, s.runs) for s in report.build_steps] == [("plan", 1)]
    assert report.build_steps[0].duration_ms >= 0


async def test_usage_of_one_organisation_is_never_in_another_organisations_report(
    stack: Stack, admin_nc: Client, db: asyncpg.Connection
) -> None:
    js = admin_nc.jetstream()
    org_a, org_b = new_id("o"), new_id("o")
    server_a, server_b = new_id("s"), new_id("s")
    await server_changed(js, org_a, server_a)
    await server_changed(js, org_b, server_b)
    async with running(create_actor("metering"), stack.settings("metering")):
        await publish_calls(js, [tool_call(org_a, server_a, n) for n in range(7)])
        await publish_calls(js, [tool_call(org_b, server_b, n) for n in range(2)])
        await eventually(lambda: _exactly(db, org_a, 7))
        await eventually(lambda: _exactly(db, org_b, 2))
        a, b = await usage(admin_nc, org_a), await usage(admin_nc, org_b)
        b_asking_for_a_server = await usage(admin_nc, org_b, server=server_a)
    assert a.tool_calls == 7 and {s.server_id for s in a.by_server} == {server_a}
    assert b.tool_calls == 2 and {s.server_id for s in b.by_server} == {server_b}
    assert b_asking_for_a_server.tool_calls == 0 and b_asking_for_a_server.by_tool == ()

