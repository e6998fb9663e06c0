"""Plan previews: a source planned exactly as a build would plan it, and nothing built (`POST /v1/plans`).

A person (or the dashboard's operation picker) sees the tools a build of the source would serve, their size in
model tokens, the plan's flags and notes, the hosts it calls and the secrets it needs, and chooses `operations` or
`tags` before building. The types live in their own module, not beside `SubmitBuild` or `ToolPlan`: a preview
names both a build source (`bus_schemas.builds`) and parts of a plan (`bus_schemas.plans`), and `plans` cannot
import `builds` (builds -> servers -> plans).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

from bus_schemas.base import Failed, Id, Message
from bus_schemas.builds import BuildSource
from bus_schemas.plans import PlanFlag, SecretRequirement

PREVIEW_NAME = "preview"
"""The server name a preview plans under when the request gives none."""


class PreviewPlan(Message, frozen=True, kw_only=True, tag="plans.preview.v1"):
    """Plan `source` for `org_id` as a build of it would be planned; nothing is stored, built or counted."""

    org_id: Id
    requested_by: str
    """Who asks (`api_key:<id>` or `person:<id>`), for the planner's log."""
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=100)] = PREVIEW_NAME
    """The server's name, as a build would be asked for it (plain-words plans are written for it)."""
    source: BuildSource


class PlanNote(msgspec.Struct, frozen=True, kw_only=True):
    """One line planning wrote, as a build's log would show it."""

    level: Literal["info", "warning"]
    message: str


class PlanPreview(msgspec.Struct, frozen=True, kw_only=True):
    """What a build of the source would plan, as its server would serve it."""

    server_name: str
    planned_from: str
    """Which source it was planned from (`ToolPlan.planned_from`: openapi, tool_spec, plain_words...)."""
    tools: tuple[dict[str, Any], ...]
    """The server's `tools/list`, in order: each tool's name, title, description, `inputSchema` (and
    `outputSchema` where it has one) exactly as served, and its MCP `annotations` (`readOnlyHint`...)."""
    tool_list_tokens: int
    """Estimated model tokens of the tool list (JSON characters / 4), the figure a build records."""
    flags: tuple[PlanFlag, ...] = ()
    """What a person should look at: skipped operations, parts left out, the token budget, injection markers."""
    notes: tuple[PlanNote, ...] = ()
    upstream_hosts: tuple[str, ...] = ()
    """Every host the tools may call; the server is allowed no other."""
    secrets: tuple[SecretRequirement, ...] = ()
    """The upstream credentials the server needs, by name (give them with `POST /v1/builds` as `secrets`)."""
    model_input_tokens: int = 0
    """Model tokens planning cost (plain words ask Claude; the other sources cost none)."""
    model_output_tokens: int = 0


class PlanPreviewed(Message, frozen=True, kw_only=True, tag="plans.previewed.v1"):
    """The preview of one `PreviewPlan`."""

    preview: PlanPreview


PreviewPlanReply = PlanPreviewed | Failed

