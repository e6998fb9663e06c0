"""Client ID Metadata Documents over https, the way production fetches them: a local HTTPS server whose
certificate comes from a CA made here, trusted by the fetcher through its TLS context (the oauth actor's
`oauth_metadata_ca_file` setting) and never by turning verification off."""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import json
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from nats.aio.client import Client

from actors.oauth.actor import create_actor
from actors.oauth.clients import MetadataDocuments, MetadataError, trusting
from actors.oauth.state import OAuthConfig
from actors.runtime.bus import connect
from bus_schemas.oauth import OAuthError, TokenIssued
from tests.conftest import Stack, running
from tests.support.oauth_helpers import (
    FOREIGN,
    REDIRECT,
    RESOURCE,
    SECRET_KEY,
    authorize,
    code_for,
    document_server,
    exchange,
    pkce_pair,
    serve_asgi,
)
from tests.support.server_registry import server_registry


@dataclass(frozen=True)
class Pki:
    """A CA made for the test and a server certificate it signed for localhost / 127.0.0.1."""

    ca_file: Path
    cert_file: Path
    key_file: Path


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def make_pki(directory: Path, label: str = "test") -> Pki:
    """A fresh CA and a localhost server certificate signed by it, written as PEM files."""
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _name(f"bmms {label} CA")
    ca = (
        x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False, data_encipherment=False,
                                     key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder().subject_name(_name("localhost")).issuer_name(ca_name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([
            x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    pki = Pki(ca_file=directory / "ca.pem", cert_file=directory / "server.pem", key_file=directory / "server.key")
    pki.ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    pki.cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pki.key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
    return pki


def serve_https(app: Any, pki: Pki) -> contextlib.AbstractAsyncContextManager[str]:
    """Serve an ASGI app over TLS on a free loopback port; yields `https://localhost:<port>`."""
    return serve_asgi(app, tls=(str(pki.cert_file), str(pki.key_file)))


def document(url: str, **extra: Any) -> bytes:
    return json.dumps({"client_id": url, "client_name": "TLS Doc Client", "redirect_uris": [REDIRECT],
                       "grant_types": ["authorization_code", "refresh_token"],
                       "token_endpoint_auth_method": "none", **extra}).encode()


@pytest.fixture(scope="module")
def pki(stack_root: Path) -> Pki:
    return make_pki(stack_root / "cimd-pki")


async def test_an_https_metadata_document_is_fetched_checked_and_cached_per_cache_control(
    pki: Pki, tmp_path: Path
) -> None:
    documents: dict[str, tuple[bytes, dict[str, str]]] = {}
    app = document_server(documents)
    async with serve_https(app, pki) as base:
        cached_url, fresh_url, wrong_url = f"{base}/cached.json", f"{base}/fresh.json", f"{base}/wrong.json"
        documents["/cached.json"] = (document(cached_url), {"Cache-Control": "public, max-age=600"})
        documents["/fresh.json"] = (document(fresh_url), {"Cache-Control": "no-store"})
        documents["/wrong.json"] = (document("https://other.example/client.json"), {})
        fetcher = MetadataDocuments(allow_loopback=True, tls=trusting(str(pki.ca_file)))

        client = await fetcher.client(cached_url)
        assert client.client_id == cached_url and client.client_name == "TLS Doc Client"
        assert client.redirect_uris == (REDIRECT,) and client.from_metadata_document
        assert client.token_endpoint_auth_method == "none"
        assert (await fetcher.client(cached_url)) == client
        assert app.hits["/cached.json"] == 1  # max-age=600: served from the cache

        await fetcher.client(fresh_url)
        await fetcher.client(fresh_url)
        assert app.hits["/fresh.json"] == 2  # no-store: fetched every time

        with pytest.raises(MetadataError, match="is not its URL"):
            await fetcher.client(wrong_url)

        # The same server without its CA in the trust store: the certificate is refused, nothing is read.
        with pytest.raises(MetadataError, match=r"fetching client_id \S+ failed: ConnectError"):
            await MetadataDocuments(allow_loopback=True).client(f"{base}/fresh.json")
        other = make_pki(tmp_path / "other", "other")
        with pytest.raises(MetadataError, match="failed: ConnectError"):
            await MetadataDocuments(allow_loopback=True, tls=trusting(str(other.ca_file))).client(fresh_url)
        assert app.hits["/fresh.json"] == 2

        # Without the loopback exception (production) the same https URL names a private address, and an
        # http one is not even considered: nothing is fetched.
        production = MetadataDocuments(allow_loopback=False, tls=trusting(str(pki.ca_file)))
        with pytest.raises(MetadataError, match="address is not allowed"):
            await production.client(fresh_url)
        with pytest.raises(MetadataError, match="must be an https URL"):
            await production.client(fresh_url.replace("https://", "http://"))
        assert app.hits["/fresh.json"] == 2


@pytest.fixture(scope="module")
async def https_oauth(stack: Stack, pki: Pki) -> AsyncIterator[Client]:
    actor = create_actor(OAuthConfig())
    settings = stack.settings("oauth", secret_key=SECRET_KEY, oauth_allow_loopback_fetch=True,
                              oauth_metadata_ca_file=str(pki.ca_file))
    async with server_registry(stack, {"weather": ("oorg1", RESOURCE), "elsewhere": ("oorg2", FOREIGN)}), \
            running(actor, settings):
        nc = await connect(stack.settings("admin"), "test-oauth-https")
        try:
            yield nc
        finally:
            await nc.close()


async def test_the_oauth_actor_uses_an_https_client_id_with_the_configured_ca(https_oauth: Client, pki: Pki) -> None:
    documents: dict[str, tuple[bytes, dict[str, str]]] = {}
    app = document_server(documents)
    async with serve_https(app, pki) as base:
        url = f"{base}/oauth/client.json"
        documents["/oauth/client.json"] = (document(url), {"Cache-Control": "max-age=600"})
        verifier, challenge = pkce_pair()
        code = await code_for(https_oauth, url, challenge)
        issued = await exchange(https_oauth, url, code, verifier)
        assert isinstance(issued, TokenIssued)
        assert app.hits["/oauth/client.json"] == 1
        # http to the same loopback server (allowed by the dev setting) cannot speak to a TLS port
        refused = await authorize(https_oauth, url.replace("https://", "http://"), challenge)
        assert isinstance(refused, OAuthError) and refused.error == "invalid_client"


def test_trusting_keeps_verification_on(pki: Pki) -> None:
    context = trusting(str(pki.ca_file))
    assert context is not None
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    assert trusting(None) is None
