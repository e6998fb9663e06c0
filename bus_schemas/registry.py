"""The one place where every subject, stream and durable consumer is declared with its message types.

Nothing outside this module writes a subject string; code asks the declarations below for subjects.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from bus_schemas.base import SUBJECT_TOKEN_RE, Message
from bus_schemas.builds import (
    AnyBuildEvent,
    BuildAccepted,
    BuildKind,
    BuildRequested,
    BuildSummary,
    GetBuild,
    GetBuildReply,
    SubmitBuild,
    SubmitBuildReply,
    kind_named,
)
from bus_schemas.identity import (
    ApiKeyCreated,
    ApiKeyList,
    ApiKeyRevoked,
    Authenticate,
    AuthenticateReply,
    ChangeMemberRole,
    ChangeMemberRoleReply,
    CreateApiKey,
    CreateApiKeyReply,
    GetMe,
    GetMeReply,
    InviteCreated,
    InviteList,
    InviteMember,
    InviteMemberReply,
    InviteRevoked,
    IssueApiKey,
    IssueApiKeyReply,
    IssueSignInLink,
    IssueSignInLinkReply,
    ListApiKeys,
    ListApiKeysReply,
    ListInvites,
    ListInvitesReply,
    ListMembers,
    ListMembersReply,
    ListSessions,
    ListSessionsReply,
    MagicLinkRequested,
    Me,
    MemberList,
    MemberRemoved,
    MemberRoleChanged,
    MembershipEnded,
    Principal,
    RedeemMagicLink,
    RedeemMagicLinkReply,
    RemoveMember,
    RemoveMemberReply,
    RequestMagicLink,
    RequestMagicLinkReply,
    RevokeApiKey,
    RevokeApiKeyReply,
    RevokeInvite,
    RevokeInviteReply,
    RevokeSession,
    RevokeSessionReply,
    SessionList,
    SessionRevoked,
    SessionStarted,
    SignInLinkIssued,
)
from bus_schemas.oauth import (
    AuthorizationRedirect,
    ClientRegistered,
    ConsentRequired,
    CreateClient,
    CreateClientReply,
    DecideConsent,
    DecideConsentReply,
    ExchangeToken,
    ExchangeTokenReply,
    GetJwks,
    GetJwksReply,
    GrantRevoked,
    Jwks,
    MintServiceToken,
    MintServiceTokenReply,
    OAuthError,
    RegisterClient,
    RegisterClientReply,
    RevokeToken,
    RevokeTokenReply,
    SignInRequired,
    StartAuthorization,
    StartAuthorizationReply,
    TokenIssued,
    TokenRevoked,
)
from bus_schemas.ops import DeadLetter
from bus_schemas.plans import Artifact, ToolPlan
from bus_schemas.previews import PlanPreviewed, PreviewPlan, PreviewPlanReply
from bus_schemas.servers import (
    BuildSecretsStaged,
    ControlServer,
    ControlServerReply,
    DeleteServerSecret,
    DeleteServerSecretReply,
    GetServer,
    GetServerLogs,
    GetServerLogsReply,
    GetServerReply,
    ListServers,
    ListServerSecrets,
    ListServerSecretsReply,
    ListServersReply,
    ResolveServer,
    ResolveServerReply,
    ServerChanged,
    ServerList,
    ServerLogs,
    ServerOwner,
    ServerReply,
    ServerRoute,
    ServerSecretDeleted,
    ServerSecrets,
    ServerSecretSet,
    SetServerSecret,
    SetServerSecretReply,
    StageBuildSecrets,
    StageBuildSecretsReply,
)
from bus_schemas.usage import (
    CheckQuota,
    CheckQuotaReply,
    GetQuota,
    GetQuotaReply,
    GetUsage,
    GetUsageReply,
    QuotaAllowed,
    QuotaState,
    QuotaStatus,
    ToolCalled,
    UsageReport,
)

Req = TypeVar("Req", bound=Message)
Rep = TypeVar("Rep")
Msg = TypeVar("Msg")


def subject_token(value: str) -> str:
    """Return `value` if it can stand as one subject token, else raise ValueError."""
    if not SUBJECT_TOKEN_RE.match(value):
        raise ValueError(f"{value!r} cannot be a subject token")
    return value


@dataclass(frozen=True)
class Rpc(Generic[Req, Rep]):
    """A request/reply endpoint served by a `nats.micro` service in a queue group: `Req` is what a caller
    sends, `Rep` what a call that succeeds answers; any call may also answer `Failed`."""

    service: str
    """The micro service (one per actor) that serves it."""
    endpoint: str
    subject: str
    request: type[Req]
    reply: Any
    """The reply type: a union of the result Struct and `Failed`."""
    description: str
    timeout_seconds: float | None = None
    """How long callers wait for an answer when it is longer than their usual RPC timeout (an endpoint that
    starts and health-checks a server takes as long as that does)."""


@dataclass(frozen=True)
class EventSubject(Generic[Msg]):
    """A family of event subjects, `pattern` with `{name}` placeholders, and the messages on it."""

    pattern: str
    message: Any
    description: str

    def subject(self, **tokens: str) -> str:
        """The concrete subject for these tokens; each token is checked to be subject-safe."""
        return self.pattern.format(**{k: subject_token(v) for k, v in tokens.items()})

    def wildcard(self, **tokens: str) -> str:
        """The subject with the given tokens filled in and every other placeholder as `*`."""
        names = [part[1:-1] for part in self.pattern.split(".") if part.startswith("{")]
        filled = {n: subject_token(tokens[n]) if n in tokens else "*" for n in names}
        return self.pattern.format(**filled)


@dataclass(frozen=True)
class Stream:
    """A JetStream stream."""

    name: str
    subjects: tuple[str, ...]
    description: str
    max_age_seconds: int = 0
    duplicate_window_seconds: int = 120
    max_consumers: int = -1


@dataclass(frozen=True)
class Consumer(Generic[Msg]):
    """A durable pull consumer shared by every copy of the actor that owns it."""

    stream: Stream
    durable: str
    filter_subject: str
    message: Any
    owner: str
    description: str
    max_deliveries: int = 5
    """After this many deliveries without an ack the message is parked in the dead-letter stream."""
    ack_wait_seconds: float = 30.0
    backoff_seconds: tuple[float, ...] = field(default=(0.2, 1.0, 5.0))
    more_filter_subjects: tuple[str, ...] = ()
    """Further subjects the consumer reads besides `filter_subject` (a JetStream multi-filter consumer)."""

    @property
    def filter_subjects(self) -> tuple[str, ...]:
        """Every subject the consumer reads."""
        return (self.filter_subject, *self.more_filter_subjects)


LONG_STEP_ACK_WAIT_SECONDS = 6.0
"""The acknowledgement wait of the steps that beat while they work (check, deploy): a copy killed mid-step hands
its build on this soon. A second delivery while the first copy still works is harmless: both steps are
idempotent per build (the deployer's per-server lock, the checker's same result)."""


# --- streams ---

BUILDS = Stream(
    name="BUILDS",
    subjects=("builds.>",),
    description="Every build's whole history: builds.<org>.<build>.<kind>.",
    max_age_seconds=90 * 24 * 3600,
)
USAGE = Stream(
    name="USAGE",
    subjects=("usage.>",),
    description="Usage events from runners and the pipeline, for the metering actor.",
    max_age_seconds=35 * 24 * 3600,
)
DEADLETTER = Stream(
    name="DEADLETTER",
    subjects=("deadletter.>",),
    description="Messages a consumer gave up on, with the reason: deadletter.<stream>.<consumer>.",
    max_age_seconds=30 * 24 * 3600,
)
SERVERS = Stream(
    name="SERVERS",
    subjects=("servers.>",),
    description="Hosted servers' lifecycle: servers.<org>.<server>.changed.",
    max_age_seconds=90 * 24 * 3600,
)
IDENTITY = Stream(
    name="IDENTITY",
    subjects=("identity.>",),
    description="Changes to who may use an organisation, for the actors that hold credentials of people: "
                "identity.<org>.<kind>.",
    max_age_seconds=30 * 24 * 3600,
)
STREAMS = (BUILDS, USAGE, DEADLETTER, SERVERS, IDENTITY)

@dataclass(frozen=True)
class ObjectBucket:
    """A JetStream object store bucket holding content-addressed blobs (object name = SHA-256 hex)."""

    name: str
    description: str
    owner: str
    """The only actor that writes it; others may read."""
    message: Any
    """The type of every object in it (JSON)."""


PLANS = ObjectBucket(
    name="PLANS", description="Tool plans (ToolPlan JSON), by plan hash.", owner="planner", message=ToolPlan
)
ARTIFACTS = ObjectBucket(
    name="ARTIFACTS", description="Rendered servers (Artifact JSON), by artifact hash.", owner="codegen",
    message=Artifact,
)
OBJECT_BUCKETS = (PLANS, ARTIFACTS)


@dataclass(frozen=True)
class KvBucket:
    """A JetStream key-value bucket: latest state that others watch."""

    name: str
    description: str
    owner: str
    """The only actor that writes it; others may read or watch."""
    message: Any
    """The type of every value (JSON)."""
    history: int = 1
    ttl_seconds: int = 0
    """How long an entry lives (0: until deleted)."""
    direct: bool = False
    """Reads by direct get (`$JS.API.DIRECT.GET.KV_<name>.>`): one request to any server, no consumer."""

    def direct_get(self, key: str) -> tuple[str, bytes]:
        """The subject and body of a direct get of `key`'s latest value. The answer is the value alone, with no
        headers (`no_hdr`, so the reader parses none); a missing key is answered with a `Status: 404` header,
        a deleted one with an empty body."""
        return (
            f"$JS.API.DIRECT.GET.KV_{self.name}",
            b'{"no_hdr":true,"last_by_subj":"$KV.%s.%s"}' % (self.name.encode(), key.encode()),
        )


ROUTES = KvBucket(
    name="ROUTES", description="Where each running server's public URL is forwarded: key <server_id>.",
    owner="deployer", message=ServerRoute,
)
QUOTAS = KvBucket(
    name="QUOTAS", description="Organisations over a quota: key <org_id> (absent = within every quota).",
    owner="metering", message=QuotaState,
)
REVOKED = KvBucket(
    name="REVOKED",
    description="Grants revoked early: key <org_id>.<grant_id>; runners refuse access tokens whose `gid` is here.",
    owner="oauth", message=GrantRevoked,
    # Longer than an access token lives (15 min) plus verifiers' leeway (30 s): an entry outlives every
    # token of its grant, and the bucket never grows without bound.
    ttl_seconds=20 * 60,
)
BUILD_SUMMARIES = KvBucket(
    name="BUILD_SUMMARIES",
    description="Where each build stands (the build registry's projection): key <org_id>.<build_id>; the gateway "
                "answers GET /v1/builds/{id} from it.",
    owner="planner", message=BuildSummary, direct=True,
)


def build_summary_key(org_id: str, build_id: str) -> str:
    """A build's key in BUILD_SUMMARIES (both parts checked to be subject tokens)."""
    return f"{subject_token(org_id)}.{subject_token(build_id)}"


KV_BUCKETS = (ROUTES, QUOTAS, BUILD_SUMMARIES, REVOKED)


def revocation_key(org_id: str, revoked_id: str) -> str:
    """The REVOKED key of a revoked grant, or of one revoked access token (its `jti`): runners watch
    `<org_id>.*`, their organisation's."""
    return f"{subject_token(org_id)}.{subject_token(revoked_id)}"

# --- event subjects ---

BUILD_EVENTS: EventSubject[AnyBuildEvent] = EventSubject(
    pattern="builds.{org}.{build}.{kind}",
    message=AnyBuildEvent,
    description="One build's events; subscribe to builds.<org>.> for an organisation's builds.",
)
TOOL_USAGE: EventSubject[ToolCalled] = EventSubject(
    pattern="usage.{server}.tool",
    message=ToolCalled,
    description="One event per MCP tool call, published by the runner of that server.",
)
DEAD_LETTERS: EventSubject[DeadLetter] = EventSubject(
    pattern="deadletter.{stream}.{consumer}",
    message=DeadLetter,
    description="A parked message and why it was parked.",
)
SERVER_EVENTS: EventSubject[ServerChanged] = EventSubject(
    pattern="servers.{org}.{server}.changed",
    message=ServerChanged,
    description="A hosted server's state or version changed; servers.<org>.> for an organisation's servers.",
)
MEMBERSHIP_ENDED: EventSubject[MembershipEnded] = EventSubject(
    pattern="identity.{org}.membership_ended",
    message=MembershipEnded,
    description="A person may no longer use an organisation (published by auth, with Nats-Msg-Id = event id).",
)
EVENT_SUBJECTS = (BUILD_EVENTS, TOOL_USAGE, DEAD_LETTERS, SERVER_EVENTS, MEMBERSHIP_ENDED)


def build_subject(org: str, build: str, kind: BuildKind) -> str:
    """The subject of one kind of event of one build."""
    return BUILD_EVENTS.subject(org=org, build=build, kind=kind)


def build_kind_of(subject: str) -> BuildKind | None:
    """The kind of build event a subject carries (its last token), or None when it names no kind."""
    return kind_named(subject.rpartition(".")[2])


def build_kind_filter(kind: BuildKind) -> str:
    """The filter matching one kind of event across all builds."""
    return BUILD_EVENTS.wildcard(kind=kind)


# --- RPC endpoints ---

SUBMIT_BUILD: Rpc[SubmitBuild, BuildAccepted] = Rpc(
    service="planner",
    endpoint="submit_build",
    subject="rpc.builds.submit",
    request=SubmitBuild,
    reply=SubmitBuildReply,
    description="Record a build request and publish its `requested` event.",
)
GET_BUILD: Rpc[GetBuild, BuildSummary] = Rpc(
    service="planner",
    endpoint="get_build",
    subject="rpc.builds.get",
    request=GetBuild,
    reply=GetBuildReply,
    description="Where one build of the caller's organisation stands.",
)
PREVIEW_PLAN: Rpc[PreviewPlan, PlanPreviewed] = Rpc(
    service="planner",
    endpoint="preview_plan",
    subject="rpc.plans.preview",
    request=PreviewPlan,
    reply=PreviewPlanReply,
    description="Plan a source as a build would plan it, without building anything (POST /v1/plans).",
    # an OpenAPI document of thousands of operations, or plain words through Claude, plans for a while
    timeout_seconds=300.0,
)
AUTHENTICATE: Rpc[Authenticate, Principal] = Rpc(
    service="auth",
    endpoint="authenticate",
    subject="rpc.auth.authenticate",
    request=Authenticate,
    reply=AuthenticateReply,
    description="Resolve an API key to the principal it acts for.",
)
CREATE_API_KEY: Rpc[CreateApiKey, ApiKeyCreated] = Rpc(
    service="auth",
    endpoint="create_api_key",
    subject="rpc.auth.api_keys.create",
    request=CreateApiKey,
    reply=CreateApiKeyReply,
    description="Create an organisation's API key (operator CLI); the secret is returned once.",
)
ISSUE_SIGN_IN_LINK: Rpc[IssueSignInLink, SignInLinkIssued] = Rpc(
    service="auth",
    endpoint="issue_sign_in_link",
    subject="rpc.auth.sign_in_links.issue",
    request=IssueSignInLink,
    reply=IssueSignInLinkReply,
    description="Sign a person in as the operator (bmms dev's printed link): a one-time link returned, not mailed; "
    "the person made an owner of the named organisation.",
)
REQUEST_MAGIC_LINK: Rpc[RequestMagicLink, MagicLinkRequested] = Rpc(
    service="auth",
    endpoint="request_magic_link",
    subject="rpc.auth.magic_link.request",
    request=RequestMagicLink,
    reply=RequestMagicLinkReply,
    description="Mail a one-time sign-in link (15 minutes); rate-limited per address and per client IP.",
)
REDEEM_MAGIC_LINK: Rpc[RedeemMagicLink, SessionStarted] = Rpc(
    service="auth",
    endpoint="redeem_magic_link",
    subject="rpc.auth.magic_link.redeem",
    request=RedeemMagicLink,
    reply=RedeemMagicLinkReply,
    description="Use a magic link once: start a session, creating the person and their organisation on first sign-in.",
)
GET_ME: Rpc[GetMe, Me] = Rpc(
    service="auth",
    endpoint="get_me",
    subject="rpc.auth.me",
    request=GetMe,
    reply=GetMeReply,
    description="The caller and every organisation the person belongs to.",
)
LIST_SESSIONS: Rpc[ListSessions, SessionList] = Rpc(
    service="auth",
    endpoint="list_sessions",
    subject="rpc.auth.sessions.list",
    request=ListSessions,
    reply=ListSessionsReply,
    description="A person's valid sessions, without tokens.",
)
REVOKE_SESSION: Rpc[RevokeSession, SessionRevoked] = Rpc(
    service="auth",
    endpoint="revoke_session",
    subject="rpc.auth.sessions.revoke",
    request=RevokeSession,
    reply=RevokeSessionReply,
    description="End one of a person's sessions (sign-out ends the current one).",
)
INVITE_MEMBER: Rpc[InviteMember, InviteCreated] = Rpc(
    service="auth",
    endpoint="invite_member",
    subject="rpc.auth.invites.create",
    request=InviteMember,
    reply=InviteMemberReply,
    description="An owner invites an email address; it joins as a member on its next sign-in.",
)
LIST_INVITES: Rpc[ListInvites, InviteList] = Rpc(
    service="auth", endpoint="list_invites", subject="rpc.auth.invites.list", request=ListInvites,
    reply=ListInvitesReply, description="An organisation's pending invitations (owners only).",
)
REVOKE_INVITE: Rpc[RevokeInvite, InviteRevoked] = Rpc(
    service="auth", endpoint="revoke_invite", subject="rpc.auth.invites.revoke", request=RevokeInvite,
    reply=RevokeInviteReply, description="An owner withdraws a pending invitation.",
)
LIST_MEMBERS: Rpc[ListMembers, MemberList] = Rpc(
    service="auth", endpoint="list_members", subject="rpc.auth.members.list", request=ListMembers,
    reply=ListMembersReply, description="An organisation's people and their roles (for its members).",
)
REMOVE_MEMBER: Rpc[RemoveMember, MemberRemoved] = Rpc(
    service="auth", endpoint="remove_member", subject="rpc.auth.members.remove", request=RemoveMember,
    reply=RemoveMemberReply, description="An owner removes a person from the organisation (never the last owner).",
)
CHANGE_MEMBER_ROLE: Rpc[ChangeMemberRole, MemberRoleChanged] = Rpc(
    service="auth", endpoint="change_member_role", subject="rpc.auth.members.role", request=ChangeMemberRole,
    reply=ChangeMemberRoleReply, description="An owner changes a person's role (never leaving no owner).",
)
ISSUE_API_KEY: Rpc[IssueApiKey, ApiKeyCreated] = Rpc(
    service="auth",
    endpoint="issue_api_key",
    subject="rpc.auth.api_keys.issue",
    request=IssueApiKey,
    reply=IssueApiKeyReply,
    description="A member creates an API key of their organisation; the secret is returned once.",
)
LIST_API_KEYS: Rpc[ListApiKeys, ApiKeyList] = Rpc(
    service="auth",
    endpoint="list_api_keys",
    subject="rpc.auth.api_keys.list",
    request=ListApiKeys,
    reply=ListApiKeysReply,
    description="An organisation's live API keys, without secrets.",
)
REVOKE_API_KEY: Rpc[RevokeApiKey, ApiKeyRevoked] = Rpc(
    service="auth",
    endpoint="revoke_api_key",
    subject="rpc.auth.api_keys.revoke",
    request=RevokeApiKey,
    reply=RevokeApiKeyReply,
    description="Revoke an organisation's API key.",
)
OAUTH_MINT_SERVICE_TOKEN: Rpc[MintServiceToken, TokenIssued] = Rpc(
    service="oauth",
    endpoint="mint_service_token",
    subject="rpc.oauth.service_token",
    request=MintServiceToken,
    reply=MintServiceTokenReply,
    description="A short-lived access token for one server, for the platform's own health checks.",
)
LIST_SERVERS: Rpc[ListServers, ServerList] = Rpc(
    service="deployer", endpoint="list_servers", subject="rpc.deployer.list", request=ListServers,
    reply=ListServersReply, description="An organisation's hosted servers.",
)
GET_SERVER: Rpc[GetServer, ServerReply] = Rpc(
    service="deployer", endpoint="get_server", subject="rpc.deployer.get", request=GetServer,
    reply=GetServerReply, description="One hosted server with its versions.",
)
CONTROL_SERVER: Rpc[ControlServer, ServerReply] = Rpc(
    service="deployer", endpoint="control_server", subject="rpc.deployer.control", request=ControlServer,
    reply=ControlServerReply, description="Stop, start, delete or roll back a hosted server.", timeout_seconds=300.0,
)
GET_SERVER_LOGS: Rpc[GetServerLogs, ServerLogs] = Rpc(
    service="deployer", endpoint="server_logs", subject="rpc.deployer.logs", request=GetServerLogs,
    reply=GetServerLogsReply, description="The last lines a server's runner wrote.",
)
RESOLVE_SERVER: Rpc[ResolveServer, ServerOwner] = Rpc(
    service="deployer", endpoint="resolve_server", subject="rpc.deployer.resolve", request=ResolveServer,
    reply=ResolveServerReply, description="Which organisation owns a server (for oauth and metering).",
)
SERVER_RPCS = (LIST_SERVERS, GET_SERVER, CONTROL_SERVER, GET_SERVER_LOGS, RESOLVE_SERVER)
# Server secrets: a value travels only in a set or stage request (rpc.* subjects are in no stream), never back.
SET_SERVER_SECRET: Rpc[SetServerSecret, ServerSecretSet] = Rpc(
    service="deployer", endpoint="set_server_secret", subject="rpc.deployer.secrets.set", request=SetServerSecret,
    reply=SetServerSecretReply, description="Store a server's upstream credential sealed; restart it if it runs.",
    timeout_seconds=300.0,
)
LIST_SERVER_SECRETS: Rpc[ListServerSecrets, ServerSecrets] = Rpc(
    service="deployer", endpoint="list_server_secrets", subject="rpc.deployer.secrets.list",
    request=ListServerSecrets, reply=ListServerSecretsReply,
    description="A server's secret names, which its version needs and which are missing (never values).",
)
DELETE_SERVER_SECRET: Rpc[DeleteServerSecret, ServerSecretDeleted] = Rpc(
    service="deployer", endpoint="delete_server_secret", subject="rpc.deployer.secrets.delete",
    request=DeleteServerSecret, reply=DeleteServerSecretReply,
    description="Forget a server's secret; restart it if it runs and needs it.",
    timeout_seconds=300.0,
)
STAGE_BUILD_SECRETS: Rpc[StageBuildSecrets, BuildSecretsStaged] = Rpc(
    service="deployer", endpoint="stage_build_secrets", subject="rpc.deployer.secrets.stage",
    request=StageBuildSecrets, reply=StageBuildSecretsReply,
    description="Keep the secrets given with a build sealed until the build's server exists, then set them on it.",
    timeout_seconds=300.0,
)
SECRET_RPCS = (SET_SERVER_SECRET, LIST_SERVER_SECRETS, DELETE_SERVER_SECRET, STAGE_BUILD_SECRETS)
CHECK_QUOTA: Rpc[CheckQuota, QuotaAllowed] = Rpc(
    service="metering", endpoint="check_quota", subject="rpc.metering.check_quota", request=CheckQuota,
    reply=CheckQuotaReply, description="May an organisation start one more build or server (`quota_exceeded` if not).",
)
GET_USAGE: Rpc[GetUsage, UsageReport] = Rpc(
    service="metering", endpoint="get_usage", subject="rpc.metering.usage", request=GetUsage,
    reply=GetUsageReply, description="One organisation's usage in one month: per server, per tool, per day, builds.",
)
GET_QUOTA: Rpc[GetQuota, QuotaStatus] = Rpc(
    service="metering", endpoint="get_quota", subject="rpc.metering.quota", request=GetQuota,
    reply=GetQuotaReply, description="An organisation's plan and each quota's use.",
)
METERING_RPCS = (CHECK_QUOTA, GET_USAGE, GET_QUOTA)
IDENTITY_RPCS: tuple[Rpc[Any, Any], ...] = (
    REQUEST_MAGIC_LINK,
    REDEEM_MAGIC_LINK,
    GET_ME,
    LIST_SESSIONS,
    REVOKE_SESSION,
    INVITE_MEMBER,
    LIST_INVITES,
    REVOKE_INVITE,
    LIST_MEMBERS,
    REMOVE_MEMBER,
    CHANGE_MEMBER_ROLE,
    ISSUE_API_KEY,
    LIST_API_KEYS,
    REVOKE_API_KEY,
)
OAUTH_REGISTER_CLIENT: Rpc[RegisterClient, ClientRegistered | OAuthError] = Rpc(
    service="oauth",
    endpoint="register_client",
    subject="rpc.oauth.clients.register",
    request=RegisterClient,
    reply=RegisterClientReply,
    description="Dynamic Client Registration (RFC 7591): idempotent for the same metadata, rate-limited per address.",
)
OAUTH_CREATE_CLIENT: Rpc[CreateClient, ClientRegistered | OAuthError] = Rpc(
    service="oauth",
    endpoint="create_client",
    subject="rpc.oauth.clients.create",
    request=CreateClient,
    reply=CreateClientReply,
    description="Pre-register an OAuth client (operator CLI); the secret, if any, is returned once.",
)
OAUTH_START_AUTHORIZATION: Rpc[
    StartAuthorization, SignInRequired | ConsentRequired | AuthorizationRedirect | OAuthError
] = Rpc(
    service="oauth",
    endpoint="start_authorization",
    subject="rpc.oauth.authorize.start",
    request=StartAuthorization,
    reply=StartAuthorizationReply,
    description="Validate an authorization request and, for a signed-in person, open a pending consent (the "
    "first-party dashboard client: its code at once).",
)
OAUTH_DECIDE_CONSENT: Rpc[DecideConsent, AuthorizationRedirect | OAuthError] = Rpc(
    service="oauth",
    endpoint="decide_consent",
    subject="rpc.oauth.authorize.decide",
    request=DecideConsent,
    reply=DecideConsentReply,
    description="Record the person's consent decision; answer where to redirect (a code, or access_denied).",
)
OAUTH_EXCHANGE_TOKEN: Rpc[ExchangeToken, TokenIssued | OAuthError] = Rpc(
    service="oauth",
    endpoint="exchange_token",
    subject="rpc.oauth.token",
    request=ExchangeToken,
    reply=ExchangeTokenReply,
    description="The token endpoint: authorization_code (PKCE S256) and rotating refresh_token grants.",
)
OAUTH_REVOKE_TOKEN: Rpc[RevokeToken, TokenRevoked | OAuthError] = Rpc(
    service="oauth",
    endpoint="revoke_token",
    subject="rpc.oauth.revoke",
    request=RevokeToken,
    reply=RevokeTokenReply,
    description="RFC 7009 revocation; a refresh token takes its whole family with it.",
)
OAUTH_GET_JWKS: Rpc[GetJwks, Jwks] = Rpc(
    service="oauth",
    endpoint="get_jwks",
    subject="rpc.oauth.jwks",
    request=GetJwks,
    reply=GetJwksReply,
    description="The public signing keys (current and not yet expired retired ones).",
)
RPCS: tuple[Rpc[Any, Any], ...] = (
    SUBMIT_BUILD,
    GET_BUILD,
    PREVIEW_PLAN,
    AUTHENTICATE,
    CREATE_API_KEY,
    ISSUE_SIGN_IN_LINK,
    *IDENTITY_RPCS,
    OAUTH_REGISTER_CLIENT,
    OAUTH_CREATE_CLIENT,
    OAUTH_START_AUTHORIZATION,
    OAUTH_DECIDE_CONSENT,
    OAUTH_EXCHANGE_TOKEN,
    OAUTH_REVOKE_TOKEN,
    OAUTH_GET_JWKS,
    OAUTH_MINT_SERVICE_TOKEN,
    *SERVER_RPCS,
    *SECRET_RPCS,
    *METERING_RPCS,
)

# --- durable consumers ---

PLANNER_REQUESTED: Consumer[BuildRequested] = Consumer(
    stream=BUILDS,
    durable="planner",
    filter_subject=build_kind_filter("requested"),
    message=AnyBuildEvent,
    owner="planner",
    description="Plans each requested build.",
)
BUILD_STATUS: Consumer[AnyBuildEvent] = Consumer(
    stream=BUILDS,
    durable="build-status",
    filter_subject=BUILDS.subjects[0],
    message=AnyBuildEvent,
    owner="planner",
    description="Projects every build event into the build registry's summary table.",
)
CODEGEN_PLANNED: Consumer[AnyBuildEvent] = Consumer(
    stream=BUILDS,
    durable="codegen",
    filter_subject=build_kind_filter("planned"),
    message=AnyBuildEvent,
    owner="codegen",
    description="Renders each planned build into an artifact.",
)
CHECKER_GENERATED: Consumer[AnyBuildEvent] = Consumer(
    stream=BUILDS,
    durable="checker",
    filter_subject=build_kind_filter("generated"),
    message=AnyBuildEvent,
    owner="checker",
    description="Checks each generated artifact.",
    # Its handler says it is still working every ack_wait/3 (Context.heartbeat) however long the check takes,
    # so a short wait only means that a copy that dies hands its build to another within 6 s.
    ack_wait_seconds=LONG_STEP_ACK_WAIT_SECONDS,
)
DEPLOYER_CHECKED: Consumer[AnyBuildEvent] = Consumer(
    stream=BUILDS,
    durable="deployer",
    filter_subject=build_kind_filter("checked"),
    message=AnyBuildEvent,
    owner="deployer",
    description="Deploys each checked artifact.",
    ack_wait_seconds=LONG_STEP_ACK_WAIT_SECONDS,  # as the checker's
)
METERING_USAGE: Consumer[ToolCalled] = Consumer(
    stream=USAGE,
    durable="metering",
    filter_subject=USAGE.subjects[0],
    message=ToolCalled,
    owner="metering",
    description="Aggregates usage events (in batches, each once by its event id).",
    # A tool call of a server metering has not heard of yet waits for the server's `changed` event
    # (METERING_SERVERS) this long in all before it is parked: about two and a half minutes.
    max_deliveries=8,
    ack_wait_seconds=15.0,
    backoff_seconds=(0.5, 1.0, 2.0, 5.0, 15.0, 30.0, 90.0),
)
METERING_SERVERS: Consumer[ServerChanged] = Consumer(
    stream=SERVERS,
    durable="metering",
    filter_subject=SERVERS.subjects[0],
    message=ServerChanged,
    owner="metering",
    description="Keeps metering's own record of which organisation owns each server, and which run.",
)
METERING_BUILDS: Consumer[AnyBuildEvent] = Consumer(
    stream=BUILDS,
    durable="metering",
    # only the kinds it counts: a busy build's log lines never reach metering
    filter_subject=build_kind_filter("requested"),
    more_filter_subjects=(build_kind_filter("step"), build_kind_filter("planned"), build_kind_filter("failed")),
    message=AnyBuildEvent,
    owner="metering",
    description="Counts requested builds, step timings and model tokens per organisation.",
)
OAUTH_MEMBERSHIP_ENDED: Consumer[MembershipEnded] = Consumer(
    stream=IDENTITY,
    durable="oauth",
    filter_subject=MEMBERSHIP_ENDED.wildcard(),
    message=MembershipEnded,
    owner="oauth",
    description="Ends every OAuth grant a person gave in an organisation they may no longer use.",
)
CONSUMERS: tuple[Consumer[Any], ...] = (
    PLANNER_REQUESTED,
    BUILD_STATUS,
    CODEGEN_PLANNED,
    CHECKER_GENERATED,
    DEPLOYER_CHECKED,
    METERING_USAGE,
    METERING_SERVERS,
    METERING_BUILDS,
    OAUTH_MEMBERSHIP_ENDED,
)

TRACE_HEADER = "Bmms-Trace-Id"
"""NATS header carrying the trace id from the HTTP edge through every actor."""

ALL_MESSAGES: tuple[type[Message], ...] = tuple(
    {
        t
        for union in (
            [r.request for r in RPCS]
            + [r.reply for r in RPCS]
            + [s.message for s in EVENT_SUBJECTS]
            + [c.message for c in CONSUMERS]
            + [b.message for b in OBJECT_BUCKETS]
        )
        for t in getattr(union, "__args__", (union,))
        if isinstance(t, type) and issubclass(t, Message)
    }
)
"""Every concrete message type that can travel on the bus."""
