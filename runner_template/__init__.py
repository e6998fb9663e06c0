"""The trusted runtime of every generated MCP server.

So far it holds the Resource Server side of OAuth (`runner_template.auth`): the token verifier every
runner plugs into the mcp SDK. The server itself arrives with the runners-and-deployer issue.
"""
