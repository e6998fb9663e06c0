"""Build requests, the build's event history and the build registry's RPC messages."""

from __future__ import annotations

from typing import Annotated, Literal, get_args

import msgspec

from bus_schemas.base import Failed, FailureCodeName, Id, Message
from bus_schemas.servers import InstallSnippet, ToolListDiff

BuildKind = Literal["requested", "step", "log", "planned", "generated", "checked", "deployed", "failed"]
"""The last token of a build event subject: `builds.<org>.<build>.<kind>`."""

BuildStep = Literal["plan", "generate", "check", "deploy"]
"""The pipeline's steps, in order."""

BuildStatus = Literal["requested", "planned", "generated", "checked", "deployed", "failed"]
"""Where a build stands; the latest milestone event it has reached."""

NonEmpty = Annotated[str, msgspec.Meta(min_length=1, max_length=20_000)]


class PlainWords(msgspec.Struct, frozen=True, kw_only=True, tag_field="kind", tag="plain_words"):
    """A server described in a person's own words."""

    text: NonEmpty


class UpstreamCredentials(msgspec.Struct, frozen=True, kw_only=True):
    """How the server authenticates to the upstream API: the kind and the secret's NAME only.

    The secret's value never travels in a build request (requests are replayed in the build stream);
    the person gives it to the deployer under this name.
    """

    type: Literal["bearer", "header", "query", "basic"]
    secret_name: Annotated[str, msgspec.Meta(pattern=r"^[A-Z][A-Z0-9_]{0,63}$")]
    """The upper-snake-case name the value is referenced by (e.g. `PETSTORE_TOKEN`)."""
    name: str | None = None
    """The header or query parameter that carries it, for `header`/`query`."""


class OpenApiSource(msgspec.Struct, frozen=True, kw_only=True, tag_field="kind", tag="openapi"):
    """An OpenAPI 3.0/3.1 document, inline or by URL."""

    document: str | None = None
    url: str | None = None
    base_url: str | None = None
    operations: tuple[str, ...] = ()
    """Plan only these operations (operationId, tool name, or `METHOD /path`); with `tags`, either matches."""
    tags: tuple[str, ...] = ()
    """Plan only operations carrying one of these tags; with `operations`, either matches."""
    credentials: UpstreamCredentials | None = None
    """Authenticate every secured operation this way instead of by the document's security schemes."""


class ToolParameter(msgspec.Struct, frozen=True, kw_only=True):
    """One typed parameter of an explicitly specified tool."""

    name: Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")]
    type: Literal["string", "integer", "number", "boolean"]
    description: str = ""
    required: bool = True


class HttpTemplate(msgspec.Struct, frozen=True, kw_only=True, tag_field="kind", tag="http"):
    """A tool implemented by one HTTP request; `{param}` placeholders in the URL's path are filled from
    the parameters of that name, the other parameters go in the query string (or `body_param` as JSON)."""

    method: Literal["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD"] = "GET"
    url: Annotated[str, msgspec.Meta(min_length=1, max_length=2000)]
    body_param: str | None = None


class FunctionBody(msgspec.Struct, frozen=True, kw_only=True, tag_field="kind", tag="function"):
    """A tool implemented by a small pure Python function body over the parameters (checked before it runs)."""

    body: Annotated[str, msgspec.Meta(min_length=1, max_length=20_000)]


ToolImplementation = HttpTemplate | FunctionBody


class ToolSpec(msgspec.Struct, frozen=True, kw_only=True):
    """An explicitly specified tool."""

    name: Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")]
    description: NonEmpty
    parameters: tuple[ToolParameter, ...] = ()
    implementation: ToolImplementation | None = None
    """How the tool works; a tool without one cannot be planned."""
    read_only: bool = True
    """False for tools that change something upstream (they need the write scope)."""


class ToolSpecSource(msgspec.Struct, frozen=True, kw_only=True, tag_field="kind", tag="tool_spec"):
    """A list of explicitly specified tools."""

    tools: Annotated[tuple[ToolSpec, ...], msgspec.Meta(min_length=1, max_length=200)]


BuildSource = PlainWords | OpenApiSource | ToolSpecSource
"""What a person gives to describe the server; tagged by `kind`."""


class SubmitBuild(Message, frozen=True, kw_only=True, tag="builds.submit.v1"):
    """Ask the build registry to accept a build request."""

    org_id: Id
    requested_by: str
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=100)]
    source: BuildSource
    idempotency_key: str | None = None
    """Same key from the same org returns the same build instead of a new one."""
    server_id: Id | None = None
    """Deploy the build as a new version of this existing server (same URL) instead of a new server."""
    request_id: Id | None = None
    """The build id to record it under, made by the caller (the gateway, for each request): sending the same
    request again (to another copy of the registry) finds the build it recorded instead of making a second."""
    accept_by: str | None = None
    """RFC 3339: a request that reaches the registry later records nothing (its caller has answered by then)."""


class BuildAccepted(Message, frozen=True, kw_only=True, tag="builds.accepted.v1"):
    """The build was recorded and its `requested` event published."""

    build_id: Id
    org_id: Id
    status: BuildStatus


class GetBuild(Message, frozen=True, kw_only=True, tag="builds.get.v1"):
    """Read a build's summary; answers not_found for another organisation's build."""

    org_id: Id
    build_id: Id


class BuildSummary(Message, frozen=True, kw_only=True, tag="builds.summary.v1"):
    """Where a build stands, from the build registry's projection of its event stream."""

    build_id: Id
    org_id: Id
    name: str
    status: BuildStatus
    created_at: str
    updated_at: str
    last_seq: int
    """Stream sequence of the last event the projection applied."""
    failure: str | None = None
    server_id: Id | None = None
    """The server the build deployed as, once it has."""
    url: str | None = None
    """That server's stable MCP URL, once deployed."""


SubmitBuildReply = BuildAccepted | Failed
GetBuildReply = BuildSummary | Failed


# --- the build's event history: one subject per kind, all in the BUILDS stream ---


class BuildEvent(Message, frozen=True, kw_only=True):
    """Base of every event in a build's history."""

    build_id: Id
    org_id: Id
    at: str
    """When it happened, RFC 3339 UTC."""


class ServerBuildEvent(BuildEvent, frozen=True, kw_only=True):
    """An event that hands a build to its next step; it carries what every later step needs to know of the
    server being built, so no step reads an earlier event back."""

    name: str
    """The server's name, as the person asked for it."""
    server_id: Id | None = None
    """The existing server this build is a new version of, if any."""


class BuildRequested(ServerBuildEvent, frozen=True, kw_only=True, tag="build.requested.v1"):
    """A person asked for a server; the first event of every build."""

    requested_by: str
    source: BuildSource


class StepChanged(BuildEvent, frozen=True, kw_only=True, tag="build.step.v1"):
    """A pipeline step started or finished."""

    step: BuildStep
    state: Literal["started", "finished"]


LogLevel = Literal["info", "warning", "error"]


class LogLine(BuildEvent, frozen=True, kw_only=True, tag="build.log.v1"):
    """One line of a build's log, meant for the person watching."""

    step: BuildStep
    level: LogLevel
    message: str


class BuildPlanned(ServerBuildEvent, frozen=True, kw_only=True, tag="build.planned.v1"):
    """The planner produced a tool plan, stored content-addressed."""

    plan_hash: str
    tool_count: int
    model_input_tokens: int = 0
    """Model tokens the plan cost (plain-words plans ask Claude; the others cost none), for metering."""
    model_output_tokens: int = 0


class BuildGenerated(ServerBuildEvent, frozen=True, kw_only=True, tag="build.generated.v1"):
    """Codegen rendered the plan into an artifact, stored content-addressed."""

    artifact_hash: str


class BuildChecked(ServerBuildEvent, frozen=True, kw_only=True, tag="build.checked.v1"):
    """The checker passed the artifact."""

    artifact_hash: str


class BuildDeployed(BuildEvent, frozen=True, kw_only=True, tag="build.deployed.v1"):
    """The server runs, answered an authenticated `tools/list`, and is routed at its stable URL."""

    url: str
    server_id: Id
    version: int
    backend: str
    isolation: str
    install: tuple[InstallSnippet, ...] = ()
    """How to add the server to Claude (Desktop and Code), ChatGPT, Cursor and VS Code."""
    tool_changes: ToolListDiff | None = None
    """What this version's `tools/list` changed against the version that served before (breaking ones marked)."""


StepFailureCode = Literal["check_failed", "backend_failed", "unhealthy"]
"""Why a step failed when no endpoint code says it: the checker's findings, a backend that could not start the
runner, a runner that failed its health check."""
BuildFailureCode = FailureCodeName | StepFailureCode
"""Why a build stopped: any endpoint failure code, or a step's own."""


class BuildFailed(BuildEvent, frozen=True, kw_only=True, tag="build.failed.v1"):
    """The build stopped; `step` says where and `detail` says why."""

    step: BuildStep
    code: BuildFailureCode
    detail: str


AnyBuildEvent = (
    BuildRequested | StepChanged | LogLine | BuildPlanned | BuildGenerated | BuildChecked | BuildDeployed | BuildFailed
)


_KIND_NAMES: dict[str, BuildKind] = {kind: kind for kind in get_args(BuildKind)}


def kind_named(token: str) -> BuildKind | None:
    """The build kind a subject token or tag part names, or None."""
    return _KIND_NAMES.get(token)


def _kind_of(event_type: type[BuildEvent]) -> BuildKind:
    tag = str(event_type.__struct_config__.tag)  # build.<kind>.v<n>
    kind = kind_named(tag.split(".")[1])
    if kind is None:
        raise TypeError(f"{event_type.__name__}'s tag {tag!r} names no build kind")
    return kind


BUILD_KINDS: dict[type[BuildEvent], BuildKind] = {
    event_type: _kind_of(event_type) for event_type in get_args(AnyBuildEvent)
}
"""Each event type's kind (the last token of its subject), read from its tag: `build.planned.v1` is planned."""


def build_kind(event: BuildEvent) -> BuildKind:
    """The kind of a build event: the subject it is published on ends with it."""
    return BUILD_KINDS[type(event)]
