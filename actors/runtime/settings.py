"""Process settings, read once from `BMMS_*` environment variables."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Literal

import msgspec

from runner_template.settings import from_environment


class Settings(msgspec.Struct, frozen=True, kw_only=True):
    """Everything a process may be configured with; each field is `BMMS_<FIELD>` in the environment."""

    nats_url: str = "nats://127.0.0.1:4222"
    """Where the NATS server answers: one URL, or a comma-separated list of a cluster's servers (clients try
    each, and reconnect to another when theirs goes away)."""
    nats_replicas: int = 1
    """How many servers keep a copy of every JetStream stream, key-value bucket and object store: 1, or 3 (5)
    on a cluster of at least that many servers, so losing one (two) loses nothing and stops nothing.
    `bmms migrate` applies it, to existing ones too."""
    nats_placement_cluster: str | None = None
    """Place the replicas in this JetStream cluster (a super-cluster's member); unset: the one connected to."""
    nats_placement_tags: tuple[str, ...] = ()
    """Place the replicas only on servers carrying every one of these `server_tags` (comma-separated)."""
    nats_user: str | None = None
    """This process's NATS user (its role in nats.conf)."""
    nats_password: str | None = None
    """Password of `nats_user`."""
    database_url: str | None = None
    """PostgreSQL DSN; actors that own tables need it."""
    data_dir: str = ".bmms"
    """Where `bmms dev` keeps the embedded NATS store, PostgreSQL data and dev secrets."""
    log_level: str = "INFO"
    """Root log level."""
    log_json: bool = True
    """One JSON object per log line (set false for plain text)."""
    http_host: str = "127.0.0.1"
    """Gateway bind address."""
    http_port: int = 8080
    """Gateway port; 0 picks a free one."""
    public_url: str | None = None
    """The gateway's public base URL, when it differs from http://host:port."""
    rpc_timeout: float = 5.0
    """Seconds the gateway waits for an RPC answer before answering 503."""
    gateway_fast_path: bool = True
    """The gateway's measured fast path: RPCs over its own request connection (`gateway.requester`) and event
    frames written straight to uvicorn's sans-I/O WebSocket protocol (`gateway.feeds`). `BMMS_GATEWAY_FAST_PATH=0`
    falls back to nats-py requests and Litestar's own WebSocket sends (if a library update breaks the fast path,
    or to tell it apart from a bug)."""
    drain_timeout: float = 20.0
    """Seconds a stopping actor waits for in-flight work before leaving it to redelivery."""
    transient_retry_deadline: float = 300.0
    """Seconds a pipeline step (any consumer's work) is retried while a dependency does not answer (the bus,
    another actor such as oauth, the database): it carries on by itself when the dependency is back within this;
    after it the work is parked and the build fails naming the dependency. Never an immediate failure."""
    metrics: bool = False
    """Record Prometheus metrics, served by the gateway at `/metrics` (off: no route, nothing recorded)."""
    metrics_port: int | None = None
    """An actor serves its Prometheus metrics (with its consumers' lag, read when scraped) on this port; unset:
    no listener (0 picks a free one)."""
    metrics_host: str = "127.0.0.1"
    """Where an actor's metrics listener binds (`0.0.0.0` in a container, for the scraper on its network)."""
    db_pool_max: int = 10
    """Upper bound of an actor's asyncpg pool."""
    quota_builds_per_month: int = 100
    """The default plan's builds per organisation and UTC month (the metering actor's `default` plan, which
    every organisation without another plan has); a negative value means unlimited."""
    quota_tool_calls_per_month: int = 100_000
    """The default plan's tool calls per organisation and UTC month; negative: unlimited."""
    quota_running_servers: int = 5
    """The default plan's servers an organisation may have running at once; negative: unlimited."""
    uvloop: bool = True
    """Run on uvloop (faster request/reply and pull consumers)."""
    smtp_url: str | None = None
    """Where the auth actor sends sign-in mail: `smtp://[user:pass@]host[:port]` (STARTTLS when offered),
    `smtps://...` (TLS from the start); unset, sign-in links are written to the log (development)."""
    mail_from: str = "Build My MCP Server <no-reply@localhost>"
    """The From address of sign-in and invitation mail."""
    secret_key: str | None = None
    """Key-encryption key of the oauth actor (its token-signing private keys) and the deployer (hosted servers'
    upstream secrets): each stores them AES-GCM encrypted under its own key derived from this one (`bmms dev`
    generates one into the data dir's secrets). Without it the deployer runs, but refuses to keep secrets."""
    servers_url: str | None = None
    """Base URL under which hosted MCP servers live (`<servers_url>/<server-id>/mcp`); default
    `<issuer>/servers`. OAuth `resource` values must be under it."""
    oauth_allow_loopback_fetch: bool = False
    """Dev/test only: let the oauth actor fetch client metadata documents over http from loopback
    addresses (production requires https to public addresses)."""
    oauth_metadata_ca_file: str | None = None
    """A PEM file of CA certificates the oauth actor trusts, besides the system's, when it fetches client
    metadata documents over https (a private PKI; tests). Certificates are always verified."""
    anthropic_api_key: str | None = None
    """Claude API key for planning from plain words (also read from plain `ANTHROPIC_API_KEY`); unset,
    plain-words builds fail at plan saying so, while OpenAPI and tool-spec builds need no key."""
    anthropic_model: str = "claude-sonnet-5-5"
    """The Claude model id the planner asks."""
    anthropic_base_url: str | None = None
    """Where the Messages API answers, when not api.anthropic.com (a proxy, or a local server in tests)."""
    llm_provider: Literal["anthropic", "openai"] = "anthropic"
    """Who plans plain words: `anthropic` (Claude, through the Messages API) or `openai` (any OpenAI-compatible
    chat-completions server: OpenAI, vLLM, llama.cpp's server, Ollama)."""
    llm_base_url: str | None = None
    """Where the provider's API answers, e.g. `http://localhost:11434/v1` for Ollama (`openai` default:
    https://api.openai.com/v1; `anthropic`: `anthropic_base_url`, else api.anthropic.com)."""
    llm_model: str | None = None
    """The model id to ask; required for `openai` (`anthropic` default: `anthropic_model`)."""
    llm_api_key: str | None = None
    """The provider's API key; optional for a local `openai` server (`anthropic` default: `anthropic_api_key`).
    Never logged nor written into a build's events."""
    llm_timeout: float = 120.0
    """Seconds one request to the model may take (the SDK retries a server that is briefly away twice)."""
    planner_token_budget: int = 10_000
    """A plan whose served tool list is estimated above this many tokens is flagged, naming its heaviest tools
    (a model reads the whole list on every request)."""
    planner_allow_private_fetch: bool = False
    """Dev/test only: let the planner fetch OpenAPI documents over http from private or loopback
    addresses (production requires https to public addresses)."""
    deploy_backend: str = "auto"
    """Where the deployer runs servers: `docker` (hardened containers, the default when a Docker socket
    answers), `swarm` (Docker Swarm services), `process` (local child processes with resource limits, less
    isolated), or `auto`."""
    docker_url: str | None = None
    """The Docker Engine API (`unix:///var/run/docker.sock` when unset)."""
    runner_nats_url: str | None = None
    """The bus address runners use to publish usage events (default: `nats_url`)."""
    runner_nats_password: str | None = None
    """The `runner` NATS user's password, handed to every runner the deployer starts."""
    runner_allowed_origins: str = ""
    """Comma-separated browser origins runners accept (CORS and the Origin check) besides the public URL's."""
    runner_allow_private_upstreams: bool = False
    """Dev/test only: let hosted servers call upstream APIs on private or loopback addresses (production
    refuses them, so a server cannot be aimed at the platform's own network)."""
    allow_unsandboxed_code: bool = False
    """Development machines without bubblewrap only: run generated code (the checker's sample run, process
    runners) as a plain child process instead of refusing to. Logged loudly each time; never in production."""
    swarm_publish_mode: Literal["host", "ingress", "network"] = "host"
    """How the swarm backend's deployer and proxy reach a runner: `host` (a port of the node per task, the
    deployer on that node), `ingress` (one port on every node, through Swarm's routing mesh) or `network` (no
    port: the tasks' addresses on the `bmms-fronts` overlay, for a deployer and a proxy that are Swarm services
    on it; the platform stack, ops/deploy/)."""
    deploy_stop_runners_on_exit: bool = False
    """Stop every runner when the deployer stops (it starts them again when it comes back): what `bmms dev`
    wants; in production runners outlive a deployer restart."""
    deploy_health_timeout: float = 60.0
    """How long the deployer waits for a new runner to answer an authenticated `tools/list`."""

    @property
    def inbox_prefix(self) -> str:
        """Where this process's replies come: each role reads replies only under its own prefix (nats.conf)."""
        return f"_INBOX_{self.nats_user}" if self.nats_user else "_INBOX"


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Read `BMMS_*` variables into Settings (`runner_template.settings`); raise ValueError naming the bad
    variable."""
    env = dict(os.environ if environ is None else environ)
    if not env.get("BMMS_ANTHROPIC_API_KEY") and env.get("ANTHROPIC_API_KEY"):
        env["BMMS_ANTHROPIC_API_KEY"] = env["ANTHROPIC_API_KEY"]  # the SDK's own variable name works too
    return from_environment(Settings, "BMMS_", env)
