"""The auth actor: organisations and API keys (people, sessions and magic links arrive with identity)."""
