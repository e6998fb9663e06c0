"""/v1/plans: preview what a build of a source would plan, without building anything.

The gateway only bridges: it reads the same source a build takes (`BuildSource`: plain words, an OpenAPI document
or a tool spec), asks the planner (PREVIEW_PLAN) under the caller's organisation, and answers its preview. The
planner plans with the plan step's own code, so the preview is what a build would serve; a source it cannot plan
is its `invalid` answer, a 422 problem naming where.
"""

from __future__ import annotations

from typing import Annotated

import msgspec
from litestar import Controller, post
from litestar.di import NamedDependency, Provide
from litestar.params import JSONBody

from bus_schemas.builds import BuildSource
from bus_schemas.identity import Principal
from bus_schemas.previews import PREVIEW_NAME, PlanPreview, PreviewPlan
from bus_schemas.registry import PREVIEW_PLAN
from gateway.services import EdgeServices, provide_principal

MAX_PREVIEW_BODY = 6 * 1024 * 1024
"""Largest request body (bytes): an inline document of a few MB, and the request must fit one NATS message
(nats.conf's `max_payload`, 8 MB) with room for its envelope."""


class PreviewBuild(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A source to plan, as `POST /v1/builds` takes it; secrets are not taken (nothing is built to hold them)."""

    name: Annotated[str, msgspec.Meta(min_length=1, max_length=100)] = PREVIEW_NAME
    """The server's name, as the build would be asked for it."""
    source: BuildSource
    """What the server should do; `kind` says which form: plain_words, openapi or tool_spec. For `openapi`,
    `operations` and `tags` choose the tools exactly as they would for the build."""


class PlansController(Controller):
    """Plan previews for the caller's organisation."""

    path = "/v1/plans"
    tags = ["plans"]
    dependencies = {"principal": Provide(provide_principal)}

    @post("/", status_code=200, summary="Preview a build's plan", request_max_body_size=MAX_PREVIEW_BODY)
    async def preview_plan(
        self, data: JSONBody[PreviewBuild], principal: NamedDependency[Principal],
        services: NamedDependency[EdgeServices],
    ) -> PlanPreview:
        """Plan a source exactly as `POST /v1/builds` would, and build nothing: the tools a build would serve
        (name, title, description, `inputSchema`, annotations), the tool list's estimated size in tokens, flags
        (skipped operations, parts left out, the token budget...), planning's notes, the upstream hosts and the
        secrets it needs. Choose `operations` or `tags` with it before building. It uses no build quota; previews
        are rate-limited per organisation (429 with `Retry-After`). A source that cannot be planned is 422 with
        the planner's reason, which names where (e.g. the document path of a `$ref` that does not resolve)."""
        request = PreviewPlan(org_id=principal.org_id, requested_by=principal.subject, name=data.name,
                              source=data.source)
        previewed = await services.bus.ask(PREVIEW_PLAN, request)
        return previewed.preview
