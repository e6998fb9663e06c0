"""The front's side of every upstream call: the policy, the credentials, and the request itself.

Generated tools call `runner_template.upstream.request(...)` in the sandboxed worker, which has no network;
the worker hands the request to the front over the channel (`channel.Egress`), and `perform` decides and
makes it here, where the tool's code cannot reach:
- only the server's upstream hosts (from its plan) are reachable; redirects are not followed;
- unless private targets are allowed (dev), a host must resolve to public addresses only, and the connection
  goes to the address that was checked;
- path values are percent-encoded into `{name}` placeholders (no format-string evaluation), so a value
  cannot change the host or the path's shape;
- credentials are named, never written in code: `Auth(kind, secret=NAME)` becomes the value the deployer
  injected as `BMMS_SECRET_<NAME>`, and only for secrets the artifact declares; the worker never sees one;
- every call has a timeout and a response size cap; the result is the JSON body, else the text.
Refusals and failures never carry a credential or the filled-in URL.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import ipaddress
import json as jsonlib
import re
import socket
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlsplit

import httpx2

from runner_template.channel import Egress
from runner_template.settings import RUNNER_PREFIX, variable
from runner_template.styles import cookie_header, form_body, header_value, path_value, query_pairs, text

ALLOW_PRIVATE_ENV = variable(RUNNER_PREFIX, "allow_private_upstreams")
SECRET_ENV_PREFIX = "BMMS_SECRET_"  # noqa: S105 (a variable-name prefix, not a secret)
"""A secret named NAME is read from the runner's environment variable `BMMS_SECRET_<NAME>`."""

_PLACEHOLDER = re.compile(r"\{([^{}]+)\}")
METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"})


class UpstreamRefused(Exception):
    """The call is not allowed (a host outside the plan, an undeclared or missing secret); the message holds
    no credential."""


class UpstreamError(Exception):
    """The upstream call failed (unreachable, timed out, an error status, a response too large)."""


@dataclass(frozen=True)
class UpstreamPolicy:
    """What a runner's tools may reach upstream, and with which credentials."""

    hosts: frozenset[str]
    """Allowed hosts, lower case: `api.example.com`, or `host:port` to allow one port only."""
    secrets: Mapping[str, str] = field(default_factory=dict, repr=False)
    """Secret name -> value, for the secrets the artifact declares."""
    timeout_seconds: float = 30.0
    """Whole-call timeout (connect, send, and each read)."""
    max_response_bytes: int = 2 * 1024 * 1024
    """A larger response body fails the call instead of filling the runner's memory."""
    allow_private: bool = False
    """Let upstream hosts resolve to private, loopback, link-local or reserved addresses (dev and tests,
    `BMMS_RUNNER_ALLOW_PRIVATE_UPSTREAMS=1`); otherwise a hosted server cannot be pointed at the platform's
    own network or a cloud metadata endpoint."""

    @classmethod
    def from_environment(
        cls, hosts: Iterable[str], secret_names: Iterable[str], environ: Mapping[str, str], **limits: Any
    ) -> UpstreamPolicy:
        """The policy for an artifact's hosts and secrets, secret values read from `environ` by name."""
        values = {n: environ[SECRET_ENV_PREFIX + n] for n in secret_names if SECRET_ENV_PREFIX + n in environ}
        allow_private = environ.get(ALLOW_PRIVATE_ENV, "").lower() in ("1", "true", "yes")
        return cls(hosts=frozenset(h.lower() for h in hosts), secrets=values, allow_private=allow_private, **limits)

    def allows(self, url: str) -> bool:
        """Whether `url` is http(s) to one of the allowed hosts."""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.username or parts.password:
            return False
        host = parts.hostname.lower()
        return host in self.hosts or f"{host}:{parts.port}" in self.hosts


def fill_path(url_template: str, values: Mapping[str, Any], styles: Mapping[str, str] | None = None) -> str:
    """`url_template` with each `{name}` replaced by its value, percent-encoded and written in its style."""

    def one(match: re.Match[str]) -> str:
        name = match.group(1)
        value = values.get(name)
        if value is None:
            raise UpstreamRefused(f"path parameter {name!r} has no value")
        return path_value(name, value, (styles or {}).get(name, "simple"))

    return _PLACEHOLDER.sub(one, url_template)


async def perform(policy: UpstreamPolicy, call: Egress) -> Any:
    """Make the upstream request a tool asked for, under `policy`; the JSON body, else the text (or the status
    when empty). UpstreamRefused when the policy says no, UpstreamError when the call fails (an error status
    says the status and the start of the body).

    Parameters whose value is None are left out.
    """
    method, url_template, auth = call.method.upper(), call.url_template, call.auth
    if method not in METHODS:
        raise UpstreamRefused(f"method {call.method[:20]!r} is not an HTTP method a tool may use")
    what = f"{method} {url_template}"  # errors name the template, never a filled-in URL (it may hold a secret)
    styles = call.styles or {}
    try:
        url = fill_path(url_template, call.path or {}, styles)
        params = query_pairs(call.query, call.query_styles)
        header_values = {name: header_value(value, styles.get(name, "simple"))
                         for name, value in (call.headers or {}).items() if value is not None}
        cookies = cookie_header(call.cookies or {}, styles)
    except ValueError as exc:
        raise UpstreamRefused(f"{what}: {exc}") from None
    if cookies is not None:
        header_values["Cookie"] = cookies
    if auth is not None:
        secret = policy.secrets.get(auth.secret)
        if secret is None:
            raise UpstreamRefused(f"{what}: secret {auth.secret} is not configured for this server")
        if auth.kind == "bearer":
            header_values["Authorization"] = f"Bearer {secret}"
        elif auth.kind == "basic":
            header_values["Authorization"] = "Basic " + base64.b64encode(secret.encode()).decode()
        elif auth.kind == "header" and auth.name:
            header_values[auth.name] = secret
        elif auth.kind == "query" and auth.name:
            params.append((quote(auth.name, safe=""), quote(secret, safe="")))
        else:
            raise UpstreamRefused(f"{what}: auth {auth.kind!r} needs a header or parameter name")
    content: dict[str, Any] = {}
    if call.form is not None:
        try:
            content["content"] = form_body(call.form, call.form_styles).encode()
        except ValueError as exc:
            raise UpstreamRefused(f"{what}: {exc}") from None
        header_values["Content-Type"] = "application/x-www-form-urlencoded"
    elif call.multipart is not None:
        content["files"] = await _parts(policy, call.multipart, frozenset(call.file_fields or ()), what)
    elif call.text is not None:
        content["content"] = call.text.encode()
        header_values["Content-Type"] = call.content_type or "text/plain; charset=utf-8"
    elif call.json is not None:
        content["json"] = call.json
    if params:
        url += ("&" if urlsplit(url).query else "?") + "&".join(f"{k}={v}" for k, v in params)
    response, body = await _exchange(policy, method, url, what, headers=header_values, **content)
    result = _decode(response, body)
    if response.status_code >= 400:
        detail = result if isinstance(result, str) else jsonlib.dumps(result)
        raise UpstreamError(f"{what}: answered {response.status_code}: {detail[:500]}")
    return result


async def _exchange(policy: UpstreamPolicy, method: str, url: str, what: str, *, headers: dict[str, str],
                    **request: Any) -> tuple[httpx2.Response, bytes]:
    """One request to `url` under `policy` (an allowed host, a checked address, no redirects, a timeout and a
    size cap): the response and its body."""
    if not policy.allows(url):
        raise UpstreamRefused(f"{what}: host {urlsplit(url).netloc!r} is not one of this server's upstream hosts")
    target, extensions = await _pinned(url, policy, what)
    if target != url:
        headers["Host"] = urlsplit(url).netloc
    try:
        async with (
            httpx2.AsyncClient(timeout=httpx2.Timeout(policy.timeout_seconds), follow_redirects=False,
                               trust_env=False) as client,
            client.stream(method, target, headers=headers, extensions=extensions, **request) as response,
        ):
            body = await _read_capped(response, policy.max_response_bytes, what)
    except httpx2.TimeoutException:
        raise UpstreamError(f"{what}: no answer within {policy.timeout_seconds:g} s") from None
    except httpx2.HTTPError as exc:
        raise UpstreamError(f"{what}: {type(exc).__name__}") from None
    if response.is_redirect:
        raise UpstreamError(f"{what}: answered {response.status_code} (a redirect; not followed)")
    return response, body


FilePart = tuple[str | None, bytes | str, str | None]
"""(filename, content, content type) of one multipart part; a plain field has no filename or type."""


async def _parts(policy: UpstreamPolicy, fields: Mapping[str, Any], file_fields: frozenset[str],
                 what: str) -> list[tuple[str, FilePart]]:
    """The parts of a `multipart/form-data` body: plain fields as text (an array repeats its field), file fields
    from their `base64` content or fetched from their `url` under the same policy as any upstream call."""
    parts: list[tuple[str, FilePart]] = []
    for name, value in fields.items():
        for item in value if isinstance(value, list | tuple) else [value]:
            if item is None:
                continue
            if name in file_fields:
                parts.append((name, await _file(policy, name, item, what)))
            else:
                parts.append((name, (None, text(item), None)))
    return parts


async def _file(policy: UpstreamPolicy, field_name: str, value: Any, what: str) -> FilePart:
    """One file part: `{"base64": ...}` decoded, or `{"url": ...}` fetched (an upstream host, a public address,
    the response size cap), with its `filename` and `content_type` when given."""
    if not isinstance(value, Mapping) or ("base64" in value) == ("url" in value):
        raise UpstreamRefused(f"{what}: file field {field_name!r} needs an object with `base64` or `url`")
    filename, content_type = value.get("filename"), value.get("content_type")
    if "base64" in value:
        try:
            content = base64.b64decode(str(value["base64"]), validate=True)
        except (binascii.Error, ValueError):
            raise UpstreamRefused(f"{what}: file field {field_name!r}: `base64` is not base64") from None
    else:
        source = str(value["url"])
        response, content = await _exchange(policy, "GET", source, f"{what}: file field {field_name!r} from its url",
                                            headers={})
        if response.status_code >= 400:
            raise UpstreamError(f"{what}: file field {field_name!r}: its url answered {response.status_code}")
        filename = filename or urlsplit(source).path.rsplit("/", 1)[-1] or None
        content_type = content_type or response.headers.get("content-type")
    return (str(filename or field_name), content, str(content_type or "application/octet-stream"))


async def _pinned(url: str, policy: UpstreamPolicy, what: str) -> tuple[str, dict[str, Any]]:
    """The URL to connect to and its request extensions: unless private targets are allowed, the host is
    resolved once, every address must be public, and the connection goes to that checked address (the host
    name kept for the Host header and TLS), so a name that re-resolves elsewhere cannot redirect the call."""
    if policy.allow_private:
        return url, {}
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError:
        raise UpstreamError(f"{what}: host {host!r} does not resolve") from None
    addresses = [str(info[4][0]) for info in infos]
    refused = [a for a in addresses if not ipaddress.ip_address(a.split("%")[0]).is_global]
    if refused or not addresses:
        raise UpstreamRefused(f"{what}: host {host!r} resolves to a non-public address ({', '.join(refused)}); "
                              "hosted servers may only call public APIs")
    address = addresses[0]
    netloc = f"[{address}]:{port}" if ":" in address else f"{address}:{port}"
    extensions: dict[str, Any] = {"sni_hostname": host} if parts.scheme == "https" else {}
    return parts._replace(netloc=netloc).geturl(), extensions


async def _read_capped(response: httpx2.Response, limit: int, what: str) -> bytes:
    declared = response.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise UpstreamError(f"{what}: response of {declared} bytes is over the {limit} byte limit")
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.aiter_bytes():
        size += len(chunk)
        if size > limit:
            raise UpstreamError(f"{what}: response is over the {limit} byte limit")
        chunks.append(chunk)
    return b"".join(chunks)


def _decode(response: httpx2.Response, body: bytes) -> Any:
    if not body:
        return {"status": response.status_code}
    content_type = response.headers.get("content-type", "").lower()
    if "json" in content_type:
        try:
            return jsonlib.loads(body)
        except ValueError:
            pass
    return body.decode(response.encoding or "utf-8", errors="replace")
