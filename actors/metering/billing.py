"""The billing seam: where a payment provider plugs into metering. No provider is integrated yet.

Two directions cross it, and both already have their platform half here:

1. Provider -> platform, by webhooks (subscription created, changed, cancelled, payment failed). The gateway
   would expose `POST /v1/billing/webhooks/<provider>`, verify the provider's signature on the raw body with
   the provider's signing secret (a `PaymentProvider.subscription_change` implementation), and send the
   resulting `PlanChange` over the bus to the metering actor (an `rpc.metering.plan` endpoint, to be
   declared in the registry and allowed for the gateway in nats.conf), whose handler calls
   `apply_plan_change` below. The provider's price or product id maps to one of our plan names in the
   provider integration; plans themselves (limits) are rows of `metering_plans`, defined with
   `define_plan`. Replayed webhooks are harmless: applying the same change twice changes nothing.

2. Platform -> provider, metered prices. At the end of a period (or daily, for providers that take running
   totals), `metered_usage(period)` gives each organisation's billable quantities per meter, and a
   `PaymentProvider.report_usage` implementation sends them as the provider's usage records, keyed by
   (org, period, meter) so a repeated report replaces rather than adds. The quantities come from the same
   tables the quotas count, so what is billed is what was enforced.

What stays out of metering: card data, invoices and tax (the provider's), and which organisation has which
provider customer id (kept by the provider integration next to the `source` of each plan assignment).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal, Protocol

import asyncpg
import msgspec
from nats.js import JetStreamContext

from actors.metering import storage
from actors.metering.publisher import QuotaPublisher
from actors.metering.quotas import Plan, parse_period

Meter = Literal["tool_calls", "builds", "model_input_tokens", "model_output_tokens"]
"""What can be priced per unit."""


class PlanChange(msgspec.Struct, frozen=True, kw_only=True):
    """An organisation moves to a plan, because of `source` (e.g. `stripe:sub_1Nx...` or `operator:alice`)."""

    org_id: str
    plan: str
    """A plan defined in `metering_plans`, or `default`."""
    source: str


class MeteredUsage(msgspec.Struct, frozen=True, kw_only=True):
    """One organisation's billable quantity of one meter in one period."""

    org_id: str
    period: str
    meter: Meter
    quantity: int


class PaymentProvider(Protocol):
    """What an integration with a payment provider implements; the platform calls nothing else of it."""

    def subscription_change(self, headers: Mapping[str, str], body: bytes) -> PlanChange | None:
        """Verify a webhook's signature and read it: the plan change it asks for, None for events that
        change no plan; raise ValueError for a webhook that fails verification."""
        ...

    async def report_usage(self, usage: Sequence[MeteredUsage]) -> None:
        """Send one period's quantities as the provider's usage records (idempotent per org, period, meter)."""
        ...


async def apply_plan_change(
    change: PlanChange, pool: asyncpg.Pool, js: JetStreamContext, quotas: QuotaPublisher
) -> None:
    """Put the organisation on the plan, then bring its QUOTAS key up to date at once (a bigger plan lifts
    an over-quota state, a smaller one may impose one)."""
    async with pool.acquire() as conn:
        await storage.assign_plan(conn, change.org_id, change.plan, change.source)
    await quotas.refresh(pool, js, [change.org_id])


async def define_plan(pool: asyncpg.Pool, plan: Plan) -> None:
    """Create or change a plan's limits (None: unlimited)."""
    async with pool.acquire() as conn:
        await storage.define_plan(conn, plan)


async def metered_usage(pool: asyncpg.Pool, period: str) -> list[MeteredUsage]:
    """Every organisation's billable quantities in `period` (`YYYY-MM`), from the tables the quotas count."""
    month = parse_period(period)
    async with pool.acquire() as conn:
        rows = await storage.billable_quantities(conn, month)
    return [MeteredUsage(org_id=r["org_id"], period=period, meter=r["meter"], quantity=int(r["quantity"]))
            for r in rows]
