"""How to add a hosted server to each MCP client: the snippets in a build's `deployed` event.

Every client below speaks Streamable HTTP and does the OAuth flow itself (discovery from the server's
401, registration, PKCE, consent in the browser), so the URL is all any of them needs.
"""

from __future__ import annotations

import json
import re

from bus_schemas.servers import InstallSnippet


def client_name(name: str) -> str:
    """A name every client accepts as a server key: lower-case letters, digits and dashes."""
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    return slug[:48] or "mcp-server"


def install_snippets(name: str, url: str) -> tuple[InstallSnippet, ...]:
    """The snippets for Claude Code, Claude Desktop, ChatGPT, Cursor and VS Code."""
    key = client_name(name)
    cursor = {"mcpServers": {key: {"url": url}}}
    vscode = {"servers": {key: {"type": "http", "url": url}}}
    vscode_cli = {"name": key, "type": "http", "url": url}
    return (
        InstallSnippet(client="Claude Code", format="shell", text=f"claude mcp add --transport http {key} {url}"),
        InstallSnippet(
            client="Claude Desktop", format="text",
            text=f"Settings > Connectors > Add custom connector: name {key}, URL {url}; sign in when asked.",
        ),
        InstallSnippet(
            client="ChatGPT", format="text",
            text=f"Settings > Apps & Connectors > Advanced: enable developer mode; then Create: MCP server URL {url}, "
                 "authentication OAuth.",
        ),
        InstallSnippet(client="Cursor", format="json", text="# ~/.cursor/mcp.json\n" + json.dumps(cursor, indent=2)),
        InstallSnippet(
            client="VS Code", format="shell",
            text=f"code --add-mcp '{json.dumps(vscode_cli)}'\n"
                 "# or in .vscode/mcp.json:\n" + json.dumps(vscode, indent=2),
        ),
    )
