"""Fetching a document a person named by URL, without letting the URL reach inside our network.

SSRF guards: https only (http too with `allow_private`, for dev and tests); the host is resolved once and
every address must be public (no private, loopback, link-local, reserved or multicast target) unless
`allow_private`; the connection goes to a checked address with the host name kept for TLS (SNI and the
certificate check), so a second, different DNS answer cannot redirect it; redirects are followed by hand,
each hop checked the same way; the body is capped at `max_bytes` and the whole fetch at `timeout`.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from urllib.parse import urljoin, urlsplit

import httpx2


class FetchRefused(Exception):
    """The URL cannot be fetched; the message says why, in words for the person who sent it."""


def _address_allowed(address: str, allow_private: bool) -> bool:
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.is_multicast or ip.is_unspecified:
        return False
    return allow_private or ip.is_global


async def _fetch_once(url: str, allow_private: bool, max_bytes: int, timeout: float) -> tuple[int, str | None, bytes]:
    parts = urlsplit(url)
    if parts.scheme != "https" and not (allow_private and parts.scheme == "http"):
        raise FetchRefused(f"{url} is not an https URL")
    if not parts.hostname or parts.username or parts.password:
        raise FetchRefused(f"{url} must name a host, without credentials")
    host = parts.hostname
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise FetchRefused(f"the host of {url} does not resolve: {exc}") from None
    addresses = sorted({str(info[4][0]) for info in infos})
    refused = [a for a in addresses if not _address_allowed(a, allow_private)]
    if not addresses or refused:
        raise FetchRefused(f"{url} resolves to a non-public address ({', '.join(refused) or 'none'}); refused")
    target = addresses[0]
    literal = f"[{target}]" if ":" in target else target
    connect_url = parts._replace(netloc=f"{literal}:{port}").geturl()
    headers = {"Host": parts.netloc, "Accept": "application/json, application/yaml, text/yaml, */*"}
    try:
        async with httpx2.AsyncClient(follow_redirects=False, timeout=timeout) as http:  # noqa: SIM117
            async with http.stream("GET", connect_url, headers=headers, extensions={"sni_hostname": host}) as response:
                if response.is_redirect:
                    return response.status_code, response.headers.get("location"), b""
                if response.status_code != 200:
                    raise FetchRefused(f"{url} answered HTTP {response.status_code}")
                body = bytearray()
                async for chunk in response.aiter_bytes():
                    body += chunk
                    if len(body) > max_bytes:
                        raise FetchRefused(f"{url} is larger than {max_bytes:,} bytes")
                return 200, None, bytes(body)
    except httpx2.HTTPError as exc:
        raise FetchRefused(f"fetching {url} failed: {type(exc).__name__}") from None


async def fetch_document(
    url: str, *, allow_private: bool, max_bytes: int = 5 * 1024 * 1024, timeout: float = 15.0, max_redirects: int = 3
) -> tuple[str, bytes]:
    """The final URL and the body of a GET to `url`; FetchRefused says why it cannot be used."""
    try:
        async with asyncio.timeout(timeout):
            for _ in range(max_redirects + 1):
                _status, location, body = await _fetch_once(url, allow_private, max_bytes, timeout)
                if location is None:
                    return url, body
                url = urljoin(url, location)
            raise FetchRefused(f"more than {max_redirects} redirects")
    except TimeoutError:
        raise FetchRefused(f"fetching {url} took over {timeout:.0f}s") from None
