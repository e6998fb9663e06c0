"""Who a client is: registered metadata checks, redirect URI rules, and Client ID Metadata Documents."""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import json
import logging
import re
import socket
import ssl
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx2
import msgspec

from bus_schemas.oauth import ClientMetadata

log = logging.getLogger("bmms.oauth")

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "[::1]")
AUTH_METHODS = ("none", "client_secret_post", "client_secret_basic")
GRANT_TYPES = ("authorization_code", "refresh_token")


class MetadataError(ValueError):
    """Client metadata that cannot be accepted; `error` is the RFC 7591 error code."""

    def __init__(self, error: str, description: str) -> None:
        super().__init__(description)
        self.error = error
        self.description = description


@dataclass(frozen=True)
class Client:
    """A client as the authorization and token endpoints see it."""

    client_id: str
    client_name: str
    client_uri: str | None
    redirect_uris: tuple[str, ...]
    token_endpoint_auth_method: str
    grant_types: tuple[str, ...]
    from_metadata_document: bool = False


def redirect_uri_problem(uri: str) -> str | None:
    """Why `uri` cannot be a redirect URI, or None: https anywhere, or http on a loopback host."""
    if len(uri) > 2000:
        return "is longer than 2000 characters"
    try:
        parts = urlsplit(uri)
        parts.port  # noqa: B018 (raises on a bad port)
    except ValueError:
        return "is not a URL"
    if parts.fragment or "#" in uri:
        return "must not have a fragment"
    if parts.username or parts.password:
        return "must not carry credentials"
    if not parts.hostname:
        return "has no host"
    if parts.scheme == "https":
        return None
    if parts.scheme == "http" and parts.netloc.rsplit("@", 1)[-1].rsplit(":", 1)[0] in LOOPBACK_HOSTS:
        return None
    return "must be https, or http on 127.0.0.1, localhost or [::1]"


def checked_metadata(metadata: ClientMetadata, *, allow_secret: bool = True) -> ClientMetadata:
    """The metadata with defaults filled in (RFC 7591 §2), or MetadataError."""
    if not metadata.redirect_uris:
        raise MetadataError("invalid_redirect_uri", "redirect_uris must list at least one URI")
    if len(metadata.redirect_uris) > 10:
        raise MetadataError("invalid_redirect_uri", "at most 10 redirect_uris")
    for uri in metadata.redirect_uris:
        problem = redirect_uri_problem(uri)
        if problem:
            raise MetadataError("invalid_redirect_uri", f"redirect URI {uri[:200]!r} {problem}")
    method = metadata.token_endpoint_auth_method or "client_secret_basic"
    if method not in AUTH_METHODS or (method != "none" and not allow_secret):
        allowed = AUTH_METHODS if allow_secret else ("none",)
        raise MetadataError(
            "invalid_client_metadata", f"token_endpoint_auth_method {method!r} is not one of {', '.join(allowed)}"
        )
    grant_types = metadata.grant_types or ("authorization_code",)
    unknown = [g for g in grant_types if g not in GRANT_TYPES]
    if unknown or "authorization_code" not in grant_types:
        raise MetadataError(
            "invalid_client_metadata", f"grant_types must include authorization_code and may add refresh_token; "
            f"not supported: {', '.join(unknown) or 'none'}",
        )
    response_types = metadata.response_types or ("code",)
    if tuple(response_types) != ("code",):
        raise MetadataError("invalid_client_metadata", "response_types must be [\"code\"]")
    if metadata.client_name is not None and len(metadata.client_name) > 200:
        raise MetadataError("invalid_client_metadata", "client_name is longer than 200 characters")
    if metadata.client_uri is not None and not metadata.client_uri.startswith("https://"):
        raise MetadataError("invalid_client_metadata", "client_uri must be an https URL")
    return ClientMetadata(
        redirect_uris=tuple(metadata.redirect_uris),
        client_name=metadata.client_name,
        token_endpoint_auth_method=method,
        grant_types=tuple(dict.fromkeys(grant_types)),
        response_types=("code",),
        scope=metadata.scope,
        client_uri=metadata.client_uri,
        software_id=metadata.software_id,
        software_version=metadata.software_version,
    )


def metadata_digest(metadata: ClientMetadata) -> str:
    """What makes two registrations "the same client": redirect URIs, name, auth method, grant types."""
    canonical = json.dumps(
        [sorted(metadata.redirect_uris), metadata.client_name, metadata.token_endpoint_auth_method,
         sorted(metadata.grant_types or ())],
        separators=(",", ":"),
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


# --- Client ID Metadata Documents ---

_MAX_AGE = re.compile(r"max-age=(\d+)")


def is_metadata_document_url(client_id: str) -> bool:
    """Whether a client_id is a URL (a Client ID Metadata Document) rather than an id we issued."""
    return client_id.startswith(("https://", "http://"))


def _address_allowed(address: str, allow_loopback: bool) -> bool:
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if allow_loopback and ip.is_loopback:
        return True
    return ip.is_global and not ip.is_multicast


def _address_refused(url: str, detail: str) -> MetadataError:
    """The refusal of a client_id whose host may not be fetched. Anyone may send any client_id unsigned in, so
    the answer is the same whatever the host resolves to, or whether it resolves at all (no DNS oracle into
    the private network); the detail goes to the log only."""
    log.warning("refused client metadata document %s: %s", url, detail)
    return MetadataError("invalid_client",
                         f"client_id {url} is refused: its host's address is not allowed (only public ones are)")


def trusting(ca_file: str | None) -> ssl.SSLContext | None:
    """A verifying TLS context that trusts the PEM CA certificates in `ca_file` besides the system's
    (a private PKI; the tests' own CA); None without a file."""
    if not ca_file:
        return None
    context = ssl.create_default_context()
    context.load_verify_locations(cafile=ca_file)
    return context


class MetadataDocuments:
    """Fetches Client ID Metadata Documents safely and caches them as their Cache-Control allows.

    SSRF guards: https only (http to loopback only with the dev/test setting); the host is resolved
    once and every address must be public (no private, loopback, link-local, reserved or multicast
    target); the connection then goes to a checked address with the host name used for TLS (SNI and
    certificate check), so a second, different DNS answer cannot redirect it; no redirects are
    followed; the body is capped at `max_bytes` and the whole fetch at `timeout` seconds (under the
    gateway's RPC timeout, so a slow document is refused with a reason rather than a 503).

    Certificates are always verified: against the system's trust store, or `tls` when given (a context
    that trusts a private CA as well, see `trusting`); verification is never turned off.
    """

    def __init__(
        self,
        *,
        allow_loopback: bool,
        max_bytes: int = 5 * 1024,
        timeout: float = 3.0,
        max_entries: int = 1000,
        default_ttl: float = 300.0,
        max_ttl: float = 24 * 3600.0,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.allow_loopback = allow_loopback
        self.tls = tls
        """How https documents are verified; None: the system's trust store."""
        self.max_bytes = max_bytes
        self.timeout = timeout
        self.max_entries = max_entries
        self.default_ttl = default_ttl
        self.max_ttl = max_ttl
        self._cache: OrderedDict[str, tuple[float, Client]] = OrderedDict()

    def url_problem(self, url: str) -> str | None:
        """Why `url` cannot be a client id, before anything is fetched."""
        try:
            parts = urlsplit(url)
            parts.port  # noqa: B018
        except ValueError:
            return "is not a URL"
        if parts.scheme != "https" and not (self.allow_loopback and parts.scheme == "http"):
            return "must be an https URL"
        if not parts.hostname or parts.username or parts.password or parts.fragment:
            return "must name a host, without credentials or a fragment"
        if not parts.path or parts.path == "/":
            return "must have a path"
        if len(url) > 2000:
            return "is longer than 2000 characters"
        return None

    async def client(self, url: str) -> Client:
        """The client the document at `url` describes; MetadataError says why it cannot be used."""
        cached = self._cache.get(url)
        if cached is not None and cached[0] > time.monotonic():
            self._cache.move_to_end(url)
            return cached[1]
        problem = self.url_problem(url)
        if problem:
            raise MetadataError("invalid_client", f"client_id {url[:200]!r} {problem}")
        try:
            async with asyncio.timeout(self.timeout):
                body, cache_control = await self._fetch(url)
        except TimeoutError:
            raise MetadataError("invalid_client", f"fetching the client metadata document {url} took over "
                                                  f"{self.timeout:.0f}s") from None
        client = self._parse(url, body)
        ttl = self._ttl(cache_control)
        if ttl > 0:
            self._cache[url] = (time.monotonic() + ttl, client)
            self._cache.move_to_end(url)
            while len(self._cache) > self.max_entries:
                self._cache.popitem(last=False)
        return client

    def _ttl(self, cache_control: str) -> float:
        lowered = cache_control.lower()
        if "no-store" in lowered or "no-cache" in lowered:
            return 0.0
        match = _MAX_AGE.search(lowered)
        return min(float(match.group(1)), self.max_ttl) if match else self.default_ttl

    async def _fetch(self, url: str) -> tuple[bytes, str]:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port or (443 if parts.scheme == "https" else 80)
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError as exc:
            raise _address_refused(url, f"its host does not resolve: {exc}") from None
        addresses = sorted({str(info[4][0]) for info in infos})
        refused = [a for a in addresses if not _address_allowed(a, self.allow_loopback)]
        if not addresses or refused:
            raise _address_refused(url, f"its host resolves to a non-public address ({', '.join(refused) or 'none'})")
        target = addresses[0]
        literal = f"[{target}]" if ":" in target else target
        connect_url = parts._replace(netloc=f"{literal}:{port}").geturl()
        headers = {"Host": parts.netloc, "Accept": "application/json"}
        try:
            async with httpx2.AsyncClient(follow_redirects=False, timeout=self.timeout,  # noqa: SIM117
                                          verify=self.tls if self.tls is not None else True,
                                          trust_env=False) as http:
                async with http.stream("GET", connect_url, headers=headers,
                                       extensions={"sni_hostname": host}) as response:
                    if response.status_code != 200:
                        raise MetadataError("invalid_client", f"client_id {url} answered HTTP {response.status_code}")
                    body = b""
                    async for chunk in response.aiter_bytes():
                        body += chunk
                        if len(body) > self.max_bytes:
                            limit = self.max_bytes
                            raise MetadataError(
                                "invalid_client", f"the client metadata document at {url} is over {limit} bytes"
                            )
                    return body, response.headers.get("cache-control", "")
        except httpx2.HTTPError as exc:
            raise MetadataError("invalid_client", f"fetching client_id {url} failed: {type(exc).__name__}") from None

    def _parse(self, url: str, body: bytes) -> Client:
        try:
            document: Any = json.loads(body)
        except ValueError:
            raise MetadataError("invalid_client", f"the client metadata document at {url} is not JSON") from None
        if not isinstance(document, dict):
            raise MetadataError("invalid_client", f"the client metadata document at {url} is not a JSON object")
        if document.get("client_id") != url:
            raise MetadataError(
                "invalid_client",
                f"the client metadata document's client_id {str(document.get('client_id'))[:200]!r} "
                f"is not its URL {url}",
            )
        if "client_secret" in document or "client_secret_expires_at" in document:
            raise MetadataError("invalid_client", "a client metadata document must not carry a client secret")
        try:
            raw = {k: document[k] for k in ClientMetadata.__struct_fields__ if k in document}
            metadata = msgspec.convert(raw, ClientMetadata)
        except Exception as exc:
            raise MetadataError(
                "invalid_client", f"the client metadata document at {url} is malformed: {exc}"
            ) from None
        method = metadata.token_endpoint_auth_method or "none"
        try:
            checked = checked_metadata(
                msgspec.structs.replace(metadata, token_endpoint_auth_method=method), allow_secret=False
            )
        except MetadataError as exc:
            raise MetadataError("invalid_client", f"client metadata document {url}: {exc.description}") from None
        return Client(
            client_id=url,
            client_name=checked.client_name or urlsplit(url).hostname or url,
            client_uri=checked.client_uri,
            redirect_uris=checked.redirect_uris,
            token_endpoint_auth_method="none",  # noqa: S106
            grant_types=checked.grant_types or GRANT_TYPES,
            from_metadata_document=True,
        )
