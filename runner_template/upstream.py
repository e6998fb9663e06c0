"""The one way a generated tool reaches an upstream API: `await upstream.request(...)`.

Generated code calls `await upstream.request(method, url_template, path=..., query=..., headers=...,
json=..., auth=Auth(kind, secret=NAME))`. It runs in the sandboxed worker, which has no network and holds
no secret: the request goes to the front over the channel (`channel.Egress`), and the front decides whether
it goes out (the plan's hosts, public addresses only), puts the named secret's value in, makes the call and
answers with the body (`runner_template.egress`). A refusal or failure raises a `ToolError`, which the SDK
turns into a tool error for the model; its message never holds a credential or the filled-in URL.
"""

from __future__ import annotations

import contextvars
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from mcp.server.mcpserver.exceptions import ToolError

from runner_template.channel import Egress, EgressAnswer, EgressAuth

__all__ = ["Auth", "UpstreamError", "UpstreamRefused", "request"]


class UpstreamRefused(ToolError):
    """The front refused the call (a host outside the plan, a private address, an undeclared secret)."""


class UpstreamError(ToolError):
    """The upstream call failed (unreachable, timed out, an error status, a response too large)."""


@dataclass(frozen=True)
class Auth:
    """How a call authenticates upstream: which secret, and where the front puts its value."""

    kind: Literal["bearer", "header", "query", "basic"]
    secret: str
    """The secret's name; the front holds its value (the deployer's `BMMS_SECRET_<secret>`)."""
    name: str | None = None
    """Header or query parameter name for `header`/`query`."""


Sender = Callable[[Egress], Awaitable[EgressAnswer]]
"""Sends an egress request to the front and waits for its answer (set by the worker for each call)."""

current_call: contextvars.ContextVar[tuple[int, Sender] | None] = contextvars.ContextVar(
    "bmms_current_call", default=None)
"""The call a tool runs for, and the way to the front; set by the worker around each tool call."""


def wire_value(value: Any, renames: Mapping[str, Any] | None) -> Any:
    """`value` with the property names the tool serves other than the API names them put back to the API's
    names, following `renames` (`HttpCall.body_renames`: `rename`, `fields`, `items`)."""
    if not renames:
        return value
    if isinstance(value, Mapping):
        names, fields = renames.get("rename") or {}, renames.get("fields") or {}
        return {names.get(k, k): wire_value(v, fields.get(k)) for k, v in value.items()}
    if isinstance(value, list | tuple) and renames.get("items"):
        return [wire_value(item, renames["items"]) for item in value]
    return value


async def request(
    method: str,
    url_template: str,
    *,
    path: Mapping[str, Any] | None = None,
    query: Mapping[str, Any] | None = None,
    query_styles: Mapping[str, str] | None = None,
    headers: Mapping[str, Any] | None = None,
    cookies: Mapping[str, Any] | None = None,
    styles: Mapping[str, str] | None = None,
    json: Any = None,
    form: Mapping[str, Any] | None = None,
    form_styles: Mapping[str, str] | None = None,
    multipart: Mapping[str, Any] | None = None,
    files: Sequence[str] = (),
    text: str | None = None,
    content_type: str | None = None,
    auth: Auth | None = None,
    body_renames: Mapping[str, Any] | None = None,
    param_renames: Mapping[str, Mapping[str, Any]] | None = None,
) -> Any:
    """Ask the front to call upstream; the JSON body, else the text (or the status when empty).

    The body is one of `json`, `form` (urlencoded fields), `multipart` (parts; the fields named in `files` are
    files, each `{"base64": ...}` or `{"url": ...}` with an optional `filename` and `content_type`) or `text`
    (with its `content_type`). `styles` says how path, header and cookie values are written, `query_styles`
    query values (OpenAPI's styles, `runner_template.styles`). Parameters whose value is None are left out.
    """
    current = current_call.get()
    if current is None:
        raise UpstreamRefused("upstream calls are made only while a tool call runs")
    call_id, send = current
    if body_renames:
        json, form, multipart = (wire_value(json, body_renames), wire_value(form, body_renames),
                                 wire_value(multipart, body_renames))
    if param_renames:
        path, query, headers, cookies = (
            {k: wire_value(v, param_renames.get(k)) for k, v in values.items()} if values is not None else None
            for values in (path, query, headers, cookies))
    answer = await send(Egress(
        id=0, call_id=call_id, method=method, url_template=url_template,
        path=dict(path) if path is not None else None, query=dict(query) if query is not None else None,
        query_styles=dict(query_styles) if query_styles else None,
        headers=dict(headers) if headers is not None else None,
        cookies=dict(cookies) if cookies is not None else None, styles=dict(styles) if styles else None,
        json=json, form=dict(form) if form is not None else None,
        form_styles=dict(form_styles) if form_styles else None,
        multipart=dict(multipart) if multipart is not None else None, file_fields=list(files) or None,
        text=text, content_type=content_type,
        auth=EgressAuth(kind=auth.kind, secret=auth.secret, name=auth.name) if auth is not None else None,
    ))
    if answer.error is not None:
        raise (UpstreamRefused if answer.refused else UpstreamError)(answer.error)
    return answer.value
