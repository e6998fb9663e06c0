"""Every error the gateway answers is an RFC 9457 problem document, and it is made here, in one place.

Bus failures (`Failed(code, detail)` replies) map to HTTP statuses through `FAILURE_STATUS`; Litestar's own
exceptions (routing, validation, malformed bodies) and crashes go through `problem_response`. A dependency that
did not answer (the bus, an actor, the database) is a 503 with `Retry-After`, never a 500.
"""

from __future__ import annotations

import logging
import re
from http import HTTPStatus
from typing import Any

import msgspec
from litestar import Request, Response
from litestar.exceptions import HTTPException, NotAuthorizedException, ValidationException

from actors.runtime.faults import dependency_of
from bus_schemas.base import Failed, FailureCode
from gateway.tracing import TRACE_RESPONSE_HEADER, scope_trace_id

log = logging.getLogger("bmms.gateway")

PROBLEM_MEDIA_TYPE = "application/problem+json"

FAILURE_STATUS: dict[str, int] = {
    # The edge already rejects malformed input with 400; an actor's `invalid` means the request was
    # well-formed but the domain refuses it, which is what 422 says.
    FailureCode.INVALID: 422,
    FailureCode.NOT_FOUND: 404,
    FailureCode.UNAUTHENTICATED: 401,
    FailureCode.FORBIDDEN: 403,
    FailureCode.CONFLICT: 409,
    FailureCode.RATE_LIMITED: 429,
    # 429, not 402: RFC 9110 leaves 402 "reserved for future use" and clients handle it inconsistently,
    # while every client knows 429 means "over a limit"; the problem `type` tells quota from rate.
    FailureCode.QUOTA_EXCEEDED: 429,
    FailureCode.UNAVAILABLE: 503,
    FailureCode.INTERNAL: 500,
    FailureCode.NOT_IMPLEMENTED: 501,
}
"""The one mapping from a bus failure code to the HTTP status the edge answers with."""

UNAVAILABLE_RETRY_AFTER_SECONDS = 2
"""`Retry-After` of a 503 whose cause did not say how long: a dependency that did not answer."""

_encoder = msgspec.json.Encoder()


class ProblemField(msgspec.Struct, frozen=True, kw_only=True):
    """One invalid input field of a validation problem."""

    field: str
    """Where the value is, as a dotted path inside its source (`source.text`)."""
    source: str
    """Which part of the request: body, query, path or header."""
    message: str
    """What is wrong with it."""


class Problem(Exception):
    """An error answered as a problem document; raise it anywhere a request is handled."""

    def __init__(
        self,
        status: int,
        detail: str,
        *,
        code: str | None = None,
        errors: list[ProblemField] | None = None,
        headers: dict[str, str] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.code = code
        self.errors = errors
        self.headers = headers or {}
        self.extra = extra or {}

    @property
    def type_uri(self) -> str:
        """The problem type: a URI reference per domain code, `about:blank` for plain HTTP errors."""
        return f"/problems/{self.code}" if self.code else "about:blank"

    @property
    def title(self) -> str:
        """The HTTP reason phrase of the status, as RFC 9457 asks for `about:blank` problems."""
        try:
            return HTTPStatus(self.status).phrase
        except ValueError:
            return "Error"


def problem_from_failed(failed: Failed) -> Problem:
    """The problem for a bus failure; unknown codes are internal errors."""
    status = FAILURE_STATUS.get(failed.code, 500)
    headers: dict[str, str] = {}
    if status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    if failed.retry_after_seconds is not None:
        # RFC 9110 §10.2.3: delay-seconds until the limit's window frees up.
        headers["Retry-After"] = str(max(1, failed.retry_after_seconds))
    elif status == 503:
        headers["Retry-After"] = str(UNAVAILABLE_RETRY_AFTER_SECONDS)
    errors = [ProblemField(field=failed.field, source="body", message=failed.detail)] if failed.field else None
    return Problem(status, failed.detail, code=failed.code, errors=errors, headers=headers)


def unavailable_problem(detail: str) -> Problem:
    """A 503: a dependency (the bus, an actor, the database) did not answer; retry after `Retry-After`."""
    return Problem(503, detail, code=FailureCode.UNAVAILABLE,
                   headers={"Retry-After": str(UNAVAILABLE_RETRY_AFTER_SECONDS)})


def unauthenticated(detail: str) -> Problem:
    """A 401 that tells the client how to authenticate."""
    return Problem(401, detail, code=FailureCode.UNAUTHENTICATED, headers={"WWW-Authenticate": "Bearer"})


_MISSING_FIELD = re.compile(r"Object missing required field `([^`]+)`")
"""msgspec's message for a missing field, which it reports at the enclosing object's path."""


def _validation_problem(exc: ValidationException) -> Problem:
    errors: list[ProblemField] = []
    for item in exc.extra if isinstance(exc.extra, list) else []:
        if not isinstance(item, dict):
            continue
        key = str(item.get("key", ""))
        source = str(getattr(item.get("source"), "value", None) or item.get("source") or "body")  # ParamType -> "query"
        message = str(item.get("message", ""))
        # Litestar names the whole body `data`; inside it the path is relative to the body.
        field = "" if key == "data" else key
        missing = _MISSING_FIELD.match(message)
        if missing:  # the field that is missing, not the object it is missing from
            field = f"{field}.{missing.group(1)}" if field else missing.group(1)
        errors.append(ProblemField(field=field or "$", source=source, message=message))
    if errors:
        first = errors[0]
        where = f"{first.source} field `{first.field}`" if first.field != "$" else first.source
        detail = f"invalid {where}: {first.message}"
    else:
        detail = exc.detail
    return Problem(400, detail, code=FailureCode.INVALID, errors=errors)


def _caused_by_bad_json(exc: BaseException) -> bool:
    cause = exc.__cause__
    while cause is not None:
        if isinstance(cause, msgspec.DecodeError) and not isinstance(cause, msgspec.ValidationError):
            return True
        cause = cause.__cause__
    return False


def as_problem(exc: Exception) -> Problem:
    """Turn any exception raised while handling a request into the problem to answer with."""
    if isinstance(exc, Problem):
        return exc
    if isinstance(exc, ValidationException):
        return _validation_problem(exc)
    if isinstance(exc, NotAuthorizedException):
        return unauthenticated(exc.detail)
    if isinstance(exc, HTTPException):
        if exc.status_code == 400 and _caused_by_bad_json(exc):
            return Problem(400, f"the request body is not valid JSON: {exc.detail}", code=FailureCode.INVALID,
                           errors=[ProblemField(field="$", source="body", message=exc.detail)])
        return Problem(exc.status_code, exc.detail, headers=dict(exc.headers or {}))
    dependency = dependency_of(exc)
    if dependency is not None:
        log.warning("%s did not answer: %r", dependency, exc)
        return unavailable_problem(f"{dependency} is unavailable; retry shortly")
    log.exception("unhandled error", exc_info=exc)
    return Problem(500, "internal error", code=FailureCode.INTERNAL)


def problem_response(request: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
    """The application's one exception handler: every error becomes `application/problem+json`."""
    problem = as_problem(exc)
    trace_id = scope_trace_id(request.scope)
    detail = problem.detail
    if problem.status >= 500 and problem.code == FailureCode.INTERNAL and trace_id not in detail:
        detail = f"{detail} (trace id {trace_id})"
    body: dict[str, Any] = {
        "type": problem.type_uri,
        "title": problem.title,
        "status": problem.status,
        "detail": detail,
        "instance": request.url.path,
        "trace_id": trace_id,
    }
    if problem.code:
        body["code"] = problem.code
    if problem.errors is not None:
        body["errors"] = problem.errors
    body.update(problem.extra)
    headers = {**problem.headers, TRACE_RESPONSE_HEADER: trace_id}
    if problem.status == 503:
        headers.setdefault("Retry-After", str(UNAVAILABLE_RETRY_AFTER_SECONDS))  # every 503 says when to retry
    return Response(
        content=_encoder.encode(body), status_code=problem.status, media_type=PROBLEM_MEDIA_TYPE, headers=headers
    )
