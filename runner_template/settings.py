"""Settings read once per process from the environment: a msgspec Struct whose every field `name` is the
variable `<PREFIX><NAME>` (upper case; empty counts as unset), converted by msgspec (`"30"` -> 30.0,
`"1"`/`"true"` -> True, a comma-separated list -> a tuple). The platform's processes
(`actors.runtime.settings.Settings`, `BMMS_*`) and the runner (`runner_template.app.RunnerSettings`,
`BMMS_RUNNER_*`) are read by this one piece of code, and whoever starts a runner writes its environment with
`to_environment`, the inverse.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Mapping
from typing import Any, TypeVar
from urllib.parse import urlsplit

import msgspec
import msgspec.inspect

from bus_schemas.base import SUBJECT_TOKEN_RE

S = TypeVar("S", bound=msgspec.Struct)


def variable(prefix: str, field: str) -> str:
    """The environment variable of a settings field."""
    return f"{prefix}{field.upper()}"


def from_environment(kind: type[S], prefix: str, environ: Mapping[str, str]) -> S:
    """The settings of `kind` from the `<prefix>*` variables in `environ`; ValueError naming the variable
    that is missing or malformed."""
    info = msgspec.inspect.type_info(kind)
    assert isinstance(info, msgspec.inspect.StructType)
    raw: dict[str, Any] = {}
    for field in info.fields:
        value = environ.get(variable(prefix, field.encode_name))
        if not value:
            continue  # unset and set-but-empty alike leave the field at its default
        raw[field.encode_name] = _split(value) if _is_sequence(field.type) else value
    try:
        return msgspec.convert(raw, kind, strict=False)
    except msgspec.ValidationError as exc:
        raise ValueError(f"bad {_variable_in(prefix, str(exc))} setting: {exc}") from None


def to_environment(settings: msgspec.Struct, prefix: str) -> dict[str, str]:
    """The `<prefix>*` variables that `from_environment` reads back as `settings` (fields left at their
    default, and None values, are not written)."""
    info = msgspec.inspect.type_info(type(settings))
    assert isinstance(info, msgspec.inspect.StructType)
    env: dict[str, str] = {}
    for field in info.fields:
        value = getattr(settings, field.name)
        if value is None or (not field.required and value == field.default):
            continue
        env[variable(prefix, field.encode_name)] = _text(value)
    return env


def _is_sequence(kind: msgspec.inspect.Type) -> bool:
    if isinstance(kind, msgspec.inspect.UnionType):
        return any(_is_sequence(t) for t in kind.types)
    return isinstance(kind, msgspec.inspect.VarTupleType | msgspec.inspect.ListType)


def _split(value: str) -> list[str]:
    return [item.strip() for item in value.split(",") if item.strip()]


def _text(value: object) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, tuple | list):
        return ",".join(str(item) for item in value)
    return str(value)


def _variable_in(prefix: str, message: str) -> str:
    """The variable msgspec's message is about: "... - at `$.x`" (a bad value) or "missing required field
    `x`" (no value); else the prefix's family (`BMMS_*`)."""
    missing = re.search(r"missing required field `([^`]+)`", message)
    if missing:
        return variable(prefix, missing.group(1))
    at = re.search(r"at `\$\.([A-Za-z0-9_]+)", message)
    return variable(prefix, at.group(1)) if at else f"{prefix}*"


# --- the runner's settings ---

LOOPBACK_HOSTS = ("127.0.0.1", "127.0.0.1:*", "localhost", "localhost:*", "[::1]", "[::1]:*")
"""Host values the platform reaches a runner by directly (the deployer's health check, the dev gateway)."""
RUNNER_PREFIX = "BMMS_RUNNER_"
"""Every runner setting is an environment variable with this prefix."""


def origin_of(url: str) -> str:
    """`scheme://host[:port]` of a URL, lower case."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}".lower()


def _canonical_url(name: str, value: str, *, path: bool) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("https", "http") or not parts.hostname or parts.query or parts.fragment:
        raise SystemExit(f"{name} must be an absolute http(s) URL without query or fragment, not {value!r}")
    if path and (not parts.path or parts.path.endswith("/")):
        raise SystemExit(f"{name} must name the MCP endpoint (e.g. https://host/servers/<id>/mcp), no trailing "
                         f"slash, not {value!r}")
    return value


class RunnerSettings(msgspec.Struct, frozen=True, kw_only=True):
    """A runner's settings, each `BMMS_RUNNER_<FIELD>` in the environment (`runner_template.settings`): the
    deployer writes them with `to_environment()`, the runner reads them with `from_environment()`."""

    artifact: str
    """Path of the artifact (Artifact JSON) to serve."""
    host: str = "127.0.0.1"
    """Bind address."""
    port: int = 0
    """Port; 0 picks a free one (the ready line says which)."""
    name: str | None = None
    """The server's name in MCP; defaults to the artifact's module name."""
    upstream_timeout_seconds: float = 30.0
    """Timeout of each upstream call."""
    resource: str | None = None
    """This server's canonical public URL, e.g. https://mcp.example.com/servers/<id>/mcp: the token audience."""
    issuer: str | None = None
    """Our Authorization Server's issuer, byte for byte as in its metadata and in tokens' `iss`."""
    insecure_no_auth: bool = False
    """BMMS_RUNNER_INSECURE_NO_AUTH=1: serve without any token check. Only for tests of tool behaviour and the
    checker's sandboxed run; a deployed runner always has RESOURCE and ISSUER."""
    server_id: str = ""
    """The hosted server's id (usage events, /healthz)."""
    org_id: str = ""
    """The owning organisation (usage events, the QUOTAS key watched)."""
    allowed_origins: tuple[str, ...] = ()
    """Browser origins accepted (CORS and the Origin check) besides the RESOURCE's own."""
    allowed_hosts: tuple[str, ...] = ()
    """Extra Host values accepted (e.g. a Swarm service name), besides the RESOURCE's host, loopback and this
    machine's own names and addresses."""
    nats_url: str | None = None
    """The bus; without it no usage events, no quota watch, and the JWKS comes over HTTP."""
    nats_user: str = "runner"
    nats_password: str = ""
    jwks_url: str | None = None
    """Where to GET the JWKS when there is no bus (default: `<issuer>/oauth/jwks.json`)."""
    jwks_refetch_seconds: float = 10.0
    """An unknown `kid` fetches the JWKS again at most this often (a rotated-in key is picked up then)."""
    usage_queue_size: int = 10_000
    """Usage events kept while the bus is away; the oldest are dropped beyond this."""
    log_level: str = "INFO"
    worker: str = "bwrap"
    """Where the generated module runs: `bwrap` (a bubblewrap sandbox this process starts), `unsandboxed`
    (development only), or the address of a worker container: `unix:PATH`, `tcp:HOST:PORT`."""
    tool_timeout_seconds: float = 60.0
    """A tool call still running after this long is stopped (its worker's tool process is replaced)."""
    allow_private_upstreams: bool = False
    """Let upstream hosts resolve to private or loopback addresses (dev and tests; `egress.UpstreamPolicy`)."""

    def __repr__(self) -> str:
        return f"RunnerSettings(artifact={self.artifact!r}, server_id={self.server_id!r}, ...)"  # no password

    @classmethod
    def from_environment(cls, environ: Mapping[str, str]) -> RunnerSettings:
        """Read the settings from `BMMS_RUNNER_*` variables; exits saying what is missing or malformed."""
        try:
            settings = from_environment(cls, RUNNER_PREFIX, environ)
        except ValueError as exc:
            raise SystemExit(str(exc)) from None
        if not settings.insecure_no_auth and not (settings.resource and settings.issuer):
            raise SystemExit("BMMS_RUNNER_RESOURCE and BMMS_RUNNER_ISSUER must be set (the runner is an OAuth "
                             "Resource Server); BMMS_RUNNER_INSECURE_NO_AUTH=1 serves without auth, for tests only")
        if settings.resource:
            _canonical_url("BMMS_RUNNER_RESOURCE", settings.resource, path=True)
        if settings.issuer:
            _canonical_url("BMMS_RUNNER_ISSUER", settings.issuer, path=False)
        settings.check_bus()
        return settings

    def to_environment(self) -> dict[str, str]:
        """The `BMMS_RUNNER_*` variables that start a runner with these settings."""
        return to_environment(self, RUNNER_PREFIX)

    def check_bus(self) -> None:
        """With a bus, usage events need valid server and organisation ids (they are subject tokens)."""
        if self.nats_url:
            for name, value in (("BMMS_RUNNER_SERVER_ID", self.server_id), ("BMMS_RUNNER_ORG_ID", self.org_id)):
                if not SUBJECT_TOKEN_RE.match(value):
                    raise SystemExit(f"{name} must be set to a server/organisation id when BMMS_RUNNER_NATS_URL is")

    def host_allowlist(self) -> list[str]:
        """Host header values accepted: the public host, loopback, this machine's names and addresses, extras."""
        hosts = list(LOOPBACK_HOSTS)
        if self.resource:
            parts = urlsplit(self.resource)
            hosts += [parts.netloc.lower(), f"{_host_literal(parts.hostname or '')}:*"]
        for name in _own_addresses(self.host):
            hosts += [name, f"{name}:*"]
        hosts += self.allowed_hosts
        return list(dict.fromkeys(hosts))

    def origin_allowlist(self) -> list[str]:
        """Origins accepted: the RESOURCE's own and the configured ones."""
        origins = [origin_of(self.resource)] if self.resource else []
        return list(dict.fromkeys([*origins, *(o.rstrip("/").lower() for o in self.allowed_origins)]))


def _host_literal(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _own_addresses(bind_host: str) -> list[str]:
    """How the platform may address this machine directly: the bind address, the host name and its addresses
    (in a container: the container id and the container's address on its network)."""
    names = [] if bind_host in ("", "0.0.0.0", "::") else [_host_literal(bind_host)]  # noqa: S104 (compared, not bound)
    try:
        hostname = socket.gethostname()
        names.append(hostname.lower())
        names += [_host_literal(a) for a in socket.gethostbyname_ex(hostname)[2]]
    except OSError:
        pass
    return names
