"""The trusted runtime of every generated MCP server.

A generated server is one module of tool functions (rendered by codegen from a tool plan) on this template:
`sdk` is what the module declares its tools with, `upstream` the one way its tools reach upstream APIs,
`server` turns the module into an `MCPServer`, `app` serves it over Streamable HTTP, and `auth` is the
Resource Server's token verifier.
"""

RUNNER_TEMPLATE_VERSION = "1"
"""The version of this runtime a generated module is rendered for; part of every artifact's hash."""
