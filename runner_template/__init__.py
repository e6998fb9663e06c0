"""The trusted runtime of every generated MCP server.

Not built yet: it arrives with the runners-and-deployer issue. Nothing imports this package today.
"""
