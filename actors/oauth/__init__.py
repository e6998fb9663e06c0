"""The oauth actor: the OAuth 2.1 Authorization Server for hosted MCP servers."""
