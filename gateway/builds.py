"""/v1/builds: submit a build, read it, and stream its events over a WebSocket."""

from __future__ import annotations

import asyncio
import logging
from typing import Annotated, Any, cast

import msgspec
import nats.errors
from litestar import Controller, Request, Response, WebSocket, get, post, websocket
from litestar.di import NamedDependency, Provide
from litestar.exceptions import WebSocketDisconnect
from litestar.params import FromPath, HeaderParameter, JSONBody, QueryParameter

from actors.runtime.codec import decode
from bus_schemas.base import SUBJECT_TOKEN_RE, FailureCode
from bus_schemas.builds import BuildSummary, GetBuild, SubmitBuild
from bus_schemas.identity import Principal
from bus_schemas.registry import BUILD_SUMMARIES, GET_BUILD, STAGE_BUILD_SECRETS, SUBMIT_BUILD, build_summary_key
from bus_schemas.servers import StageBuildSecrets
from gateway.auth import (
    WEBSOCKET_BEARER_PROTOCOL,
    bearer_token,
    origin_allowed,
    requested_org,
    session_token,
)
from gateway.bus import BusClient, Unanswered, new_request_id
from gateway.feeds import (
    MAX_SEQUENCE,
    RAW_SEND,
    BuildEnded,
    FeedClosed,
    Send,
    SocketLagging,
    Watcher,
    direct_transport,
)
from gateway.problems import Problem
from gateway.schemas import BuildCreated, BuildView, CreateBuild, build_links
from gateway.servers import server_of
from gateway.services import EdgeServices, provide_principal

log = logging.getLogger("bmms.gateway.builds")

CLOSE_TOO_SLOW = 4008
"""WebSocket close code for a client that fell too far behind; the reason says which `after=` to use."""
CLOSE_BUILD_ENDED = 1000
"""Normal closure once the build's last event (`deployed` or `failed`) is sent; the reason is that kind."""
CLOSE_GOING_AWAY = 1001
"""The gateway is shutting down; reconnect (to another copy) with `after=`."""


def checked_build_id(build_id: str) -> str:
    """A build id that can exist; anything else cannot name a build of the caller's."""
    if not SUBJECT_TOKEN_RE.match(build_id):
        raise Problem(404, f"no build {build_id[:80]!r} in this organisation", code=FailureCode.NOT_FOUND)
    return build_id


def _close_reason(text: str) -> str:
    # A close frame's reason holds at most 123 bytes of UTF-8.
    data = text.encode()
    return text if len(data) <= 123 else data[:120].decode(errors="ignore") + "..."


async def stage_secrets(bus: BusClient, principal: Principal, build_id: str, secrets: dict[str, str]) -> None:
    """Hand a build's secrets to the deployer, which sets them on the build's server before it starts (or at
    once, when it has deployed already)."""
    request = StageBuildSecrets(org_id=principal.org_id, build_id=build_id, secrets=secrets,
                                requested_by=principal.subject)
    try:
        await bus.ask(STAGE_BUILD_SECRETS, request)
    except Problem as problem:
        raise Problem(problem.status, f"build {build_id} was accepted, but its secrets were not stored: "
                      f"{problem.detail}; send the request again with the same Idempotency-Key, or set them with "
                      "PUT /v1/servers/<server_id>/secrets/<NAME> once it deploys",
                      code=problem.code, errors=problem.errors, headers=problem.headers,
                      extra={"build_id": build_id}) from None


async def read_summary(services: EdgeServices, org_id: str, build_id: str) -> BuildSummary | None:
    """The build's summary from BUILD_SUMMARIES (one JetStream direct get: a plain request, its answer the
    value itself with no headers, or a 404 status), or None when it is not there or unreadable."""
    if services.summaries is None:
        return None
    try:
        subject, body = BUILD_SUMMARIES.direct_get(build_summary_key(org_id, build_id))
        answer = await services.bus.requester.request(subject, body, timeout=services.rpc_timeout)
        if answer.headers:
            return None  # a status: 404, no such key (or 408 from the server: the registry answers instead)
        summary = decode(BuildSummary, answer.data)
    except (nats.errors.Error, msgspec.ValidationError, msgspec.DecodeError):
        return None
    return summary if summary.org_id == org_id else None


class BuildsController(Controller):
    """Builds of the caller's organisation."""

    path = "/v1/builds"
    tags = ["builds"]
    dependencies = {"principal": Provide(provide_principal)}

    @post(
        "/",
        status_code=202,
        summary="Submit a build",
        response_headers=None,
    )
    async def create_build(
        self,
        data: JSONBody[CreateBuild],
        principal: NamedDependency[Principal],
        services: NamedDependency[EdgeServices],
        idempotency_key: Annotated[
            str | None,
            HeaderParameter(name="Idempotency-Key", min_length=1, max_length=200,
                            description="Retrying with the same key returns the same build instead of a new one."),
        ] = None,
    ) -> Response[BuildCreated]:
        """Accept a build request and start the pipeline; watch it at `links.stream`. Secrets given with it
        go to the deployer only (split off here, at the edge), never into the build request or its events.
        A `server_id` must name a server of the caller's organisation: 404 at once, before any step runs.
        One request makes at most one build, even without an `Idempotency-Key`: a 503 means no build was made
        (retry after `Retry-After`); a 504 that the registry took it without answering, with the `build_id` it
        has if it was recorded."""
        if data.server_id is not None:
            await server_of(services.bus, principal, data.server_id)
        request = SubmitBuild(
            org_id=principal.org_id, requested_by=principal.subject, name=data.name, source=data.source,
            idempotency_key=idempotency_key, server_id=data.server_id,
            # the registry records at most one build per request id, so the request can go to another copy
            request_id=new_request_id(), accept_by=services.bus.answered_by(SUBMIT_BUILD),
        )
        try:
            accepted = await services.bus.ask(SUBMIT_BUILD, request)
        except Unanswered as unanswered:
            raise Problem(504, f"{unanswered.detail}; the build may or may not be recorded: GET "
                          f"{build_links(str(request.request_id)).self_} tells",
                          code=FailureCode.UNAVAILABLE, headers=unanswered.headers,
                          extra={"build_id": request.request_id}) from None
        if data.secrets:
            await stage_secrets(services.bus, principal, accepted.build_id, data.secrets)
        links = build_links(accepted.build_id)
        return Response(
            BuildCreated(build_id=accepted.build_id, status=accepted.status, links=links),
            status_code=202,
            headers={"Location": links.self_},
        )

    @get("/{build_id:str}", summary="Read a build")
    async def get_build(
        self, build_id: FromPath[str], request: Request[Any, Any, Any], services: NamedDependency[EdgeServices],
    ) -> BuildView:
        """Where one build of the caller's organisation stands; 404 for any other build. Once deployed it
        carries the server's id and its MCP URL.

        Read from the build registry's read model on the bus (BUILD_SUMMARIES, one direct get under the
        caller's organisation's key); a build not in it yet is asked of the registry itself."""
        # The route dashboards poll: it authenticates inline (the same `for_request` the `principal` dependency
        # calls), since Litestar's resolution of an async dependency with parameters cost ~10 µs a request here.
        principal = await services.authenticator.for_request(request)
        build_id = checked_build_id(build_id)
        summary = await read_summary(services, principal.org_id, build_id)
        if summary is None:
            ask = GetBuild(org_id=principal.org_id, build_id=build_id)
            summary = await services.bus.ask(GET_BUILD, ask)
        return BuildView(
            build_id=summary.build_id, name=summary.name, status=summary.status, created_at=summary.created_at,
            updated_at=summary.updated_at, last_seq=summary.last_seq, failure=summary.failure,
            server_id=summary.server_id, url=summary.url, links=build_links(summary.build_id),
        )

    @websocket("/{build_id:str}/stream")
    async def stream_build(
        self,
        socket: WebSocket[Any, Any, Any],
        build_id: FromPath[str],
        services: NamedDependency[EdgeServices],
        after: Annotated[int, QueryParameter(ge=0, le=MAX_SEQUENCE, description="Resume after this stream sequence.")
                         ] = 0,
        org: Annotated[str | None, QueryParameter(
            pattern=SUBJECT_TOKEN_RE.pattern,
            description="The organisation to act in, as `X-Org` names it (a browser cannot set headers on a "
                        "WebSocket; the dashboard sends its organisation switcher's choice)."),
        ] = None,
    ) -> None:
        """The build's whole history, then live events, one JSON frame each:
        `{"seq", "subject", "kind", "event"}`. Authenticate with `Authorization: Bearer <key>`, from
        a browser with the subprotocols `bearer, <key>`, or with the session cookie from this site's own
        pages (the `Origin` must be the gateway's: else 4403, so another site cannot ride the cookie).
        Failures close the socket with 4000 + the HTTP status (4401, 4403, 4404, 4503...) and the
        problem's detail as reason. Once the build's last event (`deployed` or `failed`) is sent, the
        gateway closes the socket with 1000 and that kind as reason (CLOSE_BUILD_ENDED); 1001 (the gateway is
        going away), 4008 (too slow) and 1011 ask to reconnect with `after=<last seq>`."""
        token = bearer_token(socket)
        offered_bearer = token is not None and "authorization" not in socket.headers
        await socket.accept(subprotocols=WEBSOCKET_BEARER_PROTOCOL if offered_bearer else None)
        try:
            # WebSocket handshakes are not subject to CORS, and SameSite=Lax keeps the cookie off neither
            # pages on sibling hosts (same site) nor every browser's cross-site handshakes: the cookie
            # counts only when the Origin is our own (no cross-site WebSocket hijacking).
            if (
                token is None
                and (token := session_token(socket)) is not None
                and not origin_allowed(socket, services.settings.public_url)
            ):
                log.info("refused build socket: session cookie from foreign origin %r",
                         socket.headers.get("origin", "")[:200])
                raise Problem(403, "the session cookie is accepted only from this site's own pages; "
                              "send an API key instead", code=FailureCode.FORBIDDEN)
            principal = await services.authenticator.principal(token, org or requested_org(socket))
            request = GetBuild(org_id=principal.org_id, build_id=checked_build_id(build_id))
            await services.bus.ask(GET_BUILD, request)
            watcher = await services.feeds.watch(principal.org_id, build_id, after)
        except Problem as problem:
            await socket.close(code=4000 + problem.status, reason=_close_reason(problem.detail))
            return
        except Exception:
            log.exception("could not open the event feed of %s", build_id)
            await socket.close(code=4503, reason="the build's event feed is unavailable; retry")
            return
        try:
            await _relay(socket, watcher)
        finally:
            services.feeds.leave(watcher)


async def _relay(socket: WebSocket[Any, Any, Any], watcher: Watcher) -> None:
    # The pump writes frames while this task reads, only to learn when the client goes away.
    # Frames go straight to the server when it is ours (see gateway.server.with_raw_websocket_send).
    raw_send = cast("Send | None", socket.scope.get(RAW_SEND))
    watcher.direct = direct_transport(raw_send) if raw_send is not None else None
    pump = asyncio.create_task(watcher.pump(raw_send or socket.send))
    watcher.task = pump
    reading = asyncio.create_task(_until_disconnected(socket))
    try:
        await asyncio.wait({pump, reading}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.task = None
        for task in (pump, reading):
            task.cancel()
        await asyncio.gather(pump, reading, return_exceptions=True)
    if reading.done() and not reading.cancelled():
        return  # the client left
    error = watcher.error
    if isinstance(error, BuildEnded):
        code, reason = CLOSE_BUILD_ENDED, error.kind
    elif isinstance(error, SocketLagging):
        code, reason = CLOSE_TOO_SLOW, str(error)
    elif isinstance(error, FeedClosed):
        code, reason = CLOSE_GOING_AWAY, f"{error}; reconnect with after={watcher.last_seq}"
    elif pump.done() and not pump.cancelled() and isinstance(pump.exception(), WebSocketDisconnect | OSError):
        return
    else:
        log.error("event pump stopped", exc_info=pump.exception() if pump.done() and not pump.cancelled() else None)
        code, reason = 1011, f"internal error; reconnect with after={watcher.last_seq}"
    try:
        # A client that stopped reading may never take the close frame either; do not wait on it.
        async with asyncio.timeout(1.0):
            await socket.close(code=code, reason=_close_reason(reason))
    except (TimeoutError, WebSocketDisconnect, OSError):
        pass


async def _until_disconnected(socket: WebSocket[Any, Any, Any]) -> None:
    while True:
        message = await socket.receive()
        if message["type"] == "websocket.disconnect":
            return
