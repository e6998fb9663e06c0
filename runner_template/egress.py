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


def fill_path(url_template: str, values: Mapping[str, Any]) -> str:
    """`url_template` with each `{name}` replaced by its percent-encoded value."""

    def one(match: re.Match[str]) -> str:
        name = match.group(1)
        value = values.get(name)
        if value is None:
            raise UpstreamRefused(f"path parameter {name!r} has no value")
        return quote(_text(value), safe="")

    return _PLACEHOLDER.sub(one, url_template)


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict | list):
        return jsonlib.dumps(value, separators=(",", ":"))
    return str(value)


_JOINERS = {"form_joined": ",", "space_delimited": " ", "pipe_delimited": "|"}
QUERY_STYLES = frozenset({"form", "deep_object", *_JOINERS})


def _query(values: Mapping[str, Any] | None, styles: Mapping[str, str] | None = None) -> list[tuple[str, str]]:
    """Query pairs, each parameter written in its OpenAPI style (see `bus_schemas.plans.QueryStyle`); None is
    left out."""
    pairs: list[tuple[str, str]] = []
    for name, value in (values or {}).items():
        if value is None:
            continue
        style = (styles or {}).get(name, "form")
        if isinstance(value, dict):
            fields = [(k, v) for k, v in value.items() if v is not None]
            if style == "deep_object":
                pairs.extend((f"{name}[{k}]", _text(v)) for k, v in fields)
            elif style in _JOINERS:
                pairs.append((name, _JOINERS[style].join(_text(part) for kv in fields for part in kv)))
            else:
                pairs.extend((k, _text(v)) for k, v in fields)
        elif isinstance(value, list | tuple):
            if style in _JOINERS:
                pairs.append((name, _JOINERS[style].join(_text(item) for item in value)))
            else:
                pairs.extend((name, _text(item)) for item in value)
        else:
            pairs.append((name, _text(value)))
    return pairs


def _form(fields: Mapping[str, Any]) -> dict[str, list[str]]:
    """Form fields as sent: an array repeats its field (OpenAPI's form default, `explode: true`), an object or
    anything else not a scalar goes as its JSON, None is left out."""
    out: dict[str, list[str]] = {}
    for name, value in fields.items():
        for item in value if isinstance(value, list | tuple) else [value]:
            if item is not None:
                text = _text(item) if isinstance(item, str | int | float | bool) else jsonlib.dumps(item)
                out.setdefault(name, []).append(text)
    return out


async def perform(policy: UpstreamPolicy, call: Egress) -> Any:
    """Make the upstream request a tool asked for, under `policy`; the JSON body, else the text (or the status
    when empty). UpstreamRefused when the policy says no, UpstreamError when the call fails.

    Parameters whose value is None are left out.
    """
    method, url_template, auth = call.method.upper(), call.url_template, call.auth
    if method not in METHODS:
        raise UpstreamRefused(f"method {call.method[:20]!r} is not an HTTP method a tool may use")
    path, query, headers, json = call.path, call.query, call.headers, call.json
    what = f"{method} {url_template}"  # errors name the template, never a filled-in URL (it may hold a secret)
    url = fill_path(url_template, path or {})
    if not policy.allows(url):
        raise UpstreamRefused(f"{what}: host {urlsplit(url).netloc!r} is not one of this server's upstream hosts")
    unknown = sorted(set((call.query_styles or {}).values()) - QUERY_STYLES)
    if unknown:
        raise UpstreamRefused(f"{what}: unknown query style(s) {unknown}")
    query_pairs = _query(query, call.query_styles)
    header_values = {name: _text(value) for name, value in (headers or {}).items() if value is not None}
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
            query_pairs.append((auth.name, secret))
        else:
            raise UpstreamRefused(f"{what}: auth {auth.kind!r} needs a header or parameter name")
    timeout = httpx2.Timeout(policy.timeout_seconds)
    target, extensions = await _pinned(url, policy, what)
    if target != url:
        header_values["Host"] = urlsplit(url).netloc
    try:
        async with (
            httpx2.AsyncClient(timeout=timeout, follow_redirects=False, trust_env=False) as client,
            client.stream(method, target, params=tuple(query_pairs), headers=header_values, json=json,
                          data=_form(call.form) if call.form is not None else None,
                          extensions=extensions) as response,
        ):
            body = await _read_capped(response, policy.max_response_bytes, what)
    except httpx2.TimeoutException:
        raise UpstreamError(f"{what}: no answer within {policy.timeout_seconds:g} s") from None
    except httpx2.HTTPError as exc:
        raise UpstreamError(f"{what}: {type(exc).__name__}") from None
    if response.is_redirect:
        raise UpstreamError(f"{what}: answered {response.status_code} (a redirect; not followed)")
    result = _decode(response, body)
    if response.status_code >= 400:
        detail = result if isinstance(result, str) else jsonlib.dumps(result)
        raise UpstreamError(f"{what}: answered {response.status_code}: {detail[:500]}")
    return result


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
